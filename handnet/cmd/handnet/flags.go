package main

import (
	"errors"
	"strings"

	"github.com/handnet/handnet/handnet/experiment"
)

// fieldFlags names the flag of each field of experiment's Spec, Study and
// Audit that the library's errors (experiment.FieldError) name. A field
// mapped to "" is left out of the message: its own words say what is
// wrong (train.Config's "epochs 0, want > 0").
var fieldFlags = map[string]string{
	"Data":            "data",
	"CacheDir":        "cache-dir",
	"SkipBad":         "skip-bad",
	"Exact":           "exact",
	"MaxPixels":       "max-pixels",
	"MaxBytes":        "max-bytes",
	"Split":           "split",
	"Scheme":          "labels",
	"Augment":         "augment",
	"Device":          "device",
	"Precision":       "precision",
	"ChannelsLast":    "channels-last",
	"DataOnDevice":    "data-on-device",
	"Model.Arch":      "model",
	"Model.Dropout":   "dropout",
	"Model.BatchNorm": "batch-norm",
	"Model.Freeze":    "freeze",
	"FreezeBN":        "freeze-bn",
	"Weights":         "weights",
	"Train":           "",
	"Train.BatchSize": "batch-size",
	"Train.Epochs":    "epochs",
	"Out":             "out",
	"Resume":          "resume",
	"Shard":           "shard",
	"Repeats":         "repeats",
	"Level":           "level",
	"Protocols":       "protocols",
	"Configs":         "models",
	"Checkpoint":      "checkpoint",
}

// flagOf is the command line's name of a library field: its flag, "" for
// one left out, the field itself for one without a flag.
func flagOf(field string) string {
	f, ok := fieldFlags[field]
	switch {
	case !ok:
		return field
	case f == "":
		return ""
	}
	return "--" + f
}

// flagMessage is err's message with the library's field names, where err
// holds an experiment.FieldError, replaced by the flags.
func flagMessage(err error) string {
	msg := err.Error()
	var fe *experiment.FieldError
	if errors.As(err, &fe) {
		msg = strings.Replace(msg, fe.Error(), fe.Message(flagOf), 1)
	}
	return msg
}

// flagError is err in the command line's words: a field error of the
// library named by its flag and a usage error (exit 2), unless this
// machine is what cannot honour the value (exit 1; run names its flag).
// Other errors are err itself.
func flagError(err error) error {
	var fe *experiment.FieldError
	if errors.As(err, &fe) && !fe.Machine {
		return usageError{flagMessage(err)}
	}
	return err
}
