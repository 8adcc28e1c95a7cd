package vision

import (
	"os"
	"path/filepath"
	"testing"
)

// TestWriteFileAtomicMode: a file written through a temporary file gets the
// mode os.WriteFile would give it (0666 less the umask), not CreateTemp's
// 0600, so another user (a container's) can read a dataset or run folder.
func TestWriteFileAtomicMode(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "atomic"), filepath.Join(dir, "plain")
	if err := WriteFileAtomic(a, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(b, []byte("x"), 0o666); err != nil {
		t.Fatal(err)
	}
	sa, _ := os.Stat(a)
	sb, _ := os.Stat(b)
	if sa.Mode().Perm() != sb.Mode().Perm() {
		t.Errorf("WriteFileAtomic made %v, os.WriteFile %v", sa.Mode().Perm(), sb.Mode().Perm())
	}
}
