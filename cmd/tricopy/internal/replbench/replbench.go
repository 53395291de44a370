// Package replbench is the replication benchmark of `tricopy bench submit`
// (DESIGN.md section 8): it measures the intermediate cluster's Submit path
// against raw hashicorp/raft in one invocation, on the same machine and
// disk, and reports the ratios against the targets.
//
// The two sides are:
//
//   - raft, the yardstick: hashicorp/raft with a raft-boltdb log and stable
//     store (NoSync false: every log write is fsynced), a raft.LogCache, a
//     FileSnapshotStore and the TCP transport on 127.0.0.1, tuned as
//     intermediate.Open tunes its Raft, with a state machine that only
//     counts bytes. Each writer calls Apply on the leader with an entry of
//     the scenario's payload and waits for the future's Error and Response
//     before its next Apply;
//   - submit, ours: intermediate nodes opened with intermediate.Open, and
//     one client whose writers Submit batches of the scenario's blocks,
//     spread over four volumes (one client.Volume each, shared by its
//     writers), each waiting for its ack before its next Submit.
//
// Every scenario runs on each cluster size of Options.Nodes: 4 KiB writes
// with 1 writer and with 64 writers, and 128 KiB writes with
// Options.LargeWriters writers. For each scenario the raft side runs, then
// the submit side, each on a fresh cluster in a fresh directory under
// Options.Dir (so the Raft logs are on the disk being measured), all nodes
// of a cluster in this process, each with its own directory and ports.
// Each run writes for Options.Warmup unmeasured, then for Options.Duration
// measured: the writes acknowledged in that window give ops/s, MB/s and the
// latency percentiles, and the leader's counters over the window give the
// entries per log write (each one fsync) and, for ours, the Submit batches
// per Raft entry.
//
// Before the scenarios Run measures the machine (CPU count, kernel) and
// the disk's latency of a 4 KiB append with fsync, which bounds the
// latency of every Raft write on both sides.
package replbench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil"
)

// Defaults of Options.
const (
	// DefaultDuration is the measured time of each run.
	DefaultDuration = 5 * time.Second
	// DefaultWarmup is the unmeasured time before it.
	DefaultWarmup = time.Second
	// DefaultLargeWriters is the writer count of the 128 KiB scenarios.
	DefaultLargeWriters = 8
)

// DefaultNodes returns the default cluster sizes: 1 and 3.
func DefaultNodes() []int { return []int{1, 3} }

// Limits of Options.
const (
	minDuration = 100 * time.Millisecond
	maxWriters  = 1024
	maxNodes    = 7
	// probeBudget bounds the fsync probe.
	probeBudget = time.Second
)

// Options configure Run. Zero values take the defaults.
type Options struct {
	// Dir is the directory the benchmark works in (created if missing); it
	// should be on the disk to measure. Run makes a fresh directory in it
	// and removes it at the end. Required.
	Dir string
	// Duration is the measured time of each run; 0 means DefaultDuration.
	// At least 100ms.
	Duration time.Duration
	// Warmup is the unmeasured time of writes before it; 0 means
	// DefaultWarmup.
	Warmup time.Duration
	// LargeWriters is the writer count of the 128 KiB scenarios; 0 means
	// DefaultLargeWriters.
	LargeWriters int
	// Nodes lists the cluster sizes to run every scenario on, in order;
	// empty means DefaultNodes. Each from 1 to 7, no repeats.
	Nodes []int
	// ElectionTimeout, when not 0, sets Raft's heartbeat and election
	// timeouts (and half of it the leader lease) on both sides, so that a
	// fresh cluster elects its leader sooner; 0 keeps Raft's defaults,
	// which intermediate nodes run with. Tests shorten it.
	ElectionTimeout time.Duration
	// Logger receives progress; nil means slog.Default(). The clusters
	// under test log to it at Warn and above, or at every level when it is
	// enabled for Debug.
	Logger *slog.Logger
	// JSONPath, if set, names a file Run writes the Results to as JSON.
	JSONPath string
}

func (o Options) withDefaults() (Options, error) {
	if o.Dir == "" {
		return o, errors.New("options: Dir is required")
	}
	if o.Duration == 0 {
		o.Duration = DefaultDuration
	}
	if o.Warmup == 0 {
		o.Warmup = DefaultWarmup
	}
	if o.LargeWriters == 0 {
		o.LargeWriters = DefaultLargeWriters
	}
	if len(o.Nodes) == 0 {
		o.Nodes = DefaultNodes()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case o.Duration < minDuration:
		return o, fmt.Errorf("options: Duration %v is below %v", o.Duration, minDuration)
	case o.Warmup < 0:
		return o, fmt.Errorf("options: Warmup %v is negative", o.Warmup)
	case o.LargeWriters < 1 || o.LargeWriters > maxWriters:
		return o, fmt.Errorf("options: LargeWriters %d is not between 1 and %d", o.LargeWriters, maxWriters)
	case o.ElectionTimeout < 0:
		return o, fmt.Errorf("options: ElectionTimeout %v is negative", o.ElectionTimeout)
	}
	seen := map[int]bool{}
	for _, n := range o.Nodes {
		if n < 1 || n > maxNodes || seen[n] {
			return o, fmt.Errorf("options: Nodes %v: want distinct sizes from 1 to %d", o.Nodes, maxNodes)
		}
		seen[n] = true
	}
	return o, nil
}

// Run runs every scenario on both sides, writes the results to w as a
// markdown table, writes them to opts.JSONPath as JSON if set, and returns
// them. A missed target is a verdict in the results, not an error.
//
// Run stops every cluster and client it started and removes its working
// directory before it returns, also on error. When ctx is cancelled the
// running writers stop (the yardstick's Raft is shut down under them) and
// Run returns promptly with ctx's cause. An error names the side and
// scenario that failed.
func Run(ctx context.Context, opts Options, w io.Writer) (_ *Results, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	runDir, err := benchutil.MakeRunDir(opts.Dir, "replbench-")
	if err != nil {
		return nil, err
	}
	defer benchutil.RemoveRunDir(runDir, &err)
	log := opts.Logger

	res := &Results{
		Time:        time.Now().UTC(),
		Machine:     machine(),
		RaftVersion: raftVersion(),
		Warmup:      opts.Warmup,
		Duration:    opts.Duration,
	}
	if res.Machine.LoadBefore >= float64(res.Machine.CPUs)/2 {
		log.Warn("the machine is busy: other work competes with the clusters, and the figures will not be comparable with a quiet run's",
			"load_average", res.Machine.LoadBefore, "cpus", res.Machine.CPUs)
	}
	res.Disk.Dir = opts.Dir
	res.Disk.Device, res.Disk.FSType = benchutil.MountOf(opts.Dir)
	res.Disk.Fsync, err = probeFsync(ctx, runDir, min(probeBudget, opts.Duration))
	if err != nil {
		return nil, err
	}
	log.Info("disk measured", "dir", opts.Dir, "fs", res.Disk.FSType,
		"fsync_p50", res.Disk.Fsync.P50.String(), "fsync_p99", res.Disk.Fsync.P99.String())

	for i, sc := range scenarios(opts.Nodes, opts.LargeWriters) {
		var pair [2]RunResult
		for j, side := range []string{SideRaft, SideSubmit} {
			dir := filepath.Join(runDir, fmt.Sprintf("%02d-%s", i, side))
			log.Info("run started", "side", side, "scenario", sc.String())
			r, err := runOne(ctx, side, sc, dir, opts)
			if err != nil {
				return nil, fmt.Errorf("%s, %s: %w", side, sc, err)
			}
			log.Info("run done", "side", side, "scenario", sc.String(),
				"ops_per_sec", fmt.Sprintf("%.0f", r.OpsPerSec), "mb_per_sec", fmt.Sprintf("%.1f", r.MBPerSec),
				"p50", r.Latency.P50.String(), "p99", r.Latency.P99.String(), "entries_per_fsync", fmt.Sprintf("%.2f", r.EntriesPerFsync))
			res.Runs = append(res.Runs, r)
			pair[j] = r
		}
		res.Comparisons = append(res.Comparisons, compare(sc, &pair[0], &pair[1]))
	}

	res.Machine.LoadAfter = benchutil.LoadAverage()
	return res, benchutil.Report(w, res.WriteMarkdown, opts.JSONPath, res)
}

// runOne starts side's cluster for sc in dir, drives it, stops it and
// removes dir.
func runOne(ctx context.Context, side string, sc Scenario, dir string, opts Options) (_ RunResult, err error) {
	defer func() {
		if rerr := os.RemoveAll(dir); rerr != nil {
			err = errors.Join(err, fmt.Errorf("remove %s: %w", dir, rerr))
		}
	}()
	var sys system
	switch side {
	case SideRaft:
		sys, err = startRaft(ctx, dir, sc.Nodes, sc.WriteBytes(), opts)
	case SideSubmit:
		sys, err = startSubmit(ctx, dir, sc, opts)
	default:
		return RunResult{}, fmt.Errorf("unknown side %q", side)
	}
	if err != nil {
		return RunResult{}, fmt.Errorf("start cluster: %w", err)
	}
	// Collect the garbage of the previous runs (a Submit run leaves its
	// whole journal) before measuring this one.
	runtime.GC()
	r, err := drive(ctx, sys, sc, opts.Warmup, opts.Duration)
	stopStart := time.Now()
	cerr := sys.close()
	opts.Logger.Debug("cluster stopped", "side", side, "took", time.Since(stopStart).String())
	if cerr != nil {
		err = errors.Join(err, fmt.Errorf("stop cluster: %w", cerr))
	}
	if err != nil {
		return RunResult{}, err
	}
	r.Side = side
	return r, nil
}

// RawApply measures raw hashicorp/raft Apply (raft-boltdb log store, the
// intermediate's Raft settings) on a fresh cluster of nodes members under
// dir: writers concurrent writers, each applying entries of writeBytes
// bytes and waiting for each, for opts.Warmup then opts.Duration. Other
// benchmarks use it as their yardstick.
func RawApply(ctx context.Context, dir string, nodes, writers, writeBytes int, opts Options) (RunResult, error) {
	opts.Dir = dir
	opts, err := opts.withDefaults()
	if err != nil {
		return RunResult{}, err
	}
	if writeBytes <= 0 || writeBytes%blockSize != 0 {
		return RunResult{}, fmt.Errorf("raw apply: write size %d is not a positive multiple of %d", writeBytes, blockSize)
	}
	sc := Scenario{Nodes: nodes, Blocks: writeBytes / blockSize, Writers: writers}
	r, err := runOne(ctx, SideRaft, sc, dir, opts)
	if err != nil {
		return RunResult{}, fmt.Errorf("raw apply, %s: %w", sc, err)
	}
	return r, nil
}
