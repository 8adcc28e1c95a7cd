package main

import (
	"fmt"
	"os"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"
)

// stderrIsTerminal is whether stderr is a terminal: bars there, log
// lines (progressLog) elsewhere — CI, nohup, Slurm, Kubernetes logs.
var stderrIsTerminal = term.IsTerminal(int(os.Stderr.Fd()))

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
		progressbar.OptionSetVisibility(stderrIsTerminal),
	)
}

// Defaults of progressLog: a line every logEveryItems items (batches)
// and at least every logInterval.
const (
	logEveryItems = 50
	logInterval   = 30 * time.Second
)

// progressLog decides when a progress line is due where no bar can be
// drawn: every `every` items and at least every `interval`, and says the
// rate and the ETA of the current pass (an epoch, a cache build).
type progressLog struct {
	every    int
	interval time.Duration
	now      func() time.Time

	start, last time.Time
	first, prev int // items done at the pass's first call and at the last call
	started     bool
}

func newProgressLog() *progressLog {
	return &progressLog{every: logEveryItems, interval: logInterval, now: time.Now}
}

// update records that done of total items are done and returns a line
// ("50/300 batches (17%), 3.2 batches/s, ETA 1m18s") when one is due,
// else "". A done back at or below the pass's first starts a new pass
// (the next epoch). The pass's end is not reported (the caller logs its summary).
func (p *progressLog) update(done, total int, unit string) string {
	t := p.now()
	if !p.started || done <= p.first && done < p.prev {
		p.start, p.last, p.first, p.prev, p.started = t, t, done, done, true
		return ""
	}
	if done < p.prev { // concurrent workers may report out of order
		return ""
	}
	crossed := p.every > 0 && done/p.every > p.prev/p.every
	p.prev = done
	if done >= total || (!crossed && t.Sub(p.last) < p.interval) {
		return ""
	}
	p.last = t
	line := fmt.Sprintf("%d/%d %s (%.0f%%)", done, total, unit, 100*float64(done)/float64(max(total, 1)))
	if el := t.Sub(p.start).Seconds(); el > 0 && done > p.first {
		rate := float64(done-p.first) / el
		eta := time.Duration(float64(total-done) / rate * float64(time.Second)).Round(time.Second)
		line += fmt.Sprintf(", %.2f %s/s, ETA %v", rate, unit, eta)
	}
	return line
}
