package dist

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

func mapEnv(m map[string]string) Getenv { return func(k string) string { return m[k] } }

func TestFromEnv(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want Env
		ok   bool
		err  string
	}{
		{name: "single process", env: map[string]string{}, ok: false},
		{name: "torchrun", env: map[string]string{"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
			"MASTER_ADDR": "node0", "MASTER_PORT": "29500", "TORCHELASTIC_RUN_ID": "x", "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_RESTART_COUNT": "2"},
			want: Env{Rank: 3, WorldSize: 8, LocalRank: 1, LocalWorldSize: 2, MasterAddr: "node0", MasterPort: 29500, AgentStore: true, Attempt: 2, Restarted: true, Launcher: "torchrun"}, ok: true},
		{name: "kubeflow pytorchjob", env: map[string]string{"RANK": "1", "WORLD_SIZE": "4", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456"},
			want: Env{Rank: 1, WorldSize: 4, LocalRank: 0, LocalWorldSize: 1, MasterAddr: "job-master-0", MasterPort: 23456, Launcher: "env"}, ok: true},
		{name: "slurm", env: map[string]string{"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_TASKS_PER_NODE": "4(x2)",
			"MASTER_ADDR": "n1", "MASTER_PORT": "29400"},
			want: Env{Rank: 5, WorldSize: 8, LocalRank: 1, LocalWorldSize: 4, MasterAddr: "n1", MasterPort: 29400, Launcher: "slurm"}, ok: true},
		{name: "slurm requeued", env: map[string]string{"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_RESTART_COUNT": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "29400"},
			want: Env{Rank: 1, WorldSize: 2, LocalWorldSize: 1, MasterAddr: "n1", MasterPort: 29400, Attempt: 1, Restarted: true, Launcher: "slurm"}, ok: true},
		{name: "slurm one task", env: map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, ok: false},
		{name: "no master addr", env: map[string]string{"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "1"}, err: "MASTER_ADDR is not set"},
		{name: "bad port", env: map[string]string{"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "99999"}, err: `MASTER_PORT="99999"`},
		{name: "rank too big", env: map[string]string{"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, err: "rank 2 is not below the world size 2"},
		{name: "bad rank", env: map[string]string{"RANK": "one", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, err: `RANK="one"`},
		{name: "slurm without master", env: map[string]string{"SLURM_PROCID": "0", "SLURM_NTASKS": "2"}, err: "scontrol show hostnames"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok, err := FromEnv(mapEnv(tt.env))
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("error %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil || ok != tt.ok {
				t.Fatalf("ok %v, err %v; want ok %v", ok, err, tt.ok)
			}
			if ok && !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseBackend(t *testing.T) {
	cuda := gotch.CudaBuilder(0)
	for _, tt := range []struct {
		name string
		dev  gotch.Device
		want string
		err  bool
	}{{"auto", gotch.CPU, "gloo", false}, {"", cuda, "nccl", false}, {"gloo", cuda, "gloo", false}, {"nccl", gotch.CPU, "", true}, {"mpi", gotch.CPU, "", true}} {
		got, err := ParseBackend(tt.name, tt.dev)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseBackend(%q, %v) = %q, %v", tt.name, tt.dev, got, err)
		}
	}
}

// The rank programs below run in processes of their own: the test binary
// started again with HANDNET_DIST_TEST naming the program.
var rankPrograms = map[string]func(g *Group) error{
	"collectives": func(g *Group) error {
		r := float32(g.Rank())
		a := ts.MustOfSlice([]float32{r, 10 * r, 1})
		b := ts.MustOfSlice([]float64{float64(r * r)})
		if err := g.AllReduceMean([]*ts.Tensor{a, b}, "the test all-reduce"); err != nil {
			return err
		}
		w := ts.MustOfSlice([]float32{r + 1, r + 2})
		if err := g.Broadcast([]*ts.Tensor{w}, "the test broadcast"); err != nil {
			return err
		}
		v := []float64{float64(g.Rank()), 1}
		if err := g.AllReduceSum(v, "the test sum"); err != nil {
			return err
		}
		got, err := g.Share("greeting", "the test share", []byte(fmt.Sprintf("from rank %d", g.Rank())))
		if err != nil {
			return err
		}
		fmt.Printf("RESULT a=%v b=%v w=%v v=%v share=%q\n", a.Float64Values(), b.Float64Values(), w.Float64Values(), v, got)
		return nil
	},
	// rank 1 dies after the rendezvous, rank 0 waits in an all-reduce.
	"die": func(g *Group) error {
		if g.Rank() == 1 {
			time.Sleep(300 * time.Millisecond)
			os.Exit(3)
		}
		return g.AllReduceMean([]*ts.Tensor{ts.MustOfSlice([]float32{1})}, "the gradient all-reduce of epoch 1, batch 7")
	},
	// rank 1 stays alive but never calls the collective.
	"hang": func(g *Group) error {
		if g.Rank() == 1 {
			g.setWhat("epoch 1, batch 5")
			time.Sleep(time.Minute)
			return nil
		}
		return g.AllReduceMean([]*ts.Tensor{ts.MustOfSlice([]float32{1})}, "the gradient all-reduce of epoch 1, batch 7")
	},
	// rank 1 fails with an error, rank 0 waits for a shared value.
	"fail": func(g *Group) error {
		if g.Rank() == 0 {
			_, err := g.Share("never", "rank 1's answer", nil)
			if g.Rank() == 0 {
				// rank 0 is the publisher of shares; wait in a collective instead.
				err = g.AllReduceMean([]*ts.Tensor{ts.MustOfSlice([]float32{1})}, "the metrics all-reduce")
			}
			return err
		}
		err := fmt.Errorf("cannot read Hands/Hand_0000007.jpg: corrupt JPEG")
		g.Abort(err)
		return err
	},
}

func TestMain(m *testing.M) {
	if name := os.Getenv("HANDNET_DIST_TEST"); name != "" {
		os.Exit(rankMain(name))
	}
	os.Exit(m.Run())
}

func rankMain(name string) int {
	env, ok, err := FromEnv(os.Getenv)
	if err != nil || !ok {
		fmt.Fprintln(os.Stderr, "no distributed environment:", err)
		return 2
	}
	timeout, _ := time.ParseDuration(os.Getenv("HANDNET_DIST_TEST_TIMEOUT"))
	start := time.Now()
	g, err := Join(env, Options{Device: gotch.CPU, Timeout: timeout, Heartbeat: 200 * time.Millisecond})
	if err != nil {
		fmt.Fprintf(os.Stderr, "ERROR after %.1fs: %v\n", time.Since(start).Seconds(), err)
		return 1
	}
	err = rankPrograms[name](g)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ERROR after %.1fs: %v\n", time.Since(start).Seconds(), err)
		g.Abort(err)
		return 1
	}
	g.Close()
	return 0
}

func testPort(t *testing.T) int {
	p, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

type rankRun struct {
	cmd *exec.Cmd
	out bytes.Buffer
}

// startRanks starts the given ranks of a world of size n running program.
func startRanks(t *testing.T, program string, n int, ranks []int, timeout time.Duration) []*rankRun {
	t.Helper()
	if !native.BuildFeatures().Gloo {
		t.Skip("built without gloo: " + native.BuildFeatures().Missing["gloo"])
	}
	port := testPort(t)
	var runs []*rankRun
	for _, r := range ranks {
		rr := &rankRun{cmd: exec.Command(os.Args[0], "-test.run=^$")}
		e := Env{Rank: r, WorldSize: n, LocalRank: r, LocalWorldSize: n, MasterAddr: "127.0.0.1", MasterPort: port}
		rr.cmd.Env = append(append(os.Environ(), e.Variables()...), "HANDNET_DIST_TEST="+program, "HANDNET_DIST_TEST_TIMEOUT="+timeout.String())
		rr.cmd.Stdout, rr.cmd.Stderr = &rr.out, &rr.out
		if err := rr.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { rr.cmd.Process.Kill() })
		runs = append(runs, rr)
	}
	return runs
}

func (rr *rankRun) wait(t *testing.T, limit time.Duration) (code int, took time.Duration) {
	t.Helper()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- rr.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(limit):
		rr.cmd.Process.Kill()
		<-done
		t.Fatalf("still running after %v:\n%s", limit, rr.out.String())
	}
	return rr.cmd.ProcessState.ExitCode(), time.Since(start)
}

func TestCollectivesAcrossProcesses(t *testing.T) {
	runs := startRanks(t, "collectives", 2, []int{0, 1}, 30*time.Second)
	for r, rr := range runs {
		if code, _ := rr.wait(t, time.Minute); code != 0 {
			t.Fatalf("rank %d exited %d:\n%s", r, code, rr.out.String())
		}
		// Means over ranks 0 and 1, rank 0's broadcast, sums, rank 0's share.
		want := `RESULT a=[0.5 5 1] b=[0.5] w=[1 2] v=[1 2] share="from rank 0"`
		if !strings.Contains(rr.out.String(), want) {
			t.Errorf("rank %d printed:\n%s\nwant %s", r, rr.out.String(), want)
		}
	}
}

func errorLine(out string) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "ERROR") {
			return l
		}
	}
	return ""
}

func TestPeerDiesNamed(t *testing.T) {
	runs := startRanks(t, "die", 2, []int{0, 1}, 20*time.Second)
	code, took := runs[0].wait(t, time.Minute)
	line := errorLine(runs[0].out.String())
	if code != 1 || !strings.Contains(line, "rank(s) 1 stopped responding") || !strings.Contains(line, "the gradient all-reduce of epoch 1, batch 7") {
		t.Fatalf("rank 0: exit %d, %q\n%s", code, line, runs[0].out.String())
	}
	if took > 20*time.Second {
		t.Errorf("rank 0 took %v to notice a dead peer", took)
	}
	t.Logf("rank 0 (%.1fs): %s", took.Seconds(), line)
}

func TestPeerHangsNamed(t *testing.T) {
	timeout := 4 * time.Second
	runs := startRanks(t, "hang", 2, []int{0, 1}, timeout)
	code, took := runs[0].wait(t, time.Minute)
	line := errorLine(runs[0].out.String())
	if code != 1 || !strings.Contains(line, "rank 1 (alive, still in epoch 1, batch 5) never joined the gradient all-reduce of epoch 1, batch 7") {
		t.Fatalf("rank 0: exit %d, %q\n%s", code, line, runs[0].out.String())
	}
	if took > 4*timeout {
		t.Errorf("rank 0 took %v with a %v timeout", took, timeout)
	}
	t.Logf("rank 0 (%.1fs): %s", took.Seconds(), line)
}

func TestPeerFailureNamed(t *testing.T) {
	runs := startRanks(t, "fail", 2, []int{0, 1}, 20*time.Second)
	code, took := runs[0].wait(t, time.Minute)
	line := errorLine(runs[0].out.String())
	if code != 1 || !strings.Contains(line, "rank 1 failed: cannot read Hands/Hand_0000007.jpg: corrupt JPEG") {
		t.Fatalf("rank 0: exit %d, %q\n%s", code, line, runs[0].out.String())
	}
	t.Logf("rank 0 (%.1fs): %s", took.Seconds(), line)
}

func TestLoneRankWaitsThenNamesMissing(t *testing.T) {
	timeout := 3 * time.Second
	runs := startRanks(t, "collectives", 3, []int{0}, timeout)
	code, took := runs[0].wait(t, time.Minute)
	line := errorLine(runs[0].out.String())
	if code != 1 || !strings.Contains(line, "rank(s) 1, 2 of 3 did not arrive within 3s") {
		t.Fatalf("exit %d, %q\n%s", code, line, runs[0].out.String())
	}
	if took < timeout || took > timeout+10*time.Second {
		t.Errorf("gave up after %v, timeout %v", took, timeout)
	}
}

func TestLaunch(t *testing.T) {
	if !native.BuildFeatures().Gloo {
		t.Skip("built without gloo")
	}
	var out, errOut bytes.Buffer
	err := Launch(context.Background(), LaunchOptions{NProc: 2, Args: []string{"-test.run=^$"}, Stdout: &out, Stderr: &errOut,
		Env: []string{"HANDNET_DIST_TEST=collectives", "HANDNET_DIST_TEST_TIMEOUT=30s"}})
	if err != nil {
		t.Fatalf("%v\n%s%s", err, out.String(), errOut.String())
	}
	if n := strings.Count(out.String(), "RESULT a=[0.5 5 1]"); n != 2 || !strings.Contains(out.String(), "[rank 1] RESULT") {
		t.Errorf("want both ranks' results, rank 1's prefixed:\n%s\n%s", out.String(), errOut.String())
	}
	// A failing rank stops the others and is named.
	start := time.Now()
	err = Launch(context.Background(), LaunchOptions{NProc: 2, Args: []string{"-test.run=^$"}, Stdout: &out, Stderr: &errOut, Grace: 5 * time.Second,
		Env: []string{"HANDNET_DIST_TEST=hang", "HANDNET_DIST_TEST_TIMEOUT=3s"}})
	re, ok := err.(*RankError)
	if !ok || re.Rank != 0 || !strings.Contains(err.Error(), "exited with status 1") {
		t.Fatalf("err = %v, want rank 0's failure", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("took %v: the hung rank 1 was not stopped", d)
	}
	// An interrupt is passed on.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err = Launch(ctx, LaunchOptions{NProc: 2, Args: []string{"-test.run=^$"}, Stdout: &out, Stderr: &errOut, Grace: 2 * time.Second,
		Env: []string{"HANDNET_DIST_TEST=hang", "HANDNET_DIST_TEST_TIMEOUT=60s"}})
	if err != ErrInterrupted {
		t.Fatalf("err = %v, want ErrInterrupted", err)
	}
}

func TestGlooAddress(t *testing.T) {
	lo := []net.IP{net.ParseIP("127.0.0.1")}
	for _, c := range []struct {
		name   string
		e      Env
		ips    []net.IP
		ifname string
		want   string
	}{
		{"loopback master", Env{WorldSize: 2, LocalWorldSize: 1, MasterAddr: "localhost", MasterPort: 1}, lo, "", "127.0.0.1"},
		{"one machine", Env{WorldSize: 2, LocalWorldSize: 2, MasterAddr: "10.231.0.1", MasterPort: 1}, []net.IP{net.ParseIP("10.231.0.1")}, "", ""},
		{"GLOO_SOCKET_IFNAME", Env{WorldSize: 2, LocalWorldSize: 1, MasterAddr: "10.231.0.1", MasterPort: 1}, []net.IP{net.ParseIP("10.231.0.1")}, "eth0", ""},
	} {
		if got, err := glooAddress(c.e, c.ips, c.ifname); err != nil || got != c.want {
			t.Errorf("%s: got %q, %v; want %q", c.name, got, err, c.want)
		}
	}
}
