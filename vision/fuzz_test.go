package vision

import (
	"bytes"
	"image"
	"image/color"
	"image/gif"
	"image/jpeg"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const csvHeader = "id,age,gender,skinColor,accessories,nailPolish,aspectOfHand,imageName,irregularities\r\n"

// FuzzReadHandInfo: no input crashes the metadata reader; what it accepts
// is well formed.
func FuzzReadHandInfo(f *testing.F) {
	f.Add([]byte(csvHeader + `"0000000",27,"male","fair",0,0,"dorsal right","Hand_0000002.jpg",0` + "\r\n"))
	f.Add([]byte("\xef\xbb\xbf" + csvHeader + `"1200000 ",27,"female","dark",1,0,"palmar left","Hand_0000003.jpg",0` + "\n"))
	f.Add([]byte(csvHeader + `"1",27,"other","fair",0,0,"dorsal right","x.jpg",0` + "\r\n"))
	f.Add([]byte(csvHeader + `"1",27,"male","fair",0,0` + "\r\n"))
	f.Add([]byte(csvHeader))
	f.Add([]byte{})
	f.Add([]byte(`"unterminated`))
	if b, err := os.ReadFile(realCSV); err == nil {
		f.Add(b[:4096])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		recs, err := ReadHandInfo(bytes.NewReader(b))
		if err != nil {
			return
		}
		for _, r := range recs {
			if r.ImageName == "" || r.ID == "" || r.Line < 2 || !contains(Genders, r.Gender) || !contains(Aspects, r.Aspect) {
				t.Fatalf("accepted a bad record %+v", r)
			}
		}
	})
}

// FuzzReadManifest: no input crashes the split-manifest reader; an accepted
// manifest places every record.
func FuzzReadManifest(f *testing.F) {
	recs := []Record{{ImageName: "a.jpg", Line: 2}, {ImageName: "b.jpg", Line: 3}, {ImageName: "c.jpg", Line: 4}}
	f.Add([]byte("imageName,split\na.jpg,train\nb.jpg,val\nc.jpg,test\n"))
	f.Add([]byte("imageName,split\na.jpg,train\na.jpg,test\nb.jpg,val\nc.jpg,test\n"))
	f.Add([]byte("imageName,split\nz.jpg,train\n"))
	f.Add([]byte("imageName,split\na.jpg,sideways\n"))
	f.Add([]byte("split,imageName\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ReadManifest(bytes.NewReader(b), "split.csv", recs)
		if err != nil {
			return
		}
		if len(a) != len(recs) {
			t.Fatalf("%d assignments for %d records", len(a), len(recs))
		}
		for _, s := range a {
			if s != Train && s != Val && s != Test {
				t.Fatalf("split %v", s)
			}
		}
	})
}

// FuzzPreprocess: no bytes crash the decoder (the one every path uses) or
// make it decode past its budgets.
func FuzzPreprocess(f *testing.F) {
	img := image.NewRGBA(image.Rect(0, 0, 96, 72))
	for y := 0; y < 72; y++ {
		for x := 0; x < 96; x++ {
			img.Set(x, y, color.RGBA{uint8(x * 2), uint8(y * 3), uint8(x + y), 255})
		}
	}
	var j, p, g bytes.Buffer
	jpeg.Encode(&j, img, &jpeg.Options{Quality: 80})
	png.Encode(&p, img)
	gif.Encode(&g, img, nil)
	f.Add(j.Bytes())
	f.Add(p.Bytes())
	f.Add(g.Bytes())
	f.Add(j.Bytes()[:j.Len()/2])
	f.Add(bombPNG(20000, 20000))
	for _, name := range []string{"cmyk.jpg", "grey.jpg"} {
		if b, err := os.ReadFile(filepath.Join("..", "testdata", "fixtures", name)); err == nil {
			f.Add(b)
		}
	}
	pre, err := NewPreprocessor(Width, Height)
	if err != nil {
		f.Fatal(err)
	}
	pre.Limits = Limits{MaxPixels: 4_000_000}
	dst := make([]byte, pre.Size())
	f.Fuzz(func(t *testing.T, b []byte) {
		err := pre.Bytes(b, dst)
		if err != nil && strings.Contains(err.Error(), "\n") {
			t.Errorf("error of more than one line: %q", err)
		}
	})
}
