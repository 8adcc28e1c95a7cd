package vision

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
)

// Cache holds every image of a dataset preprocessed to W×H uint8 CHW, in
// HandInfo.csv order, in one file mapped into memory. Build it once with
// OpenCache; later epochs and experiments read it instead of decoding.
type Cache struct {
	Path  string
	W, H  int
	Count int
	// Key identifies the cached pixels: it hashes every image's name, size
	// and modification time, the target size, the decode mode and the
	// pipeline version.
	Key string
	// Bad lists the records skipped as unreadable (with SkipBad), with why.
	Bad map[int]string

	data []byte // mmap'd pixels
	file []byte // whole mapping
}

// CacheOptions configures OpenCache.
type CacheOptions struct {
	Dir     string // folder for cache files; "" means DefaultCacheDir()
	W, H    int    // target size; 0 means Width×Height
	Exact   bool   // decode at full resolution (see Preprocessor.Exact)
	SkipBad bool   // skip unreadable images (listed in Cache.Bad) instead of failing
	Workers int    // decoding goroutines; 0 means all usable CPUs
	// Progress, when set, is called as images are decoded (only when the
	// cache is being built).
	Progress func(done, total int)
}

// DefaultCacheDir is $XDG_CACHE_HOME/handnet (or ~/.cache/handnet).
func DefaultCacheDir() string {
	d, err := os.UserCacheDir()
	if err != nil {
		d = os.TempDir()
	}
	return filepath.Join(d, "handnet")
}

const cacheMagic = "HNCACHE1"

type cacheHeader struct {
	Key      string         `json:"key"`
	Pipeline int            `json:"pipeline"`
	W        int            `json:"w"`
	H        int            `json:"h"`
	Count    int            `json:"count"`
	Dataset  string         `json:"dataset"`
	Bad      map[int]string `json:"bad,omitempty"`
}

// cacheKey hashes what the cached pixels depend on: every image's name,
// size and modification time, the target size, the decode mode and the
// pipeline version. It returns the error of the first missing image.
func cacheKey(ds *Dataset, o CacheOptions) (string, map[int]string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "%d %dx%d exact=%v\n", PipelineVersion, o.W, o.H, o.Exact)
	missing := map[int]string{}
	for i, r := range ds.Records {
		fi, err := os.Stat(ds.ImagePath(i))
		if err != nil {
			if !o.SkipBad {
				return "", nil, fmt.Errorf("%s (HandInfo.csv line %d): %w", ds.ImagePath(i), r.Line, err)
			}
			missing[i] = err.Error()
			fmt.Fprintf(h, "%s missing\n", r.ImageName)
			continue
		}
		fmt.Fprintf(h, "%s %d %d\n", r.ImageName, fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil)), missing, nil
}

// OpenCache returns the dataset's cache, building it when it is missing or
// stale (any image added, removed or changed, another size or pipeline).
// Without SkipBad, the first unreadable image stops the build with an
// error naming it, and nothing is written.
func OpenCache(ds *Dataset, o CacheOptions) (*Cache, error) {
	o.fill()
	key, missing, err := cacheKey(ds, o)
	if err != nil {
		return nil, err
	}
	path := cachePath(ds, o)
	if c, err := mapCache(path, key); err == nil {
		return c, nil
	}
	if err := buildCache(ds, o, path, key, missing); err != nil {
		return nil, err
	}
	return mapCache(path, key)
}

func (o *CacheOptions) fill() {
	if o.W == 0 && o.H == 0 {
		o.W, o.H = Width, Height
	}
	if o.Dir == "" {
		o.Dir = DefaultCacheDir()
	}
}

// cachePath names a dataset's cache file after its folder (base name and
// a hash of the absolute path) and the target size.
func cachePath(ds *Dataset, o CacheOptions) string {
	abs, _ := filepath.Abs(ds.Dir)
	sum := sha256.Sum256([]byte(abs))
	return filepath.Join(o.Dir, fmt.Sprintf("%s-%s-%dx%d.u8", filepath.Base(abs), hex.EncodeToString(sum[:6]), o.W, o.H))
}

// CacheIsCurrent tells whether OpenCache would find a current cache for ds
// (and so would not decode anything).
func CacheIsCurrent(ds *Dataset, o CacheOptions) bool {
	o.fill()
	key, _, err := cacheKey(ds, o)
	if err != nil {
		return false
	}
	c, err := mapCache(cachePath(ds, o), key)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

const cacheAlign = 4096

func buildCache(ds *Dataset, o CacheOptions, path, key string, bad map[int]string) error {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return fmt.Errorf("cache folder: %w", err)
	}
	hdr := cacheHeader{Key: key, Pipeline: PipelineVersion, W: o.W, H: o.H, Count: len(ds.Records), Dataset: ds.Dir}
	size := 3 * o.W * o.H
	f, err := os.CreateTemp(o.Dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	defer f.Close()
	// Header goes last (bad images are known only then): reserve a page-aligned slot
	// big enough for the bad-image list to grow.
	hdrSlot := cacheAlign * (1 + (len(ds.Records)*64)/cacheAlign)
	if err := f.Truncate(int64(hdrSlot) + int64(size)*int64(len(ds.Records))); err != nil {
		return err
	}
	workers := o.Workers
	if workers <= 0 {
		workers = runtime.GOMAXPROCS(0)
	}
	var (
		next, done atomic.Int64
		mu         sync.Mutex
		firstErr   error
		wg         sync.WaitGroup
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := NewPreprocessor(o.W, o.H)
			if err != nil {
				mu.Lock()
				firstErr = err
				mu.Unlock()
				return
			}
			p.Exact = o.Exact
			buf := make([]byte, size)
			for {
				i := int(next.Add(1) - 1)
				mu.Lock()
				stop := i >= len(ds.Records) || firstErr != nil
				_, isMissing := bad[i]
				mu.Unlock()
				if stop {
					return
				}
				if !isMissing {
					if err := p.File(ds.ImagePath(i), buf); err != nil {
						err = fmt.Errorf("%s (HandInfo.csv line %d): %w", ds.ImagePath(i), ds.Records[i].Line, err)
						mu.Lock()
						if o.SkipBad {
							bad[i] = err.Error()
						} else if firstErr == nil {
							firstErr = fmt.Errorf("%w\n(use --skip-bad to skip unreadable images)", err)
						}
						mu.Unlock()
					} else if _, err := f.WriteAt(buf, int64(hdrSlot)+int64(i)*int64(size)); err != nil {
						mu.Lock()
						firstErr = err
						mu.Unlock()
						return
					}
				}
				if d := int(done.Add(1)); o.Progress != nil {
					o.Progress(d, len(ds.Records))
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if len(bad) == len(ds.Records) {
		return fmt.Errorf("none of the %d images could be read (first: %s)", len(bad), bad[0])
	}
	if len(bad) > 0 {
		hdr.Bad = bad
	}
	hb, err := json.Marshal(hdr)
	if err != nil {
		return err
	}
	if 8+4+len(hb) > hdrSlot {
		return fmt.Errorf("cache header too big (%d bytes)", len(hb))
	}
	head := make([]byte, 12, 12+len(hb))
	copy(head, cacheMagic)
	binary.LittleEndian.PutUint32(head[8:], uint32(len(hb)))
	head = append(head, hb...)
	if _, err := f.WriteAt(head, 0); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// mapCache maps a cache file and checks its key.
func mapCache(path, key string) (*Cache, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	head := make([]byte, 12)
	if _, err := f.ReadAt(head, 0); err != nil || string(head[:8]) != cacheMagic {
		return nil, fmt.Errorf("%s: not a handnet cache", path)
	}
	n := int(binary.LittleEndian.Uint32(head[8:]))
	if n <= 0 || int64(12+n) > fi.Size() {
		return nil, fmt.Errorf("%s: corrupt header", path)
	}
	hb := make([]byte, n)
	if _, err := f.ReadAt(hb, 12); err != nil {
		return nil, err
	}
	var hdr cacheHeader
	if err := json.Unmarshal(hb, &hdr); err != nil {
		return nil, fmt.Errorf("%s: corrupt header: %w", path, err)
	}
	if hdr.Key != key {
		return nil, errors.New("stale cache")
	}
	size := int64(3 * hdr.W * hdr.H)
	hdrSlot := int64(cacheAlign * (1 + (hdr.Count*64)/cacheAlign))
	if fi.Size() != hdrSlot+size*int64(hdr.Count) {
		return nil, fmt.Errorf("%s: %d bytes, want %d (truncated?)", path, fi.Size(), hdrSlot+size*int64(hdr.Count))
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("%s: mmap: %w", path, err)
	}
	c := &Cache{Path: path, W: hdr.W, H: hdr.H, Count: hdr.Count, Key: hdr.Key, Bad: hdr.Bad, data: m[hdrSlot:], file: m}
	if c.Bad == nil {
		c.Bad = map[int]string{}
	}
	return c, nil
}

// ImageSize is the byte size of one cached image (3·W·H).
func (c *Cache) ImageSize() int { return 3 * c.W * c.H }

// Image returns record i's pixels, uint8 CHW. The slice aliases the
// mapping: read only, valid until Close.
func (c *Cache) Image(i int) []byte {
	n := c.ImageSize()
	return c.data[i*n : (i+1)*n : (i+1)*n]
}

// Usable reports whether record i has pixels (it was not skipped as bad).
func (c *Cache) Usable(i int) bool { _, bad := c.Bad[i]; return !bad }

// Close unmaps the cache.
func (c *Cache) Close() error {
	if c.file == nil {
		return nil
	}
	err := syscall.Munmap(c.file)
	c.file, c.data = nil, nil
	return err
}
