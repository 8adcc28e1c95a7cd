package handnet_test

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"testing"
	"time"

	"github.com/handnet/handnet/handnet"
	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/prometheus/client_golang/prometheus"
	log "github.com/sirupsen/logrus"
)

// BenchmarkServe measures handnet.Server with 1 and 32 concurrent clients,
// micro-batching on (up to 32 images, 5 ms) and off (one image per forward
// pass), on the real sample's photos (180x180, decoding is cheap: the
// forward pass dominates) and on 1600x1200 JPEGs (the dataset's size).
// Each case runs HANDNET_SERVE_SECONDS (default 10).
//
//	go test -run '^$' -bench Serve -benchtime 1x ./handnet
func BenchmarkServe(b *testing.B) {
	secs, err := strconv.Atoi(os.Getenv("HANDNET_SERVE_SECONDS"))
	if err != nil || secs <= 0 {
		secs = 10
	}
	small := [][]byte{}
	files, _ := filepath.Glob(filepath.Join(realSample, "*.jpg"))
	for _, f := range files {
		if bb, err := os.ReadFile(f); err == nil {
			small = append(small, bb)
		}
	}
	if len(small) == 0 {
		for i := range 8 {
			small = append(small, jpegOf(b, i))
		}
	}
	sets := []struct {
		name string
		imgs [][]byte
	}{{"180px", small}, {"1600x1200", realSizeJPEGs(b, 8)}}
	ckpt := newCheckpoint(b, b.TempDir())
	http.DefaultTransport.(*http.Transport).MaxIdleConnsPerHost = 64
	quiet := &log.Logger{Out: devNull{}, Formatter: &log.TextFormatter{}, Level: log.WarnLevel}
	serve := func(maxBatch int) (*httptest.Server, func()) {
		c, err := handnet.LoadWith(ckpt, handnet.Options{MaxQueue: 128})
		if err != nil {
			b.Fatal(err)
		}
		s := handnet.NewServer(c, handnet.ServerOptions{MaxBatch: maxBatch, Logger: quiet, Registry: prometheus.NewRegistry()})
		hs := httptest.NewServer(s)
		for !s.Ready() {
			time.Sleep(10 * time.Millisecond)
		}
		return hs, func() { hs.Close(); s.Close(); c.Close() }
	}
	for _, set := range sets {
		rates := map[string]float64{}
		for _, clients := range []int{1, 32} {
			for _, batching := range []string{"off", "on"} {
				b.Run(fmt.Sprintf("photos=%s/clients=%d/batching=%s", set.name, clients, batching), func(b *testing.B) {
					maxBatch := 1
					if batching == "on" {
						maxBatch = 32
					}
					hs, stop := serve(maxBatch)
					defer stop()
					drive(hs.URL+"/predict", set.imgs, clients, time.Second) // warm-up
					r := drive(hs.URL+"/predict", set.imgs, clients, time.Duration(secs)*time.Second)
					if r.errors > 0 {
						b.Errorf("%d requests failed", r.errors)
					}
					b.ReportMetric(r.perSecond, "images/s")
					b.ReportMetric(float64(r.p50.Microseconds())/1000, "ms-p50")
					b.ReportMetric(float64(r.p99.Microseconds())/1000, "ms-p99")
					rates[fmt.Sprint(clients, batching)] = r.perSecond
					if clients == 32 && batching == "on" && rates["32off"] > 0 {
						b.ReportMetric(r.perSecond/rates["32off"], "x-batching")
					}
				})
			}
		}
	}
}

type devNull struct{}

func (devNull) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkServeRSS serves 10,000 requests (32 clients, batching on) and
// reports RSS after the first 100 and after all. Run it on its own, so that
// other benchmarks' servers are not in the figure:
//
//	go test -run '^$' -bench ServeRSS -benchtime 1x ./handnet
func BenchmarkServeRSS(b *testing.B) {
	c, err := handnet.LoadWith(newCheckpoint(b, b.TempDir()), handnet.Options{MaxQueue: 128})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	quiet := &log.Logger{Out: devNull{}, Formatter: &log.TextFormatter{}, Level: log.WarnLevel}
	s := handnet.NewServer(c, handnet.ServerOptions{Logger: quiet, Registry: prometheus.NewRegistry()})
	defer s.Close()
	hs := httptest.NewServer(s)
	defer hs.Close()
	http.DefaultTransport.(*http.Transport).MaxIdleConnsPerHost = 64
	small := [][]byte{}
	files, _ := filepath.Glob(filepath.Join(realSample, "*.jpg"))
	for _, f := range files {
		if bb, err := os.ReadFile(f); err == nil {
			small = append(small, bb)
		}
	}
	if len(small) == 0 {
		for i := range 8 {
			small = append(small, jpegOf(b, i))
		}
	}
	for range b.N {
		count := func(n int) {
			done := make(chan struct{}, n)
			sem := make(chan struct{}, 32)
			for i := range n {
				sem <- struct{}{}
				go func() {
					defer func() { <-sem; done <- struct{}{} }()
					resp, err := http.Post(hs.URL+"/predict", "image/jpeg", bytes.NewReader(small[i%len(small)]))
					if err == nil {
						resp.Body.Close()
					}
				}()
			}
			for range n {
				<-done
			}
		}
		count(100)
		debug.FreeOSMemory()
		native.ReleaseMemory()
		after100 := rssMiB()
		count(4900)
		debug.FreeOSMemory()
		native.ReleaseMemory()
		after5k := rssMiB()
		count(5000)
		debug.FreeOSMemory()
		native.ReleaseMemory()
		after10k := rssMiB()
		b.ReportMetric(after5k, "MiB-rss-after-5000")
		b.ReportMetric(after100, "MiB-rss-after-100")
		b.ReportMetric(after10k, "MiB-rss-after-10000")
		b.ReportMetric(100*(after10k-after100)/after100, "%-growth")
	}
}
