// Package mirrorbench is `tricopy bench mirror`: the same fio jobs on a
// local-only mount and on mirrored mounts (1- and 3-node intermediate
// clusters in this process), with raw hashicorp/raft Apply of the same
// payload sizes as the yardstick, all in one run.
package mirrorbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/blockdev/mirror"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/fsbench"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/mirrordev"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/replbench"
	"github.com/tricopy/tricopy/fusefs"
	"github.com/tricopy/tricopy/intermediate/client"
)

// Targets of the comparisons (issue 4).
const (
	// TargetLatencyRaft: the mirrored mount's 4 KiB write+fsync p50 is at
	// most the local mount's plus this many times raw Apply's 4 KiB p50.
	TargetLatencyRaft = 1.2
	// TargetSeqMBps: sequential 1 MiB writes (fsync at the end) reach at
	// least this ratio of raw Apply's MB/s with 1 MiB entries.
	TargetSeqMBps = 0.8
	// TargetParallelOps: 16 parallel fsync'd 4 KiB writers reach at least
	// this ratio of the ops/s of 16 raw Apply writers (group commit).
	TargetParallelOps = 1.5
)

// parallelWriters is the writer count of the parallel job and its
// yardstick.
const parallelWriters = 16

// Defaults of Options.
const (
	DefaultSeqSize = 256 << 20
	DefaultRuntime = 10 * time.Second
)

// Options configure Run.
type Options struct {
	// Dir is the directory the benchmark works in (created if missing), on
	// the disk to measure. Required.
	Dir string
	// SeqSize is the file size of the sequential job (default
	// DefaultSeqSize, at least 1 MiB).
	SeqSize int64
	// Runtime bounds each fio job and is the measured time of each raw
	// Apply run (default DefaultRuntime, at least 1s).
	Runtime time.Duration
	// Nodes lists the intermediate cluster sizes (default 1 and 3).
	Nodes []int
	// ElectionTimeout shortens Raft's timeouts on both sides when not 0
	// (tests).
	ElectionTimeout time.Duration
	// Logger receives progress; nil means slog.Default().
	Logger *slog.Logger
	// JSONPath, if set, names a file Run writes the Results to.
	JSONPath string
}

func (o Options) withDefaults() (Options, error) {
	if o.Dir == "" {
		return o, errors.New("options: Dir is required")
	}
	if o.SeqSize == 0 {
		o.SeqSize = DefaultSeqSize
	}
	if o.Runtime == 0 {
		o.Runtime = DefaultRuntime
	}
	if len(o.Nodes) == 0 {
		o.Nodes = replbench.DefaultNodes()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case o.SeqSize < 1<<20:
		return o, fmt.Errorf("options: SeqSize %d is below 1 MiB", o.SeqSize)
	case o.Runtime < 100*time.Millisecond:
		return o, fmt.Errorf("options: Runtime %v is below 100ms", o.Runtime)
	}
	for _, n := range o.Nodes {
		if n < 1 || n > 7 {
			return o, fmt.Errorf("options: Nodes %v: want sizes from 1 to 7", o.Nodes)
		}
	}
	return o, nil
}

// MountResult is what the fio jobs measured on one mount.
type MountResult struct {
	// Target is "local" or "mirror, N nodes".
	Target string `json:"target"`
	Nodes  int    `json:"nodes"` // 0 for the local mount
	// Fsync is 4 KiB sequential writes each followed by fsync, one job.
	Fsync fsbench.FioResult `json:"fsync"`
	// Seq is sequential 1 MiB writes with an fsync at the end.
	Seq fsbench.FioResult `json:"seq_write"`
	// Parallel is 16 jobs of fsync'd 4 KiB writes, each on its own file.
	Parallel fsbench.FioResult `json:"parallel_fsync"`
}

// WriteFsyncP50 is the p50 of a 4 KiB write plus the p50 of the fsync
// after it: the operation's latency as the sum of the medians of its parts.
func (r *MountResult) WriteFsyncP50() time.Duration { return r.Fsync.ClatP50 + r.Fsync.SyncP50 }

// RawResult is the yardstick on one cluster size.
type RawResult struct {
	Nodes    int                 `json:"nodes"`
	Small    replbench.RunResult `json:"apply_4k_1_writer"`
	Large    replbench.RunResult `json:"apply_1m_1_writer"`
	Parallel replbench.RunResult `json:"apply_4k_16_writers"`
}

// Comparison is one target on one cluster size.
type Comparison struct {
	Nodes  int     `json:"nodes"`
	Name   string  `json:"name"`
	Unit   string  `json:"unit"`
	Ours   float64 `json:"ours"`
	Bound  float64 `json:"bound"` // the figure ours must stay under (Lower) or reach
	Lower  bool    `json:"lower_is_better"`
	Target string  `json:"target"`
	Passed bool    `json:"passed"`
}

// Results are a run's figures.
type Results struct {
	Time        time.Time     `json:"time"`
	Kernel      string        `json:"kernel"`
	FioVersion  string        `json:"fio_version"`
	SeqSize     int64         `json:"seq_size"`
	Runtime     time.Duration `json:"runtime_ns"`
	Mounts      []MountResult `json:"mounts"`
	Raw         []RawResult   `json:"raw"`
	Comparisons []Comparison  `json:"comparisons"`
}

// Passed reports whether every target was met.
func (r *Results) Passed() bool {
	for _, c := range r.Comparisons {
		if !c.Passed {
			return false
		}
	}
	return true
}

// Run runs the benchmark, writes a markdown report to w (and JSON to
// opts.JSONPath) and returns the results. It needs root, /dev/fuse and fio.
// It unmounts everything, stops every cluster and removes its working
// directory before it returns, also on error.
func Run(ctx context.Context, opts Options, w io.Writer) (_ *Results, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	fio, version, err := fsbench.LookFio(ctx)
	if err != nil {
		return nil, err
	}
	runDir, err := benchutil.MakeRunDir(opts.Dir, "mirrorbench-")
	if err != nil {
		return nil, err
	}
	defer benchutil.RemoveRunDir(runDir, &err)
	res := &Results{Time: time.Now().UTC(), Kernel: benchutil.KernelRelease(), FioVersion: version,
		SeqSize: opts.SeqSize, Runtime: opts.Runtime}
	b := &bench{opts: opts, fio: fio, runDir: runDir, log: opts.Logger}

	local, err := b.measureMount(ctx, 0)
	if err != nil {
		return nil, err
	}
	res.Mounts = append(res.Mounts, local)
	for _, n := range opts.Nodes {
		m, err := b.measureMount(ctx, n)
		if err != nil {
			return nil, err
		}
		res.Mounts = append(res.Mounts, m)
		raw, err := b.measureRaw(ctx, n)
		if err != nil {
			return nil, err
		}
		res.Raw = append(res.Raw, raw)
		res.Comparisons = append(res.Comparisons, compare(&local, &m, &raw)...)
	}
	return res, benchutil.Report(w, res.WriteMarkdown, opts.JSONPath, res)
}

type bench struct {
	opts   Options
	fio    string
	runDir string
	log    *slog.Logger
}

// jobs are the fio jobs every mount runs, in order.
func (b *bench) jobs() []fsbench.Job {
	return []fsbench.Job{
		{Name: "fsync", File: "fsync.dat", RW: "write", BS: 4 << 10, Size: 16 << 20, Fsync: true},
		{Name: "seq-write", File: "seq.dat", RW: "write", BS: 1 << 20, Size: b.opts.SeqSize, EndFsync: true},
		{Name: "parallel-fsync", File: "par.dat", RW: "write", BS: 4 << 10, Size: 4 << 20, Fsync: true, NumJobs: parallelWriters},
	}
}

// measureMount mounts a fresh volume (local-only when nodes is 0, else
// mirrored to a fresh intermediate cluster of nodes members), runs the fio
// jobs on it, and tears it down.
func (b *bench) measureMount(ctx context.Context, nodes int) (_ MountResult, err error) {
	name := "local"
	if nodes > 0 {
		name = fmt.Sprintf("mirror, %d node", nodes)
		if nodes > 1 {
			name += "s"
		}
	}
	r := MountResult{Target: name, Nodes: nodes}
	dir := filepath.Join(b.runDir, fmt.Sprintf("mount-%d", nodes))
	mnt, closeFn, err := b.mount(ctx, dir, nodes)
	if err != nil {
		return r, fmt.Errorf("%s: %w", name, err)
	}
	defer func() {
		if cerr := closeFn(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("%s: tear down: %w", name, cerr))
		}
	}()
	for i, job := range b.jobs() {
		fr, err := fsbench.RunJob(ctx, b.fio, mnt, dir, b.opts.Runtime, job)
		if err != nil {
			return r, fmt.Errorf("%s: %w", name, err)
		}
		*[]*fsbench.FioResult{&r.Fsync, &r.Seq, &r.Parallel}[i] = *fr
		b.log.Info("fio job done", "target", name, "job", job.Name,
			"mib_per_sec", fmt.Sprintf("%.1f", fr.BytesPerSec/(1<<20)), "iops", fmt.Sprintf("%.0f", fr.IOPS),
			"clat_p50", fr.ClatP50.String(), "sync_p50", fr.SyncP50.String())
	}
	return r, nil
}

// mount makes the target: a formatted volume under dir, mirrored when nodes
// is not 0, mounted in this process. closeFn unmounts and stops everything.
func (b *bench) mount(ctx context.Context, dir string, nodes int) (mnt string, closeFn func() error, err error) {
	blocks := uint64(b.opts.SeqSize+256<<20) / blockdev.BlockSize
	if nodes == 0 {
		return MountPrimary(ctx, dir, blocks, nil, b.log)
	}
	inter, err := replbench.StartIntermediate(ctx, filepath.Join(dir, "intermediate"), nodes,
		replbench.Options{Logger: b.log, ElectionTimeout: b.opts.ElectionTimeout})
	if err != nil {
		return "", nil, err
	}
	mnt, closeMount, err := MountPrimary(ctx, dir, blocks, inter.Addrs(), b.log)
	if err != nil {
		return "", nil, errors.Join(err, inter.Close())
	}
	return mnt, func() error { return errors.Join(closeMount(), inter.Close()) }, nil
}

// MountPrimary creates and formats a volume of blocks blocks in dir/volume
// and mounts it at dir/mnt: local-only when addrs is empty, else mirrored
// (volume "bench") to the intermediate at addrs, once its initial copy is
// done. closeFn unmounts it and closes everything it opened.
func MountPrimary(ctx context.Context, dir string, blocks uint64, addrs []string, log *slog.Logger) (mnt string, closeFn func() error, err error) {
	var closers []func() error
	closeAll := func() error {
		var errs []error
		for i := len(closers) - 1; i >= 0; i-- {
			errs = append(errs, closers[i]())
		}
		closers = nil
		return errors.Join(errs...)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, closeAll())
		}
	}()
	mnt = filepath.Join(dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return "", nil, err
	}
	vol, err := blockdev.Create(filepath.Join(dir, "volume"), blocks, blockdev.Options{Logger: log})
	if err != nil {
		return "", nil, err
	}
	closers = append(closers, vol.Close)
	if err := fusefs.Format(ctx, vol, fusefs.FormatOptions{}); err != nil {
		return "", nil, err
	}
	if err := vol.Sync(ctx); err != nil {
		return "", nil, err
	}
	var dev fusefs.Device = fusefs.LocalDevice(vol)
	if len(addrs) > 0 {
		cl, err := client.New(client.Config{Addrs: addrs, Logger: log})
		if err != nil {
			return "", nil, err
		}
		closers = append(closers, cl.Close)
		m, err := mirror.Open(ctx, mirror.Config{Name: "bench", Local: vol, Dir: vol.Dir(), Client: cl, Logger: log})
		if err != nil {
			return "", nil, err
		}
		closers = append(closers, m.Close)
		// The initial copy of the formatted volume runs before measuring.
		for m.Status().State != mirror.StatePair {
			select {
			case <-ctx.Done():
				return "", nil, context.Cause(ctx)
			case <-time.After(20 * time.Millisecond):
			}
		}
		dev = mirrordev.Device{M: m}
	}
	srv, err := fusefs.Mount(ctx, dev, fusefs.MountOptions{Mountpoint: mnt, Name: "mirrorbench", Logger: log})
	if err != nil {
		return "", nil, err
	}
	closers = append(closers, func() error {
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := srv.Unmount()
			if err == nil || time.Now().After(deadline) {
				return err
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	return mnt, closeAll, nil
}

// measureRaw runs the yardstick on a fresh raw Raft cluster per workload.
func (b *bench) measureRaw(ctx context.Context, nodes int) (RawResult, error) {
	r := RawResult{Nodes: nodes}
	opts := replbench.Options{Duration: b.opts.Runtime, Logger: b.log, ElectionTimeout: b.opts.ElectionTimeout}
	for i, w := range []struct{ writers, bytes int }{{1, 4 << 10}, {1, 1 << 20}, {parallelWriters, 4 << 10}} {
		rr, err := replbench.RawApply(ctx, filepath.Join(b.runDir, fmt.Sprintf("raw-%d-%d", nodes, i)), nodes, w.writers, w.bytes, opts)
		if err != nil {
			return r, err
		}
		*[]*replbench.RunResult{&r.Small, &r.Large, &r.Parallel}[i] = rr
		b.log.Info("raw apply done", "nodes", nodes, "writers", w.writers, "bytes", w.bytes,
			"ops_per_sec", fmt.Sprintf("%.0f", rr.OpsPerSec), "mb_per_sec", fmt.Sprintf("%.1f", rr.MBPerSec), "p50", rr.Latency.P50.String())
	}
	return r, nil
}

// compare holds mirror m against the targets, with local and raw of the
// same cluster size.
func compare(local, m *MountResult, raw *RawResult) []Comparison {
	us := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
	mb := func(bps float64) float64 { return bps / 1e6 }
	lat := Comparison{Nodes: m.Nodes, Name: "4 KiB write+fsync, p50", Unit: "µs", Lower: true,
		Ours:   us(m.WriteFsyncP50()),
		Bound:  us(local.WriteFsyncP50()) + TargetLatencyRaft*us(raw.Small.Latency.P50),
		Target: fmt.Sprintf("≤ local + %.1f × raw Apply 4 KiB p50", TargetLatencyRaft)}
	seq := Comparison{Nodes: m.Nodes, Name: "sequential 1 MiB writes, fsync at end", Unit: "MB/s",
		Ours: mb(m.Seq.BytesPerSec), Bound: TargetSeqMBps * raw.Large.MBPerSec,
		Target: fmt.Sprintf("≥ %.1f × raw Apply 1 MiB MB/s", TargetSeqMBps)}
	par := Comparison{Nodes: m.Nodes, Name: "16 writers of fsync'd 4 KiB", Unit: "ops/s",
		Ours: m.Parallel.IOPS, Bound: TargetParallelOps * raw.Parallel.OpsPerSec,
		Target: fmt.Sprintf("≥ %.1f × 16 raw Apply writers' ops/s", TargetParallelOps)}
	out := []Comparison{lat, seq, par}
	for i := range out {
		c := &out[i]
		if c.Lower {
			c.Passed = c.Ours <= c.Bound
		} else {
			c.Passed = c.Ours >= c.Bound
		}
	}
	return out
}

// WriteMarkdown writes the results as markdown tables.
func (r *Results) WriteMarkdown(w io.Writer) error {
	p := &benchutil.Printer{W: w}
	p.F("## Mirrored mount vs local mount and raw Raft Apply\n\n")
	p.F("%s, kernel %s, %s; fio jobs bounded by %s, sequential file %d MiB.\n\n",
		r.Time.Format(time.RFC3339), r.Kernel, r.FioVersion, r.Runtime, r.SeqSize>>20)
	p.F("| mount | 4 KiB write p50 | fsync p50 | write+fsync p50 | seq 1 MiB MB/s | 16 × fsync'd 4 KiB ops/s |\n")
	p.F("| --- | ---: | ---: | ---: | ---: | ---: |\n")
	for _, m := range r.Mounts {
		p.F("| %s | %s | %s | %s | %.1f | %.0f |\n", m.Target, m.Fsync.ClatP50, m.Fsync.SyncP50, m.WriteFsyncP50(),
			m.Seq.BytesPerSec/1e6, m.Parallel.IOPS)
	}
	p.F("\n| raw Apply | 4 KiB × 1 p50 | 1 MiB × 1 MB/s | 4 KiB × 16 ops/s |\n| --- | ---: | ---: | ---: |\n")
	for _, raw := range r.Raw {
		p.F("| %d node(s) | %s | %.1f | %.0f |\n", raw.Nodes, raw.Small.Latency.P50, raw.Large.MBPerSec, raw.Parallel.OpsPerSec)
	}
	p.F("\n| nodes | figure | ours | bound | target | verdict |\n| ---: | --- | ---: | ---: | --- | --- |\n")
	for _, c := range r.Comparisons {
		verdict := "met"
		if !c.Passed {
			verdict = "**missed**"
		}
		p.F("| %d | %s (%s) | %.1f | %.1f | %s | %s |\n", c.Nodes, c.Name, c.Unit, c.Ours, c.Bound, c.Target, verdict)
	}
	return p.Err
}
