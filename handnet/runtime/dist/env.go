// Package dist runs one training over several processes, the way PyTorch's
// DistributedDataParallel does and on the same engine: c10d's TCPStore for the
// rendezvous and its Gloo (CPU) or NCCL (CUDA) process groups for the
// collectives, through handnet's native layer.
//
// Processes are launched by the tools users already have — torchrun, srun,
// a Kubernetes PyTorchJob — or by Launch (handnet train --nproc-per-node N).
// FromEnv reads what they set; Join rendezvouses and returns the Group the
// trainer uses. A rank that dies, hangs or never arrives makes the others
// fail within the timeout with an error naming it and what they waited in.
//
// Floor 0 (runtime) of handnet's layering: it imports packages of floor 0 only
// (README, "Packages"; tools/floors checks it).
package dist

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// Env is one process's place in a distributed run.
type Env struct {
	Rank           int    // 0 … WorldSize-1
	WorldSize      int    // processes in the run
	LocalRank      int    // rank on this machine: which GPU it uses
	LocalWorldSize int    // processes on this machine
	MasterAddr     string // host of the rendezvous store (rank 0's, or torchrun's agent's)
	MasterPort     int
	// AgentStore is set under torchrun: its agent already serves the store
	// on MasterPort, and every rank connects as a client.
	AgentStore bool
	// Attempt is torchrun's restart count; keys of different attempts do not mix.
	Attempt int
	// Restarted is set when the launcher restarted this run: torchrun's
	// TORCHELASTIC_RESTART_COUNT > 0 or a requeued Slurm job
	// (SLURM_RESTART_COUNT > 0). A restarted run resumes from its last
	// checkpoint when it has one, and starts afresh when it has none.
	Restarted bool
	// Launcher names who set the variables: torchrun, slurm, handnet or env
	// (RANK and WORLD_SIZE set by hand or by a Kubernetes PyTorchJob).
	Launcher string
}

// Getenv reads an environment variable (os.Getenv, or a map in tests).
type Getenv func(string) string

// FromEnv reads the launch environment. ok is false for a single process:
// neither WORLD_SIZE nor a multi-task Slurm step is there. Variables it reads:
//
//	torchrun, Kubeflow PyTorchJob, handnet --nproc-per-node:
//	  RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//	  (torchrun also TORCHELASTIC_USE_AGENT_STORE, TORCHELASTIC_RESTART_COUNT)
//	Slurm (srun): SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID,
//	  SLURM_NTASKS_PER_NODE or SLURM_TASKS_PER_NODE, SLURM_RESTART_COUNT,
//	  with MASTER_ADDR and MASTER_PORT from the batch script
//
// Errors name the variable and its value.
func FromEnv(getenv Getenv) (Env, bool, error) {
	var e Env
	switch {
	case getenv("WORLD_SIZE") != "":
		e.Launcher = "env"
		if getenv("TORCHELASTIC_RUN_ID") != "" || getenv("TORCHELASTIC_RESTART_COUNT") != "" {
			e.Launcher = "torchrun"
		} else if getenv("HANDNET_LAUNCHER") != "" {
			e.Launcher = "handnet"
		}
		var err error
		if e.WorldSize, err = intVar(getenv, "WORLD_SIZE", "", 1); err != nil {
			return e, false, err
		}
		if e.Rank, err = intVar(getenv, "RANK", "", 0); err != nil {
			return e, false, err
		}
		if e.LocalRank, err = intVar(getenv, "LOCAL_RANK", "0", 0); err != nil {
			return e, false, err
		}
		if e.LocalWorldSize, err = intVar(getenv, "LOCAL_WORLD_SIZE", "1", 1); err != nil {
			return e, false, err
		}
		e.AgentStore = getenv("TORCHELASTIC_USE_AGENT_STORE") == "True"
		if e.Attempt, err = intVar(getenv, "TORCHELASTIC_RESTART_COUNT", "0", 0); err != nil {
			return e, false, err
		}
		e.Restarted = e.Attempt > 0
	case getenv("SLURM_PROCID") != "" && getenv("SLURM_NTASKS") != "":
		var err error
		if e.WorldSize, err = intVar(getenv, "SLURM_NTASKS", "", 1); err != nil {
			return e, false, err
		}
		if e.WorldSize == 1 {
			return Env{}, false, nil // a one-task job step: a single process
		}
		e.Launcher = "slurm"
		if e.Rank, err = intVar(getenv, "SLURM_PROCID", "", 0); err != nil {
			return e, false, err
		}
		if e.LocalRank, err = intVar(getenv, "SLURM_LOCALID", "0", 0); err != nil {
			return e, false, err
		}
		e.LocalWorldSize = slurmTasksPerNode(getenv)
		if n, err := intVar(getenv, "SLURM_RESTART_COUNT", "0", 0); err == nil && n > 0 {
			e.Restarted, e.Attempt = true, n
		}
	default:
		return Env{}, false, nil
	}
	e.MasterAddr = strings.TrimSpace(getenv("MASTER_ADDR"))
	if e.MasterAddr == "" {
		return e, false, fmt.Errorf("MASTER_ADDR is not set: a distributed run (%s, WORLD_SIZE %d) needs the host of rank 0 (in a Slurm batch script: export MASTER_ADDR=$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1))", e.Launcher, e.WorldSize)
	}
	port := getenv("MASTER_PORT")
	if port == "" {
		return e, false, fmt.Errorf("MASTER_PORT is not set: a distributed run (%s, WORLD_SIZE %d) needs the port of the rendezvous store, e.g. export MASTER_PORT=29500", e.Launcher, e.WorldSize)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p <= 0 || p > 65535 {
		return e, false, fmt.Errorf("MASTER_PORT=%q: want a TCP port, 1 to 65535", port)
	}
	e.MasterPort = p
	if e.Rank >= e.WorldSize {
		return e, false, fmt.Errorf("rank %d is not below the world size %d (RANK/SLURM_PROCID and WORLD_SIZE/SLURM_NTASKS disagree)", e.Rank, e.WorldSize)
	}
	if e.LocalRank >= e.LocalWorldSize {
		e.LocalWorldSize = e.LocalRank + 1
	}
	return e, true, nil
}

func intVar(getenv Getenv, name, def string, min int) (int, error) {
	s := strings.TrimSpace(getenv(name))
	if s == "" {
		s = def
	}
	if s == "" {
		return 0, fmt.Errorf("%s is not set", name)
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < min {
		return 0, fmt.Errorf("%s=%q: want an integer >= %d", name, s, min)
	}
	return v, nil
}

var slurmCount = regexp.MustCompile(`^(\d+)`)

// slurmTasksPerNode reads SLURM_NTASKS_PER_NODE, else the first entry of
// SLURM_TASKS_PER_NODE ("4(x2),3" means 4 on each of two nodes, then 3).
func slurmTasksPerNode(getenv Getenv) int {
	for _, name := range []string{"SLURM_NTASKS_PER_NODE", "SLURM_TASKS_PER_NODE"} {
		if m := slurmCount.FindStringSubmatch(strings.TrimSpace(getenv(name))); m != nil {
			if n, err := strconv.Atoi(m[1]); err == nil && n > 0 {
				return n
			}
		}
	}
	return 1
}

// IsLoopback tells whether the rendezvous host is this machine's loopback
// address (then every rank runs on this machine).
func (e Env) IsLoopback() bool {
	h := strings.Trim(e.MasterAddr, "[]")
	return h == "localhost" || strings.HasPrefix(h, "127.") || h == "::1"
}

// Endpoint is MASTER_ADDR:MASTER_PORT.
func (e Env) Endpoint() string {
	if strings.Contains(e.MasterAddr, ":") && !strings.HasPrefix(e.MasterAddr, "[") {
		return fmt.Sprintf("[%s]:%d", e.MasterAddr, e.MasterPort)
	}
	return fmt.Sprintf("%s:%d", e.MasterAddr, e.MasterPort)
}

// Variables returns the environment Launch gives a rank (the torchrun set).
func (e Env) Variables() []string {
	return []string{
		"RANK=" + strconv.Itoa(e.Rank), "WORLD_SIZE=" + strconv.Itoa(e.WorldSize),
		"LOCAL_RANK=" + strconv.Itoa(e.LocalRank), "LOCAL_WORLD_SIZE=" + strconv.Itoa(e.LocalWorldSize),
		"MASTER_ADDR=" + e.MasterAddr, "MASTER_PORT=" + strconv.Itoa(e.MasterPort),
	}
}
