package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
)

// TestOneDefaultSeed: every command with a --seed flag (data stats, train,
// reproduce, audit, demo, fakedata) defaults to vision.DefaultSeed, the
// trainer's default too, so a split shown by data stats is the one train
// trains on.
func TestOneDefaultSeed(t *testing.T) {
	if got := train.DefaultConfig().Seed; got != vision.DefaultSeed {
		t.Errorf("train.DefaultConfig().Seed = %d, want vision.DefaultSeed %d", got, vision.DefaultSeed)
	}
	seen := 0
	for name, c := range commands {
		fs, _ := newFlagSet(c)
		f := fs.Lookup("seed")
		if f == nil {
			continue
		}
		seen++
		if f.DefValue != strconv.FormatUint(vision.DefaultSeed, 10) {
			t.Errorf("%s --seed defaults to %s, want %d", name, f.DefValue, vision.DefaultSeed)
		}
	}
	if seen < 3 {
		t.Errorf("only %d commands have --seed; want data stats, train, reproduce at least", seen)
	}
}

// TestProgressLogWhen: a line every 50 batches and after 30 s without
// one, none at the pass's end, a new pass when the count starts again;
// rate and ETA from the pass's own clock.
func TestProgressLogWhen(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := newProgressLog()
	p.now = func() time.Time { return now }
	step := func(done int, dt time.Duration) string {
		now = now.Add(dt)
		return p.update(done, 300, "batches")
	}
	if got := step(1, 0); got != "" {
		t.Errorf("first batch: %q, want no line", got)
	}
	for b := 2; b < 50; b++ {
		if got := step(b, 100*time.Millisecond); got != "" {
			t.Fatalf("batch %d: %q, want no line", b, got)
		}
	}
	// 49 batches in 4.9 s: 10 batches/s, 250 left: 25 s.
	if got, want := step(50, 100*time.Millisecond), "50/300 batches (17%), 10.00 batches/s, ETA 25s"; got != want {
		t.Errorf("batch 50: %q, want %q", got, want)
	}
	if got := step(51, 31*time.Second); !strings.HasPrefix(got, "51/300 batches") {
		t.Errorf("31 s after the last line: %q, want a line", got)
	}
	if got := step(52, time.Second); got != "" {
		t.Errorf("batch 52: %q, want no line", got)
	}
	if got := step(300, time.Second); got != "" {
		t.Errorf("last batch: %q, want no line (the epoch line follows)", got)
	}
	if got := step(1, time.Minute); got != "" {
		t.Errorf("next epoch's first batch: %q, want a new pass, no line", got)
	}
	if got := step(2, 31*time.Second); !strings.HasPrefix(got, "2/300 batches (1%), 0.03 batches/s") {
		t.Errorf("next epoch after 31 s: %q", got)
	}
}

// TestTrainLogsProgressWithoutTerminal: train with stderr to a file logs
// progress lines with a date, rate, ETA and running loss between epoch
// lines, and no progress bar.
func TestTrainLogsProgressWithoutTerminal(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if code := run([]string{"fakedata", "--out", data, "--count", "80", "--size", "340x256", "--per-subject", "20"}); code != 0 {
		t.Fatal("fakedata failed")
	}
	logPath := filepath.Join(dir, "train.log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "train", "--data", data, "--cache-dir", filepath.Join(dir, "cache"), "--out", filepath.Join(dir, "run"),
		"--epochs", "1", "--batch-size", "1", "--threads", "1")
	cmd.Env = append(os.Environ(), "HANDNET_TEST_MAIN=1")
	cmd.Stdout, cmd.Stderr = f, f
	err = cmd.Run()
	f.Close()
	b, _ := os.ReadFile(logPath)
	if err != nil {
		t.Fatalf("train: %v\n%s", err, b)
	}
	log := string(b)
	line := regexp.MustCompile(`time="\d{4}-\d\d-\d\d \d\d:\d\d:\d\d" level=info msg="epoch 1/1: 50/\d+ batches \(\d+%\), [0-9.]+ batches/s, ETA \w+; running loss \d+\.\d{4} acc \d\.\d{4}, \d+ img/s"`)
	if !line.MatchString(log) {
		t.Errorf("no progress line at batch 50 in the log:\n%s", log)
	}
	if !strings.Contains(log, "seed 1)") {
		t.Errorf("the log head does not name the seed:\n%s", log)
	}
	if strings.Contains(log, "\r") || strings.Contains(log, "█") {
		t.Errorf("a progress bar was drawn into a file:\n%s", log)
	}
}
