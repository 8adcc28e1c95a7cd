package handnet_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/vision"
)

// realSizeJPEGs draws n synthetic hands as 1600x1200 JPEGs (the dataset's
// size).
func realSizeJPEGs(tb testing.TB, n int) [][]byte {
	dir := tb.TempDir()
	if err := vision.GenerateFake(dir, vision.FakeOptions{Count: n, Seed: 3, Width: 1600, Height: 1200, PerSubject: n}); err != nil {
		tb.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, vision.ImagesDir, "*.jpg"))
	var out [][]byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// loadResult is what a load run measured.
type loadResult struct {
	requests, errors int
	p50, p99         time.Duration
	perSecond        float64
}

// drive posts images to url from clients goroutines for d.
func drive(url string, imgs [][]byte, clients int, d time.Duration) loadResult {
	var (
		mu   sync.Mutex
		lat  []time.Duration
		errs int
		wg   sync.WaitGroup
	)
	deadline := time.Now().Add(d)
	start := time.Now()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; time.Now().Before(deadline); i++ {
				t0 := time.Now()
				resp, err := http.Post(url, "image/jpeg", bytes.NewReader(imgs[i%len(imgs)]))
				ok := err == nil && resp.StatusCode == 200
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				mu.Lock()
				if ok {
					lat = append(lat, time.Since(t0))
				} else {
					errs++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	r := loadResult{requests: len(lat), errors: errs, perSecond: float64(len(lat)) / el.Seconds()}
	if len(lat) > 0 {
		r.p50, r.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	}
	return r
}

// BenchmarkHandlerLoad drives Classifier.Handler over real HTTP with 32
// concurrent clients posting 1600x1200 JPEGs for 30 s (HANDNET_LOAD_SECONDS
// changes it): it reports requests/s, p50/p99 latency, errors, and RSS after
// a 10 s warm-up and at the end.
//
//	go test -run '^$' -bench HandlerLoad -benchtime 1x ./handnet
func BenchmarkHandlerLoad(b *testing.B) {
	secs, err := strconv.Atoi(os.Getenv("HANDNET_LOAD_SECONDS"))
	if err != nil || secs <= 0 {
		secs = 30
	}
	imgs := realSizeJPEGs(b, 8)
	c, err := handnet.LoadWith(newCheckpoint(b, b.TempDir()), handnet.Options{MaxQueue: 64})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	srv := httptest.NewServer(c.Handler())
	defer srv.Close()
	http.DefaultTransport.(*http.Transport).MaxIdleConnsPerHost = 64
	for range b.N {
		drive(srv.URL, imgs, 32, 10*time.Second) // warm-up: pools and allocators fill
		debug.FreeOSMemory()                     // RSS without garbage Go has not returned yet
		before := rssMiB()
		tensors := torch.LiveTensors()
		r := drive(srv.URL, imgs, 32, time.Duration(secs)*time.Second)
		debug.FreeOSMemory()
		after := rssMiB()
		b.ReportMetric(float64(torch.LiveTensors()-tensors), "tensors-leaked")
		if r.errors > 0 {
			b.Errorf("%d requests failed", r.errors)
		}
		b.ReportMetric(r.perSecond, "req/s")
		b.ReportMetric(float64(r.p50.Microseconds())/1000, "ms-p50")
		b.ReportMetric(float64(r.p99.Microseconds())/1000, "ms-p99")
		b.ReportMetric(before, "MiB-rss-before")
		b.ReportMetric(after, "MiB-rss-after")
		b.ReportMetric(100*(after-before)/before, "%-rss-growth")
		b.ReportMetric(float64(r.errors), "errors")
	}
}
