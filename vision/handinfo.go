// Package vision reads the 11k Hands dataset: its metadata (HandInfo.csv),
// label schemes, splits, the JPEG preprocessing pipeline, the preprocessed
// image cache and the batch loader. It also draws synthetic hands in the
// same layout for tests and demos.
//
// Data flows one way: Dataset (metadata + files) → Preprocess → Cache →
// Loader (batches of tensors). Nothing here knows about models.
//
// Floor 1 (data) of handnet's layering: it imports packages of floors 0–1 only
// (README, "Packages"; tools/floors checks it).
package vision

import (
	"bytes"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Columns of HandInfo.csv, in order.
var Columns = []string{"id", "age", "gender", "skinColor", "accessories", "nailPolish", "aspectOfHand", "imageName", "irregularities"}

// Genders and Aspects are the values HandInfo.csv uses, sorted.
var (
	Genders = []string{"female", "male"}
	Aspects = []string{"dorsal left", "dorsal right", "palmar left", "palmar right"}
)

// Record is one row of HandInfo.csv.
type Record struct {
	Line           int    // 1-based line in the file (the header is line 1)
	ID             string // subject id, trimmed ("1200000 " becomes "1200000")
	Age            int
	Gender         string // "female" or "male"
	SkinColor      string
	Accessories    bool
	NailPolish     bool
	Aspect         string // "dorsal left" … "palmar right"
	ImageName      string // "Hand_0000002.jpg"
	Irregularities bool
}

// Class returns the 8-class name, gender + " " + aspect.
func (r Record) Class() string { return r.Gender + " " + r.Aspect }

// ReadHandInfo parses HandInfo.csv: quoted fields, CRLF or LF line endings,
// an optional UTF-8 byte-order mark. A row with the wrong number of
// columns, an unknown gender or aspect, or a bad number is an error naming
// its line and value.
func ReadHandInfo(r io.Reader) ([]Record, error) {
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	b = bytes.TrimPrefix(b, []byte("\xef\xbb\xbf"))
	cr := csv.NewReader(bytes.NewReader(b))
	cr.FieldsPerRecord = -1
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("line 1: cannot read the header: %w", err)
	}
	if len(header) != len(Columns) {
		return nil, fmt.Errorf("line 1: header has %d columns, want %d (%s)", len(header), len(Columns), strings.Join(Columns, ","))
	}
	for i, c := range Columns {
		if strings.TrimSpace(header[i]) != c {
			return nil, fmt.Errorf("line 1: column %d is %q, want %q", i+1, header[i], c)
		}
	}
	var out []Record
	seen := map[string]int{}
	for {
		row, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err // csv.ParseError names the line
		}
		line, _ := cr.FieldPos(0)
		if len(row) != len(Columns) {
			return nil, fmt.Errorf("line %d: %d columns, want %d", line, len(row), len(Columns))
		}
		rec, err := parseRecord(row, line)
		if err != nil {
			return nil, err
		}
		if prev, dup := seen[rec.ImageName]; dup {
			return nil, fmt.Errorf("line %d: imageName %q already on line %d", line, rec.ImageName, prev)
		}
		seen[rec.ImageName] = line
		out = append(out, rec)
	}
	if len(out) == 0 {
		return nil, errors.New("no rows after the header")
	}
	return out, nil
}

func parseRecord(row []string, line int) (Record, error) {
	r := Record{Line: line, ID: strings.TrimSpace(row[0]), Gender: strings.TrimSpace(row[2]),
		SkinColor: strings.TrimSpace(row[3]), Aspect: strings.TrimSpace(row[6]), ImageName: strings.TrimSpace(row[7])}
	if r.ID == "" {
		return r, fmt.Errorf("line %d: empty id", line)
	}
	var err error
	if r.Age, err = strconv.Atoi(strings.TrimSpace(row[1])); err != nil {
		return r, fmt.Errorf("line %d: age %q is not a number", line, row[1])
	}
	if !contains(Genders, r.Gender) {
		return r, fmt.Errorf("line %d: unknown gender %q (want %s)", line, row[2], strings.Join(Genders, " or "))
	}
	if !contains(Aspects, r.Aspect) {
		return r, fmt.Errorf("line %d: unknown aspectOfHand %q (want one of %q)", line, row[6], Aspects)
	}
	if r.ImageName == "" || strings.ContainsAny(r.ImageName, `/\`) {
		return r, fmt.Errorf("line %d: bad imageName %q", line, row[7])
	}
	for _, f := range []struct {
		col int
		dst *bool
	}{{4, &r.Accessories}, {5, &r.NailPolish}, {8, &r.Irregularities}} {
		switch strings.TrimSpace(row[f.col]) {
		case "0":
		case "1":
			*f.dst = true
		default:
			return r, fmt.Errorf("line %d: %s %q is not 0 or 1", line, Columns[f.col], row[f.col])
		}
	}
	return r, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Dataset is an 11k Hands folder: DIR/HandInfo.csv and DIR/Hands/*.jpg.
type Dataset struct {
	Dir     string
	Records []Record
}

// ImagesDir is the folder of the photos inside a dataset folder.
const ImagesDir = "Hands"

// Open reads dir/HandInfo.csv. It does not look at the images.
func Open(dir string) (*Dataset, error) {
	path := filepath.Join(dir, "HandInfo.csv")
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w (a dataset folder holds HandInfo.csv and Hands/; `handnet fakedata --out DIR` makes a synthetic one)", err)
	}
	defer f.Close()
	recs, err := ReadHandInfo(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &Dataset{Dir: dir, Records: recs}, nil
}

// ImagePath returns the path of record i's photo.
func (d *Dataset) ImagePath(i int) string {
	return filepath.Join(d.Dir, ImagesDir, d.Records[i].ImageName)
}

// Subjects returns the distinct (trimmed) subject ids, sorted.
func (d *Dataset) Subjects() []string {
	set := map[string]bool{}
	for _, r := range d.Records {
		set[r.ID] = true
	}
	ids := make([]string, 0, len(set))
	for id := range set {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Fingerprint hashes what training reads of the metadata — every record's
// image name, subject, gender and aspect, in order — so that a run can tell
// whether it still sees the same dataset.
func (d *Dataset) Fingerprint() string {
	h := sha256.New()
	for _, r := range d.Records {
		fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\n", r.ImageName, r.ID, r.Gender, r.Aspect)
	}
	return hex.EncodeToString(h.Sum(nil))
}
