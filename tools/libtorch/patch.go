package libtorch

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// GeneratedFile is the name of gotch's generated wrapper file, the one whose
// functions are replaced when they do not compile.
const GeneratedFile = "torch_api_generated.cpp.h"

// FailingLines returns the lines of file that a compiler log points at
// (errors, and "required from here" notes of errors raised in headers),
// sorted and without repeats.
func FailingLines(log []byte, file string) []int {
	re := regexp.MustCompile(`(?m)(?:^|[\s/])` + regexp.QuoteMeta(file) + `:(\d+):`)
	seen := map[int]bool{}
	var lines []int
	for _, m := range re.FindAllSubmatch(log, -1) {
		n, _ := strconv.Atoi(string(m[1]))
		if !seen[n] {
			seen[n] = true
			lines = append(lines, n)
		}
	}
	sort.Ints(lines)
	return lines
}

// ErrorLines returns the "error:" lines of a compiler log.
func ErrorLines(log []byte) []string {
	var out []string
	for _, l := range strings.Split(string(log), "\n") {
		if strings.Contains(l, "error:") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}

var funcStart = regexp.MustCompile(`^(void|int|int64_t|double|tensor \*|tensor|bool|scalar) ?(atg_\w+)\((.*)\) \{$`)

// ReplaceFunctions replaces the body of every wrapper function of src that
// contains one of lines (1-based) with one that raises an error through
// gotch's PROTECT macro, so Go receives an ordinary error naming the op and
// the libtorch version. It returns the new source and the replaced names.
func ReplaceFunctions(src []byte, lines []int, version string) ([]byte, []string, error) {
	text := strings.Split(string(src), "\n")
	want := map[int]bool{}
	for _, l := range lines {
		want[l] = true
	}
	var out []string
	var replaced []string
	for i := 0; i < len(text); i++ {
		m := funcStart.FindStringSubmatch(text[i])
		if m == nil {
			if want[i+1] {
				return nil, nil, fmt.Errorf("%s:%d does not compile and is not inside a wrapper function: %q", GeneratedFile, i+1, text[i])
			}
			out = append(out, text[i])
			continue
		}
		end := i + 1
		for end < len(text) && text[end] != "}" {
			end++
		}
		if end == len(text) {
			return nil, nil, fmt.Errorf("%s:%d: function %s has no closing brace", GeneratedFile, i+1, m[2])
		}
		hit := false
		for l := i + 1; l <= end+1; l++ {
			hit = hit || want[l]
		}
		if !hit {
			out = append(out, text[i:end+1]...)
			i = end
			continue
		}
		replaced = append(replaced, m[2])
		out = append(out, text[i],
			fmt.Sprintf(`  PROTECT(throw std::runtime_error("%s is not available: it does not compile against libtorch %s, so handnet's setup replaced it");)`, m[2], version))
		if m[1] != "void" {
			out = append(out, "  return 0;")
		}
		out = append(out, "}")
		i = end
	}
	return []byte(strings.Join(out, "\n")), replaced, nil
}
