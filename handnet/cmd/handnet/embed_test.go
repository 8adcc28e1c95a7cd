package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet/runtime/torch"
)

// embedMain is the program a Go user writes around handnet: Load, then
// PredictFile and Explain (README, "Use handnet from your Go program").
const embedMain = `package main

import (
	"encoding/json"
	"log"
	"os"

	"github.com/handnet/handnet/handnet"
)

func main() {
	c, err := handnet.Load(os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	p, err := c.PredictFile(os.Args[2])
	if err != nil {
		log.Fatal(err)
	}
	e, _, err := c.ExplainFile(os.Args[2], -1)
	if err != nil {
		log.Fatal(err)
	}
	json.NewEncoder(os.Stdout).Encode(map[string]any{
		"class": p.Class, "probability": p.Probability,
		"explained": e.Explained, "map": len(e.Map), "w": e.W, "h": e.H,
		"libtorch": handnet.Version().Libtorch,
	})
}
`

// embedTest is a test in the user's module: go test works there too.
const embedTest = `package main

import (
	"testing"

	"github.com/handnet/handnet/handnet"
)

func TestVersion(t *testing.T) {
	if v := handnet.Version(); v.Libtorch == "" || v.Handnet == "" {
		t.Fatalf("version: %+v", v)
	}
}
`

// TestEmbedFromAnotherModule does what a Go user does to embed handnet: a
// module of their own that requires handnet (here through a replace to a
// read-only copy of this checkout's tracked files, since it is not
// published), the documented setup command run from that module's root,
// then plain go build, go test and go run. The program's answer for a real
// photo equals `handnet predict --json`, and nothing is written into the
// read-only copy.
func TestEmbedFromAnotherModule(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Fatalf("no go command on PATH: %v", err)
	}
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	photo, err := filepath.Abs("../../../../shared/data/real-sample/Hand_0000033.jpg")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(photo); err != nil {
		t.Fatalf("the real sample photos are part of the test set-up: %v", err)
	}
	tmp := t.TempDir()

	// A read-only copy of the tracked files, as in Go's module cache.
	ro := filepath.Join(tmp, "handnet-ro")
	copyTracked(t, root, ro)
	setReadOnly(t, ro, true)
	t.Cleanup(func() { setReadOnly(t, ro, false) })
	before := treeDigest(t, ro)

	// A checkpoint the test trains.
	data, runDir := filepath.Join(tmp, "data"), filepath.Join(tmp, "run")
	for _, args := range [][]string{
		{"fakedata", "--out", data, "--count", "48", "--size", "340x256", "--per-subject", "12"},
		{"train", "--data", data, "--cache-dir", filepath.Join(tmp, "cache"), "--out", runDir, "--epochs", "1", "--batch-size", "8"},
	} {
		if code := run(args); code != 0 {
			t.Fatalf("handnet %q: exit %d", args, code)
		}
	}
	ckpt := filepath.Join(runDir, "best.safetensors")

	// The user's module.
	app := filepath.Join(tmp, "app")
	os.MkdirAll(app, 0o755)
	gomod := fmt.Sprintf("module example.com/app\n\ngo 1.26\n\nrequire github.com/handnet/handnet v0.0.0-00010101000000-000000000000\n\nreplace github.com/handnet/handnet => %s\n", ro)
	for name, text := range map[string]string{"go.mod": gomod, "main.go": embedMain, "main_test.go": embedTest} {
		if err := os.WriteFile(filepath.Join(app, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// `go mod tidy` stands for `go get github.com/handnet/handnet@latest`,
	// which needs a published version: it adds handnet's requirements.
	goCmd(t, app, 5*time.Minute, "mod", "tidy")
	out := goCmd(t, app, 10*time.Minute, "run", "github.com/handnet/handnet/tools/setup")
	work := filepath.Join(app, "go.work")
	if !strings.Contains(out, "wrote "+work) {
		t.Errorf("setup did not say it wrote %s:\n%s", work, out)
	}
	w, err := os.ReadFile(work)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"replace github.com/sugarme/gotch v0.9.1 => ", "replace github.com/handnet/handnet v0.0.0-00010101000000-000000000000 => "} {
		if !strings.Contains(string(w), want) {
			t.Errorf("go.work lacks %q:\n%s", want, w)
		}
	}
	// A second run finds everything prepared.
	start := time.Now()
	out = goCmd(t, app, 2*time.Minute, "run", "github.com/handnet/handnet/tools/setup")
	if !strings.Contains(out, "already prepared") || !strings.Contains(out, "up to date") {
		t.Errorf("second setup did not reuse its work (%v):\n%s", time.Since(start), out)
	}

	goCmd(t, app, 10*time.Minute, "build", "-o", "app", ".")
	goCmd(t, app, 5*time.Minute, "test", "-count=1", "./...")
	var got struct {
		Class       string  `json:"class"`
		Probability float64 `json:"probability"`
		Explained   string  `json:"explained"`
		Map, W, H   int
		Libtorch    string `json:"libtorch"`
	}
	progOut := runIn(t, app, time.Minute, nil, filepath.Join(app, "app"), ckpt, photo)
	if err := json.Unmarshal([]byte(progOut), &got); err != nil {
		t.Fatalf("the program printed %q: %v", progOut, err)
	}

	// The same photo through the CLI.
	cli := runIn(t, tmp, time.Minute, []string{"HANDNET_TEST_MAIN=1"}, os.Args[0], "predict", "--json", "--checkpoint", ckpt, photo)
	var want struct {
		Class       string  `json:"class"`
		Probability float64 `json:"probability"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(cli)), &want); err != nil {
		t.Fatalf("predict --json printed %q: %v", cli, err)
	}
	if got.Class != want.Class || math.Abs(got.Probability-want.Probability) > 1e-9 {
		t.Errorf("embedded: %s %.9f; handnet predict: %s %.9f", got.Class, got.Probability, want.Class, want.Probability)
	}
	if got.Explained != got.Class || got.W <= 0 || got.Map != got.W*got.H || got.Libtorch == "" {
		t.Errorf("explanation: %+v", got)
	}
	if after := treeDigest(t, ro); after != before {
		t.Errorf("the read-only copy changed")
	}
}

// copyTracked copies the files git tracks under root (as they are in the
// working tree) to dst.
func copyTracked(t *testing.T, root, dst string) {
	t.Helper()
	out, err := exec.Command("git", "-C", root, "ls-files", "-z").Output()
	if err != nil {
		t.Fatalf("git ls-files in %s: %v", root, err)
	}
	for _, rel := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if os.IsNotExist(err) {
			continue // deleted in the working tree
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dst, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// setReadOnly takes the write bits off every file and folder under dir (or
// gives them back).
func setReadOnly(t *testing.T, dir string, ro bool) {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
			if !ro {
				return os.Chmod(p, 0o755)
			}
			return nil
		}
		mode := os.FileMode(0o644)
		if ro {
			mode = 0o444
		}
		return os.Chmod(p, mode)
	})
	if err != nil {
		t.Fatal(err)
	}
	if ro { // folders last, deepest first
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Chmod(dirs[i], 0o555); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// treeDigest hashes every name, mode and content under dir.
func treeDigest(t *testing.T, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(h, "%s %v\n", rel, fi.Mode())
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h.Write(b)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// goCmd runs the go command in dir as a user would there: no workspace or
// flags inherited from this checkout's test run.
func goCmd(t *testing.T, dir string, limit time.Duration, args ...string) string {
	t.Helper()
	return runIn(t, dir, limit, []string{"GOWORK=", "GOFLAGS="}, "go", args...)
}

// runIn runs a command in dir with extra environment and a time limit, and
// returns its standard output; it fails the test on a non-zero exit.
func runIn(t *testing.T, dir string, limit time.Duration, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %q in %s: %v (after %v)\nstdout:\n%s\nstderr:\n%s", name, args, dir, err, time.Since(start).Round(time.Millisecond), stdout.String(), stderr.String())
	}
	t.Logf("%s %s: %v", filepath.Base(name), strings.Join(args, " "), time.Since(start).Round(time.Millisecond))
	return stdout.String()
}

// TestMakeInstall installs handnet under a fresh PREFIX and runs it from /:
// version names libtorch's version and doctor trains its tiny net.
func TestMakeInstall(t *testing.T) {
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	prefix := t.TempDir()
	runIn(t, root, 10*time.Minute, nil, "make", "--no-print-directory", "install", "PREFIX="+prefix)
	bin := filepath.Join(prefix, "bin", "handnet")
	out := runIn(t, "/", time.Minute, nil, bin, "version")
	lt := torchBuildVersion()
	if !strings.Contains(out, "libtorch      "+lt+" ") || !strings.Contains(out, "handnet       ") {
		t.Errorf("handnet version does not name libtorch %s:\n%s", lt, out)
	}
	if short := strings.TrimSpace(runIn(t, "/", time.Minute, nil, bin, "--version", "--short")); short == "" || strings.ContainsAny(short, " \n") {
		t.Errorf("--version --short: %q, want one word", short)
	}
	out = runIn(t, "/", 2*time.Minute, nil, bin, "doctor", "--device", "cpu")
	if !strings.Contains(out, "check         ok") || !strings.Contains(out, "malloc        tuned by handnet") {
		t.Errorf("doctor from /:\n%s", out)
	}
	// The user's own malloc settings win, and doctor says so.
	out = runIn(t, "/", 2*time.Minute, []string{"GLIBC_TUNABLES=glibc.malloc.trim_threshold=1048576"}, bin, "doctor", "--device", "cpu")
	if !strings.Contains(out, "malloc        glibc's own thresholds") || !strings.Contains(out, "check         ok") {
		t.Errorf("doctor with GLIBC_TUNABLES set:\n%s", out)
	}
}

func torchBuildVersion() string { return torch.BuildInfo().Libtorch.Version }
