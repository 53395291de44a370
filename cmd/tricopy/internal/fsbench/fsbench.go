// Package fsbench is the filesystem benchmark of `tricopy bench fs`
// (DESIGN.md section 8): it measures a local-only tricopy mount against
// two yardsticks in one invocation, on the same disk, under the same
// conditions, and reports the ratios against the targets.
//
// The three targets are:
//
//   - tricopy: a fresh file volume, formatted and mounted in-process exactly
//     as `tricopy mount` does without an intermediate;
//   - loopback: go-fuse's loopback filesystem over a plain directory, mounted
//     in-process with the go-fuse options tricopy mounts with
//     (fusefs.MountArgs), but with FUSE passthrough disabled, so that the
//     FUSE server does the I/O rather than the kernel;
//   - bare: a plain directory.
//
// The workloads are fio jobs (sequential 1 MiB write and read, random 4 KiB
// write and read, 4 KiB writes each followed by fsync), plus the creation,
// stat and unlinking of many small files done by Run itself. Each workload
// runs on every target before the next workload starts. Before every
// measured job the page cache is written back and dropped (where the
// process may write /proc/sys/vm/drop_caches), so that reads reach the
// filesystems; fio also invalidates the file's cache (invalidate=1).
//
// Writes are measured to durability: the write jobs end with an fsync
// (end_fsync=1), counted in their runtime, so that a target cannot win by
// leaving dirty pages in memory.
package fsbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil"
)

// Defaults of Options.
const (
	// DefaultSeqSize is the file size of the sequential jobs.
	DefaultSeqSize = 512 << 20
	// DefaultRandSize is the file size of the random jobs.
	DefaultRandSize = 256 << 20
	// DefaultRuntime bounds the runtime of each fio job.
	DefaultRuntime = 15 * time.Second
	// DefaultFiles is the number of files of the small-file workload.
	DefaultFiles = 10000
)

// Limits of Options.
const (
	minSize    = 1 << 20
	minRuntime = 100 * time.Millisecond
	// maxFsyncSize bounds the file of the fsync job, which otherwise runs
	// until Runtime.
	maxFsyncSize = 64 << 20
)

// ErrNoFio means the fio program is not installed.
var ErrNoFio = errors.New("fio not found in PATH: install it (Debian: apt-get install fio)")

// Options configure Run. Zero values take the defaults.
type Options struct {
	// Dir is the directory the benchmark works in (created if missing); it
	// should be on the disk to measure. Run makes a fresh directory in it
	// for the targets and removes it at the end. Required.
	Dir string
	// SeqSize is the file size in bytes of the sequential jobs; 0 means
	// DefaultSeqSize. At least 1 MiB.
	SeqSize int64
	// RandSize is the file size in bytes of the random jobs; 0 means
	// DefaultRandSize. At least 1 MiB. The fsync job writes up to
	// min(RandSize, 64 MiB).
	RandSize int64
	// Runtime bounds the runtime of each fio job; 0 means DefaultRuntime.
	// At least 100ms.
	Runtime time.Duration
	// Files is the number of files of the small-file workload; 0 means
	// DefaultFiles.
	Files int
	// Logger receives progress; nil means slog.Default().
	Logger *slog.Logger
	// JSONPath, if set, names a file Run writes the Results to as JSON.
	JSONPath string
}

func (o Options) withDefaults() (Options, error) {
	if o.Dir == "" {
		return o, errors.New("options: Dir is required")
	}
	if o.SeqSize == 0 {
		o.SeqSize = DefaultSeqSize
	}
	if o.RandSize == 0 {
		o.RandSize = DefaultRandSize
	}
	if o.Runtime == 0 {
		o.Runtime = DefaultRuntime
	}
	if o.Files == 0 {
		o.Files = DefaultFiles
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case o.SeqSize < minSize:
		return o, fmt.Errorf("options: SeqSize %d is below 1 MiB", o.SeqSize)
	case o.RandSize < minSize:
		return o, fmt.Errorf("options: RandSize %d is below 1 MiB", o.RandSize)
	case o.Runtime < minRuntime:
		return o, fmt.Errorf("options: Runtime %v is below %v", o.Runtime, minRuntime)
	case o.Files < 0:
		return o, fmt.Errorf("options: Files %d is negative", o.Files)
	}
	return o, nil
}

// fsyncSize is the file size of the fsync job.
func (o Options) fsyncSize() int64 { return min(o.RandSize, maxFsyncSize) }

// Run runs the benchmark on the three targets, writes the results to w as
// a markdown table, writes them to opts.JSONPath as JSON if set, and
// returns them. It needs fio (ErrNoFio), and root and /dev/fuse for the
// two FUSE mounts.
//
// Run unmounts both mounts and removes its working directory before it
// returns, also on error and when ctx is cancelled (which kills a running
// fio). After unmounting it checks the tricopy volume with fsck: a damaged
// volume is an error, returned with the results.
func Run(ctx context.Context, opts Options, w io.Writer) (_ *Results, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	fio, version, err := LookFio(ctx)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create benchmark dir: %w", err)
	}
	runDir, err := os.MkdirTemp(opts.Dir, "fsbench-")
	if err != nil {
		return nil, fmt.Errorf("create benchmark dir: %w", err)
	}
	b := &bench{opts: opts, log: opts.Logger, fio: fio, runDir: runDir, canDrop: true}
	defer func() {
		err = errors.Join(err, b.tearDown())
	}()
	if err := b.setUp(ctx); err != nil {
		return nil, err
	}

	res := &Results{
		Time:       time.Now().UTC(),
		FioVersion: version,
		Kernel:     benchutil.KernelRelease(),
		SeqSize:    opts.SeqSize,
		RandSize:   opts.RandSize,
		FsyncSize:  opts.fsyncSize(),
		Runtime:    opts.Runtime,
		Files:      opts.Files,
	}
	for _, t := range b.targets {
		res.Targets = append(res.Targets, TargetResult{Target: t.name})
	}
	if err := b.measure(ctx, res); err != nil {
		return nil, err
	}
	res.CachesDropped = b.canDrop
	res.Comparisons = compare(res)
	if err := res.WriteMarkdown(w); err != nil {
		return res, fmt.Errorf("write results: %w", err)
	}
	if opts.JSONPath != "" {
		if err := benchutil.WriteJSON(opts.JSONPath, res); err != nil {
			return res, err
		}
	}
	return res, nil
}

// bench is one run of the benchmark.
type bench struct {
	opts    Options
	log     *slog.Logger
	fio     string // path of the fio binary
	runDir  string // removed by tearDown
	targets []*target
	canDrop bool // drop_caches worked so far
}

// measure runs every workload on every target, filling res.Targets.
func (b *bench) measure(ctx context.Context, res *Results) error {
	o := b.opts
	bs4k, bs1m := int64(4<<10), int64(1<<20)
	steps := []struct {
		job     fioJob
		measure func(*TargetResult) *FioResult
		remove  bool // remove the file after the job
	}{
		{fioJob{name: "seq-write", file: "seq.dat", rw: "write", bs: bs1m, size: o.SeqSize, endFsync: true}, func(r *TargetResult) *FioResult { return &r.SeqWrite }, false},
		{fioJob{name: "seq-read", file: "seq.dat", rw: "read", bs: bs1m, size: o.SeqSize}, func(r *TargetResult) *FioResult { return &r.SeqRead }, true},
		{fioJob{name: "rand-layout", file: "rand.dat", rw: "write", bs: bs1m, size: o.RandSize, endFsync: true}, nil, false},
		{fioJob{name: "rand-write", file: "rand.dat", rw: "randwrite", bs: bs4k, size: o.RandSize, endFsync: true}, func(r *TargetResult) *FioResult { return &r.RandWrite }, false},
		{fioJob{name: "rand-read", file: "rand.dat", rw: "randread", bs: bs4k, size: o.RandSize}, func(r *TargetResult) *FioResult { return &r.RandRead }, true},
		{fioJob{name: "fsync", file: "fsync.dat", rw: "write", bs: bs4k, size: o.fsyncSize(), fsync: true}, func(r *TargetResult) *FioResult { return &r.Fsync }, true},
	}
	for _, s := range steps {
		for i, t := range b.targets {
			if s.measure != nil {
				b.dropCaches()
			}
			r, err := b.runFio(ctx, t, s.job)
			if err != nil {
				return err
			}
			if s.measure != nil {
				*s.measure(&res.Targets[i]) = *r
				b.log.Info("fio job done", "target", t.name, "job", s.job.name,
					"mib_per_sec", fmt.Sprintf("%.1f", r.BytesPerSec/(1<<20)), "iops", fmt.Sprintf("%.0f", r.IOPS))
			}
			if s.remove {
				if err := os.Remove(filepath.Join(t.dir, s.job.file)); err != nil {
					return fmt.Errorf("%s: remove fio file: %w", t.name, err)
				}
			}
		}
	}
	for i, t := range b.targets {
		b.dropCaches()
		r, err := smallFiles(ctx, t.dir, o.Files, t.attrTimeout)
		if err != nil {
			return fmt.Errorf("%s: small files: %w", t.name, err)
		}
		res.Targets[i].SmallFiles = r
		b.log.Info("small files done", "target", t.name, "files", o.Files,
			"create_per_sec", fmt.Sprintf("%.0f", r.CreatePerSec), "stat_per_sec", fmt.Sprintf("%.0f", r.StatPerSec),
			"unlink_per_sec", fmt.Sprintf("%.0f", r.UnlinkPerSec))
	}
	return nil
}

// dropCachesPath is the kernel knob that drops the page, dentry and inode
// caches.
const dropCachesPath = "/proc/sys/vm/drop_caches"

// dropCaches writes back dirty data and drops the kernel's clean caches,
// so that the next job reads from the filesystems, not from memory. Where
// that is not permitted it logs once and gives up; fio still invalidates
// the cache of its file.
func (b *bench) dropCaches() {
	if !b.canDrop {
		return
	}
	syscall.Sync()
	if err := os.WriteFile(dropCachesPath, []byte("3\n"), 0); err != nil {
		b.canDrop = false
		b.log.Warn("cannot drop the page cache; relying on fio's invalidate=1", "err", err)
	}
}
