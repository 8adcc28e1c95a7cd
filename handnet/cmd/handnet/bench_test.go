package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet/bench"
)

// handnet bench --json --pytorch: one row per case with the fields the
// issue names, PyTorch's figure and the ratio filled in; without a python
// that has torch, the rows say why PyTorch is missing.
func TestBenchJSON(t *testing.T) {
	args := []string{"bench", "--models", "cnn", "--batch", "4", "--modes", "fp32,bf16+cl+data", "--phases", "train,infer",
		"--warmup", "1", "--steps", "2", "--min-time", "0s", "--threads", "1", "--json", "--pytorch"}
	py, pyErr := bench.FindPython("", false)
	rows := benchRows(t, nil, args)
	if len(rows) != 4 {
		t.Fatalf("%d rows, want 4 (2 modes x 2 phases)", len(rows))
	}
	for _, r := range rows {
		for _, k := range []string{"model", "batch", "mode", "phase", "device", "handnet_images_per_sec", "pytorch_images_per_sec", "ratio"} {
			if _, ok := r[k]; !ok {
				t.Errorf("row %v lacks %q", r, k)
			}
		}
		if r["model"] != "cnn" || r["batch"] != 4.0 || r["device"] != "cpu" || !(r["handnet_images_per_sec"].(float64) > 0) {
			t.Errorf("row %v", r)
		}
		if pyErr != nil {
			t.Logf("no PyTorch here (%v): checking rows without it", pyErr)
			continue
		}
		p, ok := r["pytorch_images_per_sec"].(float64)
		ratio, ok2 := r["ratio"].(float64)
		if !ok || !ok2 || p <= 0 || ratio != r["handnet_images_per_sec"].(float64)/p {
			t.Errorf("row %v: PyTorch %v, ratio %v (python %s)", r, r["pytorch_images_per_sec"], r["ratio"], py)
		}
	}
	// No python with torch: the handnet rows still come, PyTorch's are null
	// with a reason.
	rows = benchRows(t, []string{"HANDNET_PYTHON=/bin/false"}, args)
	for _, r := range rows {
		if r["pytorch_images_per_sec"] != nil || r["ratio"] != nil || !strings.Contains(r["pytorch_note"].(string), "no python3 with torch") {
			t.Errorf("without PyTorch: row %v", r)
		}
	}
}

func benchRows(t *testing.T, env, args []string) []map[string]any {
	t.Helper()
	rows, _ := benchRun(t, env, args)
	return rows
}

// benchRun runs handnet with args and returns its JSON rows and its log.
func benchRun(t *testing.T, env, args []string) ([]map[string]any, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(append(os.Environ(), "HANDNET_TEST_MAIN=1"), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("handnet %q: %v:\n%s", args, err, stderr.String())
		}
	case <-time.After(3 * time.Minute):
		cmd.Process.Kill()
		t.Fatalf("handnet %q still running after 3 minutes:\n%s", args, stderr.String())
	}
	var rows []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var r map[string]any
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("not JSON: %q (%v)", line, err)
		}
		rows = append(rows, r)
	}
	return rows, stderr.String()
}

// With --pytorch, the two sides of a row are measured back to back, and
// with --rounds N alternately N times, each side keeping its best.
func TestBenchInterleaves(t *testing.T) {
	if _, err := bench.FindPython("", false); err != nil {
		t.Skipf("no PyTorch here (make test installs python3-torch): %v", err)
	}
	rows, log := benchRun(t, nil, []string{"bench", "--models", "cnn", "--batch", "2", "--modes", "fp32,bf16", "--phases", "infer",
		"--warmup", "1", "--steps", "2", "--min-time", "0s", "--threads", "1", "--json", "--pytorch", "--rounds", "2"})
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2", len(rows))
	}
	var order []string
	for _, line := range strings.Split(log, "\n") {
		switch {
		case strings.Contains(line, "msg=\"handnet "):
			order = append(order, "handnet "+strings.Fields(line[strings.Index(line, "msg=\"handnet "):])[2])
		case strings.Contains(line, "msg=\"pytorch: "):
			order = append(order, "pytorch "+strings.Fields(line[strings.Index(line, "msg=\"pytorch: "):])[1])
		}
	}
	want := []string{"handnet cnn:2:fp32:infer", "pytorch cnn:2:fp32:infer", "handnet cnn:2:fp32:infer", "pytorch cnn:2:fp32:infer",
		"handnet cnn:2:bf16:infer", "pytorch cnn:2:bf16:infer", "handnet cnn:2:bf16:infer", "pytorch cnn:2:bf16:infer"}
	if strings.Join(order, "; ") != strings.Join(want, "; ") {
		t.Errorf("measured in the order\n  %s\nwant\n  %s\nlog:\n%s", strings.Join(order, "; "), strings.Join(want, "; "), log)
	}
	for _, r := range rows {
		if p, ok := r["pytorch_images_per_sec"].(float64); !ok || p <= 0 || r["ratio"].(float64) != r["handnet_images_per_sec"].(float64)/p {
			t.Errorf("row %v", r)
		}
	}
}

// The predict phase classifies JPEG files end to end on both sides: one row
// per model and batch (fp32 only: the classifier runs its own form), with
// PyTorch + PIL + torchvision's figure beside it.
func TestBenchPredictRow(t *testing.T) {
	if _, err := bench.FindPython("", true); err != nil {
		t.Fatalf("make test installs python3-torchvision: %v", err)
	}
	rows := benchRows(t, nil, []string{"bench", "--models", "cnn", "--batch", "2", "--modes", "fp32,bf16", "--phases", "predict",
		"--warmup", "1", "--steps", "2", "--min-time", "0s", "--threads", "1", "--json", "--pytorch"})
	if len(rows) != 1 {
		t.Fatalf("%d rows, want 1 (predict runs fp32 only): %v", len(rows), rows)
	}
	r := rows[0]
	p, ok := r["pytorch_images_per_sec"].(float64)
	if r["phase"] != "predict" || r["mode"] != "fp32" || !(r["handnet_images_per_sec"].(float64) > 0) || !ok || !(p > 0) {
		t.Errorf("predict row %v", r)
	}
}
