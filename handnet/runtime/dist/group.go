package dist

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// DefaultTimeout is how long a rank waits for a silent peer, a collective
// or the rendezvous before it gives up (torch.distributed's default too).
const DefaultTimeout = 10 * time.Minute

// DefaultBucketBytes is the gradient bucket size (DDP's bucket_cap_mb, 25).
const DefaultBucketBytes = 25 << 20

// Options configures Join.
type Options struct {
	Backend     string        // "gloo", "nccl", or "" / "auto": NCCL on CUDA, Gloo on the CPU
	Device      gotch.Device  // this rank's device
	Timeout     time.Duration // 0: DefaultTimeout
	BucketBytes int64         // 0: DefaultBucketBytes
	// Heartbeat is how often a rank tells the others it is alive (0: 1s).
	Heartbeat time.Duration
	// Config is the run's configuration as this rank was started with it
	// (flag → value, without what may differ per rank: paths, device,
	// threads). Join compares every rank's with rank 0's and fails on
	// every rank, naming the differences.
	Config map[string]string
	Logf   func(format string, args ...any)
}

// ParseBackend reads --dist-backend: auto, gloo or nccl. auto is NCCL on a
// CUDA device and Gloo on the CPU.
func ParseBackend(name string, device gotch.Device) (string, error) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "", "auto":
		if device.IsCuda() {
			return "nccl", nil
		}
		return "gloo", nil
	case "gloo":
		return "gloo", nil
	case "nccl":
		if !device.IsCuda() {
			return "", fmt.Errorf("backend nccl needs a CUDA device (this rank uses %s); use gloo on the CPU", torch.DeviceName(device))
		}
		return "nccl", nil
	}
	return "", fmt.Errorf("backend %q: want auto, gloo or nccl", name)
}

// Group is this process's membership of a distributed run: the store every
// rank shares and a c10d process group. Collectives must be called in the
// same order on every rank, from one goroutine at a time.
type Group struct {
	env     Env
	o       Options
	backend string
	store   *native.Store // rendezvous and shared values
	beats   *native.Store // heartbeats, on a connection of their own
	pg      *native.Group

	seq     atomic.Int64           // collectives entered
	what    atomic.Pointer[string] // what this rank waits in now
	stop    chan struct{}
	stopped sync.WaitGroup
	closed  atomic.Bool
}

// Join rendezvouses with the other ranks at MASTER_ADDR:MASTER_PORT (rank 0
// serves the store unless torchrun's agent does) and creates the process
// group. It fails, naming the missing ranks, when they have not all arrived
// within the timeout.
func Join(e Env, o Options) (*Group, error) {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.BucketBytes <= 0 {
		o.BucketBytes = DefaultBucketBytes
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = time.Second
	}
	backend, err := ParseBackend(o.Backend, o.Device)
	if err != nil {
		return nil, err
	}
	f := native.BuildFeatures()
	if backend == "gloo" && !f.Gloo || backend == "nccl" && !f.NCCL {
		return nil, fmt.Errorf("this handnet was built without c10d's %s backend (%s); rebuild after installing what it needs (make setup says which)", backend, f.Missing[backend])
	}
	// Every wait below is bounded by the timeout; a host name that does not
	// resolve would make c10d retry for all of it, so look it up first.
	masterIPs, err := lookupMaster(e)
	if err != nil {
		return nil, err
	}
	glooHost, err := glooAddress(e, masterIPs, os.Getenv("GLOO_SOCKET_IFNAME"))
	if err != nil {
		return nil, err
	}
	g := &Group{env: e, o: o, backend: backend, stop: make(chan struct{})}
	g.setWhat("the rendezvous")
	prefix := "handnet/" + strconv.Itoa(e.Attempt)
	server := e.Rank == 0 && !e.AgentStore
	start := time.Now()
	if !server {
		g.logf("rank %d: connecting to the rendezvous store at %s (up to %v)", e.Rank, e.Endpoint(), o.Timeout)
	}
	g.store, err = native.NewStore(e.MasterAddr, e.MasterPort, server, e.WorldSize, o.Timeout, prefix)
	if err != nil {
		if server {
			return nil, fmt.Errorf("rank 0 cannot serve the rendezvous store on %s: %v (is MASTER_PORT %d taken by another program? choose another)", e.Endpoint(), err, e.MasterPort)
		}
		return nil, fmt.Errorf("rendezvous at %s: rank %d could not reach the store within %v: rank 0 (or torchrun's agent) never served it (%v)", e.Endpoint(), e.Rank, o.Timeout, err)
	}
	if cfg, err := json.Marshal(o.Config); err != nil {
		g.closeStores()
		return nil, err
	} else if err := g.store.Set(fmt.Sprintf("config/%d", e.Rank), cfg); err != nil {
		g.closeStores()
		return nil, fmt.Errorf("rendezvous at %s: %w", e.Endpoint(), err)
	}
	host, _ := os.Hostname()
	if err := g.store.Set(fmt.Sprintf("arrived/%d", e.Rank), []byte(fmt.Sprintf("%s pid %d", host, os.Getpid()))); err != nil {
		g.closeStores()
		return nil, fmt.Errorf("rendezvous at %s: %w", e.Endpoint(), err)
	}
	if _, err := g.store.Add("arrivals", 1); err != nil {
		g.closeStores()
		return nil, fmt.Errorf("rendezvous at %s: %w", e.Endpoint(), err)
	}
	if err := g.awaitArrivals(start); err != nil {
		g.closeStores()
		return nil, err
	}
	if err := g.compareConfigs(); err != nil {
		_ = g.store.Set(fmt.Sprintf("compared/%d", e.Rank), []byte("1"))
		if server { // the others read rank 0's configuration from its store
			g.awaitKeys("compared/", 5*time.Second)
		}
		g.closeStores()
		return nil, err
	}
	_ = g.store.Set(fmt.Sprintf("compared/%d", e.Rank), []byte("1"))
	beatTimeout := min(o.Timeout, 10*time.Second)
	if g.beats, err = native.NewStore(e.MasterAddr, e.MasterPort, false, e.WorldSize, beatTimeout, prefix); err != nil {
		g.closeStores()
		return nil, fmt.Errorf("rendezvous at %s: heartbeat connection: %w", e.Endpoint(), err)
	}
	g.stopped.Add(1)
	go g.heartbeat()
	device := -1
	if o.Device.IsCuda() {
		device = o.Device.Value
	}
	if glooHost != "" && !isLoopbackIPs(masterIPs) {
		g.logf("rank %d: gloo talks on %s, the address that routes to MASTER_ADDR %s (set GLOO_SOCKET_IFNAME to choose the interface)", e.Rank, glooHost, e.MasterAddr)
	}
	g.setWhat("the creation of the " + backend + " process group")
	if g.pg, err = native.NewGroup(backend, g.store, e.Rank, e.WorldSize, device, o.Timeout, glooHost); err != nil {
		err = g.explain(err, "the creation of the "+backend+" process group")
		g.Close()
		return nil, err
	}
	g.setWhat("")
	g.logf("rank %d of %d joined at %s (%s, %s) in %.1fs", e.Rank, e.WorldSize, e.Endpoint(), backend, torch.DeviceName(o.Device), time.Since(start).Seconds())
	return g, nil
}

func (g *Group) logf(format string, args ...any) {
	if g.o.Logf != nil {
		g.o.Logf(format, args...)
	}
}

// awaitArrivals waits until every rank has set its arrival key.
func (g *Group) awaitArrivals(start time.Time) error {
	deadline := start.Add(g.o.Timeout)
	// Who is missing, as last seen: at the deadline rank 0 may already be
	// gone with its store.
	missing := func() []string {
		var out []string
		for r := range g.env.WorldSize {
			ok, err := g.store.Check(fmt.Sprintf("arrived/%d", r))
			if err != nil {
				return nil
			}
			if !ok {
				out = append(out, strconv.Itoa(r))
			}
		}
		return out
	}
	var lastMissing []string
	for i := 0; ; i++ {
		n, err := g.store.Add("arrivals", 0)
		if err != nil && len(lastMissing) > 0 {
			return fmt.Errorf("rendezvous at %s: rank(s) %s of %d did not arrive, and the store closed (its server gave up waiting; this is rank %d): start every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, or raise --dist-timeout (%v)",
				g.env.Endpoint(), strings.Join(lastMissing, ", "), g.env.WorldSize, g.env.Rank, err)
		}
		if err != nil {
			return fmt.Errorf("rendezvous at %s: %w", g.env.Endpoint(), err)
		}
		if int(n) >= g.env.WorldSize {
			return nil
		}
		if i%20 == 0 {
			if m := missing(); m != nil {
				lastMissing = m
			}
		}
		if time.Now().After(deadline) {
			if m := missing(); m != nil {
				lastMissing = m
			}
			who := fmt.Sprintf("rank(s) %s of %d", strings.Join(lastMissing, ", "), g.env.WorldSize)
			if len(lastMissing) == 0 {
				who = fmt.Sprintf("only %d of %d ranks arrived: the others", n, g.env.WorldSize)
			}
			return fmt.Errorf("rendezvous at %s: %s did not arrive within %v (this is rank %d); start every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, or raise --dist-timeout",
				g.env.Endpoint(), who, g.o.Timeout, g.env.Rank)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// compareConfigs compares this rank's configuration with rank 0's (rank 0:
// with every rank's), once all have arrived.
func (g *Group) compareConfigs() error {
	read := func(r int) (map[string]string, error) {
		b, err := g.store.Get(fmt.Sprintf("config/%d", r))
		if err != nil {
			return nil, fmt.Errorf("rendezvous at %s: configuration of rank %d: %w", g.env.Endpoint(), r, err)
		}
		var m map[string]string
		if err := json.Unmarshal(b, &m); err != nil {
			return nil, fmt.Errorf("rendezvous: configuration of rank %d: %w", r, err)
		}
		return m, nil
	}
	others := []int{0}
	if g.env.Rank == 0 {
		others = others[:0]
		for r := 1; r < g.env.WorldSize; r++ {
			others = append(others, r)
		}
	}
	mine := g.o.Config
	var diffs []string
	for _, r := range others {
		theirs, err := read(r)
		if err != nil {
			return err
		}
		keys := map[string]bool{}
		for k := range mine {
			keys[k] = true
		}
		for k := range theirs {
			keys[k] = true
		}
		var names []string
		for k := range keys {
			if mine[k] != theirs[k] {
				names = append(names, k)
			}
		}
		sort.Strings(names)
		for _, k := range names {
			diffs = append(diffs, fmt.Sprintf("--%s %s on rank %d, %s on rank %d", k, show(mine[k]), g.env.Rank, show(theirs[k]), r))
		}
	}
	if len(diffs) > 0 {
		return fmt.Errorf("the ranks were started with different settings (%s): start every rank with the same command", strings.Join(diffs, "; "))
	}
	return nil
}

// awaitKeys waits up to d until every other rank has set prefix+rank.
func (g *Group) awaitKeys(prefix string, d time.Duration) {
	deadline := time.Now().Add(d)
	for r := 0; r < g.env.WorldSize && time.Now().Before(deadline); {
		if ok, err := g.store.Check(prefix + strconv.Itoa(r)); err != nil || ok || r == g.env.Rank {
			r++
			continue
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func show(v string) string {
	if v == "" {
		return `""`
	}
	return v
}

func (g *Group) setWhat(s string) { g.what.Store(&s) }

// heartbeat publishes, every Heartbeat, a counter and where this rank is
// (collectives entered, and what it waits in), so that a rank whose peer
// fails can tell which peer stopped and where.
func (g *Group) heartbeat() {
	defer g.stopped.Done()
	t := time.NewTicker(g.o.Heartbeat)
	defer t.Stop()
	key := fmt.Sprintf("beat/%d", g.env.Rank)
	for beat := 1; ; beat++ {
		what := ""
		if p := g.what.Load(); p != nil {
			what = *p
		}
		// A lost store shows up in the collectives; nothing to do here.
		_ = g.beats.Set(key, []byte(fmt.Sprintf("%d %d %s", beat, g.seq.Load(), what)))
		select {
		case <-g.stop:
			return
		case <-t.C:
		}
	}
}

type beat struct {
	count, seq int64
	what       string
}

func (g *Group) readBeats() (map[int]beat, error) {
	out := map[int]beat{}
	for r := range g.env.WorldSize {
		ok, err := g.beats.Check(fmt.Sprintf("beat/%d", r))
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		v, err := g.beats.Get(fmt.Sprintf("beat/%d", r))
		if err != nil {
			return nil, err
		}
		f := strings.SplitN(string(v), " ", 3)
		var b beat
		b.count, _ = strconv.ParseInt(f[0], 10, 64)
		if len(f) > 1 {
			b.seq, _ = strconv.ParseInt(f[1], 10, 64)
		}
		if len(f) > 2 {
			b.what = f[2]
		}
		out[r] = b
	}
	return out, nil
}

// explain turns the error of something this rank waited in into one that
// names the peer responsible: a rank that reported a failure, a rank whose
// heartbeat stopped (dead or frozen), a rank that lags behind in the
// collectives (hung), or rank 0 when the store it serves is gone.
func (g *Group) explain(err error, what string) error {
	// Finding out who is responsible asks the store, which may itself be
	// unreachable (a cut link): at most explainBudget on top of the wait.
	ch := make(chan error, 1)
	go func() { ch <- g.explainSlowly(err, what) }()
	select {
	case e := <-ch:
		return e
	case <-time.After(explainBudget):
		return fmt.Errorf("rank %d, waiting in %s: %v; the rendezvous store at %s does not answer either (rank 0's host unreachable, or gone)", g.env.Rank, what, err, g.env.Endpoint())
	}
}

// explainBudget bounds explain; abortBudget the announcement of a failure
// and the heartbeat's last beat when leaving.
const (
	explainBudget = 4 * time.Second
	abortBudget   = time.Second
	closeBudget   = 6 * time.Second // rank 0 waits for the others to leave
)

// bounded runs f, returning after at most d even if f is still blocked in
// the store (it then finishes, or not, on its own).
func bounded(d time.Duration, f func()) {
	done := make(chan struct{})
	go func() { f(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
	}
}

func (g *Group) explainSlowly(err error, what string) error {
	me := g.env.Rank
	if g.beats == nil {
		return fmt.Errorf("rank %d, waiting in %s: %w", me, what, err)
	}
	failed := map[int]string{}
	for r := range g.env.WorldSize {
		if r == me {
			continue
		}
		if ok, e := g.beats.Check(fmt.Sprintf("failed/%d", r)); e == nil && ok {
			if v, e := g.beats.Get(fmt.Sprintf("failed/%d", r)); e == nil {
				failed[r] = string(v)
			}
		}
	}
	if len(failed) > 0 {
		var parts []string
		for _, r := range sortedKeys(failed) {
			parts = append(parts, fmt.Sprintf("rank %d failed: %s", r, failed[r]))
		}
		return fmt.Errorf("%s; rank %d stopped waiting in %s (%v)", strings.Join(parts, "; "), me, what, err)
	}
	first, e := g.readBeats()
	if e != nil {
		if g.env.AgentStore {
			return fmt.Errorf("rank %d lost the rendezvous store at %s (torchrun's agent) while waiting in %s: %v", me, g.env.Endpoint(), what, err)
		}
		return fmt.Errorf("rank 0 is gone: rank %d lost the rendezvous store it served at %s while waiting in %s (%v)", me, g.env.Endpoint(), what, err)
	}
	time.Sleep(g.o.Heartbeat*5/2 + 100*time.Millisecond)
	second, e := g.readBeats()
	if e != nil {
		return fmt.Errorf("rank 0 is gone: rank %d lost the rendezvous store it served at %s while waiting in %s (%v)", me, g.env.Endpoint(), what, err)
	}
	var silent, behind []string
	mySeq := g.seq.Load()
	for r := range g.env.WorldSize {
		if r == me {
			continue
		}
		a, okA := first[r]
		b, okB := second[r]
		switch {
		case !okB || okA && a.count == b.count:
			silent = append(silent, strconv.Itoa(r))
		case b.seq < mySeq:
			w := b.what
			if w == "" {
				w = "its own work"
			}
			behind = append(behind, fmt.Sprintf("rank %d (alive, still in %s)", r, w))
		}
	}
	switch {
	case len(silent) > 0:
		return fmt.Errorf("rank(s) %s stopped responding (exited, crashed or frozen) while rank %d waited in %s (%v)", strings.Join(silent, ", "), me, what, err)
	case len(behind) > 0:
		return fmt.Errorf("%s never joined %s: rank %d gave up after %v (%v)", strings.Join(behind, ", "), what, me, g.o.Timeout, err)
	}
	return fmt.Errorf("rank %d, in %s: %w", me, what, err)
}

func sortedKeys(m map[int]string) []int {
	k := make([]int, 0, len(m))
	for r := range m {
		k = append(k, r)
	}
	sort.Ints(k)
	return k
}

// Rank is this process's rank.
func (g *Group) Rank() int { return g.env.Rank }

// Size is the number of ranks.
func (g *Group) Size() int { return g.env.WorldSize }

// Env returns the launch environment.
func (g *Group) Env() Env { return g.env }

// Backend is "gloo" or "nccl".
func (g *Group) Backend() string { return g.backend }

func (g *Group) enter(what string) {
	g.seq.Add(1)
	g.setWhat(what)
}

// AllReduceMean averages tensors in place over the ranks, in flattened
// buckets. what names the collective in errors ("the gradient all-reduce of
// epoch 2, batch 17").
func (g *Group) AllReduceMean(tensors []*ts.Tensor, what string) error {
	g.enter(what)
	defer g.setWhat("")
	if err := g.pg.AllReduceMean(tensors, g.o.BucketBytes); err != nil {
		return g.explain(err, what)
	}
	return nil
}

// Broadcast copies rank 0's tensors into every rank's.
func (g *Group) Broadcast(tensors []*ts.Tensor, what string) error {
	g.enter(what)
	defer g.setWhat("")
	if err := g.pg.Broadcast(tensors, 0, g.o.BucketBytes); err != nil {
		return g.explain(err, what)
	}
	return nil
}

// AllReduceSum sums host values over the ranks, in place.
func (g *Group) AllReduceSum(vals []float64, what string) error {
	g.enter(what)
	defer g.setWhat("")
	if err := g.pg.AllReduceSum(vals); err != nil {
		return g.explain(err, what)
	}
	return nil
}

// Share returns rank 0's value for key: rank 0 passes it, the others wait
// for it as long as rank 0 is alive (so rank 0 may take long, building a
// cache say) and get it. what names the wait in errors.
func (g *Group) Share(key, what string, val []byte) ([]byte, error) {
	g.enter(what)
	defer g.setWhat("")
	k := "share/" + key
	if g.env.Rank == 0 {
		if err := g.store.Set(k, val); err != nil {
			return nil, g.explain(err, what)
		}
		return val, nil
	}
	lastCount, lastChange := int64(-1), time.Now()
	for i := 0; ; i++ {
		ok, err := g.store.Check(k)
		if err != nil {
			return nil, g.explain(err, what)
		}
		if ok {
			v, err := g.store.Get(k)
			if err != nil {
				return nil, g.explain(err, what)
			}
			return v, nil
		}
		if i%10 == 0 {
			if ok, _ := g.beats.Check("failed/0"); ok {
				return nil, g.explain(errors.New("rank 0 failed"), what)
			}
			bs, err := g.readBeats()
			if err != nil {
				return nil, g.explain(err, what)
			}
			if b := bs[0]; b.count != lastCount {
				lastCount, lastChange = b.count, time.Now()
			} else if time.Since(lastChange) > g.o.Timeout {
				return nil, fmt.Errorf("rank 0 stopped responding (no heartbeat for %v) while rank %d waited in %s", g.o.Timeout, g.env.Rank, what)
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Abort tells the other ranks that this one fails with err (they name it in
// their errors), then leaves the group.
func (g *Group) Abort(err error) {
	if g.beats != nil && err != nil {
		msg := strings.SplitN(err.Error(), "\n", 2)[0]
		bounded(abortBudget, func() { _ = g.beats.Set(fmt.Sprintf("failed/%d", g.env.Rank), []byte(msg)) })
	}
	// Leaving may block on peers or a store across a cut link (c10d's and
	// Gloo's destructors wait for them): a failing rank gives it a bounded
	// time, then the process exits and the kernel closes what is left.
	budget := closeBudget
	if g.env.Rank != 0 || g.env.AgentStore {
		budget = abortBudget * 2 // no peers to wait for
	}
	bounded(budget, g.Close)
}

// Close leaves the group. The process group goes first, so that peers
// still waiting in a collective with this rank fail at once; then rank 0,
// when it serves the store, waits (up to the timeout) until every rank has
// left or failed, so that none loses the store while finishing. It is safe
// to call twice.
func (g *Group) Close() {
	if !g.closed.CompareAndSwap(false, true) {
		return
	}
	if g.pg != nil {
		g.pg.Close()
	}
	if g.beats != nil {
		bounded(abortBudget, func() { _ = g.beats.Set(fmt.Sprintf("left/%d", g.env.Rank), []byte("1")) })
		if g.env.Rank == 0 && !g.env.AgentStore {
			g.awaitLeaving(time.Now().Add(g.o.Timeout))
		}
	}
	close(g.stop)
	// The heartbeat may be blocked on a store that no longer answers.
	bounded(abortBudget, g.stopped.Wait)
	g.closeStores()
}

// awaitLeaving waits until every other rank has left, failed or gone
// silent (no heartbeat for three periods), or until deadline.
func (g *Group) awaitLeaving(deadline time.Time) {
	type peer struct {
		count   int64
		changed time.Time
	}
	pending := map[int]*peer{}
	for r := range g.env.WorldSize {
		if r != g.env.Rank {
			pending[r] = &peer{count: -1, changed: time.Now()}
		}
	}
	for i := 0; len(pending) > 0 && time.Now().Before(deadline); i++ {
		var beats map[int]beat
		if i%10 == 0 {
			beats, _ = g.readBeats()
		}
		for r, p := range pending {
			left, leftErr := g.beats.Check(fmt.Sprintf("left/%d", r))
			failed, failedErr := g.beats.Check(fmt.Sprintf("failed/%d", r))
			if b, ok := beats[r]; ok && b.count != p.count {
				p.count, p.changed = b.count, time.Now()
			}
			if left || failed || leftErr != nil || failedErr != nil || time.Since(p.changed) > 3*g.o.Heartbeat+time.Second {
				delete(pending, r)
			}
		}
		if len(pending) > 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func (g *Group) closeStores() {
	if g.beats != nil {
		g.beats.Close()
	}
	if g.store != nil {
		g.store.Close()
	}
}

// lookupMaster resolves MASTER_ADDR within a few seconds: c10d would retry
// an unknown host for the whole timeout.
func lookupMaster(e Env) ([]net.IP, error) {
	host := strings.Trim(e.MasterAddr, "[]")
	if ip := net.ParseIP(host); ip != nil {
		return []net.IP{ip}, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ips, err := net.DefaultResolver.LookupIP(ctx, "ip", host)
	if err != nil || len(ips) == 0 {
		return nil, fmt.Errorf("MASTER_ADDR=%s does not resolve on this host (rank %d): %v; set MASTER_ADDR to rank 0's host name or address as every node reaches it", host, e.Rank, err)
	}
	return ips, nil
}

func isLoopbackIPs(ips []net.IP) bool {
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return false
		}
	}
	return len(ips) > 0
}

// glooAddress chooses the address Gloo advertises to the other ranks
// ("" leaves it to GLOO_SOCKET_IFNAME or Gloo's default, this host name's
// address). With MASTER_ADDR on loopback: loopback. When the ranks span
// hosts (fewer local ranks than ranks): the address of the interface that
// routes to MASTER_ADDR, never loopback — this host's name may resolve to
// 127.0.x.x, and Gloo would advertise an address the others cannot reach.
func glooAddress(e Env, masterIPs []net.IP, ifname string) (string, error) {
	if strings.TrimSpace(ifname) != "" {
		return "", nil // the user chose: native reads GLOO_SOCKET_IFNAME
	}
	if isLoopbackIPs(masterIPs) {
		// Every rank reaches the store on loopback: all are on this machine
		// (whatever LOCAL_WORLD_SIZE says).
		return "127.0.0.1", nil
	}
	if e.LocalWorldSize >= e.WorldSize {
		return "", nil // one machine
	}
	// A UDP "connection" sends nothing: it asks the kernel for the route.
	c, err := net.Dial("udp", net.JoinHostPort(masterIPs[0].String(), strconv.Itoa(e.MasterPort)))
	if err != nil {
		return "", fmt.Errorf("no route from this host to MASTER_ADDR=%s (%v): check the network, or set GLOO_SOCKET_IFNAME to the interface to use", e.MasterAddr, err)
	}
	defer c.Close()
	ip := c.LocalAddr().(*net.UDPAddr).IP
	if ip.IsLoopback() {
		return "", fmt.Errorf("the route to MASTER_ADDR=%s leaves through loopback (%v) although the ranks span hosts; set GLOO_SOCKET_IFNAME to the interface the other hosts reach", e.MasterAddr, ip)
	}
	return ip.String(), nil
}
