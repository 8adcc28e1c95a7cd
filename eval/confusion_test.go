package eval

import (
	"reflect"
	"testing"
)

var classes8 = []string{"female dorsal left", "female dorsal right", "female palmar left", "female palmar right",
	"male dorsal left", "male dorsal right", "male palmar left", "male palmar right"}

func TestConfusionAndBreakdown(t *testing.T) {
	labels := []int{0, 0, 1, 2, 3, 4, 7, 7}
	pred := []int{0, 1, 1, 6, 0, 4, 7, 2}
	c := NewConfusion(classes8, labels, pred)
	if c.Total() != 8 || c.Accuracy() != 0.5 {
		t.Fatalf("total %d accuracy %v", c.Total(), c.Accuracy())
	}
	if c.M[0][1] != 1 || c.M[2][6] != 1 || c.M[7][7] != 1 {
		t.Fatalf("matrix %v", c.M)
	}
	pc := c.PerClass()
	if pc[0] != (ClassStat{Class: classes8[0], Images: 2, Correct: 1, Accuracy: 0.5}) || pc[5].Images != 0 {
		t.Fatalf("per class %+v", pc)
	}
	// Errors: 0→1 side; 2→6 gender; 3→0 aspect+side; 7→2 gender+side.
	want := Breakdown{Errors: 4, Gender: 2, Aspect: 1, Side: 3}
	if got := c.Decompose(); got != want {
		t.Fatalf("Decompose = %+v, want %+v", got, want)
	}
	if got := NewConfusion([]string{"female", "male"}, []int{0, 1}, []int{1, 1}).Decompose(); got != (Breakdown{Errors: 1}) {
		t.Fatalf("2-class Decompose = %+v", got)
	}
}

func TestPredictionsMistakes(t *testing.T) {
	p := &Predictions{Indices: []int{10, 11, 12, 13}, Labels: []int{0, 1, 0, 1}, Pred: []int{1, 1, 1, 0},
		Probs: [][]float32{{0.4, 0.6}, {0.1, 0.9}, {0.05, 0.95}, {0.7, 0.3}}}
	if p.Accuracy() != 0.25 {
		t.Fatalf("accuracy %v", p.Accuracy())
	}
	got := p.ConfidentMistakes(2)
	want := []Mistake{{Index: 12, Label: 0, Pred: 1, Confidence: float64(float32(0.95))}, {Index: 13, Label: 1, Pred: 0, Confidence: float64(float32(0.7))}}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ConfidentMistakes = %+v, want %+v", got, want)
	}
	if argmax([]float32{0.1, 0.7, 0.2}) != 1 {
		t.Fatal("argmax")
	}
}
