package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/handnet/handnet/handnet/runtime/fileio"
	"github.com/handnet/handnet/tools/libtorch"
)

// nativeDir is handnet's native layer, whose flags.go setup writes.
const nativeDir = "handnet/runtime/native"

// glooPackages are Debian's gloo headers, which Debian's libtorch was built
// against (its ProcessGroupGloo.hpp includes them).
var glooPackages = []string{"libgloo-dev"}

type nativeStamp struct {
	Key  string              `json:"key"`
	Plan libtorch.NativePlan `json:"plan"`
}

// planNative decides which optional features handnet's native layer gets
// (headers found and a probe compiled against this libtorch) and returns
// their flags. The decision is cached in the cache folder under a key of the
// install, the compiler and the headers found, which is returned too.
func planNative(in libtorch.Install, cxx, compiler, cache string) (libtorch.NativePlan, string, error) {
	if in.Source == libtorch.SourceSystem {
		if err := ensurePackages("/usr/include/gloo/algorithm.h", glooPackages); err != nil {
			fmt.Printf("setup: c10d's Gloo backend will be missing: %v\n", err)
		}
	}
	dirs := in.HeaderDirs(os.Getenv)
	found := map[string]string{}
	for _, f := range libtorch.NativeFeatures {
		if f.Header != "" {
			if d, ok := libtorch.FindHeader(dirs, f.Header); ok {
				found[f.Header] = d
			}
		}
	}
	h := sha256.New()
	b, _ := json.Marshal(struct {
		In       libtorch.Install
		Compiler string
		Found    map[string]string
		Features []libtorch.NativeFeature
		Version  string
	}{in, compiler, found, libtorch.NativeFeatures, formatVersion})
	h.Write(b)
	key := hex.EncodeToString(h.Sum(nil))
	stampFile := filepath.Join(cache, "native-"+key[:12]+".json")
	var st nativeStamp
	if b, err := os.ReadFile(stampFile); err == nil && json.Unmarshal(b, &st) == nil && st.Key == key {
		return st.Plan, key, nil
	}
	cpp, cxxf, ld := in.CgoFlags()
	plan := libtorch.NativePlan{CPPFlags: cpp, CXXFlags: cxxf, LDFlags: ld, Missing: map[string]string{}}
	have := map[string]bool{}
	for _, f := range libtorch.NativeFeatures {
		switch {
		case f.CUDAOnly && !in.CUDA:
			plan.Missing[f.Name] = "not a CUDA build of libtorch"
			continue
		case f.Needs != "" && !have[f.Needs]:
			plan.Missing[f.Name] = "needs " + f.Needs
			continue
		}
		flags := append([]string(nil), f.Defines...)
		if f.Header != "" {
			d, ok := found[f.Header]
			if !ok {
				plan.Missing[f.Name] = fmt.Sprintf("%s not found in %s", f.Header, strings.Join(dirs, ", "))
				continue
			}
			if !contains(plan.CPPFlags, "-I"+d) && d != "/usr/include" {
				flags = append(flags, "-I"+d)
			}
		}
		t := time.Now()
		all := append(append(append([]string(nil), plan.CPPFlags...), flags...), cxxf...)
		if err := probe(cxx, all, f.Probe); err != nil {
			plan.Missing[f.Name] = "probe did not compile: " + err.Error()
			fmt.Printf("setup: native feature %s left out: probe did not compile (%.0fs)\n", f.Name, time.Since(t).Seconds())
			continue
		}
		fmt.Printf("setup: native feature %s: probe compiled in %.0fs\n", f.Name, time.Since(t).Seconds())
		plan.CPPFlags = append(plan.CPPFlags, flags...)
		plan.Have = append(plan.Have, f.Name)
		have[f.Name] = true
	}
	return plan, key, writeJSON(stampFile, nativeStamp{Key: key, Plan: plan})
}

// writeFlagsGo writes the native layer's flags.go under the handnet module
// root; changed is false when it already had that text.
func writeFlagsGo(root string, plan libtorch.NativePlan, in libtorch.Install) (path string, changed bool, err error) {
	path = filepath.Join(root, nativeDir, "flags.go")
	text := plan.FlagsGo(in, cgoOpt)
	if old, err := os.ReadFile(path); err == nil && string(old) == text {
		return path, false, nil
	}
	return path, true, fileio.WriteAtomic(path, []byte(text))
}

// handnetDep is the handnet module a user's module requires, as `go list -m`
// reports it (with the user's own replace, if any).
type handnetDep struct {
	Path    string
	Version string
	Dir     string
	Replace *struct {
		Path    string
		Version string
		Dir     string
	}
}

// requiredHandnet asks the go command which handnet the module in the
// current folder requires, ignoring any go.work (setup writes that).
func requiredHandnet() (handnetDep, error) {
	cmd := exec.Command("go", "list", "-m", "-json", handnetModule)
	cmd.Env = append(os.Environ(), "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var dep handnetDep
	if err == nil {
		err = json.Unmarshal(out, &dep)
	}
	if err != nil {
		return dep, fmt.Errorf("this module does not require %s (%v: %s); run:\n    go get %s@latest\nthen run setup again",
			handnetModule, err, strings.TrimSpace(stderr.String()), handnetModule)
	}
	if dep.Replace != nil {
		dep.Dir = dep.Replace.Dir
	}
	if dep.Dir == "" {
		return dep, fmt.Errorf("%s %s is required but not downloaded; run:\n    go mod download %s\nthen run setup again", handnetModule, dep.Version, handnetModule)
	}
	return dep, nil
}

// prepareHandnet makes the copy of the handnet module that a user's module
// builds against: the module's files as they are (in the read-only module
// cache, or wherever the user's replace points) plus the native layer's
// generated flags.go. It lives in the cache folder under a key of the
// module's version (or, for a replace to a folder, of its files) and of the
// native plan, so one copy serves every module and Go's build cache keeps
// its compiled C++. The go.work that setup writes replaces exactly that
// version of handnet with it: after an upgrade the build fails at once
// (native.cpp's #error says to run setup) instead of using an old copy.
func prepareHandnet(dep handnetDep, plan libtorch.NativePlan, planKey string, in libtorch.Install, cache string) (string, error) {
	src := dep.Version
	if dep.Replace != nil || src == "" {
		sum, err := treeHash(dep.Dir)
		if err != nil {
			return "", err
		}
		src = "tree-" + sum[:12]
	}
	name := "handnet-" + strings.NewReplacer("/", "_", "+", "_").Replace(src) + "-" + planKey[:12]
	dest := filepath.Join(cache, name)
	stampFile := filepath.Join(dest, ".handnet-setup.json")
	want := struct{ Source, From, Plan string }{src, dep.Dir, planKey}
	var got struct{ Source, From, Plan string }
	if b, err := os.ReadFile(stampFile); err == nil && json.Unmarshal(b, &got) == nil && got.Source == want.Source && got.Plan == want.Plan {
		fmt.Printf("setup: %s %s already prepared in %s\n", handnetModule, dep.Version, dest)
		return dest, nil
	}
	tmp := fmt.Sprintf("%s.tmp%d", dest, os.Getpid())
	if err := os.RemoveAll(tmp); err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if err := copyTree(dep.Dir, tmp, skipInModule); err != nil {
		return "", fmt.Errorf("copying %s from %s: %w", handnetModule, dep.Dir, err)
	}
	if _, _, err := writeFlagsGo(tmp, plan, in); err != nil {
		return "", err
	}
	if err := writeJSON(filepath.Join(tmp, ".handnet-setup.json"), want); err != nil {
		return "", err
	}
	if err := replaceDir(tmp, dest); err != nil {
		return "", err
	}
	fmt.Printf("setup: wrote %s %s (from %s) with its native layer's flags to %s\n", handnetModule, dep.Version, dep.Dir, dest)
	return dest, nil
}

// skipInModule leaves out of a module copy what a build does not read:
// version control, build outputs and test data.
func skipInModule(rel string) bool {
	base := filepath.Base(rel)
	switch {
	case rel == ".git" || rel == ".build" || rel == "bin" || rel == "runs" || rel == ".gpu" || rel == "go.work" || rel == "go.work.sum":
		return true
	case base == "testdata" || rel == filepath.ToSlash(filepath.Join(nativeDir, "flags.go")):
		return true
	}
	return false
}

// treeHash hashes the names and contents of the files a module copy takes.
func treeHash(dir string) (string, error) {
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel != "." && skipInModule(filepath.ToSlash(rel)) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fmt.Fprintf(h, "%s %d\n", filepath.ToSlash(rel), len(b))
		h.Write(b)
		return nil
	})
	return hex.EncodeToString(h.Sum(nil)), err
}

// probe compiles src (without generating code) with flags.
func probe(cxx string, flags []string, src string) error {
	dir, err := os.MkdirTemp("", "handnet-probe")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	f := filepath.Join(dir, "probe.cpp")
	if err := os.WriteFile(f, []byte(src), 0o644); err != nil {
		return err
	}
	args := append([]string{"-fsyntax-only", "-w"}, flags...)
	out, err := exec.Command(cxx, append(args, f)...).CombinedOutput()
	if err != nil {
		lines := libtorch.ErrorLines(out)
		if len(lines) == 0 {
			return fmt.Errorf("%v", err)
		}
		return fmt.Errorf("%s", strings.Join(first(lines, 3), "; "))
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
