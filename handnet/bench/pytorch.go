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

// RunPyTorch measures cases (PyTorchCase of each) in one PyTorch process
// (StartPyTorch), calling onRow as each finishes.
func RunPyTorch(ctx context.Context, python string, cases []Case, o Options, threads int, onRow func(PyTorchRow)) error {
	p, err := StartPyTorch(ctx, python, o, threads)
	if err != nil {
		return err
	}
	for _, c := range cases {
		r, err := p.Measure(c)
		if err != nil {
			p.Close()
			return err
		}
		onRow(r)
	}
	return p.Close()
}

// Compare fills in each row's PyTorch figure and ratio from pytorch, keyed
// by PyTorchCase(c).String().
func Compare(rows []Row, cases []Case, pytorch map[string]PyTorchRow) {
	for i, c := range cases {
		if p, ok := pytorch[PyTorchCase(c).String()]; ok {
			rows[i].SetPyTorch(c, p)
		}
	}
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
