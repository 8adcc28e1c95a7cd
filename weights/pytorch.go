package weights

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path"
	"runtime/debug"
	"strings"
	"unsafe"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/nlpodyssey/gopickle/pickle"
	"github.com/nlpodyssey/gopickle/pytorch"
	"github.com/nlpodyssey/gopickle/types"
	"github.com/sugarme/gotch"
	"github.com/sugarme/gotch/ts"
)

// PyTorch files (torch.save) are read with gopickle, a pure-data unpickler
// (nothing in a file runs), behind checks that make hostile files ordinary
// errors rather than crashes: the pickle streams are scanned first (every
// opcode known, every length inside the file, so no declared length can
// make the unpickler allocate more than the file holds), every storage's
// declared size must match the bytes that hold it, and every tensor's
// shape, strides and offset must stay inside its storage.

// MaxFileBytes is the largest weights file read.
const MaxFileBytes = 2 << 30

// readPyTorch reads a state dict saved by torch.save, in the zip format
// (PyTorch >= 1.6) or the legacy one, into CPU tensors by name.
func readPyTorch(p string) (tensors map[string]*ts.Tensor, err error) {
	data, err := model.ReadRegular(p, MaxFileBytes, "a weights file")
	if err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil { // gopickle panics on a few malformed inputs
			err = fmt.Errorf("%s: malformed PyTorch file (%v)", p, r)
			if os.Getenv("HANDNET_DEBUG") != "" {
				err = fmt.Errorf("%w\n%s", err, debug.Stack())
			}
		}
		if err != nil {
			for _, t := range tensors {
				t.MustDrop()
			}
			tensors = nil
		}
	}()
	var obj any
	if len(data) >= 4 && string(data[:4]) == "PK\x03\x04" {
		obj, err = loadZip(data)
	} else {
		obj, err = loadLegacy(data)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: not a PyTorch state dict: %w", p, err)
	}
	named, err := stateDict(obj)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", p, err)
	}
	tensors = map[string]*ts.Tensor{}
	// Tensors may share a storage (tied weights): bound what all of them
	// take together, not only each.
	budget := 2*int64(len(data)) + 64<<20
	for _, nt := range named {
		n := int64(1)
		for _, d := range nt.t.Size {
			if d < 0 || d > 1<<40 || n > 0 && int64(d) > (1<<40)/max(n, 1) {
				return tensors, fmt.Errorf("%s: tensor %s: size %v out of range", p, nt.name, nt.t.Size)
			}
			n *= int64(d)
		}
		if budget -= 8 * n; budget < 0 {
			return tensors, fmt.Errorf("%s: its tensors would take more than twice the file's size (shared or expanded storages)", p)
		}
		t, err := toTensor(nt.t)
		if err != nil {
			return tensors, fmt.Errorf("%s: tensor %s: %w", p, nt.name, err)
		}
		tensors[nt.name] = t
	}
	if err := model.CheckFinite(tensors); err != nil {
		return tensors, fmt.Errorf("%s: %w", p, err)
	}
	return tensors, nil
}

// Pickle opcodes by the argument that follows them (see Python's
// pickletools): fixed sizes, a length of 1, 4 or 8 bytes then that many
// bytes, or newline-terminated lines.
const (
	argLine1 = -1 // one line
	argLine2 = -2 // two lines
	argLen1  = -3
	argLen4  = -4
	argLen8  = -5
)

var opArgs = func() map[byte]int {
	m := map[byte]int{}
	for _, op := range "(.012NRabd}el]ost)u" {
		m[byte(op)] = 0
	}
	for _, op := range []byte{0x81, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8f, 0x90, 0x91, 0x92, 0x93, 0x94, 0x97, 0x98, 'Q'} {
		m[op] = 0
	}
	for _, op := range "FILPSVgp" {
		m[byte(op)] = argLine1
	}
	m['c'], m['i'] = argLine2, argLine2
	for op, n := range map[byte]int{'J': 4, 'K': 1, 'M': 2, 'h': 1, 'j': 4, 'q': 1, 'r': 4, 'G': 8, 0x80: 1, 0x82: 1, 0x83: 2, 0x84: 4} {
		m[op] = n
	}
	for _, op := range []byte{'U', 'C', 0x8c, 0x8a} {
		m[op] = argLen1
	}
	for _, op := range []byte{'T', 'X', 'B', 0x8b} {
		m[op] = argLen4
	}
	for _, op := range []byte{0x8d, 0x8e, 0x96, 0x95} { // 0x95 FRAME: its contents follow as opcodes
		m[op] = argLen8
	}
	return m
}()

// opCost bounds what unpickling one opcode allocates (an object, its
// stack slot, a MARK's fresh stack): measured well under this.
const opCost = 320

// pickleOverhead is what unpickling may take beyond the tensor bytes a file
// holds: a state dict's pickle is a few thousand opcodes, far below it.
const pickleOverhead = 64 << 20

// pickleCostError is a pickle that would take more memory to unpickle than
// the tensors it could describe justify (a deep list, say, compressed).
func pickleCostError(ops int64, tensorBytes int64) error {
	return fmt.Errorf("its pickle has %d opcodes, about %d MB to unpickle, more than its %d MB of tensor data justify (at most %d MB more): refused as a pickle bomb",
		ops, ops*opCost>>20, tensorBytes>>20, pickleOverhead>>20)
}

// scanPickle checks the pickle that starts at data[off]: known opcodes,
// lengths inside data. It returns the offset just past its STOP and the
// number of opcodes it holds.
func scanPickle(data []byte, off int) (int, int64, error) {
	i := off
	var ops int64
	for i < len(data) {
		ops++
		op := data[i]
		arg, ok := opArgs[op]
		if !ok {
			return 0, 0, fmt.Errorf("pickle opcode 0x%02x at byte %d is not one torch.save writes", op, i)
		}
		i++
		switch {
		case op == '.':
			return i, ops, nil
		case arg >= 0:
			i += arg
		case arg == argLine1 || arg == argLine2:
			for range -arg {
				j := bytes.IndexByte(data[i:], '\n')
				if j < 0 {
					return 0, 0, fmt.Errorf("pickle line at byte %d is not terminated", i)
				}
				i += j + 1
			}
		default:
			w := map[int]int{argLen1: 1, argLen4: 4, argLen8: 8}[arg]
			if i+w > len(data) {
				return 0, 0, fmt.Errorf("pickle truncated at byte %d", i)
			}
			var n uint64
			switch w {
			case 1:
				n = uint64(data[i])
			case 4:
				n = uint64(binary.LittleEndian.Uint32(data[i:]))
			case 8:
				n = binary.LittleEndian.Uint64(data[i:])
			}
			i += w
			if n > uint64(len(data)-i) {
				return 0, 0, fmt.Errorf("pickle declares %d bytes at byte %d, the file has %d left", n, i, len(data)-i)
			}
			if op != 0x95 { // a frame's bytes are opcodes, scanned in turn
				i += int(n)
			}
		}
	}
	return 0, 0, errors.New("pickle truncated: no STOP")
}

// storageBytes is the element size of a gopickle storage class.
func storageBytes(c pytorch.StorageClassInterface) (int, error) {
	switch c.(type) {
	case *pytorch.FloatStorageClass, *pytorch.IntStorageClass:
		return 4, nil
	case *pytorch.DoubleStorageClass, *pytorch.LongStorageClass:
		return 8, nil
	case *pytorch.HalfStorageClass, *pytorch.BFloat16StorageClass, *pytorch.ShortStorageClass:
		return 2, nil
	case *pytorch.ByteStorageClass, *pytorch.CharStorageClass, *pytorch.BoolStorageClass:
		return 1, nil
	}
	return 0, fmt.Errorf("unknown storage class %T", c)
}

func findClass(module, name string) (any, error) {
	switch module + "." + name {
	case "torch._utils._rebuild_tensor_v2":
		return &pytorch.RebuildTensorV2{}, nil
	case "torch.FloatStorage":
		return &pytorch.FloatStorageClass{}, nil
	case "torch.HalfStorage":
		return &pytorch.HalfStorageClass{}, nil
	case "torch.DoubleStorage":
		return &pytorch.DoubleStorageClass{}, nil
	case "torch.CharStorage":
		return &pytorch.CharStorageClass{}, nil
	case "torch.ShortStorage":
		return &pytorch.ShortStorageClass{}, nil
	case "torch.IntStorage":
		return &pytorch.IntStorageClass{}, nil
	case "torch.LongStorage":
		return &pytorch.LongStorageClass{}, nil
	case "torch.ByteStorage":
		return &pytorch.ByteStorageClass{}, nil
	case "torch.BoolStorage":
		return &pytorch.BoolStorageClass{}, nil
	case "torch.BFloat16Storage":
		return &pytorch.BFloat16StorageClass{}, nil
	case "collections.OrderedDict":
		return &types.OrderedDictClass{}, nil
	}
	return nil, fmt.Errorf("class %s.%s is not part of a state dict", module, name)
}

// storageArgs reads a persistent id ("storage", class, key, location,
// size[, view]).
func storageArgs(id any, n int) (pytorch.StorageClassInterface, string, string, int, error) {
	t, ok := id.(*types.Tuple)
	if !ok || t.Len() < n {
		return nil, "", "", 0, fmt.Errorf("unexpected persistent id %v", id)
	}
	if name, _ := t.Get(0).(string); name != "storage" {
		return nil, "", "", 0, fmt.Errorf("persistent id of type %v, want storage", t.Get(0))
	}
	class, ok1 := t.Get(1).(pytorch.StorageClassInterface)
	key, ok2 := t.Get(2).(string)
	loc, ok3 := t.Get(3).(string)
	size, ok4 := t.Get(4).(int)
	if !ok1 || !ok2 || !ok3 || !ok4 || size < 0 {
		return nil, "", "", 0, fmt.Errorf("unexpected storage id %v", id)
	}
	return class, key, loc, size, nil
}

func loadZip(data []byte) (any, error) {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, err
	}
	records := map[string]*zip.File{}
	var pkl *zip.File
	for _, f := range zr.File {
		dir, base := path.Split(f.Name)
		switch {
		case base == "data.pkl" && !strings.Contains(strings.TrimSuffix(dir, "/"), "/"):
			pkl = f
		case base == "constants.pkl":
			return nil, errors.New("a TorchScript archive, not a state dict")
		case strings.HasSuffix(strings.TrimSuffix(dir, "/"), "/data") || strings.TrimSuffix(dir, "/") == "data":
			records[base] = f
		}
	}
	if pkl == nil {
		return nil, errors.New("no data.pkl in the archive")
	}
	var tensorBytes int64
	for _, f := range records {
		tensorBytes += int64(min(f.UncompressedSize64, 1<<40))
	}
	// Sizes are declared by the archive: no more than deflate can expand.
	tensorBytes = min(tensorBytes, int64(len(data))*1032)
	// The pickle may be at most as large as unpickling it may cost, before
	// it is even inflated.
	if limit := min(64<<20, (pickleOverhead+tensorBytes)/opCost+1<<20); pkl.UncompressedSize64 > uint64(limit) {
		return nil, fmt.Errorf("its pickle (%s) is %d bytes, more than its %d MB of tensor data justify (at most %d): refused as a pickle bomb",
			pkl.Name, pkl.UncompressedSize64, tensorBytes>>20, limit)
	}
	p, err := readEntry(pkl, min(64<<20, (pickleOverhead+tensorBytes)/opCost+1<<20))
	if err != nil {
		return nil, err
	}
	_, ops, err := scanPickle(p, 0)
	if err != nil {
		return nil, err
	}
	if ops*opCost > pickleOverhead+tensorBytes {
		return nil, pickleCostError(ops, tensorBytes)
	}
	loaded := map[string]pytorch.StorageInterface{}
	u := pickle.NewUnpickler(bytes.NewReader(p))
	u.FindClass = findClass
	u.PersistentLoad = func(id any) (any, error) {
		class, key, loc, size, err := storageArgs(id, 5)
		if err != nil {
			return nil, err
		}
		if s, ok := loaded[key]; ok {
			return s, nil
		}
		f, ok := records[key]
		if !ok {
			return nil, fmt.Errorf("storage %q is not in the archive", key)
		}
		elem, err := storageBytes(class)
		if err != nil {
			return nil, err
		}
		if size > 1<<40 || uint64(size)*uint64(elem) != f.UncompressedSize64 {
			return nil, fmt.Errorf("storage %q declares %d elements of %d bytes, the archive holds %d bytes", key, size, elem, f.UncompressedSize64)
		}
		b, err := readEntry(f, int64(len(data))*1032) // deflate compresses at most ~1032:1
		if err != nil {
			return nil, err
		}
		s := class.New(size, loc)
		if err := s.SetFromFileWithSize(newReader(b), size); err != nil {
			return nil, fmt.Errorf("storage %q: %w", key, err)
		}
		loaded[key] = s
		return s, nil
	}
	return u.Load()
}

// readEntry reads a zip entry of at most max bytes.
func readEntry(f *zip.File, max int64) ([]byte, error) {
	if f.UncompressedSize64 > uint64(max) {
		return nil, fmt.Errorf("%s: %d bytes, more than %d", f.Name, f.UncompressedSize64, max)
	}
	r, err := f.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b, err := io.ReadAll(io.LimitReader(r, int64(f.UncompressedSize64)+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name, err)
	}
	if uint64(len(b)) != f.UncompressedSize64 {
		return nil, fmt.Errorf("%s: %d bytes, the archive says %d", f.Name, len(b), f.UncompressedSize64)
	}
	return b, nil
}

// loadLegacy reads the legacy format: pickles of the magic number, the
// protocol version, system info, the object and the storage keys, then
// each storage as a little-endian element count and its bytes.
func loadLegacy(data []byte) (any, error) {
	var starts []int
	off := 0
	var ops int64
	for range 5 {
		end, n, err := scanPickle(data, off)
		if err != nil {
			return nil, err
		}
		starts = append(starts, off)
		off, ops = end, ops+n
	}
	if tensorBytes := int64(len(data) - off); ops*opCost > pickleOverhead+tensorBytes {
		return nil, pickleCostError(ops, tensorBytes)
	}
	unpickle := func(k int) (any, error) {
		u := pickle.NewUnpickler(bytes.NewReader(data[starts[k]:]))
		u.FindClass = findClass
		return u.Load()
	}
	magic, err := unpickle(0)
	if err != nil {
		return nil, err
	}
	if fmt.Sprint(magic) != "119547037146038801333356" { // 0x1950a86a20f9469cfc6c
		return nil, errors.New("no PyTorch magic number")
	}
	type declared struct {
		s          pytorch.StorageInterface
		size, elem int
	}
	storages := map[string]declared{}
	u := pickle.NewUnpickler(bytes.NewReader(data[starts[3]:]))
	u.FindClass = findClass
	u.PersistentLoad = func(id any) (any, error) {
		class, key, loc, size, err := storageArgs(id, 6)
		if err != nil {
			return nil, err
		}
		if view := id.(*types.Tuple).Get(5); view != nil {
			return nil, errors.New("storage views are not supported")
		}
		elem, err := storageBytes(class)
		if err != nil {
			return nil, err
		}
		if size > 1<<40 || uint64(size)*uint64(elem) > uint64(len(data)) {
			return nil, fmt.Errorf("storage %q declares %d elements, more than the file holds", key, size)
		}
		if d, ok := storages[key]; ok {
			return d.s, nil
		}
		d := declared{class.New(size, loc), size, elem}
		storages[key] = d
		return d.s, nil
	}
	obj, err := u.Load()
	if err != nil {
		return nil, err
	}
	rawKeys, err := unpickle(4)
	if err != nil {
		return nil, err
	}
	keys, ok := rawKeys.(*types.List)
	if !ok {
		return nil, errors.New("bad storage key list")
	}
	for i := 0; i < keys.Len(); i++ {
		key, ok := keys.Get(i).(string)
		d, found := storages[key]
		if !ok || !found {
			return nil, fmt.Errorf("storage %v is listed but never used", keys.Get(i))
		}
		if off+8 > len(data) {
			return nil, errors.New("truncated: storage data missing")
		}
		n := binary.LittleEndian.Uint64(data[off:])
		off += 8
		if n != uint64(d.size) {
			return nil, fmt.Errorf("storage %q holds %d elements, its tensors say %d", key, n, d.size)
		}
		bytes := d.size * d.elem
		if bytes > len(data)-off {
			return nil, fmt.Errorf("storage %q: truncated", key)
		}
		if err := d.s.SetFromFileWithSize(newReader(data[off:off+bytes]), d.size); err != nil {
			return nil, fmt.Errorf("storage %q: %w", key, err)
		}
		off += bytes
	}
	return obj, nil
}

func newReader(b []byte) io.Reader { return bytes.NewReader(b) }

// namedTensor is one entry of a state dict.
type namedTensor struct {
	name string
	t    *pytorch.Tensor
}

// stateDict finds the name → tensor mapping in a loaded object: the object
// itself, or its "state_dict" or "model" entry (training checkpoints).
func stateDict(obj any) ([]namedTensor, error) {
	entries := func(o any) ([][2]any, bool) {
		switch d := o.(type) {
		case *types.OrderedDict:
			var out [][2]any
			for e := d.List.Front(); e != nil; e = e.Next() {
				oe := e.Value.(*types.OrderedDictEntry)
				out = append(out, [2]any{oe.Key, oe.Value})
			}
			return out, true
		case *types.Dict:
			var out [][2]any
			for _, e := range *d {
				out = append(out, [2]any{e.Key, e.Value})
			}
			return out, true
		}
		return nil, false
	}
	es, ok := entries(obj)
	if !ok {
		return nil, fmt.Errorf("its pickle holds %s, not a state dict (a dict of names to tensors)", pickleKind(obj))
	}
	for _, e := range es {
		if k, _ := e[0].(string); k == "state_dict" || k == "model" {
			if inner, ok := entries(e[1]); ok {
				es = inner
				break
			}
		}
	}
	var out []namedTensor
	for _, e := range es {
		name, ok := e[0].(string)
		if !ok {
			return nil, fmt.Errorf("state dict key of type %s is not a name (a str)", pickleKind(e[0]))
		}
		t, ok := e[1].(*pytorch.Tensor)
		if !ok {
			continue // e.g. _metadata, or a non-tensor entry
		}
		out = append(out, namedTensor{name, t})
	}
	if len(out) == 0 {
		return nil, errors.New("no tensors in it")
	}
	return out, nil
}

// toTensor copies a gopickle tensor (any strides) into a contiguous torch
// tensor, after checking that it stays inside its storage.
func toTensor(t *pytorch.Tensor) (*ts.Tensor, error) {
	if len(t.Size) != len(t.Stride) || len(t.Size) > 16 {
		return nil, fmt.Errorf("%d sizes for %d strides", len(t.Size), len(t.Stride))
	}
	numel, last := 1, t.StorageOffset
	for i, n := range t.Size {
		if n < 0 || t.Stride[i] < 0 || n > 1<<40 {
			return nil, fmt.Errorf("bad size %v or stride %v", t.Size, t.Stride)
		}
		if n > 0 && numel > (1<<40)/n {
			return nil, fmt.Errorf("size %v too large", t.Size)
		}
		numel *= n
		if n > 0 {
			last += (n - 1) * t.Stride[i]
		}
	}
	if t.StorageOffset < 0 {
		return nil, fmt.Errorf("storage offset %d", t.StorageOffset)
	}
	shape := make([]int64, len(t.Size))
	for i, n := range t.Size {
		shape[i] = int64(n)
	}
	gather := func(n int, set func(dst, src int)) error {
		if numel > n {
			return fmt.Errorf("size %v has %d elements, its storage %d: expanded (stride-0) tensors are not supported", t.Size, numel, n)
		}
		if numel > 0 && last >= n {
			return fmt.Errorf("size %v, strides %v and offset %d reach element %d of a storage of %d", t.Size, t.Stride, t.StorageOffset, last, n)
		}
		idx := make([]int, len(t.Size))
		for k := range numel {
			src := t.StorageOffset
			for i, v := range idx {
				src += v * t.Stride[i]
			}
			set(k, src)
			for i := len(idx) - 1; i >= 0; i-- {
				if idx[i]++; idx[i] < t.Size[i] {
					break
				}
				idx[i] = 0
			}
		}
		return nil
	}
	switch s := t.Source.(type) {
	case *pytorch.FloatStorage:
		return fromSlice(s.Data, shape, gotch.Float, numel, gather)
	case *pytorch.HalfStorage:
		return fromSlice(s.Data, shape, gotch.Float, numel, gather)
	case *pytorch.BFloat16Storage:
		return fromSlice(s.Data, shape, gotch.Float, numel, gather)
	case *pytorch.DoubleStorage:
		return fromSlice(s.Data, shape, gotch.Double, numel, gather)
	case *pytorch.LongStorage:
		return fromSlice(s.Data, shape, gotch.Int64, numel, gather)
	case *pytorch.IntStorage:
		return fromSlice(s.Data, shape, gotch.Int, numel, gather)
	case *pytorch.ByteStorage:
		return fromSlice(s.Data, shape, gotch.Uint8, numel, gather)
	case *pytorch.CharStorage:
		return fromSlice(s.Data, shape, gotch.Int8, numel, gather)
	case *pytorch.ShortStorage:
		return fromSlice(s.Data, shape, gotch.Int16, numel, gather)
	case *pytorch.BoolStorage:
		return fromSlice(s.Data, shape, gotch.Bool, numel, gather)
	}
	return nil, fmt.Errorf("unsupported storage %T", t.Source)
}

func fromSlice[E any](data []E, shape []int64, dt gotch.DType, numel int, gather func(n int, set func(dst, src int)) error) (*ts.Tensor, error) {
	out := make([]E, numel)
	if err := gather(len(data), func(dst, src int) { out[dst] = data[src] }); err != nil {
		return nil, err
	}
	var b []byte
	if numel > 0 {
		var zero E
		b = unsafe.Slice((*byte)(unsafe.Pointer(&out[0])), numel*int(unsafe.Sizeof(zero)))
	}
	return torch.FromBytes(b, shape, dt)
}

// pickleKind names an unpickled value in Python's words (never a Go type):
// errors describe the file, not the reader.
func pickleKind(v any) string {
	switch v := v.(type) {
	case nil:
		return "None"
	case bool:
		return "a bool"
	case int, int64, *big.Int:
		return "an int"
	case float64:
		return "a float"
	case string:
		return "a str"
	case []byte:
		return "bytes"
	case *types.List:
		return "a list"
	case *types.Tuple:
		return "a tuple"
	case *types.Dict, *types.OrderedDict:
		return "a dict"
	case *types.Set, *types.FrozenSet:
		return "a set"
	case *pytorch.Tensor:
		return "a tensor"
	case *types.GenericObject:
		return "an object of class " + v.Class.Module + "." + v.Class.Name
	}
	return "an object handnet does not read"
}
