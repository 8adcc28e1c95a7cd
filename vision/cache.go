package vision

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/handnet/handnet/handnet/runtime/fileio"
)

// Cache holds every image of a dataset preprocessed to W×H uint8 CHW, in
// HandInfo.csv order, in one file mapped into memory. Build it once with
// OpenCache; later epochs and experiments read it instead of decoding.
type Cache struct {
	Path  string
	W, H  int
	Count int
	// Key identifies the cached pixels by content: it hashes every image's
	// name, size and bytes (SHA-256, see ImageHashes), the target size, the
	// decode mode and the pipeline version — never modification times, so a
	// copy of the dataset (cp -r, another node) has the same key.
	Key string
	// Bad lists the records that could not be read, with why (their pixels
	// are zero). A run uses them only with SkipBad.
	Bad map[int]string

	data []byte // mmap'd pixels
	file []byte // whole mapping
}

// CacheOptions configures OpenCache.
type CacheOptions struct {
	Dir     string // folder for cache files; "" means DefaultCacheDir()
	W, H    int    // target size; 0 means Width×Height
	Exact   bool   // decode JPEGs at full resolution (see Preprocessor.Exact)
	SkipBad bool   // use the cache although some images could not be read (they are left out)
	Limits  Limits // budgets of each decode
	Workers int    // decoding goroutines; 0 means all usable CPUs
	// Context, when set, stops a build when it ends: the temporary file is
	// removed and the error wraps the context's.
	Context context.Context
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

// A cache file is the pixels (from offset 0, so that the mapping is
// aligned), then the header as JSON, its length (uint32, little-endian)
// and the magic: no space is reserved, the header is as long as it needs.
const cacheMagic = "HNCACHE2"

type cacheHeader struct {
	Key      string         `json:"key"`
	Pipeline int            `json:"pipeline"`
	W        int            `json:"w"`
	H        int            `json:"h"`
	Count    int            `json:"count"`
	Bad      map[int]string `json:"bad,omitempty"` // record index → why (no paths)
}

// cacheKey hashes what the cached pixels depend on: every image's name,
// size and content hash (or that it is missing), the target size, the
// decode mode and the pipeline version.
func cacheKey(ds *Dataset, o CacheOptions) string {
	h := sha256.New()
	fmt.Fprintf(h, "%d %dx%d exact=%v\n", PipelineVersion, o.W, o.H, o.Exact)
	for i, c := range ImageHashes(ds, o.Dir) {
		fmt.Fprintf(h, "%s %s\n", ds.Records[i].ImageName, c)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// hashEntry is one image's remembered content hash, valid while the file's
// size, modification and change times and inode are the ones it was read
// with (the times only decide when to read again; the key is the bytes).
type hashEntry struct {
	Size  int64  `json:"size"`
	Mtime int64  `json:"mtime_ns"`
	Ctime int64  `json:"ctime_ns"`
	Ino   uint64 `json:"ino"`
	SHA   string `json:"sha256"`
}

// ImageHashes returns, for every record, "SIZE SHA256" of its image file
// ("missing" when it cannot be read). Each file is read once: the hashes
// are remembered in dir (one file per dataset folder) and read again only
// for files whose stat changed.
func ImageHashes(ds *Dataset, dir string) []string {
	abs, _ := filepath.Abs(ds.Dir)
	sum := sha256.Sum256([]byte(abs))
	memoPath := filepath.Join(dir, fmt.Sprintf("hashes-%s-%s.json", filepath.Base(abs), hex.EncodeToString(sum[:6])))
	memo := map[string]hashEntry{}
	if b, err := os.ReadFile(memoPath); err == nil {
		_ = json.Unmarshal(b, &memo) // a damaged memo is read again
	}
	out := make([]string, len(ds.Records))
	stats := make([]hashEntry, len(ds.Records))
	var todo []int
	for i, r := range ds.Records {
		fi, err := os.Stat(ds.ImagePath(i))
		if err != nil || !fi.Mode().IsRegular() {
			out[i] = "missing"
			continue
		}
		e := hashEntry{Size: fi.Size(), Mtime: fi.ModTime().UnixNano()}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			e.Ctime, e.Ino = st.Ctim.Nano(), st.Ino
		}
		if m, ok := memo[r.ImageName]; ok && m.Size == e.Size && m.Mtime == e.Mtime && m.Ctime == e.Ctime && m.Ino == e.Ino && m.SHA != "" {
			out[i] = fmt.Sprintf("%d %s", m.Size, m.SHA)
			continue
		}
		stats[i] = e
		todo = append(todo, i)
	}
	if len(todo) == 0 {
		return out
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(todo)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1)) - 1
				if k >= len(todo) {
					return
				}
				i := todo[k]
				sha, err := fileio.SHA256(ds.ImagePath(i))
				if err != nil {
					out[i] = "missing"
					continue
				}
				stats[i].SHA = sha
				out[i] = fmt.Sprintf("%d %s", stats[i].Size, sha)
			}
		}()
	}
	wg.Wait()
	for _, i := range todo {
		if stats[i].SHA != "" {
			memo[ds.Records[i].ImageName] = stats[i]
		}
	}
	if b, err := json.Marshal(memo); err == nil && os.MkdirAll(dir, 0o755) == nil {
		_ = fileio.WriteAtomic(memoPath, b) // without a writable cache folder: read again next time
	}
	return out
}

// OpenCache returns the dataset's cache, building it when it is missing or
// stale (any image added, removed or changed, another size, decode mode or
// pipeline). Images that cannot be read are recorded in the cache; unless
// SkipBad, OpenCache then fails naming them — the same error whether the
// cache was just built or built earlier by a run with SkipBad.
func OpenCache(ds *Dataset, o CacheOptions) (*Cache, error) {
	o.fill()
	key := cacheKey(ds, o)
	path := cachePath(ds, o)
	sweepCacheTemps(o.Dir)
	c, err := mapCache(path, key)
	if err != nil {
		if err := buildCache(ds, o, path, key); err != nil {
			return nil, err
		}
		if c, err = mapCache(path, key); err != nil {
			return nil, err
		}
	}
	if len(c.Bad) == len(ds.Records) && len(ds.Records) > 0 {
		err := fmt.Errorf("none of the %d images could be read: %s", len(c.Bad), c.BadList(ds, 3))
		c.Close()
		return nil, err
	}
	if len(c.Bad) > 0 && !o.SkipBad {
		err := fmt.Errorf("%d image(s) could not be read: %s\n(use --skip-bad to train without them)", len(c.Bad), c.BadList(ds, 10))
		c.Close()
		return nil, err
	}
	return c, nil
}

// BadList names up to n of the unreadable images (file, HandInfo.csv line
// and why), in record order.
func (c *Cache) BadList(ds *Dataset, n int) string {
	idx := make([]int, 0, len(c.Bad))
	for i := range c.Bad {
		idx = append(idx, i)
	}
	sort.Ints(idx)
	var parts []string
	for _, i := range idx[:min(n, len(idx))] {
		parts = append(parts, fmt.Sprintf("%s (HandInfo.csv line %d): %s", filepath.Join(ImagesDir, ds.Records[i].ImageName), ds.Records[i].Line, c.Bad[i]))
	}
	if len(idx) > n {
		parts = append(parts, fmt.Sprintf("and %d more", len(idx)-n))
	}
	return strings.Join(parts, "; ")
}

func (o *CacheOptions) fill() {
	if o.W == 0 && o.H == 0 {
		o.W, o.H = Width, Height
	}
	if o.Dir == "" {
		o.Dir = DefaultCacheDir()
	}
	if o.Context == nil {
		o.Context = context.Background()
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
	c, err := mapCache(cachePath(ds, o), cacheKey(ds, o))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// sweepCacheTemps removes the temporary files of builds whose process is
// gone: a build holds a lock on its file, so a file that can be locked is
// a leftover.
func sweepCacheTemps(dir string) {
	tmps, _ := filepath.Glob(filepath.Join(dir, fileio.TempPattern("*.u8")))
	for _, t := range tmps {
		f, err := os.OpenFile(t, os.O_RDWR, 0)
		if err != nil {
			continue
		}
		if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			os.Remove(t)
		}
		f.Close()
	}
}

func buildCache(ds *Dataset, o CacheOptions, path, key string) error {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return fmt.Errorf("cache folder: %w", err)
	}
	hdr := cacheHeader{Key: key, Pipeline: PipelineVersion, W: o.W, H: o.H, Count: len(ds.Records)}
	size := 3 * o.W * o.H
	f, err := fileio.Create(path)
	if err != nil {
		return err
	}
	defer f.Abort() // no-op after the commit
	tmp := f.Name()
	// Held, on a descriptor of its own (Commit closes f before the rename),
	// until the file is renamed or removed: a sweeper leaves it alone.
	lk, err := os.Open(tmp)
	if err != nil {
		return err
	}
	defer lk.Close()
	if err := syscall.Flock(int(lk.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return fmt.Errorf("cache: lock %s: %w", tmp, err)
	}
	pixels := int64(size) * int64(len(ds.Records))
	if err := f.Truncate(pixels); err != nil {
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
		bad        = map[int]string{}
	)
	fail := func(err error) {
		mu.Lock()
		if firstErr == nil {
			firstErr = err
		}
		mu.Unlock()
	}
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p, err := NewPreprocessor(o.W, o.H)
			if err != nil {
				fail(err)
				return
			}
			p.Exact, p.Limits = o.Exact, o.Limits
			buf := make([]byte, size)
			for {
				i := int(next.Add(1) - 1)
				mu.Lock()
				stop := i >= len(ds.Records) || firstErr != nil
				mu.Unlock()
				if stop {
					return
				}
				if err := o.Context.Err(); err != nil {
					fail(fmt.Errorf("cache build interrupted: %w", err))
					return
				}
				if err := p.File(ds.ImagePath(i), buf); err != nil {
					// The reason without the path: the header stays small
					// and the same wherever the dataset lives.
					why := err.Error()
					var pe *fs.PathError
					if errors.As(err, &pe) {
						why = pe.Op + ": " + pe.Err.Error()
					}
					mu.Lock()
					bad[i] = why
					mu.Unlock()
				} else if _, err := f.WriteAt(buf, int64(i)*int64(size)); err != nil {
					fail(err)
					return
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
	if len(bad) > 0 {
		hdr.Bad = bad
	}
	hb, err := json.Marshal(hdr)
	if err != nil {
		return err
	}
	tail := make([]byte, 0, len(hb)+12)
	tail = append(tail, hb...)
	tail = binary.LittleEndian.AppendUint32(tail, uint32(len(hb)))
	tail = append(tail, cacheMagic...)
	if _, err := f.WriteAt(tail, pixels); err != nil {
		return err
	}
	return f.Commit()
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
	tail := make([]byte, 12)
	if fi.Size() < 12 {
		return nil, fmt.Errorf("%s: not a handnet cache", path)
	}
	if _, err := f.ReadAt(tail, fi.Size()-12); err != nil || string(tail[4:]) != cacheMagic {
		return nil, fmt.Errorf("%s: not a handnet cache (or of an older handnet)", path)
	}
	n := int64(binary.LittleEndian.Uint32(tail))
	if n <= 0 || n+12 > fi.Size() {
		return nil, fmt.Errorf("%s: corrupt header", path)
	}
	hb := make([]byte, n)
	if _, err := f.ReadAt(hb, fi.Size()-12-n); err != nil {
		return nil, err
	}
	var hdr cacheHeader
	if err := json.Unmarshal(hb, &hdr); err != nil {
		return nil, fmt.Errorf("%s: corrupt header: %w", path, err)
	}
	if hdr.Key != key {
		return nil, errors.New("stale cache")
	}
	pixels := int64(3*hdr.W*hdr.H) * int64(hdr.Count)
	if hdr.W <= 0 || hdr.H <= 0 || hdr.Count < 0 || pixels+n+12 != fi.Size() {
		return nil, fmt.Errorf("%s: %d bytes, want %d (truncated?)", path, fi.Size(), pixels+n+12)
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("%s: mmap: %w", path, err)
	}
	c := &Cache{Path: path, W: hdr.W, H: hdr.H, Count: hdr.Count, Key: hdr.Key, Bad: hdr.Bad, data: m[:pixels], file: m}
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

// MemoryCache is a cache over images already in memory (count images of
// 3×h×w uint8 CHW, one after another): for benchmarks and tests that want
// loaders without a dataset on disk. Close does nothing.
func MemoryCache(w, h int, images []byte) (*Cache, error) {
	size := 3 * w * h
	if w <= 0 || h <= 0 || len(images) == 0 || len(images)%size != 0 {
		return nil, fmt.Errorf("memory cache: %d bytes is not a whole number of %dx%d images", len(images), w, h)
	}
	return &Cache{Path: "(memory)", W: w, H: h, Count: len(images) / size, Key: "memory", data: images}, nil
}
