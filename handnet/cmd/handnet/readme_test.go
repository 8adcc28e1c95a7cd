package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readmeLine is a command line shown in a README code block.
type readmeLine struct {
	file    string
	line    int
	section string // the nearest heading above it
	text    string
}

func (l readmeLine) String() string { return l.file + ":" + strconv.Itoa(l.line) + ": " + l.text }

// readmeCommands returns the shell command lines of a Markdown file's
// indented and sh-fenced code blocks (Go blocks and JSON are not commands),
// continuation lines joined, with the heading each sits under.
func readmeCommands(t *testing.T, path string) []readmeLine {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []readmeLine
	section, fence := "", ""
	sc := bufio.NewScanner(f)
	n := 0
	var cont *readmeLine
	for sc.Scan() {
		n++
		l := sc.Text()
		if strings.HasPrefix(l, "```") {
			if fence == "" {
				fence = strings.TrimPrefix(l, "```") + " "
			} else {
				fence = ""
			}
			continue
		}
		var code string
		switch {
		case fence == "sh " || fence == "bash ":
			code = l
		case fence != "":
			continue
		case strings.HasPrefix(l, "#"):
			section = strings.TrimSpace(strings.TrimLeft(l, "#"))
			continue
		case strings.HasPrefix(l, "    ") && !strings.HasPrefix(strings.TrimSpace(l), "|"):
			code = strings.TrimSpace(l)
		default:
			cont = nil
			continue
		}
		if cont != nil {
			cont.text += " " + strings.TrimSpace(strings.TrimSuffix(code, "\\"))
			if !strings.HasSuffix(code, "\\") {
				out = append(out, *cont)
				cont = nil
			}
			continue
		}
		code = strings.TrimSpace(code)
		if code == "" || strings.HasPrefix(code, "#") {
			continue
		}
		rl := readmeLine{file: filepath.Base(filepath.Dir(path)) + "/" + filepath.Base(path), line: n, section: section, text: code}
		if strings.HasSuffix(code, "\\") {
			rl.text = strings.TrimSpace(strings.TrimSuffix(code, "\\"))
			cont = &rl
			continue
		}
		out = append(out, rl)
	}
	return out
}

// handnetWords returns the words after "handnet" (or "bin/handnet") when
// the line runs handnet directly, with a trailing comment dropped.
func handnetWords(text string) ([]string, bool) {
	if i := strings.Index(text, " #"); i >= 0 {
		text = text[:i]
	}
	w := shellWord.FindAllString(text, -1)
	if len(w) == 0 || (w[0] != "handnet" && w[0] != "bin/handnet") {
		return nil, false
	}
	var args []string
	for _, a := range w[1:] {
		args = append(args, strings.Trim(a, `"'`))
	}
	return args, true
}

// readmeCoveredBy names, for each README command that TestREADMECommands
// cannot run here (it needs the internet, a cluster, a container engine, a
// server left running, or minutes), the test that runs it. A key is a
// prefix of the command line.
var readmeCoveredBy = map[string]string{
	"make run":                           "TestDemoRunFolder",  // handnet demo, what make run runs after the build
	"make test":                          "TestREADMECommands", // CI runs it
	"make image":                         "TestImage",
	"make fuzz":                          "FuzzReadHandInfo",
	"make setup":                         "TestEmbedFromAnotherModule",
	"LIBTORCH_USE_PYTORCH=1 make setup":  "TestEmbedFromAnotherModule", // setup's sources; CUDA needs a GPU machine
	"go get github.com/handnet/handnet":  "TestEmbedFromAnotherModule",
	"go run github.com/handnet/handnet":  "TestEmbedFromAnotherModule",
	"handnet weights fetch":              "TestFetchResumesAndVerifies", // from a local server: no internet here
	"handnet serve":                      "TestServerEndpoints",
	"bin/handnet serve":                  "TestServerEndpoints",
	"curl ":                              "TestServerEndpoints",
	"xdg-open":                           "TestWebPageInBrowser",
	"kubectl port-forward":               "TestServeExample",
	"kubectl apply":                      "TestLaunchExamples",
	"sbatch":                             "TestLaunchExamples",
	"torchrun":                           "TestTorchrunRestart",
	"podman":                             "TestImage",
	"handnet reproduce":                  "TestReproduceShards",
	"bin/handnet reproduce":              "TestReproduceShards",
	"handnet audit":                      "TestAuditLeakage",
	"handnet fakedata --out /tmp/people": "TestAuditLeakage",
	"handnet train --data ~/11k-hands --out runs/cnn  ":                "TestTrainEvalEndToEnd", // the first screen's; the guide runs its own
	"handnet predict --checkpoint runs/cnn/best.safetensors photo.jpg": "TestTrainEvalEndToEnd",
	"bin/handnet train --data DIR --out runs/ddp --nproc-per-node":     "TestTrainNProcPerNode",
	"bin/handnet doctor":           "TestDeviceRefusedBeforeWork",
	"bin/handnet bench":            "TestBenchJSON",
	"rank(s) 1 stopped responding": "TestKilledRankStopsTheOther", // an error message shown as output
	"rendezvous at 127.0.0.1":      "TestRendezvousNamesDifferences",
	"time=\"":                      "TestTrainLogsProgressWithoutTerminal", // a log line shown as output
	"native        store, gloo":    "TestVersion",                          // doctor's output
}

// TestREADMECommands checks the commands the READMEs show: every handnet
// command line parses with that command's real flags; the guide's first
// five steps (your copy of the dataset → train → evaluate → predict →
// serve) run in order as a user runs them — each line through bash, with
// `handnet` and `bin/handnet` on hand, ~ expanded by the shell, curl and
// jq talking to the served model — on a small synthetic copy of the
// dataset in a home folder of their own, each exiting 0 and leaving what
// the README says; every other command line names the test that runs it,
// and that test exists.
func TestREADMECommands(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: the guide trains two runs")
	}
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	lines := append(readmeCommands(t, filepath.Join(root, "README.md")), readmeCommands(t, filepath.Join(root, "tools", "README.md"))...)
	if len(lines) < 30 {
		t.Fatalf("found %d command lines in the READMEs; the reader is broken", len(lines))
	}
	sources := testSources(t, root)

	guide := regexp.MustCompile(`^[1-5]\. `)
	var run []readmeLine
	for _, l := range lines {
		if args, ok := handnetWords(l.text); ok {
			checkReadmeCommand(t, l.String(), expandHome(args, "/home/u"))
		}
		if m := benchName.FindStringSubmatch(l.text); m != nil {
			if !strings.Contains(sources, "func Benchmark"+m[1]) {
				t.Errorf("%s: no Benchmark%s in the test files", l, m[1])
			}
			continue
		}
		if guide.MatchString(l.section) || l.section == "The run folder" {
			if _, ok := handnetWords(l.text); ok || strings.HasPrefix(l.text, "curl ") {
				run = append(run, l)
				continue
			}
		}
		name := ""
		for prefix, test := range readmeCoveredBy {
			if strings.HasPrefix(l.text, prefix) && len(prefix) > len(name) {
				name = test
			}
		}
		if name == "" {
			t.Errorf("%s: run by no test: run it in TestREADMECommands or name its test in readmeCoveredBy", l)
			continue
		}
		if !strings.Contains(sources, "func "+name+"(") {
			t.Errorf("%s: readmeCoveredBy names %s, which no test file defines", l, name)
		}
	}
	if len(run) < 10 {
		t.Fatalf("the guide's steps 1-5 show %d commands, want at least 10 (data stats, fakedata, train, resume, ResNet-18, eval, weights info, predict, explain, serve and its curl lines)", len(run))
	}

	// A home and a working folder of the guide's own; ~/11k-hands is a
	// small synthetic copy in the real layout; photo.jpg a real photo.
	dir := t.TempDir()
	home, work := filepath.Join(dir, "home"), filepath.Join(dir, "work")
	for _, d := range []string{home, work} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("HOME", home)
	t.Setenv("XDG_CACHE_HOME", "")
	t.Chdir(work)
	if code := run1(t, "fakedata", "--out", filepath.Join(home, "11k-hands"), "--count", "120", "--per-subject", "10", "--size", "340x256"); code != 0 {
		t.Fatalf("fakedata for the guide: exit %d", code)
	}
	photo := filepath.Join(root, "..", "shared", "data", "real-sample", "Hand_0000033.jpg")
	b, err := os.ReadFile(photo)
	if err != nil {
		t.Fatalf("the guide's photo.jpg: %v", err)
	}
	os.WriteFile(filepath.Join(work, "photo.jpg"), b, 0o644)
	fixture := os.Getenv("HANDNET_FIXTURES")
	if fixture == "" {
		fixture = filepath.Join(root, "testdata", "fixtures")
	}
	resnet, err := filepath.Abs(filepath.Join(fixture, "resnet18.pth"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(resnet); err != nil {
		t.Fatalf("golden fixtures missing (%v): `make test` runs `make fixtures` first", err)
	}

	// handnet and bin/handnet are this test binary acting as the command.
	bin := filepath.Join(dir, "bin")
	shim := "#!/bin/sh\nHANDNET_TEST_MAIN=1 exec " + strconv.Quote(os.Args[0]) + " \"$@\"\n"
	for _, p := range []string{filepath.Join(bin, "handnet"), filepath.Join(work, "bin", "handnet")} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(shim), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	env := append(os.Environ(), "HOME="+home, "PATH="+bin+":"+os.Getenv("PATH"), "XDG_CACHE_HOME=")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	ln.Close()
	var served *exec.Cmd
	servedOut := &lockedBuffer{}
	defer func() {
		if served != nil {
			served.Process.Kill()
		}
	}()
	for _, l := range run {
		line := l.text
		args, isHandnet := handnetWords(line)
		switch {
		case isHandnet && len(args) >= 2 && args[0] == "weights" && args[1] == "fetch":
			// No internet here: the golden fixtures' torchvision-format
			// ResNet-18 stands for the published file (TestFetchResumesAndVerifies
			// fetches from a local server).
			continue
		case isHandnet && args[0] == "fakedata":
			line += " --size 340x256 --count 48" // the guide's 960 full-size photos: a minute of drawing
		case isHandnet && args[0] == "train":
			line = strings.ReplaceAll(line, "~/.cache/handnet/weights/resnet18-f37072fd.pth", strconv.Quote(resnet))
			line += " --epochs 1 --batch-size 8"
		}
		line = strings.ReplaceAll(line, ":8080", ":"+port)
		t.Logf("%s\n  → %s", l, line)
		cmd := exec.Command("bash", "-o", "pipefail", "-c", line)
		cmd.Dir, cmd.Env = work, env
		if isHandnet && args[0] == "serve" {
			// The server runs until the guide's curl lines are done.
			cmd.Stdout, cmd.Stderr = servedOut, servedOut
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			served = cmd
			waitReady(t, "http://127.0.0.1:"+port+"/readyz", servedOut)
			continue
		}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v\n%s%s", l, err, out, stderr.String())
		}
		if strings.HasPrefix(line, "curl ") {
			got := strings.TrimSpace(string(out))
			switch {
			case strings.Contains(line, "/predict"):
				var r struct {
					Results []struct {
						Class string
						Top   []struct{ Class string }
					}
				}
				if json.Unmarshal(out, &r) != nil || len(r.Results) != 1 || r.Results[0].Class == "" || len(r.Results[0].Top) != 3 {
					t.Errorf("%s: want one result with the top 3 classes, got %s", l, got)
				}
			case strings.Contains(line, ".overlay"):
				if !strings.HasPrefix(got, "data:image/png;base64,") {
					t.Errorf("%s: want a data: URL of a PNG, got %.80s", l, got)
				}
			}
		}
	}
	if served == nil {
		t.Fatal("the guide's serve step ran no server")
	}
	served.Process.Signal(syscall.SIGTERM)
	if err := served.Wait(); err != nil {
		t.Errorf("serve after SIGTERM: %v (want exit 0)\n%s", err, servedOut.String())
	}
	served = nil
	for _, f := range []string{"runs/cnn/report.md", "runs/cnn/best.safetensors", "runs/cnn/confusion.png", "runs/r18/report.md", "maps/photo.cam.png"} {
		if _, err := os.Stat(filepath.Join(work, f)); err != nil {
			t.Errorf("after the guide's commands: %v", err)
		}
	}
	if _, err := os.Stat(filepath.Join(home, "fake-hands", "HandInfo.csv")); err != nil {
		t.Errorf("fakedata --out ~/fake-hands: %v", err)
	}
}

var benchName = regexp.MustCompile(`^go test .*-bench (\w+)`)

// positional lists the commands that take arguments besides flags.
var positional = map[string]bool{"predict": true, "explain": true, "weights fetch": true, "weights info": true}

// checkReadmeCommand parses a handnet command line (after "handnet") with
// the command's real flags, without running it.
func checkReadmeCommand(t *testing.T, where string, args []string) {
	t.Helper()
	name := args[0]
	if len(args) > 1 && commands[args[0]+" "+args[1]] != nil {
		name = args[0] + " " + args[1]
	}
	c := commands[name]
	if c == nil {
		t.Errorf("%s: unknown command %q", where, name)
		return
	}
	fs, _ := newFlagSet(c)
	if err := fs.Parse(args[len(strings.Fields(name)):]); err != nil {
		t.Errorf("%s: handnet %s: %v", where, name, err)
	}
	if fs.NArg() > 0 && !positional[name] {
		t.Errorf("%s: handnet %s: stray arguments %q", where, name, fs.Args())
	}
}

// waitReady polls url until it answers 200, for at most a minute.
func waitReady(t *testing.T, url string, log fmt.Stringer) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if r, err := http.Get(url); err == nil {
			r.Body.Close()
			if r.StatusCode == http.StatusOK {
				return
			}
		}
	}
	t.Fatalf("%s not ready within a minute\n%s", url, log)
}

// run1 runs handnet in this process with args.
func run1(t *testing.T, args ...string) int {
	t.Helper()
	return run(args)
}

// expandHome replaces a leading ~/ as the shell would.
func expandHome(args []string, home string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.HasPrefix(a, "~/") {
			a = filepath.Join(home, a[2:])
		}
		out[i] = a
	}
	return out
}

// testSources returns the text of every _test.go file of the module.
func testSources(t *testing.T, root string) string {
	t.Helper()
	out, err := exec.Command("git", "-C", root, "ls-files", "--cached", "--others", "--exclude-standard", "*_test.go").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	var sb strings.Builder
	for _, f := range strings.Fields(string(out)) {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err == nil {
			sb.Write(b)
		}
	}
	return sb.String()
}
