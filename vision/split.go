package vision

import (
	"bytes"
	"encoding/csv"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"sort"
	"strings"

	"github.com/handnet/handnet/handnet/runtime/fileio"
)

// Split names one part of a dataset.
type Split uint8

// The three splits.
const (
	Train Split = iota
	Val
	Test
)

// Splits lists every split in order.
var Splits = []Split{Train, Val, Test}

func (s Split) String() string {
	switch s {
	case Train:
		return "train"
	case Val:
		return "val"
	case Test:
		return "test"
	}
	return fmt.Sprintf("Split(%d)", uint8(s))
}

// ParseSplit reads "train", "val" (or "validation") or "test".
func ParseSplit(s string) (Split, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "train":
		return Train, nil
	case "val", "valid", "validation":
		return Val, nil
	case "test":
		return Test, nil
	}
	return 0, fmt.Errorf("split %q: want train, val or test", s)
}

// SplitMethod says how records are assigned to splits.
type SplitMethod string

// The split methods. All take 15 % for test, then 20 % of the rest for
// validation (the study's fractions).
const (
	// Random splits the rows at random, as the study did: 7,531 / 1,883 /
	// 1,662 on the real HandInfo.csv. The same person lands in train and test.
	Random SplitMethod = "random"
	// Stratified applies the fractions within each class.
	Stratified SplitMethod = "stratified"
	// BySubject keeps every subject in one split, with class shares kept
	// as close to the whole set's as possible: the paper's honest protocol.
	BySubject SplitMethod = "subject"
)

// ParseSplitMethod reads random, stratified or subject.
func ParseSplitMethod(s string) (SplitMethod, error) {
	switch m := SplitMethod(strings.ToLower(s)); m {
	case Random, Stratified, BySubject:
		return m, nil
	}
	return "", fmt.Errorf("split method %q: want random, stratified or subject", s)
}

// Assignment gives the split of each record, by record index.
type Assignment []Split

// Indices returns the record indices in split s, ascending.
func (a Assignment) Indices(s Split) []int {
	var out []int
	for i, v := range a {
		if v == s {
			out = append(out, i)
		}
	}
	return out
}

// Sizes returns the number of records in train, val and test.
func (a Assignment) Sizes() [3]int {
	var n [3]int
	for _, v := range a {
		n[v]++
	}
	return n
}

// testPercent and valPercent are the study's fractions: 15 % test, then
// 20 % of the remainder for validation (rounded up, as scikit-learn's
// train_test_split does).
const testPercent, valPercent = 15, 20

func ceilPercent(n, pct int) int { return (n*pct + 99) / 100 }

// DefaultSeed is the seed of every command that splits or trains when
// --seed is not given (data stats, train, reproduce, audit, demo): the same
// default everywhere, so `data stats --split subject` shows the split that
// `train --split subject` then trains on.
const DefaultSeed uint64 = 1

// MakeSplit assigns every record to train, val or test, deterministically
// for a seed. Stratified uses the 8-class labels.
func MakeSplit(recs []Record, method SplitMethod, seed uint64) (Assignment, error) {
	rng := rand.New(rand.NewPCG(seed, 0x11c0ffee))
	a := make(Assignment, len(recs))
	switch method {
	case Random:
		assignShuffled(a, allIndices(len(recs)), rng)
	case Stratified:
		byClass := map[int][]int{}
		for i, r := range recs {
			c := Classes8.Label(r)
			byClass[c] = append(byClass[c], i)
		}
		for c := range len(Classes8.Classes()) {
			assignShuffled(a, byClass[c], rng)
		}
	case BySubject:
		assignSubjects(a, recs, rng)
	default:
		return nil, fmt.Errorf("split method %q: want random, stratified or subject", method)
	}
	return a, nil
}

func allIndices(n int) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	return idx
}

func assignShuffled(a Assignment, idx []int, rng *rand.Rand) {
	idx = append([]int(nil), idx...)
	rng.Shuffle(len(idx), func(i, j int) { idx[i], idx[j] = idx[j], idx[i] })
	nTest := ceilPercent(len(idx), testPercent)
	nVal := ceilPercent(len(idx)-nTest, valPercent)
	for k, i := range idx {
		switch {
		case k < nTest:
			a[i] = Test
		case k < nTest+nVal:
			a[i] = Val
		default:
			a[i] = Train
		}
	}
}

// assignSubjects puts whole subjects into splits greedily, largest first,
// each into the split where it brings the per-class counts closest to the
// targets (the fractions times the whole set's class counts).
func assignSubjects(a Assignment, recs []Record, rng *rand.Rand) {
	nc := len(Classes8.Classes())
	bySubject := map[string][]int{}
	for i, r := range recs {
		bySubject[r.ID] = append(bySubject[r.ID], i)
	}
	ids := make([]string, 0, len(bySubject))
	for id := range bySubject {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	rng.Shuffle(len(ids), func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	sort.SliceStable(ids, func(i, j int) bool { return len(bySubject[ids[i]]) > len(bySubject[ids[j]]) })

	total := make([]float64, nc)
	for _, r := range recs {
		total[Classes8.Label(r)]++
	}
	frac := [3]float64{}
	frac[Test] = testPercent / 100.0
	frac[Val] = (1 - frac[Test]) * valPercent / 100.0
	frac[Train] = 1 - frac[Test] - frac[Val]
	var count [3][]float64
	for s := range count {
		count[s] = make([]float64, nc)
	}
	for _, id := range ids {
		v := make([]float64, nc)
		for _, i := range bySubject[id] {
			v[Classes8.Label(recs[i])]++
		}
		best, bestDelta := Train, 0.0
		for _, s := range []Split{Test, Val, Train} {
			delta := 0.0
			for c := range nc {
				tgt := frac[s] * total[c]
				before := count[s][c] - tgt
				after := before + v[c]
				delta += after*after - before*before
			}
			if s == Test || delta < bestDelta {
				best, bestDelta = s, delta
			}
		}
		for c := range nc {
			count[best][c] += v[c]
		}
		for _, i := range bySubject[id] {
			a[i] = best
		}
	}
}

// SplitWithManifest reads the split from manifest when that file exists
// (a later run of the same experiment); otherwise it makes one with
// MakeSplit and, when manifest is not empty, saves it there.
func SplitWithManifest(recs []Record, method SplitMethod, seed uint64, manifest string) (a Assignment, loaded bool, err error) {
	if manifest != "" {
		if _, err := os.Stat(manifest); err == nil {
			a, err := LoadManifest(manifest, recs)
			return a, true, err
		}
	}
	if a, err = MakeSplit(recs, method, seed); err != nil {
		return nil, false, err
	}
	if manifest != "" {
		err = SaveManifest(manifest, recs, a)
	}
	return a, false, err
}

// SaveManifest writes the assignment as CSV (imageName,split), atomically.
func SaveManifest(path string, recs []Record, a Assignment) error {
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	w.Write([]string{"imageName", "split"})
	for i, r := range recs {
		w.Write([]string{r.ImageName, a[i].String()})
	}
	w.Flush()
	if err := w.Error(); err != nil {
		return err
	}
	return fileio.WriteAtomic(path, buf.Bytes())
}

// LoadManifest reads a manifest written by SaveManifest and returns the
// assignment for recs. Every record must be listed; unknown images are an
// error (the manifest belongs to another dataset).
func LoadManifest(path string, recs []Record) (Assignment, error) {
	f, _, err := fileio.OpenRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ReadManifest(f, path, recs)
}

// ReadManifest reads a manifest from r (named path in errors); see
// LoadManifest.
func ReadManifest(r io.Reader, path string, recs []Record) (Assignment, error) {
	cr := csv.NewReader(r)
	rows, err := cr.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(rows) == 0 || len(rows[0]) != 2 || rows[0][0] != "imageName" || rows[0][1] != "split" {
		return nil, fmt.Errorf("%s: not a split manifest (want the header imageName,split)", path)
	}
	byName := make(map[string]int, len(recs))
	for i, r := range recs {
		byName[r.ImageName] = i
	}
	a := make(Assignment, len(recs))
	seen := make([]int, len(recs)) // line of the row that placed each record
	for n, row := range rows[1:] {
		line := n + 2
		i, ok := byName[row[0]]
		if !ok {
			return nil, fmt.Errorf("%s:%d: image %q is not in this dataset's HandInfo.csv", path, line, row[0])
		}
		s, err := ParseSplit(row[1])
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, line, err)
		}
		if seen[i] != 0 {
			if a[i] != s {
				return nil, fmt.Errorf("%s: image %q is in two splits: %s on line %d, %s on line %d", path, row[0], a[i], seen[i], s, line)
			}
			continue // the same row twice: harmless
		}
		a[i], seen[i] = s, line
	}
	for i, line := range seen {
		if line == 0 {
			return nil, fmt.Errorf("%s: image %q (HandInfo.csv line %d) is not listed", path, recs[i].ImageName, recs[i].Line)
		}
	}
	return a, nil
}
