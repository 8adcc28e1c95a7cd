package main

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// needTool skips when a tool the test needs is missing, except under CI
// (make test sets CI and installs them), where that is a failure.
func needTool(t *testing.T, ok bool, what, install string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s is missing (make test installs it: %s)", what, install)
	}
	t.Skipf("%s is missing: %s", what, install)
}

// torchrun returns the command line of Debian's torchrun (python3-torch).
func torchrun(t *testing.T) []string {
	t.Helper()
	err := exec.Command("/usr/bin/python3", "-c", "import torch.distributed.run").Run()
	needTool(t, err == nil, "Debian's torchrun (/usr/bin/python3 with torch)", "apt-get install python3-torch")
	return []string{"/usr/bin/python3", "-m", "torch.distributed.run"}
}

// envOf reads a process's environment (nil when it is gone).
func envOf(pid int) []string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return nil
	}
	return strings.Split(string(b), "\x00")
}

// descendants lists the processes below pid whose environment holds every
// one of vars ("RANK=1").
func descendants(pid int, vars ...string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// Walk up the parents.
		for q := p; q > 1; {
			st, err := os.ReadFile("/proc/" + strconv.Itoa(q) + "/stat")
			if err != nil {
				break
			}
			f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
			if len(f) < 2 {
				break
			}
			q, _ = strconv.Atoi(f[1])
			if q == pid {
				env := strings.Join(envOf(p), "\n") + "\n"
				all := true
				for _, v := range vars {
					all = all && strings.Contains(env, v+"\n")
				}
				if all {
					out = append(out, p)
				}
				break
			}
		}
	}
	return out
}

var (
	baselineOnce sync.Once
	baseline     string
)

// nprocBaseline is the history of a --nproc-per-node 2 run with the
// settings of TestTorchrunRestart and TestTwoHosts (trained once).
func nprocBaseline(t *testing.T) string {
	t.Helper()
	data, cache := distDataset(t)
	baselineOnce.Do(func() {
		out := filepath.Join(distData, "baseline")
		p := start(t, nil, "train", "--data", data, "--cache-dir", cache, "--out", out, "--epochs", "2", "--batch-size", "4", "--threads", "1",
			"--split", "stratified", "--dist-timeout", "30s", "--dropout", "none", "--nproc-per-node", "2")
		if code := p.wait(t, 3*time.Minute); code != 0 {
			t.Fatalf("--nproc-per-node 2: exit %d\n%s", code, p.out.String())
		}
		baseline = historyOf(t, out)
	})
	if baseline == "" {
		t.Fatal("no --nproc-per-node 2 baseline")
	}
	return baseline
}

// TestTorchrunRestart runs handnet under the real torchrun (Debian's
// PyTorch, --no_python) with --max_restarts 1 and SIGKILLs rank 1 in the
// middle of a run started from scratch: torchrun restarts the group, the
// restarted ranks resume from the last checkpoint (no flag), torchrun exits
// 0, and the history — every epoch once — equals an uninterrupted
// handnet --nproc-per-node 2 run's bit for bit.
func TestTorchrunRestart(t *testing.T) {
	tr := torchrun(t)
	data, cache := distDataset(t)
	dir := t.TempDir()
	args := func(out string) []string {
		return []string{"train", "--data", data, "--cache-dir", cache, "--out", out, "--epochs", "2", "--batch-size", "4", "--threads", "1",
			"--checkpoint-every", "3", "--split", "stratified", "--dist-timeout", "30s", "--dropout", "none"}
	}
	want := nprocBaseline(t)

	out := filepath.Join(dir, "torchrun")
	// Debian's torchrun under Python 3.11 crashes without --redirects and
	// --tee (see README).
	cmd := append(append([]string{}, tr[1:]...), "--standalone", "--nproc_per_node", "2", "--max_restarts", "1", "--monitor_interval", "1",
		"--redirects", "1", "--tee", "1", "--log_dir", filepath.Join(dir, "logs"), "--no_python", os.Args[0])
	p := &proc{cmd: exec.Command(tr[0], append(cmd, args(out)...)...)}
	p.cmd.Env = append(os.Environ(), "HANDNET_TEST_MAIN=1")
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL) })
	waitFile(t, filepath.Join(out, "last.safetensors"), 2*time.Minute)
	victims := descendants(p.cmd.Process.Pid, "RANK=1", "TORCHELASTIC_RESTART_COUNT=0")
	if len(victims) != 1 {
		t.Fatalf("want one rank 1 under torchrun, found %v", victims)
	}
	syscall.Kill(victims[0], syscall.SIGKILL)
	if code := p.wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("torchrun --max_restarts 1 after a SIGKILLed worker: exit %d\n%s", code, p.out.String())
	}
	log := p.out.String()
	if !strings.Contains(log, "restart 1 by the launcher: resuming from the last checkpoint") {
		t.Errorf("the restarted rank 0 does not say it resumes:\n%s", log)
	}
	if got, w := historyOf(t, out), want; got != w {
		t.Errorf("history after the restart differs from --nproc-per-node 2:\n%s\nvs\n%s", got, w)
	}
	if n := strings.Count(historyOf(t, out), "\n"); n != 2 {
		t.Errorf("history has %d epochs, want 2 (each once)", n)
	}
	t.Logf("torchrun restart: %s", lastLine(log))
}

// TestResumeNewFolderTwoRanks: --resume on a folder with no checkpoint
// starts the run from the beginning, with two ranks too (rank 0 decides and
// tells rank 1).
func TestResumeNewFolderTwoRanks(t *testing.T) {
	data, cache := distDataset(t)
	out := filepath.Join(t.TempDir(), "run")
	p := start(t, nil, "train", "--data", data, "--cache-dir", cache, "--out", out, "--epochs", "1", "--batch-size", "8", "--threads", "1",
		"--split", "stratified", "--dist-timeout", "20s", "--nproc-per-node", "2", "--resume")
	if code := p.wait(t, 2*time.Minute); code != 0 || !strings.Contains(p.out.String(), "starting the run from the beginning") {
		t.Fatalf("--resume on a new folder with 2 ranks: exit %d\n%s", code, p.out.String())
	}
	if n := strings.Count(historyOf(t, out), "\n"); n != 1 {
		t.Errorf("history has %d epochs, want 1", n)
	}
}

// safetensorsData returns a safetensors file's tensor data and the tensors'
// entries of its header (the metadata, which holds timings, left out).
func safetensorsData(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 8 {
		t.Fatalf("%s: too short", path)
	}
	n := int(binary.LittleEndian.Uint64(b[:8]))
	var hdr map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	delete(hdr, "__metadata__")
	h, _ := json.Marshal(hdr)
	return string(h) + string(b[8+n:])
}

// TestReproduceJobsReproducible: reproduce --jobs 2, twice, and --jobs 1
// write the same tables and the same weights in every run's checkpoints
// (each job is a process with its own random generator).
func TestReproduceJobsReproducible(t *testing.T) {
	distDataset(t) // skips without gloo
	dir := t.TempDir()
	// Small: 80 training images, 7 runs, three times.
	data, cache := filepath.Join(dir, "data"), filepath.Join(dir, "cache")
	if code := run([]string{"fakedata", "--out", data, "--count", "120", "--size", "340x256", "--per-subject", "8"}); code != 0 {
		t.Fatalf("fakedata: exit %d", code)
	}
	outs := map[string]string{"jobs2-a": "2", "jobs2-b": "2", "jobs1": "1"}
	procs := map[string]*proc{}
	for _, name := range []string{"jobs2-a", "jobs2-b", "jobs1"} {
		procs[name] = start(t, nil, "reproduce", "--data", data, "--cache-dir", cache, "--out", filepath.Join(dir, name), "--epochs", "1",
			"--batch-size", "16", "--threads", "1", "--split", "subject", "--jobs", outs[name])
		if code := procs[name].wait(t, 5*time.Minute); code != 0 {
			t.Fatalf("reproduce --jobs %s: exit %d\n%s", outs[name], code, procs[name].out.String())
		}
	}
	if !strings.Contains(procs["jobs2-a"].out.String(), "[job 1] ") {
		t.Errorf("--jobs 2 did not train in worker processes:\n%s", procs["jobs2-a"].out.String())
	}
	read := func(name, file string) string {
		b, err := os.ReadFile(filepath.Join(dir, name, file))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	want := read("jobs1", "report.md")
	for _, name := range []string{"jobs2-a", "jobs2-b"} {
		if got := read(name, "report.md"); got != want {
			t.Errorf("%s: tables differ from --jobs 1:\n%s\n--- --jobs 1:\n%s", name, got, want)
		}
	}
	runs, _ := filepath.Glob(filepath.Join(dir, "jobs1", "*", "best.safetensors"))
	if len(runs) != 7 {
		t.Fatalf("want the 7 runs of Part 1, found %d", len(runs))
	}
	for _, r := range runs {
		rel, _ := filepath.Rel(filepath.Join(dir, "jobs1"), r)
		w := safetensorsData(t, r)
		for _, name := range []string{"jobs2-a", "jobs2-b"} {
			if safetensorsData(t, filepath.Join(dir, name, rel)) != w {
				t.Errorf("%s/%s: weights differ from --jobs 1's", name, rel)
			}
		}
	}
}

// TestCopiedDataAccepted: rank 1 reads a cp -r copy of rank 0's dataset
// (other modification times, another path) and trains with it; a copy with
// one byte changed (same size and modification time) is refused, naming
// the images.
func TestCopiedDataAccepted(t *testing.T) {
	data, cache := distDataset(t)
	dir := t.TempDir()
	same, changed := filepath.Join(dir, "same"), filepath.Join(dir, "changed")
	for _, c := range []string{same, changed} {
		if out, err := exec.Command("cp", "-r", data, c).CombinedOutput(); err != nil {
			t.Fatalf("cp -r: %v\n%s", err, out)
		}
	}
	// One byte of one image's quantisation table: still a valid JPEG.
	imgs, _ := filepath.Glob(filepath.Join(changed, "Hands", "*.jpg"))
	if len(imgs) == 0 {
		t.Fatal("no images in the copy")
	}
	fi, err := os.Stat(imgs[0])
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(imgs[0])
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte{0xFF, 0xDB})
	if i < 0 {
		t.Fatal("no quantisation table")
	}
	if b[i+5] < 255 {
		b[i+5]++
	} else {
		b[i+5]--
	}
	if err := os.WriteFile(imgs[0], b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(imgs[0], fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	train := func(out, data1 string) (*proc, *proc) {
		args := []string{"train", "--cache-dir", cache, "--out", out, "--epochs", "1", "--batch-size", "16", "--threads", "1",
			"--split", "stratified", "--dist-timeout", "20s"}
		port := freeTestPort(t)
		r0 := start(t, rankEnv(0, 2, port), append(args, "--data", data)...)
		r1 := start(t, rankEnv(1, 2, port), append(args, "--data", data1)...)
		return r0, r1
	}
	r0, r1 := train(filepath.Join(dir, "run-same"), same)
	if c0, c1 := r0.wait(t, 2*time.Minute), r1.wait(t, 2*time.Minute); c0 != 0 || c1 != 0 {
		t.Fatalf("a cp -r copy on rank 1: exits %d, %d\n--- rank 0\n%s\n--- rank 1\n%s", c0, c1, r0.out.String(), r1.out.String())
	}
	r0, r1 = train(filepath.Join(dir, "run-changed"), changed)
	c0, c1 := r0.wait(t, time.Minute), r1.wait(t, time.Minute)
	if c0 != 1 || c1 != 1 || !strings.Contains(r1.out.String(), "rank 1's dataset differs from rank 0's (images") {
		t.Fatalf("a changed byte on rank 1: exits %d, %d, want 1, 1 naming the images\n--- rank 0\n%s\n--- rank 1\n%s", c0, c1, r0.out.String(), r1.out.String())
	}
}

// twoHosts makes two network namespaces joined by a veth pair, addresses
// 10.231.N.1 and 10.231.N.2 (a private subnet that exists only inside
// them), and removes them when the test ends. It returns the namespaces,
// the addresses and a function that takes the link down.
func twoHosts(t *testing.T) (ns [2]string, addr [2]string, cut func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("two hosts as network namespaces need root (CI runs make test as root)")
	}
	_, err := exec.LookPath("ip")
	needTool(t, err == nil, "ip (iproute2)", "apt-get install iproute2")
	id := os.Getpid() % 10000
	n := 1 + os.Getpid()%250
	ns = [2]string{fmt.Sprintf("hn16a-%d", id), fmt.Sprintf("hn16b-%d", id)}
	veth := [2]string{fmt.Sprintf("hn16a%d", id), fmt.Sprintf("hn16b%d", id)}
	addr = [2]string{fmt.Sprintf("10.231.%d.1", n), fmt.Sprintf("10.231.%d.2", n)}
	ipc := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	for _, x := range ns {
		exec.Command("ip", "netns", "del", x).Run() // a previous run's, killed
	}
	t.Cleanup(func() {
		for _, x := range ns {
			exec.Command("ip", "netns", "del", x).Run() // removes the veth ends too
		}
	})
	ipc("netns", "add", ns[0])
	ipc("netns", "add", ns[1])
	ipc("link", "add", veth[0], "netns", ns[0], "type", "veth", "peer", "name", veth[1], "netns", ns[1])
	for i := range 2 {
		ipc("-n", ns[i], "addr", "add", addr[i]+"/24", "dev", veth[i])
		ipc("-n", ns[i], "link", "set", veth[i], "up")
		ipc("-n", ns[i], "link", "set", "lo", "up")
	}
	return ns, addr, func() { ipc("-n", ns[0], "link", "set", veth[0], "down") }
}

// TestTwoHosts runs one rank in each of two network namespaces (two hosts
// joined by a link; no GLOO_SOCKET_IFNAME, the host name resolves to
// neither): it trains and equals one host's --nproc-per-node 2. Then the
// link is cut mid-run: both ranks exit 1 within --dist-timeout + 10s.
func TestTwoHosts(t *testing.T) {
	ns, addr, cut := twoHosts(t)
	data, cache := distDataset(t)
	dir := t.TempDir()
	args := func(out string) []string {
		return []string{"train", "--data", data, "--cache-dir", cache, "--out", out, "--epochs", "2", "--batch-size", "4", "--threads", "1",
			"--checkpoint-every", "2", "--split", "stratified", "--dist-timeout", "10s", "--dropout", "none"}
	}
	one := nprocBaseline(t)
	ranks := func(out string) [2]*proc {
		var ps [2]*proc
		for r := range 2 {
			env := []string{"HANDNET_TEST_MAIN=1", "GLOO_SOCKET_IFNAME=", "RANK=" + strconv.Itoa(r), "WORLD_SIZE=2", "LOCAL_RANK=0", "LOCAL_WORLD_SIZE=1",
				"MASTER_ADDR=" + addr[0], "MASTER_PORT=29517"}
			p := &proc{cmd: exec.Command("ip", append([]string{"netns", "exec", ns[r], "env"}, append(env, append([]string{os.Args[0]}, args(out)...)...)...)...)}
			p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
			if err := p.cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { p.cmd.Process.Kill() })
			ps[r] = p
		}
		return ps
	}
	two := filepath.Join(dir, "two")
	ps := ranks(two)
	for r, p := range ps {
		if code := p.wait(t, 3*time.Minute); code != 0 {
			t.Fatalf("rank %d on host %d: exit %d\n%s", r, r, code, p.out.String())
		}
	}
	if !strings.Contains(ps[1].out.String(), "gloo talks on "+addr[1]) {
		t.Errorf("rank 1 does not say it talks on %s:\n%s", addr[1], ps[1].out.String())
	}
	if a, b := historyOf(t, two), one; a != b {
		t.Errorf("two hosts differ from one:\n%s\nvs\n%s", a, b)
	}

	// A MASTER_ADDR that does not resolve fails in seconds, naming it (the
	// lookup runs inside the namespace: no query leaves it).
	bad := exec.Command("ip", "netns", "exec", ns[1], "env", "HANDNET_TEST_MAIN=1", "RANK=1", "WORLD_SIZE=2", "MASTER_ADDR=rank0.handnet-test.invalid",
		"MASTER_PORT=29517", os.Args[0], "train", "--data", data, "--cache-dir", cache, "--out", filepath.Join(dir, "bad"), "--dist-timeout", "60s")
	begin := time.Now()
	out, err := bad.CombinedOutput()
	if took := time.Since(begin); err == nil || !strings.Contains(string(out), "MASTER_ADDR=rank0.handnet-test.invalid does not resolve") || took > 10*time.Second {
		t.Errorf("unresolvable MASTER_ADDR: %v after %v\n%s", err, took, out)
	}

	cutRun := filepath.Join(dir, "cut")
	ps = ranks(cutRun)
	waitFile(t, filepath.Join(cutRun, "last.safetensors"), 2*time.Minute)
	cut()
	begin = time.Now()
	for r, p := range ps {
		code := p.wait(t, time.Minute)
		took := time.Since(begin)
		t.Logf("rank %d exited %d %.1fs after the cut: %s", r, code, took.Seconds(), lastLine(p.out.String()))
		if code != 1 {
			t.Errorf("rank %d: exit %d after the link was cut, want 1\n%s", r, code, p.out.String())
		}
		if took > 20*time.Second {
			t.Errorf("rank %d took %.1fs after the cut, over --dist-timeout 10s + 10s\n%s", r, took.Seconds(), p.out.String())
		}
	}
}

// alive tells whether a process runs (a zombie waiting for its reaper does
// not).
func alive(pid int) bool {
	st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	f := strings.Fields(string(st[bytes.LastIndexByte(st, ')')+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// TestNProcBoundedAndOrphanFree: --nproc-per-node above the usable CPUs
// (no GPU here) is refused at once with exit 2; with --oversubscribe it is
// allowed, and SIGKILLing the launcher leaves no rank running.
func TestNProcBoundedAndOrphanFree(t *testing.T) {
	data, cache := distDataset(t)
	dir := t.TempDir()
	args := []string{"train", "--data", data, "--cache-dir", cache, "--out", filepath.Join(dir, "run"), "--epochs", "50", "--batch-size", "4",
		"--threads", "1", "--split", "stratified", "--dist-timeout", "20s"}
	cpus := runtimeCPUs(t)
	begin := time.Now()
	p := start(t, nil, append(args, "--nproc-per-node", strconv.Itoa(cpus+1))...)
	if code := p.wait(t, 30*time.Second); code != 2 || !strings.Contains(p.out.String(), "--oversubscribe") {
		t.Fatalf("--nproc-per-node %d on %d CPUs: exit %d, want 2 naming --oversubscribe\n%s", cpus+1, cpus, code, p.out.String())
	}
	if took := time.Since(begin); took > 10*time.Second {
		t.Errorf("the refusal took %v", took)
	}
	if _, err := os.Stat(filepath.Join(dir, "run")); err == nil {
		t.Error("the refused command created the run folder")
	}

	// ResNet-18 from scratch: long, quiet epochs (a rank that writes to its
	// dead launcher's pipe would die of that; this checks the kernel's
	// parent-death signal). The launcher writes to a file, not a pipe.
	logf, err := os.Create(filepath.Join(dir, "launcher.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p = &proc{cmd: exec.Command(os.Args[0], append(args, "--model", "resnet18", "--nproc-per-node", "2", "--oversubscribe")...)}
	p.cmd.Env = append(os.Environ(), "HANDNET_TEST_MAIN=1")
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill() })
	waitFile(t, filepath.Join(dir, "run", "epoch.safetensors"), time.Minute)
	ranks := descendants(p.cmd.Process.Pid, "HANDNET_LAUNCHER=1")
	if len(ranks) != 2 {
		t.Fatalf("want 2 ranks under the launcher, found %v", ranks)
	}
	t.Cleanup(func() {
		for _, r := range ranks {
			syscall.Kill(r, syscall.SIGKILL)
		}
	})
	p.cmd.Process.Kill()
	p.cmd.Process.Wait() // the process only: the ranks hold its output pipe
	// The parent-death signal is SIGTERM: each rank stops as on Ctrl-C,
	// saving its last checkpoint, which may wait on the other rank —
	// bounded by --dist-timeout (20s) + 10s like every wait. Without the
	// signal the ranks would train the 50 epochs on, far longer.
	limit := 30 * time.Second
	begin = time.Now()
	for time.Since(begin) < limit {
		if !alive(ranks[0]) && !alive(ranks[1]) {
			t.Logf("both ranks gone %.1fs after the launcher was killed", time.Since(begin).Seconds())
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	log, _ := os.ReadFile(logf.Name())
	t.Fatalf("ranks %v still run %v after their launcher was SIGKILLed\n%s", ranks, limit, log)
}

// runtimeCPUs is the usable CPU count handnet sees.
func runtimeCPUs(t *testing.T) int {
	out, err := exec.Command("nproc").Output()
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRendezvousNamesDifferences: ranks started with another --epochs fail
// at the rendezvous, at once and naming it; with WORLD_SIZE 3 and two ranks
// started, both name the missing rank.
func TestRendezvousNamesDifferences(t *testing.T) {
	data, cache := distDataset(t)
	dir := t.TempDir()
	args := func(out, epochs string) []string {
		return []string{"train", "--data", data, "--cache-dir", cache, "--out", out, "--epochs", epochs, "--batch-size", "8", "--threads", "1",
			"--split", "stratified", "--dist-timeout", "5s"}
	}
	port := freeTestPort(t)
	begin := time.Now()
	r0 := start(t, rankEnv(0, 2, port), args(filepath.Join(dir, "a"), "2")...)
	r1 := start(t, rankEnv(1, 2, port), args(filepath.Join(dir, "a"), "3")...)
	for r, p := range []*proc{r0, r1} {
		if code := p.wait(t, time.Minute); code != 1 || !strings.Contains(p.out.String(), "different settings (--epochs ") {
			t.Errorf("rank %d with another --epochs: exit %d, want 1 naming --epochs\n%s", r, code, p.out.String())
		}
	}
	if took := time.Since(begin); took > 5*time.Second {
		t.Errorf("the difference was found after %v, want at the rendezvous", took)
	}
	t.Logf("rank 1: %s", lastLine(r1.out.String()))

	// A rank 1 whose rank 0 never comes: one line for the wait, one for
	// the failure — c10d's own retry warnings and errors are folded.
	lone := start(t, rankEnv(1, 2, freeTestPort(t)), args(filepath.Join(dir, "lone"), "1")...)
	if code := lone.wait(t, time.Minute); code != 1 || strings.Contains(lone.out.String(), "[c10d]") || !strings.Contains(lone.out.String(), "never served it") {
		t.Errorf("a lone rank 1: exit %d, want 1, one error and no c10d lines\n%s", code, lone.out.String())
	}

	port = freeTestPort(t)
	r0 = start(t, rankEnv(0, 3, port), args(filepath.Join(dir, "b"), "1")...)
	r1 = start(t, rankEnv(1, 3, port), args(filepath.Join(dir, "b"), "1")...)
	for r, p := range []*proc{r0, r1} {
		if code := p.wait(t, time.Minute); code != 1 || !strings.Contains(p.out.String(), "rank(s) 2 of 3 did not arrive") || strings.Contains(p.out.String(), "rank(s)  of") {
			t.Errorf("rank %d of 3 with rank 2 missing: exit %d, want 1 naming rank 2\n%s", r, code, p.out.String())
		}
	}
}
