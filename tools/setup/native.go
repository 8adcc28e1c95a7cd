package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/handnet/handnet/tools/libtorch"
)

// nativeDir is handnet's native layer, whose flags.go setup writes.
const nativeDir = "handnet/native"

// glooPackages are Debian's gloo headers, which Debian's libtorch was built
// against (its ProcessGroupGloo.hpp includes them).
var glooPackages = []string{"libgloo-dev"}

type nativeStamp struct {
	Key  string              `json:"key"`
	Plan libtorch.NativePlan `json:"plan"`
}

// prepareNative decides which optional features handnet's native layer
// gets (headers found and a probe compiled against this libtorch) and writes
// their cgo flags into handnet/native/flags.go. The decision is cached in
// stampFile under a key of the install, the compiler and the headers found.
func prepareNative(in libtorch.Install, cxx, compiler, stampFile string) (libtorch.NativePlan, error) {
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
	var st nativeStamp
	if b, err := os.ReadFile(stampFile); err == nil && json.Unmarshal(b, &st) == nil && st.Key == key {
		return st.Plan, writeFlagsGo(st.Plan, in)
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
	if err := writeFlagsGo(plan, in); err != nil {
		return plan, err
	}
	return plan, writeJSON(stampFile, nativeStamp{Key: key, Plan: plan})
}

func writeFlagsGo(plan libtorch.NativePlan, in libtorch.Install) error {
	path := filepath.Join(nativeDir, "flags.go")
	text := plan.FlagsGo(in, cgoOpt)
	if old, err := os.ReadFile(path); err == nil && string(old) == text {
		return nil
	}
	return writeAtomic(path, []byte(text))
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
