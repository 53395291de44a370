package main

import (
	"context"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchreport"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/replbench"
	"github.com/tricopy/tricopy/configs"
)

func newBenchSubmitCmd(a *app) *cobra.Command {
	cfg := configs.DefaultBenchSubmit()
	return newCommand(a, commandSpec{
		use:   "submit",
		short: "Benchmark the intermediate's Submit path against raw hashicorp/raft",
		long: `Submit starts, in this process, clusters of intermediate nodes and, as the
yardstick, clusters of plain hashicorp/raft nodes with the same raft-boltdb
log (fsync on every write), with their data under --dir and real TCP on
127.0.0.1, and measures on both the same scenarios for each cluster size of
--nodes: 4 KiB writes with 1 writer and with 64 writers, and 128 KiB writes
with --large-writers writers. On the yardstick a write is a Raft Apply of an
entry of that size; on ours it is a client Submit of one batch of 4 KiB
blocks, the writers spread over 4 volumes. Every writer waits for its write
to be acknowledged before the next. Each scenario and side runs on a fresh
cluster for a 1s warm-up and then --duration measured.

It prints the machine, the disk's 4 KiB write+fsync latency, and a markdown
table with ops/s, MB/s, p50 and p99 latency, Raft entries per log fsync and
Submit batches per Raft entry of each side, the ratio ours/yardstick and the
target it is held to (1 writer: p50 at most 1.2x; 64 writers: ops/s at
least 1.5x; 128 KiB: MB/s at least 0.8x). A missed target is reported in the
table; with --strict it also makes the exit code 1.`,
		example: `  tricopy bench submit --dir /var/tmp/tricopy-bench
  tricopy bench submit --dir /var/tmp/b --nodes 3 --duration 10s --json submit.json --strict`,
	}, &cfg, runBenchSubmit)
}

// runBenchSubmit is `tricopy bench submit`.
func runBenchSubmit(ctx context.Context, a *app, log *slog.Logger, cfg *configs.BenchSubmit) error {
	res, err := benchSubmit(ctx, a, log, cfg)
	if err != nil {
		return err
	}
	if err := writeReport(a, cfg.Report, cfg.Dir, func(r *benchreport.Report) error { return r.AddSubmit(res) }); err != nil {
		return err
	}
	if cfg.Strict && !res.Passed() {
		return errTargetsMissed
	}
	return nil
}

// benchSubmit runs the benchmark of cfg, printing its tables.
func benchSubmit(ctx context.Context, a *app, log *slog.Logger, cfg *configs.BenchSubmit) (*replbench.Results, error) {
	nodes, err := cfg.NodeCounts()
	if err != nil {
		return nil, err
	}
	return replbench.Run(ctx, replbench.Options{
		Dir:          cfg.Dir,
		Duration:     cfg.Duration,
		LargeWriters: int(cfg.LargeWriters),
		Nodes:        nodes,
		Logger:       log,
		JSONPath:     cfg.JSON,
	}, a.stdout)
}
