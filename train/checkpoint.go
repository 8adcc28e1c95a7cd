package train

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/fileio"
	"github.com/handnet/handnet/handnet/runtime/rundir"
)

// folder is the run folder.
func (t *Trainer) folder() rundir.Folder { return rundir.Folder{Dir: t.Dir} }

// checkpointHook saves the run's checkpoints: the epoch checkpoint at the
// start of a fresh run (the first epoch boundary), the last one every
// Config.CheckpointEvery batches, at every epoch's end (then the epoch
// checkpoint too, and the best one when the epoch is the best) and on
// interruption. On a resume it completes the files of an epoch end the
// process did not finish.
func (t *Trainer) checkpointHook() hook {
	every := t.Config.CheckpointEvery
	return hook{
		Start: func(resumed bool) error {
			if !resumed {
				return t.save(rundir.EpochCheckpoint, true)
			}
			if t.resumedAtEpochEnd() {
				return t.markEpoch()
			}
			return nil
		},
		SyncEvery: every,
		Batch: func(s batchStep) error {
			if every > 0 && s.Synced && s.Batch%every == 0 && s.Batch < s.Batches {
				return t.save(rundir.LastCheckpoint, true)
			}
			return nil
		},
		Epoch: func(st EpochStats) error {
			if t.state.BestEpoch == st.Epoch { // the loop made it the best
				if err := t.save(rundir.BestCheckpoint, false); err != nil {
					return err
				}
			}
			if err := t.save(rundir.LastCheckpoint, true); err != nil {
				return err
			}
			return t.markEpoch()
		},
		Interrupted: func() error { return t.save(rundir.LastCheckpoint, true) },
	}
}

// resumedAtEpochEnd tells whether the restored state is an epoch's end: a
// process killed after saving the last checkpoint there may have died
// before the files that follow it, which a resume brings up to date.
func (t *Trainer) resumedAtEpochEnd() bool {
	return t.state.Batch == 0 && t.state.Epoch > 0 && len(t.state.History) == t.state.Epoch
}

// save writes a checkpoint into the run folder (rank 0 only); the last one
// also carries the optimizer state and the resume state.
func (t *Trainer) save(name string, withState bool) error {
	if t.rank() != 0 {
		return nil
	}
	meta := map[string]string{}
	for k, v := range t.Meta {
		meta[k] = v
	}
	cfg, err := json.Marshal(t.Config)
	if err != nil {
		return err
	}
	meta["train_config"] = string(cfg)
	if n := len(t.state.History); n > 0 {
		m, err := json.Marshal(t.state.History[n-1])
		if err != nil {
			return err
		}
		meta["metrics"] = string(m)
	}
	var extra []model.NamedTensor
	if withState {
		st, err := json.Marshal(t.state)
		if err != nil {
			return err
		}
		meta["train_state"] = string(st)
		extra = t.opt.State()
	}
	return model.SaveCheckpoint(t.folder().Path(name), t.Model, extra, meta)
}

// markEpoch makes the last checkpoint, just written at an epoch's end, the
// epoch checkpoint too (a hard link: no copy).
func (t *Trainer) markEpoch() error {
	if t.rank() != 0 {
		return nil
	}
	last, epoch := t.folder().Path(rundir.LastCheckpoint), t.folder().Path(rundir.EpochCheckpoint)
	if a, err := os.Stat(last); err == nil {
		if b, err := os.Stat(epoch); err == nil && os.SameFile(a, b) {
			return nil // already marked (rename between two links of one file does nothing)
		}
	}
	// The link's name is a temporary file's (".epoch.safetensors.tmp-link"):
	// a sweep of the folder removes one a killed process left.
	tmp := t.folder().Path(strings.TrimSuffix(fileio.TempPattern(epoch), "*") + "-link")
	os.Remove(tmp)
	if err := os.Link(last, tmp); err != nil {
		// No hard links on this file system: copy.
		b, err := os.ReadFile(last)
		if err != nil {
			return err
		}
		return fileio.WriteAtomic(epoch, b)
	}
	if err := os.Rename(tmp, epoch); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// resume restores the run from its folder (see restore); a run whose
// precision changed since keeps the loss scale it started with.
func (t *Trainer) resume() error {
	scaler := t.state.Scaler
	if err := t.restore(); err != nil {
		return err
	}
	if t.state.Scaler == nil || scaler == nil {
		t.state.Scaler = scaler // precision changed: start its scale afresh
	}
	return nil
}

// restore loads weights, momentum and state from the run folder: the last
// checkpoint, or, when the world size changed in the middle of an epoch,
// the last epoch boundary. In a data-parallel run rank 0 reads the files and
// the other ranks receive the state from it.
func (t *Trainer) restore() error {
	var momentum []string
	if t.rank() == 0 {
		st, err := t.readState(rundir.LastCheckpoint)
		if err != nil {
			return err
		}
		if was := max(st.WorldSize, 1); was != t.size() && st.Batch > 0 {
			t.logf("resume: the run was trained by %d process(es), this one has %d: restarting from the end of epoch %d (the %d batches done of epoch %d are trained again)",
				was, t.size(), st.Epoch, st.Batch, st.Epoch+1)
			if _, err := t.readState(rundir.EpochCheckpoint); err != nil {
				return fmt.Errorf("%w (a resume with another world size needs the epoch checkpoint)", err)
			}
		}
		for _, nt := range t.opt.State() {
			momentum = append(momentum, nt.Name)
		}
	}
	return t.shareResume(momentum)
}

// readState loads one of the run folder's checkpoints into the model, the
// optimizer and t.state.
func (t *Trainer) readState(name string) (State, error) {
	path := t.folder().Path(name)
	c, err := model.ReadCheckpoint(path)
	if err != nil {
		return State{}, fmt.Errorf("resume: %w", err)
	}
	defer c.Drop()
	var st State
	if err := json.Unmarshal([]byte(c.Metadata["train_state"]), &st); err != nil {
		return State{}, fmt.Errorf("resume: %s has no training state (%v)", path, err)
	}
	if st.Config.Seed != t.Config.Seed || st.Config.BatchSize != t.Config.BatchSize || st.Config.LR != t.Config.LR {
		return State{}, fmt.Errorf("resume: %s was trained with seed %d, batch %d, lr %g; this run asks for seed %d, batch %d, lr %g",
			path, st.Config.Seed, st.Config.BatchSize, st.Config.LR, t.Config.Seed, t.Config.BatchSize, t.Config.LR)
	}
	if err := t.Model.Load(c.Tensors, model.IsOptimizerState, nil); err != nil {
		return State{}, fmt.Errorf("resume: %w", err)
	}
	if err := t.opt.Restore(c.Tensors); err != nil {
		return State{}, fmt.Errorf("resume: %w", err)
	}
	saved := st
	st.Config = t.Config // more epochs may be asked for
	st.WorldSize = t.size()
	t.state = st
	return saved, nil
}
