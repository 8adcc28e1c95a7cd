package model

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzReadSafetensors: no file crashes the checkpoint reader or makes it
// build a tensor its bytes do not hold; errors are one line.
func FuzzReadSafetensors(f *testing.F) {
	small := func(header string, data []byte) []byte {
		b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
		return append(append(b, header...), data...)
	}
	f.Add(small(`{"__metadata__":{"format":"handnet","format_version":"1","model":"{}"},"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}`, make([]byte, 16)))
	f.Add(small(`{"x":{"dtype":"F32","shape":[0,18446744073709551615],"data_offsets":[0,0]}}`, nil))
	f.Add(small(`{"x":{"dtype":"I64","shape":[],"data_offsets":[0,8]},"y":{"dtype":"U8","shape":[3],"data_offsets":[8,11]}}`, make([]byte, 11)))
	f.Add(small(`{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}`, make([]byte, 8)))
	f.Add([]byte("PK\x03\x04"))
	f.Add([]byte{})
	p := filepath.Join(f.TempDir(), "c.safetensors")
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		tensors, _, err := ReadSafetensors(p)
		if err != nil {
			if strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "frame #") {
				t.Errorf("error not one line: %q", err)
			}
			return
		}
		for _, x := range tensors {
			x.MustDrop()
		}
		if c, err := ReadCheckpoint(p); err == nil {
			if c.Model.Validate() != nil {
				t.Error("accepted a checkpoint whose model does not validate")
			}
			c.Drop()
		}
	})
}
