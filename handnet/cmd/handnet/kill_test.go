package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet/runtime/fileio"
)

// With HANDNET_TEST_KILL_AT=N, the test binary run as handnet (see
// TestMain) kills itself (SIGKILL) at the N-th fault moment of fileio's
// atomic writes — a file half written, or written and not yet renamed into
// place — to show that no moment of a run, the middle of a checkpoint write
// included, loses work or leaves litter that a resume trips over.
func init() {
	at, _ := strconv.ParseInt(os.Getenv("HANDNET_TEST_KILL_AT"), 10, 64)
	if at <= 0 {
		return
	}
	var count atomic.Int64
	fileio.FaultHook = func(string) {
		if count.Add(1) == at {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // the signal is on its way
		}
	}
}

// TestKilledAnywhereResumes SIGKILLs a training run at 20 points spread
// over it — 10 inside atomic writes, checkpoints included (half written, or
// written and not yet renamed), 10 at moments spread over its running time —
// and resumes it each time: the result equals an uninterrupted run's and
// the folder holds no temporary files.
func TestKilledAnywhereResumes(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the kill test trains 21 runs")
	}
	dir := t.TempDir()
	data, cache := filepath.Join(dir, "data"), filepath.Join(dir, "cache")
	if code := run([]string{"fakedata", "--out", data, "--count", "80", "--size", "340x256", "--per-subject", "20"}); code != 0 {
		t.Fatalf("fakedata: exit %d", code)
	}
	args := func(out string) []string {
		return []string{"train", "--data", data, "--cache-dir", cache, "--out", out, "--epochs", "2", "--batch-size", "8",
			"--checkpoint-every", "1", "--split", "stratified", "--threads", "1"}
	}
	full := filepath.Join(dir, "full")
	begin := time.Now()
	p := start(t, nil, args(full)...)
	if code := p.wait(t, 2*time.Minute); code != 0 {
		t.Fatalf("uninterrupted: exit %d\n%s", code, p.out.String())
	}
	took := time.Since(begin)
	want := historyOf(t, full)
	// How many kill points does a run pass? Count them with a point that never comes.
	points := 0
	for i := 1; ; i++ {
		if i > 200 {
			t.Fatal("no end to the kill points")
		}
		out := filepath.Join(dir, fmt.Sprintf("probe-%d", i))
		p := start(t, []string{fmt.Sprintf("HANDNET_TEST_KILL_AT=%d", i*8)}, args(out)...)
		if code := p.wait(t, 2*time.Minute); code == 0 {
			points = i * 8
			break
		}
		os.RemoveAll(out)
	}
	t.Logf("an uninterrupted run takes %v and passes fewer than %d kill points", took.Round(time.Millisecond), points)
	var kills []string
	for k := range 10 {
		kills = append(kills, fmt.Sprintf("HANDNET_TEST_KILL_AT=%d", 1+k*(points-8)/10))
	}
	for k := range 10 {
		kills = append(kills, fmt.Sprintf("after=%v", time.Duration(int64(took)*int64(k+1)/11)))
	}
	for i, kill := range kills {
		out := filepath.Join(dir, fmt.Sprintf("killed-%d", i))
		var env []string
		if strings.HasPrefix(kill, "HANDNET") {
			env = []string{kill}
		}
		p := start(t, env, args(out)...)
		if after, ok := strings.CutPrefix(kill, "after="); ok {
			d, _ := time.ParseDuration(after)
			time.Sleep(d)
			p.cmd.Process.Signal(syscall.SIGKILL)
		}
		p.wait(t, 2*time.Minute)
		r := start(t, nil, append(args(out), "--resume")...)
		if code := r.wait(t, 2*time.Minute); code != 0 {
			t.Fatalf("kill %d (%s): resume exited %d\n%s", i, kill, code, r.out.String())
		}
		if got := historyOf(t, out); got != want {
			t.Errorf("kill %d (%s): resumed history\n%s\nwant\n%s", i, kill, got, want)
		}
		entries, _ := os.ReadDir(out)
		for _, e := range entries {
			if strings.Contains(e.Name(), ".tmp") {
				t.Errorf("kill %d (%s): left behind %s", i, kill, e.Name())
			}
		}
	}
}

// historyOf reads a run's history.csv without its timing columns.
func historyOf(t *testing.T, run string) string {
	b, err := os.ReadFile(filepath.Join(run, "history.csv"))
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		keep = append(keep, strings.Join(strings.Split(l, ",")[:6], ","))
	}
	return strings.Join(keep, "\n")
}
