package main

import (
	"context"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchreport"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/mirrorbench"
	"github.com/tricopy/tricopy/configs"
)

func newBenchMirrorCmd(a *app) *cobra.Command {
	cfg := configs.DefaultBenchMirror()
	return newCommand(a, commandSpec{
		use:   "mirror",
		short: "Benchmark the mirrored mount against the local mount and raw hashicorp/raft",
		long: `Mirror mounts, in this process, a fresh local-only tricopy volume and, for each
cluster size of --nodes, a fresh volume mirrored to an intermediate cluster of
that size (in this process, real TCP on 127.0.0.1, data under --dir), and runs
the same fio jobs on each: 4 KiB writes each followed by fsync (latency),
sequential 1 MiB writes with an fsync at the end (MB/s), and 16 parallel jobs
of fsync'd 4 KiB writes (ops/s). As the yardstick it runs raw hashicorp/raft
Apply with the intermediate's log store on fresh clusters of the same sizes:
1 writer of 4 KiB entries, 1 writer of 1 MiB entries, 16 writers of 4 KiB.

Targets (issue 4): the mirrored write+fsync p50 at most the local one plus
1.2x raw Apply's 4 KiB p50; sequential MB/s at least 0.8x raw Apply's with
1 MiB entries; 16 writers' ops/s at least 1.5x 16 raw Apply writers'. It
prints markdown tables; with --strict a missed target makes the exit code 1.
It needs root, /dev/fuse and fio.`,
		example: `  tricopy bench mirror --dir /var/tmp/tricopy-bench
  tricopy bench mirror --dir /var/tmp/b --nodes 1 --runtime 5s --seq-size 128MiB --json mirror.json`,
	}, &cfg, runBenchMirror)
}

// runBenchMirror is `tricopy bench mirror`.
func runBenchMirror(ctx context.Context, a *app, log *slog.Logger, cfg *configs.BenchMirror) error {
	res, err := benchMirror(ctx, a, log, cfg)
	if err != nil {
		return err
	}
	if err := writeReport(a, cfg.Report, cfg.Dir, func(r *benchreport.Report) error { return r.AddMirror(res) }); err != nil {
		return err
	}
	if cfg.Strict && !res.Passed() {
		return errTargetsMissed
	}
	return nil
}

// benchMirror runs the benchmark of cfg, printing its tables.
func benchMirror(ctx context.Context, a *app, log *slog.Logger, cfg *configs.BenchMirror) (*mirrorbench.Results, error) {
	nodes, err := cfg.NodeCounts()
	if err != nil {
		return nil, err
	}
	return mirrorbench.Run(ctx, mirrorbench.Options{
		Dir: cfg.Dir, Runtime: cfg.Runtime, SeqSize: int64(cfg.SeqSize.Bytes()), Nodes: nodes, Logger: log, JSONPath: cfg.JSON,
	}, a.stdout)
}
