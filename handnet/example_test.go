package handnet_test

import (
	"fmt"
	"image/png"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/handnet/handnet/handnet"
)

// The examples use a run's checkpoint and a photo: in your program, your
// run's best.safetensors (written by `handnet train` or experiment.Run) and
// your photos. Here TestMain points them at a model it trains on synthetic
// hands and at one of those hands.
var (
	checkpoint = "runs/hands/best.safetensors"
	photo      = "hand.jpg"
)

// A program embeds a trained model: load its checkpoint once, then predict
// from any goroutine.
func ExampleLoad() {
	c, err := handnet.Load(checkpoint)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	p, err := c.PredictFile(photo)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("classes ranked:", len(p.Top))
	fmt.Println("the answer is the most probable:", p.Class == p.Top[0].Class && p.Probability == p.Top[0].Probability)
	// Output:
	// classes ranked: 8
	// the answer is the most probable: true
}

// Explain shows where the network looked: a class-activation map of the
// photo, blended over it as a PNG.
func ExampleClassifier_ExplainFile() {
	c, err := handnet.Load(checkpoint)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	e, img, err := c.ExplainFile(photo, -1) // -1: explain the predicted class
	if err != nil {
		log.Fatal(err)
	}
	f, err := os.Create(filepath.Join(os.TempDir(), "hand.cam.png"))
	if err != nil {
		log.Fatal(err)
	}
	defer os.Remove(f.Name())
	if err := png.Encode(f, e.Overlay(img, 512)); err != nil {
		log.Fatal(err)
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s map of %dx%d for the predicted class: %v\n", e.Method, e.W, e.H, e.Explained == e.Class)
	// Output: hirescam map of 170x128 for the predicted class: true
}

// NewServer is the production HTTP service of `handnet serve`
// (micro-batching, /predict, /explain, /healthz, /readyz, /metrics and a
// web page): put it in an http.Server of your own.
func ExampleNewServer() {
	c, err := handnet.Load(checkpoint)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	s := handnet.NewServer(c, handnet.ServerOptions{})
	defer s.Close()

	ln, err := net.Listen("tcp", "127.0.0.1:0") // e.g. ":8080"
	if err != nil {
		log.Fatal(err)
	}
	srv := &http.Server{Handler: s}
	go srv.Serve(ln)
	defer srv.Close()

	img, err := os.Open(photo)
	if err != nil {
		log.Fatal(err)
	}
	defer img.Close()
	resp, err := http.Post("http://"+ln.Addr().String()+"/predict?top=3", "image/jpeg", img)
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	fmt.Println(resp.Status, strings.Split(resp.Header.Get("Content-Type"), ";")[0])
	// Output: 200 OK application/json
}

// The classifier alone also serves HTTP, without batching: POST an image,
// get JSON back.
func ExampleClassifier_Handler() {
	c, err := handnet.Load(checkpoint)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	mux := http.NewServeMux()
	mux.Handle("/predict", c.Handler())
	// http.ListenAndServe(":8080", mux)
	fmt.Println("POST an image to /predict")
	// Output: POST an image to /predict
}
