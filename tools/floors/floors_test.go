// Package floors checks the layering of handnet's packages: each sits on a
// floor, and no package imports one on a higher floor. A reader of the tree
// sees runtime → data → model → evaluation → training → reporting →
// study and library → commands, with the tools beside them. The test only
// lists packages (go list), so it runs in a second without libtorch.
//
// A new package fails the test until it is placed in floors below.
package floors

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"
)

// tools is the floor of tools/*: programs and tests beside handnet, not
// under it. tools/setup builds before libtorch is set up, so a tool may
// import other tools and only the runtime packages that need no libtorch.
const tools = -1

// floors places every package of the module (by path inside it). A package
// may import packages of its own floor and of lower ones.
var floors = map[string]int{
	// 0 runtime: libtorch and its native layer, files, run folders, processes.
	"handnet/runtime/torch":  0,
	"handnet/runtime/native": 0,
	"handnet/runtime/fileio": 0,
	"handnet/runtime/rundir": 0,
	"handnet/runtime/dist":   0,
	// 1 data: the dataset, its cache, splits, loaders, augmentation.
	"vision": 1,
	// 2 model: architectures, checkpoints, inference; PyTorch weights.
	"handnet/model": 2,
	"weights":       2,
	// 3 evaluation: predictions and their metrics.
	"eval": 3,
	// 4 training: the trainer (validating with eval's metrics).
	"train": 4,
	// 5 reporting: reports and plots of runs, evaluations and audits.
	"eval/report": 5,
	// 6 study and library: experiments and studies in run folders; the
	// library (classifier, server); benchmarks.
	"handnet/experiment": 6,
	"handnet":            6,
	"handnet/bench":      6,
	// 7 commands.
	"handnet/cmd/handnet": 7,

	"tools/setup":    tools,
	"tools/libtorch": tools,
	"tools/image":    tools,
	"tools/floors":   tools,
}

var floorNames = map[int]string{
	tools: "tools", 0: "runtime", 1: "data", 2: "model", 3: "evaluation",
	4: "training", 5: "reporting", 6: "study and library", 7: "commands",
}

// runtimeDir holds the runtime floor: under handnet/, the library's
// ground is one folder, and the rest of handnet/ is model (model), study
// and library (the facade, experiment, bench) and commands (cmd).
const runtimeDir = "handnet/runtime"

// libtorchRoot is the package whose importers need libtorch to build.
const libtorchRoot = "github.com/sugarme/gotch"

type pkg struct {
	ImportPath string
	Dir        string
	GoFiles    []string
	CgoFiles   []string
	Imports    []string
	Deps       []string
	Module     *struct{ Path string }
	Error      *struct{ Err string }
}

// goCommand is the go command that runs this test.
func goCommand() string {
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); runtime.GOROOT() != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return "go"
}

// listModule lists the module's packages (without building them) and
// returns them with the module's path.
func listModule(t *testing.T) (string, []pkg) {
	t.Helper()
	goCmd := goCommand()
	out, err := exec.Command(goCmd, "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		t.Fatal("go env GOMOD: not in a module")
	}
	cmd := exec.Command(goCmd, "list", "-e", "-json=ImportPath,Dir,GoFiles,CgoFiles,Imports,Deps,Module,Error", "./...")
	cmd.Dir = filepath.Dir(gomod)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("go list ./... in %s: %v\n%s", cmd.Dir, err, stderr.String())
	}
	var pkgs []pkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("go list: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	module := ""
	for _, p := range pkgs {
		if p.Module != nil && module == "" {
			module = p.Module.Path
		}
	}
	if module == "" || len(pkgs) == 0 {
		t.Fatalf("go list ./... in %s: no packages of a module", cmd.Dir)
	}
	return module, pkgs
}

func TestFloors(t *testing.T) {
	module, pkgs := listModule(t)
	logTable(t)
	rel := func(path string) (string, bool) {
		if path == module {
			return ".", true
		}
		r, ok := strings.CutPrefix(path, module+"/")
		return r, ok
	}
	listed := map[string]bool{}
	for _, p := range pkgs {
		name, ok := rel(p.ImportPath)
		if !ok {
			continue // another module of the workspace
		}
		listed[name] = true
		floor, placed := floors[name]
		if !placed {
			t.Errorf("%s is on no floor: place it in the floors table of tools/floors/floors_test.go", name)
			continue
		}
		for _, imp := range p.Imports {
			dep, ours := rel(imp)
			if !ours {
				continue
			}
			to, placed := floors[dep]
			switch {
			case !placed:
				// Reported for dep itself.
			case floor == tools && to != tools && needsLibtorch(pkgs, imp):
				t.Errorf("%s (tools) imports %s (floor %d), which needs libtorch: tools/setup builds before it is set up", name, dep, to)
			case floor != tools && to == tools:
				t.Errorf("%s (floor %d) imports %s (tools): handnet depends on no tool", name, floor, dep)
			case floor == tools && to != tools && to > 0:
				t.Errorf("%s (tools) imports %s (floor %d > 0): tools import only other tools and the runtime", name, dep, to)
			case floor != tools && to > floor:
				t.Errorf("%s (floor %d) imports %s (floor %d > %d)", name, floor, dep, to, floor)
			}
		}
		if under := strings.HasPrefix(name, runtimeDir+"/"); under != (floor == 0) {
			t.Errorf("%s (floor %d): the runtime floor, and only it, lives under %s/ (the folder shows the floor)", name, floor, runtimeDir)
		}
		if floor != tools && !statesFloor(p, floor) {
			t.Errorf("%s: its package comment does not say \"Floor %d (%s)\": a reader of the package learns its floor there", name, floor, floorNames[floor])
		}
		if p.Error != nil {
			t.Logf("%s: go list: %s (its imports are checked as listed)", name, p.Error.Err)
		}
	}
	for name := range floors {
		if !listed[name] {
			t.Errorf("%s is in the floors table but not in the module: remove or rename it there", name)
		}
	}
}

// statesFloor tells whether p's package comment (in any of its files)
// names its floor: "Floor N (name)".
func statesFloor(p pkg, floor int) bool {
	want := fmt.Sprintf("// Floor %d (%s)", floor, floorNames[floor])
	for _, f := range append(p.GoFiles, p.CgoFiles...) {
		b, err := os.ReadFile(filepath.Join(p.Dir, f))
		if err != nil {
			continue
		}
		head, _, _ := strings.Cut(string(b), "\npackage ")
		if strings.Contains(head, want) {
			return true
		}
	}
	return false
}

// needsLibtorch tells whether the package path (or what it imports) uses gotch.
func needsLibtorch(pkgs []pkg, path string) bool {
	for _, p := range pkgs {
		if p.ImportPath == path {
			for _, d := range append(p.Deps, p.ImportPath) {
				if d == libtorchRoot || strings.HasPrefix(d, libtorchRoot+"/") {
					return true
				}
			}
		}
	}
	return false
}

// logTable logs the floors, highest first, as the README shows them.
func logTable(t *testing.T) {
	by := map[int][]string{}
	for name, f := range floors {
		by[f] = append(by[f], name)
	}
	var fs []int
	for f := range by {
		fs = append(fs, f)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(fs)))
	var b strings.Builder
	b.WriteString("\n| floor | packages | may import |\n|---|---|---|\n")
	for _, f := range fs {
		sort.Strings(by[f])
		may := "floors 0 to " + fmt.Sprint(f)
		switch f {
		case tools:
			may = "other tools; runtime packages that need no libtorch"
		case 0:
			may = "floor 0 only"
		}
		label := fmt.Sprintf("%d %s", f, floorNames[f])
		if f == tools {
			label = floorNames[f]
		}
		fmt.Fprintf(&b, "| %s | %s | %s |\n", label, "`"+strings.Join(by[f], "`, `")+"`", may)
	}
	t.Log(b.String())
}
