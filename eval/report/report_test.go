package report

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/handnet/handnet/eval"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/train"
	"github.com/handnet/handnet/vision"
)

func TestWriteReport(t *testing.T) {
	dir := t.TempDir()
	classes := vision.Classes8.Classes()
	recs := make([]vision.Record, 4)
	for i := range recs {
		recs[i].ImageName = "Hand_" + string(rune('a'+i)) + ".jpg"
	}
	p := &eval.Predictions{Indices: []int{0, 1, 2, 3}, Labels: []int{0, 1, 6, 7}, Pred: []int{0, 0, 6, 3},
		Probs: [][]float32{{1, 0, 0, 0, 0, 0, 0, 0}, {0.8, 0.2, 0, 0, 0, 0, 0, 0}, {0, 0, 0, 0, 0, 0, 1, 0}, {0, 0, 0, 0.6, 0, 0, 0, 0.4}}, Loss: 0.5}
	r := &Run{Title: "test run", Data: "d", Split: "random", Model: model.Config{Arch: "cnn", Dropout: "fc1-0.4", Classes: classes, Width: 170, Height: 128},
		Train:     train.DefaultConfig(),
		History:   train.History{{Epoch: 1, TrainLoss: 2, TrainAcc: 0.2, ValLoss: 1.9, ValAcc: 0.3}, {Epoch: 2, TrainLoss: 1.5, TrainAcc: 0.4, ValLoss: 1.4, ValAcc: 0.5}},
		BestEpoch: 2, Test: Evaluate(p, classes, recs, "test")}
	if err := Write(dir, r); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"report.md", "metrics.json", "loss.png", "loss.svg", "accuracy.png", "accuracy.svg", "confusion.png", "confusion.svg"} {
		if fi, err := os.Stat(filepath.Join(dir, f)); err != nil || fi.Size() == 0 {
			t.Errorf("%s: %v", f, err)
		}
	}
	md, _ := os.ReadFile(filepath.Join(dir, "report.md"))
	for _, want := range []string{"# test run", "| 2 **(best)** |", "**accuracy 50.00 %** on 4 images", "| male palmar right | 0 | 0 | 0 | 1 | 0 | 0 | 0 | 0 |",
		"the gender is wrong in 1 (50 %)", "| Hand_b.jpg | female dorsal right | female dorsal left | 0.800 |", "double softmax"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("report.md lacks %q", want)
		}
	}
	var back Run
	b, _ := os.ReadFile(filepath.Join(dir, "metrics.json"))
	if err := json.Unmarshal(b, &back); err != nil || back.Test.Accuracy != 0.5 || len(back.History) != 2 {
		t.Fatalf("metrics.json: %v %+v", err, back.Test)
	}
}
