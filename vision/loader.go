package vision

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"unsafe"

	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// LoaderOptions configures a Loader.
type LoaderOptions struct {
	BatchSize int          // images per batch (the last one may be smaller)
	Shuffle   bool         // new seeded order every epoch
	Seed      uint64       // shuffling and augmentation seed
	Device    gotch.Device // where batches go
	Augment   *Augment     // nil: none
	Prefetch  int          // batches prepared ahead; 0 means 4
	Workers   int          // goroutines preparing batches; 0 means all usable CPUs
	// Shard makes the loader serve one rank's share of every epoch in a
	// data-parallel run (the zero value: everything).
	Shard Shard
	// OnDevice, when set, holds the cache's images on the device (see
	// UploadCache): batches are gathered, flipped and normalised there, with
	// the same values as the host path. Augmentation is then limited to
	// flips (Augment.FlipsOnly).
	OnDevice *DeviceImages
}

// Shard is one rank's share of a loader's images, cut as PyTorch's
// DistributedSampler cuts them: rank r takes every Count-th image of the
// epoch's order, starting at r. With Pad, the order is first padded by
// repeating its beginning to a multiple of Count, so that every rank has as
// many batches (training); without it, every image is served exactly once
// (evaluation).
type Shard struct {
	Rank, Count int
	Pad         bool
}

// Loader turns cached images into batches: per-epoch seeded shuffling,
// the last partial batch kept, uint8 → ImageNet-normalised float32 NCHW on
// the target device, prepared in the background so that a training step
// does not wait for data.
type Loader struct {
	cache   *Cache
	indices []int // record indices, in order
	labels  []int // class of each record index
	mirror  func(int) int
	o       LoaderOptions

	norm       *Normalizer
	lut        *ts.Tensor // normalisation table on the device (CUDA path)
	offset     *ts.Tensor // its channel offsets
	pool       chan []byte
	hostFloats bool // normalise on the host (CPU device) rather than on the device
}

// NewLoader makes a loader over the records indices (e.g. one split's) of
// cache, with labels[i] the class of record i. mirror maps a label to its
// mirrored image's label; it is needed only for horizontal flips.
// Records the cache skipped as bad are left out.
func NewLoader(cache *Cache, indices, labels []int, mirror func(int) int, o LoaderOptions) (*Loader, error) {
	if o.BatchSize <= 0 {
		return nil, fmt.Errorf("batch size %d, want > 0", o.BatchSize)
	}
	if o.Augment != nil && o.Augment.HFlip > 0 && mirror == nil {
		return nil, errors.New("horizontal flips need the label scheme's mirror mapping (a flipped left hand is a right hand)")
	}
	if o.Prefetch <= 0 {
		o.Prefetch = 4
	}
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	l := &Loader{cache: cache, labels: labels, mirror: mirror, o: o, hostFloats: !o.Device.IsCuda()}
	for _, i := range indices {
		if i < 0 || i >= cache.Count || i >= len(labels) {
			return nil, fmt.Errorf("record index %d out of range (cache holds %d)", i, cache.Count)
		}
		if cache.Usable(i) {
			l.indices = append(l.indices, i)
		}
	}
	if len(l.indices) == 0 {
		return nil, errors.New("no usable images in this selection")
	}
	if o.Shard.Count > 1 && (o.Shard.Rank < 0 || o.Shard.Rank >= o.Shard.Count) {
		return nil, fmt.Errorf("shard %d of %d", o.Shard.Rank, o.Shard.Count)
	}
	if d := o.OnDevice; d != nil {
		switch {
		case d.cache != cache:
			return nil, errors.New("device images of another cache")
		case d.device != o.Device:
			return nil, fmt.Errorf("device images on %v, batches wanted on %v", d.device, o.Device)
		case !o.Augment.FlipsOnly():
			return nil, errors.New("with the data on the device, augmentation is limited to flips (hflip=…): pose and colour changes run on the CPU loader (--data-on-device off)")
		}
	}
	l.norm = NewNormalizer(Mean, Std)
	l.pool = make(chan []byte, o.Prefetch+o.Workers+1)
	return l, nil
}

// Len is the number of images per epoch (of this rank's shard).
func (l *Loader) Len() int {
	n, sh := len(l.indices), l.o.Shard
	if sh.Count <= 1 {
		return n
	}
	if sh.Pad {
		return (n + sh.Count - 1) / sh.Count
	}
	return (n - sh.Rank + sh.Count - 1) / sh.Count
}

// Batches is the number of batches per epoch, the last partial one included.
func (l *Loader) Batches() int { return (l.Len() + l.o.BatchSize - 1) / l.o.BatchSize }

// Indices returns the record indices of every rank's shards together, in
// unshuffled order.
func (l *Loader) Indices() []int { return l.indices }

// Label returns the (unaugmented) label of record i.
func (l *Loader) Label(i int) int { return l.labels[i] }

// Order returns the order of record indices in an epoch (of this rank's
// shard).
func (l *Loader) Order(epoch int) []int {
	order := append([]int(nil), l.indices...)
	if l.o.Shuffle {
		rng := rand.New(rand.NewPCG(l.o.Seed, uint64(epoch)+1))
		rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
	}
	sh := l.o.Shard
	if sh.Count <= 1 {
		return order
	}
	if sh.Pad {
		for total := l.Len() * sh.Count; len(order) < total; {
			order = append(order, order[:min(len(order), total-len(order))]...)
		}
	}
	mine := make([]int, 0, l.Len())
	for i := sh.Rank; i < len(order); i += sh.Count {
		mine = append(mine, order[i])
	}
	return mine
}

// Batch is one batch on the loader's device. Drop it after use.
type Batch struct {
	X       *ts.Tensor // [N,3,H,W] float32, normalised
	Y       *ts.Tensor // [N] int64 labels
	Indices []int      // record index of each row
	Labels  []int      // labels as in Y (after any mirroring)
}

// Input makes a model's input from normalised w×h images (as
// Normalizer.Batch makes them): an N×3×h×w float32 tensor on device. s owns
// it and every tensor made on the way.
func Input(s *torch.Scope, x []float32, w, h int, device gotch.Device) (*ts.Tensor, error) {
	size := 3 * w * h
	if size <= 0 || len(x)%size != 0 {
		return nil, fmt.Errorf("input: %d floats are not whole 3×%d×%d images", len(x), h, w)
	}
	// torch.FromBytes copies once, straight into the shape (ts.OfSlice
	// copies twice and needs a view).
	var b []byte
	if len(x) > 0 {
		b = unsafe.Slice((*byte)(unsafe.Pointer(&x[0])), 4*len(x))
	}
	t, err := torch.FromBytes(b, []int64{int64(len(x) / size), 3, int64(h), int64(w)}, gotch.Float)
	if err != nil {
		return nil, err
	}
	return s.T(s.T(t).MustTo(device, false)), nil
}

// Drop frees the batch's tensors.
func (b *Batch) Drop() {
	if b.X != nil {
		b.X.MustDrop()
	}
	if b.Y != nil {
		b.Y.MustDrop()
	}
	b.X, b.Y = nil, nil
}

type hostBatch struct {
	buf     []byte
	indices []int
	labels  []int64
}

// Epoch iterates over one epoch's batches. Its Next must be called from
// the goroutine (torch thread) that uses the tensors; preparation runs on
// other goroutines.
type Epoch struct {
	l     *Loader
	epoch int
	order []int
	slots []chan hostBatch
	sem   chan struct{}
	done  chan struct{}
	next  int
	once  sync.Once
	wg    sync.WaitGroup
}

// Epoch starts epoch number epoch (0-based) at batch start (0 normally;
// more when resuming in the middle of an epoch).
func (l *Loader) Epoch(epoch, start int) *Epoch {
	order := l.Order(epoch)
	nb := l.Batches()
	e := &Epoch{l: l, epoch: epoch, order: order, slots: make([]chan hostBatch, nb), sem: make(chan struct{}, l.o.Prefetch), done: make(chan struct{}), next: start}
	if l.o.OnDevice != nil {
		return e // batches are gathered on the device in Next
	}
	for i := range e.slots {
		e.slots[i] = make(chan hostBatch, 1)
	}
	jobs := make(chan int)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer close(jobs)
		for b := start; b < nb; b++ {
			select {
			case e.sem <- struct{}{}:
			case <-e.done:
				return
			}
			select {
			case jobs <- b:
			case <-e.done:
				return
			}
		}
	}()
	for range l.o.Workers {
		e.wg.Add(1)
		go func() {
			defer e.wg.Done()
			for b := range jobs {
				lo, hi := b*l.o.BatchSize, min((b+1)*l.o.BatchSize, len(order))
				e.slots[b] <- l.prepare(epoch, order[lo:hi])
			}
		}()
	}
	return e
}

func (l *Loader) getBuf(n int) []byte {
	select {
	case b := <-l.pool:
		if cap(b) >= n {
			return b[:n]
		}
	default:
	}
	return make([]byte, n)
}

func (l *Loader) putBuf(b []byte) {
	select {
	case l.pool <- b:
	default:
	}
}

// prepare builds one batch in host memory: float32 normalised for the
// CPU, uint8 for CUDA (a quarter of the bytes to copy; normalised there).
func (l *Loader) prepare(epoch int, idx []int) hostBatch {
	size := l.cache.ImageSize()
	elem := 1
	if l.hostFloats {
		elem = 4
	}
	hb := hostBatch{buf: l.getBuf(len(idx) * size * elem), indices: append([]int(nil), idx...), labels: make([]int64, len(idx))}
	var aug []byte
	for k, i := range idx {
		img := l.cache.Image(i)
		label := l.labels[i]
		if l.o.Augment != nil {
			if aug == nil {
				aug = make([]byte, size)
			}
			if l.o.Augment.apply(img, aug, l.cache.W, l.cache.H, l.augRNG(epoch, i)) {
				label = l.mirror(label)
			}
			img = aug
		}
		hb.labels[k] = int64(label)
		if !l.hostFloats {
			copy(hb.buf[k*size:], img)
			continue
		}
		l.norm.Apply(unsafe.Slice((*float32)(unsafe.Pointer(&hb.buf[k*size*4])), size), img)
	}
	return hb
}

// augRNG is the generator of record i's augmentation in epoch.
func (l *Loader) augRNG(epoch, i int) *rand.Rand {
	return rand.New(rand.NewPCG(l.o.Seed^0xa5a5a5a5, uint64(epoch)<<32|uint64(i)))
}

// Next returns the next batch, or nil at the end of the epoch.
func (e *Epoch) Next() (*Batch, error) {
	if e.next >= len(e.slots) {
		return nil, nil
	}
	if e.l.o.OnDevice != nil {
		return e.nextOnDevice()
	}
	var hb hostBatch
	select {
	case hb = <-e.slots[e.next]:
	case <-e.done:
		return nil, errors.New("epoch closed")
	}
	e.next++
	<-e.sem
	defer e.l.putBuf(hb.buf)
	l := e.l
	n := int64(len(hb.indices))
	shape := []int64{n, 3, int64(l.cache.H), int64(l.cache.W)}
	var x *ts.Tensor
	var err error
	if l.hostFloats {
		x, err = torch.FromBytes(hb.buf, shape, gotch.Float)
	} else {
		x, err = l.toDevice(hb.buf, shape)
	}
	if err != nil {
		return nil, err
	}
	y, err := ts.OfSlice(hb.labels)
	if err != nil {
		x.MustDrop()
		return nil, err
	}
	if l.o.Device.IsCuda() {
		y = y.MustTo(l.o.Device, true)
	}
	labels := make([]int, n)
	for i, v := range hb.labels {
		labels[i] = int(v)
	}
	return &Batch{X: x, Y: y, Indices: hb.indices, Labels: labels}, nil
}

// nextOnDevice gathers the next batch from the device images.
func (e *Epoch) nextOnDevice() (*Batch, error) {
	l, b := e.l, e.next
	e.next++
	recs := e.order[b*l.o.BatchSize : min((b+1)*l.o.BatchSize, len(e.order))]
	idx, flip := make([]int64, len(recs)), make([]bool, len(recs))
	labels, y64 := make([]int, len(recs)), make([]int64, len(recs))
	for k, i := range recs {
		idx[k], labels[k] = int64(i), l.labels[i]
		if a := l.o.Augment; a != nil && a.HFlip > 0 {
			if flip[k] = a.draw(l.augRNG(e.epoch, i), l.cache.W, l.cache.H).flip; flip[k] {
				labels[k] = l.mirror(labels[k])
			}
		}
		y64[k] = int64(labels[k])
	}
	x, err := l.o.OnDevice.batch(idx, flip)
	if err != nil {
		return nil, err
	}
	y := ts.MustOfSlice(y64)
	if l.o.Device.IsCuda() {
		y = y.MustTo(l.o.Device, true)
	}
	return &Batch{X: x, Y: y, Indices: append([]int(nil), recs...), Labels: labels}, nil
}

// toDevice moves a uint8 batch to the device and normalises it there, with
// the host path's table (the same values).
func (l *Loader) toDevice(buf []byte, shape []int64) (*ts.Tensor, error) {
	if l.lut == nil {
		l.lut, l.offset = normTable(l.o.Device)
	}
	s := torch.NewScope()
	defer s.Close()
	u8, err := torch.FromBytes(buf, shape, gotch.Uint8)
	if err != nil {
		return nil, err
	}
	s.T(u8)
	d := s.T(u8.MustTo(l.o.Device, false))
	return normalizeWith(s, l.lut, l.offset, d), nil
}

// Close stops the epoch's background work; call it when leaving early.
// It is safe to call more than once.
func (e *Epoch) Close() {
	e.once.Do(func() { close(e.done) })
	e.wg.Wait()
	for _, s := range e.slots {
		select {
		case hb := <-s:
			e.l.putBuf(hb.buf)
		default:
		}
	}
}

// SplitLoaders returns train, validation and test loaders over a cache for
// an assignment, labelled with scheme. Only the training loader shuffles
// and augments; o's Shuffle and Augment apply to it. With o.Shard, the
// training shards are padded to equal length and the evaluation ones not.
func SplitLoaders(ds *Dataset, c *Cache, a Assignment, scheme Scheme, o LoaderOptions) (train, val, test *Loader, err error) {
	labels := scheme.Labels(ds.Records)
	mk := func(s Split, o LoaderOptions) (*Loader, error) {
		l, err := NewLoader(c, a.Indices(s), labels, scheme.MirrorLabel, o)
		if err != nil {
			return nil, fmt.Errorf("%s split: %w", s, err)
		}
		return l, nil
	}
	if train, err = mk(Train, o); err != nil {
		return nil, nil, nil, err
	}
	o.Shard.Pad = true
	plain := o
	plain.Shuffle, plain.Augment, plain.Shard.Pad = false, nil, false
	if val, err = mk(Val, plain); err != nil {
		return nil, nil, nil, err
	}
	if test, err = mk(Test, plain); err != nil {
		return nil, nil, nil, err
	}
	return train, val, test, nil
}

// Close frees the loader's device tensors (its normalisation table on a
// CUDA device). Device images given in OnDevice belong to the caller.
func (l *Loader) Close() {
	if l.lut != nil {
		l.lut.MustDrop()
		l.offset.MustDrop()
		l.lut, l.offset = nil, nil
	}
}
