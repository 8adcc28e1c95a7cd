package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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
	want := filepath.Join(dir, "nproc")
	p := start(t, nil, append(args(want), "--nproc-per-node", "2")...)
	if code := p.wait(t, 3*time.Minute); code != 0 {
		t.Fatalf("--nproc-per-node 2: exit %d\n%s", code, p.out.String())
	}

	out := filepath.Join(dir, "torchrun")
	// Debian's torchrun under Python 3.11 crashes without --redirects and
	// --tee (see README).
	cmd := append(append([]string{}, tr[1:]...), "--standalone", "--nproc_per_node", "2", "--max_restarts", "1", "--monitor_interval", "1",
		"--redirects", "1", "--tee", "1", "--log_dir", filepath.Join(dir, "logs"), "--no_python", os.Args[0])
	p = &proc{cmd: exec.Command(tr[0], append(cmd, args(out)...)...)}
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
	if got, w := historyOf(t, out), historyOf(t, want); got != w {
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
