package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// helpEntry is what `handnet help` and `handnet CMD --help` say about a
// command beyond its flags: its group in the command list, a whole
// one-line description, and examples that parse (TestHelpExamplesParse).
type helpEntry struct {
	group    string
	brief    string
	examples []string // after "handnet "
}

// helpGroups orders the groups of the command list: first what a newcomer
// runs first.
var helpGroups = []string{"Start here", "Data", "Train and evaluate", "Use a trained model", "Weights", "Measure", "Other"}

// help holds the help of each command, by name.
var help = map[string]helpEntry{
	"demo": {"Start here", "Generate synthetic hands, train the study's CNN on them and write its report, end to end.",
		[]string{"demo --out runs/demo", "demo --out runs/demo --epochs 2 --device cpu"}},
	"doctor": {"Start here", "Check that libtorch works here, and on which devices.",
		[]string{"doctor", "doctor --device cuda --json"}},
	"version": {"Start here", "Print the versions of handnet, Go, libtorch and CUDA.",
		[]string{"version", "version --json"}},
	"fakedata": {"Data", "Write a synthetic dataset in the 11k Hands layout.",
		[]string{"fakedata --out data/fake --count 960", "fakedata --out data/fake --count 400 --size 800x600 --seed 7"}},
	"data stats": {"Data", "Show a dataset's classes, subjects and split sizes.",
		[]string{"data stats --data data/11k", "data stats --data data/11k --split subject --json"}},
	"cache build": {"Data", "Decode every image of a dataset once into the cache that training reads.",
		[]string{"cache build --data data/11k", "cache build --data data/11k --cache-dir /scratch/handnet --skip-bad"}},
	"train": {"Train and evaluate", "Train a model, keep its best checkpoint and evaluate that on the test split.",
		[]string{"train --data data/11k --out runs/cnn", "train --data data/11k --out runs/r18 --model resnet18 --weights ~/.cache/handnet/weights/resnet18-f37072fd.pth --freeze fc",
			"train --data data/11k --out runs/cnn --split subject --epochs 20", "train --data data/11k --out runs/cnn --resume"}},
	"eval": {"Train and evaluate", "Evaluate a run's checkpoint on a split.",
		[]string{"eval --run runs/cnn", "eval --run runs/cnn --split val --checkpoint last --json"}},
	"reproduce": {"Train and evaluate", "Rerun the study's Part 1 (learning rates, then dropout placements) and compare.",
		[]string{"reproduce --data data/11k --out runs/study", "reproduce --data data/11k --out runs/study --epochs 5 --jobs 2"}},
	"audit": {"Train and evaluate", "Measure how much of the study's accuracy comes from recognising people, not hands.",
		[]string{"audit --data data/11k --out runs/audit", "audit --data data/11k --out runs/audit --models cnn --repeats 3"}},
	"predict": {"Use a trained model", "Classify images with a trained checkpoint.",
		[]string{"predict --checkpoint runs/cnn/best.safetensors photo.jpg", "predict --checkpoint runs/cnn/best.safetensors --top 3 --json photos/"}},
	"explain": {"Use a trained model", "Draw where the network looks (Grad-CAM) for each image.",
		[]string{"explain --checkpoint runs/cnn/best.safetensors photo.jpg", "explain --checkpoint runs/cnn/best.safetensors --class 3 --out cams photos/"}},
	"serve": {"Use a trained model", "Serve a trained model over HTTP, with a web page.",
		[]string{"serve --checkpoint runs/cnn/best.safetensors", "serve --checkpoint runs/cnn/best.safetensors --addr 127.0.0.1:9000 --max-batch 16"}},
	"weights fetch": {"Weights", "Download published weights (ImageNet ResNet-18) and verify them.",
		[]string{"weights fetch resnet18", "weights fetch resnet18 --dir weights/"}},
	"weights info": {"Weights", "Show a weights file's header, tensors and SHA-256.",
		[]string{"weights info runs/cnn/best.safetensors", "weights info resnet18-f37072fd.pth --json"}},
	"bench": {"Measure", "Measure images per second of training and inference steps.",
		[]string{"bench", "bench --models cnn --batch 16,64 --modes fp32,bf16 --json"}},
}

// helpOf is the help of c: its entry, or for a command without one its
// summary's first sentence in the group Other.
func helpOf(c *command) helpEntry {
	if h, ok := help[c.name]; ok {
		return h
	}
	s := strings.ReplaceAll(c.summary, "\n", " ")
	if i := strings.IndexAny(s, ".?"); i >= 0 {
		s = s[:i+1]
	}
	return helpEntry{group: "Other", brief: s}
}

// printHelp writes the command list, grouped.
func printHelp(w io.Writer) {
	fmt.Fprintln(w, "handnet trains, evaluates and serves 11k Hands classifiers (libtorch through gotch).\n\nUsage: handnet COMMAND [flags]")
	byGroup := map[string][]string{}
	for n, c := range commands {
		g := helpOf(c).group
		byGroup[g] = append(byGroup[g], n)
	}
	for _, g := range helpGroups {
		names := byGroup[g]
		if len(names) == 0 {
			continue
		}
		sort.SliceStable(names, func(i, j int) bool { return commandOrder(names[i]) < commandOrder(names[j]) })
		fmt.Fprintf(w, "\n%s:\n", g)
		for _, n := range names {
			fmt.Fprintf(w, "  %-14s %s\n", n, helpOf(commands[n]).brief)
		}
	}
	fmt.Fprintln(w, "\nExamples:\n  handnet demo                                   # the whole pipeline on synthetic hands\n"+
		"  handnet train --data data/11k --out runs/cnn\n  handnet serve --checkpoint runs/cnn/best.safetensors\n\n"+
		"Run 'handnet COMMAND --help' for a command's flags and examples.")
}

// commandOrder sorts a group's commands in the order of the help table's
// walkthrough (train before eval), then by name.
func commandOrder(name string) string {
	order := []string{"demo", "doctor", "version", "fakedata", "data stats", "cache build", "train", "eval", "reproduce", "audit",
		"predict", "explain", "serve", "weights fetch", "weights info", "bench"}
	for i, n := range order {
		if n == name {
			return fmt.Sprintf("%02d", i)
		}
	}
	return "99" + name
}

// subcommands are the commands "word SUB" (data stats for data).
func subcommands(word string) []string {
	var subs []string
	for n := range commands {
		if strings.HasPrefix(n, word+" ") {
			subs = append(subs, n)
		}
	}
	sort.Strings(subs)
	return subs
}

// printSubcommands lists the subcommands of word.
func printSubcommands(w io.Writer, word string, subs []string) {
	fmt.Fprintf(w, "handnet %s has these subcommands:\n", word)
	for _, n := range subs {
		fmt.Fprintf(w, "  %-14s %s\n", n, helpOf(commands[n]).brief)
	}
	fmt.Fprintf(w, "\nRun 'handnet %s --help' for its flags and examples.\n", subs[0])
}

// suggest returns the candidate closest to s when it is close enough to
// be a typo (edit distance at most 2, or a third of s), else "".
func suggest(s string, candidates []string) string {
	best, bestD := "", 1<<30
	for _, c := range candidates {
		if d := editDistance(s, c); d < bestD {
			best, bestD = c, d
		}
	}
	if bestD <= max(2, len(s)/3) && bestD < len(s) {
		return best
	}
	return ""
}

// commandWords are the names a command line may start with: the one-word
// commands and the first word of the two-word ones.
func commandWords() []string {
	seen := map[string]bool{}
	var words []string
	for n := range commands {
		w, _, _ := strings.Cut(n, " ")
		if !seen[w] {
			seen[w] = true
			words = append(words, w)
		}
	}
	sort.Strings(words)
	return words
}

// editDistance is the Levenshtein distance between a and b (bytes; the
// names compared are ASCII), transpositions counted as one edit.
func editDistance(a, b string) int {
	d := make([][]int, len(a)+1)
	for i := range d {
		d[i] = make([]int, len(b)+1)
		d[i][0] = i
	}
	for j := range d[0] {
		d[0][j] = j
	}
	for i := 1; i <= len(a); i++ {
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			d[i][j] = min(d[i-1][j]+1, d[i][j-1]+1, d[i-1][j-1]+cost)
			if i > 1 && j > 1 && a[i-1] == b[j-2] && a[i-2] == b[j-1] {
				d[i][j] = min(d[i][j], d[i-2][j-2]+1)
			}
		}
	}
	return d[len(a)][len(b)]
}
