package experiment

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/handnet/handnet/handnet/model"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/handnet/handnet/vision"
)

// FieldError is a field's value that breaks one of the rules of a Spec (or
// of a Study, an Audit): the one kind of error by which this package
// refuses a description, so that a command line can name its own flag
// where the package names the field.
//
// Field is the field as Go selects it from the Spec ("Device",
// "Model.Freeze", "Train.BatchSize") or from the Study or Audit ("Out",
// "Shard"); Value the refused value as the message shows it ("" for
// none); Err what is wrong with it; Fix, when set, what to do instead, with
// any field it names written {Field}. Error names the fields as they are;
// Message names them through a function.
type FieldError struct {
	Field string
	Value string
	Err   error
	Fix   string
	// Machine is set when the value is well formed but this machine
	// cannot honour it: a device or a file it lacks, too little memory.
	// (A command line refuses the others as bad usage.)
	Machine bool
}

// ErrRequired is the Err of a field that must be set: "Data is required".
var ErrRequired = errors.New("is required")

// readsOn tells whether an error's words read on from the field's name
// ("is required", "is for resnet18", "holds other files") instead of
// following a colon.
func readsOn(err error) bool {
	for _, w := range []string{"is ", "holds ", "already "} {
		if strings.HasPrefix(err.Error(), w) {
			return true
		}
	}
	return false
}

func (e *FieldError) Error() string { return e.Message(func(field string) string { return field }) }

func (e *FieldError) Unwrap() error { return e.Err }

var fieldRef = regexp.MustCompile(`\{([A-Z][A-Za-z0-9.]*)\}`)

// Message is the error with every field named by name: "NAME[ VALUE]:
// ERR[; FIX]", or "NAME ERR[; FIX]" for words that read on from the name
// ("Data is required"). Where name gives "" for the erring field, the
// message is ERR[; FIX] alone (an error that says what it is about, as
// train.Config's do).
func (e *FieldError) Message(name func(field string) string) string {
	var b strings.Builder
	if n := name(e.Field); n != "" {
		b.WriteString(n)
		if e.Value != "" {
			b.WriteString(" " + e.Value)
		}
		if readsOn(e.Err) {
			b.WriteString(" ")
		} else {
			b.WriteString(": ")
		}
	}
	b.WriteString(e.Err.Error())
	if e.Fix != "" {
		b.WriteString("; " + fieldRef.ReplaceAllStringFunc(e.Fix, func(ref string) string {
			f := ref[1 : len(ref)-1]
			if n := name(f); n != "" {
				return n
			}
			return f
		}))
	}
	return b.String()
}

// FreezeBN modes of Spec.FreezeBN.
const (
	FreezeBNAuto = "auto" // frozen BatchNorm statistics by AutoFreezeBN
	FreezeBNAll  = "all"  // every BatchNorm layer runs on its statistics (model.Config.AllBNFrozen)
)

// AutoFreezeBN is the study's rule for the BatchNorm statistics of a
// fine-tuned ResNet-18 (FreezeBN auto): frozen when only the head trains.
func AutoFreezeBN(freeze string) bool { return freeze == model.FreezeFC }

// FreezeScenarios are the study's Part 2 freeze scenarios, in its order.
var FreezeScenarios = []string{model.FreezeFC, model.FreezeLayer4, model.FreezeNone}

// TransferModel is the model of the study's Part 2 under a freeze
// scenario: ResNet-18 with its BatchNorm statistics by AutoFreezeBN.
func TransferModel(freeze string) model.Config {
	return model.Config{Arch: "resnet18", Freeze: freeze, FreezeBN: AutoFreezeBN(freeze)}
}

// fetchWeights says where missing published weights come from.
const fetchWeights = "(fetch them with: handnet weights fetch resnet18)"

// CheckWeights refuses published weights (Weights) that are not there.
func CheckWeights(path string) error {
	if _, err := os.Stat(path); err != nil {
		return &FieldError{Field: "Weights", Err: fmt.Errorf("%w %s", err, fetchWeights), Machine: true}
	}
	return nil
}

// deviceError is the FieldError of a device that does not parse: a name it
// does not know, or a device this machine lacks.
func deviceError(field string, err error) error {
	return &FieldError{Field: field, Err: err, Machine: !errors.Is(err, torch.ErrDeviceName)}
}

// Resolve checks every rule of the spec, before any work, and returns it
// with what follows from them filled in: the canonical spelling of the
// augmentation, precision, split method and label scheme (so that the
// spellings their parsers accept for one value — "off" and "none", "8"
// and "class8", "Random" and "random" — give one Identify key; an empty
// Augment or Precision stays empty), the model fields of the other architecture cleared (a CNN has no freeze
// scenario, a ResNet-18 no dropout or added BatchNorm), and a ResNet-18's
// frozen BatchNorm by FreezeBN. The first rule broken is returned as a
// *FieldError, in this order: Data, Device, Train, Augment, Precision,
// DataOnDevice, Split, Scheme, then the model's (Model.Arch,
// Model.Dropout, Weights, Model.Freeze, FreezeBN). A device this machine
// lacks and weights that are not there are refused too (Machine).
// Run resolves its spec itself; resolving twice changes nothing.
func (s Spec) Resolve() (Spec, error) {
	if s.Data == "" {
		return s, &FieldError{Field: "Data", Err: ErrRequired}
	}
	dev, devErr := torch.ParseDevice(s.Device)
	if devErr != nil {
		return s, deviceError("Device", devErr)
	}
	if err := s.Train.Validate(); err != nil {
		return s, &FieldError{Field: "Train", Err: err}
	}
	aug, err := vision.ParseAugment(s.Augment)
	if err != nil {
		return s, &FieldError{Field: "Augment", Err: err}
	}
	p, err := model.ParsePrecision(s.Precision)
	if err != nil {
		return s, &FieldError{Field: "Precision", Err: err}
	}
	if err := p.Check(dev); err != nil {
		return s, &FieldError{Field: "Precision", Value: string(p), Err: err}
	}
	if s.Precision != "" {
		s.Precision = string(p)
	}
	if s.Augment != "" {
		s.Augment = aug.Canonical()
	}
	if err := checkDeviceData(s.DataOnDevice, aug); err != nil {
		return s, err
	}
	split, err := vision.ParseSplitMethod(s.Split)
	if err != nil {
		return s, &FieldError{Field: "Split", Err: err}
	}
	s.Split = string(split)
	scheme, err := vision.ParseScheme(s.Scheme)
	if err != nil {
		return s, &FieldError{Field: "Scheme", Err: err}
	}
	s.Scheme = string(scheme)
	switch s.Model.Arch {
	case "cnn":
		if _, err := model.ParseDropout(s.Model.Dropout); err != nil {
			return s, &FieldError{Field: "Model.Dropout", Err: err}
		}
		if s.Weights != "" {
			return s, &FieldError{Field: "Weights", Err: errors.New("is for resnet18"), Fix: "add {Model.Arch} resnet18"}
		}
		s.Model.Freeze, s.Model.FreezeBN, s.Model.AllBNFrozen, s.FreezeBN = "", false, false, ""
	case "resnet18":
		switch s.Model.Freeze {
		case model.FreezeFC, model.FreezeLayer4, model.FreezeNone:
		default:
			return s, &FieldError{Field: "Model.Freeze", Value: strconv.Quote(s.Model.Freeze), Err: errors.New("want fc, layer4 or none")}
		}
		s.Model.Dropout, s.Model.BatchNorm = "", false
		switch s.FreezeBN {
		case "": // the model's own
		case FreezeBNAuto:
			s.Model.FreezeBN, s.Model.AllBNFrozen = AutoFreezeBN(s.Model.Freeze), false
		case "true", "false":
			s.Model.FreezeBN, s.Model.AllBNFrozen = s.FreezeBN == "true", false
		case FreezeBNAll:
			s.Model.FreezeBN, s.Model.AllBNFrozen = true, true
		default:
			return s, &FieldError{Field: "FreezeBN", Value: strconv.Quote(s.FreezeBN), Err: errors.New("want true, false, auto or all")}
		}
		s.FreezeBN = ""
		if s.Weights != "" {
			if err := CheckWeights(s.Weights); err != nil {
				return s, err
			}
		}
	default:
		return s, &FieldError{Field: "Model.Arch", Value: strconv.Quote(s.Model.Arch), Err: errors.New("want cnn or resnet18")}
	}
	return s, nil
}

// checkDeviceData checks a DataOnDevice mode against the augmentation: on,
// off or auto (""), and on only with flips at most (the device loader does
// no pose or colour changes).
func checkDeviceData(mode string, aug *vision.Augment) error {
	switch mode {
	case "", "auto", "off":
		return nil
	case "on":
		if !aug.FlipsOnly() {
			return &FieldError{Field: "DataOnDevice", Value: "on", Err: errors.New("the device loader only flips"),
				Fix: "drop the pose and colour parts of {Augment} or use {DataOnDevice} off"}
		}
		return nil
	}
	return &FieldError{Field: "DataOnDevice", Value: strconv.Quote(mode), Err: errors.New("want auto, on or off")}
}
