package fileio

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestWriteAtomicModeIsWriteFiles: a file written through a temporary file
// gets the mode os.WriteFile would give it (0666 less the umask), not
// CreateTemp's 0600, so another user (a container's) can read a dataset or
// run folder. (Moved from vision's TestWriteFileAtomicMode.)
func TestWriteAtomicModeIsWriteFiles(t *testing.T) {
	dir := t.TempDir()
	a, w, b := filepath.Join(dir, "atomic"), filepath.Join(dir, "writeto"), filepath.Join(dir, "plain")
	if err := WriteAtomic(a, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := WriteToAtomic(w, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b, []byte("x"), 0o666); err != nil {
		t.Fatal(err)
	}
	sa, _ := os.Stat(a)
	sw, _ := os.Stat(w)
	sb, _ := os.Stat(b)
	if sa.Mode().Perm() != sb.Mode().Perm() {
		t.Errorf("WriteAtomic made %v, os.WriteFile %v", sa.Mode().Perm(), sb.Mode().Perm())
	}
	if sw.Mode().Perm() != sb.Mode().Perm() {
		t.Errorf("WriteToAtomic made %v, os.WriteFile %v", sw.Mode().Perm(), sb.Mode().Perm())
	}
}

// TestOpenRegularFIFO: a FIFO is refused at once, not waited on for a
// writer.
func TestOpenRegularFIFO(t *testing.T) {
	p := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(p, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	done := make(chan error, 1)
	go func() { _, _, err := OpenRegular(p); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Errorf("OpenRegular(FIFO) = %v, want not a regular file", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OpenRegular(FIFO) still waiting after 5 s")
	}
}
