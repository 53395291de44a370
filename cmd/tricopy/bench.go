package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchreport"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/fsbench"
	"github.com/tricopy/tricopy/configs"
)

// errTargetsMissed is returned by `bench fs --strict` when a target is missed.
var errTargetsMissed = errors.New("performance targets missed")

// newBenchCmd is `tricopy bench`, the parent of the benchmarks of
// DESIGN.md section 8. Later issues add replication and failover benchmarks.
func newBenchCmd(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "bench",
		Short: "Run tricopy's benchmarks",
		Long: `Run tricopy's benchmarks. Each compares tricopy with a yardstick run in the
same invocation on the same disk and prints a markdown table of absolute
figures, ratios and the targets they are held to. With --report DIR a
benchmark also writes DIR/README.md (its tables and the machine they ran on)
and PNG plots of its latency distributions; bench all runs every benchmark
and writes one report of them all.`,
		Example: `  tricopy bench fs --dir /var/tmp/tricopy-bench
  tricopy bench submit --dir /var/tmp/tricopy-bench --report /tmp/submit-report
  tricopy bench mirror --dir /var/tmp/tricopy-bench
  tricopy bench all --dir /var/tmp/tricopy-bench --report /tmp/tricopy-report`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageErrorf("unexpected argument %q: pick a benchmark, e.g. fs", args[0])
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	c.AddCommand(newBenchFSCmd(a))
	c.AddCommand(newBenchSubmitCmd(a))
	c.AddCommand(newBenchMirrorCmd(a))
	c.AddCommand(newBenchLagCmd(a))
	c.AddCommand(newBenchFailoverCmd(a))
	c.AddCommand(newBenchAllCmd(a))
	return c
}

func newBenchFSCmd(a *app) *cobra.Command {
	cfg := configs.DefaultBenchFSCommand()
	return newCommand(a, commandSpec{
		use:   "fs",
		short: "Benchmark the filesystem against go-fuse's loopback and the bare disk",
		long: `Fs mounts, in this process, a fresh local-only tricopy volume and go-fuse's
loopback filesystem (with FUSE passthrough disabled, so the loopback server
does its own I/O) over directories under --dir, and runs the same workloads on
them and on the bare directory: fio sequential 1 MiB write and read, random
4 KiB write and read, 4 KiB write+fsync latency, and create/stat/unlink of
small files. The page cache is dropped before every measured job.

It needs root, /dev/fuse and fio. It prints a markdown table with each
figure, the ratio tricopy/loopback and the target it is held to (sequential
at least 0.8, random 4 KiB at least 0.6, small files at least 0.5, fsync
latency at most 1.5). A missed target is reported in the table; with
--strict it also makes the exit code 1. With --report DIR it also writes
the table and plots of the latency distributions of the fsync, write and
random 4 KiB jobs on the three targets to DIR.`,
		example: `  tricopy bench fs --dir /var/tmp/tricopy-bench --report /tmp/fs-report
  tricopy bench fs --dir /var/tmp/b --seq-size 64MiB --rand-size 64MiB --runtime 3s --files 1000`,
	}, &cfg, runBenchFS)
}

// runBenchFS is `tricopy bench fs`.
func runBenchFS(ctx context.Context, a *app, log *slog.Logger, cfg *configs.BenchFSCommand) error {
	res, err := benchFS(ctx, a, log, &cfg.BenchFS)
	if err != nil {
		return err
	}
	if err := writeReport(a, cfg.Report, cfg.Dir, func(r *benchreport.Report) error { return r.AddFS(res) }); err != nil {
		return err
	}
	if cfg.Strict && !res.Passed() {
		return errTargetsMissed
	}
	return nil
}

// benchFS runs the filesystem benchmark of cfg, printing its table.
func benchFS(ctx context.Context, a *app, log *slog.Logger, cfg *configs.BenchFS) (*fsbench.Results, error) {
	return fsbench.Run(ctx, fsbench.Options{
		Dir:      cfg.Dir,
		SeqSize:  int64(cfg.SeqSize.Bytes()),
		RandSize: int64(cfg.RandSize.Bytes()),
		Runtime:  cfg.Runtime,
		Files:    int(cfg.Files),
		Logger:   log,
		JSONPath: cfg.JSON,
	}, a.stdout)
}

// writeReport writes a report of one benchmark to dir, with add, unless
// dir is empty; scratch is the benchmark's scratch directory, whose
// filesystem the report describes.
func writeReport(a *app, dir, scratch string, add func(*benchreport.Report) error) error {
	if dir == "" {
		return nil
	}
	r, err := benchreport.New(dir, scratch, os.Args)
	if err != nil {
		return err
	}
	if err := add(r); err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "\nReport: %s\n", r.Readme())
	return nil
}
