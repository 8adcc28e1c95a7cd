package dist

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// LaunchOptions configures Launch.
type LaunchOptions struct {
	NProc int      // ranks to start on this machine
	Args  []string // each rank's arguments (this program's, without the launch flag)
	// Program is the executable to start (default: this one).
	Program string
	// MasterPort is the rendezvous port (0: MASTER_PORT if set, else a free one).
	MasterPort int
	// Stdout and Stderr receive rank 0's output as is and the other ranks'
	// prefixed with "[rank N] " (default: os.Stdout, os.Stderr).
	Stdout, Stderr io.Writer
	// Grace is how long the other ranks get to stop after one failed or
	// after an interrupt, before they are killed (default 30s).
	Grace time.Duration
	// Env is extra environment for every rank.
	Env []string
	// Workers, when set, starts plain worker processes instead of ranks:
	// no torchrun variables, worker i gets Workers(i) as its arguments, and
	// its lines are prefixed "[job i] ". The supervision is the same.
	Workers func(i int) []string
}

// ErrInterrupted is returned by Launch when it was interrupted (SIGINT or
// SIGTERM) and passed that on to the ranks.
var ErrInterrupted = errors.New("interrupted")

// RankError is a rank that exited with a failure.
type RankError struct {
	Rank int
	Err  error
}

func (e *RankError) Error() string { return fmt.Sprintf("rank %d %v", e.Rank, e.Err) }

// Launch starts NProc ranks of a program on this machine with the
// environment torchrun gives (RANK, LOCAL_RANK, WORLD_SIZE,
// LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, MASTER_PORT) and supervises them:
// the first rank that fails makes Launch stop the others (SIGTERM, then
// SIGKILL after Grace) and return its RankError. SIGINT or SIGTERM received by
// this process, or ctx ending, is passed on as SIGINT to every rank, which
// saves its work and stops; Launch then returns ErrInterrupted. A second
// signal kills the ranks.
func Launch(ctx context.Context, o LaunchOptions) error {
	if o.NProc < 1 {
		return fmt.Errorf("--nproc-per-node %d: want at least 1", o.NProc)
	}
	if o.Program == "" {
		exe, err := os.Executable()
		if err != nil {
			return err
		}
		o.Program = exe
	}
	if o.Stdout == nil {
		o.Stdout = os.Stdout
	}
	if o.Stderr == nil {
		o.Stderr = os.Stderr
	}
	if o.Grace <= 0 {
		o.Grace = 30 * time.Second
	}
	port := o.MasterPort
	if port == 0 {
		if p, err := strconv.Atoi(os.Getenv("MASTER_PORT")); err == nil && p > 0 {
			port = p
		} else if port, err = freePort(); err != nil {
			return err
		}
	}
	type result struct {
		rank int
		err  error
	}
	done := make(chan result, o.NProc)
	cmds := make([]*exec.Cmd, o.NProc)
	// Every rank writes into the same two writers: one at a time.
	stdout, stderr := locked(o.Stdout), locked(o.Stderr)
	// The ranks die with this process, whatever kills it (the kernel's
	// parent-death signal). That signal follows the thread that started
	// them, so this goroutine keeps its thread until they have exited.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for r := range o.NProc {
		e := Env{Rank: r, WorldSize: o.NProc, LocalRank: r, LocalWorldSize: o.NProc, MasterAddr: "127.0.0.1", MasterPort: port}
		cmd := exec.Command(o.Program, o.Args...)
		cmd.Env = append(append(append(os.Environ(), e.Variables()...), "HANDNET_LAUNCHER=1"), o.Env...)
		label := "rank"
		if o.Workers != nil {
			cmd = exec.Command(o.Program, o.Workers(r)...)
			cmd.Env = append(os.Environ(), o.Env...)
			label = "job"
		}
		// A process group of its own: a terminal's Ctrl-C reaches only the
		// launcher, which passes it on once. SIGTERM when the launcher dies:
		// the ranks save their work and stop.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		if r == 0 && o.Workers == nil {
			cmd.Stdout, cmd.Stderr = stdout, stderr
		} else {
			prefix := fmt.Sprintf("[%s %d] ", label, r)
			so, se := &prefixWriter{w: stdout, prefix: prefix}, &prefixWriter{w: stderr, prefix: prefix}
			cmd.Stdout, cmd.Stderr = so, se
			defer so.Flush()
			defer se.Flush()
		}
		if err := cmd.Start(); err != nil {
			for _, c := range cmds[:r] {
				c.Process.Kill()
			}
			return fmt.Errorf("starting rank %d: %w", r, err)
		}
		cmds[r] = cmd
	}
	for r, cmd := range cmds {
		go func() { done <- result{r, cmd.Wait()} }()
	}
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	running := o.NProc
	var first *RankError
	interrupted := false
	var killAt <-chan time.Time
	exited := make([]bool, o.NProc)
	stopOthers := func(s syscall.Signal) {
		for r, c := range cmds {
			if !exited[r] {
				_ = c.Process.Signal(s)
			}
		}
	}
	ctxDone := ctx.Done()
	for running > 0 {
		select {
		case res := <-done:
			running--
			exited[res.rank] = true
			if res.err != nil && first == nil && !interrupted {
				first = &RankError{Rank: res.rank, Err: exitText(res.err)}
				stopOthers(syscall.SIGTERM)
				killAt = time.After(o.Grace)
			}
		case <-sig:
			if interrupted {
				stopOthers(syscall.SIGKILL)
				continue
			}
			interrupted = true
			stopOthers(syscall.SIGINT)
			killAt = time.After(o.Grace)
		case <-ctxDone:
			ctxDone = nil
			if !interrupted {
				interrupted = true
				stopOthers(syscall.SIGINT)
				killAt = time.After(o.Grace)
			}
		case <-killAt:
			stopOthers(syscall.SIGKILL)
		}
	}
	switch {
	case first != nil:
		return first
	case interrupted:
		return ErrInterrupted
	}
	return nil
}

func exitText(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fmt.Errorf("was killed by %v", ws.Signal())
		}
		return fmt.Errorf("exited with status %d", ee.ExitCode())
	}
	return err
}

// locked makes a writer safe for concurrent use; files are left as they
// are (a rank then writes to the file itself, a terminal keeps its colours
// and progress bars).
func locked(w io.Writer) io.Writer {
	if _, ok := w.(*os.File); ok {
		return w
	}
	return &lockedWriter{w: w}
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// prefixWriter writes whole lines to w, each prefixed (exec copies a
// rank's output into it; Wait returns once the copy is done).
type prefixWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexByte(p.buf, '\n')
		if i < 0 {
			break
		}
		p.line(p.buf[:i])
		p.buf = p.buf[i+1:]
	}
	return len(b), nil
}

func (p *prefixWriter) line(l []byte) {
	// Progress bars redraw with carriage returns: keep the last state.
	if i := bytes.LastIndexByte(l, '\r'); i >= 0 {
		l = l[i+1:]
	}
	fmt.Fprintf(p.w, "%s%s\n", p.prefix, l)
}

// Flush writes a last unterminated line.
func (p *prefixWriter) Flush() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.buf) > 0 {
		p.line(p.buf)
		p.buf = nil
	}
}

// freePort asks the kernel for a free TCP port on the loopback interface.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port for the rendezvous: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
