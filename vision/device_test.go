package vision

import (
	"slices"
	"testing"

	"github.com/sugarme/gotch"
)

// The device loader (here with the CPU as the device) yields exactly the
// CPU loader's batches: the same records, labels, flips and float bits,
// with and without flips, whole or sharded, from the start or resumed.
func TestDeviceLoaderEqualsCPULoader(t *testing.T) {
	ds, c := openFakeCache(t)
	labels := Classes8.Labels(ds.Records)
	idx := allIndices(len(ds.Records))[:45]
	dev, err := UploadCache(c, gotch.CPU)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if DeviceBytes(c) != int64(c.Count*c.ImageSize()) {
		t.Errorf("DeviceBytes %d", DeviceBytes(c))
	}
	flips := &Augment{HFlip: 0.5}
	for _, tc := range []struct {
		name  string
		aug   *Augment
		shard Shard
		start int
	}{
		{"plain", nil, Shard{}, 0},
		{"hflip", flips, Shard{}, 0},
		{"hflip resumed", flips, Shard{}, 3},
		{"hflip shard 1 of 2", flips, Shard{Rank: 1, Count: 2, Pad: true}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := LoaderOptions{BatchSize: 8, Shuffle: true, Seed: 9, Device: gotch.CPU, Augment: tc.aug, Shard: tc.shard}
			host, err := NewLoader(c, idx, labels, Classes8.MirrorLabel, o)
			if err != nil {
				t.Fatal(err)
			}
			o.OnDevice = dev
			ondev, err := NewLoader(c, idx, labels, Classes8.MirrorLabel, o)
			if err != nil {
				t.Fatal(err)
			}
			defer ondev.Close()
			flipped := 0
			for epoch := range 2 {
				a, b := host.Epoch(epoch, tc.start), ondev.Epoch(epoch, tc.start)
				for n := tc.start; ; n++ {
					x, err := a.Next()
					if err != nil {
						t.Fatal(err)
					}
					y, err := b.Next()
					if err != nil {
						t.Fatal(err)
					}
					if x == nil || y == nil {
						if x != y {
							t.Fatalf("epoch %d: one loader ended at batch %d, the other not", epoch, n)
						}
						break
					}
					if !slices.Equal(x.Indices, y.Indices) || !slices.Equal(x.Labels, y.Labels) {
						t.Fatalf("epoch %d batch %d: records %v labels %v vs %v %v", epoch, n, x.Indices, x.Labels, y.Indices, y.Labels)
					}
					if !x.Y.MustEqual(y.Y, false) {
						t.Fatalf("epoch %d batch %d: label tensors differ", epoch, n)
					}
					if !x.X.MustEqual(y.X, false) {
						t.Fatalf("epoch %d batch %d: images differ", epoch, n)
					}
					for k, i := range x.Indices {
						if x.Labels[k] != labels[i] {
							flipped++
						}
					}
					x.Drop()
					y.Drop()
				}
				a.Close()
				b.Close()
			}
			if tc.aug != nil && flipped == 0 {
				t.Error("no image was flipped: the comparison proves nothing about flips")
			}
		})
	}
	if _, err := NewLoader(c, idx, labels, Classes8.MirrorLabel, LoaderOptions{BatchSize: 8, Device: gotch.CPU, OnDevice: dev, Augment: &Augment{Rotate: 5}}); err == nil {
		t.Error("rotation accepted with the data on the device")
	}
}
