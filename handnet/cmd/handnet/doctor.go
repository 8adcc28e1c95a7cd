package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/handnet/handnet/handnet"
	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/spf13/pflag"
	"github.com/sugarme/gotch"
)

func init() {
	register(&command{
		name:    "doctor",
		usage:   "[--device auto|cpu|cuda|cuda:N] [--threads N] [--json]",
		summary: "Check the libtorch build: version, ABI, CUDA, threads; run a tiny training job on the device.\nExits 0 when torch works on the chosen device, 1 otherwise.",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			device := fs.String("device", "auto", "device to check: auto, cpu, cuda or cuda:N")
			threads := fs.Int("threads", 0, "intra-op threads (0: all usable CPUs)")
			asJSON := fs.Bool("json", false, "print the report as JSON")
			return func(args []string) error {
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				return doctor(*device, *threads, *asJSON)
			}
		},
	})
}

type doctorReport struct {
	Version         handnet.VersionInfo `json:"version"`
	LibtorchRoot    string              `json:"libtorch_root"`
	LibtorchSource  string              `json:"libtorch_source"`
	LibtorchVersion string              `json:"libtorch_version"`
	CXX11ABI        bool                `json:"cxx11_abi"`
	CUDABuild       bool                `json:"cuda_build"`
	CUDAVersion     string              `json:"cuda_version,omitempty"`
	CUDAAvailable   bool                `json:"cuda_available"`
	CUDADevices     int                 `json:"cuda_devices"`
	CuDNN           bool                `json:"cudnn"`
	UsableCPUs      int                 `json:"usable_cpus"`
	Threads         int                 `json:"threads"`
	Gotch           string              `json:"gotch"`
	ReplacedOps     int                 `json:"replaced_ops"`
	Native          native.Features     `json:"native"`
	MallocTuned     bool                `json:"malloc_tuned"`
	Device          string              `json:"device"`
	Check           string              `json:"check"`
	CheckOK         bool                `json:"check_ok"`
	Loss            []float64           `json:"loss,omitempty"`
}

func doctor(deviceName string, threads int, asJSON bool) error {
	b := torch.BuildInfo()
	th := torch.NewThread(threads)
	defer th.Close()
	r := doctorReport{
		LibtorchRoot: b.Libtorch.Root, LibtorchSource: b.Libtorch.Source, LibtorchVersion: b.Libtorch.Version,
		CXX11ABI: b.Libtorch.CXX11ABI, CUDABuild: b.Libtorch.CUDA, CUDAVersion: b.Libtorch.CUDAVersion,
		UsableCPUs: torch.UsableCPUs(), Threads: th.Threads(), Gotch: b.Gotch, ReplacedOps: len(b.ReplacedOps),
		Native: native.BuildFeatures(), MallocTuned: native.MallocTuned(), Version: handnet.Version(),
	}
	_ = th.Do(func() error {
		r.CUDAAvailable = gotch.CUDA.IsAvailable()
		if r.CUDAAvailable {
			r.CUDADevices = int(gotch.CUDA.DeviceCount())
			r.CuDNN = gotch.CUDA.CudnnIsAvailable()
		}
		return nil
	})
	var checkErr error
	dev, err := torch.ParseDevice(deviceName)
	if err != nil {
		checkErr = err
		r.Device = deviceName
		r.Check = err.Error()
	} else {
		r.Device = torch.DeviceName(dev)
		var res torch.SelfTestResult
		checkErr = th.Do(func() (err error) { res, err = torch.SelfTest(dev, 20); return err })
		switch {
		case checkErr != nil:
			r.Check = checkErr.Error()
		case !(res.LastLoss < res.FirstLoss):
			checkErr = fmt.Errorf("tiny training job on %s did not learn: loss %.4f -> %.4f", r.Device, res.FirstLoss, res.LastLoss)
			r.Check = checkErr.Error()
		default:
			r.CheckOK = true
			r.Loss = []float64{res.FirstLoss, res.LastLoss}
			r.Check = fmt.Sprintf("ok: tiny conv net trained %d SGD steps on %s, loss %.3f -> %.3f, %v",
				res.Steps, r.Device, res.FirstLoss, res.LastLoss, res.Elapsed.Round(time.Millisecond))
		}
	}
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(r)
	} else {
		yes := func(v bool) string {
			if v {
				return "yes"
			}
			return "no"
		}
		cuda := yes(r.CUDABuild)
		if r.CUDAVersion != "" {
			cuda += " (CUDA " + r.CUDAVersion + ")"
		}
		fmt.Print(r.Version)
		fmt.Printf("C++11 ABI     %s\n", yes(r.CXX11ABI))
		fmt.Printf("CUDA build    %s\n", cuda)
		fmt.Printf("CUDA devices  %d\n", r.CUDADevices)
		fmt.Printf("cuDNN         %s\n", yes(r.CuDNN))
		fmt.Printf("threads       %d intra-op (%d usable CPUs)\n", r.Threads, r.UsableCPUs)
		if r.MallocTuned {
			fmt.Printf("malloc        tuned by handnet: blocks up to 32 MiB from the heap, 256 MiB of freed memory kept, one arena\n")
		} else {
			fmt.Printf("malloc        glibc's own thresholds (GLIBC_TUNABLES or MALLOC_*_THRESHOLD_ is set)\n")
		}
		fmt.Printf("replaced ops  %d gotch wrappers (not compilable against this libtorch)\n", r.ReplacedOps)
		fmt.Printf("device        %s\n", r.Device)
		fmt.Printf("check         %s\n", r.Check)
	}
	if checkErr != nil {
		return fmt.Errorf("torch does not work on %s: %w", deviceName, checkErr)
	}
	return nil
}
