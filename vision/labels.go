package vision

import (
	"fmt"
	"strings"
)

// Scheme maps a record to a class index.
type Scheme string

// The label schemes. Class indices are positions in the sorted class list.
const (
	Classes8 Scheme = "class8" // gender + aspect: 0 "female dorsal left" … 7 "male palmar right"
	Gender   Scheme = "gender" // 0 "female", 1 "male"
	Aspect   Scheme = "aspect" // 0 "dorsal left" … 3 "palmar right"
)

// ParseScheme reads a scheme name.
func ParseScheme(s string) (Scheme, error) {
	switch Scheme(strings.ToLower(s)) {
	case Classes8, "8", "class", "classes":
		return Classes8, nil
	case Gender:
		return Gender, nil
	case Aspect:
		return Aspect, nil
	}
	return "", fmt.Errorf("label scheme %q: want class8, gender or aspect", s)
}

// Classes returns the class names of the scheme, index = position.
func (s Scheme) Classes() []string {
	switch s {
	case Gender:
		return append([]string(nil), Genders...)
	case Aspect:
		return append([]string(nil), Aspects...)
	}
	var out []string
	for _, g := range Genders {
		for _, a := range Aspects {
			out = append(out, g+" "+a)
		}
	}
	return out
}

// Label returns r's class index under the scheme.
func (s Scheme) Label(r Record) int {
	g, a := indexOf(Genders, r.Gender), indexOf(Aspects, r.Aspect)
	switch s {
	case Gender:
		return g
	case Aspect:
		return a
	}
	return g*len(Aspects) + a
}

// Labels returns the class index of every record.
func (s Scheme) Labels(recs []Record) []int {
	out := make([]int, len(recs))
	for i, r := range recs {
		out[i] = s.Label(r)
	}
	return out
}

// MirrorLabel returns the label of the horizontally mirrored image of a
// record labelled l: a mirrored left hand looks like a right hand, so the
// side swaps; gender and dorsal/palmar stay.
func (s Scheme) MirrorLabel(l int) int {
	switch s {
	case Gender:
		return l
	case Aspect:
		return l ^ 1 // "… left" <-> "… right" are neighbours
	}
	return l ^ 1
}

func indexOf(list []string, s string) int {
	for i, v := range list {
		if v == s {
			return i
		}
	}
	return -1
}
