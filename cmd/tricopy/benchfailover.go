package main

import (
	"context"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchreport"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/failoverbench"
	"github.com/tricopy/tricopy/configs"
)

func newBenchFailoverCmd(a *app) *cobra.Command {
	cfg := configs.DefaultBenchFailover()
	return newCommand(a, commandSpec{
		use:   "failover",
		short: "Benchmark the recovery time of tricopy promote with a staged backlog",
		long: `Failover runs, as processes of this binary, a one-node intermediate (TCP on
127.0.0.1, data under --dir), --volumes mirrored primaries of --size each and a
secondary of each. With the secondaries' applying held (the test-only
TRICOPY_TEST_HOLD_APPLY switch: they still stage and prepare), it writes
--backlog on every primary and waits until the secondaries staged it all; then
it SIGKILLs the primaries and promotes the group (the code of tricopy promote,
with the intermediate alive: fence, drain, roll forward) and writes and fsyncs
a file on every promoted mount. It reports the staged backlog, the time
promote took and the RTO: from the start of promote to the last fsync.

Target (issue 6): RTO under 5s for two 1 GiB volumes with 100 MB staged. It
prints markdown; with --strict a missed target makes the exit code 1. It needs
root and /dev/fuse.`,
		example: `  tricopy bench failover --dir /var/tmp/tricopy-bench
  tricopy bench failover --dir /var/tmp/b --size 256MiB --backlog 32MiB --json failover.json`,
	}, &cfg, runBenchFailover)
}

// runBenchFailover is `tricopy bench failover`.
func runBenchFailover(ctx context.Context, a *app, log *slog.Logger, cfg *configs.BenchFailover) error {
	res, err := benchFailover(ctx, a, log, cfg)
	if err != nil {
		return err
	}
	if err := writeReport(a, cfg.Report, cfg.Dir, func(r *benchreport.Report) error { return r.AddFailover(res) }); err != nil {
		return err
	}
	if cfg.Strict && !res.Passed {
		return errTargetsMissed
	}
	return nil
}

// benchFailover runs the benchmark of cfg, printing its tables.
func benchFailover(ctx context.Context, a *app, log *slog.Logger, cfg *configs.BenchFailover) (*failoverbench.Results, error) {
	return failoverbench.Run(ctx, failoverbench.Options{
		Dir: cfg.Dir, Volumes: int(cfg.Volumes), Size: int64(cfg.Size.Bytes()), Backlog: int64(cfg.Backlog.Bytes()),
		Logger: log, JSONPath: cfg.JSON,
	}, a.stdout)
}
