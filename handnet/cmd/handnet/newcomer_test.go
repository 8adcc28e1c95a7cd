package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
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

// runCaptured runs the command line in this process and returns its exit
// code, stdout and stderr.
func runCaptured(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	dir := t.TempDir()
	outF, _ := os.Create(filepath.Join(dir, "stdout"))
	errF, _ := os.Create(filepath.Join(dir, "stderr"))
	oldOut, oldErr := os.Stdout, os.Stderr
	os.Stdout, os.Stderr = outF, errF
	code := run(args)
	os.Stdout, os.Stderr = oldOut, oldErr
	outF.Close()
	errF.Close()
	o, _ := os.ReadFile(outF.Name())
	e, _ := os.ReadFile(errF.Name())
	return code, string(o), string(e)
}

// TestHelpText: the command list is grouped with whole descriptions,
// every --help has examples and only the flags that apply, mistyped
// commands and flags get a suggestion, a group word alone lists its
// subcommands, and the exit codes say which happened.
func TestHelpText(t *testing.T) {
	tests := []struct {
		args           []string
		code           int
		stdout, stderr []string // each must appear
		not            []string // in neither
	}{
		{[]string{"help"}, 0, []string{"Start here:\n  demo ", "Data:\n", "Train and evaluate:\n  train ", "Use a trained model:\n", "Examples:\n  handnet demo"}, nil,
			[]string{"(precision, +cl\n", "evaluate it,\n"}},
		{[]string{"trian"}, 2, nil, []string{`unknown command "trian"; did you mean train?`}, []string{"Start here:"}},
		{[]string{"frobnicate"}, 2, nil, []string{`unknown command "frobnicate"`, "Start here:"}, []string{"did you mean"}},
		{[]string{"data"}, 2, nil, []string{"handnet data has these subcommands:\n  data stats "}, []string{"unknown command"}},
		{[]string{"weights"}, 2, nil, []string{"weights fetch ", "weights info "}, []string{"unknown command"}},
		{[]string{"weights", "--help"}, 0, []string{"weights fetch ", "weights info "}, nil, nil},
		{[]string{"help", "data"}, 0, []string{"data stats "}, nil, nil},
		{[]string{"help", "trian"}, 2, nil, []string{`unknown command "trian"; did you mean train?`}, nil},
		{[]string{"help", "data", "stats"}, 0, []string{"Usage: handnet data stats", "Examples:\n  handnet data stats"}, nil, nil},
		{[]string{"weights", "infp", "x"}, 2, nil, []string{"did you mean weights info?"}, nil},
		{[]string{"train", "--epoch", "3"}, 2, nil, []string{"unknown flag: --epoch; did you mean --epochs?"}, nil},
		{[]string{"predict", "--help"}, 0, []string{"--top", "Examples:\n  handnet predict --checkpoint"}, nil, []string{"--method"}},
		{[]string{"explain", "--help"}, 0, []string{"--method", "Examples:\n  handnet explain"}, nil, nil},
		{[]string{"serve", "--help"}, 0, []string{"--method", "Examples:\n  handnet serve"}, nil, nil},
		{[]string{"doctor", "--help"}, 0, []string{"Usage: handnet doctor [--device auto|cpu|cuda|cuda:N] [--threads N] [--json]"}, nil, nil},
	}
	for _, tt := range tests {
		code, out, errOut := runCaptured(t, tt.args...)
		if code != tt.code {
			t.Errorf("handnet %q: exit %d, want %d\n%s%s", tt.args, code, tt.code, out, errOut)
		}
		for _, w := range tt.stdout {
			if !strings.Contains(out, w) {
				t.Errorf("handnet %q: stdout lacks %q:\n%s", tt.args, w, out)
			}
		}
		for _, w := range tt.stderr {
			if !strings.Contains(errOut, w) {
				t.Errorf("handnet %q: stderr lacks %q:\n%s", tt.args, w, errOut)
			}
		}
		for _, w := range tt.not {
			if strings.Contains(out+errOut, w) {
				t.Errorf("handnet %q: says %q:\n%s%s", tt.args, w, out, errOut)
			}
		}
	}
}

// TestHelpEveryCommand: each command has a whole one-line description
// and examples whose flags its flag set accepts.
func TestHelpEveryCommand(t *testing.T) {
	for name, c := range commands {
		h := helpOf(c)
		if strings.Contains(h.brief, "\n") || len(h.brief) > 100 || !strings.HasSuffix(h.brief, ".") && !strings.HasSuffix(h.brief, "?") {
			t.Errorf("%s: description %q is not one whole line of at most 100 characters", name, h.brief)
		}
		if len(h.examples) == 0 {
			t.Errorf("%s: no examples", name)
		}
		for _, ex := range h.examples {
			words := strings.Fields(ex)
			if strings.Join(words[:len(strings.Fields(name))], " ") != name {
				t.Errorf("%s: example %q is of another command", name, ex)
				continue
			}
			fs, _ := newFlagSet(c)
			if err := fs.Parse(words[len(strings.Fields(name)):]); err != nil {
				t.Errorf("%s: example %q: %v", name, ex, err)
			}
		}
	}
}

// TestDeviceRefusedBeforeWork: --device cuda on a machine without CUDA
// is refused (exit 1, naming the CPU-only build) before the dataset is
// read or the image cache is built.
func TestDeviceRefusedBeforeWork(t *testing.T) {
	if gotch.CUDA.IsAvailable() {
		t.Skip("CUDA is available here")
	}
	dir := t.TempDir()
	cache := filepath.Join(dir, "cache")
	for _, args := range [][]string{
		{"train", "--data", filepath.Join(dir, "no-data"), "--out", filepath.Join(dir, "run"), "--cache-dir", cache, "--device", "cuda"},
		{"predict", "--checkpoint", filepath.Join(dir, "none.safetensors"), "--device", "cuda:1", dir},
	} {
		code, _, errOut := runCaptured(t, args...)
		if code != 1 || !strings.Contains(errOut, "--device: device \"cuda") || strings.Contains(errOut, "no-data") || strings.Contains(errOut, "none.safetensors") {
			t.Errorf("handnet %q: exit %d, want 1 with the device named first:\n%s", args, code, errOut)
		}
	}
	if _, err := os.Stat(cache); !os.IsNotExist(err) {
		t.Errorf("the cache folder was made before the device was refused: %v", err)
	}
}

// TestWeightsInfoHeader: weights info on a handnet checkpoint shows its
// header (model, classes, input and normalisation, epoch and metrics,
// training configuration, data) before the tensors, and --json carries it
// decoded.
func TestWeightsInfoHeader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "best.safetensors")
	th := torch.NewThread(1)
	defer th.Close()
	err := th.Do(func() error {
		m, err := model.New(model.Config{Arch: "cnn", Dropout: "fc1-0.5", Classes: vision.Classes8.Classes(), Width: vision.Width, Height: vision.Height,
			Mean: vision.Mean, Std: vision.Std}, gotch.CPU)
		if err != nil {
			return err
		}
		defer m.Close()
		return model.SaveCheckpoint(path, m, nil, map[string]string{
			"train_config": `{"epochs":10,"batch_size":16,"lr":0.0025,"seed":1}`,
			"metrics":      `{"epoch":7,"train_loss":0.41,"train_acc":0.9,"val_loss":0.52,"val_acc":0.8125}`,
			"split":        "subject", "data": "data/fake"})
	})
	if err != nil {
		t.Fatal(err)
	}
	code, out, errOut := runCaptured(t, "weights", "info", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	for _, want := range []string{
		"handnet checkpoint, format version 1\n",
		"  model         cnn (dropout fc1-0.5)\n",
		"  classes       8: female dorsal left, ",
		fmt.Sprintf("  input         %dx%d RGB, normalised with mean ", vision.Width, vision.Height),
		"  epoch         7: validation accuracy 81.2 %, loss 0.5200 (training 90.0 %, loss 0.4100)\n",
		"  training      batch_size 16, epochs 10, lr 0.0025, seed 1\n",
		"  split         subject\n", "  data          data/fake\n",
		"fc1.weight", "sha256 ",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("weights info lacks %q:\n%s", want, out)
		}
	}
	if strings.Index(out, "model ") > strings.Index(out, "fc1.weight") {
		t.Errorf("the header comes after the tensors:\n%s", out)
	}
	code, out, _ = runCaptured(t, "weights", "info", "--json", path)
	var j struct {
		Header struct {
			Model   model.Config       `json:"model"`
			Metrics map[string]float64 `json:"metrics"`
		} `json:"header"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &j) != nil || len(j.Header.Model.Classes) != 8 || j.Header.Metrics["val_acc"] != 0.8125 {
		t.Errorf("weights info --json: exit %d, header %+v\n%s", code, j.Header, out)
	}
}

// TestDemoRunFolder: the demo's run folder keeps what a user opens (best
// checkpoint, report, metrics, plots) within 20 MB, without the resume
// state, and every file in it has the mode os.WriteFile gives (0644 under
// umask 022), checkpoints and report included.
func TestDemoRunFolder(t *testing.T) {
	out := t.TempDir()
	if code, _, errOut := runCaptured(t, "demo", "--out", out, "--count", "100", "--epochs", "1", "--threads", "1"); code != 0 {
		t.Fatalf("demo: exit %d\n%s", code, errOut)
	}
	run := filepath.Join(out, "run")
	probe := filepath.Join(t.TempDir(), "probe")
	if err := os.WriteFile(probe, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	pi, _ := os.Stat(probe)
	entries, err := os.ReadDir(run)
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	have := map[string]bool{}
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		have[e.Name()] = true
		total += fi.Size()
		if fi.Mode().Perm() != pi.Mode().Perm() {
			t.Errorf("%s: mode %v, want %v (as os.WriteFile and the plots)", e.Name(), fi.Mode().Perm(), pi.Mode().Perm())
		}
	}
	if total > 20<<20 {
		t.Errorf("the demo's run folder holds %.1f MB, want at most 20", float64(total)/(1<<20))
	}
	for _, f := range []string{"best.safetensors", "report.md", "metrics.json", "loss.png", "accuracy.png", "confusion.png", "history.csv", "run.json", "split.csv"} {
		if !have[f] {
			t.Errorf("the demo's run folder lacks %s", f)
		}
	}
	for _, f := range []string{"last.safetensors", "epoch.safetensors"} {
		if have[f] {
			t.Errorf("the demo's run folder still holds %s (resume state)", f)
		}
	}
}
