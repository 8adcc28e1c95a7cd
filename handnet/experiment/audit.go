package experiment

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/handnet/handnet/eval/report"
	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/vision"
)

// AuditConfig is one headline configuration of the study, as an audit
// trains it.
type AuditConfig struct {
	Name      string // run-folder prefix: cnn, resnet18-fc, resnet18-layer4, resnet18-none
	Title     string // for tables: "CNN (flat0.4-fc1-0.4)"
	Model     model.Config
	LR        float64
	Weights   string // ResNet-18: the ImageNet weights it starts from
	Published report.Published
}

// The study's published figures: the final CNN's test accuracy, the
// validation accuracies of ResNet-18 under freeze fc / layer4 / none, and
// the fine-tuned (freeze none) ResNet-18's test accuracy — each from one
// random split of 11,076 images of 190 people.
var (
	PublishedCNN      = report.Published{Test: 0.9609}
	PublishedResNetFC = report.Published{Val: 0.8864}
	PublishedResNetL4 = report.Published{Val: 0.9947}
	PublishedResNet   = report.Published{Val: 0.9988, Test: 0.9988}
)

// HeadlineConfigs lists the configurations of models ("cnn", "resnet18"):
// the study's final CNN (dropout model.FinalDropout) at cnnLR, and
// ResNet-18 fine-tuned from weights at transferLR under freeze fc, layer4
// and none (TransferModel, as reproduce trains them). Missing weights are
// a *FieldError of Weights.
func HeadlineConfigs(models []string, weights string, cnnLR, transferLR float64) ([]AuditConfig, error) {
	var out []AuditConfig
	seen := map[string]bool{}
	for _, m := range models {
		m = strings.TrimSpace(m)
		if seen[m] {
			return nil, fmt.Errorf("model %q named twice", m)
		}
		seen[m] = true
		switch m {
		case "cnn":
			out = append(out, AuditConfig{Name: "cnn", Title: "CNN (" + model.FinalDropout + ")", LR: cnnLR, Published: PublishedCNN,
				Model: model.Config{Arch: "cnn", Dropout: model.FinalDropout}})
		case "resnet18":
			if weights == "" {
				return nil, &FieldError{Field: "Weights", Err: errors.New("resnet18 needs the ImageNet weights it is fine-tuned from " + fetchWeights)}
			}
			pub := map[string]report.Published{model.FreezeFC: PublishedResNetFC, model.FreezeLayer4: PublishedResNetL4, model.FreezeNone: PublishedResNet}
			for _, fr := range FreezeScenarios {
				out = append(out, AuditConfig{Name: "resnet18-" + fr, Title: "ResNet-18, freeze " + fr, LR: transferLR, Weights: weights, Published: pub[fr],
					Model: TransferModel(fr)})
			}
		default:
			return nil, fmt.Errorf("model %q: want cnn or resnet18", m)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no models: want cnn, resnet18 or both")
	}
	return out, nil
}

// Audit trains the study's headline configurations under each protocol
// (random: the study's split of the images; subject: no person in two
// parts), Repeats times each with a new split and seed, on the study's
// machinery (run folders under Out, sharded, resumable, reused), and
// writes audit.json, audit.md and audit.png/.svg once every run is done.
type Audit struct {
	Base      Spec // data, epochs, batch, device …; model, lr, split and seed are set per run
	Out       string
	Configs   []AuditConfig
	Protocols []vision.SplitMethod // default random, subject
	Repeats   int                  // default 5
	Level     float64              // of the intervals; default 0.95
	// Shard of Shards, Slots, Hooks, Logf and Poll are the Study's.
	Shard, Shards int
	Slots         []Slot
	Hooks         func(prefix string) Hooks
	Logf          func(format string, args ...any)
	Poll          time.Duration
}

// AuditRunPlan is one run an audit trains.
type AuditRunPlan struct {
	*StudyRun
	Config   AuditConfig
	Protocol vision.SplitMethod
	Repeat   int // 1-based
}

// defaults fills in the defaults of the fields left zero and checks the
// audit (Validate).
func (a *Audit) defaults() error {
	if len(a.Protocols) == 0 {
		a.Protocols = []vision.SplitMethod{vision.Random, vision.BySubject}
	}
	if a.Repeats == 0 {
		a.Repeats = 5
	}
	if a.Level == 0 {
		a.Level = 0.95
	}
	if a.Base.Scheme == "" {
		a.Base.Scheme = "class8"
	}
	return a.Validate()
}

// Validate checks the audit's own fields as they are (Plan fills in the
// defaults of zero ones first): Repeats at least 1, Level between 0 and 1,
// configurations, the labels (Base.Scheme: class8 or gender) and the
// protocols (random or subject, each once). A broken rule is a
// *FieldError.
func (a *Audit) Validate() error {
	switch {
	case a.Repeats < 1:
		return &FieldError{Field: "Repeats", Value: strconv.Itoa(a.Repeats), Err: errors.New("want 1 or more (2 or more for intervals)")}
	case !(a.Level > 0 && a.Level < 1):
		return &FieldError{Field: "Level", Value: fmt.Sprint(a.Level), Err: errors.New("want a number between 0 and 1, e.g. 0.95")}
	case len(a.Configs) == 0:
		return &FieldError{Field: "Configs", Err: errors.New("no configurations")}
	case a.Base.Scheme != "class8" && a.Base.Scheme != "gender":
		return &FieldError{Field: "Scheme", Value: a.Base.Scheme, Err: errors.New("the audit measures the study's 8 classes (with their gender, aspect and side) or the gender alone")}
	}
	for i, p := range a.Protocols {
		if p != vision.Random && p != vision.BySubject {
			return &FieldError{Field: "Protocols", Err: fmt.Errorf("%q: want random, subject or both", p)}
		}
		if slices.Contains(a.Protocols[:i], p) {
			return &FieldError{Field: "Protocols", Err: fmt.Errorf("%s named twice", p)}
		}
	}
	return nil
}

// Seed is the seed of repeat r (1-based): it draws the split and the
// initialisation, shuffling and dropout. Every configuration and protocol
// of a repeat share it.
func (a *Audit) Seed(r int) uint64 { return a.Base.Train.Seed + uint64(r-1) }

// Plan lists the audit's runs: repeat by repeat, then protocol, then
// configuration — the order shards take their share in.
func (a *Audit) Plan() ([]*AuditRunPlan, error) {
	if err := a.defaults(); err != nil {
		return nil, err
	}
	var plan []*AuditRunPlan
	n := a.Repeats * len(a.Protocols) * len(a.Configs)
	for r := 1; r <= a.Repeats; r++ {
		for _, p := range a.Protocols {
			for _, c := range a.Configs {
				s := a.Base
				s.Split, s.Model, s.Weights = string(p), c.Model, c.Weights
				s.Train.LR, s.Train.Seed = c.LR, a.Seed(r)
				s.Title = fmt.Sprintf("Audit: %s, %s split, repeat %d of %d (seed %d)", c.Title, p, r, a.Repeats, s.Train.Seed)
				sr := &StudyRun{Name: fmt.Sprintf("%s-%s-r%d", c.Name, p, r), Part: 0, LR: c.LR, Dropout: c.Model.Dropout, Freeze: c.Model.Freeze,
					Spec: s, Prefix: fmt.Sprintf("[%d/%d %s %s r%d]", len(plan)+1, n, c.Name, p, r)}
				plan = append(plan, &AuditRunPlan{StudyRun: sr, Config: c, Protocol: p, Repeat: r})
			}
		}
	}
	return plan, nil
}

// OwnsFile says whether name is one of the files an audit writes into
// its folder (its tables and their temporary files).
func OwnsFile(name string) bool { return strings.HasPrefix(name, "audit.") }

// Run trains (or reuses) the audit's runs and, when this worker sees all
// of them done, writes the tables and returns them. It returns
// ErrStudyElsewhere when other workers still train the last runs.
func (a *Audit) Run(ctx context.Context) (*report.Audit, error) {
	plan, err := a.Plan()
	if err != nil {
		return nil, err
	}
	runs := make([]*StudyRun, len(plan))
	for i, p := range plan {
		runs[i] = p.StudyRun
	}
	var res *report.Audit
	st := &Study{Base: a.Base, Out: a.Out, Shard: a.Shard, Shards: a.Shards, Slots: a.Slots, Hooks: a.Hooks, Logf: a.Logf, Poll: a.Poll,
		Matrix: &Matrix{Runs: runs, Owns: OwnsFile, Tables: func([]*StudyRun) error {
			var err error
			res, err = a.tables(plan)
			return err
		}, Key: a.tablesKey()}}
	if _, err := st.Run(ctx); err != nil {
		return nil, err
	}
	return res, nil
}

// tablesKey is what the tables depend on besides the runs' results: the
// confidence level, and each configuration's title and published figures.
func (a *Audit) tablesKey() string {
	var b strings.Builder
	fmt.Fprintf(&b, "level %g protocols %q", a.Level, a.Protocols)
	for _, c := range a.Configs {
		fmt.Fprintf(&b, "; %s %q %+v", c.Name, c.Title, c.Published)
	}
	return b.String()
}

// tables summarises the finished runs and writes the audit's files.
func (a *Audit) tables(plan []*AuditRunPlan) (*report.Audit, error) {
	res := &report.Audit{Data: a.Base.Data, Labels: a.Base.Scheme, Epochs: a.Base.Train.Epochs, Repeats: a.Repeats, Level: a.Level, Runs: []report.AuditRun{}}
	for _, p := range a.Protocols {
		res.Protocols = append(res.Protocols, string(p))
	}
	titles, published := map[string]string{}, map[string]report.Published{}
	var configs []string
	for _, c := range a.Configs {
		configs = append(configs, c.Name)
		titles[c.Name] = c.Title
		if a.Base.Scheme == "class8" { // the study published 8-class figures only
			published[c.Name] = c.Published
		}
	}
	for _, p := range plan {
		r := p.Result
		if r == nil || r.Test == nil || r.Test.Images == 0 {
			return nil, fmt.Errorf("%s: no test evaluation (an empty test split?)", p.Name)
		}
		t := r.Test
		frac := func(wrong int) *float64 { v := 1 - float64(wrong)/float64(t.Images); return &v }
		row := report.AuditRun{Config: p.Config.Name, Model: p.Config.Model.Arch, Freeze: p.Config.Model.Freeze,
			Protocol: string(p.Protocol), Repeat: p.Repeat, SplitSeed: p.Spec.Train.Seed, TrainSeed: p.Spec.Train.Seed,
			BestVal: r.History.BestValAcc(), Test: t.Accuracy, Gender: t.Accuracy, TestImages: t.Images, Folder: p.Name}
		switch n := len(t.Confusion.Classes); {
		case a.Base.Scheme == "class8" && n == 8:
			row.Gender, row.Aspect, row.Side = *frac(t.Breakdown.Gender), frac(t.Breakdown.Aspect), frac(t.Breakdown.Side)
		case a.Base.Scheme == "gender" && n == 2:
		default:
			return nil, fmt.Errorf("%s: %d classes, the audit of %s labels needs %d", p.Name, n, a.Base.Scheme, map[string]int{"class8": 8, "gender": 2}[a.Base.Scheme])
		}
		res.Runs = append(res.Runs, row)
	}
	if err := res.Summarise(configs, titles, published); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(a.Out, 0o755); err != nil {
		return nil, err
	}
	return res, report.WriteAudit(a.Out, res)
}
