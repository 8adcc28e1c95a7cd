package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/handnet/handnet/handnet"
	"github.com/handnet/handnet/weights"
	"github.com/spf13/pflag"
)

var imageExts = map[string]bool{".jpg": true, ".jpeg": true, ".png": true, ".gif": true}

func init() {
	register(&command{
		name:  "predict",
		usage: "--checkpoint FILE [--top K] [--json] IMG|DIR...",
		summary: "Classify images with a trained checkpoint (a run's best.safetensors). Folders are walked for\n" +
			".jpg/.jpeg/.png/.gif files. Unreadable images are reported and skipped; the exit code is 1 if any failed.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			var cf classifierFlags
			cf.register(fs, false)
			top := fs.Int("top", handnet.DefaultTop, "show the K most likely classes (the same default as POST /predict?top=K)")
			asJSON := fs.Bool("json", false, "print JSON lines, one per image")
			return func(args []string) error {
				o, err := cf.imageOptions(args)
				if err != nil {
					return err
				}
				if *top < 1 {
					return usagef("--top must be at least 1")
				}
				return predict(cf.ckpt, *top, *asJSON, o, args)
			}
		},
	})
	register(&command{
		name:    "weights fetch",
		usage:   "NAME|URL [--dir DIR]",
		summary: "Download published weights (resnet18: torchvision's ImageNet ResNet-18) into a cache folder,\nresuming a partial download and verifying the SHA-256 in the file name.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			dir := fs.String("dir", weights.DefaultDir(), "folder for weights files")
			return func(args []string) error {
				if len(args) != 1 {
					return usagef("name one of: resnet18 (or a URL)")
				}
				url := args[0]
				if k, ok := weights.Known[url]; ok {
					url = k.URL
				} else if !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
					return usagef("unknown weights %q: want resnet18 or an http(s) URL", url)
				}
				var bar interface{ Set64(int64) error }
				start := time.Now()
				p, err := weights.Fetch(context.Background(), url, *dir, func(done, total int64) {
					if bar == nil {
						bar = newBar(int(total), "downloading", "bytes")
					}
					bar.Set64(done)
				})
				if err != nil {
					return err
				}
				fmt.Printf("%s (verified, %.1fs)\n", p, time.Since(start).Seconds())
				return nil
			}
		},
	})
	register(&command{
		name:    "weights info",
		usage:   "FILE [--json]",
		summary: "List a weights file's tensors, shapes and dtypes, and its SHA-256 (PyTorch .pth or handnet .safetensors);\nfor a handnet checkpoint, its header first: model, classes, input size and normalisation, epoch and\nmetrics, training configuration, data.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			asJSON := fs.Bool("json", false, "print JSON")
			return func(args []string) error {
				if len(args) != 1 {
					return usagef("name one weights file")
				}
				tensors, sum, meta, err := weights.Inspect(args[0])
				if err != nil {
					return err
				}
				if *asJSON {
					out := map[string]any{"file": args[0], "sha256": sum, "tensors": tensors}
					if h := checkpointHeader(meta); h != nil {
						out["header"] = h
					}
					return json.NewEncoder(os.Stdout).Encode(out)
				}
				printCheckpointHeader(os.Stdout, meta)
				params := int64(0)
				for _, t := range tensors {
					n := int64(1)
					for _, d := range t.Shape {
						n *= d
					}
					params += n
					fmt.Printf("%-45s %-20s %s\n", t.Name, fmt.Sprint(t.Shape), t.DType)
				}
				check := "no hash in its name"
				if h := weights.NameHash(args[0]); h != "" {
					check = "matches " + h + " in its name"
				}
				fmt.Printf("\n%d tensors, %d values\nsha256 %s (%s)\n", len(tensors), params, sum, check)
				return nil
			}
		},
	})
}

// foundImages are the images the arguments name: files as given, folders
// walked; rel is each file's path below the folder it was found in (its
// base name when named itself), missing the arguments that could not be
// read, reported and skipped.
type foundImages struct {
	files, rel []string
	missing    []missingArg
}

type missingArg struct {
	path string
	err  error
}

// imageFiles expands the arguments: files as given, folders walked for
// .jpg/.jpeg/.png/.gif files (the content decides the format when read).
// An argument that does not exist is reported in missing, not an error,
// unless nothing at all is found.
func imageFiles(args []string) (foundImages, error) {
	var f foundImages
	for _, a := range args {
		fi, err := os.Stat(a)
		if err != nil {
			f.missing = append(f.missing, missingArg{a, err})
			continue
		}
		if !fi.IsDir() {
			f.files, f.rel = append(f.files, a), append(f.rel, filepath.Base(a))
			continue
		}
		filepath.WalkDir(a, func(p string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() && imageExts[strings.ToLower(filepath.Ext(p))] {
				rel, rerr := filepath.Rel(a, p)
				if rerr != nil {
					rel = filepath.Base(p)
				}
				f.files, f.rel = append(f.files, p), append(f.rel, rel)
			}
			return nil
		})
	}
	if len(f.files) == 0 {
		if len(f.missing) > 0 {
			return f, f.missing[0].err
		}
		return f, fmt.Errorf("no images found in %v", args)
	}
	return f, nil
}

// outputNames gives each found image the file it writes under out: its
// path below its folder with the extension replaced by suffix. Two images
// that would write one file (x.jpg and x.png, or the same base name given
// twice) are refused, naming both, before anything is written.
func outputNames(f foundImages, out, suffix string) ([]string, error) {
	names := make([]string, len(f.files))
	by := map[string]string{}
	for i, rel := range f.rel {
		n := filepath.Join(out, strings.TrimSuffix(rel, filepath.Ext(rel))+suffix)
		if prev, ok := by[n]; ok {
			return nil, usagef("%s and %s would both write %s: explain them in separate runs (or separate --out folders)", prev, f.files[i], n)
		}
		by[n], names[i] = f.files[i], n
	}
	return names, nil
}

func predict(ckpt string, top int, asJSON bool, o handnet.Options, args []string) error {
	found, err := imageFiles(args)
	if err != nil {
		return err
	}
	files := found.files
	c, err := handnet.LoadWith(ckpt, o)
	if err != nil {
		return err
	}
	defer c.Close()
	var bar interface{ Add(int) error }
	if len(files) > 20 && !asJSON {
		bar = newBar(len(files), "predicting", "images")
	}
	failed := len(found.missing)
	enc := json.NewEncoder(os.Stdout)
	for _, m := range found.missing { // reported and skipped, as --help says
		if asJSON {
			if err := enc.Encode(map[string]string{"file": m.path, "error": m.err.Error()}); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(os.Stderr, "skipped %s: %v\n", m.path, m.err)
		}
	}
	for _, f := range files {
		p, err := c.PredictFile(f)
		if bar != nil {
			bar.Add(1)
		}
		if err != nil {
			failed++
			if asJSON {
				if err := enc.Encode(map[string]string{"file": f, "error": err.Error()}); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(os.Stderr, "skipped %s: %v\n", f, err)
			}
			continue
		}
		if len(p.Top) > top {
			p.Top = p.Top[:top]
		}
		if asJSON {
			if err := enc.Encode(struct {
				File string `json:"file"`
				handnet.Prediction
			}{f, p}); err != nil {
				return err
			}
			continue
		}
		var alts []string
		for _, t := range p.Top[1:] {
			alts = append(alts, fmt.Sprintf("%s %.3f", t.Class, t.Probability))
		}
		line := fmt.Sprintf("%s\t%s\t%.3f", f, p.Class, p.Probability)
		if len(alts) > 0 {
			line += "\t(" + strings.Join(alts, ", ") + ")"
		}
		fmt.Println(line)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d images could not be read or classified", failed, len(files)+len(found.missing))
	}
	return nil
}
