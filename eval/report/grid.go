package report

import (
	"bytes"
	"image"
	"image/color"
	"image/draw"
	"image/png"

	"github.com/handnet/handnet/handnet/runtime/fileio"
	"golang.org/x/image/font"
	"golang.org/x/image/font/basicfont"
	"golang.org/x/image/math/fixed"
)

// Tile is one picture of a grid, with caption lines under it.
type Tile struct {
	Image   image.Image
	Caption []string
}

// Grid writes tiles (all of one size) as a PNG grid of cols columns, each
// tile captioned, atomically.
func Grid(path string, tiles []Tile, cols int) error {
	if len(tiles) == 0 {
		return nil
	}
	tw, th := tiles[0].Image.Bounds().Dx(), tiles[0].Image.Bounds().Dy()
	lines := 0
	for _, t := range tiles {
		lines = max(lines, len(t.Caption))
	}
	const pad, lineH = 10, 15
	cellW, cellH := tw+pad, th+pad+lines*lineH
	rows := (len(tiles) + cols - 1) / cols
	img := image.NewRGBA(image.Rect(0, 0, pad+min(cols, len(tiles))*cellW, pad+rows*cellH))
	draw.Draw(img, img.Bounds(), image.White, image.Point{}, draw.Src)
	d := &font.Drawer{Dst: img, Src: image.NewUniform(color.RGBA{30, 35, 48, 255}), Face: basicfont.Face7x13}
	for i, t := range tiles {
		x, y := pad+(i%cols)*cellW, pad+(i/cols)*cellH
		draw.Draw(img, image.Rect(x, y, x+tw, y+th), t.Image, t.Image.Bounds().Min, draw.Src)
		for j, c := range t.Caption {
			d.Dot = fixed.P(x, y+th+12+j*lineH)
			d.DrawString(c)
		}
	}
	var b bytes.Buffer
	if err := png.Encode(&b, img); err != nil {
		return err
	}
	return fileio.WriteAtomic(path, b.Bytes())
}
