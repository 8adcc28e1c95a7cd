package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/png"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/handnet/handnet/handnet"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/fileio"
	"github.com/handnet/handnet/handnet/runtime/torch"
	log "github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
)

// classifierFlags load a checkpoint for prediction.
type classifierFlags struct {
	ckpt    string
	device  string
	threads int
	method  string
	limits  limitFlags
}

// register defines the flags; --method (class-activation maps) only where
// cam is true: the commands that explain (explain, serve).
func (c *classifierFlags) register(fs *pflag.FlagSet, cam bool) {
	fs.StringVar(&c.ckpt, "checkpoint", "", "handnet checkpoint, e.g. a run's best.safetensors (required)")
	fs.StringVar(&c.device, "device", "auto", "device: auto, cpu, cuda or cuda:N")
	fs.IntVar(&c.threads, "threads", 0, "CPU threads for torch (0: all usable CPUs)")
	c.method = "auto"
	if cam {
		fs.StringVar(&c.method, "method", "auto", "class-activation maps: gradcam, hirescam, or auto (hirescam for the study CNN, whose fully connected head makes Grad-CAM's averaged gradients cancel; gradcam for ResNet-18, where the two agree)")
	}
	c.limits.register(fs)
}

func (c *classifierFlags) options() (handnet.Options, error) {
	if c.ckpt == "" {
		return handnet.Options{}, usagef("--checkpoint is required")
	}
	if _, err := torch.ParseDevice(c.device); errors.Is(err, torch.ErrDeviceName) {
		return handnet.Options{}, usagef("--device: %v", err)
	} else if err != nil {
		return handnet.Options{}, fmt.Errorf("--device: %w", err) // not on this machine: refused before any work
	}
	if err := c.limits.validate(); err != nil {
		return handnet.Options{}, err
	}
	if c.threads < 0 {
		return handnet.Options{}, usagef("--threads %d: want 0 (all usable CPUs) or more", c.threads)
	}
	method, err := model.ParseCAMMethod(c.method)
	if err != nil {
		return handnet.Options{}, usagef("--method: %v", err)
	}
	return handnet.Options{Device: c.device, Threads: c.threads, MaxPixels: c.limits.pixels, MaxBytes: c.limits.bytes, CAM: method}, nil
}

// imageOptions is options for a command that takes images and folders:
// at least one.
func (c *classifierFlags) imageOptions(args []string) (handnet.Options, error) {
	o, err := c.options()
	if err == nil && len(args) == 0 {
		err = usagef("name at least one image or folder")
	}
	return o, err
}

func init() {
	register(&command{
		name:  "serve",
		usage: "--checkpoint FILE [--addr :8080] [--device D] [--max-batch 32] [--max-wait 5ms] [--drain 10s]",
		summary: "Serve a trained model over HTTP: POST /predict (and /explain, with a Grad-CAM overlay), GET /healthz,\n" +
			"/readyz, /metrics (Prometheus) and a web page at /. Concurrent requests are batched into shared\n" +
			"forward passes. SIGTERM or Ctrl-C stops accepting, finishes what is in flight (--drain), exits 0\n" +
			"(requests still running after --drain are cut, logged as a warning, and the exit is still 0).\n" +
			"Answers: 200, 400 bad image, 413 over a budget, 503 busy (Retry-After), 504 over --timeout,\n" +
			"500 a model whose output is not finite. Images whose decode is expensive (large PNG/GIF) take a\n" +
			"lane of their own, one at a time, so that they cannot starve ordinary photos.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			var cf classifierFlags
			cf.register(fs, true)
			addr := fs.String("addr", ":8080", "address to listen on")
			maxBatch := fs.Int("max-batch", 32, "images per forward pass at most (1: no batching)")
			maxWait := fs.Duration("max-wait", 5*time.Millisecond, "how long a forward pass waits for more images after the first")
			drain := fs.Duration("drain", 10*time.Second, "on SIGTERM/SIGINT, how long in-flight requests get to finish")
			conc := fs.Int("max-concurrent", 0, "images decoded at once (0: the number of CPUs)")
			queue := fs.Int("max-queue", 0, "requests that may wait for a decode slot (0: 8 x --max-concurrent); beyond, 503")
			timeout := fs.Duration("timeout", 30*time.Second, "time one request may take, reading its body included")
			return func(args []string) error {
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				o, err := cf.options()
				if err != nil {
					return err
				}
				if *maxBatch < 1 || *maxWait <= 0 || *drain < 0 || *timeout <= 0 || *conc < 0 || *queue < 0 {
					return usagef("--max-batch, --max-wait and --timeout must be positive; --drain, --max-concurrent and --max-queue not negative")
				}
				o.MaxConcurrent, o.MaxQueue, o.Timeout = *conc, *queue, *timeout
				return serve(cf.ckpt, *addr, o, handnet.ServerOptions{MaxBatch: *maxBatch, MaxWait: *maxWait}, *drain)
			}
		},
	})
	register(&command{
		name:  "explain",
		usage: "--checkpoint FILE [--class C] [--out DIR] IMG|DIR...",
		summary: "Grad-CAM: where the network looks. For each image, writes NAME.cam.png (the map blended over the\n" +
			"photo) into --out and prints a JSON line (class, probability, explained class, file written).\n" +
			"Images found in a folder keep their path below it (DIR/a/x.jpg -> OUT/a/x.cam.png); two images that\n" +
			"would write the same file are refused before anything runs. Unreadable images are reported and\n" +
			"skipped; the exit code is then 1.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			var cf classifierFlags
			cf.register(fs, true)
			class := fs.String("class", "", "class to explain, by name or index (default: each image's predicted class)")
			out := fs.String("out", "explain", "folder for the NAME.cam.png files")
			size := fs.Int("size", 640, "longest side of the pictures written, in pixels")
			return func(args []string) error {
				o, err := cf.imageOptions(args)
				if err != nil {
					return err
				}
				if *size < 16 {
					return usagef("--size %d: want at least 16", *size)
				}
				return explain(cf.ckpt, o, *class, *out, *size, args)
			}
		},
	})
}

func serve(ckpt, addr string, o handnet.Options, so handnet.ServerOptions, drain time.Duration) error {
	c, err := handnet.LoadWith(ckpt, o)
	if err != nil {
		return err
	}
	defer c.Close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--addr %s: %w", addr, err)
	}
	if dev, err := torch.ParseDevice(o.Device); err == nil {
		if err := model.CheckBatchMemory(c.Config(), so.MaxBatch, false, dev, "--max-batch"); err != nil {
			return err
		}
	}
	srv := handnet.NewServer(c, so)
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	info := c.Info()
	log.WithFields(log.Fields{"addr": ln.Addr().String(), "checkpoint": ckpt, "sha256": info.SHA256[:12], "arch": info.Arch,
		"max_batch": so.MaxBatch, "max_wait": so.MaxWait}).Info("serving")
	fmt.Printf("serving %s (%s) on http://%s\n", filepath.Base(ckpt), info.Arch, ln.Addr())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	done := make(chan error, 1)
	go func() { done <- hs.Serve(ln) }()
	select {
	case err := <-done:
		srv.Close()
		return err
	case s := <-sig:
		log.Infof("%v: no new requests; finishing those in flight (up to %v)", s, drain)
	}
	ctx, cancel := context.WithTimeout(context.Background(), drain)
	defer cancel()
	err = hs.Shutdown(ctx)
	srv.Close()
	if errors.Is(err, context.DeadlineExceeded) {
		// As --help says: the shutdown is what was asked for, exit 0.
		log.Warnf("requests still in flight after --drain %v were cut", drain)
		return nil
	}
	if err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

func explain(ckpt string, o handnet.Options, className, out string, size int, args []string) error {
	found, err := imageFiles(args)
	if err != nil {
		return err
	}
	files := found.files
	names, err := outputNames(found, out, ".cam.png")
	if err != nil {
		return err
	}
	c, err := handnet.LoadWith(ckpt, o)
	if err != nil {
		return err
	}
	defer c.Close()
	class, err := c.ParseClass(className)
	if err != nil {
		return usagef("--class %v", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	enc := json.NewEncoder(os.Stdout)
	failed := len(found.missing)
	for _, m := range found.missing {
		if err := enc.Encode(map[string]string{"file": m.path, "error": m.err.Error()}); err != nil {
			return err
		}
	}
	for i, f := range files {
		e, photo, err := c.ExplainFile(f, class)
		if err != nil {
			failed++
			if err := enc.Encode(map[string]string{"file": f, "error": err.Error()}); err != nil {
				return err
			}
			continue
		}
		dst := names[i]
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := writePNG(dst, e.Overlay(photo, size)); err != nil {
			return err
		}
		if err := enc.Encode(struct {
			File        string          `json:"file"`
			Class       string          `json:"class"`
			Probability float64         `json:"probability"`
			Explained   string          `json:"explained"`
			Method      model.CAMMethod `json:"method"`
			Written     string          `json:"written"`
		}{f, e.Class, e.Probability, e.Explained, e.Method, dst}); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d images could not be explained", failed, len(files)+len(found.missing))
	}
	return nil
}

// writePNG writes an image atomically.
func writePNG(path string, img image.Image) error {
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		return err
	}
	return fileio.WriteAtomic(path, b.Bytes())
}
