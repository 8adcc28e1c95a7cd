package dist

import (
	"bytes"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/vision"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// gradLike returns zero tensors shaped like arch's trainable parameters.
func gradLike(arch string) ([]*ts.Tensor, int64, error) {
	cfg := model.Config{Arch: arch, Dropout: "none", Classes: vision.Classes8.Classes(), Width: vision.Width, Height: vision.Height}
	m, err := model.New(cfg, gotch.CPU)
	if err != nil {
		return nil, 0, err
	}
	defer m.Close()
	var out []*ts.Tensor
	var size int64
	for _, p := range m.Trainable() {
		out = append(out, p.Tensor.MustZerosLike(false))
		size += int64(p.Tensor.Numel()) * 4
	}
	return out, size, nil
}

func init() {
	rankPrograms["allreduce"] = func(g *Group) error {
		n, _ := strconv.Atoi(os.Getenv("HANDNET_BENCH_N"))
		grads, _, err := gradLike(os.Getenv("HANDNET_BENCH_ARCH"))
		if err != nil {
			return err
		}
		for range n + 1 {
			if err := g.AllReduceMean(grads, "the benchmark all-reduce"); err != nil {
				return err
			}
		}
		return nil
	}
}

// BenchmarkAllReduce times the Gloo all-reduce (mean, 25 MiB buckets) of the
// gradients of the study's CNN and of ResNet-18 between two processes on
// this machine:
//
//	go test -run '^$' -bench AllReduce ./handnet/dist
func BenchmarkAllReduce(b *testing.B) {
	if !native.BuildFeatures().Gloo {
		b.Skip("built without gloo")
	}
	for _, arch := range []string{"cnn", "resnet18"} {
		b.Run(arch, func(b *testing.B) {
			port, err := freePort()
			if err != nil {
				b.Fatal(err)
			}
			peer := exec.Command(os.Args[0], "-test.run=^$")
			e1 := Env{Rank: 1, WorldSize: 2, LocalRank: 1, LocalWorldSize: 2, MasterAddr: "127.0.0.1", MasterPort: port}
			peer.Env = append(append(os.Environ(), e1.Variables()...), "HANDNET_DIST_TEST=allreduce", "HANDNET_DIST_TEST_TIMEOUT=60s",
				"HANDNET_BENCH_N="+strconv.Itoa(b.N), "HANDNET_BENCH_ARCH="+arch, "OMP_NUM_THREADS=1")
			var out bytes.Buffer
			peer.Stdout, peer.Stderr = &out, &out
			if err := peer.Start(); err != nil {
				b.Fatal(err)
			}
			defer peer.Wait()
			th := torch.NewThread(1)
			defer th.Close()
			e0 := e1
			e0.Rank, e0.LocalRank = 0, 0
			g, err := Join(e0, Options{Device: gotch.CPU, Timeout: time.Minute})
			if err != nil {
				b.Fatal(err)
			}
			defer g.Close()
			var size int64
			err = th.Do(func() error {
				grads, n, err := gradLike(arch)
				if err != nil {
					return err
				}
				size = n
				if err := g.AllReduceMean(grads, "warm-up"); err != nil {
					return err
				}
				b.ResetTimer()
				for range b.N {
					if err := g.AllReduceMean(grads, "the benchmark all-reduce"); err != nil {
						return err
					}
				}
				b.StopTimer()
				return nil
			})
			if err != nil {
				b.Fatalf("%v\n%s", err, out.String())
			}
			b.SetBytes(size)
			b.ReportMetric(float64(size)/1e6, "MB-grads")
		})
	}
}
