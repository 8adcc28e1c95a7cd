package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// TestServeExample checks tools/launch/k8s/serve.yaml against what handnet
// serve does: a Deployment of the image with readiness on /readyz, liveness
// on /healthz, Prometheus annotations for /metrics on the port it listens
// on, resource requests, a termination grace period longer than --drain, and
// a Service that selects its pods. TestLaunchExamples parses its command.
func TestServeExample(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(launchDir, "k8s", "serve.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]any{}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var doc map[string]any
		if err := dec.Decode(&doc); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		kinds[fmt.Sprint(doc["apiVersion"], " ", doc["kind"])] = doc
	}
	get := func(v any, path ...any) any {
		for _, p := range path {
			switch k := p.(type) {
			case string:
				m, _ := v.(map[string]any)
				v = m[k]
			case int:
				l, _ := v.([]any)
				if k >= len(l) {
					return nil
				}
				v = l[k]
			}
		}
		return v
	}
	dep, svc := kinds["apps/v1 Deployment"], kinds["v1 Service"]
	if dep == nil || svc == nil {
		t.Fatalf("want an apps/v1 Deployment and a v1 Service, got %v", kinds)
	}
	pod := get(dep, "spec", "template")
	c := get(pod, "spec", "containers", 0)
	var args []string
	for _, a := range get(c, "args").([]any) {
		args = append(args, a.(string))
	}
	if len(args) == 0 || args[0] != "serve" {
		t.Fatalf("the container does not run handnet serve: %v", args)
	}
	flag := func(name, def string) string {
		for i, a := range args {
			if a == name && i+1 < len(args) {
				return args[i+1]
			} else if v, ok := strings.CutPrefix(a, name+"="); ok {
				return v
			}
		}
		return def
	}
	port := get(c, "ports", 0, "containerPort")
	if addr := flag("--addr", ":8080"); !strings.HasSuffix(addr, fmt.Sprintf(":%v", port)) || get(c, "ports", 0, "name") != "http" {
		t.Errorf("serve listens on %s, the container's port http is %v", addr, port)
	}
	for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		if get(c, probe, "httpGet", "path") != path || get(c, probe, "httpGet", "port") != "http" {
			t.Errorf("%s: want GET %s on port http, got %v", probe, path, get(c, probe))
		}
	}
	ann := get(pod, "metadata", "annotations")
	if get(ann, "prometheus.io/scrape") != "true" || get(ann, "prometheus.io/path") != "/metrics" || get(ann, "prometheus.io/port") != fmt.Sprint(port) {
		t.Errorf("want Prometheus scrape annotations for /metrics on port %v, got %v", port, ann)
	}
	if get(c, "resources", "requests", "cpu") == nil || get(c, "resources", "requests", "memory") == nil {
		t.Errorf("want cpu and memory requests, got %v", get(c, "resources"))
	}
	drain, err := time.ParseDuration(flag("--drain", "10s"))
	if err != nil {
		t.Fatal(err)
	}
	grace, _ := get(pod, "spec", "terminationGracePeriodSeconds").(int)
	if time.Duration(grace)*time.Second <= drain {
		t.Errorf("terminationGracePeriodSeconds %d does not leave --drain %v to finish in-flight requests", grace, drain)
	}
	if fmt.Sprint(get(svc, "spec", "selector")) != fmt.Sprint(get(pod, "metadata", "labels")) || get(svc, "spec", "ports", 0, "targetPort") != "http" {
		t.Errorf("the Service does not select the pods' port http: %v", get(svc, "spec"))
	}
}
