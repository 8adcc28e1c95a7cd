package fileio

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sub", "a.json")
	if err := WriteAtomic(p, []byte("one")); err != nil {
		t.Fatal(err)
	}
	if err := WriteAtomic(p, []byte("two!")); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil || string(b) != "two!" {
		t.Fatalf("read %q, %v; want two!", b, err)
	}
	st, _ := os.Stat(p)
	if st.Mode().Perm() != Mode {
		t.Errorf("mode %v, want %v (os.WriteFile's)", st.Mode().Perm(), Mode)
	}
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Errorf("folder holds %d entries, want only a.json", len(entries))
	}
}

// TestCrashLeavesOldFile stops a write at each fault moment (as a killed
// process would) and checks that the old file stands and the sweep
// recognises and removes the leftover.
func TestCrashLeavesOldFile(t *testing.T) {
	for _, moment := range []string{"half", "rename"} {
		t.Run(moment, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "best.safetensors")
			if err := WriteAtomic(p, []byte("old")); err != nil {
				t.Fatal(err)
			}
			crash := errors.New("crash")
			FaultHook = func(m string) {
				if m == moment {
					panic(crash)
				}
			}
			defer func() { FaultHook = nil }()
			func() {
				defer func() {
					if r := recover(); r != crash {
						t.Fatalf("recovered %v, want the crash at %q", r, moment)
					}
				}()
				// A crash skips deferred clean-up in a real process: leave the temp file.
				w, err := Create(p)
				if err != nil {
					t.Fatal(err)
				}
				w.Write([]byte("new-half"))
				fault("half")
				w.Sync()
				fault("rename")
			}()
			b, _ := os.ReadFile(p)
			if string(b) != "old" {
				t.Fatalf("after a crash at %q the file holds %q, want old", moment, b)
			}
			entries, _ := os.ReadDir(dir)
			temps := 0
			for _, e := range entries {
				if IsTemp(e.Name()) {
					temps++
				}
			}
			if temps != 1 {
				t.Fatalf("%d temporary files recognised, want 1: %v", temps, entries)
			}
			if err := SweepTemps(dir); err != nil {
				t.Fatal(err)
			}
			entries, _ = os.ReadDir(dir)
			if len(entries) != 1 || entries[0].Name() != "best.safetensors" {
				t.Errorf("after the sweep: %v, want best.safetensors alone", entries)
			}
		})
	}
}

func TestIsTemp(t *testing.T) {
	for _, c := range []struct {
		name string
		want bool
	}{
		{".best.safetensors.tmp123", true},
		{".loss.png.tmp9", true},
		{"loss.png", false},
		{".lock", false},
		{"history.json", false},
	} {
		if got := IsTemp(c.name); got != c.want {
			t.Errorf("IsTemp(%q) = %v, want %v", c.name, got, c.want)
		}
	}
	// Every pattern Create uses names a temp file.
	dir := t.TempDir()
	w, err := Create(filepath.Join(dir, "loss.png"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Abort()
	if !IsTemp(filepath.Base(w.Name())) {
		t.Errorf("Create's temporary %s is not recognised by IsTemp", w.Name())
	}
}

func TestOpenRegularAndSHA256(t *testing.T) {
	dir := t.TempDir()
	if _, _, err := OpenRegular(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("OpenRegular(folder) = %v, want not a regular file", err)
	}
	p := filepath.Join(dir, "x")
	os.WriteFile(p, []byte("abc"), 0o644)
	f, st, err := OpenRegular(p)
	if err != nil || st.Size() != 3 {
		t.Fatalf("OpenRegular: %v, size %v", err, st)
	}
	f.Close()
	h, err := SHA256(p)
	if want := "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; err != nil || h != want {
		t.Errorf("SHA256 = %s, %v; want %s", h, err, want)
	}
	if _, err := SHA256(filepath.Join(dir, "missing")); err == nil {
		t.Error("SHA256 of a missing file: no error")
	}
}
