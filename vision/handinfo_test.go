package vision

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const realCSV = "../../shared/data/HandInfo.csv"

// needShared skips a test when the real data it reads (what, under
// ../../shared/data) is missing — except under CI (CI set), where that is
// a failure: CI must not pass by testing nothing.
func needShared(t testing.TB, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s not here, and CI is set: %v", what, err)
	}
	t.Skipf("%s not here: %v", what, err)
}

func readReal(t testing.TB) []Record {
	f, err := os.Open(realCSV)
	needShared(t, "real metadata", err)
	defer f.Close()
	recs, err := ReadHandInfo(f)
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func TestRealHandInfo(t *testing.T) {
	recs := readReal(t)
	if len(recs) != 11076 {
		t.Fatalf("%d rows, want 11076", len(recs))
	}
	want := []int{1827, 1897, 1579, 1806, 961, 995, 1004, 1007}
	got := make([]int, 8)
	for _, l := range Classes8.Labels(recs) {
		got[l]++
	}
	for c := range want {
		if got[c] != want[c] {
			t.Errorf("class %d %q: %d images, want %d", c, Classes8.Classes()[c], got[c], want[c])
		}
	}
	raw := map[string]bool{}
	trimmed := map[string]bool{}
	f, _ := os.ReadFile(realCSV)
	for _, line := range strings.Split(string(f), "\n")[1:] {
		if line == "" {
			continue
		}
		raw[strings.SplitN(line, ",", 2)[0]] = true
	}
	for _, r := range recs {
		trimmed[r.ID] = true
	}
	if len(raw) != 190 || len(trimmed) != 189 {
		t.Errorf("%d raw ids, %d trimmed; want 190 and 189", len(raw), len(trimmed))
	}
	if recs[0].ImageName != "Hand_0000002.jpg" || recs[0].Line != 2 {
		t.Errorf("first record %+v", recs[0])
	}
}

func TestSchemes(t *testing.T) {
	c := Classes8.Classes()
	if len(c) != 8 || c[0] != "female dorsal left" || c[7] != "male palmar right" {
		t.Fatalf("Classes8 = %q", c)
	}
	r := Record{Gender: "male", Aspect: "palmar left"}
	for _, tt := range []struct {
		s          Scheme
		want, flip int
	}{{Classes8, 6, 7}, {Gender, 1, 1}, {Aspect, 2, 3}} {
		if got := tt.s.Label(r); got != tt.want {
			t.Errorf("%s.Label = %d, want %d", tt.s, got, tt.want)
		}
		if got := tt.s.MirrorLabel(tt.want); got != tt.flip {
			t.Errorf("%s.MirrorLabel(%d) = %d, want %d", tt.s, tt.want, got, tt.flip)
		}
		mirrored := Record{Gender: "male", Aspect: "palmar right"}
		if tt.s.Label(mirrored) != tt.flip {
			t.Errorf("%s: MirrorLabel disagrees with the right-hand record's label", tt.s)
		}
	}
}

func TestReadHandInfoFormats(t *testing.T) {
	const header = "id,age,gender,skinColor,accessories,nailPolish,aspectOfHand,imageName,irregularities"
	good := `"0000000",27,"male","fair",0,0,"dorsal right","Hand_0000002.jpg",0`
	tests := []struct {
		name, in, wantErr string
		wantID            string
	}{
		{name: "CRLF quoted", in: header + "\r\n" + good + "\r\n", wantID: "0000000"},
		{name: "LF", in: header + "\n" + good + "\n", wantID: "0000000"},
		{name: "BOM, no final newline", in: "\xef\xbb\xbf" + header + "\n" + good, wantID: "0000000"},
		{name: "id trimmed", in: header + "\n" + `"1200000 ",27,"male","fair",0,0,"dorsal right","Hand_0000002.jpg",0`, wantID: "1200000"},
		{name: "columns", in: header + "\n" + good + "\n" + `"0000001",27,"male"`, wantErr: "line 3: 3 columns, want 9"},
		{name: "gender", in: header + "\n" + `"0000000",27,"Male ","fair",0,0,"dorsal right","Hand_0000002.jpg",0`, wantErr: `line 2: unknown gender "Male "`},
		{name: "aspect", in: header + "\n" + `"0000000",27,"male","fair",0,0,"dorsal up","Hand_0000002.jpg",0`, wantErr: `line 2: unknown aspectOfHand "dorsal up"`},
		{name: "age", in: header + "\n" + `"0000000",x,"male","fair",0,0,"dorsal right","Hand_0000002.jpg",0`, wantErr: `line 2: age "x"`},
		{name: "flag", in: header + "\n" + `"0000000",1,"male","fair",2,0,"dorsal right","Hand_0000002.jpg",0`, wantErr: `line 2: accessories "2"`},
		{name: "duplicate", in: header + "\n" + good + "\n" + good, wantErr: `line 3: imageName "Hand_0000002.jpg" already on line 2`},
		{name: "header", in: "a,b\n", wantErr: "line 1"},
		{name: "empty", in: header + "\n", wantErr: "no rows"},
		{name: "quote", in: header + "\n" + `"0000000,27`, wantErr: "line 2"},
	}
	for _, tt := range tests {
		recs, err := ReadHandInfo(strings.NewReader(tt.in))
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: err = %v, want %q", tt.name, err, tt.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if recs[0].ID != tt.wantID || recs[0].Class() != "male dorsal right" {
			t.Errorf("%s: %+v", tt.name, recs[0])
		}
	}
}

func TestSplits(t *testing.T) {
	recs := readReal(t)
	for _, m := range []SplitMethod{Random, Stratified, BySubject} {
		a, err := MakeSplit(recs, m, 42)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := MakeSplit(recs, m, 42)
		c, _ := MakeSplit(recs, m, 43)
		same, diff := true, false
		for i := range a {
			same = same && a[i] == b[i]
			diff = diff || a[i] != c[i]
		}
		if !same || !diff {
			t.Errorf("%s: deterministic for a seed %v, differs across seeds %v", m, same, diff)
		}
		n := a.Sizes()
		switch m {
		case Random:
			if n != [3]int{7531, 1883, 1662} {
				t.Errorf("random split sizes %v, want [7531 1883 1662]", n)
			}
		case Stratified, BySubject:
			// Within 2 % of the random sizes.
			for s, want := range [3]int{7531, 1883, 1662} {
				if d := n[s] - want; d*50 > want || -d*50 > want {
					t.Errorf("%s split %s: %d images, want about %d", m, Split(s), n[s], want)
				}
			}
		}
		if m == BySubject {
			where := map[string]Split{}
			for i, r := range recs {
				if s, ok := where[r.ID]; ok && s != a[i] {
					t.Fatalf("subject %s in %s and %s", r.ID, s, a[i])
				}
				where[r.ID] = a[i]
			}
			// Class shares within 3 points of the whole set's, in every split.
			whole := classShares(recs, nil)
			for _, s := range Splits {
				sh := classShares(recs, a.Indices(s))
				for c := range whole {
					if d := sh[c] - whole[c]; d > 0.03 || d < -0.03 {
						t.Errorf("subject split %s: class %d share %.3f vs %.3f overall", s, c, sh[c], whole[c])
					}
				}
			}
		}
	}
}

func classShares(recs []Record, idx []int) []float64 {
	if idx == nil {
		idx = allIndices(len(recs))
	}
	sh := make([]float64, 8)
	for _, i := range idx {
		sh[Classes8.Label(recs[i])] += 1 / float64(len(idx))
	}
	return sh
}

func TestManifestRoundTrip(t *testing.T) {
	recs := readReal(t)
	a, _ := MakeSplit(recs, BySubject, 7)
	path := filepath.Join(t.TempDir(), "split.csv")
	if err := SaveManifest(path, recs, a); err != nil {
		t.Fatal(err)
	}
	b, err := LoadManifest(path, recs)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a {
		if a[i] != b[i] {
			t.Fatalf("record %d: %s became %s", i, a[i], b[i])
		}
	}
	if _, err := LoadManifest(path, recs[:10]); err == nil || !strings.Contains(err.Error(), "not in this dataset") {
		t.Errorf("foreign manifest: %v", err)
	}
	if _, err := LoadManifest(path, append(recs, Record{ImageName: "Hand_9.jpg", Line: 99})); err == nil || !strings.Contains(err.Error(), "Hand_9.jpg") {
		t.Errorf("incomplete manifest: %v", err)
	}
}
