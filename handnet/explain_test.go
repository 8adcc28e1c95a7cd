package handnet_test

import (
	"context"
	"fmt"
	"image"
	"image/color"
	"image/draw"
	"image/jpeg"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handnet/handnet/handnet"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
)

// The mark: a dark blue square, the only thing that tells "female" (marked)
// from "male" photos apart, always at the same place (340x256 pixels).
var markRect = image.Rect(30, 30, 80, 80)

// markedDataset writes n photos of random clutter, half with the mark,
// labelled by gender through HandInfo.csv.
func markedDataset(t *testing.T, dir string, n int) {
	os.MkdirAll(filepath.Join(dir, vision.ImagesDir), 0o755)
	rng := rand.New(rand.NewPCG(7, 7))
	var csv strings.Builder
	csv.WriteString("id,age,gender,skinColor,accessories,nailPolish,aspectOfHand,imageName,irregularities\n")
	for i := range n {
		img := image.NewRGBA(image.Rect(0, 0, 340, 256))
		draw.Draw(img, img.Bounds(), &image.Uniform{color.RGBA{235, 232, 228, 255}}, image.Point{}, draw.Src)
		for range 12 { // clutter in warm colours, everywhere
			x, y := rng.IntN(320), rng.IntN(236)
			r := image.Rect(x, y, x+10+rng.IntN(50), y+10+rng.IntN(50))
			c := color.RGBA{uint8(150 + rng.IntN(100)), uint8(60 + rng.IntN(150)), uint8(rng.IntN(60)), 255}
			draw.Draw(img, r, &image.Uniform{c}, image.Point{}, draw.Src)
		}
		gender := "male"
		if i%2 == 0 {
			gender = "female"
			draw.Draw(img, markRect, &image.Uniform{color.RGBA{20, 30, 140, 255}}, image.Point{}, draw.Src)
		}
		name := fmt.Sprintf("Hand_%07d.jpg", i)
		f, err := os.Create(filepath.Join(dir, vision.ImagesDir, name))
		if err != nil {
			t.Fatal(err)
		}
		jpeg.Encode(f, img, &jpeg.Options{Quality: 92})
		f.Close()
		fmt.Fprintf(&csv, "%07d,30,%s,fair,0,0,%s,%s,0\n", i/10, gender, vision.Aspects[rng.IntN(4)], name)
	}
	os.WriteFile(filepath.Join(dir, "HandInfo.csv"), []byte(csv.String()), 0o644)
}

// TestGradCAMFindsTheMark trains the study's CNN to tell marked photos from
// unmarked ones. For the marked photos it classifies correctly, the default
// map (HiResCAM for this CNN) puts most of its mass (> 50 %) around the
// mark, every time; plain Grad-CAM does too when its map is not empty, and
// the test reports how often it is (its averaged gradients cancel on this
// CNN's fully connected head: that is why HiResCAM is the default here).
func TestGradCAMFindsTheMark(t *testing.T) {
	dir := t.TempDir()
	markedDataset(t, dir, 240)
	ds, err := vision.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	cache, err := vision.OpenCache(ds, vision.CacheOptions{Dir: filepath.Join(dir, "cache")})
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	split, err := vision.MakeSplit(ds.Records, vision.Stratified, 1)
	if err != nil {
		t.Fatal(err)
	}
	ckpt := filepath.Join(dir, "run", rundir.BestCheckpoint)
	th := torch.NewThread(0)
	err = th.Do(func() error {
		torch.ManualSeed(3)
		m, err := model.New(model.Config{Arch: "cnn", Dropout: "none", Classes: vision.Gender.Classes(), Width: vision.Width, Height: vision.Height,
			Mean: vision.Mean, Std: vision.Std}, gotch.CPU)
		if err != nil {
			return err
		}
		defer m.Close()
		trainL, valL, _, err := vision.SplitLoaders(ds, cache, split, vision.Gender, vision.LoaderOptions{BatchSize: 16, Shuffle: true, Seed: 3, Device: gotch.CPU})
		if err != nil {
			return err
		}
		cfg := train.DefaultConfig()
		cfg.Epochs, cfg.LR, cfg.CheckpointEvery = 4, 0.005, 0
		tr := &train.Trainer{Model: m, Train: trainL, Val: valL, Config: cfg, Dir: filepath.Dir(ckpt)}
		h, err := tr.Run(context.Background(), false)
		if err == nil {
			t.Logf("validation accuracy by epoch: %.2f %.2f %.2f %.2f", h[0].ValAcc, h[1].ValAcc, h[2].ValAcc, h[3].ValAcc)
		}
		return err
	})
	th.Close()
	if err != nil {
		t.Fatal(err)
	}
	// The mark in the model's 170x128 input, with a margin of the last
	// block's cell (10 pixels).
	region := image.Rect(markRect.Min.X/2-10, markRect.Min.Y/2-10, markRect.Max.X/2+10, markRect.Max.Y/2+10)
	area := float64(region.Dx()*region.Dy()) / float64(vision.Width*vision.Height)
	for _, method := range []model.CAMMethod{model.AutoCAM, model.GradCAMMethod} {
		c, err := handnet.LoadWith(ckpt, handnet.Options{CAM: method})
		if err != nil {
			t.Fatal(err)
		}
		female := c.ClassIndex("female")
		var masses []float64
		empty := 0
		for _, i := range split.Indices(vision.Test) {
			if ds.Records[i].Gender != "female" {
				continue
			}
			e, _, err := c.ExplainFile(ds.ImagePath(i), female)
			if err != nil {
				t.Fatal(err)
			}
			if e.Index != female {
				continue // misclassified
			}
			in, all := 0.0, 0.0
			for y := 0; y < e.H; y++ {
				for x := 0; x < e.W; x++ {
					v := float64(e.Map[y*e.W+x])
					all += v
					if image.Pt(x, y).In(region) {
						in += v
					}
				}
			}
			if all == 0 {
				empty++
				if method == model.AutoCAM {
					t.Errorf("%s (%s): an empty map for a photo classified right", ds.Records[i].ImageName, e.Method)
				}
				continue
			}
			masses = append(masses, in/all)
		}
		c.Close()
		if len(masses)+empty < 5 {
			t.Fatalf("only %d marked test photos classified correctly", len(masses)+empty)
		}
		t.Logf("%s: map mass around the mark (%.0f %% of the image) for %d photos: %.2f; empty maps: %d", method, 100*area, len(masses)+empty, masses, empty)
		for i, m := range masses {
			if m <= 0.5 {
				t.Errorf("%s, photo %d: %.0f %% of the map's mass around the mark, want > 50 %%", method, i, 100*m)
			}
		}
		if method == model.GradCAMMethod && len(masses) == 0 {
			t.Error("gradcam: every map empty")
		}
	}
}
