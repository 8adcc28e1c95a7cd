package handnet

import (
	"context"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/vision"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	log "github.com/sirupsen/logrus"
)

//go:embed web
var webFiles embed.FS

// ServerOptions configures NewServer.
type ServerOptions struct {
	// Micro-batching: concurrent requests are gathered into one forward
	// pass of up to MaxBatch images (0: 32; 1: no batching), waiting at most
	// MaxWait (0: 5 ms) for more after the first — and not at all when no
	// other request is being decoded.
	MaxBatch int
	MaxWait  time.Duration
	// Logger receives one structured line per request (nil: logrus's
	// standard logger).
	Logger *log.Logger
	// Registry receives the metrics (nil: a registry of the server's own,
	// with Go's and the process's collectors).
	Registry *prometheus.Registry
}

// Server serves a Classifier over HTTP as a production service:
//
//	POST /predict   an image (body, or multipart field "image"; several
//	                files in one multipart request are all answered),
//	                ?top=K classes per image (default DefaultTop: 1, as
//	                handnet predict --top)
//	POST /explain   one image, plus a Grad-CAM overlay (?class=NAME|INDEX,
//	                ?method=auto|gradcam|hirescam)
//	GET  /healthz   the process is alive
//	GET  /readyz    the model is loaded and a warm-up forward pass is done
//	GET  /metrics   Prometheus metrics
//	GET  /          a web page: drop a photo (or pick an example), see the
//	                classes and the map, choose the class to explain
//
// Another method on these paths is answered 405 with an Allow header.
// POST /predict answers one shape (Response) for one image or many, each
// image's answer or error under "results", in the order sent:
//
//	{
//	  "model": {"checkpoint": "best.safetensors", "sha256": "9f2c…", "arch": "cnn",
//	            "classes": ["female dorsal left", …], "data": "data/11k"},
//	  "results": [
//	    {"file": "a.jpg", "class": "male palmar right", "index": 7, "probability": 0.91,
//	     "top": [{"class": "male palmar right", "probability": 0.91}]},
//	    {"file": "b.txt", "error": "not an image handnet reads (JPEG, PNG or GIF): starts with 6e 6f 74 20 61 6e 20 69"}
//	  ]
//	}
//
// The raw body's image is named "body". A request of one image that fails
// is answered with that image's status (400, 413, 503, 504, 500) and
// {"error": "..."}; a request of several with 200 and the errors in
// "results" (or the worst 5xx). Errors elsewhere are {"error": "..."}.
//
// Concurrent requests are decoded on their own goroutines (at most
// Options.MaxConcurrent at once, Options.MaxQueue waiting; beyond, 503) and
// batched into shared forward passes. Server is an http.Handler.
type Server struct {
	c *Classifier
	o ServerOptions

	log   *log.Logger
	jobs  chan *job
	ready atomic.Bool
	stop  chan struct{}
	wg    sync.WaitGroup
	mux   *http.ServeMux
	once  sync.Once

	registry *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
	batches  prometheus.Histogram
	queue    prometheus.Gauge
	images   prometheus.Counter
	rate     prometheus.Gauge
	decoding atomic.Int64 // requests decoding an image: more may come for the batch
	served   atomic.Int64
}

type job struct {
	buf  []byte
	done chan jobResult
}

type jobResult struct {
	p   Prediction
	err error
}

// NewServer starts serving c: the batcher, and a warm-up forward pass in
// the background (until it is done, /readyz answers 503). Close stops it.
func NewServer(c *Classifier, o ServerOptions) *Server {
	if o.MaxBatch <= 0 {
		o.MaxBatch = 32
	}
	if o.MaxWait <= 0 {
		o.MaxWait = 5 * time.Millisecond
	}
	s := &Server{c: c, o: o, log: o.Logger, jobs: make(chan *job, 4*o.MaxBatch), stop: make(chan struct{}), registry: o.Registry}
	if s.log == nil {
		s.log = log.StandardLogger()
	}
	if s.registry == nil {
		s.registry = prometheus.NewRegistry()
		s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "handnet_http_requests_total", Help: "HTTP requests by path and status code."}, []string{"path", "code"})
	s.latency = prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "handnet_http_request_duration_seconds", Help: "HTTP request latency by path.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 15)}, []string{"path"})
	s.batches = prometheus.NewHistogram(prometheus.HistogramOpts{Name: "handnet_batch_size", Help: "Images per forward pass.", Buckets: prometheus.ExponentialBuckets(1, 2, 8)})
	s.queue = prometheus.NewGauge(prometheus.GaugeOpts{Name: "handnet_queue_depth", Help: "Images decoded and waiting for a forward pass."})
	s.images = prometheus.NewCounter(prometheus.CounterOpts{Name: "handnet_images_total", Help: "Images classified."})
	s.rate = prometheus.NewGauge(prometheus.GaugeOpts{Name: "handnet_images_per_second", Help: "Images classified per second, over the last 10 seconds."})
	s.registry.MustRegister(s.requests, s.latency, s.batches, s.queue, s.images, s.rate)
	s.mux = http.NewServeMux()
	s.mux.HandleFunc("POST /predict", s.predict)
	s.mux.HandleFunc("POST /explain", s.explain)
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { writeJSON(w, 200, map[string]string{"status": "ok"}) })
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(s.registry, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("GET /{$}", s.page)
	s.mux.HandleFunc("GET /favicon.ico", s.favicon)
	s.mux.HandleFunc("GET /examples/{name}", s.example)
	for path, allow := range map[string]string{"/predict": "POST", "/explain": "POST", "/healthz": "GET, HEAD", "/readyz": "GET, HEAD", "/metrics": "GET, HEAD"} {
		s.mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			writeError(w, &httpError{http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: this path takes %s", r.Method, path, allow)})
		})
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, &httpError{http.StatusNotFound, fmt.Sprintf("no %s %s: see / for the page, POST /predict or /explain", r.Method, r.URL.Path)})
	})
	s.wg.Add(3)
	go s.batcher()
	go s.meter()
	go s.warmUp()
	return s
}

// Handler returns an http.Handler that classifies uploaded images: the
// Server's POST /predict, on any path, with batching off. It is a Server
// without goroutines, metrics, log or other routes of its own (nothing to
// Close): a POST with the image (JPEG, PNG or GIF) as the body, or in a
// multipart form (field "image", or any file; several are all answered),
// decoded by the training pipeline's decoder within the budgets, is
// answered JSON, a Response (?top=K classes, default DefaultTop), or
// {"error": "..."} with status 400 (not an image), 405 (not a POST), 408
// (a body sent too slowly), 413 (over the byte, pixel or decode-memory
// budget), 503 with Retry-After (too many requests at once), 504 (over
// Options.Timeout) or 500 (a model whose output is not finite, or another
// failure); see Server for the answer to several images. A request is
// admitted whole, from the first byte of its body to its answer: at most
// Options.MaxConcurrent requests read, decode and predict at once (their
// images one after another, each its own forward pass), Options.MaxQueue
// more wait.
func (c *Classifier) Handler() http.Handler {
	s := &Server{c: c}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", http.MethodPost)
			writeError(w, &httpError{http.StatusMethodNotAllowed, "POST an image (body or multipart field \"image\")"})
			return
		}
		s.predict(w, r)
	})
}

// direct tells Classifier.Handler's server (no batcher, NewServer's has
// one): batching off, each request admitted whole into the gate, its images
// run through the model on its own goroutine, and no goroutines, metrics or
// log of its own.
func (s *Server) direct() bool { return s.jobs == nil }

// Ready tells whether the warm-up forward pass is done.
func (s *Server) Ready() bool { return s.ready.Load() }

// Close stops the batcher (after the batch in progress); requests still
// waiting get an error. Stop accepting requests first (http.Server.Shutdown).
func (s *Server) Close() {
	s.once.Do(func() { close(s.stop) })
	s.wg.Wait()
}

func (s *Server) warmUp() {
	defer s.wg.Done()
	cfg := s.c.net.Config
	if _, err := s.c.forward([][]byte{make([]byte, 3*cfg.Width*cfg.Height)}); err != nil {
		s.log.WithError(err).Error("warm-up forward pass failed: not ready")
		return
	}
	s.ready.Store(true)
}

// batcher gathers decoded images into forward passes.
func (s *Server) batcher() {
	defer s.wg.Done()
	for {
		var first *job
		select {
		case first = <-s.jobs:
		case <-s.stop:
			s.drainJobs()
			return
		}
		batch := []*job{first}
		timer := time.NewTimer(s.o.MaxWait)
	gather:
		for len(batch) < s.o.MaxBatch {
			select {
			case j := <-s.jobs:
				batch = append(batch, j)
				continue
			default:
			}
			if s.decoding.Load() == 0 {
				break // nothing else is on its way: do not wait for it
			}
			select {
			case j := <-s.jobs:
				batch = append(batch, j)
			case <-timer.C:
				break gather
			}
		}
		timer.Stop()
		s.queue.Sub(float64(len(batch)))
		bufs := make([][]byte, len(batch))
		for i, j := range batch {
			bufs[i] = j.buf
		}
		s.batches.Observe(float64(len(batch)))
		preds, err := s.c.forward(bufs)
		for i, j := range batch {
			if err != nil {
				j.done <- jobResult{err: err}
			} else {
				j.done <- jobResult{p: preds[i]}
			}
		}
		s.images.Add(float64(len(batch)))
		s.served.Add(int64(len(batch)))
		if len(batch) >= 8 {
			// A large batch's activations, freed, would otherwise stay
			// resident as the C heap's high-water mark (measured: ~400 MB at
			// batch 32, 2 ms to give back). The answers are out already.
			native.ReleaseMemory()
		}
	}
}

func (s *Server) drainJobs() {
	for {
		select {
		case j := <-s.jobs:
			j.done <- jobResult{err: errors.New("server stopping")}
		default:
			return
		}
	}
}

// meter updates the images/s gauge every second, over 10 seconds.
func (s *Server) meter() {
	defer s.wg.Done()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var hist []int64
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			hist = append(hist, s.served.Load())
			if len(hist) > 11 {
				hist = hist[1:]
			}
			if n := len(hist); n > 1 {
				s.rate.Set(float64(hist[n-1]-hist[0]) / float64(n-1))
			}
		}
	}
}

// submit queues a decoded image for the next forward pass.
func (s *Server) submit(ctx context.Context, buf []byte) (Prediction, error) {
	if s.direct() {
		return first(s.c.forward([][]byte{buf}))
	}
	j := &job{buf: buf, done: make(chan jobResult, 1)}
	s.queue.Inc()
	select {
	case s.jobs <- j:
	case <-s.stop:
		s.queue.Dec()
		return Prediction{}, errors.New("server stopping")
	case <-ctx.Done():
		s.queue.Dec()
		return Prediction{}, ctx.Err()
	}
	select {
	case r := <-j.done:
		return r.p, r.err
	case <-ctx.Done(): // the batch still runs; its answer is dropped
		return Prediction{}, ctx.Err()
	}
}

// ServeHTTP routes a request and logs it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w, code: 200}
	s.mux.ServeHTTP(rec, r)
	path := r.URL.Path
	switch path {
	case "/", "/predict", "/explain", "/healthz", "/readyz", "/metrics":
	default:
		path = "other" // keep the label set small
	}
	d := time.Since(start)
	s.requests.WithLabelValues(path, strconv.Itoa(rec.code)).Inc()
	s.latency.WithLabelValues(path).Observe(d.Seconds())
	s.log.WithFields(log.Fields{"method": r.Method, "path": r.URL.Path, "status": rec.code, "duration_ms": float64(d.Microseconds()) / 1000,
		"bytes": rec.bytes, "remote": r.RemoteAddr}).Info("request")
}

type recorder struct {
	http.ResponseWriter
	code  int
	bytes int64
}

func (r *recorder) WriteHeader(code int) { r.code = code; r.ResponseWriter.WriteHeader(code) }
func (r *recorder) Write(b []byte) (int, error) {
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the connection.
func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if !s.Ready() {
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "warming up"})
		return
	}
	writeJSON(w, 200, map[string]any{"status": "ready", "model": s.c.Info()})
}

// favicon serves the page's icon (browsers ask for /favicon.ico).
func (s *Server) favicon(w http.ResponseWriter, r *http.Request) {
	webFile(w, "favicon.svg", "image/svg+xml", "Cache-Control", "max-age=86400")
}

// example serves one of the page's example photos (synthetic hands,
// embedded from web/examples).
func (s *Server) example(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if _, err := fs.Stat(webFiles, "web/examples/"+name); err != nil || strings.Contains(name, "/") {
		writeError(w, &httpError{http.StatusNotFound, "no example " + name})
		return
	}
	webFile(w, "examples/"+name, "image/jpeg", "Cache-Control", "max-age=86400")
}

func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	webFile(w, "index.html", "text/html; charset=utf-8",
		"Content-Security-Policy", "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'")
}

// webFile answers the embedded file web/name as contentType, with more
// headers as name, value pairs.
func webFile(w http.ResponseWriter, name, contentType string, header ...string) {
	b, err := webFiles.ReadFile("web/" + name)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", contentType)
	for i := 0; i+1 < len(header); i += 2 {
		w.Header().Set(header[i], header[i+1])
	}
	w.Write(b)
}

// imagePart is one image of a request.
type imagePart struct {
	name string
	data []byte
	err  error
}

// readUploads reads a request's images: the body, or every file part of a
// multipart form (field "image", or any file), each within the byte budget.
// What goes wrong reading is classified as decodeError classifies it.
func (s *Server) readUploads(ctx context.Context, w http.ResponseWriter, r *http.Request) ([]imagePart, error) {
	maxBytes := s.c.opts.MaxBytes
	if maxBytes <= 0 {
		maxBytes = vision.DefaultMaxBytes
	}
	read := func(r io.Reader) ([]byte, error) {
		b, err := io.ReadAll(io.LimitReader(r, maxBytes+1))
		if err != nil {
			return nil, decodeError(ctx, err)
		}
		if int64(len(b)) > maxBytes {
			return nil, &vision.BytesError{Size: -1, Max: maxBytes}
		}
		return b, nil
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4*maxBytes+1<<20) // several images, and a form's overhead
	if !strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/form-data") {
		b, err := read(r.Body)
		if err != nil {
			return nil, err
		}
		return []imagePart{{name: "body", data: b}}, nil
	}
	const maxFiles = 64
	mr, err := r.MultipartReader()
	if err != nil {
		return nil, &httpError{http.StatusBadRequest, "bad multipart upload: " + err.Error()}
	}
	var out []imagePart
	for {
		part, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, &httpError{http.StatusBadRequest, "bad multipart upload: " + err.Error()}
		}
		if part.FormName() != "image" && part.FileName() == "" {
			continue
		}
		if len(out) == maxFiles {
			return nil, &httpError{http.StatusRequestEntityTooLarge, fmt.Sprintf("more than %d images in one request", maxFiles)}
		}
		name := part.FileName()
		if name == "" {
			name = fmt.Sprintf("image %d", len(out)+1)
		}
		b, err := read(part)
		var be *vision.BytesError
		if err != nil && !errors.As(err, &be) {
			return nil, err
		}
		out = append(out, imagePart{name: name, data: b, err: err})
	}
	if len(out) == 0 {
		return nil, &httpError{http.StatusBadRequest, "multipart upload without an \"image\" file"}
	}
	return out, nil
}

// decode preprocesses one upload. The server decodes it within its lane:
// the cost of the decode, read from the header, picks the ordinary gate or
// the heavy lane (one expensive decode at a time, a short queue, 503
// beyond), so that bombs under the pixel budget cannot take the slots of
// ordinary photos (Handler's requests hold their slot already). The decode
// itself is charged against the process-wide memory budget.
func (s *Server) decode(ctx context.Context, data []byte) ([]byte, error) {
	s.decoding.Add(1)
	defer s.decoding.Add(-1)
	if !s.direct() {
		leave, err := s.enterLane(ctx, data)
		if err != nil {
			return nil, err
		}
		defer leave()
	}
	buf, err := s.c.preprocess(func(p *vision.Preprocessor, dst []byte) error { return p.BytesContext(ctx, data, dst) })
	if err != nil {
		return nil, decodeError(ctx, err)
	}
	return buf, nil
}

// enterLane waits for a turn in the lane of an image's decode cost.
func (s *Server) enterLane(ctx context.Context, data []byte) (leave func(), err error) {
	var cost vision.Cost
	_, err = s.c.preprocess(func(p *vision.Preprocessor, _ []byte) (err error) {
		cost, err = p.Cost(data)
		return err
	})
	if err != nil {
		return nil, decodeError(ctx, err)
	}
	g := s.c.gate
	if cost.Bytes >= s.c.opts.HeavyDecode {
		g = s.c.heavy
	}
	return g.enter(ctx)
}

// decodeError classifies what went wrong reading or decoding an upload:
// over a budget (413) and a body sent too slowly (408) keep their kind;
// then, once the request's time is out (504) or its client gone (503),
// that; anything else is the image's fault, errDecode (400).
func decodeError(ctx context.Context, err error) error {
	switch {
	case overBudget(err), errors.Is(err, os.ErrDeadlineExceeded):
		return err
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return err
	}
	return fmt.Errorf("%w: %v", errDecode, err)
}

// topK parses ?top=K (default DefaultTop; at most the number of classes).
func (s *Server) topK(r *http.Request) (int, error) {
	k := DefaultTop
	if v := r.URL.Query().Get("top"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return 0, &httpError{http.StatusBadRequest, fmt.Sprintf("top=%q: want a positive integer", v)}
		}
		k = n
	}
	return min(k, len(s.c.net.Config.Classes)), nil
}

// Response is the JSON answer of POST /predict (Server and
// Classifier.Handler) for one image or many: the model, and each image's
// Result in the order sent.
type Response struct {
	Model   ModelInfo `json:"model"`
	Results []Result  `json:"results"`
}

// Result is one image's answer: its prediction (top cut to ?top=K), or
// its error.
type Result struct {
	File string `json:"file"` // the multipart file name; "body" for a raw body
	*Prediction
	Error string `json:"error,omitempty"`
}

// predict answers POST /predict, and Classifier.Handler.
func (s *Server) predict(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.c.deadline(w, r)
	defer cancel()
	k, err := s.topK(r)
	if err != nil {
		writeError(w, err)
		return
	}
	// A request's images are decoded by at most MaxConcurrent workers of
	// its own: it takes no more places in the gate than that, so the
	// documented maximum (64 images) is admitted whole on an idle server
	// and one large request cannot fill the queue for everyone else.
	// Handler's request takes one place, from its first byte.
	workers := s.c.opts.MaxConcurrent
	if s.direct() {
		leave, err := s.c.gate.enter(ctx)
		if err != nil {
			writeError(w, err)
			return
		}
		defer leave()
		workers = 1
	}
	ups, err := s.readUploads(ctx, w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	results := make([]Result, len(ups))
	errs := make([]error, len(ups))
	next := make(chan int, len(ups))
	for i := range ups {
		next <- i
	}
	close(next)
	var wg sync.WaitGroup
	for range min(len(ups), workers) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				s.predictOne(ctx, ups[i], k, &results[i], &errs[i])
			}
		}()
	}
	wg.Wait()
	if len(ups) == 1 && errs[0] != nil {
		writeError(w, errs[0])
		return
	}
	code := 200
	for _, e := range errs {
		if e != nil && status(e) >= 500 {
			code = status(e)
		}
	}
	writeJSON(w, code, Response{Model: s.c.Info(), Results: results})
}

// predictOne decodes and classifies one image of a request into res, its
// error into *errp.
func (s *Server) predictOne(ctx context.Context, u imagePart, k int, res *Result, errp *error) {
	err := u.err
	var p Prediction
	if err == nil {
		var buf []byte
		if buf, err = s.decode(ctx, u.data); err == nil {
			p, err = s.submit(ctx, buf)
		}
	}
	*errp = err
	res.File = u.name
	if err != nil {
		res.Error = errorMessage(err)
		return
	}
	p.Top = p.Top[:k]
	res.Prediction = &p
}

func (s *Server) explain(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := s.c.deadline(w, r)
	defer cancel()
	class, err := s.c.ParseClass(r.URL.Query().Get("class"))
	if err != nil {
		writeError(w, &httpError{http.StatusBadRequest, "class=" + err.Error()})
		return
	}
	method, err := model.ParseCAMMethod(r.URL.Query().Get("method"))
	if err != nil {
		writeError(w, &httpError{http.StatusBadRequest, err.Error()})
		return
	}
	if r.URL.Query().Get("method") == "" {
		method = s.c.opts.CAM
	}
	ups, err := s.readUploads(ctx, w, r)
	if err != nil {
		writeError(w, err)
		return
	}
	if len(ups) != 1 || ups[0].err != nil {
		if len(ups) == 1 {
			writeError(w, ups[0].err)
		} else {
			writeError(w, &httpError{http.StatusBadRequest, "explain takes one image"})
		}
		return
	}
	leave, err := s.enterLane(ctx, ups[0].data)
	if err != nil {
		writeError(w, err)
		return
	}
	e, photo, err := s.c.explainBytes(ups[0].data, class, method)
	leave()
	if err != nil {
		if !errors.Is(err, ErrNonFinite) {
			err = decodeError(ctx, err)
		}
		writeError(w, err)
		return
	}
	s.images.Inc()
	s.served.Add(1)
	var png64 strings.Builder
	enc := base64.NewEncoder(base64.StdEncoding, &png64)
	if err := png.Encode(enc, e.Overlay(photo, 640)); err != nil {
		writeError(w, err)
		return
	}
	enc.Close()
	writeJSON(w, 200, struct {
		*Explanation
		Overlay string    `json:"overlay"`
		Model   ModelInfo `json:"model"`
	}{e, "data:image/png;base64," + png64.String(), s.c.Info()})
}

// MaxUpload is the default largest upload the HTTP handler accepts (the
// byte budget, Options.MaxBytes, when that is not set).
const MaxUpload = vision.DefaultMaxBytes

// gate bounds the requests that work at once and those that wait.
type gate struct {
	slots    chan struct{}
	waiting  atomic.Int64
	maxQueue int64
}

func newGate(concurrent, queue int) *gate {
	return &gate{slots: make(chan struct{}, concurrent), maxQueue: int64(queue)}
}

var errBusy = errors.New("busy: every slot is taken and the queue is full")

// enter waits for a slot, unless the queue is full (errBusy) or ctx ends.
func (g *gate) enter(ctx context.Context) (leave func(), err error) {
	select {
	case g.slots <- struct{}{}:
		return func() { <-g.slots }, nil
	default:
	}
	if g.waiting.Add(1) > g.maxQueue {
		g.waiting.Add(-1)
		return nil, errBusy
	}
	defer g.waiting.Add(-1)
	select {
	case g.slots <- struct{}{}:
		return func() { <-g.slots }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

// status maps an error to an HTTP status: over a budget 413, a bad image
// 400, busy (overload) 503, out of the time allowed 504, a non-finite
// output or anything else 500.
func status(err error) int {
	var he *httpError
	switch {
	case errors.As(err, &he):
		return he.code
	case overBudget(err):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, os.ErrDeadlineExceeded):
		return http.StatusRequestTimeout // the client sent its body too slowly
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout // --timeout ran out while the work waited or ran
	case errors.Is(err, errBusy), errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable
	case errors.Is(err, errDecode):
		return http.StatusBadRequest
	}
	return http.StatusInternalServerError
}

// overBudget tells an image over the byte, pixel or decode-memory budget,
// or a request body over its limit.
func overBudget(err error) bool {
	var pe *vision.PixelsError
	var be *vision.BytesError
	var me *vision.MemoryError
	var mb *http.MaxBytesError
	return errors.As(err, &pe) || errors.As(err, &be) || errors.As(err, &me) || errors.As(err, &mb)
}

var errDecode = errors.New("bad image")

// errorMessage is err's text for a client: a bad image's without the
// "bad image: " prefix.
func errorMessage(err error) string { return strings.TrimPrefix(err.Error(), errDecode.Error()+": ") }

// deadline bounds a request by Options.Timeout: the context of its work,
// and the connection's read deadline, so that a slow client cannot hold a
// slot past it (servers that cannot set one return an error, which changes
// nothing).
func (c *Classifier) deadline(w http.ResponseWriter, r *http.Request) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(r.Context(), c.opts.Timeout)
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(c.opts.Timeout))
	return ctx, cancel
}

// writeError answers {"error": msg} with the status for err.
func writeError(w http.ResponseWriter, err error) {
	code := status(err)
	if code == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": errorMessage(err)})
}
