package main

import (
	"context"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchreport"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/lagbench"
	"github.com/tricopy/tricopy/configs"
)

func newBenchLagCmd(a *app) *cobra.Command {
	cfg := configs.DefaultBenchLag()
	return newCommand(a, commandSpec{
		use:   "lag",
		short: "Benchmark the lag from a primary's write to its visibility on a secondary's mount",
		long: `Lag runs, in this process, a one-node intermediate (real TCP on 127.0.0.1, data
under --dir), a fresh volume mounted as a mirrored primary, and a secondary of it
with its read-only mount. It first measures the mirrored mount's maximum rate
(8 writers, each appending 4 KiB records to its own file with an fsync after
each), then, for 50% and 90% of that rate, paces the same writers for
--duration while a poller reads the replica mount, and reports, per load, the
p50, p99 and maximum of the time from a write's return on the primary to its
record being readable on the secondary's mount. Last, with the secondary
stopped, it writes --backlog as fast as the mirrored mount takes it (two
writers of sequential 1 MiB writes, an fsync per 64 MiB file), restarts the secondary and
measures how fast it catches up.

Targets (issue 5): lag p99 under 250ms at 50% load; catch-up at least twice
the primary's write rate. It prints markdown; with --strict a missed target
makes the exit code 1. It needs root and /dev/fuse.`,
		example: `  tricopy bench lag --dir /var/tmp/tricopy-bench
  tricopy bench lag --dir /var/tmp/b --duration 5s --backlog 256MiB --json lag.json`,
	}, &cfg, runBenchLag)
}

// runBenchLag is `tricopy bench lag`.
func runBenchLag(ctx context.Context, a *app, log *slog.Logger, cfg *configs.BenchLag) error {
	res, err := benchLag(ctx, a, log, cfg)
	if err != nil {
		return err
	}
	if err := writeReport(a, cfg.Report, cfg.Dir, func(r *benchreport.Report) error { return r.AddLag(res) }); err != nil {
		return err
	}
	if cfg.Strict && !res.Passed() {
		return errTargetsMissed
	}
	return nil
}

// benchLag runs the benchmark of cfg, printing its tables.
func benchLag(ctx context.Context, a *app, log *slog.Logger, cfg *configs.BenchLag) (*lagbench.Results, error) {
	backlog := int64(cfg.Backlog.Bytes())
	if backlog == 0 {
		backlog = -1 // skip
	}
	return lagbench.Run(ctx, lagbench.Options{
		Dir: cfg.Dir, Duration: cfg.Duration, Backlog: backlog, Logger: log, JSONPath: cfg.JSON,
	}, a.stdout)
}
