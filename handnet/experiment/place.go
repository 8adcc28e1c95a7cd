package experiment

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/handnet/handnet/handnet/runtime/dist"
	"github.com/handnet/handnet/handnet/runtime/torch"
	"github.com/sugarme/gotch"
)

// ShareThreads is the torch threads of one of n processes (or runs) that
// share this machine: threads itself when set, else (0) its share of the
// usable CPUs, at least one.
func ShareThreads(threads, n int) int {
	if threads != 0 {
		return threads
	}
	return max(1, torch.UsableCPUs()/max(n, 1))
}

// RankSlot is where a rank of a data-parallel run trains when it was
// started with device and threads: on CUDA, device auto or cuda means
// cuda:LOCAL_RANK (one GPU a rank); threads 0 means its share of the
// usable CPUs among the ranks on this machine. dev is the slot's device.
// A device that does not parse is a *FieldError of Device.
func RankSlot(env dist.Env, device string, threads int) (sl Slot, dev gotch.Device, err error) {
	if dev, err = torch.ParseDevice(device); err != nil {
		return Slot{}, dev, deviceError("Device", err)
	}
	if lower := strings.ToLower(device); dev.IsCuda() && (lower == "auto" || lower == "cuda") {
		if dev, err = torch.ParseDevice(fmt.Sprintf("cuda:%d", env.LocalRank)); err != nil {
			return Slot{}, dev, fmt.Errorf("rank %d (local rank %d): %w", env.Rank, env.LocalRank, err)
		}
	}
	return Slot{Device: torch.DeviceName(dev), Threads: ShareThreads(threads, env.LocalWorldSize)}, dev, nil
}

// shardEnv are the environment variables that give a worker its share of
// a Study's runs: the index and count of a Kubernetes Indexed Job, and of
// a Slurm job array.
var shardEnv = [][2]string{{"JOB_COMPLETION_INDEX", "JOB_COMPLETIONS"}, {"SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"}}

// ParseShard reads a worker's Shard of Shards: spec "I/N", or when spec
// is empty the index and count of a Kubernetes Indexed Job or a Slurm job
// array from getenv, else 0 of 1. A bad one is a *FieldError of Shard.
func ParseShard(spec string, getenv func(string) string) (shard, shards int, err error) {
	s := spec
	if s == "" {
		for _, p := range shardEnv {
			if getenv(p[0]) != "" && getenv(p[1]) != "" {
				s = getenv(p[0]) + "/" + getenv(p[1])
				break
			}
		}
		if s == "" {
			return 0, 1, nil
		}
	}
	a, b, ok := strings.Cut(s, "/")
	i, indexErr := strconv.Atoi(strings.TrimSpace(a))
	n, countErr := strconv.Atoi(strings.TrimSpace(b))
	if !ok || indexErr != nil || countErr != nil || n < 1 || i < 0 || i >= n {
		return 0, 0, &FieldError{Field: "Shard", Err: fmt.Errorf("%q: want I/N with 0 <= I < N, e.g. 0/2", s)}
	}
	return i, n, nil
}
