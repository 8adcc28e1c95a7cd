package train

// hook is a part of a run that the loop calls at its moments, as gomlx's
// training loop calls the hooks attached to it: the trainer's checkpoints
// (checkpointHook), its history files (historyHook) and its progress
// report (OnBatch, OnEpoch) are hooks, so that the loop itself saves no
// file. A nil func is not called. Hooks run in order on the torch thread,
// on every rank of a data-parallel run; the first error ends the run with
// it. It is the package's own seam, not API: no caller outside the
// package adds one (they have OnBatch, OnEpoch and the run folder); a test
// adds one through Trainer.extraHooks.
type hook struct {
	// Start is called once the run holds its first state, before the
	// first batch: the initial weights (resumed false) or what a resume
	// restored (resumed true).
	Start func(resumed bool) error
	// SyncEvery, when > 0, makes the loop bring the epoch's sums up to
	// date (a read of the device, and in a data-parallel run an
	// all-reduce) after every SyncEvery-th batch of an epoch, as it always
	// does after the last: a hook that saves the state needs them current
	// there. It must be the same on every rank.
	SyncEvery int
	// Batch is called after every batch.
	Batch func(s batchStep) error
	// Epoch is called after every epoch (validated), once the run's state
	// counts it: its history ends with st, its best epoch is up to date.
	Epoch func(st EpochStats) error
	// Interrupted is called when ctx ends the run, after the batch in
	// progress, before Run returns ErrInterrupted.
	Interrupted func() error
}

// batchStep is where a run stands after a batch.
type batchStep struct {
	Epoch, Epochs  int // 1-based epoch
	Batch, Batches int // batches done in this epoch
	// Synced tells that the epoch's sums were brought up to date after
	// this batch (see hook.SyncEvery).
	Synced bool
}

// ownHooks are the hooks the trainer installs: its checkpoints, its
// history files, then the progress report. The order is the order of the
// files on disk that a resume relies on: the last checkpoint first.
func (t *Trainer) ownHooks() []hook {
	return []hook{t.checkpointHook(), t.historyHook(), t.progressHook()}
}

// syncDue tells whether a hook wants the sums brought up to date after
// batch done of an epoch of nb batches.
func (t *Trainer) syncDue(done, nb int) bool {
	for _, h := range t.hooks {
		if h.SyncEvery > 0 && done%h.SyncEvery == 0 && done < nb {
			return true
		}
	}
	return false
}

// progressHook reports progress to OnBatch and OnEpoch. A batch is
// reported once the epoch's sums count some image: the figures are those
// of the last time they were brought up to date.
func (t *Trainer) progressHook() hook {
	return hook{
		Batch: func(s batchStep) error {
			if t.OnBatch != nil && t.state.Seen > 0 {
				seen := float64(t.state.Seen)
				t.OnBatch(Progress{Epoch: s.Epoch, Epochs: s.Epochs, Batch: s.Batch, Batches: s.Batches,
					Loss: t.state.LossSum / seen, Acc: float64(t.state.Correct) / seen,
					ImagesPerSecond: seen / t.state.Seconds})
			}
			return nil
		},
		Epoch: func(st EpochStats) error {
			if t.OnEpoch != nil {
				t.OnEpoch(st)
			}
			return nil
		},
	}
}
