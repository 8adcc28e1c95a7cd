package handnet

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
)

// Module is handnet's Go module path.
const Module = "github.com/handnet/handnet"

// VersionInfo describes this build of handnet: what `handnet version` and
// `handnet doctor` print first.
type VersionInfo struct {
	// Handnet is the module version (v1.2.3, or a pseudo-version stamped
	// from the checkout's commit), else the VCS revision; "+dirty" when
	// built from a tree with uncommitted changes.
	Handnet string `json:"handnet"`
	// Replaced names the folder a replace directive built handnet from,
	// when an embedding program's go.mod or go.work has one.
	Replaced       string `json:"replaced,omitempty"`
	Go             string `json:"go"`
	Libtorch       string `json:"libtorch"`        // version, e.g. 1.13.1
	LibtorchSource string `json:"libtorch_source"` // system, pytorch or LIBTORCH
	LibtorchRoot   string `json:"libtorch_root"`
	CUDA           string `json:"cuda"` // CUDA version of the libtorch build, "" on a CPU build
	// CuDNN says whether cuDNN is available to a CUDA build (false on the CPU).
	CuDNN  bool            `json:"cudnn"`
	Gotch  string          `json:"gotch"`
	Native native.Features `json:"native"`
}

// Version describes this build (see VersionInfo). It asks nothing of the
// devices: see `handnet doctor` for that.
func Version() VersionInfo {
	b := torch.BuildInfo()
	v := VersionInfo{
		Go: runtime.Version(), Libtorch: b.Libtorch.Version, LibtorchSource: b.Libtorch.Source,
		LibtorchRoot: b.Libtorch.Root, Gotch: b.Gotch, Native: native.BuildFeatures(),
	}
	if b.Libtorch.CUDA {
		v.CUDA = b.Libtorch.CUDAVersion
		if v.CUDA == "" {
			v.CUDA = "yes (version not recorded)"
		}
		v.CuDNN = gotch.CUDA.CudnnIsAvailable()
	}
	v.Handnet, v.Replaced = moduleVersion()
	return v
}

// moduleVersion reads handnet's version from the build information Go
// records in every binary: the main module's when this is handnet's own
// binary, the dependency's when handnet is embedded.
func moduleVersion() (version, replaced string) {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown (no build information)", ""
	}
	if bi.Main.Path == Module {
		version = bi.Main.Version
	} else {
		for _, d := range bi.Deps {
			if d.Path == Module {
				version = d.Version
				if d.Replace != nil {
					replaced = d.Replace.Path
					if d.Replace.Version != "" {
						replaced += "@" + d.Replace.Version
					}
				}
			}
		}
	}
	if version != "" && version != "(devel)" {
		return version, replaced
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel (no VCS information)", replaced
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "+dirty"
	}
	return "devel " + rev, replaced
}

// Short is the handnet version alone, as one word (spaces become '-'):
// what image tags and file names use.
func (v VersionInfo) Short() string {
	return strings.ReplaceAll(v.Handnet, " ", "-")
}

// String is the head `handnet version` prints, one fact a line.
func (v VersionInfo) String() string {
	var s strings.Builder
	h := v.Handnet
	if v.Replaced != "" {
		h += " (replaced by " + v.Replaced + ")"
	}
	cuda := "none (CPU build)"
	if v.CUDA != "" {
		cuda = v.CUDA
	}
	fmt.Fprintf(&s, "handnet       %s\n", h)
	fmt.Fprintf(&s, "go            %s %s/%s\n", v.Go, runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&s, "libtorch      %s (%s, %s)\n", v.Libtorch, v.LibtorchSource, v.LibtorchRoot)
	fmt.Fprintf(&s, "CUDA          %s\n", cuda)
	if v.CUDA != "" {
		cudnn := "not available"
		if v.CuDNN {
			cudnn = "available"
		}
		fmt.Fprintf(&s, "cuDNN         %s\n", cudnn)
	}
	fmt.Fprintf(&s, "gotch         %s\n", v.Gotch)
	fmt.Fprintf(&s, "native        %s\n", v.Native)
	return s.String()
}
