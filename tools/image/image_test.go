// Package image tests the container image that `make image` builds from the
// repository's Containerfile, with podman: the image builds, handnet runs in
// it as a non-root user, serves a mounted checkpoint to the host, and two
// containers train one data-parallel run that equals the same run on the
// host. `make test` installs podman, runc and mmdebstrap and makes the base
// image locally (make image-base); elsewhere the test skips without them.
package image

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

const (
	root      = "../.."
	baseImage = "docker.io/library/debian:bookworm-slim"
	photo     = "../../../shared/data/real-sample/Hand_0000033.jpg"
	// Kept small: the libraries libtorch loads are most of it (about
	// 0.5 GB); the guard catches a Containerfile that installs whole
	// packages again (1.15 GB).
	maxImageMB = 750
)

// podmanRun starts every container of the test: runc (crun cannot start
// containers on every host), explicit rlimits, the host network (the test
// talks to the containers and they to each other over 127.0.0.1 only).
var podmanRun = []string{"run", "--rm", "--runtime", "runc", "--ulimit", "nofile=20000:20000",
	"--ulimit", "nproc=4096:4096", "--network", "host"}

func need(t *testing.T) {
	t.Helper()
	why := ""
	for _, c := range []string{"podman", "runc"} {
		if _, err := exec.LookPath(c); err != nil {
			why = c + " is missing"
		}
	}
	if why == "" {
		if err := exec.Command("podman", "image", "exists", baseImage).Run(); err != nil {
			why = "the base image " + baseImage + " is missing (make image-base makes it without a registry)"
		}
	}
	if why == "" {
		if _, err := os.Stat(photo); err != nil {
			why = "no real photo: " + err.Error()
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal(why + ": `make test` installs podman, runc and mmdebstrap and makes the base image")
	}
	t.Skip(why + " (make test sets them up)")
}

// command runs name args with a time limit and returns its combined output.
func command(t *testing.T, limit time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s %q: still running after %v", name, args, limit)
	}
	return string(out), err
}

func must(t *testing.T, limit time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := command(t, limit, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func imageIDs(t *testing.T) map[string]bool {
	ids := map[string]bool{}
	for _, id := range strings.Fields(must(t, time.Minute, "podman", "images", "--all", "--quiet", "--no-trunc")) {
		ids[id] = true
	}
	return ids
}

// container is one podman run of the image, attached, in the background.
type container struct {
	name string
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan error
}

var names int

// start runs the image in a container named after the test; it is killed
// after limit (podman --timeout) and removed when the test ends.
func start(t *testing.T, image string, limit time.Duration, opts []string, args ...string) *container {
	t.Helper()
	names++
	c := &container{name: fmt.Sprintf("handnet-test-%d-%d", os.Getpid(), names), done: make(chan error, 1)}
	a := append(append([]string{}, podmanRun...), "--name", c.name, "--timeout", strconv.Itoa(int(limit.Seconds())))
	a = append(append(append(a, opts...), image), args...)
	c.cmd = exec.Command("podman", a...)
	c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.done <- c.cmd.Wait() }()
	t.Cleanup(func() {
		exec.Command("podman", "rm", "--force", "--ignore", "--time", "0", c.name).Run()
		c.cmd.Process.Kill()
	})
	return c
}

// wait returns the container's exit code; past limit the test fails.
func (c *container) wait(t *testing.T, limit time.Duration) int {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(limit):
		exec.Command("podman", "rm", "--force", "--ignore", "--time", "0", c.name).Run()
		t.Fatalf("container %s still running after %v:\n%s", c.name, limit, c.out.String())
	}
	return c.cmd.ProcessState.ExitCode()
}

func runImage(t *testing.T, image string, limit time.Duration, opts []string, args ...string) (string, int) {
	t.Helper()
	c := start(t, image, limit, opts, args...)
	code := c.wait(t, limit+30*time.Second)
	return c.out.String(), code
}

var sizeLine = regexp.MustCompile(`image \S+: (\d+) MB`)

// TestImage builds the image with `make image` once and runs it: doctor as
// the non-root user, two ranks of a data-parallel run equal to the same run
// on the host, and serve with the run's checkpoint mounted read-only.
func TestImage(t *testing.T) {
	need(t)
	before := imageIDs(t)
	tag := fmt.Sprintf("localhost/handnet-test:%d", os.Getpid())
	t.Cleanup(func() {
		exec.Command("podman", "rmi", "--force", tag).Run()
		for id := range imageIDs(t) {
			if !before[id] {
				t.Errorf("the test left image %s behind", id)
			}
		}
	})
	// --layers=false: no intermediate images stay behind.
	out := must(t, 10*time.Minute, "make", "-C", root, "image", "IMAGE="+tag, "CONTAINER=podman",
		"CONTAINER_BUILD_FLAGS=--isolation chroot --layers=false --force-rm")
	m := sizeLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("make image did not report the image's size:\n%s", out)
	}
	if mb, _ := strconv.Atoi(m[1]); mb > maxImageMB {
		t.Errorf("the image is %d MB, more than %d MB", mb, maxImageMB)
	}
	t.Logf("%s", m[0])
	bin, err := filepath.Abs(filepath.Join(root, "bin", "handnet"))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("Config", func(t *testing.T) {
		var inspect []struct {
			Config struct {
				User         string
				Entrypoint   []string
				ExposedPorts map[string]any
				Labels       map[string]string
			}
		}
		if err := json.Unmarshal([]byte(must(t, time.Minute, "podman", "image", "inspect", tag)), &inspect); err != nil || len(inspect) != 1 {
			t.Fatalf("podman image inspect: %v", err)
		}
		c := inspect[0].Config
		if c.User != "10001:10001" || strings.Join(c.Entrypoint, " ") != "handnet" || c.ExposedPorts["8080/tcp"] == nil {
			t.Errorf("want user 10001:10001, ENTRYPOINT [handnet], EXPOSE 8080; got %+v", c)
		}
		version := strings.TrimSpace(must(t, time.Minute, bin, "version", "--short"))
		if got := c.Labels["org.opencontainers.image.version"]; got != version || version == "" {
			t.Errorf("label org.opencontainers.image.version = %q, want handnet version --short = %q", got, version)
		}
		if c.Labels["org.opencontainers.image.revision"] == "" || c.Labels["org.opencontainers.image.title"] != "handnet" {
			t.Errorf("OCI labels: %v", c.Labels)
		}
		// The user, the mount points, and no toolchain.
		out, code := runImage(t, tag, time.Minute, []string{"--entrypoint", "sh"}, "-c",
			`id -u; test -d /data && test -w /runs && echo mounts; for c in go gcc g++ cc c++ ld as make; do command -v $c; done; exit 0`)
		if code != 0 || strings.Fields(out)[0] != "10001" || strings.TrimSpace(strings.Join(strings.Fields(out)[1:], " ")) != "mounts" {
			t.Errorf("want uid 10001, /data, a writable /runs and no compiler in the image; got exit %d:\n%s", code, out)
		}
	})

	t.Run("Doctor", func(t *testing.T) {
		out, code := runImage(t, tag, 2*time.Minute, nil, "doctor")
		if code != 0 {
			t.Fatalf("handnet doctor: exit %d\n%s", code, out)
		}
		for _, want := range []string{"libtorch      1.13.1", "native        store, gloo", "check         ok"} {
			if !strings.Contains(out, want) {
				t.Errorf("handnet doctor in the container does not report %q:\n%s", want, out)
			}
		}
	})

	// Two containers are the two ranks of one run (the torchrun variables, a
	// mounted synthetic dataset, rank 0 writing to the mounted /runs); the
	// same run by two processes on the host gives the same tensors.
	dir := t.TempDir()
	data, runs := filepath.Join(dir, "data"), filepath.Join(dir, "runs")
	must(t, time.Minute, bin, "fakedata", "--out", data, "--count", "120", "--size", "340x256", "--per-subject", "30")
	if err := os.Mkdir(runs, 0o755); err != nil {
		t.Fatal(err)
	}
	if os.Getuid() == 0 { // rootful podman: the image's user writes the host folder
		if err := os.Chown(runs, 10001, 10001); err != nil {
			t.Fatal(err)
		}
	} else {
		os.Chmod(runs, 0o777)
	}
	train := []string{"train", "--epochs", "2", "--batch-size", "8", "--threads", "1", "--split", "stratified",
		"--dropout", "none", "--dist-timeout", "60s"}
	rankEnv := func(rank, port int) []string {
		return []string{"RANK=" + strconv.Itoa(rank), "WORLD_SIZE=2", "LOCAL_RANK=" + strconv.Itoa(rank), "LOCAL_WORLD_SIZE=2",
			"MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + strconv.Itoa(port)}
	}
	hostRun := filepath.Join(dir, "host")
	t.Run("TrainTwoRanks", func(t *testing.T) {
		port := freePort(t)
		var ranks []*container
		for rank := 0; rank < 2; rank++ {
			opts := []string{"--volume", data + ":/data:ro"}
			if rank == 0 {
				opts = append(opts, "--volume", runs+":/runs")
			}
			for _, e := range rankEnv(rank, port) {
				opts = append(opts, "--env", e)
			}
			ranks = append(ranks, start(t, tag, 3*time.Minute, opts, append(train, "--data", "/data", "--out", "/runs/ddp")...))
		}
		for rank, c := range ranks {
			if code := c.wait(t, 4*time.Minute); code != 0 {
				t.Fatalf("rank %d in its container: exit %d\n%s", rank, code, c.out.String())
			}
		}

		port = freePort(t)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		var procs []*exec.Cmd
		var outs []*bytes.Buffer
		for rank := 0; rank < 2; rank++ {
			cmd := exec.CommandContext(ctx, bin, append(train, "--data", data, "--out", hostRun, "--cache-dir", filepath.Join(dir, "cache"+strconv.Itoa(rank)))...)
			cmd.Env = append(os.Environ(), rankEnv(rank, port)...)
			var b bytes.Buffer
			cmd.Stdout, cmd.Stderr = &b, &b
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			procs, outs = append(procs, cmd), append(outs, &b)
		}
		for rank, cmd := range procs {
			if err := cmd.Wait(); err != nil {
				t.Fatalf("rank %d on the host: %v\n%s", rank, err, outs[rank])
			}
		}

		inContainers := filepath.Join(runs, "ddp")
		for _, f := range []string{"best.safetensors", "last.safetensors", "epoch.safetensors"} {
			sameTensors(t, filepath.Join(hostRun, f), filepath.Join(inContainers, f))
		}
		for _, f := range []string{"metrics.json", "history.csv"} {
			if _, err := os.Stat(filepath.Join(inContainers, f)); err != nil {
				t.Errorf("rank 0 did not write %s to /runs: %v", f, err)
			}
		}
		type metrics struct {
			Identity string
		}
		var a, b metrics
		readJSON(t, filepath.Join(hostRun, "metrics.json"), &a)
		readJSON(t, filepath.Join(inContainers, "metrics.json"), &b)
		if a.Identity == "" || a.Identity != b.Identity {
			t.Errorf("run identity on the host %q, in the containers %q", a.Identity, b.Identity)
		}
	})

	t.Run("Serve", func(t *testing.T) {
		ckpt := filepath.Join(hostRun, "best.safetensors")
		if _, err := os.Stat(ckpt); err != nil {
			t.Skip("no trained checkpoint: " + err.Error())
		}
		want := must(t, time.Minute, bin, "predict", "--json", "--top", "8", "--checkpoint", ckpt, photo)

		port := freePort(t)
		url := fmt.Sprintf("http://127.0.0.1:%d", port)
		// A read-only root file system, as serve.yaml asks of Kubernetes.
		c := start(t, tag, 3*time.Minute, []string{"--volume", ckpt + ":/model/best.safetensors:ro", "--stop-timeout", "30",
			"--read-only", "--read-only-tmpfs=false"},
			"serve", "--checkpoint", "/model/best.safetensors", "--addr", fmt.Sprintf("127.0.0.1:%d", port), "--drain", "20s")
		deadline := time.Now().Add(90 * time.Second)
		for get(url+"/readyz") != 200 {
			if time.Now().After(deadline) {
				t.Fatalf("%s/readyz is not 200 after 90s:\n%s", url, c.out.String())
			}
			select {
			case <-c.done:
				t.Fatalf("serve exited before it was ready:\n%s", c.out.String())
			case <-time.After(100 * time.Millisecond):
			}
		}
		for _, p := range []string{"/healthz", "/metrics"} {
			if code := get(url + p); code != 200 {
				t.Errorf("GET %s: %d", p, code)
			}
		}
		jpg, err := os.ReadFile(photo)
		if err != nil {
			t.Fatal(err)
		}
		client := http.Client{Timeout: 30 * time.Second}
		resp, err := client.Post(url+"/predict?top=8", "image/jpeg", bytes.NewReader(jpg))
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("POST /predict: %d %s", resp.StatusCode, got)
		}
		type answer struct {
			Class       string
			Index       int
			Probability float64
			Top         []struct {
				Class       string
				Probability float64
			}
		}
		var a, b answer
		if err := json.Unmarshal([]byte(want), &a); err != nil {
			t.Fatalf("handnet predict --json: %v\n%s", err, want)
		}
		var answers struct{ Results []answer } // one shape for one image or many
		if err := json.Unmarshal(got, &answers); err != nil || len(answers.Results) != 1 {
			t.Fatalf("/predict: %v\n%s", err, got)
		}
		b = answers.Results[0]
		if len(a.Top) != 8 || fmt.Sprint(a) != fmt.Sprint(b) {
			t.Errorf("/predict in the container:\n%+v\nhandnet predict --json on the host:\n%+v", b, a)
		}

		// podman stop sends SIGTERM: serve drains and exits 0.
		if out, err := command(t, time.Minute, "podman", "stop", "--time", "30", c.name); err != nil {
			t.Fatalf("podman stop: %v\n%s", err, out)
		}
		if code := c.wait(t, time.Minute); code != 0 || !strings.Contains(c.out.String(), "stopped") {
			t.Errorf("serve after podman stop: exit %d, want 0 after draining\n%s", code, c.out.String())
		}
	})
}

func get(url string) int {
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err == nil {
		err = json.Unmarshal(b, v)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// tensors reads a safetensors file: name → dtype, shape and raw bytes
// (the header's metadata, which names paths, is left out).
func tensors(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 8 {
		t.Fatalf("%s: not a safetensors file", path)
	}
	n := binary.LittleEndian.Uint64(b)
	if n > uint64(len(b)-8) {
		t.Fatalf("%s: header of %d bytes in a file of %d", path, n, len(b))
	}
	var header map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &header); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	data := b[8+n:]
	out := map[string]string{}
	for name, raw := range header {
		if name == "__metadata__" {
			continue
		}
		var info struct {
			Dtype       string
			Shape       []int
			DataOffsets [2]uint64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(raw, &info); err != nil || info.DataOffsets[1] > uint64(len(data)) || info.DataOffsets[0] > info.DataOffsets[1] {
			t.Fatalf("%s: tensor %s: %v %s", path, name, err, raw)
		}
		out[name] = fmt.Sprint(info.Dtype, info.Shape) + string(data[info.DataOffsets[0]:info.DataOffsets[1]])
	}
	return out
}

func sameTensors(t *testing.T, want, got string) {
	t.Helper()
	a, b := tensors(t, want), tensors(t, got)
	var differ []string
	for name, v := range a {
		if b[name] != v {
			differ = append(differ, name)
		}
	}
	for name := range b {
		if _, ok := a[name]; !ok {
			differ = append(differ, name)
		}
	}
	sort.Strings(differ)
	if len(a) == 0 || len(differ) > 0 {
		t.Errorf("%s (containers) differs from %s (host) in %d of %d tensors: %v", got, want, len(differ), len(a), differ)
	}
}
