package native

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/sugarme/gotch/ts"
)

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestFeatures(t *testing.T) {
	f := BuildFeatures()
	if !f.Store || f.Torch == "" {
		t.Fatalf("features %+v: want a store and a torch version", f)
	}
	if !f.Gloo && f.Missing["gloo"] == "" {
		t.Errorf("gloo is missing without a reason: %+v", f)
	}
	if s := f.String(); !strings.Contains(s, "store") {
		t.Errorf("String() = %q", s)
	}
}

func TestStore(t *testing.T) {
	port := freePort(t)
	srv, err := NewStore("127.0.0.1", port, true, 2, 5*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	cli, err := NewStore("127.0.0.1", port, false, 2, 5*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	if err := srv.Set("k", []byte("hello\x00world")); err != nil {
		t.Fatal(err)
	}
	got, err := cli.Get("k")
	if err != nil || string(got) != "hello\x00world" {
		t.Fatalf("Get = %q, %v", got, err)
	}
	for i, want := range []int64{3, 7} {
		n, err := []*Store{srv, cli}[i].Add("n", []int64{3, 4}[i])
		if err != nil || n != want {
			t.Fatalf("Add = %d, %v; want %d", n, err, want)
		}
	}
	if ok, err := cli.Check("absent"); err != nil || ok {
		t.Fatalf("Check(absent) = %v, %v", ok, err)
	}
	if ok, err := cli.Check("k"); err != nil || !ok {
		t.Fatalf("Check(k) = %v, %v", ok, err)
	}
	short, err := NewStore("127.0.0.1", port, false, 2, 1500*time.Millisecond, "")
	if err != nil {
		t.Fatal(err)
	}
	defer short.Close()
	start := time.Now()
	if _, err := short.Get("never"); err == nil {
		t.Fatal("Get of a key nobody sets succeeded")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Get waited %v past its 1.5s timeout", d)
	}
	pre, err := NewStore("127.0.0.1", port, false, 2, 5*time.Second, "run/3")
	if err != nil {
		t.Fatal(err)
	}
	defer pre.Close()
	if err := pre.Set("k", []byte("prefixed")); err != nil {
		t.Fatal(err)
	}
	if got, err := cli.Get("run/3/k"); err != nil || string(got) != "prefixed" {
		t.Errorf("a prefixed key reads %q, %v from outside", got, err)
	}
	if got, err := cli.Get("k"); err != nil || string(got) != "hello\x00world" {
		t.Errorf("the prefix leaked: k = %q, %v", got, err)
	}
	srv.Close()
	srv.Close() // twice is fine
	if err := srv.Set("k", nil); err == nil {
		t.Error("Set on a closed store succeeded")
	}
}

func TestStoreConnectFails(t *testing.T) {
	port := freePort(t) // nobody listens there
	start := time.Now()
	_, err := NewStore("127.0.0.1", port, false, 2, 500*time.Millisecond, "")
	if err == nil {
		t.Fatal("connected to a port nobody serves")
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("gave up after %v, timeout 500ms", d)
	}
	if strings.Contains(err.Error(), "frame #") {
		t.Errorf("error carries a C++ backtrace: %v", err)
	}
}

func TestGroupOfOne(t *testing.T) {
	if !BuildFeatures().Gloo {
		t.Skip("built without gloo: " + BuildFeatures().Missing["gloo"])
	}
	port := freePort(t)
	s, err := NewStore("127.0.0.1", port, true, 1, 5*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	g, err := NewGroup("gloo", s, 0, 1, -1, 5*time.Second, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	a := ts.MustOfSlice([]float32{1, 2, 3, 4}).MustView([]int64{2, 2}, true)
	b := ts.MustOfSlice([]float64{5})
	c := ts.MustOfSlice([]float32{6, 7})
	if err := g.AllReduceMean([]*ts.Tensor{a, b, c}, 8); err != nil {
		t.Fatal(err)
	}
	if v := a.Float64Values(); v[0] != 1 || v[3] != 4 {
		t.Errorf("a = %v", v)
	}
	if v := c.Float64Values(); v[1] != 7 {
		t.Errorf("c = %v", v)
	}
	vals := []float64{1.5, -2}
	if err := g.AllReduceSum(vals); err != nil || vals[0] != 1.5 || vals[1] != -2 {
		t.Errorf("AllReduceSum = %v, %v", vals, err)
	}
	if _, err := NewGroup("mpi", s, 0, 1, -1, time.Second, ""); err == nil || !strings.Contains(err.Error(), "want gloo or nccl") {
		t.Errorf("unknown backend: %v", err)
	}
}
