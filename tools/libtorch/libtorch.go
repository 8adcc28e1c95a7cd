// Package libtorch finds a libtorch installation and describes how to compile
// and link C++ code against it.
//
// Three sources are tried, first match wins (see Discover):
//
//   - LIBTORCH=/dir: the official libtorch archive layout (include/, lib/,
//     build-version);
//   - LIBTORCH_USE_PYTORCH=1: the libtorch inside python3's torch package;
//   - the system libtorch from Debian's libtorch-dev.
package libtorch

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// Source names where an Install was found.
type Source string

// The sources Discover knows, in the order it tries them.
const (
	SourceDir     Source = "LIBTORCH"
	SourcePyTorch Source = "pytorch"
	SourceSystem  Source = "system"
)

// Install describes one libtorch installation.
type Install struct {
	Source      Source   `json:"source"`
	Root        string   `json:"root"`         // the folder a user would name
	IncludeDirs []string `json:"include_dirs"` // extra -I folders, in order
	LibDir      string   `json:"lib_dir"`
	Version     string   `json:"version"` // e.g. "2.1.0+cu121" or "1.13.1"
	CXX11ABI    bool     `json:"cxx11_abi"`
	CUDA        bool     `json:"cuda"`                   // libtorch_cuda is present
	CUDAVersion string   `json:"cuda_version,omitempty"` // when the source says
	System      bool     `json:"system"`                 // headers and libs on the default compiler paths
	Std         string   `json:"std,omitempty"`          // C++ standard when not c++17
}

// ErrNotFound is returned (wrapped) when no source has a usable libtorch.
var ErrNotFound = errors.New("libtorch not found")

// Env reads an environment variable; os.Getenv in production, a map in tests.
type Env func(string) string

// Discover returns the first libtorch found: LIBTORCH, then
// LIBTORCH_USE_PYTORCH, then the system one under sysroot ("/" normally).
func Discover(env Env, sysroot string) (Install, error) {
	if dir := env("LIBTORCH"); dir != "" {
		return FromDir(dir, env("LIBTORCH_CXX11_ABI"))
	}
	if v := env("LIBTORCH_USE_PYTORCH"); v != "" && v != "0" {
		py := env("LIBTORCH_PYTHON")
		if py == "" {
			py = "python3"
		}
		return FromPython(py)
	}
	return FromSystem(sysroot)
}

// FromDir reads the official libtorch archive layout: dir/include,
// dir/lib/libtorch.so and dir/build-version. abiOverride ("0" or "1") wins
// over the ABI read from lib/libc10.so's symbols.
func FromDir(dir, abiOverride string) (Install, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return Install{}, err
	}
	in := Install{Source: SourceDir, Root: abs, LibDir: filepath.Join(abs, "lib"),
		IncludeDirs: []string{filepath.Join(abs, "include"), filepath.Join(abs, "include", "torch", "csrc", "api", "include")}}
	if err := checkLayout(in, "LIBTORCH="+dir); err != nil {
		return Install{}, err
	}
	if b, err := os.ReadFile(filepath.Join(abs, "build-version")); err == nil {
		in.Version = strings.TrimSpace(string(b))
	} else if in.Version, err = versionFromHeaders(in.IncludeDirs[1]); err != nil {
		return Install{}, fmt.Errorf("LIBTORCH=%s: no build-version file and %w", dir, err)
	}
	switch abiOverride {
	case "0", "1":
		in.CXX11ABI = abiOverride == "1"
	case "":
		if in.CXX11ABI, err = ABIFromLibrary(filepath.Join(in.LibDir, "libc10.so")); err != nil {
			return Install{}, fmt.Errorf("LIBTORCH=%s: %w (set LIBTORCH_CXX11_ABI=0 or 1 to say which)", dir, err)
		}
	default:
		return Install{}, fmt.Errorf("LIBTORCH_CXX11_ABI=%q: want 0 or 1", abiOverride)
	}
	in.CUDA = exists(filepath.Join(in.LibDir, "libtorch_cuda.so"))
	return in, nil
}

// PythonProbe is the script FromPython runs; it prints one JSON object that
// ParsePython reads.
const PythonProbe = `import json, os, torch
d = os.path.dirname(torch.__file__)
print(json.dumps({"torch_dir": d, "version": torch.__version__,
  "cxx11_abi": bool(torch._C._GLIBCXX_USE_CXX11_ABI), "cuda": torch.version.cuda}))`

// FromPython asks python's torch package where its libtorch is.
func FromPython(python string) (Install, error) {
	var stderr bytes.Buffer
	cmd := exec.Command(python, "-c", PythonProbe)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return Install{}, fmt.Errorf("LIBTORCH_USE_PYTORCH: %s cannot import torch: %v: %s (install PyTorch for it, or set LIBTORCH_PYTHON to an interpreter that has it)",
			python, err, strings.TrimSpace(stderr.String()))
	}
	in, err := ParsePython(out)
	if err != nil {
		return Install{}, fmt.Errorf("LIBTORCH_USE_PYTORCH: %s: %w", python, err)
	}
	if err := checkLayout(in, "LIBTORCH_USE_PYTORCH ("+in.Root+")"); err != nil {
		return Install{}, err
	}
	in.CUDA = in.CUDA || exists(filepath.Join(in.LibDir, "libtorch_cuda.so"))
	return in, nil
}

// ParsePython reads PythonProbe's output. It checks nothing on disk.
func ParsePython(out []byte) (Install, error) {
	var p struct {
		TorchDir string  `json:"torch_dir"`
		Version  string  `json:"version"`
		ABI      *bool   `json:"cxx11_abi"`
		CUDA     *string `json:"cuda"`
	}
	// The probe prints one line; anything torch printed before it is skipped.
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &p); err != nil {
		return Install{}, fmt.Errorf("unexpected probe output %q: %v", lines[len(lines)-1], err)
	}
	if p.TorchDir == "" || p.Version == "" || p.ABI == nil {
		return Install{}, fmt.Errorf("probe output %q lacks torch_dir, version or cxx11_abi", lines[len(lines)-1])
	}
	in := Install{Source: SourcePyTorch, Root: p.TorchDir, LibDir: filepath.Join(p.TorchDir, "lib"),
		IncludeDirs: []string{filepath.Join(p.TorchDir, "include"), filepath.Join(p.TorchDir, "include", "torch", "csrc", "api", "include")},
		Version:     p.Version, CXX11ABI: *p.ABI}
	if p.CUDA != nil && *p.CUDA != "" {
		in.CUDA, in.CUDAVersion = true, *p.CUDA
	}
	return in, nil
}

// Debian's multiarch folders for the system libtorch.
const (
	debianLibDir     = "usr/lib/x86_64-linux-gnu"
	debianAPIInclude = "usr/include/torch/csrc/api/include"
)

// FromSystem finds Debian's libtorch-dev under sysroot.
func FromSystem(sysroot string) (Install, error) {
	in := Install{Source: SourceSystem, Root: filepath.Join(sysroot, "usr"), System: true,
		LibDir:      filepath.Join(sysroot, debianLibDir),
		IncludeDirs: []string{filepath.Join(sysroot, debianAPIInclude)}}
	if !exists(filepath.Join(in.LibDir, "libtorch.so")) || !exists(filepath.Join(in.IncludeDirs[0], "torch", "version.h")) {
		return Install{}, fmt.Errorf("%w: no LIBTORCH, no LIBTORCH_USE_PYTORCH, and no system libtorch (%s, %s)",
			ErrNotFound, filepath.Join(in.LibDir, "libtorch.so"), filepath.Join(in.IncludeDirs[0], "torch", "version.h"))
	}
	var err error
	if in.Version, err = versionFromHeaders(in.IncludeDirs[0]); err != nil {
		return Install{}, err
	}
	if sysroot == "/" {
		// Debian's version.h says 1.13.0 for its 1.13.1 package; dpkg knows.
		if out, err := exec.Command("dpkg-query", "-W", "-f=${Version}", "libtorch-dev").Output(); err == nil {
			in.Version = DebianVersion(string(out), in.Version)
		}
	}
	// Debian builds with the default (C++11) ABI of its g++.
	in.CXX11ABI = true
	if abi, err := ABIFromLibrary(filepath.Join(in.LibDir, "libc10.so")); err == nil {
		in.CXX11ABI = abi
	}
	in.CUDA = exists(filepath.Join(in.LibDir, "libtorch_cuda.so"))
	return in, nil
}

// DebianVersion turns a Debian package version ("1.13.1+dfsg-4") into the
// upstream one ("1.13.1"); fallback is returned when there is none.
func DebianVersion(pkg, fallback string) string {
	v := strings.TrimSpace(pkg)
	if i := strings.IndexByte(v, ':'); i >= 0 {
		v = v[i+1:]
	}
	if i := strings.IndexAny(v, "+-~"); i >= 0 {
		v = v[:i]
	}
	if v == "" {
		return fallback
	}
	return v
}

func checkLayout(in Install, what string) error {
	for _, f := range []string{filepath.Join(in.LibDir, "libtorch.so"), filepath.Join(in.IncludeDirs[1], "torch", "torch.h")} {
		if !exists(f) {
			return fmt.Errorf("%s: %s is missing: not a libtorch folder (want include/ and lib/ as in the official archive)", what, f)
		}
	}
	return nil
}

var versionRe = regexp.MustCompile(`(?m)^#define TORCH_VERSION_(MAJOR|MINOR|PATCH) (\d+)`)

// ParseVersionHeader reads torch/version.h and returns "MAJOR.MINOR.PATCH".
func ParseVersionHeader(b []byte) (string, error) {
	v := map[string]string{}
	for _, m := range versionRe.FindAllSubmatch(b, -1) {
		v[string(m[1])] = string(m[2])
	}
	if v["MAJOR"] == "" || v["MINOR"] == "" || v["PATCH"] == "" {
		return "", errors.New("torch/version.h has no TORCH_VERSION_MAJOR/MINOR/PATCH")
	}
	return v["MAJOR"] + "." + v["MINOR"] + "." + v["PATCH"], nil
}

func versionFromHeaders(apiInclude string) (string, error) {
	f := filepath.Join(apiInclude, "torch", "version.h")
	b, err := os.ReadFile(f)
	if err != nil {
		return "", fmt.Errorf("cannot read libtorch version: %w", err)
	}
	v, err := ParseVersionHeader(b)
	if err != nil {
		return "", fmt.Errorf("%s: %w", f, err)
	}
	return v, nil
}

// ABIFromLibrary tells whether a C++ library (libc10.so) was built with the
// C++11 std::string ABI, from the names of its dynamic symbols.
func ABIFromLibrary(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, fmt.Errorf("cannot read symbols of %s: %w", path, err)
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		return false, fmt.Errorf("cannot read symbols of %s: %w", path, err)
	}
	names := make([]string, len(syms))
	for i, s := range syms {
		names[i] = s.Name
	}
	abi, ok := ABIFromSymbols(names)
	if !ok {
		return false, fmt.Errorf("%s names no std::string in its symbols: cannot tell its C++ ABI", path)
	}
	return abi, nil
}

// ABIFromSymbols decides the C++ ABI from mangled symbol names: the C++11
// ABI mangles std::string as std::__cxx11::basic_string; the old one does not.
// ok is false when no symbol mentions std::string at all.
func ABIFromSymbols(names []string) (cxx11, ok bool) {
	old := false
	for _, n := range names {
		if strings.Contains(n, "St7__cxx1112basic_string") || strings.Contains(n, "NSt7__cxx11") {
			return true, true
		}
		if strings.Contains(n, "Ss") || strings.Contains(n, "SbIcSt11char_traitsIcESaIcEE") {
			old = true
		}
	}
	return false, old
}

func exists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// CgoFlags returns the cgo preprocessor, C++ and linker flags for this
// install. They avoid anything cgo's flag allow-list rejects, so they can sit
// in #cgo lines.
func (in Install) CgoFlags() (cppflags, cxxflags, ldflags []string) {
	for _, d := range in.IncludeDirs {
		cppflags = append(cppflags, "-I"+d)
	}
	abi := "0"
	if in.CXX11ABI {
		abi = "1"
	}
	cppflags = append(cppflags, "-D_GLIBCXX_USE_CXX11_ABI="+abi)
	cxxflags = []string{"-std=" + in.CXXStandard()}
	if !in.System {
		ldflags = append(ldflags, "-L"+in.LibDir, "-Wl,-rpath,"+in.LibDir)
	}
	// --no-as-needed keeps libtorch_cuda loaded although nothing calls it by
	// name: loading it is what registers the CUDA backend.
	ldflags = append(ldflags, "-Wl,--no-as-needed", "-ltorch", "-ltorch_cpu", "-lc10")
	if in.CUDA {
		ldflags = append(ldflags, "-ltorch_cuda", "-lc10_cuda")
	}
	ldflags = append(ldflags, "-Wl,--as-needed", "-lstdc++")
	return cppflags, cxxflags, ldflags
}

// CXXStandard is the C++ standard to compile against this libtorch with:
// C++17 (what libtorch 1.13 to 2.x ask for) unless Std says otherwise.
func (in Install) CXXStandard() string {
	if in.Std != "" {
		return in.Std
	}
	return "c++17"
}
