package model

import (
	"os"
	"strconv"
	"strings"
)

// newFileMode is the mode os.WriteFile gives a new file: 0666 less the
// process's umask. Files written through a temporary file and a rename get
// it too (os.CreateTemp makes them 0600), so what one user writes — a
// dataset, a run folder, a checkpoint — is readable by the others the umask
// allows, such as a container's user serving a checkpoint trained on the host.
var newFileMode = 0o666 &^ umask()

// umask reads the process's umask from /proc (Linux 4.7+) without changing
// it; 022 where it cannot.
func umask() os.FileMode {
	b, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "Umask:"); ok {
				if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
					return os.FileMode(m) & 0o777
				}
			}
		}
	}
	return 0o022
}
