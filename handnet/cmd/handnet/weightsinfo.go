package main

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/handnet/handnet/handnet/model"
)

// checkpointHeader is what `weights info` shows of a handnet checkpoint's
// header: the metadata's JSON values decoded, strings as they are.
func checkpointHeader(meta map[string]string) map[string]any {
	if meta["format"] != model.CheckpointFormat {
		return nil
	}
	h := map[string]any{}
	for k, v := range meta {
		var x any
		if (strings.HasPrefix(v, "{") || strings.HasPrefix(v, "[")) && json.Unmarshal([]byte(v), &x) == nil {
			h[k] = x
		} else {
			h[k] = v
		}
	}
	return h
}

// printCheckpointHeader writes a handnet checkpoint's header for people:
// model, classes, input, epoch and metrics, training configuration, data.
// It writes nothing for other files and says so when the header is not
// readable.
func printCheckpointHeader(w io.Writer, meta map[string]string) {
	if meta["format"] != model.CheckpointFormat {
		return
	}
	fmt.Fprintf(w, "handnet checkpoint, format version %s\n", meta["format_version"])
	var cfg model.Config
	if err := json.Unmarshal([]byte(meta["model"]), &cfg); err != nil {
		fmt.Fprintf(w, "  model         unreadable: %v\n", err)
	} else {
		arch := cfg.Arch
		var extra []string
		if cfg.Dropout != "" {
			extra = append(extra, "dropout "+cfg.Dropout)
		}
		if cfg.BatchNorm {
			extra = append(extra, "BatchNorm")
		}
		if cfg.Freeze != "" {
			extra = append(extra, "freeze "+cfg.Freeze)
		}
		if cfg.Pretrained != "" {
			extra = append(extra, "from "+cfg.Pretrained)
		}
		if len(extra) > 0 {
			arch += " (" + strings.Join(extra, ", ") + ")"
		}
		fmt.Fprintf(w, "  model         %s\n", arch)
		fmt.Fprintf(w, "  classes       %d: %s\n", len(cfg.Classes), strings.Join(cfg.Classes, ", "))
		decode := ""
		if cfg.ExactDecode {
			decode = ", exact decode"
		}
		fmt.Fprintf(w, "  input         %dx%d RGB, normalised with mean %v, std %v%s\n", cfg.Width, cfg.Height, cfg.Mean, cfg.Std, decode)
	}
	if m := meta["metrics"]; m != "" {
		var e map[string]float64
		if json.Unmarshal([]byte(m), &e) == nil {
			fmt.Fprintf(w, "  epoch         %d: validation accuracy %.1f %%, loss %.4f (training %.1f %%, loss %.4f)\n",
				int(e["epoch"]), 100*e["val_acc"], e["val_loss"], 100*e["train_acc"], e["train_loss"])
		}
	}
	if tc := meta["train_config"]; tc != "" {
		var raw map[string]any
		if json.Unmarshal([]byte(tc), &raw) == nil {
			keys := make([]string, 0, len(raw))
			for k := range raw {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			parts := make([]string, 0, len(keys))
			for _, k := range keys {
				parts = append(parts, fmt.Sprintf("%s %v", k, raw[k]))
			}
			fmt.Fprintf(w, "  training      %s\n", strings.Join(parts, ", "))
		}
	}
	for _, k := range []string{"split", "data", "identity"} {
		if v := meta[k]; v != "" {
			fmt.Fprintf(w, "  %-13s %s\n", k, v)
		}
	}
	if meta["train_state"] != "" {
		fmt.Fprintln(w, "  resume state  yes (a run's last checkpoint: --resume continues from it)")
	}
	fmt.Fprintln(w)
}
