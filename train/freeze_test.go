package train

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// TestFreezeScenarios fine-tunes ResNet-18 briefly under each freeze
// scenario: frozen weights (and, with FreezeBN, frozen BatchNorm
// statistics) stay bit-identical; trainable ones change.
func TestFreezeScenarios(t *testing.T) {
	ds, c, a := synthetic(t)
	labels := vision.Classes8.Labels(ds.Records)
	th := torch.NewThread(0)
	defer th.Close()
	for _, sc := range []struct {
		freeze   string
		freezeBN bool
	}{{model.FreezeFC, true}, {model.FreezeLayer4, true}, {model.FreezeNone, false}} {
		t.Run(sc.freeze, func(t *testing.T) {
			err := th.Do(func() error {
				torch.ManualSeed(1)
				m, err := model.New(model.Config{Arch: "resnet18", Freeze: sc.freeze, FreezeBN: sc.freezeBN,
					Classes: vision.Classes8.Classes(), Width: vision.Width, Height: vision.Height}, gotch.CPU)
				if err != nil {
					return err
				}
				trainL, err := vision.NewLoader(c, a.Indices(vision.Train)[:16], labels, nil, vision.LoaderOptions{BatchSize: 8, Shuffle: true, Device: gotch.CPU})
				if err != nil {
					return err
				}
				valL, err := vision.NewLoader(c, a.Indices(vision.Val)[:8], labels, nil, vision.LoaderOptions{BatchSize: 8, Device: gotch.CPU})
				if err != nil {
					return err
				}
				before := map[string]*ts.Tensor{}
				for _, nt := range m.Named() {
					before[nt.Name] = nt.Tensor.MustDetach(false).MustZerosLike(false)
					before[nt.Name].Copy_(nt.Tensor)
				}
				params := m.Trainable()
				for _, p := range params {
					if !model.Trains(sc.freeze, p.Name) {
						return fmt.Errorf("frozen %s is trainable", p.Name)
					}
				}
				cfg := DefaultConfig()
				cfg.Epochs, cfg.BatchSize, cfg.LR = 1, 8, 0.01
				tr := &Trainer{Model: m, Train: trainL, Val: valL, Config: cfg, Dir: t.TempDir()}
				if _, err := tr.Run(context.Background(), false); err != nil {
					return err
				}
				changed, same := 0, 0
				for _, nt := range m.Named() {
					equal := nt.Tensor.MustEqual(before[nt.Name], false)
					isStat := strings.HasSuffix(nt.Name, "running_mean") || strings.HasSuffix(nt.Name, "running_var")
					trains := model.Trains(sc.freeze, nt.Name)
					switch {
					case isStat && !trains && sc.freezeBN && !equal:
						return fmt.Errorf("frozen BatchNorm statistic %s changed", nt.Name)
					case isStat:
					case !trains && !equal:
						return fmt.Errorf("frozen %s changed", nt.Name)
					case trains && equal:
						return fmt.Errorf("trainable %s did not change", nt.Name)
					case trains:
						changed++
					default:
						same++
					}
				}
				t.Logf("freeze %s: %d trainable tensors changed, %d frozen ones bit-identical", sc.freeze, changed, same)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}
