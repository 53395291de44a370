package replbench

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil"
)

// machine describes the computer the process runs on.
func machine() Machine {
	return Machine{
		CPUs:       runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		CPUModel:   benchutil.CPUModel(),
		Kernel:     benchutil.KernelRelease(),
		GoVersion:  runtime.Version(),
		LoadBefore: benchutil.LoadAverage(),
	}
}

// raftVersion returns the version of hashicorp/raft linked into the
// binary, or "" if unknown.
func raftVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, m := range bi.Deps {
		if m.Path == "github.com/hashicorp/raft" {
			if m.Replace != nil {
				return m.Replace.Version
			}
			return m.Version
		}
	}
	return ""
}

// Limits of the fsync probe.
const (
	probeMaxSamples = 2000
	probeMinSamples = 10
)

// probeFsync measures the disk under dir: it appends 4 KiB to a fresh file
// and fsyncs it, over and over, for up to budget (but at least
// probeMinSamples times and at most probeMaxSamples), then removes the
// file.
func probeFsync(ctx context.Context, dir string, budget time.Duration) (_ Latency, err error) {
	f, err := os.CreateTemp(dir, "fsync-probe-")
	if err != nil {
		return Latency{}, fmt.Errorf("fsync probe: %w", err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("fsync probe: %w", cerr)
		}
		if rerr := os.Remove(f.Name()); rerr != nil && err == nil {
			err = fmt.Errorf("fsync probe: %w", rerr)
		}
	}()
	buf := payload(blockSize)
	var samples []time.Duration
	end := time.Now().Add(budget)
	for len(samples) < probeMaxSamples && (len(samples) < probeMinSamples || time.Now().Before(end)) {
		if err := ctx.Err(); err != nil {
			return Latency{}, fmt.Errorf("fsync probe: %w", context.Cause(ctx))
		}
		t0 := time.Now()
		if _, err := f.Write(buf); err != nil {
			return Latency{}, fmt.Errorf("fsync probe: write %s: %w", f.Name(), err)
		}
		if err := f.Sync(); err != nil {
			return Latency{}, fmt.Errorf("fsync probe: fsync %s: %w", f.Name(), err)
		}
		samples = append(samples, time.Since(t0))
	}
	return summarize(samples), nil
}
