package experiment_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/handnet/handnet/eval"
	"github.com/handnet/handnet/eval/report"
	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/handnet/runtime/fileio"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/train"
)

// Identities of two experiments, as Claim sees them.
var (
	idA = experiment.Identity{Key: "aaaa", Parts: map[string]string{"split": "random", "train": `{"lr":0.01}`}}
	idB = experiment.Identity{Key: "bbbb", Parts: map[string]string{"split": "random", "train": `{"lr":0.02}`}}
)

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func writeJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, b)
}

// writeRun makes dir hold a run of identity id as a trainer leaves it:
// run.json always; started, the last checkpoint; finished, metrics.json
// with epochs epochs and a test evaluation (ready for Folder.Finished).
func writeRun(t *testing.T, dir string, id experiment.Identity, started bool, finished int) {
	t.Helper()
	writeJSON(t, filepath.Join(dir, rundir.Spec), experiment.Spec{Split: "random", Identity: id})
	if started {
		writeFile(t, filepath.Join(dir, rundir.LastCheckpoint), []byte("checkpoint"))
	}
	if finished > 0 {
		writeJSON(t, filepath.Join(dir, rundir.Metrics), finishedRun(id.Key, finished, 0.5))
	}
}

// finishedRun is a finished run's report: epochs epochs whose validation
// accuracy peaks at best, and a test evaluation.
func finishedRun(key string, epochs int, best float64) *report.Run {
	r := &report.Run{Identity: key, Split: "random"}
	for e := 1; e <= epochs; e++ {
		r.History = append(r.History, train.EpochStats{Epoch: e, TrainAcc: 0.9, ValAcc: best * float64(e) / float64(epochs)})
	}
	r.BestEpoch = r.History.Best()
	classes := []string{"a", "b"}
	r.Test = &report.Evaluation{Split: "test", Images: 2, Accuracy: best, Confusion: eval.NewConfusion(classes, []int{0, 1}, []int{0, 0})}
	return r
}

// locked tells whether another open file description holds dir's lock.
func locked(t *testing.T, dir string) bool {
	t.Helper()
	fd, err := os.Open(filepath.Join(dir, rundir.Lock))
	if os.IsNotExist(err) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	if err := syscall.Flock(int(fd.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return true
	}
	syscall.Flock(int(fd.Fd()), syscall.LOCK_UN)
	return false
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// TestClaim: what Claim makes of each kind of folder — it creates new ones,
// takes empty ones, refuses folders of other files or of another
// experiment (naming what differs), continues started runs only when asked
// to, and returns finished ones when reusing. A refused claim leaves the
// folder as it was, unlocked; a granted one holds the lock until Release.
func TestClaim(t *testing.T) {
	type want struct {
		err      string // a part of the error; "" for a granted claim
		created  bool
		resume   bool
		finished bool
	}
	for _, c := range []struct {
		name          string
		setup         func(t *testing.T, dir string) // nil: dir does not exist
		epochs        int
		resume, reuse bool
		want          want
	}{
		{"new folder", nil, 3, false, false, want{created: true}},
		{"new folder, resume", nil, 3, true, false, want{created: true}},
		{"new folder, reuse", nil, 3, false, true, want{created: true}},
		{"empty folder", func(t *testing.T, dir string) { os.MkdirAll(dir, 0o755) }, 3, false, false, want{}},
		{"temporary files and a stale lock only", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, ".run.json.tmp123"), nil)
			writeFile(t, filepath.Join(dir, rundir.Lock), nil)
		}, 3, false, false, want{}},
		{"other files", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "notes.txt"), nil)
			writeFile(t, filepath.Join(dir, "data.csv"), nil)
		}, 3, false, false, want{err: "holds other files (data.csv, notes.txt)"}},
		{"other files, resume", func(t *testing.T, dir string) {
			writeFile(t, filepath.Join(dir, "notes.txt"), nil)
		}, 3, true, false, want{err: "holds other files (notes.txt)"}},
		{"many other files", func(t *testing.T, dir string) {
			for i := range 7 {
				writeFile(t, filepath.Join(dir, fmt.Sprintf("f%d", i)), nil)
			}
		}, 3, false, true, want{err: "(f0, f1, f2, f3, f4, …)"}},
		{"another experiment", func(t *testing.T, dir string) { writeRun(t, dir, idB, true, 0) },
			3, true, false, want{err: `holds a run of another experiment (train: {"lr":0.02} → {"lr":0.01})`}},
		{"another experiment, finished, reuse", func(t *testing.T, dir string) { writeRun(t, dir, idB, true, 3) },
			3, false, true, want{err: "another experiment"}},
		{"this run, nothing saved yet", func(t *testing.T, dir string) { writeRun(t, dir, idA, false, 0) }, 3, false, false, want{}},
		{"this run, nothing saved yet, resume", func(t *testing.T, dir string) { writeRun(t, dir, idA, false, 0) }, 3, true, false, want{}},
		{"this run, started", func(t *testing.T, dir string) { writeRun(t, dir, idA, true, 0) },
			3, false, false, want{err: "already holds this run"}},
		{"this run, started, resume", func(t *testing.T, dir string) { writeRun(t, dir, idA, true, 0) }, 3, true, false, want{resume: true}},
		{"this run, started, reuse", func(t *testing.T, dir string) { writeRun(t, dir, idA, true, 0) }, 3, false, true, want{resume: true}},
		{"this run, nothing saved yet, reuse", func(t *testing.T, dir string) { writeRun(t, dir, idA, false, 0) }, 3, false, true, want{}},
		{"this run, finished, reuse", func(t *testing.T, dir string) { writeRun(t, dir, idA, true, 3) }, 3, false, true, want{finished: true}},
		{"this run, finished, reuse with more epochs", func(t *testing.T, dir string) { writeRun(t, dir, idA, true, 3) },
			5, false, true, want{resume: true}},
		{"this run, finished, resume", func(t *testing.T, dir string) { writeRun(t, dir, idA, true, 3) }, 3, true, false, want{resume: true}},
		{"this run, finished, no flags", func(t *testing.T, dir string) { writeRun(t, dir, idA, true, 3) },
			3, false, false, want{err: "already holds this run"}},
		{"this run, trained but not evaluated, reuse", func(t *testing.T, dir string) {
			writeRun(t, dir, idA, true, 0)
			r := finishedRun(idA.Key, 3, 0.5)
			r.Test = nil
			writeJSON(t, filepath.Join(dir, rundir.Metrics), r)
		}, 3, false, true, want{resume: true}},
		{"metrics of another identity, reuse", func(t *testing.T, dir string) {
			writeRun(t, dir, idA, true, 0)
			writeJSON(t, filepath.Join(dir, rundir.Metrics), finishedRun(idB.Key, 3, 0.5))
		}, 3, false, true, want{resume: true}},
		{"a file", func(t *testing.T, dir string) { writeFile(t, dir, []byte("x")) }, 3, false, false, want{err: "is a file, not a folder"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "run")
			if c.setup != nil {
				c.setup(t, dir)
			}
			var before []string
			if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
				before = names(t, dir)
			}
			cl, err := experiment.Folder{Dir: dir}.Claim(idA, c.epochs, c.resume, c.reuse)
			if c.want.err != "" {
				if err == nil {
					cl.Release()
					t.Fatalf("granted (created %v, resume %v, finished %v), want an error with %q", cl.Created, cl.Resume, cl.Finished != nil, c.want.err)
				}
				if !strings.Contains(err.Error(), c.want.err) {
					t.Fatalf("error %q, want it to contain %q", err, c.want.err)
				}
				if errors.Is(err, experiment.ErrLocked) {
					t.Errorf("refusal %q reads as ErrLocked", err)
				}
				if before != nil {
					after := names(t, dir)
					// The lock file may stay: it is no run file.
					after = filter(after, func(n string) bool { return n != rundir.Lock })
					if b := filter(before, func(n string) bool { return n != rundir.Lock }); strings.Join(b, "\n") != strings.Join(after, "\n") {
						t.Errorf("a refused claim changed the folder: %q → %q", b, after)
					}
					if locked(t, dir) {
						t.Error("a refused claim left the folder locked")
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			defer cl.Release()
			if cl.Dir != dir || cl.Created != c.want.created || cl.Resume != c.want.resume || (cl.Finished != nil) != c.want.finished {
				t.Fatalf("claim %s: created %v, resume %v, finished %v; want %+v", cl.Dir, cl.Created, cl.Resume, cl.Finished != nil, c.want)
			}
			if cl.Finished != nil && (cl.Finished.Identity != idA.Key || len(cl.Finished.History) != c.epochs) {
				t.Errorf("finished run %+v", cl.Finished)
			}
			if !locked(t, dir) {
				t.Fatal("a granted claim does not hold the lock")
			}
			for _, n := range names(t, dir) {
				if fileio.IsTemp(n) {
					t.Errorf("temporary file %s not swept", n)
				}
			}
			cl.Release()
			if locked(t, dir) {
				t.Error("still locked after Release")
			}
			cl.Release() // a second Release does nothing
		})
	}
}

func filter(s []string, keep func(string) bool) []string {
	var out []string
	for _, v := range s {
		if keep(v) {
			out = append(out, v)
		}
	}
	return out
}

// TestClaimSweepsOnlyUnderTheLock: a granted claim removes the temporary
// files killed writers left (not folders, not other dot files); a claim
// refused because another holds the folder removes nothing, since the
// holder may be writing them.
func TestClaimSweepsOnlyUnderTheLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	writeRun(t, dir, idA, true, 0)
	temps := []string{".run.json.tmp123", ".last.safetensors.tmp99", ".metrics.json.tmp"}
	keep := []string{".hidden", ".keep.tmpdir/x"}
	for _, n := range append(append([]string{}, temps...), keep...) {
		writeFile(t, filepath.Join(dir, n), []byte("partial"))
	}
	f := experiment.Folder{Dir: dir}
	holder, err := f.Claim(idA, 3, true, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range temps {
		if _, err := os.Stat(filepath.Join(dir, n)); !os.IsNotExist(err) {
			t.Errorf("%s not swept: %v", n, err)
		}
	}
	for _, n := range keep {
		if _, err := os.Stat(filepath.Join(dir, n)); err != nil {
			t.Errorf("%s swept: %v", n, err)
		}
	}
	// The holder writes; a second claimer must not touch its file.
	live := filepath.Join(dir, ".best.safetensors.tmp42")
	writeFile(t, live, []byte("being written"))
	if _, err := f.Claim(idA, 3, true, false); !errors.Is(err, experiment.ErrLocked) {
		t.Fatalf("second claim: %v, want ErrLocked", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("a refused claimer swept the holder's file: %v", err)
	}
	holder.Release()
}

// TestClaimContention: goroutines of one process claiming one folder at
// once (each claim opens the lock file itself, and flock locks open file
// descriptions, so they exclude each other like processes): exactly one
// wins, every other gets ErrLocked, and once the winner releases, the
// folder can be claimed again.
func TestClaimContention(t *testing.T) {
	const claimers, rounds = 8, 20
	for round := range rounds {
		dir := filepath.Join(t.TempDir(), "run")
		if round%2 == 1 {
			writeRun(t, dir, idA, true, 0) // an existing run, resumed
		}
		var (
			wg    sync.WaitGroup
			start = make(chan struct{})
			mu    sync.Mutex
			won   []*experiment.Claim
			errs  []error
		)
		for range claimers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				c, err := experiment.Folder{Dir: dir}.Claim(idA, 3, true, false)
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					errs = append(errs, err)
				} else {
					won = append(won, c)
				}
			}()
		}
		close(start)
		wg.Wait()
		if len(won) != 1 {
			t.Fatalf("round %d: %d claims granted, want 1 (errors %v)", round, len(won), errs)
		}
		for _, err := range errs {
			if !errors.Is(err, experiment.ErrLocked) {
				t.Fatalf("round %d: %v, want ErrLocked", round, err)
			}
		}
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			t.Fatalf("round %d: the losers removed the winner's folder: %v", round, err)
		}
		won[0].Release()
		c, err := experiment.Folder{Dir: dir}.Claim(idA, 3, true, false)
		if err != nil {
			t.Fatalf("round %d: claim after Release: %v", round, err)
		}
		c.Release()
	}
}

// claimerEnv names the folder a child process of TestClaimAcrossProcesses
// claims.
const claimerEnv = "HANDNET_TEST_CLAIMER_DIR"

// TestClaimAcrossProcesses: processes claiming one folder at once (this
// test binary run again): exactly one wins; while it lives, this process is
// refused with ErrLocked; once it is killed (SIGKILL: no Release, no
// cleanup), the kernel has dropped its lock and the folder is claimed, its
// run resumed.
func TestClaimAcrossProcesses(t *testing.T) {
	if dir := os.Getenv(claimerEnv); dir != "" {
		claimer(dir)
		return
	}
	if testing.Short() {
		t.Skip("starts processes")
	}
	dir := filepath.Join(t.TempDir(), "run")
	writeRun(t, dir, idA, true, 0)
	const n = 3
	type child struct {
		cmd   *exec.Cmd
		stdin interface{ Close() error }
		line  string
	}
	kids := make([]*child, n)
	lines := make(chan int, n)
	for i := range kids {
		cmd := exec.Command(os.Args[0], "-test.run=^TestClaimAcrossProcesses$", "-test.count=1")
		cmd.Env = append(os.Environ(), claimerEnv+"="+dir)
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		k := &child{cmd: cmd, stdin: in}
		kids[i] = k
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		go func(i int) {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				if l := sc.Text(); strings.HasPrefix(l, "claim: ") {
					k.line = strings.TrimPrefix(l, "claim: ")
					break
				}
			}
			lines <- i
			for sc.Scan() { // drain
			}
		}(i)
	}
	winner := -1
	timeout := time.After(2 * time.Minute)
	for range n {
		select {
		case i := <-lines:
			switch l := kids[i].line; {
			case l == "granted":
				if winner >= 0 {
					t.Fatalf("processes %d and %d both hold the folder", winner, i)
				}
				winner = i
			case strings.HasPrefix(l, "locked"):
			default:
				t.Fatalf("process %d: %q, want granted or locked", i, l)
			}
		case <-timeout:
			t.Fatal("the claimers did not answer within 2 minutes")
		}
	}
	if winner < 0 {
		t.Fatalf("no process won the folder (%d refused)", n)
	}
	if _, err := (experiment.Folder{Dir: dir}).Claim(idA, 3, true, false); !errors.Is(err, experiment.ErrLocked) {
		t.Fatalf("claim while process %d holds the folder: %v, want ErrLocked", winner, err)
	}
	w := kids[winner].cmd
	w.Process.Signal(syscall.SIGKILL)
	w.Wait()
	c, err := experiment.Folder{Dir: dir}.Claim(idA, 3, true, false)
	if err != nil {
		t.Fatalf("claim after the holder was killed: %v", err)
	}
	defer c.Release()
	if !c.Resume || c.Created {
		t.Errorf("claim after the holder was killed: resume %v, created %v; want the started run resumed", c.Resume, c.Created)
	}
}

// claimer is a child process of TestClaimAcrossProcesses: it claims dir,
// says how that went, and holds the claim until its stdin closes or it is
// killed.
func claimer(dir string) {
	c, err := experiment.Folder{Dir: dir}.Claim(idA, 3, true, false)
	switch {
	case errors.Is(err, experiment.ErrLocked):
		fmt.Println("claim: locked")
		return
	case err != nil:
		fmt.Println("claim: error", err)
		return
	}
	fmt.Println("claim: granted")
	var b [1]byte
	os.Stdin.Read(b[:]) // until the parent closes stdin or kills us
	c.Release()
}

// TestCheckOut: the folders a run may not use — the file system root, the
// home folder (however spelled) and files — and ones it may.
func TestCheckOut(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	file := filepath.Join(home, "notes.txt")
	writeFile(t, file, []byte("x"))
	for _, c := range []struct {
		dir, err string // err: a part of the error; "" for accepted
	}{
		{"/", "file system root"},
		{"/tmp/..", "file system root"},
		{"//", "file system root"},
		{home, "home folder"},
		{home + "/", "home folder"},
		{home + "/runs/..", "home folder"},
		{file, "is a file"},
		{filepath.Join(home, "runs"), ""},
		{filepath.Join(home, "runs", "a", "b"), ""},
		{t.TempDir(), ""},
	} {
		err := experiment.CheckOut(c.dir)
		switch {
		case c.err == "" && err != nil:
			t.Errorf("CheckOut(%q): %v, want accepted", c.dir, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("CheckOut(%q): %v, want an error with %q", c.dir, err, c.err)
		}
	}
	// Relative names resolve against the working folder.
	t.Chdir(home)
	if err := experiment.CheckOut("."); err == nil || !strings.Contains(err.Error(), "home folder") {
		t.Errorf(`CheckOut(".") in the home folder: %v`, err)
	}
	if err := experiment.CheckOut("runs"); err != nil {
		t.Errorf(`CheckOut("runs") in the home folder: %v`, err)
	}
	// Claim checks out before it creates or locks anything.
	if _, err := (experiment.Folder{Dir: "."}).Claim(idA, 3, false, false); err == nil || !strings.Contains(err.Error(), "home folder") {
		t.Errorf("Claim of the home folder: %v", err)
	}
	if _, err := os.Stat(filepath.Join(home, rundir.Lock)); !os.IsNotExist(err) {
		t.Errorf("a refused Claim of the home folder made %s: %v", rundir.Lock, err)
	}
}

// TestClaimClean: Clean after a failed first start removes a folder the
// claim created, and from a folder it did not create only the run's own
// files (other dot files and the user's folder stay).
func TestClaimClean(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	c, err := experiment.Folder{Dir: dir}.Claim(idA, 3, false, false)
	if err != nil {
		t.Fatal(err)
	}
	writeRun(t, dir, idA, false, 0)
	c.Clean() // as Run does: under the lock, then Release
	c.Release()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("the created folder survived Clean: %v", err)
	}

	dir = t.TempDir()
	c, err = experiment.Folder{Dir: dir}.Claim(idA, 3, false, false)
	if err != nil {
		t.Fatal(err)
	}
	writeRun(t, dir, idA, false, 0)
	writeFile(t, filepath.Join(dir, rundir.Split), []byte("split"))
	writeFile(t, filepath.Join(dir, rundir.EpochCheckpoint), []byte("x"))
	writeFile(t, filepath.Join(dir, ".split.csv.tmp7"), []byte("x"))
	c.Clean()
	c.Release()
	if got := names(t, dir); len(got) != 0 {
		t.Errorf("left after Clean: %q", got)
	}
	if _, err := os.Stat(dir); err != nil {
		t.Errorf("Clean removed a folder it did not create: %v", err)
	}
}
