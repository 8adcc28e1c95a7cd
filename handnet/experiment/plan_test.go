package experiment_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/train"
)

// These tests run a Study without training anything: every run is either
// finished already (reused) or held by "another worker" (a Claim of this
// process). A run trained by mistake stops at its first batch (startLog).
var oneSlot = []experiment.Slot{{Device: "cpu", Threads: 1}}

// startLog records, in order, the prefixes of the runs a Study starts
// (through its Hooks; the study's own "" is left out), and counts the
// batches trained, calling stop at the first.
type startLog struct {
	mu       sync.Mutex
	prefixes []string
	seen     map[string]bool
	onNew    func(n int) // called with the number of distinct prefixes, on each new one
	stop     func()
	batches  int
}

func (l *startLog) hooks(prefix string) experiment.Hooks {
	h := experiment.Hooks{OnBatch: func(train.Progress) {
		l.mu.Lock()
		l.batches++
		l.mu.Unlock()
		if l.stop != nil {
			l.stop()
		}
	}}
	if prefix != "" {
		l.mu.Lock()
		if l.seen == nil {
			l.seen = map[string]bool{}
		}
		if !l.seen[prefix] {
			l.seen[prefix] = true
			l.prefixes = append(l.prefixes, strings.TrimSpace(prefix))
			if l.onNew != nil {
				l.onNew(len(l.prefixes))
			}
		}
		l.mu.Unlock()
	}
	return h
}

// trained is the number of batches trained.
func (l *startLog) trained() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.batches
}

func (l *startLog) started() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.prefixes...)
}

// lrSpec and dropoutSpec are the study's runs as its documentation states
// them: the base spec at a learning rate with the learning-rate sweep's
// dropout, and at the best rate with each other placement.
func lrSpec(base experiment.Spec, lr float64) experiment.Spec {
	base.Train.LR, base.Model.Dropout = lr, experiment.LRSweepDropout
	return base
}

func dropoutSpec(base experiment.Spec, lr float64, dropout string) experiment.Spec {
	base.Train.LR, base.Model.Dropout = lr, dropout
	return base
}

// finishLRRuns writes the study's learning-rate runs under out as
// finished, each with the best validation accuracy val gives its rate.
func finishLRRuns(t *testing.T, out string, base experiment.Spec, d *experiment.Data, val map[float64]float64) {
	t.Helper()
	for _, lr := range experiment.StudyLRs {
		finishRun(t, filepath.Join(out, fmt.Sprintf("lr-%g", lr)), lrSpec(base, lr), d, val[lr])
	}
}

// finishStudy writes every run of the study (Part 1) as finished under
// out: the best learning rate is 0.0025 (validation 0.60), the best
// dropout placement at it fc1-0.5 (0.70).
func finishStudy(t *testing.T, out string, base experiment.Spec, d *experiment.Data) {
	t.Helper()
	finishLRRuns(t, out, base, d, map[float64]float64{0.01: 0.30, 0.005: 0.45, 0.0025: 0.60, 0.001: 0.50})
	for dropout, v := range map[string]float64{"flat0.4-fc1-0.4": 0.55, "fc1-0.5": 0.70, "conv0.2-fc1-0.5": 0.65} {
		finishRun(t, filepath.Join(out, "dropout-"+dropout+"-lr-0.0025"), dropoutSpec(base, 0.0025, dropout), d, v)
	}
}

// finishRun writes dir as a finished run of s (over d) whose best
// validation accuracy is val.
func finishRun(t *testing.T, dir string, s experiment.Spec, d *experiment.Data, val float64) {
	t.Helper()
	s.Identity = identify(t, s, d)
	writeJSON(t, filepath.Join(dir, rundir.Spec), s)
	writeFile(t, filepath.Join(dir, rundir.LastCheckpoint), []byte("checkpoint"))
	writeJSON(t, filepath.Join(dir, rundir.Metrics), finishedRun(s.Identity.Key, s.Train.Epochs, val))
}

// hold claims the folders out/NAME for this test, as another worker
// training them would.
func hold(t *testing.T, out string, names ...string) {
	t.Helper()
	for _, n := range names {
		c, err := experiment.Folder{Dir: filepath.Join(out, n)}.Claim(idA, 1, false, false)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Release)
	}
}

func runNames(runs []*experiment.StudyRun) []string {
	var out []string
	for _, r := range runs {
		out = append(out, r.Name)
	}
	return out
}

// TestStudyReusesFinishedRuns: with every run of the study finished in its
// folder, a Study trains nothing; it picks the best learning rate by
// validation accuracy, plans the dropout runs at that rate (the sweep's own
// placement being the best learning-rate run itself), picks the final model
// among them, and writes the tables.
func TestStudyReusesFinishedRuns(t *testing.T) {
	dir := t.TempDir()
	base := fakeSpec(t, dir, 48)
	d := openData(t, base)
	out := filepath.Join(dir, "study")
	finishStudy(t, out, base, d)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := startLog{stop: cancel}
	st := &experiment.Study{Base: base, Out: out, Slots: oneSlot, Hooks: log.hooks, Poll: time.Minute}
	res, err := st.Run(ctx)
	if n := log.trained(); n > 0 {
		t.Fatalf("%d batches trained, want every run reused (runs started: %q)", n, log.started())
	}
	if err != nil {
		t.Fatal(err)
	}
	if got, want := runNames(res.LR), []string{"lr-0.01", "lr-0.005", "lr-0.0025", "lr-0.001"}; !reflect.DeepEqual(got, want) {
		t.Errorf("learning-rate runs %q, want %q", got, want)
	}
	if res.Best == nil || res.Best.Name != "lr-0.0025" || res.Best.LR != 0.0025 {
		t.Fatalf("best learning rate %+v, want lr-0.0025", res.Best)
	}
	// In the study's order of placements; the learning-rate sweep's own
	// placement (fc1-0.4) is the best learning-rate run, not trained again.
	wantDrop := []string{"lr-0.0025", "dropout-flat0.4-fc1-0.4-lr-0.0025", "dropout-fc1-0.5-lr-0.0025", "dropout-conv0.2-fc1-0.5-lr-0.0025"}
	if got := runNames(res.Dropout); !reflect.DeepEqual(got, wantDrop) {
		t.Errorf("dropout runs %q, want %q", got, wantDrop)
	}
	for i, r := range res.Dropout {
		if r.Dropout != model.StudyDropouts[i] || r.LR != 0.0025 || r.Spec.Model.Dropout != r.Dropout || r.Spec.Train.LR != 0.0025 {
			t.Errorf("dropout run %s: dropout %q (spec %q), lr %g (spec %g); want %q at 0.0025",
				r.Name, r.Dropout, r.Spec.Model.Dropout, r.LR, r.Spec.Train.LR, model.StudyDropouts[i])
		}
		if r.Result == nil {
			t.Errorf("dropout run %s: no result", r.Name)
		}
	}
	if res.Final == nil || res.Final.Name != "dropout-fc1-0.5-lr-0.0025" {
		t.Errorf("final model %+v, want dropout-fc1-0.5-lr-0.0025 (best validation accuracy)", res.Final)
	}
	if len(res.Transfer) != 0 {
		t.Errorf("transfer runs %q without weights", runNames(res.Transfer))
	}

	var m struct {
		BestLR float64 `json:"best_lr"`
		Final  string  `json:"final"`
		LRRuns []struct {
			Name    string  `json:"name"`
			BestVal float64 `json:"best_val_acc"`
		} `json:"lr_runs"`
	}
	b, err := os.ReadFile(filepath.Join(out, rundir.Metrics))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m.BestLR != 0.0025 || m.Final != "dropout-fc1-0.5-lr-0.0025" || len(m.LRRuns) != 4 || m.LRRuns[2].BestVal != 0.60 {
		t.Errorf("study metrics %+v", m)
	}
	md, err := os.ReadFile(filepath.Join(out, rundir.Report))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"| lr 0.0025 **(chosen)** |", "| fc1-0.5 **(chosen)** |", "(lr-0.001/report.md)", "Dropout fc1-0.5 at learning rate 0.0025"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q:\n%s", want, md)
		}
	}
	for _, r := range append(res.LR, res.Dropout[1:]...) { // the runs' folders are untouched
		if _, err := os.Stat(filepath.Join(out, r.Name, rundir.BestCheckpoint)); !os.IsNotExist(err) {
			t.Errorf("%s: a run was trained (%v)", r.Name, err)
		}
	}
}

// TestStudyPlansDropoutRunsAtTheBestRate: once the learning-rate runs are
// done, the study plans the three other dropout placements at the best
// rate (here 0.005) and starts them in the study's order; when other
// workers hold them all, this worker has nothing left: ErrStudyElsewhere.
func TestStudyPlansDropoutRunsAtTheBestRate(t *testing.T) {
	dir := t.TempDir()
	base := fakeSpec(t, dir, 48)
	d := openData(t, base)
	out := filepath.Join(dir, "study")
	finishLRRuns(t, out, base, d, map[float64]float64{0.01: 0.30, 0.005: 0.65, 0.0025: 0.60, 0.001: 0.50})
	hold(t, out, "dropout-flat0.4-fc1-0.4-lr-0.005", "dropout-fc1-0.5-lr-0.005", "dropout-conv0.2-fc1-0.5-lr-0.005")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := startLog{stop: cancel}
	st := &experiment.Study{Base: base, Out: out, Slots: oneSlot, Hooks: log.hooks, Poll: time.Minute}
	_, err := st.Run(ctx)
	if n := log.trained(); n > 0 {
		t.Fatalf("%d batches trained (runs started: %q)", n, log.started())
	}
	if !errors.Is(err, experiment.ErrStudyElsewhere) {
		t.Fatalf("Run: %v, want ErrStudyElsewhere", err)
	}
	if got, want := log.started(), []string{"[dropout 1/3]", "[dropout 2/3]", "[dropout 3/3]"}; !reflect.DeepEqual(got, want) {
		t.Errorf("started %q, want %q", got, want)
	}
}

// TestStudyShardOrder: a worker starts its share of the runs first (runs i
// with i % Shards == Shard, in the study's order: learning rates, then the
// transfer runs), then the others' — here every one held elsewhere.
func TestStudyShardOrder(t *testing.T) {
	dir := t.TempDir()
	base := fakeSpec(t, dir, 48)
	weights := filepath.Join(dir, "resnet18.pth")
	writeFile(t, weights, []byte("only hashed: never loaded, the runs being held"))
	out := filepath.Join(dir, "study")
	hold(t, out, "lr-0.01", "lr-0.005", "lr-0.0025", "lr-0.001", "resnet18-freeze-fc", "resnet18-freeze-layer4", "resnet18-freeze-none")

	want := []string{"[lr 2/4]", "[lr 4/4]", "[resnet18 2/3]", "[lr 1/4]", "[lr 3/4]", "[resnet18 1/3]", "[resnet18 3/3]"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := startLog{stop: cancel, onNew: func(n int) {
		if n == len(want) {
			cancel() // every run tried: the rest would be waiting for the others
		}
	}}
	st := &experiment.Study{Base: base, Out: out, Weights: weights, TransferLR: 0.001, Shard: 1, Shards: 2,
		Slots: oneSlot, Hooks: log.hooks, Poll: 500 * time.Millisecond}
	done := make(chan error, 1)
	go func() { _, err := st.Run(ctx); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Run succeeded with every run held elsewhere")
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("Run did not stop after the cancel; started %q", log.started())
	}
	if n := log.trained(); n > 0 {
		t.Errorf("%d batches trained", n)
	}
	if got := log.started(); !reflect.DeepEqual(got, want) {
		t.Errorf("worker 1 of 2 started %q, want %q", got, want)
	}
	entries, err := os.ReadDir(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(want) {
		var got []string
		for _, e := range entries {
			got = append(got, e.Name())
		}
		t.Errorf("study folder holds %q, want only the %d held runs", got, len(want))
	}
}

// TestStudyTablesOnce: of several workers finding every run done, the
// first writes the tables and stamps the folder; a second finds the stamp
// of these very runs and leaves the tables (ErrTablesWritten). One worker
// alone writes them again, and so does any worker once a run's results
// differ from the stamp's.
func TestStudyTablesOnce(t *testing.T) {
	dir := t.TempDir()
	base := fakeSpec(t, dir, 48)
	d := openData(t, base)
	out := filepath.Join(dir, "study")
	finishStudy(t, out, base, d)
	md := filepath.Join(out, rundir.Report)
	const mark = "left as it was"
	run := func(shard, shards int) error {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		log := startLog{stop: cancel}
		_, err := (&experiment.Study{Base: base, Out: out, Shard: shard, Shards: shards, Slots: oneSlot, Hooks: log.hooks, Poll: time.Minute}).Run(ctx)
		if n := log.trained(); n > 0 {
			t.Fatalf("%d batches trained", n)
		}
		return err
	}
	written := func() bool {
		t.Helper()
		b, err := os.ReadFile(md)
		if err != nil {
			t.Fatal(err)
		}
		return !strings.Contains(string(b), mark)
	}
	steps := []struct {
		name          string
		shard, shards int
		change        func()
		err           error
		written       bool
	}{
		{"first of two", 0, 2, nil, nil, true},
		{"second of two, same runs", 1, 2, nil, experiment.ErrTablesWritten, false},
		{"one worker alone", 0, 1, nil, nil, true},
		{"a run's results changed", 1, 2, func() {
			finishRun(t, filepath.Join(out, "lr-0.01"), lrSpec(base, 0.01), d, 0.35)
		}, nil, true},
		{"then the other worker", 0, 2, nil, experiment.ErrTablesWritten, false},
	}
	for _, s := range steps {
		if s.change != nil {
			s.change()
		}
		if err := os.WriteFile(md, []byte(mark), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := run(s.shard, s.shards); !errors.Is(err, s.err) || (err != nil) != (s.err != nil) {
			t.Fatalf("%s: Run: %v, want %v", s.name, err, s.err)
		}
		if got := written(); got != s.written {
			t.Errorf("%s: tables written %v, want %v", s.name, got, s.written)
		}
	}
	if _, err := os.Stat(filepath.Join(out, rundir.Tables)); err != nil {
		t.Errorf("no stamp: %v", err)
	}
}
