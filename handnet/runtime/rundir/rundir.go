// Package rundir owns the layout of a run folder: the name of every file a
// training run, its evaluation and its report write there. (Its temporary
// files, and their sweep, are package fileio's: IsTemp, SweepTemps.) Every
// package that reads or writes a run folder names files through it; none
// spells a run file's name itself. It sits at the bottom of handnet,
// beside fileio.
//
// Floor 0 (runtime) of handnet's layering: it imports packages of floor 0 only
// (README, "Packages"; tools/floors checks it).
package rundir

import "path/filepath"

// Files of a run folder.
const (
	Spec    = "run.json"     // the run's spec, with its identity
	Split   = "split.csv"    // the split manifest
	Lock    = ".lock"        // flock'ed by the process training the folder (in a sweep's folder: by the worker writing its tables)
	Tables  = ".tables"      // in a sweep's folder: the stamp of the finished runs its tables were written from
	Metrics = "metrics.json" // the finished run's report
	Report  = "report.md"    // the same, for people

	// BestCheckpoint holds the best epoch's weights (by validation accuracy).
	BestCheckpoint = "best.safetensors"
	// LastCheckpoint holds the latest state, also saved mid-epoch.
	LastCheckpoint = "last.safetensors"
	// EpochCheckpoint holds the state at the last epoch boundary: what a
	// run resumed with another world size restarts from.
	EpochCheckpoint = "epoch.safetensors"

	History    = "history.json" // per-epoch losses and accuracies
	HistoryCSV = "history.csv"  // the same as a table

	// Plots, each written as NAME.png and NAME.svg (see Plot).
	LossPlot      = "loss"
	AccuracyPlot  = "accuracy"
	ConfusionPlot = "confusion"
	MistakeMaps   = "mistakes-cam.png" // Grad-CAM maps of test mistakes

	AuditJSON     = "audit.json" // handnet audit's findings
	AuditMarkdown = "audit.md"
	AuditPlot     = "audit" // the audit's chart, .png and .svg (see Plot)
)

// Plot names a plot file: base (LossPlot, …) with ext (".png" or ".svg").
func Plot(base, ext string) string { return base + ext }

// Folder is a run folder.
type Folder struct{ Dir string }

// Path names a file of the folder.
func (f Folder) Path(name string) string { return filepath.Join(f.Dir, name) }
