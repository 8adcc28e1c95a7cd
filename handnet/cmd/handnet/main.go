// Command handnet trains and evaluates 11k Hands classifiers on libtorch.
//
// Run `handnet help` for the list of commands and `handnet CMD --help` for
// the flags of one. Exit codes: 0 success, 1 failure, 2 bad usage.
//
// Floor 7 (commands) of handnet's layering: it imports packages of floors 0–7 only
// (README, "Packages"; tools/floors checks it).
package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strings"

	"github.com/handnet/handnet/handnet/runtime/native"
	"github.com/handnet/handnet/handnet/runtime/torch"
	log "github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
)

// command is one subcommand: its flags are defined on fs by setup, and run
// gets the positional arguments.
type command struct {
	name    string
	summary string
	usage   string // after "handnet NAME "
	setup   func(fs *pflag.FlagSet) func(args []string) error
}

var commands = map[string]*command{}

func register(c *command) { commands[c.name] = c }

// usageError marks errors caused by the command line (exit code 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

func main() { os.Exit(run(os.Args[1:])) }

// cmdArgs is the command line run was given (the launcher of
// --nproc-per-node starts its ranks with it).
var cmdArgs []string

func run(args []string) int {
	cmdArgs = args
	log.SetFormatter(&log.TextFormatter{FullTimestamp: true, TimestampFormat: "2006-01-02 15:04:05"})
	log.SetOutput(os.Stderr)
	if len(args) > 0 && args[0] == "--version" {
		args = append([]string{"version"}, args[1:]...)
	}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		if len(args) > 1 {
			if c, ok := commands[strings.Join(args[1:], " ")]; ok {
				fs, _ := newFlagSet(c)
				fs.SetOutput(os.Stdout)
				fs.Usage()
				return 0
			}
			if subs := subcommands(args[1]); len(subs) > 0 && len(args) == 2 {
				printSubcommands(os.Stdout, args[1], subs)
				return 0
			}
			return unknownCommand(args[1:]) // help trian: did you mean train?
		}
		printHelp(os.Stdout)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	c, ok := (*command)(nil), false
	if len(args) > 1 {
		// Two-word commands: "cache build", "data stats", "weights fetch".
		if c, ok = commands[args[0]+" "+args[1]]; ok {
			args = args[1:]
		}
	}
	if !ok {
		if c, ok = commands[args[0]]; !ok {
			return unknownCommand(args)
		}
	}
	fs, runFn := newFlagSet(c)
	fs.SetOutput(os.Stdout) // --help (exit 0) on stdout, for | less; errors go to stderr below
	verbose := fs.BoolP("verbose", "v", false, "log debug messages")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return 0
		}
		fmt.Fprintf(os.Stderr, "handnet %s: %v%s\nRun 'handnet %s --help' for its flags.\n", c.name, err, flagHint(fs, err), c.name)
		return 2
	}
	if *verbose {
		log.SetLevel(log.DebugLevel)
	}
	if err := native.CheckBF16ConvEnv(); err != nil {
		fmt.Fprintf(os.Stderr, "handnet %s: %v\n", c.name, err)
		return 2
	}
	if err := runFn(fs.Args()); err != nil {
		var ue usageError
		msg := flagMessage(err) // the library's fields named by their flags
		if errors.As(err, &ue) || errors.Is(err, torch.ErrDeviceName) {
			fmt.Fprintf(os.Stderr, "handnet %s: %s\nRun 'handnet %s --help' for its flags.\n", c.name, msg, c.name)
			return 2
		}
		if !*verbose {
			msg = torch.Clean(msg) // no C++ backtraces unless -v
		}
		fmt.Fprintf(os.Stderr, "handnet %s: %s\n", c.name, msg)
		return 1
	}
	return 0
}

func newFlagSet(c *command) (*pflag.FlagSet, func([]string) error) {
	fs := pflag.NewFlagSet("handnet "+c.name, pflag.ContinueOnError)
	fs.SortFlags = false
	runFn := c.setup(fs)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: handnet %s %s\n\n%s\n\nFlags:\n%s\n", c.name, c.usage, c.summary, fs.FlagUsages())
		if ex := helpOf(c).examples; len(ex) > 0 {
			fmt.Fprintf(fs.Output(), "Examples:\n  handnet %s\n\n", strings.Join(ex, "\n  handnet "))
		}
		fmt.Fprintln(fs.Output(), "Exit codes: 0 success, 1 failure (named on stderr), 2 bad usage.")
	}
	return fs, runFn
}

// unknownCommand answers a command line whose command does not exist:
// the subcommands of a group word alone (handnet data), else the closest
// command ("did you mean train?") and the command list. Exit code 2.
func unknownCommand(args []string) int {
	if subs := subcommands(args[0]); len(subs) > 0 {
		if len(args) == 1 || strings.HasPrefix(args[1], "-") {
			if len(args) > 1 && (args[1] == "-h" || args[1] == "--help") {
				printSubcommands(os.Stdout, args[0], subs)
				return 0
			}
			printSubcommands(os.Stderr, args[0], subs)
			return 2
		}
		fmt.Fprintf(os.Stderr, "handnet: unknown command %q", args[0]+" "+args[1])
		var words []string
		for _, n := range subs {
			words = append(words, strings.TrimPrefix(n, args[0]+" "))
		}
		if s := suggest(args[1], words); s != "" {
			fmt.Fprintf(os.Stderr, "; did you mean %s %s?", args[0], s)
		}
		fmt.Fprint(os.Stderr, "\n\n")
		printSubcommands(os.Stderr, args[0], subs)
		return 2
	}
	fmt.Fprintf(os.Stderr, "handnet: unknown command %q", args[0])
	if s := suggest(args[0], commandWords()); s != "" {
		fmt.Fprintf(os.Stderr, "; did you mean %s?\n", s)
		fmt.Fprintln(os.Stderr, "Run 'handnet help' for the list of commands.")
		return 2
	}
	fmt.Fprint(os.Stderr, "\n\n")
	printHelp(os.Stderr)
	return 2
}

// flagHint is "; did you mean --epochs?" for an unknown flag close to one
// of fs's, else "".
func flagHint(fs *pflag.FlagSet, err error) string {
	name, ok := strings.CutPrefix(err.Error(), "unknown flag: --")
	if !ok {
		return ""
	}
	var names []string
	fs.VisitAll(func(f *pflag.Flag) {
		if !f.Hidden {
			names = append(names, f.Name)
		}
	})
	if s := suggest(name, names); s != "" {
		return "; did you mean --" + s + "?"
	}
	return ""
}

// checkFloat rejects NaN and ±Inf for --name, and values <= 0 unless
// allowZero (then values < 0).
func checkFloat(name string, v float64, allowZero bool) error {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return usagef("--%s %v: want a finite number", name, v)
	case allowZero && v < 0:
		return usagef("--%s %v: want 0 or more", name, v)
	case !allowZero && v <= 0:
		return usagef("--%s %v: want more than 0", name, v)
	}
	return nil
}
