package replbench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil"
)

// machine describes the computer the process runs on.
func machine() Machine {
	return Machine{
		CPUs:       runtime.NumCPU(),
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		CPUModel:   cpuModel(),
		Kernel:     benchutil.KernelRelease(),
		GoVersion:  runtime.Version(),
		LoadBefore: loadAverage(),
	}
}

// loadAverage returns the 1-minute load average, or -1 if unknown.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

// cpuModel returns the model name of the first CPU in /proc/cpuinfo, or ""
// if unknown.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
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

// mountOf returns the device and filesystem type of the mount holding
// dir, from the longest matching mount point in /proc/self/mounts, or
// empty strings if unknown.
func mountOf(dir string) (device, fsType string) {
	path, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", ""
	}
	path, err = filepath.Abs(path)
	if err != nil {
		return "", ""
	}
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "", ""
	}
	defer f.Close()
	best := -1
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		mnt := unescapeMount(fields[1])
		if !underMount(path, mnt) || len(mnt) <= best {
			continue
		}
		best, device, fsType = len(mnt), fields[0], fields[2]
	}
	return device, fsType
}

// underMount reports whether path is mnt or below it.
func underMount(path, mnt string) bool {
	if mnt == "/" || path == mnt {
		return true
	}
	return strings.HasPrefix(path, mnt+"/")
}

// unescapeMount undoes the octal escapes (\040 for a space) of a path in
// /proc/self/mounts.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if c, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(c))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
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
