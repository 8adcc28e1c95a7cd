package handnet_test

import (
	"fmt"
	"image"
	"image/color"
	"log"
	"net/http"
	"os"

	"github.com/handnet/handnet/handnet"
)

// A program embeds a trained model: load its checkpoint once, then call
// Predict from any goroutine.
func Example() {
	dir, _ := os.MkdirTemp("", "handnet-example")
	defer os.RemoveAll(dir)
	path := newCheckpoint(nil, dir) // in real use: a run's best.safetensors

	c, err := handnet.Load(path)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	img := image.NewRGBA(image.Rect(0, 0, 400, 300))
	for i := range img.Pix {
		img.Pix[i] = 255 // a white photo
	}
	img.Set(200, 150, color.Black)
	p, err := c.Predict(img)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(c.Classes()), "classes; the answer is one of them:", p.Class == c.Classes()[p.Index])
	// Output: 8 classes; the answer is one of them: true
}

// The classifier also serves HTTP: POST an image, get JSON back.
func ExampleClassifier_Handler() {
	dir, _ := os.MkdirTemp("", "handnet-example")
	defer os.RemoveAll(dir)
	c, err := handnet.Load(newCheckpoint(nil, dir))
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	http.Handle("/predict", c.Handler())
	// http.ListenAndServe(":8080", nil)
	fmt.Println("POST an image to /predict")
	// Output: POST an image to /predict
}
