package main

import (
	"bytes"
	"encoding/binary"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/handnet/handnet/eval/report"
	"github.com/handnet/handnet/handnet/runtime/rundir"
	"github.com/handnet/handnet/vision"
)

// auditData writes a synthetic dataset of people (fakedata with the given
// signals) and returns its folder and a cache folder.
func auditData(t *testing.T, count, per int, identity, gender string) (data, cache string) {
	t.Helper()
	dir := t.TempDir()
	data, cache = filepath.Join(dir, "data"), filepath.Join(dir, "cache")
	if code := run([]string{"fakedata", "--out", data, "--count", fmt.Sprint(count), "--size", "128x96", "--per-subject", fmt.Sprint(per),
		"--identity-signal", identity, "--gender-signal", gender, "--seed", "7"}); code != 0 {
		t.Fatalf("fakedata: exit %d", code)
	}
	return data, cache
}

func readAudit(t *testing.T, dir string) *report.Audit {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, rundir.AuditJSON))
	if err != nil {
		t.Fatal(err)
	}
	var a report.Audit
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatal(err)
	}
	return &a
}

// auditArgs are the arguments of a small, quick audit of the CNN (64x48
// images, one thread unless more says otherwise).
func auditArgs(data, cache, out string, more ...string) []string {
	return append([]string{"audit", "--data", data, "--cache-dir", cache, "--out", out, "--image-size", "64x48", "--threads", "1",
		"--checkpoint-every", "0"}, more...)
}

// TestAuditLeakage: on people with a strong look of their own and a weak
// gender cue, the random split's mean exceeds the subject split's and the
// gap's interval lies above 0; without the identity signal the gap's
// interval contains 0. The audit classifies gender (--labels gender): the
// CNN memorises 40 people's backdrops within seconds, where the 8 classes
// would take minutes of training to tell the aspect apart at this size.
func TestAuditLeakage(t *testing.T) {
	for _, tc := range []struct {
		name, identity, repeats, epochs string
		leak                            bool
	}{{"identity", "1", "6", "16", true}, {"no-identity", "0", "3", "6", false}} {
		t.Run(tc.name, func(t *testing.T) {
			data, cache := auditData(t, 240, 6, tc.identity, "0.1")
			out := filepath.Join(t.TempDir(), "audit")
			p := start(t, nil, auditArgs(data, cache, out, "--labels", "gender", "--repeats", tc.repeats, "--epochs", tc.epochs, "--batch-size", "8",
				"--cnn-lr", "0.005", "--threads", "2")...)
			if code := p.wait(t, 10*time.Minute); code != 0 {
				t.Fatalf("audit: exit %d\n%s", code, p.out.String())
			}
			a := readAudit(t, out)
			rnd, ok1 := a.Summary("cnn", "random")
			sub, ok2 := a.Summary("cnn", "subject")
			if !ok1 || !ok2 || len(a.Gaps) != 1 || fmt.Sprint(len(a.Runs)) != fmt.Sprint(2*rnd.Test.N) || fmt.Sprint(rnd.Test.N) != tc.repeats {
				t.Fatalf("summaries %v %v, %d gaps, %d runs", ok1, ok2, len(a.Gaps), len(a.Runs))
			}
			gap := a.Gaps[0].Test
			t.Logf("random %.3f ± %.3f, subject %.3f ± %.3f, gap %.3f [%.3f, %.3f]",
				rnd.Test.Mean, rnd.Test.HalfWidth(), sub.Test.Mean, sub.Test.HalfWidth(), gap.Mean, gap.Low, gap.High)
			if d := rnd.Test.Mean - sub.Test.Mean; d != gap.Mean {
				t.Errorf("gap %v, means differ by %v", gap.Mean, d)
			}
			md, err := os.ReadFile(filepath.Join(out, rundir.AuditMarkdown))
			if err != nil {
				t.Fatal(err)
			}
			if tc.leak {
				// The difference's own interval, as the audit judges it. (Two
				// separate intervals that do not overlap is a stricter rule
				// than the test of the difference; with 6 repeats it sat on
				// its edge: a rounding-level change of the CNN's fc1 moved
				// 0.171 against half-widths of 0.189.)
				if gap.Low <= 0 || rnd.Test.Mean <= sub.Test.Mean {
					t.Errorf("leakage not detected: random %.3f, subject %.3f, gap interval [%.3f, %.3f] not above 0", rnd.Test.Mean, sub.Test.Mean, gap.Low, gap.High)
				}
				if !strings.Contains(a.Findings, "part of its accuracy comes from recognising people") {
					t.Errorf("findings do not report the leak:\n%s", a.Findings)
				}
			} else {
				if !gap.Contains(0) {
					t.Errorf("no identity signal, yet the gap's interval [%.3f, %.3f] excludes 0", gap.Low, gap.High)
				}
				if !strings.Contains(a.Findings, "includes zero") {
					t.Errorf("findings claim a gap:\n%s", a.Findings)
				}
			}
			for _, want := range []string{"| CNN (flat0.4-fc1-0.4) | random | " + tc.repeats + " |", "## Leakage gap", "## Findings",
				"](cnn-subject-r" + tc.repeats + "/report.md)"} {
				if !strings.Contains(string(md), want) {
					t.Errorf("audit.md lacks %q", want)
				}
			}
			if strings.Contains(string(md), "96.09") || strings.Contains(string(md), "aspect |") {
				t.Errorf("an audit of gender labels shows the study's 8-class figure or an aspect column:\n%s", md)
			}
			for _, f := range []string{"audit.png", "audit.svg"} {
				if fi, err := os.Stat(filepath.Join(out, f)); err != nil || fi.Size() < 1000 {
					t.Errorf("%s: %v", f, err)
				}
			}
		})
	}
}

// splitOf reads a run folder's split.csv: image name → part.
func splitOf(t *testing.T, dir string) map[string]string {
	t.Helper()
	f, err := os.Open(filepath.Join(dir, "split.csv"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, r := range rows[1:] {
		m[r[0]] = r[1]
	}
	return m
}

// tensorBytes is a safetensors file's header without its metadata, and
// its tensor data.
func tensorBytes(t *testing.T, path string) (string, []byte) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	n := binary.LittleEndian.Uint64(b[:8])
	var hdr map[string]any
	if err := json.Unmarshal(b[8:8+n], &hdr); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	delete(hdr, "__metadata__")
	h, _ := json.Marshal(hdr)
	return string(h), b[8+n:]
}

// TestAuditShardsResume: an audit run as two shards (one by --shard, one
// as a Slurm array task) writes the same tables and checkpoints as one
// worker; its subject splits never put a person in two parts, in any
// repeat or shard, and repeats draw other splits; an audit interrupted
// after its first run resumes without training that run again, and the
// tables are those of the uninterrupted one.
func TestAuditShardsResume(t *testing.T) {
	data, cache := auditData(t, 96, 8, "1", "0.5")
	dir := t.TempDir()
	args := func(out string) []string {
		return auditArgs(data, cache, out, "--repeats", "2", "--epochs", "1", "--batch-size", "8")
	}
	one, shared := filepath.Join(dir, "one"), filepath.Join(dir, "shared")
	if code := run(args(one)); code != 0 {
		t.Fatalf("audit: exit %d", code)
	}
	w0 := start(t, nil, append(args(shared), "--shard", "0/2")...)
	w1 := start(t, []string{"SLURM_ARRAY_TASK_ID=1", "SLURM_ARRAY_TASK_COUNT=2"}, args(shared)...)
	for i, w := range []*proc{w0, w1} {
		if code := w.wait(t, 5*time.Minute); code != 0 {
			t.Fatalf("worker %d: exit %d\n%s", i, code, w.out.String())
		}
	}
	// One writes the tables; the other either finished first (and leaves
	// them to the last) or finished with it (and finds them written).
	if o0, o1 := w0.out.String(), w1.out.String(); strings.Contains(o0, "tables: ") == strings.Contains(o1, "tables: ") ||
		!strings.Contains(o0+o1, "the last to finish writes") && !strings.Contains(o0+o1, "another worker wrote the tables of these runs: ") {
		t.Errorf("want one worker to write the tables and the other to leave them:\n--- worker 0\n%s\n--- worker 1\n%s", o0, o1)
	}
	for _, f := range []string{rundir.AuditJSON, rundir.AuditMarkdown} {
		a, err1 := os.ReadFile(filepath.Join(one, f))
		b, err2 := os.ReadFile(filepath.Join(shared, f))
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("%s differs between one worker and two shards (%v, %v):\n--- one\n%s\n--- two\n%s", f, err1, err2, a, b)
		}
	}
	a := readAudit(t, one)
	if len(a.Runs) != 4 {
		t.Fatalf("%d runs, want 4", len(a.Runs))
	}
	ds, err := vision.Open(data)
	if err != nil {
		t.Fatal(err)
	}
	person := map[string]string{}
	for _, r := range ds.Records {
		person[r.ImageName] = r.ID
	}
	splits := map[string]map[string]string{}
	for _, r := range a.Runs {
		for _, root := range []string{one, shared} {
			h1, t1 := tensorBytes(t, filepath.Join(one, r.Folder, "best.safetensors"))
			h2, t2 := tensorBytes(t, filepath.Join(root, r.Folder, "best.safetensors"))
			if h1 != h2 || !bytes.Equal(t1, t2) {
				t.Errorf("%s: best.safetensors differs between one worker and two shards", r.Folder)
			}
			sp := splitOf(t, filepath.Join(root, r.Folder))
			if prev, ok := splits[r.Folder]; ok && fmt.Sprint(prev) != fmt.Sprint(sp) {
				t.Errorf("%s: split differs between one worker and two shards", r.Folder)
			}
			splits[r.Folder] = sp
			if r.Protocol != "subject" {
				continue
			}
			parts := map[string]string{}
			for img, part := range sp {
				id := person[img]
				if p, ok := parts[id]; ok && p != part {
					t.Errorf("%s (%s): person %s in %s and %s", r.Folder, root, id, p, part)
				}
				parts[id] = part
			}
		}
	}
	for _, proto := range []string{"random", "subject"} {
		if fmt.Sprint(splits["cnn-"+proto+"-r1"]) == fmt.Sprint(splits["cnn-"+proto+"-r2"]) {
			t.Errorf("%s: repeats 1 and 2 drew the same split", proto)
		}
	}

	// Interrupted after its first run, then resumed.
	resumed := filepath.Join(dir, "resumed")
	p := start(t, nil, auditArgs(data, cache, resumed, "--repeats", "2", "--epochs", "3", "--batch-size", "8")...)
	first := filepath.Join(resumed, "cnn-random-r1")
	waitFile(t, filepath.Join(first, "metrics.json"), 5*time.Minute)
	p.cmd.Process.Signal(syscall.SIGINT)
	code := p.wait(t, 5*time.Minute)
	if code == 0 {
		t.Fatalf("the audit finished before it could be interrupted:\n%s", p.out.String())
	}
	before, err := os.Stat(filepath.Join(first, "best.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(resumed, "cnn-random-r2", "metrics.json")); err == nil {
		t.Fatalf("the last run finished before the interruption")
	}
	p = start(t, nil, auditArgs(data, cache, resumed, "--repeats", "2", "--epochs", "3", "--batch-size", "8")...)
	if code := p.wait(t, 5*time.Minute); code != 0 {
		t.Fatalf("resumed audit: exit %d\n%s", code, p.out.String())
	}
	if strings.Contains(p.out.String(), "cnn random r1] epoch") {
		t.Errorf("the resumed audit trained the finished run again:\n%s", p.out.String())
	}
	if after, err := os.Stat(filepath.Join(first, "best.safetensors")); err != nil || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("the finished run's checkpoint was rewritten (%v)", err)
	}
	full := filepath.Join(dir, "uninterrupted")
	if code := run(auditArgs(data, cache, full, "--repeats", "2", "--epochs", "3", "--batch-size", "8")); code != 0 {
		t.Fatalf("uninterrupted audit: exit %d", code)
	}
	x, _ := os.ReadFile(filepath.Join(resumed, rundir.AuditJSON))
	y, _ := os.ReadFile(filepath.Join(full, rundir.AuditJSON))
	if len(x) == 0 || strings.ReplaceAll(string(x), resumed, "") != strings.ReplaceAll(string(y), full, "") {
		t.Errorf("resumed and uninterrupted audits differ:\n%s\n%s", x, y)
	}
	// Exit codes of bad flags.
	for _, bad := range [][]string{
		{"--models", "vgg"}, {"--models", "resnet18"}, {"--protocols", "stratified"}, {"--repeats", "0"}, {"--split", "subject"},
		{"--labels", "aspect"}, {"--image-size", "10x10"}, {"--level", "1.5"}, {"--cnn-lr", "NaN"}, {"--shard", "2/2"},
	} {
		if code := run(auditArgs(data, cache, filepath.Join(dir, "bad"), bad...)); code != 2 {
			t.Errorf("audit %q: exit %d, want 2", bad, code)
		}
	}
}

// TestAuditResNet: --models cnn,resnet18 audits the four headline
// configurations, ResNet-18 fine-tuned from the given weights (the
// golden fixtures' torchvision-format ResNet-18) under each freeze
// scenario, with the study's figure beside each.
func TestAuditResNet(t *testing.T) {
	dir := os.Getenv("HANDNET_FIXTURES")
	if dir == "" {
		dir = filepath.Join("..", "..", "..", "testdata", "fixtures")
	}
	w := filepath.Join(dir, "resnet18.pth")
	if _, err := os.Stat(w); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("golden fixtures missing in CI (%v): `make test` runs `make fixtures` first", err)
		}
		t.Skipf("golden fixtures missing (%v): run `make fixtures`", err)
	}
	data, cache := auditData(t, 48, 6, "1", "0.5")
	out := filepath.Join(t.TempDir(), "audit")
	if code := run(auditArgs(data, cache, out, "--models", "cnn,resnet18", "--weights", w, "--repeats", "1", "--epochs", "1",
		"--protocols", "subject", "--batch-size", "8")); code != 0 {
		t.Fatalf("audit: exit %d", code)
	}
	a := readAudit(t, out)
	want := map[string]string{"cnn": "96.09 % (test)", "resnet18-fc": "88.64 % (val)", "resnet18-layer4": "99.47 % (val)", "resnet18-none": "99.88 % (test), 99.88 % (val)"}
	if len(a.Summaries) != 4 || len(a.Runs) != 4 || len(a.Gaps) != 0 {
		t.Fatalf("%d summaries, %d runs, %d gaps; want 4, 4, 0", len(a.Summaries), len(a.Runs), len(a.Gaps))
	}
	for _, s := range a.Summaries {
		if s.Published.String() != want[s.Config] || s.Test.N != 1 || s.Test.Defined() {
			t.Errorf("%s: published %s (want %s), n %d", s.Config, s.Published, want[s.Config], s.Test.N)
		}
	}
	for _, r := range a.Runs {
		spec, err := os.ReadFile(filepath.Join(out, r.Folder, "run.json"))
		if err != nil {
			t.Fatal(err)
		}
		if r.Model == "resnet18" && (!strings.Contains(string(spec), `"freeze": "`+r.Freeze+`"`) || !strings.Contains(string(spec), `"weights": "`+w+`"`)) {
			t.Errorf("%s: run.json does not fine-tune from %s with freeze %s:\n%s", r.Folder, w, r.Freeze, spec)
		}
	}
}
