package train

import (
	"bytes"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strconv"

	"github.com/handnet/handnet/handnet/runtime/fileio"
	"github.com/handnet/handnet/handnet/runtime/rundir"
)

// History is a run's epochs in order.
type History []EpochStats

// Best is the best epoch (1-based) by validation accuracy, the earliest on
// ties; 0 for an empty history. It is the one definition of "best": the
// trainer's best checkpoint, the report and reproduce's choices use it.
func (h History) Best() int {
	best, acc := 0, math.Inf(-1)
	for _, e := range h {
		if e.ValAcc > acc {
			best, acc = e.Epoch, e.ValAcc
		}
	}
	return best
}

// BestValAcc is the validation accuracy of the best epoch (0 when empty).
func (h History) BestValAcc() float64 {
	if b := h.Best(); b > 0 {
		return h[b-1].ValAcc
	}
	return 0
}

// historyHook writes the history files after every epoch, and on a resume
// at an epoch's end that a killed process may not have written them for.
func (t *Trainer) historyHook() hook {
	return hook{
		Start: func(resumed bool) error {
			if resumed && t.resumedAtEpochEnd() {
				return t.writeHistory()
			}
			return nil
		},
		Epoch: func(EpochStats) error { return t.writeHistory() },
	}
}

// writeHistory writes the run's history into the run folder (rank 0
// only), as JSON (rundir.History) and as a table (rundir.HistoryCSV).
func (t *Trainer) writeHistory() error {
	if t.rank() != 0 {
		return nil
	}
	b, err := json.MarshalIndent(t.state.History, "", "  ")
	if err != nil {
		return err
	}
	if err := fileio.WriteAtomic(t.folder().Path(rundir.History), append(b, '\n')); err != nil {
		return err
	}
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	w.Write([]string{"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "seconds", "images_per_sec"})
	f := func(v float64) string { return strconv.FormatFloat(v, 'g', 8, 64) }
	for _, s := range t.state.History {
		w.Write([]string{strconv.Itoa(s.Epoch), f(s.LR), f(s.TrainLoss), f(s.TrainAcc), f(s.ValLoss), f(s.ValAcc), f(s.Seconds), f(s.ImagesPerSec)})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return fmt.Errorf("%s: %w", rundir.HistoryCSV, err)
	}
	return fileio.WriteAtomic(t.folder().Path(rundir.HistoryCSV), buf.Bytes())
}

// ReadHistory reads a run folder's history (rundir.History).
func ReadHistory(dir string) (History, error) {
	path := rundir.Folder{Dir: dir}.Path(rundir.History)
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var h History
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return h, nil
}
