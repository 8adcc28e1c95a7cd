package experiment_test

import (
	"reflect"
	"testing"

	"github.com/handnet/handnet/handnet/experiment"
	"github.com/handnet/handnet/vision"
)

// TestIdentifyCanonicalSpellings: the spellings that the parsers of the
// split method, label scheme and augmentation accept for one value give
// one key once the spec is resolved, and that key is the one the
// canonical spelling has always had (Identify of the spec as typed, not
// resolved): run folders made before keep their keys. Resolve stores the
// canonical spelling; an empty Augment stays empty (Identify reads it as
// "none").
func TestIdentifyCanonicalSpellings(t *testing.T) {
	dir := t.TempDir()
	base := fakeSpec(t, dir, 48)
	d := openData(t, base)

	type field struct {
		name string
		set  func(*experiment.Spec, string)
		get  func(experiment.Spec) string
	}
	split := field{"Split", func(s *experiment.Spec, v string) { s.Split = v }, func(s experiment.Spec) string { return s.Split }}
	scheme := field{"Scheme", func(s *experiment.Spec, v string) { s.Scheme = v }, func(s experiment.Spec) string { return s.Scheme }}
	augment := field{"Augment", func(s *experiment.Spec, v string) { s.Augment = v }, func(s experiment.Spec) string { return s.Augment }}

	cases := []struct {
		f         field
		spelling  string
		canonical string // the key's spelling, typed as before
		stored    string // what Resolve stores
	}{
		{split, "random", "random", "random"},
		{split, "Random", "random", "random"},
		{split, "RANDOM", "random", "random"},
		{split, "stratified", "stratified", "stratified"},
		{split, "Stratified", "stratified", "stratified"},
		{split, "subject", "subject", "subject"},
		{split, "SUBJECT", "subject", "subject"},

		{scheme, "class8", "class8", "class8"},
		{scheme, "Class8", "class8", "class8"},
		{scheme, "8", "class8", "class8"},
		{scheme, "class", "class8", "class8"},
		{scheme, "classes", "class8", "class8"},
		{scheme, "CLASSES", "class8", "class8"},
		{scheme, "gender", "gender", "gender"},
		{scheme, "Gender", "gender", "gender"},
		{scheme, "aspect", "aspect", "aspect"},
		{scheme, "ASPECT", "aspect", "aspect"},

		{augment, "none", "none", "none"},
		{augment, "", "none", ""},
		{augment, "off", "none", "none"},
		{augment, " none ", "none", "none"},
		{augment, "default", "default", "default"},
		{augment, "on", "default", "default"},
		{augment, " default", "default", "default"},
		{augment, "rotate=10", "default", "default"}, // the default's own amount
		{augment, "hflip=0", "default", "default"},
		{augment, "hflip=0.5", "hflip=0.5", "hflip=0.5"},
		{augment, "hflip=0.50", "hflip=0.5", "hflip=0.5"},
		{augment, "hflip=5e-1", "hflip=0.5", "hflip=0.5"},
		{augment, "hflip =0.5", "hflip=0.5", "hflip=0.5"},
		{augment, "rotate=15,hflip=0.5", "rotate=15,hflip=0.5", "rotate=15,hflip=0.5"},
		{augment, "hflip=0.5,rotate=15", "rotate=15,hflip=0.5", "rotate=15,hflip=0.5"},
		{augment, "rotate=15,hflip=0.5,translate=0.05", "rotate=15,hflip=0.5", "rotate=15,hflip=0.5"},
		{augment, "rotate=0", "rotate=0", "rotate=0"},
		{augment, "rotate=-0", "rotate=0", "rotate=0"},
		{augment, "rotate=0.0", "rotate=0", "rotate=0"},
	}
	keys := map[string]map[string]string{} // field → canonical spelling → key
	for _, c := range cases {
		t.Run(c.f.name+"="+c.spelling, func(t *testing.T) {
			typed := base
			c.f.set(&typed, c.canonical)
			want := identify(t, typed, d) // the key as it always was

			s := base
			c.f.set(&s, c.spelling)
			r, err := s.Resolve()
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if got := c.f.get(r); got != c.stored {
				t.Errorf("Resolve stored %s %q, want %q", c.f.name, got, c.stored)
			}
			if got := identify(t, r, d); got.Key != want.Key {
				t.Errorf("key %s, want %s (that of %q typed): %q", got.Key, want.Key, c.canonical, want.Diff(got))
			}
			again, err := r.Resolve()
			if err != nil || !reflect.DeepEqual(again, r) {
				t.Errorf("resolving twice changed the spec: %+v, %v; want %+v", again, err, r)
			}
			if c.f.name == "Augment" { // the canonical spelling reads back as the same amounts
				a, err1 := vision.ParseAugment(c.spelling)
				b, err2 := vision.ParseAugment(c.canonical)
				if err1 != nil || err2 != nil || !reflect.DeepEqual(a, b) || a.Canonical() != c.canonical {
					t.Errorf("ParseAugment(%q) = %+v, %v; ParseAugment(%q) = %+v, %v; Canonical %q", c.spelling, a, err1, c.canonical, b, err2, a.Canonical())
				}
			}
			if keys[c.f.name] == nil {
				keys[c.f.name] = map[string]string{}
			}
			keys[c.f.name][c.canonical] = want.Key
		})
	}
	// The test is not vacuous: different values have different keys.
	for f, byValue := range keys {
		seen := map[string]string{}
		for v, k := range byValue {
			if w, ok := seen[k]; ok {
				t.Errorf("%s %q and %q have the same key %s", f, v, w, k)
			}
			seen[k] = v
		}
	}
}
