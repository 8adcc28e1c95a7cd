package experiment

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/handnet/handnet/eval/report"
	"github.com/handnet/handnet/handnet/runtime/fileio"
	"github.com/handnet/handnet/handnet/runtime/rundir"
)

// Identity is the key of a run: a hash of everything that changes its
// result — the dataset's records and images (and how they are decoded),
// the split, seed, labels, model configuration, the starting weights' file
// hash, the training configuration and the augmentation — but not the
// number of epochs (a resume may add some), the device, thread counts or
// where files live. Parts keeps the pieces, to say what differs.
type Identity struct {
	Key   string            `json:"key"`
	Parts map[string]string `json:"parts"`
}

// Identify computes s's identity over the opened data d and, for ResNet-18,
// the hash of s.Weights.
func Identify(s Spec, d *Data) (Identity, error) {
	js := func(v any) string {
		b, _ := json.Marshal(v)
		return string(b)
	}
	tc := s.Train
	tc.Epochs, tc.CheckpointEvery = 0, 0
	mc := s.Model
	mc.Classes, mc.Width, mc.Height, mc.Mean, mc.Std, mc.Pretrained, mc.ExactDecode = nil, 0, 0, [3]float32{}, [3]float32{}, "", false
	w := "none"
	if s.Weights != "" {
		h, err := fileio.SHA256(s.Weights)
		if err != nil {
			return Identity{}, &FieldError{Field: "Weights", Err: err, Machine: true}
		}
		w = h
	}
	augment := s.Augment
	if augment == "" {
		augment = "none"
	}
	id := Identity{Parts: map[string]string{
		"records":  d.Set.Fingerprint()[:16],
		"images":   d.Cache.Key[:16],
		"skip_bad": fmt.Sprint(s.SkipBad),
		"split":    s.Split,
		"labels":   s.Scheme,
		"augment":  augment,
		"model":    js(mc),
		"weights":  w,
		"train":    js(tc),
	}}
	if p := s.Precision; p != "" && p != "fp32" { // fp32 runs keep their keys of before
		id.Parts["precision"] = p
	}
	keys := make([]string, 0, len(id.Parts))
	for k := range id.Parts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	h := sha256.New()
	for _, k := range keys {
		fmt.Fprintf(h, "%s=%s\n", k, id.Parts[k])
	}
	id.Key = hex.EncodeToString(h.Sum(nil))[:32]
	return id, nil
}

// Diff lists the parts in which b differs from a, as "part: a → b".
func (a Identity) Diff(b Identity) []string {
	var out []string
	keys := map[string]bool{}
	for k := range a.Parts {
		keys[k] = true
	}
	for k := range b.Parts {
		keys[k] = true
	}
	names := make([]string, 0, len(keys))
	for k := range keys {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if a.Parts[k] != b.Parts[k] {
			out = append(out, fmt.Sprintf("%s: %s → %s", k, a.Parts[k], b.Parts[k]))
		}
	}
	if len(out) == 0 && a.Key != b.Key {
		out = append(out, "key: "+a.Key+" → "+b.Key)
	}
	return out
}

// Folder is a run folder, and the one owner of what a run is: its files,
// its identity, whether it is finished, and the lock a trainer holds.
type Folder struct{ Dir string }

// Path names a file of the folder.
func (f Folder) Path(name string) string { return rundir.Folder{Dir: f.Dir}.Path(name) }

// ReadSpec reads the folder's run.json.
func (f Folder) ReadSpec() (Spec, error) {
	var s Spec
	b, err := os.ReadFile(f.Path(rundir.Spec))
	if err != nil {
		return s, fmt.Errorf("%w (is %s a run folder made by handnet train?)", err, f.Dir)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("%s: %w", f.Path(rundir.Spec), err)
	}
	return s, nil
}

// WriteSpec writes run.json atomically.
func (f Folder) WriteSpec(s Spec) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("%s: %w", f.Path(rundir.Spec), err)
	}
	return fileio.WriteAtomic(f.Path(rundir.Spec), append(b, '\n'))
}

// Finished returns the folder's finished run of identity id with epochs
// epochs (its metrics.json, written once the test evaluation is done), or
// nil.
func (f Folder) Finished(id Identity, epochs int) *report.Run {
	b, err := os.ReadFile(f.Path(rundir.Metrics))
	if err != nil {
		return nil
	}
	var r report.Run
	if json.Unmarshal(b, &r) != nil || r.Identity != id.Key || len(r.History) != epochs || r.Test == nil {
		return nil
	}
	return &r
}

// ErrLocked is returned (wrapped) when another process trains the folder.
var ErrLocked = errors.New("run folder is being trained by another process")

// lock takes the folder's lock (flock on .lock; the kernel drops it when
// the process ends, however it ends), without waiting.
func (f Folder) lock() (unlock func(), err error) { return f.flock(syscall.LOCK_EX | syscall.LOCK_NB) }

// lockWait takes the folder's lock, waiting for the process that holds it.
func (f Folder) lockWait() (unlock func(), err error) { return f.flock(syscall.LOCK_EX) }

func (f Folder) flock(how int) (unlock func(), err error) {
	fd, err := os.OpenFile(f.Path(rundir.Lock), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(fd.Fd()), how); err != nil {
		fd.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%s: %w", f.Dir, ErrLocked)
		}
		return nil, fmt.Errorf("%s: lock: %w", f.Dir, err)
	}
	return func() { syscall.Flock(int(fd.Fd()), syscall.LOCK_UN); fd.Close() }, nil
}

// Claim is a run folder opened for training: locked against other
// processes until Release.
type Claim struct {
	Folder
	// Created is set when the folder was made for this run.
	Created bool
	// Finished is the folder's finished run of the claimed identity, when
	// it has one (see Folder.Finished).
	Finished *report.Run
	// Resume is set when the folder holds a started run of this identity.
	Resume bool
	unlock func()
}

// Release drops the lock.
func (c *Claim) Release() {
	if c.unlock != nil {
		c.unlock()
		c.unlock = nil
	}
}

// Claim opens the folder for a run of identity id and epochs epochs, and
// locks it: a new folder is created, an empty one used; one that holds a
// run of the same identity is resumed only when resume is set (or reuse:
// then a finished run is returned in Claim.Finished, a started one resumed,
// and a new one started) — a resume of a run that saved nothing yet starts
// it from the beginning; one of another identity is refused, naming what
// differs, and so is one that holds other files. Temporary files of killed
// processes are swept (under the lock, so never a live writer's).
func (f Folder) Claim(id Identity, epochs int, resume, reuse bool) (*Claim, error) {
	if err := CheckOut(f.Dir); err != nil {
		return nil, err
	}
	c := &Claim{Folder: f}
	if _, err := os.Stat(f.Dir); os.IsNotExist(err) {
		// Also with resume: a run killed before it made its folder starts
		// from the beginning.
		if err := os.MkdirAll(f.Dir, 0o755); err != nil {
			return nil, err
		}
		c.Created = true
	}
	unlock, err := f.lock()
	if err != nil {
		return nil, err
	}
	c.unlock = unlock
	if err := f.check(c, id, epochs, resume, reuse); err != nil {
		c.Release()
		if c.Created {
			os.RemoveAll(f.Dir)
		}
		return nil, err
	}
	return c, nil
}

func (f Folder) check(c *Claim, id Identity, epochs int, resume, reuse bool) error {
	if err := fileio.SweepTemps(f.Dir); err != nil {
		return err
	}
	entries, err := os.ReadDir(f.Dir)
	if err != nil {
		return err
	}
	var other []string
	hasSpec := false
	for _, e := range entries {
		switch {
		case e.Name() == rundir.Spec:
			hasSpec = true
		case fileio.IsTemp(e.Name()) || e.Name() == rundir.Lock:
		default:
			other = append(other, e.Name())
		}
	}
	if !hasSpec {
		if len(other) > 0 {
			sort.Strings(other)
			if len(other) > 5 {
				other = append(other[:5], "…")
			}
			return &FieldError{Field: "Out", Value: f.Dir, Err: fmt.Errorf("holds other files (%s)", strings.Join(other, ", ")), Fix: "name a new or empty folder"}
		}
		return nil // an empty folder: a resume starts from the beginning
	}
	saved, err := f.ReadSpec()
	if err != nil {
		return err
	}
	if saved.Identity.Key != id.Key {
		return &FieldError{Field: "Out", Value: f.Dir, Err: fmt.Errorf("holds a run of another experiment (%s)", strings.Join(saved.Identity.Diff(id), "; ")),
			Fix: "resume with the same settings (only {Train.Epochs} may grow), or choose another {Out}"}
	}
	_, statErr := os.Stat(f.Path(rundir.LastCheckpoint))
	started := statErr == nil
	switch {
	case reuse:
		if c.Finished = f.Finished(id, epochs); c.Finished == nil {
			c.Resume = started
		}
	case resume:
		// Nothing saved yet (stopped before its first checkpoint): start
		// from the beginning.
		c.Resume = started
	case started:
		return &FieldError{Field: "Out", Value: f.Dir, Err: errors.New("already holds this run"), Fix: "add {Resume} to continue it, or choose another {Out}"}
	}
	return nil
}

// CheckOut refuses run folders that are dangerous or hold something else:
// the file system root, the home folder, and existing non-folders.
func CheckOut(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if abs == "/" {
		return &FieldError{Field: "Out", Value: dir, Err: errors.New("the file system root is no run folder"), Fix: "name a new folder"}
	}
	if home, err := os.UserHomeDir(); err == nil && abs == filepath.Clean(home) {
		return &FieldError{Field: "Out", Value: dir, Err: errors.New("is your home folder"), Fix: "name a new folder inside it"}
	}
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return &FieldError{Field: "Out", Value: dir, Err: errors.New("is a file, not a folder")}
	}
	return nil
}

// Clean removes what a run that failed before its first checkpoint
// created: the whole folder when it made it, else the files it wrote.
func (c *Claim) Clean() {
	f := c.Folder
	if c.Created {
		os.RemoveAll(f.Dir)
		return
	}
	for _, name := range []string{rundir.Spec, rundir.Split, rundir.EpochCheckpoint} {
		os.Remove(f.Path(name))
	}
	fileio.SweepTemps(f.Dir)
	// The lock file goes last: once it is gone another process may claim
	// the folder (a new .lock), and this one must not sweep its files.
	os.Remove(f.Path(rundir.Lock))
}
