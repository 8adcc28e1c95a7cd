package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/vision"
	log "github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
)

func init() {
	register(&command{
		name:  "fakedata",
		usage: "--out DIR [--count N] [--seed S] [--size WxH] [--identity-signal S] [--gender-signal S]",
		summary: "Write a synthetic 11k Hands dataset (HandInfo.csv + Hands/*.jpg) with procedurally drawn hands.\n" +
			"--identity-signal gives each person a background and wristband colour of their own (what a model can\n" +
			"memorise people by); --gender-signal scales the gender cues of the hand itself (see handnet audit).",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			out := fs.String("out", "", "dataset folder to write (required)")
			count := fs.Int("count", 600, "number of images")
			seed := fs.Uint64("seed", vision.DefaultSeed, "random seed: the same seed writes the same files")
			size := fs.String("size", "1600x1200", "image size WxH")
			per := fs.Int("per-subject", 58, "images per subject")
			idSig := fs.Float64("identity-signal", 0, "0 to 1: how strongly each person's photos share a look of their own (background and wristband colour)")
			gSig := fs.Float64("gender-signal", 1, "0 to 1: how strongly the hand itself shows the gender (size, finger width, skin tone, nail polish; 1: the default look)")
			return func(args []string) error {
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				if *out == "" {
					return usagef("--out is required")
				}
				w, h, err := parseSize(*size)
				if err != nil {
					return usagef("--size: %v", err)
				}
				if *count <= 0 || *per <= 0 {
					return usagef("--count and --per-subject must be positive")
				}
				var sig *vision.FakeSignals
				if fs.Changed("identity-signal") || fs.Changed("gender-signal") {
					for name, v := range map[string]float64{"identity-signal": *idSig, "gender-signal": *gSig} {
						if !(v >= 0 && v <= 1) {
							return usagef("--%s %v: want a number from 0 to 1", name, v)
						}
					}
					sig = &vision.FakeSignals{Identity: *idSig, Gender: *gSig}
				}
				bar := newBar(*count, "drawing hands", "images")
				var mu sync.Mutex
				start := time.Now()
				err = vision.GenerateFake(*out, vision.FakeOptions{Count: *count, Seed: *seed, Width: w, Height: h, PerSubject: *per, Signals: sig,
					Progress: func(int) { mu.Lock(); bar.Add(1); mu.Unlock() }})
				if err != nil {
					return err
				}
				fmt.Printf("wrote %d synthetic images (%dx%d) and HandInfo.csv to %s in %.1fs\n", *count, w, h, *out, time.Since(start).Seconds())
				return nil
			}
		},
	})
	register(&command{
		name:    "cache build",
		usage:   "--data DIR [--cache-dir DIR] [--skip-bad] [--exact]",
		summary: "Decode and preprocess every image of a dataset once into the cache that training reads.\nRebuilt only when images, size or pipeline change.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			var co cacheFlags
			co.register(fs)
			return func(args []string) error {
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				ds, c, err := co.open()
				if err != nil {
					return err
				}
				defer c.Close()
				fmt.Printf("cache %s: %d images of %dx%d from %s", c.Path, c.Count-len(c.Bad), c.W, c.H, ds.Dir)
				if len(c.Bad) > 0 {
					fmt.Printf(", %d skipped as unreadable", len(c.Bad))
				}
				fmt.Println()
				return nil
			}
		},
	})
	register(&command{
		name:    "data stats",
		usage:   "--data DIR [--split random|stratified|subject] [--seed S] [--json]",
		summary: "Class counts, subjects, split sizes and per-split class counts of a dataset.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			data := fs.String("data", "", "dataset folder with HandInfo.csv (required)")
			split := fs.String("split", "random", "split method: random, stratified or subject")
			seed := fs.Uint64("seed", vision.DefaultSeed, "split seed (the same default as train)")
			asJSON := fs.Bool("json", false, "print JSON")
			manifest := fs.String("manifest", "", "split manifest CSV (imageName,split): read it if it exists, else write the split there")
			return func(args []string) error {
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				if *data == "" {
					return usagef("--data is required")
				}
				m, err := vision.ParseSplitMethod(*split)
				if err != nil {
					return usagef("--split: %v", err)
				}
				ds, err := vision.Open(*data)
				if err != nil {
					return err
				}
				a, loaded, err := vision.SplitWithManifest(ds.Records, m, *seed, *manifest)
				if err != nil {
					return err
				}
				if loaded {
					log.Infof("split read from %s", *manifest)
				} else if *manifest != "" {
					log.Infof("split saved to %s", *manifest)
				}
				src := experiment.SplitSource{Method: string(m), Seed: *seed}
				if loaded {
					src = experiment.SplitSource{Method: "manifest", Manifest: *manifest}
				}
				return printStats(experiment.SplitStats(ds, a, src), *asJSON)
			}
		},
	})
}

// limitFlags are the budgets of each image decode.
type limitFlags struct{ pixels, bytes, memory int64 }

func (l *limitFlags) register(fs *pflag.FlagSet) {
	fs.Int64Var(&l.pixels, "max-pixels", vision.DefaultMaxPixels, "refuse images of more pixels (width x height, read from the header before decoding)")
	fs.Int64Var(&l.bytes, "max-bytes", vision.DefaultMaxBytes, "refuse image files of more bytes (checked before reading)")
	fs.Int64Var(&l.memory, "decode-memory", vision.DefaultDecodeMemory, "bytes all image decodes in flight may take together; an image whose decode (estimated from its header) would take more is refused, others wait their turn")
}

// validate checks the flags and sets the process-wide decode budget.
func (l *limitFlags) validate() error {
	if l.pixels <= 0 || l.bytes <= 0 || l.memory <= 0 {
		return usagef("--max-pixels, --max-bytes and --decode-memory must be positive")
	}
	vision.SetDecodeMemory(l.memory)
	return nil
}

// cacheFlags are the flags of every command that reads a dataset's cache.
type cacheFlags struct {
	data, dir      string
	skipBad, exact bool
	limits         limitFlags
}

func (c *cacheFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.data, "data", "", "dataset folder with HandInfo.csv and Hands/ (required)")
	fs.StringVar(&c.dir, "cache-dir", "", "folder for the preprocessed-image cache (default "+vision.DefaultCacheDir()+")")
	fs.BoolVar(&c.skipBad, "skip-bad", false, "train without missing or unreadable images (they are counted and named) instead of stopping")
	fs.BoolVar(&c.exact, "exact", false, "decode JPEGs at full resolution (slower; the default fast path differs by <1/255); served models decode the same way")
	c.limits.register(fs)
}

// spec is the part of an experiment the flags describe: the dataset and
// how its cache is built.
func (c *cacheFlags) spec() experiment.Spec {
	return experiment.Spec{Data: c.data, CacheDir: c.dir, SkipBad: c.skipBad, Exact: c.exact,
		MaxPixels: c.limits.pixels, MaxBytes: c.limits.bytes}
}

// open reads the dataset and opens (building if needed; Ctrl-C stops the
// build) its cache.
func (c *cacheFlags) open() (*vision.Dataset, *vision.Cache, error) {
	if c.data == "" {
		return nil, nil, usagef("--data is required")
	}
	if err := c.limits.validate(); err != nil {
		return nil, nil, err
	}
	ds, err := vision.Open(c.data)
	if err != nil {
		return nil, nil, err
	}
	ctx, stop := interruptible()
	defer stop()
	cache, err := experiment.OpenCache(ds, c.spec().CacheOptions(ctx), hooks(""))
	if err != nil {
		return nil, nil, err
	}
	return ds, cache, nil
}

func parseSize(s string) (int, int, error) {
	w, h, ok := strings.Cut(strings.ToLower(s), "x")
	wi, err1 := strconv.Atoi(w)
	hi, err2 := strconv.Atoi(h)
	if !ok || err1 != nil || err2 != nil || wi <= 0 || hi <= 0 {
		return 0, 0, fmt.Errorf("size %q: want WIDTHxHEIGHT, e.g. 1600x1200", s)
	}
	return wi, hi, nil
}

// printStats prints a dataset's statistics: a summary and a table of the
// classes by split, or JSON.
func printStats(r *experiment.DataStats, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	fmt.Printf("%s: %d images, %d subjects\n%s: train %d, val %d, test %d images; %d/%d/%d subjects\n\n",
		r.Dataset, r.Images, r.Subjects, r.SplitSource, r.SplitSizes["train"], r.SplitSizes["val"], r.SplitSizes["test"],
		r.SplitSubj["train"], r.SplitSubj["val"], r.SplitSubj["test"])
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "class\tall\ttrain\tval\ttest\t")
	for c, name := range r.Classes {
		fmt.Fprintf(tw, "%d %s\t%d\t%d\t%d\t%d\t\n", c, name, r.ClassCounts[c], r.SplitClass["train"][c], r.SplitClass["val"][c], r.SplitClass["test"][c])
	}
	fmt.Fprintf(tw, "total\t%d\t%d\t%d\t%d\t\n", r.Images, r.SplitSizes["train"], r.SplitSizes["val"], r.SplitSizes["test"])
	return tw.Flush()
}
