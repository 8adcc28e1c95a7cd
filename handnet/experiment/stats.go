package experiment

import (
	"fmt"

	"github.com/handnet/handnet/vision"
)

// SplitSource says where a split came from: a method and seed, or a
// manifest.
type SplitSource struct {
	Method   string `json:"split"`
	Seed     uint64 `json:"seed,omitempty"`
	Manifest string `json:"manifest,omitempty"`
}

func (s SplitSource) String() string {
	if s.Manifest != "" {
		return "split read from " + s.Manifest
	}
	return fmt.Sprintf("split %s (seed %d)", s.Method, s.Seed)
}

// DataStats are a dataset's 8-class counts and subjects, overall and per
// split of an assignment (handnet data stats).
type DataStats struct {
	Dataset     string   `json:"dataset"`
	Images      int      `json:"images"`
	Subjects    int      `json:"subjects"`
	Classes     []string `json:"classes"`
	ClassCounts []int    `json:"class_counts"`
	SplitSource
	SplitSizes map[string]int   `json:"split_sizes"`
	SplitClass map[string][]int `json:"split_class_counts"`
	SplitSubj  map[string]int   `json:"split_subjects"`
}

// SplitStats counts ds's images by class and split of a, and the subjects
// in each split; source is where a came from.
func SplitStats(ds *vision.Dataset, a vision.Assignment, source SplitSource) *DataStats {
	classes := vision.Classes8.Classes()
	labels := vision.Classes8.Labels(ds.Records)
	r := &DataStats{Dataset: ds.Dir, Images: len(ds.Records), Subjects: len(ds.Subjects()), Classes: classes,
		ClassCounts: make([]int, len(classes)), SplitSource: source,
		SplitSizes: map[string]int{}, SplitClass: map[string][]int{}, SplitSubj: map[string]int{}}
	subj := map[string]map[string]bool{}
	for _, s := range vision.Splits {
		r.SplitClass[s.String()] = make([]int, len(classes))
		subj[s.String()] = map[string]bool{}
	}
	for i, l := range labels {
		s := a[i].String()
		r.ClassCounts[l]++
		r.SplitSizes[s]++
		r.SplitClass[s][l]++
		subj[s][ds.Records[i].ID] = true
	}
	for s, ids := range subj {
		r.SplitSubj[s] = len(ids)
	}
	return r
}
