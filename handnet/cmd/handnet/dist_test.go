package main

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet/runtime/dist"
	"github.com/handnet/handnet/handnet/runtime/native"
)

var (
	distDataOnce sync.Once
	distData     string
)

// distDataset is a small synthetic dataset (with its cache) shared by the
// tests of this file.
func distDataset(t *testing.T) (data, cache string) {
	t.Helper()
	if !native.BuildFeatures().Gloo {
		t.Skip("built without gloo: " + native.BuildFeatures().Missing["gloo"])
	}
	distDataOnce.Do(func() {
		dir, err := os.MkdirTemp("", "handnet-dist-cli")
		if err != nil {
			t.Fatal(err)
		}
		distData = dir
		if code := run([]string{"fakedata", "--out", filepath.Join(dir, "data"), "--count", "240", "--size", "340x256", "--per-subject", "30"}); code != 0 {
			t.Fatalf("fakedata: exit %d", code)
		}
		if code := run([]string{"cache", "build", "--data", filepath.Join(dir, "data"), "--cache-dir", filepath.Join(dir, "cache")}); code != 0 {
			t.Fatalf("cache build: exit %d", code)
		}
	})
	if distData == "" {
		t.Fatal("no dataset")
	}
	return filepath.Join(distData, "data"), filepath.Join(distData, "cache")
}

type proc struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

// start runs handnet (this test binary, as the command) with args and extra
// environment.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(os.Args[0], args...)}
	p.cmd.Env = append(append(os.Environ(), "HANDNET_TEST_MAIN=1"), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill() })
	return p
}

// wait waits up to limit for the process and returns its exit code.
func (p *proc) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- p.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(limit):
		p.cmd.Process.Kill()
		<-done
		t.Fatalf("handnet %q still running after %v:\n%s", p.cmd.Args[1:], limit, p.out.String())
	}
	return p.cmd.ProcessState.ExitCode()
}

func waitFile(t *testing.T, path string, limit time.Duration) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s did not appear within %v", path, limit)
}

var testAccLine = regexp.MustCompile(`(?m)^(\[rank (\d)\] )?test accuracy .*$`)

// TestTrainNProcPerNode trains with --nproc-per-node 2, is interrupted with
// Ctrl-C (SIGINT to the launcher), resumes, and matches an uninterrupted
// 2-process run: one run folder, one report, the same metrics on both ranks.
func TestTrainNProcPerNode(t *testing.T) {
	data, cache := distDataset(t)
	dir := t.TempDir()
	args := func(out string) []string {
		return []string{"train", "--data", data, "--cache-dir", cache, "--out", out, "--epochs", "2", "--batch-size", "4", "--threads", "1",
			"--checkpoint-every", "1", "--split", "stratified", "--nproc-per-node", "2", "--dist-timeout", "30s", "--dropout", "none"}
	}
	full := filepath.Join(dir, "full")
	p := start(t, nil, args(full)...)
	if code := p.wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("uninterrupted: exit %d\n%s", code, p.out.String())
	}
	lines := testAccLine.FindAllStringSubmatch(p.out.String(), -1)
	if len(lines) != 2 || lines[0][0] == "" || strings.TrimPrefix(lines[1][0], "[rank 1] ") != strings.TrimPrefix(lines[0][0], "[rank 1] ") {
		t.Fatalf("want the same test accuracy line from both ranks, got %q\n%s", lines, p.out.String())
	}
	if !strings.Contains(p.out.String(), "batch 4 per process, 8 in all") {
		t.Errorf("the log does not state the global batch:\n%s", p.out.String())
	}
	report, err := os.ReadFile(filepath.Join(full, "report.md"))
	if err != nil || !strings.Contains(string(report), "Trained data-parallel by 2 processes (gloo)") {
		t.Errorf("report: %v\n%s", err, report)
	}

	out := filepath.Join(dir, "interrupted")
	p = start(t, nil, args(out)...)
	waitFile(t, filepath.Join(out, "last.safetensors"), time.Minute)
	p.cmd.Process.Signal(syscall.SIGINT)
	if code := p.wait(t, time.Minute); code != 1 || !strings.Contains(p.out.String(), "interrupted") || !strings.Contains(p.out.String(), "--resume") {
		t.Fatalf("interrupted run: exit %d, want 1 with a resume hint\n%s", code, p.out.String())
	}
	p = start(t, nil, append(args(out), "--resume")...)
	if code := p.wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("resumed: exit %d\n%s", code, p.out.String())
	}
	readHist := func(run string) string {
		b, err := os.ReadFile(filepath.Join(run, "history.csv"))
		if err != nil {
			t.Fatal(err)
		}
		var keep []string // every column but seconds and images/s
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			f := strings.Split(l, ",")
			keep = append(keep, strings.Join(f[:6], ","))
		}
		return strings.Join(keep, "\n")
	}
	if a, b := readHist(full), readHist(out); a != b {
		t.Errorf("resumed history differs from the uninterrupted one:\n%s\nvs\n%s", b, a)
	}
	for _, f := range []string{"report.md", "metrics.json", "best.safetensors", "epoch.safetensors"} {
		if _, err := os.Stat(filepath.Join(out, f)); err != nil {
			t.Error(err)
		}
	}
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		if strings.Contains(e.Name(), ".tmp") {
			t.Errorf("left behind: %s", e.Name())
		}
	}
}

func rankEnv(rank, world, port int) []string {
	e := dist.Env{Rank: rank, WorldSize: world, LocalRank: rank, LocalWorldSize: world, MasterAddr: "127.0.0.1", MasterPort: port}
	return e.Variables()
}

func freeTestPort(t *testing.T) int {
	l, err := (&netListener{}).listen()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestKilledRankStopsTheOther: rank 1 is killed while both train; rank 0
// exits 1 within the timeout naming it. A lone rank 0 of a world of 2 waits
// for its peer, then fails the same way.
func TestKilledRankStopsTheOther(t *testing.T) {
	data, cache := distDataset(t)
	dir := t.TempDir()
	out := filepath.Join(dir, "run")
	args := []string{"train", "--data", data, "--cache-dir", cache, "--out", out, "--epochs", "3", "--batch-size", "4", "--threads", "1",
		"--split", "stratified", "--dist-timeout", "5s"}
	port := freeTestPort(t)
	r0 := start(t, rankEnv(0, 2, port), args...)
	r1 := start(t, rankEnv(1, 2, port), args...)
	waitFile(t, filepath.Join(out, "epoch.safetensors"), time.Minute)
	time.Sleep(300 * time.Millisecond)
	r1.cmd.Process.Kill()
	begin := time.Now()
	code := r0.wait(t, time.Minute)
	took := time.Since(begin)
	if code != 1 || !strings.Contains(r0.out.String(), "rank(s) 1 stopped responding") {
		t.Fatalf("rank 0: exit %d after %v\n%s", code, took, r0.out.String())
	}
	if took > 15*time.Second {
		t.Errorf("rank 0 took %v to fail with a 5s timeout", took)
	}
	if strings.Contains(r0.out.String(), "goroutine ") {
		t.Errorf("a Go stack trace:\n%s", r0.out.String())
	}
	t.Logf("rank 0 after %.1fs: %s", took.Seconds(), lastLine(r0.out.String()))

	lone := start(t, rankEnv(0, 2, freeTestPort(t)), append(args[:len(args)-1], "3s")...)
	begin = time.Now()
	code = lone.wait(t, time.Minute)
	if code != 1 || !strings.Contains(lone.out.String(), "rank(s) 1 of 2 did not arrive within 3s") {
		t.Fatalf("lone rank 0: exit %d\n%s", code, lone.out.String())
	}
	if took := time.Since(begin); took < 3*time.Second {
		t.Errorf("gave up after %v, before the 3s timeout", took)
	}
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

// TestReproduceShards: two workers (--shard 0/2 and 1/2) into one folder
// write the same tables as one reproduce; a reproduce with another split
// into that folder reuses nothing.
func TestReproduceShards(t *testing.T) {
	data, cache := distDataset(t)
	dir := t.TempDir()
	args := func(out string) []string {
		return []string{"reproduce", "--data", data, "--cache-dir", cache, "--out", out, "--epochs", "1", "--batch-size", "16", "--threads", "1", "--split", "subject"}
	}
	shared := filepath.Join(dir, "shared")
	w0 := start(t, nil, append(args(shared), "--shard", "0/2")...)
	w1 := start(t, []string{"JOB_COMPLETION_INDEX=1", "JOB_COMPLETIONS=2"}, args(shared)...) // an Indexed Job's worker 1
	for i, w := range []*proc{w0, w1} {
		if code := w.wait(t, 5*time.Minute); code != 0 {
			t.Fatalf("worker %d: exit %d\n%s", i, code, w.out.String())
		}
	}
	both := w0.out.String() + w1.out.String()
	if !strings.Contains(both, "final model:") {
		t.Errorf("no worker wrote the tables:\n%s", both)
	}
	one := filepath.Join(dir, "one")
	if code := run(args(one)); code != 0 {
		t.Fatalf("reproduce: exit %d", code)
	}
	a, err := os.ReadFile(filepath.Join(shared, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(one, "report.md"))
	if err != nil {
		t.Fatal(err)
	}
	if string(a) != string(b) {
		t.Errorf("tables differ:\n--- two workers\n%s\n--- one\n%s", a, b)
	}
	// Run again: everything is reused, nothing trained.
	p := start(t, nil, args(shared)...)
	if code := p.wait(t, time.Minute); code != 0 || strings.Count(p.out.String(), "epoch 1:") != 0 {
		t.Errorf("reproduce again: exit %d, trained something:\n%s", code, p.out.String())
	}
	// Another split never reuses a run.
	p = start(t, nil, append(args(shared)[:len(args(shared))-1], "random")...)
	if code := p.wait(t, time.Minute); code != 1 || !strings.Contains(p.out.String(), "split: subject → random") {
		t.Errorf("reproduce --split random into a subject-split folder: exit %d\n%s", code, p.out.String())
	}
}

type netListener struct{}

func (netListener) listen() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// TestResumeWithAnotherWorldSize: a one-process run interrupted in the
// middle of an epoch, resumed by two processes, restarts from the epoch
// boundary and says so.
func TestResumeWithAnotherWorldSize(t *testing.T) {
	data, cache := distDataset(t)
	out := filepath.Join(t.TempDir(), "run")
	args := []string{"train", "--data", data, "--cache-dir", cache, "--out", out, "--epochs", "2", "--batch-size", "4", "--threads", "1",
		"--checkpoint-every", "1", "--split", "stratified", "--dist-timeout", "30s"}
	p := start(t, nil, args...)
	waitFile(t, filepath.Join(out, "last.safetensors"), time.Minute)
	p.cmd.Process.Signal(syscall.SIGINT)
	if code := p.wait(t, time.Minute); code != 1 {
		t.Fatalf("interrupted run: exit %d\n%s", code, p.out.String())
	}
	p = start(t, nil, append(args, "--resume", "--nproc-per-node", "2")...)
	if code := p.wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("resumed by 2 processes: exit %d\n%s", code, p.out.String())
	}
	if !strings.Contains(p.out.String(), "the run was trained by 1 process(es), this one has 2: restarting from the end of epoch 0") {
		t.Errorf("the resume does not say it restarts from the epoch boundary:\n%s", p.out.String())
	}
	if h, err := os.ReadFile(filepath.Join(out, "history.csv")); err != nil || strings.Count(string(h), "\n") != 3 {
		t.Errorf("history: %v\n%s", err, h)
	}
}
