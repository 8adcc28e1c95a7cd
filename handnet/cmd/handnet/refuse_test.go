package main

import (
	"encoding/binary"
	"encoding/json"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/vision"
)

// TestTrainHugeBatchRefused: a --batch-size whose training activations
// cannot fit in the memory available is refused at once (exit 1, the
// estimate in the message), before the data is read — the data folder
// does not even exist — and before any rank starts or any run folder is
// made. With --nproc-per-node 2 the estimate counts both processes.
func TestTrainHugeBatchRefused(t *testing.T) {
	have := model.AvailableMemory()
	if have <= 0 {
		t.Skip("no MemAvailable in /proc/meminfo: the check has nothing to compare with")
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "run")
	perImage := model.ActivationBytes(model.Config{Arch: "cnn", Width: vision.Width, Height: vision.Height}, 1, true)
	refused := func(want string, args ...string) {
		t.Helper()
		args = append([]string{"train", "--data", filepath.Join(dir, "no-such-data"), "--out", out, "--device", "cpu", "--model", "cnn"}, args...)
		t0 := time.Now()
		p := start(t, nil, args...)
		code := p.wait(t, time.Minute)
		msg := p.out.String()
		if code != 1 || !strings.Contains(msg, want) || !strings.Contains(msg, "GB of activations and gradients") || !strings.Contains(msg, "lower --batch-size") {
			t.Errorf("handnet %q: exit %d, want 1 with %q and the estimate:\n%s", args, code, want, msg)
		}
		if strings.Contains(msg, "no-such-data") {
			t.Errorf("the data was looked at before the batch was refused:\n%s", msg)
		}
		if _, err := os.Stat(out); err == nil {
			t.Errorf("%s made though the batch was refused", out)
		}
		t.Logf("refused in %v: %s", time.Since(t0).Round(time.Millisecond), strings.TrimSpace(msg))
	}
	huge := strconv.FormatInt(4*have/perImage+1, 10) // estimated at 4x the memory available
	refused("--batch-size "+huge+": training cnn at 170x128 needs an estimated", "--batch-size", huge)
	refused("--batch-size 9223372036854775807: ", "--batch-size", "9223372036854775807")
	// Fits in one process by the estimate (60% of the memory), not in two.
	most := strconv.FormatInt(6*have/(10*perImage), 10)
	refused("--batch-size "+most+" in each of 2 processes", "--batch-size", most, "--nproc-per-node", "2")
}

// nanCheckpoint rewrites the safetensors file at path with a NaN as the
// first element of its first float32 tensor (in name order) and returns
// that tensor's name.
func nanCheckpoint(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b)
	var header map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &header); err != nil {
		t.Fatal(err)
	}
	names := []string{}
	for name := range header {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		var info struct {
			DType   string `json:"dtype"`
			Offsets []int  `json:"data_offsets"`
		}
		if name == "__metadata__" || json.Unmarshal(header[name], &info) != nil || info.DType != "F32" || info.Offsets[1] == info.Offsets[0] {
			continue
		}
		binary.LittleEndian.PutUint32(b[8+int(n)+info.Offsets[0]:], math.Float32bits(float32(math.NaN())))
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return name
	}
	t.Fatalf("%s: no float32 tensor", path)
	return ""
}

// TestNaNCheckpointRefused: a checkpoint with a NaN in a tensor fails
// clearly — exit 1 and a message naming the tensor, no probability or
// accuracy printed — in `predict` (also with --json) and in `eval` of a
// run whose best checkpoint holds it.
func TestNaNCheckpointRefused(t *testing.T) {
	dir := t.TempDir()
	data, runDir, cache := filepath.Join(dir, "data"), filepath.Join(dir, "run"), filepath.Join(dir, "cache")
	for _, args := range [][]string{
		{"fakedata", "--out", data, "--count", "48", "--size", "340x256", "--per-subject", "12"},
		{"train", "--data", data, "--cache-dir", cache, "--out", runDir, "--epochs", "1", "--batch-size", "8", "--split", "stratified", "--threads", "2"},
	} {
		if code := run(args); code != 0 {
			t.Fatalf("handnet %q: exit %d", args, code)
		}
	}
	best := filepath.Join(runDir, "best.safetensors")
	tensor := nanCheckpoint(t, best)
	want := "tensor " + tensor + " holds NaN at element 0: non-finite weights are refused"
	photo := filepath.Join(dir, "photo.jpg")
	var first string
	filepath.WalkDir(data, func(p string, d fs.DirEntry, err error) error {
		if err == nil && first == "" && strings.HasSuffix(p, ".jpg") {
			first = p
		}
		return err
	})
	if b, err := os.ReadFile(first); err != nil || os.WriteFile(photo, b, 0o644) != nil {
		t.Fatalf("no photo in %s: %v", data, err)
	}
	for _, args := range [][]string{
		{"eval", "--run", runDir},
		{"eval", "--run", runDir, "--json"},
		{"predict", "--checkpoint", best, photo},
		{"predict", "--checkpoint", best, "--json", photo},
	} {
		p := start(t, nil, args...)
		code := p.wait(t, time.Minute)
		out := p.out.String()
		if code != 1 || !strings.Contains(out, want) {
			t.Errorf("handnet %q: exit %d, want 1 naming the tensor (%q):\n%s", args, code, want, out)
		}
		for _, bad := range []string{"NaN %", "accuracy", "probability", `"class"`} {
			if strings.Contains(out, bad) {
				t.Errorf("handnet %q printed %q for a NaN checkpoint:\n%s", args, bad, out)
			}
		}
	}
	// The last checkpoint, untouched, still evaluates.
	p := start(t, nil, "eval", "--run", runDir, "--checkpoint", "last", "--json")
	if code := p.wait(t, time.Minute); code != 0 {
		t.Errorf("eval --checkpoint last of the same run: exit %d, want 0:\n%s", code, p.out.String())
	}
}
