package main

import (
	"strconv"
	"testing"

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
