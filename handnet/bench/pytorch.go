package bench

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// Script is PyTorch's side of the benchmark (pytorch_bench.py beside this
// file): the same models and steps written as a user writes them by hand.
//
//go:embed pytorch_bench.py
var Script []byte

// PyTorchCase is the case PyTorch runs for c: the same model, batch,
// precision, layout and phase, on one resident batch (PyTorch's best case:
// no data loading at all).
func PyTorchCase(c Case) Case {
	c.Mode.Data = ""
	return c
}

// ErrNoPyTorch says that no python3 with torch (and torchvision, for
// ResNet-18) was found.
var ErrNoPyTorch = errors.New("no python3 with torch found")

// FindPython returns a python that imports torch (and torchvision when
// vision is set): python when not empty, else $HANDNET_PYTHON when set,
// else the first of python3 on PATH and /usr/bin/python3 that works.
func FindPython(python string, vision bool) (string, error) {
	cands := []string{python}
	if python == "" {
		if env := os.Getenv("HANDNET_PYTHON"); env != "" {
			cands = []string{env}
		} else {
			cands = []string{"python3", "/usr/bin/python3"}
		}
	}
	imp := "import torch"
	if vision {
		imp += ", torchvision"
	}
	var tried []string
	for _, p := range cands {
		if p == "" {
			continue
		}
		path, err := exec.LookPath(p)
		if err != nil {
			tried = append(tried, p+": not found")
			continue
		}
		out, err := exec.Command(path, "-c", imp).CombinedOutput()
		if err != nil {
			last := strings.TrimSpace(string(out))
			if i := strings.LastIndexByte(last, '\n'); i >= 0 {
				last = last[i+1:]
			}
			tried = append(tried, fmt.Sprintf("%s: %s", path, last))
			continue
		}
		return path, nil
	}
	return "", fmt.Errorf("%w (%s); install one (Debian: apt-get install python3-torch python3-torchvision) or name it with --python", ErrNoPyTorch, strings.Join(tried, "; "))
}

// PyTorchRow is one line of the script's output.
type PyTorchRow struct {
	Model        string  `json:"model"`
	Batch        int     `json:"batch"`
	Mode         string  `json:"mode"`
	Phase        string  `json:"phase"`
	Device       string  `json:"device"`
	ImagesPerSec float64 `json:"images_per_sec"`
	Steps        int     `json:"steps"`
	Seconds      float64 `json:"seconds"`
	Torch        string  `json:"torch"`
}

// PyTorch is PyTorch's side of the benchmark, running: the script in a
// python process that measures one case at a time, when asked, so that
// the two sides of a row are measured back to back under the same load
// (a shared machine's load changes over the minutes a whole run takes).
type PyTorch struct {
	python string
	dir    string
	cmd    *exec.Cmd
	in     io.WriteCloser
	out    *bufio.Scanner
	stderr *bytes.Buffer
}

// StartPyTorch starts the script with python, on the same device, threads
// and timing rules as handnet's side (threads 0 leaves PyTorch's
// default). Close stops it.
func StartPyTorch(ctx context.Context, python string, o Options, threads int) (*PyTorch, error) {
	o = o.withDefaults()
	dir, err := os.MkdirTemp("", "handnet-bench")
	if err != nil {
		return nil, err
	}
	script := filepath.Join(dir, "pytorch_bench.py")
	if err := os.WriteFile(script, Script, 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	dev := "cpu"
	if o.Device.IsCuda() {
		dev = "cuda:" + strconv.Itoa(o.Device.Value)
	}
	args := []string{script, "--stdin", "--device", dev, "--threads", strconv.Itoa(threads), "--warmup", strconv.Itoa(o.Warmup),
		"--steps", strconv.Itoa(o.Steps), "--min-seconds", strconv.FormatFloat(o.MinTime.Seconds(), 'f', -1, 64)}
	if o.Photos != "" {
		args = append(args, "--photos", o.Photos)
	}
	p := &PyTorch{python: python, dir: dir, cmd: exec.CommandContext(ctx, python, args...), stderr: &bytes.Buffer{}}
	p.cmd.Stderr = p.stderr
	out, err := p.cmd.StdoutPipe()
	if err == nil {
		p.in, err = p.cmd.StdinPipe()
	}
	if err == nil {
		err = p.cmd.Start()
	}
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	p.out = bufio.NewScanner(out)
	return p, nil
}

// Measure runs PyTorchCase(c) and returns its row.
func (p *PyTorch) Measure(c Case) (PyTorchRow, error) {
	key := PyTorchCase(c).String()
	if _, err := fmt.Fprintln(p.in, key); err != nil {
		return PyTorchRow{}, p.failed(err)
	}
	if !p.out.Scan() {
		return PyTorchRow{}, p.failed(p.out.Err())
	}
	var r PyTorchRow
	if err := json.Unmarshal(p.out.Bytes(), &r); err != nil {
		return PyTorchRow{}, fmt.Errorf("PyTorch benchmark: unreadable line %q: %v", p.out.Text(), err)
	}
	if r.Model != c.Model || r.Batch != c.Batch || r.Phase != c.Phase {
		return PyTorchRow{}, fmt.Errorf("PyTorch benchmark: asked for %s, answered %s:%d:%s:%s", key, r.Model, r.Batch, r.Mode, r.Phase)
	}
	return r, nil
}

// failed is the error of a script that stopped answering: its exit and
// the end of what it printed to stderr.
func (p *PyTorch) failed(err error) error {
	p.in.Close()
	werr := p.cmd.Wait()
	p.cmd = nil
	if werr == nil {
		werr = err
	}
	if werr == nil {
		werr = io.ErrUnexpectedEOF
	}
	msg := strings.TrimSpace(p.stderr.String())
	if len(msg) > 2000 {
		msg = "…" + msg[len(msg)-2000:]
	}
	return fmt.Errorf("PyTorch benchmark (%s): %v: %s", p.python, werr, msg)
}

// Close stops the script and removes its folder.
func (p *PyTorch) Close() error {
	defer os.RemoveAll(p.dir)
	if p.cmd == nil {
		return nil
	}
	p.in.Close() // the script ends at the end of its input
	err := p.cmd.Wait()
	p.cmd = nil
	return err
}

// Rounds measures case c rounds times, handnet's side (measure, told the
// round from 0) and then PyTorch's (p; nil: none) alternately, and returns
// the row with each side's best: a shared machine's load only ever slows
// a measurement down, and the two sides of each round see the same load.
// logf (nil: none) hears each PyTorch figure.
func Rounds(c Case, rounds int, measure func(round int) (Row, error), p *PyTorch, logf func(format string, args ...any)) (Row, error) {
	var row Row
	var best *PyTorchRow
	for r := range max(rounds, 1) {
		got, err := measure(r)
		if err != nil {
			return Row{}, err
		}
		if r == 0 || got.HandnetImagesPerSec > row.HandnetImagesPerSec {
			row = got
		}
		if p == nil {
			continue
		}
		py, err := p.Measure(c)
		if err != nil {
			return Row{}, err
		}
		if logf != nil {
			logf("pytorch: %s %.1f images/s (handnet %.1f)", PyTorchCase(c), py.ImagesPerSec, got.HandnetImagesPerSec)
		}
		if best == nil || py.ImagesPerSec > best.ImagesPerSec {
			best = &py
		}
	}
	if best != nil {
		row.SetPyTorch(c, *best)
	}
	return row, nil
}

// SetPyTorch sets the row's PyTorch figure (p, PyTorch's run of case c)
// and the ratio.
func (r *Row) SetPyTorch(c Case, p PyTorchRow) {
	v := p.ImagesPerSec
	ratio := r.HandnetImagesPerSec / v
	r.PyTorchImagesPerSec, r.Ratio = &v, &ratio
	r.PyTorchMode = PyTorchCase(c).Mode.String() + " (torch " + p.Torch + ", one resident batch)"
	r.PyTorchNote = ""
}
