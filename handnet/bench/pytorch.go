package bench

import (
	"bufio"
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
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

// RunPyTorch runs cases (PyTorchCase of each) in the script with python, on
// the same device, threads and timing rules as handnet's side, calling
// onRow as each finishes. threads 0 leaves PyTorch's default.
func RunPyTorch(ctx context.Context, python string, cases []Case, o Options, threads int, onRow func(PyTorchRow)) error {
	o = o.withDefaults()
	dir, err := os.MkdirTemp("", "handnet-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	script := filepath.Join(dir, "pytorch_bench.py")
	if err := os.WriteFile(script, Script, 0o644); err != nil {
		return err
	}
	dev := "cpu"
	if o.Device.IsCuda() {
		dev = "cuda:" + strconv.Itoa(o.Device.Value)
	}
	args := []string{script, "--device", dev, "--threads", strconv.Itoa(threads), "--warmup", strconv.Itoa(o.Warmup),
		"--steps", strconv.Itoa(o.Steps), "--min-seconds", strconv.FormatFloat(o.MinTime.Seconds(), 'f', -1, 64)}
	if o.Photos != "" {
		args = append(args, "--photos", o.Photos)
	}
	for _, c := range cases {
		args = append(args, PyTorchCase(c).String())
	}
	cmd := exec.CommandContext(ctx, python, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		var r PyTorchRow
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			return fmt.Errorf("PyTorch benchmark: unreadable line %q: %v", sc.Text(), err)
		}
		onRow(r)
	}
	if err := cmd.Wait(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = "…" + msg[len(msg)-2000:]
		}
		return fmt.Errorf("PyTorch benchmark (%s): %v: %s", python, err, msg)
	}
	return nil
}

// Compare fills in each row's PyTorch figure and ratio from pytorch, keyed
// by PyTorchCase(c).String().
func Compare(rows []Row, cases []Case, pytorch map[string]PyTorchRow) {
	for i, c := range cases {
		p, ok := pytorch[PyTorchCase(c).String()]
		if !ok {
			continue
		}
		v := p.ImagesPerSec
		ratio := rows[i].HandnetImagesPerSec / v
		rows[i].PyTorchImagesPerSec, rows[i].Ratio = &v, &ratio
		rows[i].PyTorchMode = PyTorchCase(c).Mode.String() + " (torch " + p.Torch + ", one resident batch)"
	}
}
