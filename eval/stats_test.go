package eval

import (
	"math"
	"testing"
)

// TestStudentT: quantiles against published table values and the closed
// forms for 1 and 2 degrees of freedom.
func TestStudentT(t *testing.T) {
	tests := []struct {
		p, df, want float64
	}{
		{0.975, 1, 12.7062047362},
		{0.975, 2, 4.3026527297},
		{0.975, 4, 2.7764451052},
		{0.975, 9, 2.2621571628},
		{0.975, 30, 2.0422724563},
		{0.95, 5, 2.0150483733},
		{0.995, 10, 3.1692726726},
		{0.9, 1, math.Tan(0.4 * math.Pi)},    // Cauchy
		{0.8, 2, 0.6 / math.Sqrt(2*0.8*0.2)}, // (2p-1)/sqrt(2p(1-p))
		{0.025, 4, -2.7764451052},            // symmetry
		{0.975, 1e7, 1.9599640},              // the normal's
		{0.5, 3, 0},
	}
	for _, tt := range tests {
		got := StudentTQuantile(tt.p, tt.df)
		if math.Abs(got-tt.want) > 1e-6*math.Max(1, math.Abs(tt.want)) {
			t.Errorf("t quantile p %v df %v = %.10f, want %.10f", tt.p, tt.df, got, tt.want)
		}
		if c := StudentTCDF(got, tt.df); math.Abs(c-tt.p) > 1e-9 {
			t.Errorf("CDF(quantile(%v)) = %v", tt.p, c)
		}
	}
	if !math.IsNaN(StudentTQuantile(0.975, 0)) || !math.IsNaN(StudentTQuantile(1.5, 3)) {
		t.Error("df 0 or p 1.5 gave a number")
	}
}

// TestIntervals: mean, sd and 95 % intervals of known samples, and
// Welch's interval of a difference.
func TestIntervals(t *testing.T) {
	near := func(what string, got, want float64) {
		t.Helper()
		if math.Abs(got-want) > 1e-6 {
			t.Errorf("%s = %.8f, want %.8f", what, got, want)
		}
	}
	tests := []struct {
		xs                  []float64
		mean, sd, low, high float64
	}{
		{[]float64{1, 2, 3, 4, 5}, 3, math.Sqrt(2.5), 3 - 2.7764451052*math.Sqrt(0.5), 3 + 2.7764451052*math.Sqrt(0.5)},
		{[]float64{0.9, 0.95}, 0.925, 0.0353553391, 0.925 - 12.7062047362*0.025, 0.925 + 12.7062047362*0.025},
		{[]float64{0.5, 0.5, 0.5}, 0.5, 0, 0.5, 0.5},
	}
	for _, tt := range tests {
		iv, err := MeanCI(tt.xs, 0.95)
		if err != nil {
			t.Fatal(err)
		}
		near("mean", iv.Mean, tt.mean)
		near("sd", iv.SD, tt.sd)
		near("low", iv.Low, tt.low)
		near("high", iv.High, tt.high)
		if iv.N != len(tt.xs) || iv.DF != float64(len(tt.xs)-1) {
			t.Errorf("n %d df %v", iv.N, iv.DF)
		}
	}
	d, err := DiffCI([]float64{1, 2, 3, 4, 5}, []float64{2, 4, 6, 8, 10}, 0.95)
	if err != nil {
		t.Fatal(err)
	}
	near("difference", d.Mean, -3)
	near("standard error", d.SD, math.Sqrt(2.5))
	near("Welch df", d.DF, 6.25/1.0625)
	q := d.HalfWidth() / d.SD
	if q <= 2.4469118511 || q >= 2.5705818366 { // between t(.975, 6) and t(.975, 5)
		t.Errorf("t quantile of df %.3f: %v", d.DF, q)
	}
	if !d.Contains(-3) || !d.Contains(0) || d.Contains(1) {
		t.Errorf("interval %v..%v", d.Low, d.High)
	}
	for _, bad := range [][]float64{nil, {1, math.NaN()}} {
		if _, err := MeanCI(bad, 0.95); err == nil {
			t.Errorf("MeanCI(%v) accepted", bad)
		}
	}
	if _, err := DiffCI([]float64{1}, []float64{1, 2}, 0.95); err == nil {
		t.Error("DiffCI with one value accepted")
	}
	if _, err := MeanCI([]float64{1, 2}, 1); err == nil {
		t.Error("level 1 accepted")
	}
}

// TestOneValue: one value has no interval, and says so.
func TestOneValue(t *testing.T) {
	iv, err := MeanCI([]float64{0.7}, 0.95)
	if err != nil || iv.Defined() || iv.Mean != 0.7 || iv.Low != 0.7 || iv.High != 0.7 {
		t.Errorf("%+v, %v", iv, err)
	}
	if iv, _ := MeanCI([]float64{0.7, 0.8}, 0.95); !iv.Defined() {
		t.Errorf("two values: %+v", iv)
	}
}
