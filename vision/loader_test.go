package vision

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sugarme/gotch"
)

var (
	fakeOnce sync.Once
	fakeDir  string
	fakeErr  error
)

// fakeSet is a small synthetic dataset shared by the tests of this package.
func fakeSet(t testing.TB) *Dataset {
	fakeOnce.Do(func() {
		fakeDir, fakeErr = os.MkdirTemp("", "handnet-vision-test")
		if fakeErr == nil {
			fakeErr = GenerateFake(fakeDir, FakeOptions{Count: 50, Seed: 1, Width: 320, Height: 240, PerSubject: 12})
		}
	})
	if fakeErr != nil {
		t.Fatal(fakeErr)
	}
	ds, err := Open(fakeDir)
	if err != nil {
		t.Fatal(err)
	}
	return ds
}

func TestMain(m *testing.M) {
	code := m.Run()
	if fakeDir != "" {
		os.RemoveAll(fakeDir)
	}
	os.Exit(code)
}

func TestCacheBuildReuseRebuild(t *testing.T) {
	ds := fakeSet(t)
	dir := t.TempDir()
	calls := 0
	o := CacheOptions{Dir: dir, Progress: func(done, total int) { calls++ }}
	c, err := OpenCache(ds, o)
	if err != nil {
		t.Fatal(err)
	}
	if calls != len(ds.Records) || c.Count != len(ds.Records) || len(c.Bad) != 0 {
		t.Fatalf("first open: %d progress calls, count %d, bad %v", calls, c.Count, c.Bad)
	}
	// The cached pixels are the preprocessor's.
	p, _ := NewPreprocessor(Width, Height)
	want := make([]byte, p.Size())
	p.File(ds.ImagePath(7), want)
	if string(c.Image(7)) != string(want) {
		t.Fatal("cached image 7 differs from a fresh decode")
	}
	c.Close()
	calls = 0
	if !CacheIsCurrent(ds, o) {
		t.Fatal("cache not current right after building it")
	}
	c, err = OpenCache(ds, o)
	if err != nil || calls != 0 {
		t.Fatalf("second open decoded %d images (err %v)", calls, err)
	}
	c.Close()
	// Touch one image: same bytes, same cache (identity is by content).
	future := time.Now().Add(time.Hour)
	os.Chtimes(ds.ImagePath(3), future, future)
	if !CacheIsCurrent(ds, o) {
		t.Fatal("cache stale after an image was only touched")
	}
	// Change one byte of one image, keeping its size and times: rebuilt.
	b, err := os.ReadFile(ds.ImagePath(3))
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(ds.ImagePath(3), b, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(ds.ImagePath(3), future, future)
	if CacheIsCurrent(ds, o) {
		t.Fatal("cache still current after an image changed")
	}
	c, err = OpenCache(ds, o)
	if err != nil || calls != len(ds.Records) {
		t.Fatalf("after a change: %d decodes (err %v)", calls, err)
	}
	c.Close()
	// Another size is another cache.
	if CacheIsCurrent(ds, CacheOptions{Dir: dir, W: 85, H: 64}) {
		t.Fatal("85x64 reported current")
	}
	if files, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(files) != 0 {
		t.Fatalf("temporary files left: %v", files)
	}
}

func TestCacheBadImages(t *testing.T) {
	src := fakeSet(t)
	dir := t.TempDir()
	// A copy of the dataset with one truncated and one missing image.
	os.MkdirAll(filepath.Join(dir, ImagesDir), 0o755)
	csv, _ := os.ReadFile(filepath.Join(src.Dir, "HandInfo.csv"))
	os.WriteFile(filepath.Join(dir, "HandInfo.csv"), csv, 0o644)
	for i := range src.Records {
		b, _ := os.ReadFile(src.ImagePath(i))
		switch i {
		case 4:
			b = b[:len(b)/3]
		case 9:
			continue
		}
		os.WriteFile(filepath.Join(dir, ImagesDir, src.Records[i].ImageName), b, 0o644)
	}
	ds, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	cacheDir := t.TempDir()
	_, fresh := OpenCache(ds, CacheOptions{Dir: cacheDir})
	want := fmt.Sprintf("2 image(s) could not be read: Hands/%s (HandInfo.csv line %d): corrupt or truncated JPEG", ds.Records[4].ImageName, ds.Records[4].Line)
	if fresh == nil || !strings.Contains(fresh.Error(), want) || !strings.Contains(fresh.Error(), ds.Records[9].ImageName+" (HandInfo.csv line 11): open: no such file") ||
		!strings.Contains(fresh.Error(), "--skip-bad") {
		t.Fatalf("bad images: err = %v\nwant one naming both, starting %q", fresh, want)
	}
	if strings.Contains(fresh.Error(), dir) {
		t.Errorf("the error names absolute paths: %v", fresh)
	}
	c, err := OpenCache(ds, CacheOptions{Dir: cacheDir, SkipBad: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.Bad) != 2 || !strings.Contains(c.Bad[4], "truncated") || !strings.Contains(c.Bad[9], "no such file") {
		t.Fatalf("Bad = %v", c.Bad)
	}
	// --skip-bad is per run: the same cache without it fails as a fresh build did.
	if _, err := OpenCache(ds, CacheOptions{Dir: cacheDir}); err == nil || err.Error() != fresh.Error() {
		t.Fatalf("a cache built with SkipBad, opened without: %v\nwant %v", err, fresh)
	}
	l, err := NewLoader(c, allIndices(len(ds.Records)), Classes8.Labels(ds.Records), nil, LoaderOptions{BatchSize: 8, Device: gotch.CPU})
	if err != nil {
		t.Fatal(err)
	}
	if l.Len() != len(ds.Records)-2 {
		t.Fatalf("loader serves %d images, want %d", l.Len(), len(ds.Records)-2)
	}
}

func openFakeCache(t testing.TB) (*Dataset, *Cache) {
	ds := fakeSet(t)
	c, err := OpenCache(ds, CacheOptions{Dir: filepath.Join(fakeDir, "cache")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return ds, c
}

func TestLoaderEpochs(t *testing.T) {
	ds, c := openFakeCache(t)
	labels := Classes8.Labels(ds.Records)
	idx := allIndices(len(ds.Records))[:45] // 45 images: 5 full batches of 8 and one of 5
	l, err := NewLoader(c, idx, labels, Classes8.MirrorLabel, LoaderOptions{BatchSize: 8, Shuffle: true, Seed: 9, Device: gotch.CPU, Prefetch: 2})
	if err != nil {
		t.Fatal(err)
	}
	if l.Batches() != 6 {
		t.Fatalf("Batches = %d, want 6", l.Batches())
	}
	var orders [2][]int
	for epoch := range 2 {
		e := l.Epoch(epoch, 0)
		seen := map[int]bool{}
		for nb := 0; ; nb++ {
			b, err := e.Next()
			if err != nil {
				t.Fatal(err)
			}
			if b == nil {
				if nb != 6 {
					t.Fatalf("epoch %d: %d batches", epoch, nb)
				}
				break
			}
			n := len(b.Indices)
			if want := min(8, 45-nb*8); n != want {
				t.Fatalf("batch %d has %d images, want %d", nb, n, want)
			}
			if sz := b.X.MustSize(); sz[0] != int64(n) || sz[1] != 3 || sz[2] != Height || sz[3] != Width {
				t.Fatalf("X shape %v", sz)
			}
			ys := b.Y.Int64Values()
			x := b.X.Vals().([]float32)
			for k, i := range b.Indices {
				seen[i] = true
				orders[epoch] = append(orders[epoch], i)
				if ys[k] != int64(labels[i]) {
					t.Fatalf("label of record %d: %d, want %d", i, ys[k], labels[i])
				}
				// Pixel (c=1, y=60, x=90) normalised like torchvision.
				raw := c.Image(i)[1*Width*Height+60*Width+90]
				want := (float32(raw)/255 - Mean[1]) / Std[1]
				if got := x[k*3*Width*Height+1*Width*Height+60*Width+90]; got != want {
					t.Fatalf("normalised pixel %v, want %v", got, want)
				}
			}
			b.Drop()
		}
		e.Close()
		if len(seen) != 45 {
			t.Fatalf("epoch %d covered %d of 45 images", epoch, len(seen))
		}
	}
	if slices.Equal(orders[0], orders[1]) {
		t.Error("two epochs in the same order")
	}
	if !slices.Equal(orders[1], l.Order(1)) {
		t.Error("epoch 1 order differs from Order(1)")
	}
	// Resuming mid-epoch serves the rest of the same order.
	e := l.Epoch(1, 4)
	var rest []int
	for {
		b, _ := e.Next()
		if b == nil {
			break
		}
		rest = append(rest, b.Indices...)
		b.Drop()
	}
	e.Close()
	if !slices.Equal(rest, orders[1][32:]) {
		t.Errorf("resumed epoch served %v, want %v", rest, orders[1][32:])
	}
	// Leaving early does not block.
	e = l.Epoch(0, 0)
	b, _ := e.Next()
	b.Drop()
	e.Close()
}

func TestAugmentFlipMirrorsImageAndLabel(t *testing.T) {
	_, c := openFakeCache(t)
	src := c.Image(0)
	dst := make([]byte, len(src))
	flipOnly := Augment{HFlip: 1}
	if !flipOnly.apply(src, dst, Width, Height, rand.New(rand.NewPCG(1, 2))) {
		t.Fatal("HFlip=1 did not flip")
	}
	for ch := range 3 {
		for y := range Height {
			for x := range Width {
				if dst[ch*Width*Height+y*Width+x] != src[ch*Width*Height+y*Width+Width-1-x] {
					t.Fatalf("pixel (%d,%d,%d) is not the mirror", ch, y, x)
				}
			}
		}
	}
	if _, err := NewLoader(c, []int{0}, []int{0}, nil, LoaderOptions{BatchSize: 1, Augment: &flipOnly}); err == nil {
		t.Fatal("flips without a mirror mapping accepted")
	}
	labels := make([]int, c.Count)
	l, _ := NewLoader(c, []int{0}, labels, Classes8.MirrorLabel, LoaderOptions{BatchSize: 1, Augment: &flipOnly, Device: gotch.CPU})
	e := l.Epoch(0, 0)
	b, _ := e.Next()
	if b.Labels[0] != Classes8.MirrorLabel(0) {
		t.Errorf("flipped label %d, want %d", b.Labels[0], Classes8.MirrorLabel(0))
	}
	b.Drop()
	e.Close()
}

func TestAugmentSeeded(t *testing.T) {
	_, c := openFakeCache(t)
	a := DefaultAugment()
	out := func(seed uint64) string {
		dst := make([]byte, c.ImageSize())
		a.apply(c.Image(1), dst, Width, Height, rand.New(rand.NewPCG(seed, 5)))
		return string(dst)
	}
	if out(1) != out(1) {
		t.Error("same seed, different augmentation")
	}
	if out(1) == out(2) || out(1) == string(c.Image(1)) {
		t.Error("augmentation did not change with the seed, or did nothing")
	}
	for _, bad := range []string{"rotate", "rotate=-1", "hflip=2", "spin=3"} {
		if _, err := ParseAugment(bad); err == nil {
			t.Errorf("ParseAugment(%q) accepted", bad)
		}
	}
	if g, err := ParseAugment("rotate=15,hflip=0.5"); err != nil || g.Rotate != 15 || g.HFlip != 0.5 || g.Brightness != 0.2 {
		t.Errorf("ParseAugment = %+v, %v", g, err)
	}
}

// TestCacheManyBad: a dataset whose images are nearly all missing, under a
// long absolute path, still gets a cache (no fixed header reservation).
func TestCacheManyBad(t *testing.T) {
	src := fakeSet(t)
	dir := filepath.Join(t.TempDir(), strings.Repeat("a-long-folder-name/", 8))
	os.MkdirAll(filepath.Join(dir, ImagesDir), 0o755)
	csv, _ := os.ReadFile(filepath.Join(src.Dir, "HandInfo.csv"))
	os.WriteFile(filepath.Join(dir, "HandInfo.csv"), csv, 0o644)
	b, _ := os.ReadFile(src.ImagePath(0))
	os.WriteFile(filepath.Join(dir, ImagesDir, src.Records[0].ImageName), b, 0o644)
	ds, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	c, err := OpenCache(ds, CacheOptions{Dir: t.TempDir(), SkipBad: true})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if len(c.Bad) != len(ds.Records)-1 {
		t.Fatalf("%d bad, want %d", len(c.Bad), len(ds.Records)-1)
	}
}

// TestCacheBuildInterrupted: a build whose context ends stops and removes
// its temporary file; a temporary file left by a killed build is swept.
func TestCacheBuildInterrupted(t *testing.T) {
	ds := fakeSet(t)
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	n := 0
	_, err := OpenCache(ds, CacheOptions{Dir: dir, Context: ctx, Workers: 1, Progress: func(done, total int) {
		if n++; n == 5 {
			cancel()
		}
	}})
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "cache build interrupted") {
		t.Fatalf("err = %v", err)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, ".*")); len(files) != 0 {
		t.Fatalf("left behind: %v", files)
	}
	if n > 6 {
		t.Errorf("decoded %d images after the cancel", n-5)
	}
	// A killed build's leftover (nobody holds its lock) goes at the next open.
	stale := filepath.Join(dir, ".data-0123.u8.tmp42")
	os.WriteFile(stale, make([]byte, 1000), 0o644)
	c, err := OpenCache(ds, CacheOptions{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("stale temporary file still there: %v", err)
	}
}
