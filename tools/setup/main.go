// Command setup finds libtorch, prepares a build copy of gotch configured for
// it, and writes the go.work that makes `go build ./...` use that copy.
//
// It is what `make setup` runs (as `GOWORK=off go run ./tools/setup`). A
// second run with the same libtorch, compiler and gotch finds its stamp and
// takes seconds. See README.md for the libtorch sources it knows.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/handnet/handnet/handnet/runtime/fileio"
	"github.com/handnet/handnet/tools/libtorch"
)

const (
	gotchModule  = "github.com/sugarme/gotch"
	gotchVersion = "v0.9.1"
	// formatVersion changes whenever what this program writes changes, so
	// that older prepared copies are rebuilt.
	formatVersion = "10"
)

// Debian packages the project needs: libtorch (when no other is named) and
// libjpeg-turbo for the image decoder.
var (
	torchPackages = []string{"libtorch-dev"}
	jpegPackages  = []string{"libturbojpeg0-dev"}
)

func main() {
	work := flag.String("work", "go.work", "workspace file to write, in the module whose root this is run from")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, `Usage: go run github.com/handnet/handnet/tools/setup [flags]

Run from the root of a Go module (this checkout, or a module of yours that
requires github.com/handnet/handnet). It finds libtorch (LIBTORCH=/dir,
LIBTORCH_USE_PYTORCH=1, or Debian's libtorch-dev, installed when missing),
prepares gotch %s and handnet's native layer for it in the user cache
(HANDNET_CACHE, default %s) and writes -work, after which plain
go build / go run / go test use them. A second run with the same libtorch
takes a second.

Flags:
`, gotchVersion, defaultCacheHint())
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "setup: unexpected arguments %q\n", flag.Args())
		os.Exit(2)
	}
	if err := run(*work); err != nil {
		fmt.Fprintln(os.Stderr, "setup:", err)
		os.Exit(1)
	}
}

// Stamp is what a prepared copy was made from; it is saved next to the copy.
type Stamp struct {
	Key          string           `json:"key"`
	Libtorch     libtorch.Install `json:"libtorch"`
	Gotch        string           `json:"gotch"`
	Compiler     string           `json:"compiler"`
	ReplacedOps  []string         `json:"replaced_ops"`
	PreparedAt   time.Time        `json:"prepared_at"`
	SetupVersion string           `json:"setup_version"`
}

// handnetModule is this project's module path: run from its own checkout,
// setup writes the native layer's flags into handnet/runtime/native; run from any
// other module it prepares a copy of the handnet module it requires.
const handnetModule = "github.com/handnet/handnet"

func run(workFile string) error {
	start := time.Now()
	mod, goLine, err := readGoMod("go.mod")
	if err != nil {
		return err
	}
	if err := ensurePackages("/usr/include/turbojpeg.h", jpegPackages); err != nil {
		return err
	}
	in, err := libtorch.Discover(os.Getenv, "/")
	if errors.Is(err, libtorch.ErrNotFound) {
		if err := ensurePackages("/usr/lib/x86_64-linux-gnu/libtorch.so", torchPackages); err != nil {
			return err
		}
		in, err = libtorch.Discover(os.Getenv, "/")
	}
	if err != nil {
		return err
	}
	cxx := os.Getenv("CXX")
	if cxx == "" {
		cxx = "g++"
	}
	compiler, err := exec.Command(cxx, "-dumpfullversion").Output()
	if err != nil {
		return fmt.Errorf("no C++ compiler (%s): %v; install g++ (apt-get install g++)", cxx, err)
	}
	cache, err := cacheDir()
	if err != nil {
		return err
	}
	gotchDir, err := moduleDir(gotchModule + "@" + gotchVersion)
	if err != nil {
		return err
	}
	key := stampKey(in, strings.TrimSpace(string(compiler)), gotchDir)
	dest := filepath.Join(cache, "gotch-"+gotchVersion+"-"+key[:12])
	stampFile := filepath.Join(dest, "handnet-setup.json")
	var st Stamp
	if b, err := os.ReadFile(stampFile); err == nil && json.Unmarshal(b, &st) == nil && st.Key == key {
		fmt.Printf("setup: libtorch %s (%s, %s): gotch %s already prepared in %s\n", in.Version, in.Source, in.Root, gotchVersion, dest)
	} else {
		fmt.Printf("setup: preparing gotch %s for libtorch %s (%s, %s, C++11 ABI %v, CUDA %v)\n",
			gotchVersion, in.Version, in.Source, in.Root, in.CXX11ABI, in.CUDA)
		st, err = prepare(in, cxx, gotchDir, dest, key, strings.TrimSpace(string(compiler)))
		if err != nil {
			return err
		}
		fmt.Printf("setup: wrote gotch %s for libtorch %s to %s (%d wrappers replaced, listed in %s)\n",
			gotchVersion, in.Version, dest, len(st.ReplacedOps), filepath.Join(dest, "replaced-ops.txt"))
	}
	plan, planKey, err := planNative(in, cxx, strings.TrimSpace(string(compiler)), cache)
	if err != nil {
		return fmt.Errorf("native layer: %w", err)
	}
	fmt.Printf("setup: native layer features: %s\n", strings.Join(append([]string{"store"}, plan.Have...), ", "))

	replaces := []string{fmt.Sprintf("%s %s => %s", gotchModule, gotchVersion, dest)}
	if mod == handnetModule {
		// This checkout: handnet is the main module, so its native package
		// gets its flags in place (flags.go, git-ignored).
		path, changed, err := writeFlagsGo(".", plan, in)
		if err != nil {
			return fmt.Errorf("native layer: %w", err)
		}
		if changed {
			fmt.Printf("setup: wrote %s (cgo flags of the native layer)\n", path)
		}
	} else {
		dep, err := requiredHandnet()
		if err != nil {
			return err
		}
		dir, err := prepareHandnet(dep, plan, planKey, in, cache)
		if err != nil {
			return err
		}
		replaces = append(replaces, fmt.Sprintf("%s %s => %s", handnetModule, dep.Version, dir))
	}
	workText := fmt.Sprintf("// Generated by handnet's tools/setup for libtorch %s (%s): builds against the\n"+
		"// copies prepared for it. Run setup again after changing libtorch or handnet's version.\ngo %s\n\nuse .\n\n",
		in.Version, in.Root, goLine)
	for _, r := range replaces {
		workText += "replace " + r + "\n"
	}
	if old, _ := os.ReadFile(workFile); string(old) != workText {
		if err := fileio.WriteAtomic(workFile, []byte(workText)); err != nil {
			return err
		}
		fmt.Printf("setup: wrote %s:\n    %s\n", mustAbs(workFile), strings.Join(replaces, "\n    "))
	} else {
		fmt.Printf("setup: %s is up to date\n", mustAbs(workFile))
	}
	fmt.Printf("setup: done in %.1fs; go build, go run and go test in %s now use libtorch %s\n",
		time.Since(start).Seconds(), filepath.Dir(mustAbs(workFile)), in.Version)
	return nil
}

// cacheDir is where prepared copies live: HANDNET_CACHE, or handnet/ in the
// user cache directory (~/.cache/handnet). Copies are named by a key of what
// they were made from, so every module on the machine shares them, and so
// does Go's build cache (the compiled libtch is found again by its folder).
func cacheDir() (string, error) {
	d := os.Getenv("HANDNET_CACHE")
	if d == "" {
		uc, err := os.UserCacheDir()
		if err != nil {
			return "", fmt.Errorf("no user cache directory (%v): set HANDNET_CACHE to a folder for handnet's prepared copies", err)
		}
		d = filepath.Join(uc, "handnet")
	}
	d, err := filepath.Abs(d)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		return "", fmt.Errorf("cache folder: %w (set HANDNET_CACHE to a writable folder)", err)
	}
	return d, nil
}

func defaultCacheHint() string {
	if uc, err := os.UserCacheDir(); err == nil {
		return filepath.Join(uc, "handnet")
	}
	return "$HOME/.cache/handnet"
}

// readGoMod returns the module path and go directive of a go.mod.
func readGoMod(path string) (module, goLine string, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			wd, _ := os.Getwd()
			return "", "", fmt.Errorf("no go.mod in %s: run setup from the root of your Go module (go mod init, then go get %s@latest)", wd, handnetModule)
		}
		return "", "", err
	}
	goLine = "1.26"
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if v, ok := strings.CutPrefix(l, "module "); ok {
			module = strings.Trim(strings.TrimSpace(v), `"`)
		}
		if v, ok := strings.CutPrefix(l, "go "); ok {
			goLine = strings.TrimSpace(v)
		}
	}
	if module == "" {
		return "", "", fmt.Errorf("%s names no module", path)
	}
	return module, goLine, nil
}

// ensurePackages installs Debian packages when marker is missing: as root
// with apt-get, otherwise it says which command to run.
func ensurePackages(marker string, pkgs []string) error {
	if _, err := os.Stat(marker); err == nil {
		return nil
	}
	cmdline := "apt-get install -y " + strings.Join(pkgs, " ")
	if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
		return fmt.Errorf("%s is missing; install it with:\n    sudo apt-get update && sudo %s\n(or point LIBTORCH / LIBTORCH_USE_PYTORCH at another libtorch, see README.md)", marker, cmdline)
	}
	fmt.Printf("setup: %s is missing; running apt-get install %s\n", marker, strings.Join(pkgs, " "))
	for _, args := range [][]string{{"update", "-qq"}, append([]string{"install", "-y", "-qq", "--no-install-recommends"}, pkgs...)} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		var log bytes.Buffer
		cmd.Stdout, cmd.Stderr = &log, &log
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("apt-get %s: %v\n%s", strings.Join(args, " "), err, tail(log.String(), 2000))
		}
	}
	return nil
}

// moduleDir returns the module cache folder of mod, downloading it if the
// cache lacks it (which works offline when it is there).
func moduleDir(mod string) (string, error) {
	// Already extracted in the module cache (also offline, with GOPROXY=off)?
	_, version, _ := strings.Cut(mod, "@")
	list := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", mod)
	list.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	if out, err := list.Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); dir != "" && strings.HasSuffix(dir, "@"+version) {
			if _, err := os.Stat(filepath.Join(dir, "libtch")); err == nil {
				return dir, nil
			}
		}
	}
	cmd := exec.Command("go", "mod", "download", "-json", mod)
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var info struct{ Dir, Error string }
	if json.Unmarshal(out, &info) == nil && info.Error != "" {
		return "", fmt.Errorf("go mod download %s: %s", mod, info.Error)
	}
	if err != nil || info.Dir == "" {
		return "", fmt.Errorf("go mod download %s: %v %s", mod, err, stderr.String())
	}
	return info.Dir, nil
}

func stampKey(in libtorch.Install, compiler, gotchDir string) string {
	h := sha256.New()
	b, _ := json.Marshal(in)
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n%s\n", formatVersion, gotchVersion, gotchDir, compiler, b)
	for _, lib := range []string{"libtorch.so", "libtorch_cpu.so", "libc10.so", "libtorch_cuda.so"} {
		if fi, err := os.Stat(filepath.Join(in.LibDir, lib)); err == nil {
			fmt.Fprintf(h, "%s %d %d\n", lib, fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// prepare copies gotch to dest (through a temporary folder), configures its
// libtch package for in, and replaces the wrappers that do not compile.
func prepare(in libtorch.Install, cxx, gotchDir, dest, key, compiler string) (Stamp, error) {
	tmp := fmt.Sprintf("%s.tmp%d", dest, os.Getpid())
	if err := os.RemoveAll(tmp); err != nil {
		return Stamp{}, err
	}
	defer os.RemoveAll(tmp)
	if err := copyTree(gotchDir, tmp, func(rel string) bool {
		return rel == "example" || rel == "gen" || strings.HasSuffix(rel, "_test.go")
	}); err != nil {
		return Stamp{}, fmt.Errorf("copying gotch: %w", err)
	}
	lib := filepath.Join(tmp, "libtch")
	gen := filepath.Join(lib, libtorch.GeneratedFile)
	var replaced []string
	for pass := 1; ; pass++ {
		t := time.Now()
		log, ok, err := syntaxCheck(in, cxx, lib)
		if err != nil {
			return Stamp{}, err
		}
		fmt.Printf("setup: compile check %d of libtch against libtorch %s: %.0fs\n", pass, in.Version, time.Since(t).Seconds())
		if ok {
			break
		}
		lines := libtorch.FailingLines(log, libtorch.GeneratedFile)
		if len(lines) == 0 || pass == 3 {
			return Stamp{}, fmt.Errorf("gotch's libtch does not compile against libtorch %s (%s), and not only in its generated wrappers:\n  %s",
				in.Version, in.Root, strings.Join(first(libtorch.ErrorLines(log), 15), "\n  "))
		}
		src, err := os.ReadFile(gen)
		if err != nil {
			return Stamp{}, err
		}
		patched, names, err := libtorch.ReplaceFunctions(src, lines, in.Version)
		if err != nil {
			return Stamp{}, err
		}
		if err := os.WriteFile(gen, patched, 0o644); err != nil {
			return Stamp{}, err
		}
		replaced = append(replaced, names...)
	}
	st := Stamp{Key: key, Libtorch: in, Gotch: gotchVersion, Compiler: compiler, ReplacedOps: replaced, PreparedAt: time.Now().UTC(), SetupVersion: formatVersion}
	if st.ReplacedOps == nil {
		st.ReplacedOps = []string{}
	}
	if err := writeLibGo(lib, in); err != nil {
		return Stamp{}, err
	}
	if err := dropBigStruct(filepath.Join(tmp, "ts", "tensor.go")); err != nil {
		return Stamp{}, err
	}
	if err := freeOutputPointers(filepath.Join(tmp, "ts")); err != nil {
		return Stamp{}, err
	}
	if err := freeReplacedHandles(filepath.Join(tmp, "ts", "tensor-generated.go")); err != nil {
		return Stamp{}, err
	}
	if err := writeExtras(lib, st); err != nil {
		return Stamp{}, err
	}
	list := strings.Join(replaced, "\n")
	if list != "" {
		list += "\n"
	}
	if err := os.WriteFile(filepath.Join(tmp, "replaced-ops.txt"), []byte(list), 0o644); err != nil {
		return Stamp{}, err
	}
	if err := writeJSON(filepath.Join(tmp, "handnet-setup.json"), st); err != nil {
		return Stamp{}, err
	}
	return st, replaceDir(tmp, dest)
}

// replaceDir moves the finished folder tmp to dest, replacing what is there
// (a copy with an older stamp). Two setups racing for the same key both
// produce the same copy; the loser keeps the winner's.
func replaceDir(tmp, dest string) error {
	if err := os.RemoveAll(dest); err != nil {
		return err
	}
	if err := os.Rename(tmp, dest); err != nil {
		if _, statErr := os.Stat(dest); statErr == nil {
			return nil
		}
		return err
	}
	return nil
}

// syntaxCheck compiles libtch's C++ without generating code; ok is true
// when there is no error.
func syntaxCheck(in libtorch.Install, cxx, libDir string) (log []byte, ok bool, err error) {
	cpp, cxxf, _ := in.CgoFlags()
	args := append([]string{"-fsyntax-only", "-w", "-fmax-errors=0"}, cxxf...)
	args = append(args, cpp...)
	args = append(args, "torch_api.cpp")
	cmd := exec.Command(cxx, args...)
	cmd.Dir = libDir
	out, err := cmd.CombinedOutput()
	if err == nil {
		return out, true, nil
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		return nil, false, fmt.Errorf("%s: %v", cxx, err)
	}
	return out, false, nil
}

// dropBigStruct removes the 100 KB Go allocation gotch attaches to every
// tensor wrapper (ts/tensor.go: x.d = new(bigStruct)), meant to make the Go
// GC feel the C memory behind tensors. Every op allocates a wrapper, so a
// training step allocated megabytes of Go heap: measured on an H200 in one
// run, A/B/A, batch 16: the study's CNN trains at 2,662 / 5,660 / 2,667
// images/s and ResNet-18 at 802 / 1,042 / 827 without it. handnet drops its
// tensors explicitly; the CPU training benchmark checks that RSS stays flat.
func dropBigStruct(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	const line = "\tx.d = new(bigStruct)\n"
	if !bytes.Contains(b, []byte(line)) {
		return fmt.Errorf("%s: expected gotch v0.9.1's %q, not found", path, strings.TrimSpace(line))
	}
	b = bytes.Replace(b, []byte(line), []byte("\t// x.d = new(bigStruct): removed by handnet's tools/setup (see dropBigStruct)\n"), 1)
	return os.WriteFile(path, b, 0o644)
}

// freeOutputPointers fixes how gotch's ops receive their results. Every op
// allocates the slot its output tensor pointer is written to with
// C.malloc(0) and never frees it: a leak per op (measured: ~8 KB of RSS per
// forward pass of the study's CNN, linear over thousands of requests), and
// ops with several outputs write past that zero-byte block. The rewrite
// gives each op a slot for 16 pointers and frees it when the op returns
// (the pointer's value has been copied into the Go tensor by then).
func freeOutputPointers(tsDir string) error {
	files, err := filepath.Glob(filepath.Join(tsDir, "*.go"))
	if err != nil {
		return err
	}
	// An existing free of the same slot on the next line (gotch's
	// RunBackward has one) is kept once.
	re := regexp.MustCompile(`(?m)^(\s*)(\w+) := \(\*lib\.Ctensor\)\(unsafe\.Pointer\(C\.malloc\(0\)\)\)(\n\s*defer C\.free\(unsafe\.Pointer\(\w+\)\))?$`)
	total := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		n := len(re.FindAllIndex(b, -1))
		if n == 0 {
			continue
		}
		b = re.ReplaceAll(b, []byte("${1}${2} := (*lib.Ctensor)(unsafe.Pointer(C.malloc(16 * 8))) // handnet's tools/setup: see freeOutputPointers\n${1}defer C.free(unsafe.Pointer(${2}))"))
		if err := os.WriteFile(f, b, 0o644); err != nil {
			return err
		}
		total += n
	}
	if total < 2000 {
		return fmt.Errorf("%s: expected gotch v0.9.1's %d output slots allocated with C.malloc(0), found %d", tsDir, 2600, total)
	}
	return nil
}

// freeReplacedHandles fixes gotch's in-place ops (Add_, Relu_, Zero_,
// RequiresGrad_, Uniform_ … 260 of them). libtch returns the result of an
// in-place op as a new handle (a new at::Tensor on the C++ heap) to the same
// tensor, and the Go wrapper swaps it in for the old one without freeing the
// old: that handle keeps a reference to the tensor, so its memory is never
// freed, whatever the program drops. Measured: a ResNet-18 inference pass
// (residual add and ReLU in place) leaked its block outputs, ~1.5 MB an
// image, and faulted fresh pages in for them every pass; a model's
// parameters (initialised in place) outlived Close. The rewrite frees the
// old handle once the new one is in place; the tensor lives on through it.
func freeReplacedHandles(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	re := regexp.MustCompile(`(?m)^(\s*)ts\.ctensor = \*ptr$`)
	n := len(re.FindAllIndex(b, -1))
	if n < 200 {
		return fmt.Errorf("%s: expected gotch v0.9.1's 260 in-place ops that swap in a new handle (ts.ctensor = *ptr), found %d", path, n)
	}
	b = re.ReplaceAll(b, []byte("${1}lib.AtFree(ts.ctensor) // handnet's tools/setup: see freeReplacedHandles\n${1}ts.ctensor = *ptr"))
	return os.WriteFile(path, b, 0o644)
}

// cgoOpt are the optimisation flags for libtch's C++: the wrappers are thin,
// so -O1 without debug info compiles much faster than gotch's -O3 -g and
// runs the same. Changing them makes every machine recompile libtch cold.
const cgoOpt = "-O1 -g0 -w"

func writeLibGo(libDir string, in libtorch.Install) error {
	cpp, cxxf, ld := in.CgoFlags()
	text := fmt.Sprintf(`// Code generated by handnet's tools/setup for libtorch %s (%s). DO NOT EDIT.

package libtch

// #cgo CPPFLAGS: -I${SRCDIR} %s
// #cgo CFLAGS: %s
// #cgo CXXFLAGS: %s %s
// #cgo LDFLAGS: %s
import "C"
`, in.Version, in.Root, strings.Join(cpp, " "), cgoOpt, strings.Join(cxxf, " "), cgoOpt, strings.Join(ld, " "))
	return os.WriteFile(filepath.Join(libDir, "lib.go"), []byte(text), 0o644)
}

// writeExtras adds what handnet needs from libtch that gotch does not wrap:
// the intra-op thread count, and a description of this build.
func writeExtras(libDir string, st Stamp) error {
	info, err := json.Marshal(struct {
		Libtorch    libtorch.Install `json:"libtorch"`
		Gotch       string           `json:"gotch"`
		ReplacedOps []string         `json:"replaced_ops"`
	}{st.Libtorch, st.Gotch, st.ReplacedOps})
	if err != nil {
		return err
	}
	text := fmt.Sprintf(`// Code generated by handnet's tools/setup. DO NOT EDIT.

package libtch

//#include "stdbool.h"
//#include "torch_api.h"
import "C"

import "errors"

// HandnetBuild describes, as JSON, the libtorch this copy of gotch was
// prepared for and the wrappers that were replaced.
const HandnetBuild = %q

// AtSetNumThreads sets libtorch's intra-op thread count for the calling thread.
func AtSetNumThreads(n int) { C.at_set_num_threads(C.int(n)) }

// AtGetNumThreads returns libtorch's intra-op thread count for the calling thread.
func AtGetNumThreads() int { return int(C.at_get_num_threads()) }

// AtGradSetEnabledBool sets the calling thread's grad mode and returns the
// previous one. (gotch's AtGradSetEnabled reads its C int result as a Go
// int, 8 bytes, so its answer carries garbage in the upper half.)
func AtGradSetEnabledBool(b bool) (bool, error) {
	v := C.int(0)
	if b {
		v = 1
	}
	switch C.at_grad_set_enabled(v) {
	case 0:
		return false, nil
	case 1:
		return true, nil
	}
	return false, errors.New("at_grad_set_enabled failed")
}

// AtManualSeed seeds libtorch's default random generators.
func AtManualSeed(seed int64) { C.at_manual_seed(C.int64_t(seed)) }
`, info)
	return os.WriteFile(filepath.Join(libDir, "handnet.go"), []byte(text), 0o644)
}

func copyTree(src, dst string, skip func(rel string) bool) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		if rel != "." && skip(filepath.ToSlash(rel)) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return fileio.WriteAtomic(path, append(b, '\n'))
}

func mustAbs(p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return a
}

func first(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
