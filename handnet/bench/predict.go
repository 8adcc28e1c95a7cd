package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	"github.com/handnet/handnet/handnet"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/vision"
)

// Photos writes n synthetic hands as 1600×1200 JPEGs (the real photos'
// size) into a new folder under dir and returns it: the files predict
// steps classify, on both sides.
func Photos(dir string, n int) (string, error) {
	out, err := os.MkdirTemp(dir, "handnet-bench-photos")
	if err != nil {
		return "", err
	}
	if err := vision.GenerateFake(out, vision.FakeOptions{Count: n, Seed: 7}); err != nil {
		os.RemoveAll(out)
		return "", err
	}
	return filepath.Join(out, vision.ImagesDir), nil
}

// predictStep makes the end-to-end step of `handnet predict`: m saved as a
// checkpoint and loaded as a handnet.Classifier, which each step asks to
// classify the next c.Batch photo files (read, decode, resize, normalise,
// forward, softmax, answer).
func predictStep(c Case, m *model.Model, o Options) (step func() error, done func(), err error) {
	files, err := filepath.Glob(filepath.Join(o.Photos, "*.jpg"))
	if err != nil || len(files) == 0 {
		return nil, nil, fmt.Errorf("predict: no JPEG photos in %q (bench.Photos makes them)", o.Photos)
	}
	sort.Strings(files)
	tmp, err := os.MkdirTemp("", "handnet-bench-model")
	if err != nil {
		return nil, nil, err
	}
	ckpt := filepath.Join(tmp, "model.safetensors")
	if err := model.SaveCheckpoint(ckpt, m, nil, nil); err != nil {
		os.RemoveAll(tmp)
		return nil, nil, err
	}
	cl, err := handnet.LoadWith(ckpt, handnet.Options{Device: torch.DeviceName(o.Device), Threads: o.Threads})
	if err != nil {
		os.RemoveAll(tmp)
		return nil, nil, err
	}
	i := 0
	step = func() error {
		paths := make([]string, c.Batch)
		for j := range paths {
			paths[j] = files[i%len(files)]
			i++
		}
		_, err := cl.PredictFiles(paths)
		return err
	}
	return step, func() { cl.Close(); os.RemoveAll(tmp) }, nil
}
