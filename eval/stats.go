package eval

import (
	"fmt"
	"math"
)

// Interval is a sample's mean with its two-sided Student-t confidence
// interval.
type Interval struct {
	N     int     `json:"n"`
	Mean  float64 `json:"mean"`
	SD    float64 `json:"sd"`    // sample standard deviation (n-1)
	Level float64 `json:"level"` // e.g. 0.95
	Low   float64 `json:"low"`
	High  float64 `json:"high"`
	// DF is the t distribution's degrees of freedom (n-1; for a
	// difference, Welch–Satterthwaite's). 0: one value, no interval (Low
	// and High are the mean).
	DF float64 `json:"df"`
}

// Defined says whether there is an interval (two values or more).
func (iv Interval) Defined() bool { return iv.DF > 0 }

// HalfWidth is half the interval's width.
func (iv Interval) HalfWidth() float64 { return (iv.High - iv.Low) / 2 }

// Contains says whether v lies in the interval (ends included).
func (iv Interval) Contains(v float64) bool { return iv.Low <= v && v <= iv.High }

// MeanCI is the mean of xs with its Student-t interval at level (0.95 for
// 95 %). With one value there is no interval (DF 0, Low = High = the
// value); with none it is an error.
func MeanCI(xs []float64, level float64) (Interval, error) {
	if err := checkLevel(level); err != nil {
		return Interval{}, err
	}
	n := len(xs)
	if n == 0 {
		return Interval{}, fmt.Errorf("confidence interval of no values")
	}
	iv := Interval{N: n, Level: level, DF: float64(n - 1)}
	for _, x := range xs {
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return Interval{}, fmt.Errorf("confidence interval: value %v", x)
		}
		iv.Mean += x
	}
	iv.Mean /= float64(n)
	if n == 1 {
		iv.Low, iv.High = iv.Mean, iv.Mean
		return iv, nil
	}
	ss := 0.0
	for _, x := range xs {
		ss += (x - iv.Mean) * (x - iv.Mean)
	}
	iv.SD = math.Sqrt(ss / float64(n-1))
	h := StudentTQuantile(0.5+level/2, iv.DF) * iv.SD / math.Sqrt(float64(n))
	iv.Low, iv.High = iv.Mean-h, iv.Mean+h
	return iv, nil
}

// DiffCI is the difference of means a − b with Welch's interval (unequal
// variances, Welch–Satterthwaite degrees of freedom). SD is the standard
// error of the difference. Both samples need two values or more.
func DiffCI(a, b []float64, level float64) (Interval, error) {
	ia, err := MeanCI(a, level)
	if err != nil {
		return Interval{}, err
	}
	ib, err := MeanCI(b, level)
	if err != nil {
		return Interval{}, err
	}
	if ia.N < 2 || ib.N < 2 {
		return Interval{}, fmt.Errorf("interval of a difference: %d and %d values, want 2 or more each", ia.N, ib.N)
	}
	va, vb := ia.SD*ia.SD/float64(ia.N), ib.SD*ib.SD/float64(ib.N)
	iv := Interval{N: ia.N + ib.N, Mean: ia.Mean - ib.Mean, SD: math.Sqrt(va + vb), Level: level}
	if va+vb == 0 {
		iv.DF = float64(ia.N + ib.N - 2)
		iv.Low, iv.High = iv.Mean, iv.Mean
		return iv, nil
	}
	iv.DF = (va + vb) * (va + vb) / (va*va/float64(ia.N-1) + vb*vb/float64(ib.N-1))
	h := StudentTQuantile(0.5+level/2, iv.DF) * iv.SD
	iv.Low, iv.High = iv.Mean-h, iv.Mean+h
	return iv, nil
}

func checkLevel(level float64) error {
	if !(level > 0 && level < 1) {
		return fmt.Errorf("confidence level %v: want 0 < level < 1", level)
	}
	return nil
}

// StudentTCDF is P(T <= t) for Student's t with df degrees of freedom
// (df > 0, not necessarily whole).
func StudentTCDF(t, df float64) float64 {
	if math.IsInf(t, 1) {
		return 1
	}
	if math.IsInf(t, -1) {
		return 0
	}
	tail := 0.5 * regIncBeta(df/2, 0.5, df/(df+t*t)) // P(T > |t|)
	if t > 0 {
		return 1 - tail
	}
	return tail
}

// StudentTQuantile is the t with P(T <= t) = p for Student's t with df
// degrees of freedom: 4.303 for p 0.975 and df 2. It solves the CDF by
// bisection to double precision.
func StudentTQuantile(p, df float64) float64 {
	switch {
	case math.IsNaN(p) || math.IsNaN(df) || df <= 0 || p < 0 || p > 1:
		return math.NaN()
	case p == 0:
		return math.Inf(-1)
	case p == 1:
		return math.Inf(1)
	case p == 0.5:
		return 0
	case p < 0.5:
		return -StudentTQuantile(1-p, df)
	}
	lo, hi := 0.0, 1.0
	for StudentTCDF(hi, df) < p {
		lo, hi = hi, 2*hi
		if math.IsInf(hi, 1) {
			return hi
		}
	}
	for range 200 {
		mid := (lo + hi) / 2
		if mid == lo || mid == hi {
			break
		}
		if StudentTCDF(mid, df) < p {
			lo = mid
		} else {
			hi = mid
		}
	}
	return (lo + hi) / 2
}

// regIncBeta is the regularised incomplete beta function I_x(a, b), by its
// continued fraction (modified Lentz), using the symmetry
// I_x(a,b) = 1 − I_{1−x}(b,a) where that converges faster.
func regIncBeta(a, b, x float64) float64 {
	if x <= 0 {
		return 0
	}
	if x >= 1 {
		return 1
	}
	la, _ := math.Lgamma(a + b)
	lb, _ := math.Lgamma(a)
	lc, _ := math.Lgamma(b)
	front := math.Exp(la - lb - lc + a*math.Log(x) + b*math.Log1p(-x))
	if x < (a+1)/(a+b+2) {
		return front * betaCF(a, b, x) / a
	}
	return 1 - front*betaCF(b, a, 1-x)/b
}

func betaCF(a, b, x float64) float64 {
	const tiny, eps = 1e-300, 1e-16
	c, d := 1.0, 1-(a+b)*x/(a+1)
	if math.Abs(d) < tiny {
		d = tiny
	}
	d = 1 / d
	h := d
	for m := 1; m <= 10000; m++ {
		fm := float64(m)
		num := fm * (b - fm) * x / ((a + 2*fm - 1) * (a + 2*fm))
		for k := range 2 {
			if k == 1 {
				num = -(a + fm) * (a + b + fm) * x / ((a + 2*fm) * (a + 2*fm + 1))
			}
			d = 1 + num*d
			if math.Abs(d) < tiny {
				d = tiny
			}
			c = 1 + num/c
			if math.Abs(c) < tiny {
				c = tiny
			}
			d = 1 / d
			h *= d * c
		}
		if math.Abs(d*c-1) < eps {
			break
		}
	}
	return h
}
