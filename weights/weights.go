// Package weights fetches, verifies, inspects and loads published model
// weights: torchvision's ResNet-18 ImageNet file (PyTorch's zip/pickle
// format, or the legacy one) into handnet's ResNet-18 with a new head.
//
// Floor 2 (model) of handnet's layering: it imports packages of floors 0–2 only
// (README, "Packages"; tools/floors checks it).
package weights

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/fileio"
	"github.com/sugarme/gotch/ts"
)

// Published is a known weights file.
type Published struct {
	Name string // handnet's name for it
	URL  string
}

// Known lists the weights `handnet weights fetch NAME` knows.
var Known = map[string]Published{
	"resnet18": {Name: "resnet18", URL: "https://download.pytorch.org/models/resnet18-f37072fd.pth"},
}

// DefaultDir is where fetched weights go: $HANDNET_WEIGHTS, else
// $XDG_CACHE_HOME/handnet/weights (~/.cache/handnet/weights).
func DefaultDir() string {
	if d := os.Getenv("HANDNET_WEIGHTS"); d != "" {
		return d
	}
	d, err := os.UserCacheDir()
	if err != nil {
		d = os.TempDir()
	}
	return filepath.Join(d, "handnet", "weights")
}

var hashInName = regexp.MustCompile(`-([0-9a-f]{8,64})\.[A-Za-z]+$`)

// NameHash returns the SHA-256 prefix torchvision puts in its file names
// ("resnet18-f37072fd.pth" → "f37072fd"), or "" when there is none.
func NameHash(name string) string {
	if m := hashInName.FindStringSubmatch(filepath.Base(name)); m != nil {
		return m[1]
	}
	return ""
}

// Verify checks a file's SHA-256 against the hash prefix in its name (or
// in name, when given). Files without one pass.
func Verify(p, name string) error {
	if name == "" {
		name = p
	}
	want := NameHash(name)
	if want == "" {
		return nil
	}
	got, err := fileio.SHA256(p)
	if err != nil {
		return err
	}
	if !strings.HasPrefix(got, want) {
		return fmt.Errorf("%s: SHA-256 %s… does not start with %s from its name: the file is corrupt or not the published one; delete it and fetch again", p, got[:16], want)
	}
	return nil
}

// Fetch downloads url into dir (created if needed) and returns the file's
// path. A complete, verified file is not fetched again; a partial download
// (name.part) resumes with an HTTP range request. The file is verified
// against the hash in its name before it is put in place.
func Fetch(ctx context.Context, url, dir string, progress func(done, total int64)) (string, error) {
	name := path.Base(url)
	if name == "" || name == "/" || name == "." {
		return "", fmt.Errorf("cannot name a file after %q", url)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	final := filepath.Join(dir, name)
	if _, err := os.Stat(final); err == nil {
		if err := Verify(final, ""); err == nil {
			return final, nil
		}
		os.Remove(final) // corrupt: fetch again
	}
	part := final + ".part"
	var have int64
	if fi, err := os.Stat(part); err == nil {
		have = fi.Size()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	if have > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", have))
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w (the partial file is kept; run again to resume)", url, err)
	}
	defer resp.Body.Close()
	flags := os.O_CREATE | os.O_WRONLY
	total := resp.ContentLength
	switch {
	case resp.StatusCode == http.StatusPartialContent && have > 0:
		flags |= os.O_APPEND
		if total >= 0 {
			total += have
		}
	case resp.StatusCode == http.StatusRequestedRangeNotSatisfiable && have > 0:
		// The partial file is already whole.
		resp.Body.Close()
		return finish(part, final, name)
	case resp.StatusCode == http.StatusOK:
		flags |= os.O_TRUNC
		have = 0
	default:
		return "", fmt.Errorf("fetch %s: %s", url, resp.Status)
	}
	f, err := os.OpenFile(part, flags, 0o644)
	if err != nil {
		return "", err
	}
	w := &counter{w: f, n: have, total: total, progress: progress}
	_, err = io.Copy(w, resp.Body)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("fetch %s: %w after %d bytes (run again to resume)", url, err, w.n)
	}
	if total >= 0 && w.n != total {
		return "", fmt.Errorf("fetch %s: got %d of %d bytes (run again to resume)", url, w.n, total)
	}
	return finish(part, final, name)
}

func finish(part, final, name string) (string, error) {
	if err := Verify(part, name); err != nil {
		os.Remove(part)
		return "", err
	}
	if err := os.Rename(part, final); err != nil {
		return "", err
	}
	return final, nil
}

type counter struct {
	w        io.Writer
	n, total int64
	progress func(done, total int64)
}

func (c *counter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n += int64(n)
	if c.progress != nil {
		c.progress(c.n, c.total)
	}
	return n, err
}

// Read verifies a PyTorch weights file (zip or legacy format) against the
// hash in its name and returns its tensors (on the CPU) by name. Call it
// on a torch thread.
func Read(p string) (map[string]*ts.Tensor, error) {
	if err := Verify(p, ""); err != nil {
		return nil, err
	}
	if err := checkMagic(p); err != nil {
		return nil, err
	}
	return readPyTorch(p)
}

// checkMagic accepts the two formats torch.save writes: a zip archive
// (PyTorch >= 1.6) or a pickle stream (legacy); anything else stops here
// with an error that says what the file starts with.
func checkMagic(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	head := make([]byte, 4)
	n, _ := io.ReadFull(f, head)
	switch {
	case n == 4 && string(head) == "PK\x03\x04":
		return nil
	case n >= 2 && head[0] == 0x80 && head[1] >= 2 && head[1] <= 5:
		return nil
	}
	if n == 0 {
		return fmt.Errorf("%s: empty file, not PyTorch weights", p)
	}
	return fmt.Errorf("%s: not a PyTorch weights file (torch.save writes a zip archive or a pickle; this starts with % x)", p, head[:n])
}

// Tensor describes one tensor of a file.
type Tensor struct {
	Name  string  `json:"name"`
	Shape []int64 `json:"shape"`
	DType string  `json:"dtype"`
}

// Inspect lists a weights file's tensors, sorted by name, its SHA-256 and
// a safetensors file's header metadata (nil for a PyTorch file): for a
// handnet checkpoint, its model, training configuration and metrics (see
// model.CheckpointFormat). It reads PyTorch files and safetensors files
// (handnet checkpoints).
func Inspect(p string) (tensors []Tensor, sum string, meta map[string]string, err error) {
	if sum, err = fileio.SHA256(p); err != nil {
		return nil, "", nil, err
	}
	var all map[string]*ts.Tensor
	if strings.HasSuffix(p, ".safetensors") {
		all, meta, err = model.ReadSafetensors(p)
	} else {
		all, err = Read(p)
	}
	if err != nil {
		return nil, sum, nil, err
	}
	for name, t := range all {
		tensors = append(tensors, Tensor{Name: name, Shape: t.MustSize(), DType: t.DType().String()})
		t.MustDrop()
	}
	sort.Slice(tensors, func(i, j int) bool { return tensors[i].Name < tensors[j].Name })
	return tensors, sum, meta, nil
}

// LoadPretrained loads an ImageNet ResNet-18 file into m (a "resnet18"
// model): every tensor must match by name and shape, except the 1000-class
// fc head, which m replaces by its own, and PyTorch's num_batches_tracked
// counters. Anything else missing, unexpected or mis-shaped is an error
// listing the names. Call it on a torch thread, before training.
func LoadPretrained(m *model.Model, p string) error {
	if m.Config.Arch != "resnet18" {
		return fmt.Errorf("pretrained weights: model is %s, want resnet18", m.Config.Arch)
	}
	w, err := Read(p)
	if err != nil {
		return err
	}
	defer func() {
		for _, t := range w {
			t.MustDrop()
		}
	}()
	classes := int64(len(m.Config.Classes))
	for _, head := range []string{"fc.weight", "fc.bias"} {
		if t, ok := w[head]; ok && t.MustSize()[0] != classes {
			t.MustDrop()
			delete(w, head)
		}
	}
	ignore := func(n string) bool { return strings.HasSuffix(n, ".num_batches_tracked") }
	optional := func(n string) bool { return strings.HasPrefix(n, "fc.") }
	if err := m.Load(w, ignore, optional); err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	m.Config.Pretrained = filepath.Base(p)
	return nil
}
