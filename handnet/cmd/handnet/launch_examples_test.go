package main

import (
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

const launchDir = "../../../tools/launch"

// checkCommand parses a handnet command line (after "handnet") with the
// command's real flags, without running it.
func checkCommand(t *testing.T, where string, args []string) {
	t.Helper()
	if len(args) == 0 {
		t.Errorf("%s: empty handnet command", where)
		return
	}
	c, ok := commands[args[0]]
	rest := args[1:]
	if len(args) > 1 {
		if c2, ok2 := commands[args[0]+" "+args[1]]; ok2 {
			c, ok, rest = c2, true, args[2:]
		}
	}
	if !ok {
		t.Errorf("%s: unknown command %q", where, args[0])
		return
	}
	fs, _ := newFlagSet(c)
	if err := fs.Parse(rest); err != nil {
		t.Errorf("%s: handnet %s: %v", where, c.name, err)
	}
	if fs.NArg() > 0 {
		t.Errorf("%s: handnet %s: stray arguments %q", where, c.name, fs.Args())
	}
}

var shellWord = regexp.MustCompile(`"[^"]*"|'[^']*'|\S+`)

// shellCommands returns the handnet command lines of a shell script, its
// commented-out examples included, with variables left as words.
func shellCommands(text string) [][]string {
	text = strings.ReplaceAll(text, "\\\n", " ")
	var out [][]string
	for _, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "#"))
		i := strings.Index(line, "bin/handnet ")
		if i < 0 || strings.HasPrefix(line, "SBATCH") {
			continue
		}
		var words []string
		for _, w := range shellWord.FindAllString(line[i+len("bin/handnet "):], -1) {
			words = append(words, strings.Trim(w, `"'`))
		}
		out = append(out, words)
	}
	return out
}

func TestLaunchExamples(t *testing.T) {
	scripts, _ := filepath.Glob(filepath.Join(launchDir, "*.s*"))
	if len(scripts) < 3 {
		t.Fatalf("want the torchrun and Slurm examples in %s, found %v", launchDir, scripts)
	}
	for _, f := range scripts {
		if out, err := exec.Command("bash", "-n", f).CombinedOutput(); err != nil {
			t.Errorf("%s: bash -n: %v\n%s", f, err, out)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		cmds := shellCommands(string(b))
		if len(cmds) == 0 {
			t.Errorf("%s runs no handnet command", f)
		}
		for _, c := range cmds {
			checkCommand(t, f, c)
		}
	}
	docs := map[string]map[string]any{}
	for _, name := range []string{"pytorchjob.yaml", "reproduce-indexed-job.yaml", "serve.yaml"} {
		b, err := os.ReadFile(filepath.Join(launchDir, "k8s", name))
		if err != nil {
			t.Fatal(err)
		}
		// Every document of the file (serve.yaml: a Deployment and a Service).
		var all []any
		dec := yaml.NewDecoder(bytes.NewReader(b))
		for {
			var doc map[string]any
			if err := dec.Decode(&doc); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			if docs[name] == nil {
				docs[name] = doc
			}
			all = append(all, doc)
		}
		var walk func(v any)
		found := 0
		walk = func(v any) {
			switch x := v.(type) {
			case map[string]any:
				if cmd, ok := x["command"].([]any); ok && len(cmd) > 0 && strings.HasSuffix(cmd[0].(string), "bin/handnet") {
					found++
					var args []string
					for _, a := range cmd[1:] {
						args = append(args, a.(string))
					}
					checkCommand(t, name, args)
				} else if image, ok := x["image"].(string); ok && x["command"] == nil {
					// The image `make image` builds: its ENTRYPOINT is handnet,
					// args are the command line.
					if !strings.Contains(image, "handnet:") {
						t.Errorf("%s: image %q is not the one make image builds (handnet:TAG)", name, image)
					}
					found++
					var args []string
					cmd, _ := x["args"].([]any)
					for _, a := range cmd {
						args = append(args, a.(string))
					}
					checkCommand(t, name, args)
				}
				for _, y := range x {
					walk(y)
				}
			case []any:
				for _, y := range x {
					walk(y)
				}
			}
		}
		walk(all)
		if found == 0 {
			t.Errorf("%s runs no handnet command", name)
		}
	}
	get := func(v any, path ...string) any {
		for _, p := range path {
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[p]
		}
		return v
	}
	pj := docs["pytorchjob.yaml"]
	if get(pj, "kind") != "PyTorchJob" || get(pj, "apiVersion") != "kubeflow.org/v1" || get(pj, "spec", "pytorchReplicaSpecs", "Master", "replicas") != 1 ||
		get(pj, "spec", "pytorchReplicaSpecs", "Worker") == nil {
		t.Errorf("pytorchjob.yaml is not a Kubeflow PyTorchJob with one Master and Workers: %v", pj)
	}
	for _, role := range []string{"Master", "Worker"} {
		cs, _ := get(pj, "spec", "pytorchReplicaSpecs", role, "template", "spec", "containers").([]any)
		if len(cs) == 0 || get(cs[0], "name") != "pytorch" {
			t.Errorf("%s: the training operator needs the container to be named pytorch", role)
		}
	}
	ij := docs["reproduce-indexed-job.yaml"]
	if get(ij, "kind") != "Job" || get(ij, "spec", "completionMode") != "Indexed" {
		t.Errorf("reproduce-indexed-job.yaml is not an Indexed Job")
	}
	completions := get(ij, "spec", "completions")
	cs, _ := get(ij, "spec", "template", "spec", "containers").([]any)
	env, _ := get(cs[0], "env").([]any)
	ok := false
	for _, e := range env {
		if get(e, "name") == "JOB_COMPLETIONS" && get(e, "value") == strconv.Itoa(completions.(int)) {
			ok = true
		}
	}
	if !ok {
		t.Errorf("the Indexed Job must set JOB_COMPLETIONS to its completions (%v): Kubernetes sets only the index", completions)
	}
}

func TestShellCommands(t *testing.T) {
	got := shellCommands("torchrun --nproc-per-node 4 --no-python \\\n  bin/handnet train --data \"$DATA\" --out x\n# srun bin/handnet eval --run 'r'\n")
	if len(got) != 2 || strings.Join(got[0], " ") != "train --data $DATA --out x" || strings.Join(got[1], " ") != "eval --run r" {
		t.Errorf("got %q", got)
	}
}
