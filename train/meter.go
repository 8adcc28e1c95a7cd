package train

import (
	"github.com/handnet/handnet/handnet/torch"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// meter sums an epoch's loss (times batch size) and correct predictions
// on the device, so that a step need not wait for the GPU to read them.
// It owns its two sums; drop frees them.
type meter struct {
	loss, correct *ts.Tensor // float64 and int64 scalars
	pending       int
}

// add adds a batch of n images: its mean loss and its logits against the
// labels y.
func (m *meter) add(loss, logits, y *ts.Tensor, n int) {
	s := torch.NewScope()
	defer s.Close()
	l := s.T(s.T(loss.MustDetach(false)).MustTotype(gotch.Double, false))
	l = s.T(l.MustMulScalar(ts.FloatScalar(float64(n)), false))
	am := s.T(logits.MustArgmax([]int64{-1}, false, false))
	c := s.T(s.T(am.MustEqTensor(y, false)).MustSum(gotch.Int64, false))
	if m.loss == nil {
		m.loss, m.correct = s.Keep(l), s.Keep(c)
	} else {
		m.loss.MustAdd_(l)
		m.correct.MustAdd_(c)
	}
	m.pending++
}

// flush reads and clears the sums.
func (m *meter) flush() (loss float64, correct int) {
	loss, correct = torch.Float64s(m.loss)[0], int(m.correct.Int64Values()[0])
	m.drop()
	return loss, correct
}

// drop frees the sums.
func (m *meter) drop() {
	if m.loss != nil {
		m.loss.MustDrop()
		m.correct.MustDrop()
	}
	m.loss, m.correct, m.pending = nil, nil, 0
}
