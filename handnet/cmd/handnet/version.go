package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/handnet/handnet/handnet"
	"github.com/spf13/pflag"
)

func init() {
	register(&command{
		name:    "version",
		summary: "Print handnet's version, the Go version, libtorch's version and source, CUDA and the native layer's features.\nThe same as handnet --version.",
		usage:   "[--short | --json]",
		setup: func(fs *pflag.FlagSet) func([]string) error {
			short := fs.Bool("short", false, "print handnet's version alone (one word, for tags and scripts)")
			asJSON := fs.Bool("json", false, "print JSON")
			return func(args []string) error {
				if len(args) > 0 {
					return usagef("unexpected arguments %q", args)
				}
				v := handnet.Version()
				switch {
				case *short:
					fmt.Println(v.Short())
				case *asJSON:
					enc := json.NewEncoder(os.Stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(v)
				default:
					fmt.Print(v)
				}
				return nil
			}
		},
	})
}
