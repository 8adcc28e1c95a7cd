package experiment

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/handnet/handnet/eval/report"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/fileio"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/train"
)

// StudyLRs are the four learning rates of the study's Part 1 comparison.
var StudyLRs = []float64{0.01, 0.005, 0.0025, 0.001}

// LRSweepDropout is the dropout placement of the learning-rate runs (the
// study's first experiment).
const LRSweepDropout = "fc1-0.4"

// Slot is one place a Study trains a run: a device and its CPU threads.
type Slot struct {
	Device  string
	Threads int // 0: all usable CPUs
}

// Study runs the study's experiment matrix into Out: Part 1, the CNN at
// the four learning rates, then its four dropout placements at the best
// one (by validation accuracy), the final model being the best of those;
// with Weights, Part 2, ResNet-18 fine-tuned under the three freeze
// scenarios. Every run is a run folder under Out, claimed under its lock, so
// that several workers (Shard of Shards, on other machines sharing Out) and
// several Slots of one worker never train the same run; finished runs are
// reused. The tables are written by whichever worker sees every run done
// (once: see ErrTablesWritten).
type Study struct {
	Base       Spec    // data, split, seed, epochs, batch … of every run
	Out        string  // the study's folder
	Weights    string  // ResNet-18 ImageNet weights: adds Part 2
	TransferLR float64 // learning rate of Part 2
	// Shard and Shards: this worker trains runs i with i % Shards == Shard
	// first, then helps with the others' runs nobody has started.
	Shard, Shards int
	Slots         []Slot // concurrent trainings (default: one on Base.Device)
	// Hooks gives each run's hooks; prefix names the run ("[lr 1/4]").
	Hooks func(prefix string) Hooks
	Logf  func(format string, args ...any)
	// Poll is how often a worker looks again at runs others are training
	// (default 2s).
	Poll time.Duration
	// Matrix, when set, replaces the study's own runs (Part 1 and 2) with
	// other ones on the same machinery (see Audit).
	Matrix *Matrix
}

// Matrix is a set of runs a Study trains instead of its own: all known from
// the start, each a run folder under Out named by its Name, sharded,
// claimed and reused like the study's; Tables is called by whichever
// worker sees every run done (once per set of finished runs: see
// ErrTablesWritten).
type Matrix struct {
	Runs []*StudyRun
	// Owns says which other files in Out are the matrix's (its tables).
	Owns   func(name string) bool
	Tables func(runs []*StudyRun) error
	// Key holds the tables' own settings (those that are not the runs'),
	// so that a change of them writes the tables again.
	Key string
}

// StudyRun is one run of the study.
type StudyRun struct {
	Name    string      `json:"name"` // its folder under Out
	Part    int         `json:"part"` // 1 or 2
	LR      float64     `json:"lr"`
	Dropout string      `json:"dropout,omitempty"`
	Freeze  string      `json:"freeze,omitempty"`
	Spec    Spec        `json:"-"`
	Prefix  string      `json:"-"`
	Result  *report.Run `json:"-"`
	id      *Identity
}

// BestVal is the run's best validation accuracy (0 before it is done).
func (r *StudyRun) BestVal() float64 {
	if r.Result == nil {
		return 0
	}
	return r.Result.History.BestValAcc()
}

// Test is the run's test accuracy (0 before it is done).
func (r *StudyRun) Test() float64 {
	if r.Result == nil || r.Result.Test == nil {
		return 0
	}
	return r.Result.Test.Accuracy
}

// StudyResult is a finished study.
type StudyResult struct {
	LR, Dropout, Transfer []*StudyRun
	Best, Final           *StudyRun // best learning rate; final model
}

// ErrStudyElsewhere is returned by Study.Run when this worker has nothing
// left to do but other workers still train runs (the last of them writes
// the tables).
var ErrStudyElsewhere = errors.New("the remaining runs are being trained by other workers")

// ErrTablesWritten is returned by Study.Run, for a worker of several
// (Shards > 1) that finds every run done, when another worker has already
// written the tables of these very runs: two workers finishing together
// write them once. (One worker alone always writes them.)
var ErrTablesWritten = errors.New("another worker wrote the tables of these runs")

func (st *Study) logf(format string, args ...any) {
	if st.Logf != nil {
		st.Logf(format, args...)
	}
}

// plan lists the runs known now: the learning-rate and transfer runs, and
// the dropout runs once every learning-rate run is done.
func (st *Study) plan(lr, transfer, drop []*StudyRun) ([]*StudyRun, []*StudyRun) {
	if drop == nil && allDone(lr) {
		best := bestOf(lr)
		st.logf("best learning rate by validation accuracy: %g (%.4f)", best.LR, best.BestVal())
		drop = []*StudyRun{}
		n := 0
		for _, d := range model.StudyDropouts {
			if d == LRSweepDropout {
				continue
			}
			n++
			s := st.Base
			s.Train.LR, s.Model.Dropout = best.LR, d
			s.Title = fmt.Sprintf("Part 1, dropout %s (learning rate %g)", d, best.LR)
			drop = append(drop, &StudyRun{Name: fmt.Sprintf("dropout-%s-lr-%g", d, best.LR), Part: 1, LR: best.LR, Dropout: d, Spec: s,
				Prefix: fmt.Sprintf("[dropout %d/%d]", n, len(model.StudyDropouts)-1)})
		}
	}
	all := append(append(append([]*StudyRun(nil), lr...), transfer...), drop...)
	return all, drop
}

func allDone(runs []*StudyRun) bool {
	for _, r := range runs {
		if r.Result == nil {
			return false
		}
	}
	return true
}

// bestOf picks the run with the best validation accuracy (the first on ties).
func bestOf(runs []*StudyRun) *StudyRun {
	best := runs[0]
	for _, r := range runs {
		if r.BestVal() > best.BestVal() {
			best = r
		}
	}
	return best
}

// Run trains (or reuses) the study's runs and writes its tables. It returns
// ErrStudyElsewhere when other workers hold the last runs.
func (st *Study) Run(ctx context.Context) (*StudyResult, error) {
	if st.Shards <= 0 {
		st.Shards = 1
	}
	if st.Shard < 0 || st.Shard >= st.Shards {
		return nil, &FieldError{Field: "Shard", Value: fmt.Sprintf("%d/%d", st.Shard, st.Shards), Err: errors.New("want 0 <= I < N")}
	}
	if len(st.Slots) == 0 {
		st.Slots = []Slot{{Device: st.Base.Device}}
	}
	if st.Poll <= 0 {
		st.Poll = 2 * time.Second
	}
	if err := st.checkOut(); err != nil {
		return nil, err
	}
	// The data once, for the runs' identities.
	d, err := OpenData(ctx, st.Base, "", st.hooks(""))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	var lr, transfer, drop []*StudyRun
	lrs := StudyLRs
	if st.Matrix != nil {
		lrs, lr, drop = nil, st.Matrix.Runs, []*StudyRun{} // no dropout runs to plan
	}
	for i, v := range lrs {
		s := st.Base
		s.Train.LR, s.Model.Dropout = v, LRSweepDropout
		s.Title = fmt.Sprintf("Part 1, learning rate %g (dropout %s)", v, LRSweepDropout)
		lr = append(lr, &StudyRun{Name: fmt.Sprintf("lr-%g", v), Part: 1, LR: v, Dropout: LRSweepDropout, Spec: s, Prefix: fmt.Sprintf("[lr %d/%d]", i+1, len(StudyLRs))})
	}
	if st.Weights != "" && st.Matrix == nil {
		for i, fr := range FreezeScenarios {
			s := st.Base
			s.Train.LR, s.Weights = st.TransferLR, st.Weights
			s.Model = TransferModel(fr)
			s.Title = fmt.Sprintf("Part 2, ResNet-18 transfer learning, freeze %s", fr)
			transfer = append(transfer, &StudyRun{Name: "resnet18-freeze-" + fr, Part: 2, LR: st.TransferLR, Freeze: fr, Spec: s, Prefix: fmt.Sprintf("[resnet18 %d/3]", i+1)})
		}
	}
	threads := make([]*torch.Thread, len(st.Slots))
	for i, sl := range st.Slots {
		threads[i] = torch.NewThread(sl.Threads)
		defer threads[i].Close()
	}
	type done struct {
		run  *StudyRun
		slot int
		res  *report.Run
		err  error
	}
	results := make(chan done)
	busy := make([]bool, len(st.Slots))
	inFlight := map[*StudyRun]bool{}
	elsewhere := map[*StudyRun]time.Time{} // locked by another worker when last tried
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var firstErr error
	for {
		var all []*StudyRun
		all, drop = st.plan(lr, transfer, drop)
		// Runs others finished meanwhile.
		for _, r := range all {
			if r.Result == nil && !inFlight[r] {
				if r.id == nil {
					id, err := Identify(r.Spec, d)
					if err != nil {
						return nil, err
					}
					r.id = &id
				}
				r.Result = Folder{filepath.Join(st.Out, r.Name)}.Finished(*r.id, r.Spec.Train.Epochs)
			}
		}
		all, drop = st.plan(lr, transfer, drop)
		if firstErr == nil && allDone(all) && len(inFlight) == 0 {
			var res *StudyResult
			err := st.once(all, func() (err error) {
				if st.Matrix != nil {
					res = &StudyResult{}
					return st.Matrix.Tables(all)
				}
				res, err = st.finish(lr, drop, transfer)
				return err
			})
			if err != nil {
				return nil, err
			}
			return res, nil
		}
		// Start what can start: this worker's share first, then the rest.
		started := false
		if firstErr == nil && ctx.Err() == nil {
			for _, r := range st.order(all) {
				slot := freeSlot(busy)
				if slot < 0 {
					break
				}
				if r.Result != nil || inFlight[r] || time.Since(elsewhere[r]) < st.Poll {
					continue
				}
				busy[slot], inFlight[r], started = true, true, true
				s := r.Spec
				s.Device = st.Slots[slot].Device
				go func(r *StudyRun, slot int, s Spec) {
					res, err := Run(ctx, threads[slot], s, filepath.Join(st.Out, r.Name), Options{Reuse: true, Hooks: st.hooks(r.Prefix + " ")})
					results <- done{r, slot, res, err}
				}(r, slot, s)
			}
		}
		if len(inFlight) == 0 {
			if firstErr != nil {
				return nil, firstErr
			}
			if ctx.Err() != nil {
				return nil, fmt.Errorf("%w: runs already finished are kept; run the same command again to continue", train.ErrInterrupted)
			}
			if !started && len(elsewhere) > 0 && drop != nil {
				// Nothing more will appear: the rest is someone else's.
				return nil, ErrStudyElsewhere
			}
		}
		var res done
		select {
		case res = <-results:
		case <-time.After(st.Poll):
			continue
		}
		busy[res.slot] = false
		delete(inFlight, res.run)
		switch {
		case errors.Is(res.err, ErrLocked):
			elsewhere[res.run] = time.Now()
		case res.err != nil:
			if firstErr == nil {
				if errors.Is(res.err, train.ErrInterrupted) {
					firstErr = fmt.Errorf("%s: %w", res.run.Prefix, res.err)
				} else {
					firstErr = fmt.Errorf("%s %s: %w", res.run.Prefix, res.run.Name, res.err)
					cancel() // the other runs save and stop
				}
			}
		default:
			res.run.Result = res.res
			delete(elsewhere, res.run)
		}
	}
}

func freeSlot(busy []bool) int {
	for i, b := range busy {
		if !b {
			return i
		}
	}
	return -1
}

// order puts this worker's share of the runs first.
func (st *Study) order(all []*StudyRun) []*StudyRun {
	var mine, others []*StudyRun
	for i, r := range all {
		if i%st.Shards == st.Shard {
			mine = append(mine, r)
		} else {
			others = append(others, r)
		}
	}
	return append(mine, others...)
}

func (st *Study) hooks(prefix string) Hooks {
	if st.Hooks == nil {
		return Hooks{Logf: st.Logf}
	}
	return st.Hooks(prefix)
}

// checkOut refuses a study folder that holds anything but its runs and
// its own outputs (a *FieldError of Out).
func (st *Study) checkOut() error {
	if err := CheckOut(st.Out); err != nil {
		return err
	}
	entries, err := os.ReadDir(st.Out)
	if os.IsNotExist(err) {
		return os.MkdirAll(st.Out, 0o755)
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		n := e.Name()
		switch {
		case e.IsDir():
			if _, err := os.Stat(filepath.Join(st.Out, n, rundir.Spec)); err != nil && !strings.HasPrefix(n, "lr-") && !strings.HasPrefix(n, "dropout-") && !strings.HasPrefix(n, "resnet18-") && !st.Matrix.has(n) {
				return &FieldError{Field: "Out", Value: st.Out, Err: fmt.Errorf("holds a folder %s that is not a run", n), Fix: "name a new or empty folder, or a previous reproduce's"}
			}
		case n == rundir.Report || n == rundir.Metrics || strings.HasPrefix(n, "sweep-") || fileio.IsTemp(n) || n == rundir.Lock || n == rundir.Tables:
		case st.Matrix != nil && st.Matrix.Owns != nil && st.Matrix.Owns(n):
		default:
			return &FieldError{Field: "Out", Value: st.Out, Err: fmt.Errorf("holds other files (%s)", n), Fix: "name a new or empty folder, or a previous reproduce's"}
		}
	}
	return nil
}

// has says whether name is one of the matrix's runs (false for no matrix).
func (m *Matrix) has(name string) bool {
	if m == nil {
		return false
	}
	for _, r := range m.Runs {
		if r.Name == name {
			return true
		}
	}
	return false
}

// once runs write (the tables) under the lock of Out (the lock a run
// folder has: Folder.lockWait), and stamps Out with
// the runs it wrote them from (rundir.Tables: a hash of every run's
// metrics file and the matrix's Key). A worker of several that finds the
// stamp of these very runs leaves the tables as they are and returns
// ErrTablesWritten.
func (st *Study) once(all []*StudyRun, write func() error) error {
	unlock, err := Folder{st.Out}.lockWait() // waits for a worker writing them
	if err != nil {
		return err
	}
	defer unlock()
	h := sha256.New()
	if st.Matrix != nil {
		fmt.Fprintf(h, "key %q\n", st.Matrix.Key)
	}
	for _, r := range all {
		sum, err := fileio.SHA256(filepath.Join(st.Out, r.Name, rundir.Metrics))
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %s\n", r.Name, sum)
	}
	stamp := hex.EncodeToString(h.Sum(nil)) + "\n"
	path := filepath.Join(st.Out, rundir.Tables)
	if old, err := os.ReadFile(path); err == nil && string(old) == stamp && st.Shards > 1 {
		return ErrTablesWritten
	}
	os.Remove(path) // the tables change: no stamp until they are written
	if err := write(); err != nil {
		return err
	}
	return fileio.WriteAtomic(path, []byte(stamp))
}

// finish writes the study's tables (report.md, metrics.json, the sweep
// plots), once every run is done.
func (st *Study) finish(lr, drop, transfer []*StudyRun) (*StudyResult, error) {
	best := bestOf(lr)
	dropRuns := []*StudyRun{}
	for _, d := range model.StudyDropouts {
		if d == LRSweepDropout {
			dropRuns = append(dropRuns, best)
			continue
		}
		for _, r := range drop {
			if r.Dropout == d {
				dropRuns = append(dropRuns, r)
			}
		}
	}
	res := &StudyResult{LR: lr, Dropout: dropRuns, Transfer: transfer, Best: best, Final: bestOf(dropRuns)}
	return res, res.write(st.Out, st.Base)
}

func (res *StudyResult) write(out string, base Spec) error {
	curves := func(runs []*StudyRun, label func(*StudyRun) string, file string) error {
		var series []report.Series
		for _, r := range runs {
			var y []float64
			for _, e := range r.Result.History {
				y = append(y, 100*e.ValAcc) // in %, as the tables and the run's own plot
			}
			series = append(series, report.Series{Name: label(r), Y: y})
		}
		return report.Curves("Validation accuracy", "accuracy (%)", series, filepath.Join(out, file))
	}
	if err := curves(res.LR, func(r *StudyRun) string { return fmt.Sprintf("lr %g", r.LR) }, "sweep-lr"); err != nil {
		return err
	}
	if err := curves(res.Dropout, func(r *StudyRun) string { return r.Dropout }, "sweep-dropout"); err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Part 1 of the study, reproduced\n\nData `%s`, %s split (seed %d), %d epochs, batch %d, SGD momentum %g; cross-entropy on logits.\n"+
		"Selection by validation accuracy (best epoch); each row links to its run's full report.\n\n", base.Data, base.Split, base.Train.Seed, base.Train.Epochs, base.Train.BatchSize, base.Train.Momentum)
	link := func(r *StudyRun) string { return r.Name + "/" + rundir.Report }
	table := func(title string, runs []*StudyRun, chosen *StudyRun, key func(*StudyRun) string) {
		fmt.Fprintf(&b, "## %s\n\n| experiment | final train acc | final val acc | best val acc | |\n|---|---:|---:|---:|---|\n", title)
		for _, r := range runs {
			h := r.Result.History
			last := h[len(h)-1]
			mark := ""
			if r == chosen {
				mark = " **(chosen)**"
			}
			fmt.Fprintf(&b, "| %s%s | %.2f %% | %.2f %% | %.2f %% | [report](%s) |\n", key(r), mark, 100*last.TrainAcc, 100*last.ValAcc, 100*r.BestVal(), link(r))
		}
		b.WriteString("\n")
	}
	table("Learning rates (dropout "+LRSweepDropout+")", res.LR, res.Best, func(r *StudyRun) string { return fmt.Sprintf("lr %g", r.LR) })
	b.WriteString("![validation accuracy by learning rate](sweep-lr.png)\n\n")
	table(fmt.Sprintf("Dropout placements (lr %g)", res.Best.LR), res.Dropout, res.Final, func(r *StudyRun) string { return r.Dropout })
	b.WriteString("![validation accuracy by dropout placement](sweep-dropout.png)\n\n")
	final := res.Final
	fmt.Fprintf(&b, "## Final model\n\nDropout %s at learning rate %g: **test accuracy %.2f %%**.\n", final.Dropout, final.LR, 100*final.Test())
	if t := final.Result.Test; t != nil {
		body := report.EvaluationMarkdown(t)
		if i := strings.Index(body, "### Confusion matrix"); i >= 0 {
			body = body[i:]
		}
		b.WriteString("\n" + body + "\n")
	}
	if len(res.Transfer) > 0 {
		fmt.Fprintf(&b, "\n## Part 2: ResNet-18 transfer learning\n\nStarting from %s, learning rate %g.\n\n", filepath.Base(res.Transfer[0].Spec.Weights), res.Transfer[0].LR)
		b.WriteString("| model | final train acc | best val acc | test acc | |\n|---|---:|---:|---:|---|\n")
		row := func(name string, r *StudyRun) {
			h := r.Result.History
			fmt.Fprintf(&b, "| %s | %.2f %% | %.2f %% | %.2f %% | [report](%s) |\n", name, 100*h[len(h)-1].TrainAcc, 100*r.BestVal(), 100*r.Test(), link(r))
		}
		row("Part 1: CNN, dropout "+final.Dropout, final)
		for _, r := range res.Transfer {
			row("Part 2: ResNet-18, freeze "+r.Freeze, r)
		}
	}
	type runJSON struct {
		*StudyRun
		History train.History `json:"history"`
		BestVal float64       `json:"best_val_acc"`
		Test    float64       `json:"test_acc"`
	}
	js := func(runs []*StudyRun) []runJSON {
		out := []runJSON{}
		for _, r := range runs {
			out = append(out, runJSON{r, r.Result.History, r.BestVal(), r.Test()})
		}
		return out
	}
	m := map[string]any{"lr_runs": js(res.LR), "dropout_runs": js(res.Dropout), "best_lr": res.Best.LR, "final": final.Name,
		"final_test_acc": final.Test(), "transfer_runs": js(res.Transfer)}
	jb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := fileio.WriteAtomic(filepath.Join(out, rundir.Metrics), append(jb, '\n')); err != nil {
		return err
	}
	return fileio.WriteAtomic(filepath.Join(out, rundir.Report), []byte(b.String()))
}
