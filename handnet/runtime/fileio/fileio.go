// Package fileio is the one way handnet writes and checks files: every file
// it writes appears whole or not at all (a temporary file in the same
// folder, flushed to disk, renamed into place), with the mode os.WriteFile
// would give it, under a temporary name the sweeps of run folders and
// caches recognise. It sits at the bottom of handnet: it imports nothing of
// handnet's.
//
// Floor 0 (runtime) of handnet's layering: it imports packages of floor 0 only
// (README, "Packages"; tools/floors checks it).
package fileio

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// Mode is the mode os.WriteFile gives a new file: 0666 less the process's
// umask. Files written through a temporary file and a rename get it too
// (os.CreateTemp makes them 0600), so what one user writes — a dataset, a
// run folder, a checkpoint — is readable by the others the umask allows,
// such as a container's user serving a checkpoint trained on the host.
var Mode = 0o666 &^ umask()

// umask reads the process's umask from /proc (Linux 4.7+) without changing
// it; 022 where it cannot.
func umask() os.FileMode {
	b, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Umask:"); ok {
				if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
					return os.FileMode(m) & 0o777
				}
			}
		}
	}
	return 0o022
}

// TempPattern is the os.CreateTemp pattern of the temporary file that
// becomes path: ".NAME.tmp*" beside it. IsTemp recognises every name it
// makes.
func TempPattern(path string) string { return "." + filepath.Base(path) + ".tmp*" }

// IsTemp tells whether a file name is one of handnet's temporary files
// (".NAME.tmp…"), left behind by a process killed while writing.
func IsTemp(name string) bool {
	return strings.HasPrefix(name, ".") && strings.Contains(name, ".tmp")
}

// SweepTemps removes the temporary files that killed processes left in
// dir (not in its subfolders). Call it only where no live writer can be
// writing, e.g. under the folder's lock.
func SweepTemps(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.IsDir() && IsTemp(e.Name()) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil && !os.IsNotExist(err) {
				return err
			}
		}
	}
	return nil
}

// FaultHook, when set, is called at the moments a crash is most likely to
// lose work: "half" (half the data written) and "rename" (written and
// flushed, not yet renamed). Fault-injection tests set it (the kill test
// stops the process there); it is nil otherwise.
var FaultHook func(moment string)

func fault(moment string) {
	if FaultHook != nil {
		FaultHook(moment)
	}
}

// Writer is a file being written atomically: Commit makes it appear at its
// path, Abort (or a failed Commit) removes it. Use Create for writers that
// need more than one Write (WriteAt, a stream); WriteAtomic for bytes at hand.
type Writer struct {
	*os.File
	path string
	done bool
}

// Create opens a temporary file that Commit renames to path, making path's
// folder when missing.
func Create(path string) (*Writer, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	f, err := os.CreateTemp(filepath.Dir(path), TempPattern(path))
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(Mode); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, err
	}
	return &Writer{File: f, path: path}, nil
}

// Commit flushes the file to disk, closes it and renames it to its path.
// On any error the temporary file is removed.
func (w *Writer) Commit() error {
	if w.done {
		return fmt.Errorf("%s: already committed or aborted", w.path)
	}
	w.done = true
	err := w.File.Sync()
	if cerr := w.File.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		fault("rename")
		err = os.Rename(w.File.Name(), w.path)
	}
	if err != nil {
		os.Remove(w.File.Name())
		return fmt.Errorf("write %s: %w", w.path, err)
	}
	return nil
}

// Abort closes and removes the temporary file; after Commit it does
// nothing, so `defer w.Abort()` is safe.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.File.Close()
	os.Remove(w.File.Name())
}

// WriteAtomic writes b to path through a temporary file in the same folder,
// flushed to disk and renamed into place, so readers (and a process that
// restarts after a crash) see the old file or the new one, never half of
// one. It makes path's folder when missing.
func WriteAtomic(path string, b []byte) error {
	w, err := Create(path)
	if err != nil {
		return err
	}
	defer w.Abort()
	if _, err := w.Write(b[:len(b)/2]); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	fault("half")
	if _, err := w.Write(b[len(b)/2:]); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return w.Commit()
}

// WriteToAtomic is WriteAtomic for what writes itself (an image encoder, a
// plot canvas).
func WriteToAtomic(path string, src io.WriterTo) error {
	w, err := Create(path)
	if err != nil {
		return err
	}
	defer w.Abort()
	if _, err := src.WriteTo(w); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return w.Commit()
}

// OpenRegular opens path for reading and refuses what is not a regular
// file (a folder, a device, a FIFO that would block), naming it.
func OpenRegular(path string) (*os.File, os.FileInfo, error) {
	// O_NONBLOCK: opening a FIFO must not wait for a writer (a regular
	// file's reads ignore the flag).
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s: not a regular file", path)
	}
	return f, st, nil
}

// SHA256 returns the hex SHA-256 of a file's contents.
func SHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
