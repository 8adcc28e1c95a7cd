package train

import (
	"github.com/handnet/handnet/handnet/runtime/torch"
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
	// Called every batch: each op frees its input (del true), so no scope
	// is allocated for the four intermediates.
	l := loss.MustDetach(false).MustTotype(gotch.Double, true).MustMulScalar(ts.FloatScalar(float64(n)), true)
	c := logits.MustArgmax([]int64{-1}, false, false).MustEqTensor(y, true).MustSum(gotch.Int64, true)
	if m.loss == nil {
		m.loss, m.correct = l, c
	} else {
		m.loss.MustAdd_(l)
		m.correct.MustAdd_(c)
		l.MustDrop()
		c.MustDrop()
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
