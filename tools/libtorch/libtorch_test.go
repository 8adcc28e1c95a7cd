package libtorch

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func mapEnv(m map[string]string) Env { return func(k string) string { return m[k] } }

func abs(t *testing.T, p string) string {
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestDiscoverOfficialLayout(t *testing.T) {
	dir := abs(t, "testdata/official/libtorch")
	in, err := Discover(mapEnv(map[string]string{"LIBTORCH": dir, "LIBTORCH_CXX11_ABI": "1", "LIBTORCH_USE_PYTORCH": "1"}), "/nonexistent")
	if err != nil {
		t.Fatal(err)
	}
	want := Install{Source: SourceDir, Root: dir, LibDir: dir + "/lib",
		IncludeDirs: []string{dir + "/include", dir + "/include/torch/csrc/api/include"},
		Version:     "2.1.0+cu121", CXX11ABI: true, CUDA: true}
	if !reflect.DeepEqual(in, want) {
		t.Fatalf("got %+v\nwant %+v", in, want)
	}
	cpp, cxx, ld := in.CgoFlags()
	for _, f := range []string{"-I" + dir + "/include", "-D_GLIBCXX_USE_CXX11_ABI=1"} {
		if !contains(cpp, f) {
			t.Errorf("CPPFLAGS %v lack %s", cpp, f)
		}
	}
	if !reflect.DeepEqual(cxx, []string{"-std=c++17"}) {
		t.Errorf("CXXFLAGS = %v", cxx)
	}
	for _, f := range []string{"-L" + dir + "/lib", "-Wl,-rpath," + dir + "/lib", "-ltorch_cuda", "-lc10_cuda", "-Wl,--no-as-needed"} {
		if !contains(ld, f) {
			t.Errorf("LDFLAGS %v lack %s", ld, f)
		}
	}
}

func TestFromDirErrors(t *testing.T) {
	tests := []struct {
		dir, abi, want string
	}{
		{"testdata/nonexistent", "1", "libtorch.so is missing"},
		{"testdata/official/libtorch", "2", `LIBTORCH_CXX11_ABI="2"`},
		// The fixture's libc10.so does not exist: the ABI cannot be read.
		{"testdata/official/libtorch", "", "LIBTORCH_CXX11_ABI=0 or 1"},
	}
	for _, tt := range tests {
		_, err := FromDir(tt.dir, tt.abi)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("FromDir(%s, %q) = %v, want error containing %q", tt.dir, tt.abi, err, tt.want)
		}
	}
}

func TestParsePython(t *testing.T) {
	tests := []struct {
		file string
		want Install
	}{
		{"testdata/python-cuda.txt", Install{Source: SourcePyTorch, Root: "/opt/torch/.venv/lib/python3.12/site-packages/torch",
			LibDir:      "/opt/torch/.venv/lib/python3.12/site-packages/torch/lib",
			IncludeDirs: []string{"/opt/torch/.venv/lib/python3.12/site-packages/torch/include", "/opt/torch/.venv/lib/python3.12/site-packages/torch/include/torch/csrc/api/include"},
			Version:     "2.11.0+cu130", CXX11ABI: true, CUDA: true, CUDAVersion: "13.0"}},
		{"testdata/python-cpu.txt", Install{Source: SourcePyTorch, Root: "/usr/lib/python3/dist-packages/torch",
			LibDir:      "/usr/lib/python3/dist-packages/torch/lib",
			IncludeDirs: []string{"/usr/lib/python3/dist-packages/torch/include", "/usr/lib/python3/dist-packages/torch/include/torch/csrc/api/include"},
			Version:     "1.13.1"}},
	}
	for _, tt := range tests {
		b, err := os.ReadFile(tt.file)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParsePython(b)
		if err != nil {
			t.Fatalf("%s: %v", tt.file, err)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tt.file, got, tt.want)
		}
	}
	for _, bad := range []string{"", "Traceback (most recent call last):", `{"version": "2.1.0"}`} {
		if _, err := ParsePython([]byte(bad)); err == nil {
			t.Errorf("ParsePython(%q) succeeded", bad)
		}
	}
}

// TestDiscoverPython runs a fake interpreter that prints what torch would.
func TestDiscoverPython(t *testing.T) {
	dir := abs(t, "testdata/pytorch/torch")
	py := filepath.Join(t.TempDir(), "python3")
	script := "#!/bin/sh\necho 'import noise from torch'\necho '{\"torch_dir\": \"" + dir + "\", \"version\": \"2.11.0+cu130\", \"cxx11_abi\": true, \"cuda\": \"13.0\"}'\n"
	if err := os.WriteFile(py, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	in, err := Discover(mapEnv(map[string]string{"LIBTORCH_USE_PYTORCH": "1", "LIBTORCH_PYTHON": py}), "/nonexistent")
	if err != nil {
		t.Fatal(err)
	}
	if in.Source != SourcePyTorch || in.Root != dir || in.Version != "2.11.0+cu130" || !in.CUDA || !in.CXX11ABI {
		t.Fatalf("got %+v", in)
	}
	_, err = Discover(mapEnv(map[string]string{"LIBTORCH_USE_PYTORCH": "1", "LIBTORCH_PYTHON": "/bin/false"}), "/nonexistent")
	if err == nil || !strings.Contains(err.Error(), "cannot import torch") {
		t.Fatalf("failing interpreter: err = %v", err)
	}
}

func TestDiscoverSystem(t *testing.T) {
	root := abs(t, "testdata/debian")
	in, err := Discover(mapEnv(nil), root)
	if err != nil {
		t.Fatal(err)
	}
	want := Install{Source: SourceSystem, Root: root + "/usr", System: true, LibDir: root + "/usr/lib/x86_64-linux-gnu",
		IncludeDirs: []string{root + "/usr/include/torch/csrc/api/include"}, Version: "1.13.0", CXX11ABI: true}
	if !reflect.DeepEqual(in, want) {
		t.Fatalf("got %+v\nwant %+v", in, want)
	}
	_, _, ld := in.CgoFlags()
	for _, f := range ld {
		if strings.HasPrefix(f, "-L") || strings.HasPrefix(f, "-Wl,-rpath") || strings.Contains(f, "cuda") {
			t.Errorf("system LDFLAGS should use the default paths and no CUDA: %v", ld)
		}
	}
	_, err = Discover(mapEnv(nil), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "libtorch not found") {
		t.Fatalf("empty sysroot: err = %v", err)
	}
}

func TestVersions(t *testing.T) {
	if v, err := ParseVersionHeader([]byte("#define TORCH_VERSION_MAJOR 2\n#define TORCH_VERSION_MINOR 11\n#define TORCH_VERSION_PATCH 0\n")); err != nil || v != "2.11.0" {
		t.Errorf("ParseVersionHeader = %q, %v", v, err)
	}
	if _, err := ParseVersionHeader([]byte("#define TORCH_VERSION_MAJOR 2\n")); err == nil {
		t.Error("ParseVersionHeader accepted a header without minor/patch")
	}
	for in, want := range map[string]string{"1.13.1+dfsg-4": "1.13.1", "2:1.13.1-1~bpo": "1.13.1", "": "1.13.0"} {
		if got := DebianVersion(in, "1.13.0"); got != want {
			t.Errorf("DebianVersion(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestABIFromSymbols(t *testing.T) {
	tests := []struct {
		names     []string
		cxx11, ok bool
	}{
		{[]string{"_ZN3c106detail14torchCheckFailEPKcS2_jRKNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEE"}, true, true},
		{[]string{"_ZN3c106detail14torchCheckFailEPKcS2_jRKSs"}, false, true},
		{[]string{"_ZN3c104freeEPv", "malloc"}, false, false},
	}
	for _, tt := range tests {
		cxx11, ok := ABIFromSymbols(tt.names)
		if cxx11 != tt.cxx11 || ok != tt.ok {
			t.Errorf("ABIFromSymbols(%v) = %v, %v; want %v, %v", tt.names, cxx11, ok, tt.cxx11, tt.ok)
		}
	}
}

// TestABIFromLibrary builds two tiny shared libraries, one per ABI.
func TestABIFromLibrary(t *testing.T) {
	if _, err := exec.LookPath("g++"); err != nil {
		t.Skip("no g++")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "a.cpp")
	os.WriteFile(src, []byte("#include <string>\nint f(const std::string &s) { return s.size(); }\n"), 0o644)
	for _, abi := range []string{"0", "1"} {
		so := filepath.Join(dir, "lib"+abi+".so")
		if out, err := exec.Command("g++", "-shared", "-fPIC", "-D_GLIBCXX_USE_CXX11_ABI="+abi, "-o", so, src).CombinedOutput(); err != nil {
			t.Fatalf("g++: %v\n%s", err, out)
		}
		got, err := ABIFromLibrary(so)
		if err != nil {
			t.Fatal(err)
		}
		if got != (abi == "1") {
			t.Errorf("ABIFromLibrary(ABI=%s) = %v", abi, got)
		}
	}
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}
