package model

import (
	"fmt"

	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// CAMMethod says how a class-activation map weighs the last block's
// activations A by the gradients G of the class's logit with respect to them.
type CAMMethod string

// The methods.
const (
	// GradCAMMethod is Grad-CAM (Selvaraju et al. 2017): each channel of A
	// weighted by the mean of its gradients, summed, through a ReLU.
	GradCAMMethod CAMMethod = "gradcam"
	// HiResCAMMethod is HiResCAM (Draelos & Carin 2020): A times G element
	// by element, summed over channels, through a ReLU. It is faithful to
	// heads that weigh every position on its own (the study CNN's flatten +
	// fully connected layers), where Grad-CAM's averaged gradients can
	// cancel: on a marked synthetic set, Grad-CAM of the study CNN gave an
	// empty map for 15 of the 21 marked photos it classified right, HiResCAM
	// for none (TestGradCAMFindsTheMark). After a global average pool and a
	// linear layer (ResNet-18) the two are the same map.
	HiResCAMMethod CAMMethod = "hirescam"
	// AutoCAM is HiResCAM for the study CNN and Grad-CAM for ResNet-18.
	AutoCAM CAMMethod = "auto"
)

// ParseCAMMethod reads auto (or ""), gradcam or hirescam.
func ParseCAMMethod(s string) (CAMMethod, error) {
	switch m := CAMMethod(s); m {
	case "", AutoCAM:
		return AutoCAM, nil
	case GradCAMMethod, HiResCAMMethod:
		return m, nil
	}
	return "", fmt.Errorf("method %q: want auto, gradcam or hirescam", s)
}

// CAM is a class-activation map of one image: where the network looked for
// a class.
type CAM struct {
	Method CAMMethod // gradcam or hirescam
	Class  int       // the class explained
	Probs  []float32 // softmax probabilities of the image
	W, H   int       // the model's input size
	Values []float32 // H×W, row-major, in [0, 1]
	// Raw is the map before upsampling and scaling: the last block's
	// resolution (h×w).
	RawW, RawH int
	Raw        []float32
}

// GradCAM explains the model's score for class on one normalised input
// [1,3,H,W] by the gradients of the class's logit with respect to the last
// convolutional block's activations A (see CAMMethod for how they weigh
// A); the map, upsampled bilinearly to the input (align_corners false) and
// scaled to [0, 1], is where the network looked. class < 0 explains the
// predicted class. The network runs in evaluation mode. Call it on a torch
// thread with grad mode on.
func GradCAM(m *Model, x *ts.Tensor, class int, method CAMMethod) (*CAM, error) {
	switch method {
	case "", AutoCAM:
		method = GradCAMMethod
		if m.Config.Arch == "cnn" {
			method = HiResCAMMethod
		}
	case GradCAMMethod, HiResCAMMethod:
	default:
		return nil, fmt.Errorf("grad-cam: method %q: want auto, gradcam or hirescam", method)
	}
	if dims := x.MustSize(); len(dims) != 4 || dims[0] != 1 {
		return nil, fmt.Errorf("grad-cam: input of shape %v, want [1,3,H,W]", dims)
	}
	s := torch.NewScope()
	defer s.Close()
	feat := s.T(m.Net.Features(s, x, false))
	// A leaf of its own: the map then works whatever is frozen.
	a := s.T(feat.MustDetach(false))
	a.MustRequiresGrad_(true)
	logits := s.T(m.Net.Head(s, a, false))
	probs := s.T(s.T(s.T(logits.MustDetach(false)).MustSoftmax(-1, gotch.Float, false)).MustTo(gotch.CPU, false))
	cam := &CAM{Method: method, Probs: probs.Vals().([]float32), W: int(x.MustSize()[3]), H: int(x.MustSize()[2])}
	if class < 0 {
		class = 0
		for j, p := range cam.Probs {
			if p > cam.Probs[class] {
				class = j
			}
		}
	}
	if class >= len(cam.Probs) {
		return nil, fmt.Errorf("grad-cam: class %d of %d", class, len(cam.Probs))
	}
	cam.Class = class
	score := s.T(s.T(logits.MustSelect(0, 0, false)).MustSelect(0, int64(class), false))
	grads, err := ts.RunBackward([]*ts.Tensor{score}, []*ts.Tensor{a}, false, false)
	if err != nil {
		return nil, fmt.Errorf("grad-cam: %w", torch.CleanError(err))
	}
	g := s.T(grads[0]) // [1,C,h,w]
	if method == GradCAMMethod {
		g = s.T(g.MustMeanDim([]int64{2, 3}, true, gotch.Float, false)) // [1,C,1,1]
	}
	raw := s.T(s.T(s.T(g.MustMul(a, false)).MustSumDimIntlist([]int64{1}, true, gotch.Float, false)).MustRelu(false)) // [1,1,h,w]
	raw = s.T(raw.MustDetach(false))
	up := s.T(raw.MustUpsampleBilinear2d([]int64{int64(cam.H), int64(cam.W)}, false, nil, nil, false))
	lo, hi := s.T(up.MustMin(false)), s.T(up.MustMax(false))
	eps := ts.FloatScalar(1e-12)
	defer eps.MustDrop()
	span := s.T(s.T(hi.MustSub(lo, false)).MustClampMin(eps, false))
	norm := s.T(s.T(s.T(up.MustSub(lo, false)).MustDiv(span, false)).MustTo(gotch.CPU, false))
	cam.Values = norm.Vals().([]float32)
	rs := raw.MustSize()
	cam.RawH, cam.RawW = int(rs[2]), int(rs[3])
	cam.Raw = s.T(raw.MustTo(gotch.CPU, false)).Vals().([]float32)
	return cam, nil
}
