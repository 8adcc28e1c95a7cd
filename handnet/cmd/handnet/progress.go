package main

import (
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// newBar returns a progress bar on stderr for total items of unit
// (e.g. "images"), with rate and ETA. It draws only when stderr is a
// terminal.
func newBar(total int, desc, unit string) *progressbar.ProgressBar {
	return progressbar.NewOptions(total,
		progressbar.OptionSetWriter(os.Stderr),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString(unit),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionFullWidth(),
		progressbar.OptionOnCompletion(func() { os.Stderr.WriteString("\n") }),
		// Redrawn bars are noise in logs and CI output: only on a terminal.
		progressbar.OptionSetVisibility(term.IsTerminal(int(os.Stderr.Fd()))),
	)
}
