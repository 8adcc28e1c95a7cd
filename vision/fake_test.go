package vision

import (
	"os"
	"path/filepath"
	"testing"
)

func TestGenerateFake(t *testing.T) {
	dir := t.TempDir()
	if d := os.Getenv("HANDNET_FAKE_KEEP"); d != "" {
		dir = d
	}
	if err := GenerateFake(dir, FakeOptions{Count: 40, Seed: 3, Width: 400, Height: 300, PerSubject: 10}); err != nil {
		t.Fatal(err)
	}
	ds, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ds.Records) != 40 || len(ds.Subjects()) != 4 {
		t.Fatalf("%d records, %d subjects", len(ds.Records), len(ds.Subjects()))
	}
	p, _ := NewPreprocessor(Width, Height)
	dst := make([]byte, p.Size())
	for i := range ds.Records {
		if err := p.File(ds.ImagePath(i), dst); err != nil {
			t.Fatal(err)
		}
	}
	// Same seed, same bytes.
	dir2 := t.TempDir()
	GenerateFake(dir2, FakeOptions{Count: 3, Seed: 3, Width: 400, Height: 300, PerSubject: 10})
	a, _ := os.ReadFile(filepath.Join(dir, ImagesDir, "Hand_0000003.jpg"))
	b, _ := os.ReadFile(filepath.Join(dir2, ImagesDir, "Hand_0000003.jpg"))
	if string(a) != string(b) {
		t.Error("same seed gave different images")
	}
}
