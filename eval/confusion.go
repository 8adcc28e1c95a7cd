package eval

import (
	"sort"
	"strings"
)

// Confusion is a confusion matrix: M[true][predicted] counts.
type Confusion struct {
	Classes []string `json:"classes"`
	M       [][]int  `json:"matrix"`
}

// NewConfusion counts labels against predictions.
func NewConfusion(classes []string, labels, pred []int) *Confusion {
	c := &Confusion{Classes: classes, M: make([][]int, len(classes))}
	for i := range c.M {
		c.M[i] = make([]int, len(classes))
	}
	for i := range labels {
		c.M[labels[i]][pred[i]]++
	}
	return c
}

// Total is the number of counted images.
func (c *Confusion) Total() int {
	n := 0
	for _, row := range c.M {
		for _, v := range row {
			n += v
		}
	}
	return n
}

// Accuracy is the trace over the total.
func (c *Confusion) Accuracy() float64 {
	ok := 0
	for i := range c.M {
		ok += c.M[i][i]
	}
	if t := c.Total(); t > 0 {
		return float64(ok) / float64(t)
	}
	return 0
}

// ClassStat is one class's share of the results.
type ClassStat struct {
	Class    string  `json:"class"`
	Images   int     `json:"images"`
	Correct  int     `json:"correct"`
	Accuracy float64 `json:"accuracy"` // recall of the class
}

// PerClass returns each class's accuracy (recall).
func (c *Confusion) PerClass() []ClassStat {
	out := make([]ClassStat, len(c.Classes))
	for i, name := range c.Classes {
		n := 0
		for _, v := range c.M[i] {
			n += v
		}
		out[i] = ClassStat{Class: name, Images: n, Correct: c.M[i][i]}
		if n > 0 {
			out[i].Accuracy = float64(c.M[i][i]) / float64(n)
		}
	}
	return out
}

// Breakdown is the study's decomposition of errors: of the misclassified
// images, how many got the gender wrong, the aspect (dorsal vs palmar)
// wrong, the side (left vs right) wrong. One error can count in several.
type Breakdown struct {
	Errors int `json:"errors"`
	Gender int `json:"gender"`
	Aspect int `json:"aspect"`
	Side   int `json:"side"`
}

// parts splits "female dorsal left" into its three attributes; ok is false
// for class names of another shape.
func parts(class string) (p [3]string, ok bool) {
	f := strings.Fields(class)
	if len(f) != 3 {
		return p, false
	}
	return [3]string{f[0], f[1], f[2]}, true
}

// Decompose counts the attribute errors of the confusion matrix. It works
// on the 8-class scheme ("gender aspect side"); other schemes give zero
// attribute counts.
func (c *Confusion) Decompose() Breakdown {
	var b Breakdown
	for t := range c.M {
		for p, n := range c.M[t] {
			if t == p || n == 0 {
				continue
			}
			b.Errors += n
			tp, ok1 := parts(c.Classes[t])
			pp, ok2 := parts(c.Classes[p])
			if !ok1 || !ok2 {
				continue
			}
			if tp[0] != pp[0] {
				b.Gender += n
			}
			if tp[1] != pp[1] {
				b.Aspect += n
			}
			if tp[2] != pp[2] {
				b.Side += n
			}
		}
	}
	return b
}

// Mistake is one misclassified image.
type Mistake struct {
	Index      int     `json:"index"` // record index
	Label      int     `json:"label"`
	Pred       int     `json:"pred"`
	Confidence float64 `json:"confidence"` // probability given to the wrong class
}

// ConfidentMistakes returns the k misclassified images the model was most
// sure about, most confident first.
func (p *Predictions) ConfidentMistakes(k int) []Mistake {
	var out []Mistake
	for i := range p.Labels {
		if p.Pred[i] != p.Labels[i] {
			out = append(out, Mistake{Index: p.Indices[i], Label: p.Labels[i], Pred: p.Pred[i], Confidence: float64(p.Probs[i][p.Pred[i]])})
		}
	}
	sort.SliceStable(out, func(a, b int) bool { return out[a].Confidence > out[b].Confidence })
	if len(out) > k {
		out = out[:k]
	}
	return out
}
