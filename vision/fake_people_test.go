package vision

import (
	"image/jpeg"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// TestFakePeople: identity marks are constant per person and differ
// between people; Signals{0, 1} draws the classic look byte for byte;
// strengths outside 0..1 are refused.
func TestFakePeople(t *testing.T) {
	classic, plain, marked := t.TempDir(), t.TempDir(), t.TempDir()
	o := FakeOptions{Count: 12, Seed: 5, Width: 96, Height: 72, PerSubject: 4}
	if err := GenerateFake(classic, o); err != nil {
		t.Fatal(err)
	}
	o.Signals = &FakeSignals{Identity: 0, Gender: 1}
	if err := GenerateFake(plain, o); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"HandInfo.csv", filepath.Join(ImagesDir, "Hand_0000002.jpg"), filepath.Join(ImagesDir, "Hand_0000013.jpg")} {
		a, err1 := os.ReadFile(filepath.Join(classic, f))
		b, err2 := os.ReadFile(filepath.Join(plain, f))
		if err1 != nil || err2 != nil || string(a) != string(b) {
			t.Errorf("%s: identity 0, gender 1 differs from the classic look (%v, %v)", f, err1, err2)
		}
	}
	o.Signals = &FakeSignals{Identity: 1, Gender: 0}
	if err := GenerateFake(marked, o); err != nil {
		t.Fatal(err)
	}
	ds, err := Open(marked)
	if err != nil {
		t.Fatal(err)
	}
	corner := func(i int) [3]float64 { // the top-left corner's colour
		f, err := os.Open(ds.ImagePath(i))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		img, err := jpeg.Decode(f)
		if err != nil {
			t.Fatal(err)
		}
		r, g, b, _ := img.At(2, 2).RGBA()
		return [3]float64{float64(r >> 8), float64(g >> 8), float64(b >> 8)}
	}
	dist := func(a, b [3]float64) float64 {
		return math.Sqrt((a[0]-b[0])*(a[0]-b[0]) + (a[1]-b[1])*(a[1]-b[1]) + (a[2]-b[2])*(a[2]-b[2]))
	}
	for i := range ds.Records {
		first := i - i%4
		if ds.Records[i].ID != ds.Records[first].ID || !ds.Records[i].Accessories {
			t.Fatalf("record %d: person %s (accessories %v), want %s's", i, ds.Records[i].ID, ds.Records[i].Accessories, ds.Records[first].ID)
		}
		if d := dist(corner(i), corner(first)); d > 12 {
			t.Errorf("image %d: background %.0f from its person's first photo", i, d)
		}
	}
	if d := dist(corner(0), corner(4)) + dist(corner(4), corner(8)) + dist(corner(0), corner(8)); d < 30 {
		t.Errorf("three people share nearly one background (total distance %.0f)", d)
	}
	if dist(corner(0), [3]float64{255, 255, 255}) < 20 {
		t.Errorf("identity 1: background %v is still white", corner(0))
	}
	for _, s := range []FakeSignals{{Identity: 1.5}, {Gender: -0.1}, {Identity: math.NaN()}} {
		o.Signals = &s
		if err := GenerateFake(t.TempDir(), o); err == nil {
			t.Errorf("signals %+v accepted", s)
		}
	}
}
