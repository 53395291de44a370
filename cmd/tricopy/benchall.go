package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchreport"
	"github.com/tricopy/tricopy/configs"
)

func newBenchAllCmd(a *app) *cobra.Command {
	cfg := configs.DefaultBenchAll()
	return newCommand(a, commandSpec{
		use:   "all",
		short: "Run every benchmark in sequence and write one report",
		long: `All runs fs, submit, mirror, lag and failover in that order, each with its
defaults (or, with --quick, small sizes, short runs and 1-node clusters only)
in DIR/NAME under --dir, and prints their tables as it goes. With --report
DIR it writes one report of them all: DIR/README.md with the machine (CPU,
memory, kernel, the filesystem of --dir, Go), the command line and every
benchmark's tables, each followed by its plots, PNG files in DIR. The report
is rewritten after every benchmark.

A benchmark that fails is reported (in the report too) and the next one
runs; the exit code is then 1. With --strict a missed target also makes the
exit code 1. The defaults take about 15 minutes and --quick a few; it needs
root, /dev/fuse and fio.`,
		example: `  tricopy bench all --dir /var/tmp/tricopy-bench --report /tmp/tricopy-report
  tricopy bench all --dir /var/tmp/b --report /tmp/r --quick --skip failover`,
	}, &cfg, runBenchAll)
}

// errBenchFailed is returned by `bench all` when a benchmark failed.
var errBenchFailed = errors.New("benchmarks failed")

// benchStep is one benchmark of `bench all`: run runs it and returns
// whether its targets were met, and the function that adds it to a
// report.
type benchStep func(ctx context.Context) (passed bool, add func(*benchreport.Report) error, err error)

// runBenchAll is `tricopy bench all`.
func runBenchAll(ctx context.Context, a *app, log *slog.Logger, cfg *configs.BenchAll) error {
	var rep *benchreport.Report
	if cfg.Report != "" {
		var err error
		if rep, err = benchreport.New(cfg.Report, cfg.Dir, os.Args); err != nil {
			return err
		}
		if err := rep.Write(); err != nil {
			return err
		}
	}
	steps, err := benchAllSteps(a, log, cfg)
	if err != nil {
		return err
	}
	var failed []string
	passed := true
	for _, name := range cfg.Runs() {
		start := time.Now()
		log.Info("benchmark started", "bench", name)
		fmt.Fprintf(a.stdout, "\n# tricopy bench %s\n\n", name)
		ok, add, err := steps[name](ctx)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("bench %s: %w", name, err)
			}
			log.Error("benchmark failed", "bench", name, "err", err)
			failed = append(failed, name)
			if rep != nil {
				if rerr := rep.AddFailure(name, err); rerr != nil {
					return rerr
				}
			}
			continue
		}
		passed = passed && ok
		log.Info("benchmark done", "bench", name, "took", time.Since(start).Round(time.Second).String(), "targets_met", ok)
		if rep != nil {
			if err := add(rep); err != nil {
				return err
			}
		}
	}
	if rep != nil {
		fmt.Fprintf(a.stdout, "\nReport: %s\n", rep.Readme())
	}
	switch {
	case len(failed) > 0:
		return fmt.Errorf("%w: %v", errBenchFailed, failed)
	case cfg.Strict && !passed:
		return errTargetsMissed
	}
	return nil
}

// benchAllSteps returns the benchmarks of `bench all` by name, each
// configured with its defaults, or with the quick settings, in a
// directory of its name under cfg.Dir.
func benchAllSteps(a *app, log *slog.Logger, cfg *configs.BenchAll) (map[string]benchStep, error) {
	fs := configs.DefaultBenchFS()
	submit := configs.DefaultBenchSubmit()
	mirror := configs.DefaultBenchMirror()
	lag := configs.DefaultBenchLag()
	failover := configs.DefaultBenchFailover()
	fs.Dir = filepath.Join(cfg.Dir, "fs")
	submit.Dir = filepath.Join(cfg.Dir, "submit")
	mirror.Dir = filepath.Join(cfg.Dir, "mirror")
	lag.Dir = filepath.Join(cfg.Dir, "lag")
	failover.Dir = filepath.Join(cfg.Dir, "failover")
	if cfg.Quick {
		fs.SeqSize, fs.RandSize, fs.Runtime, fs.Files = 64*configs.MiB, 32*configs.MiB, 2*time.Second, 1000
		submit.Duration, submit.Nodes = configs.MinBenchSubmitDuration, []string{"1"}
		mirror.Runtime, mirror.SeqSize, mirror.Nodes = configs.MinBenchMirrorRuntime, 64*configs.MiB, []string{"1"}
		lag.Duration, lag.Backlog = 3*time.Second, 128*configs.MiB
		failover.Size, failover.Backlog = 256*configs.MiB, 32*configs.MiB
	}
	for _, c := range []configs.Config{&fs, &submit, &mirror, &lag, &failover} {
		if err := c.Validate(); err != nil {
			return nil, fmt.Errorf("bench all: %w", err)
		}
	}
	return map[string]benchStep{
		"fs": func(ctx context.Context) (bool, func(*benchreport.Report) error, error) {
			res, err := benchFS(ctx, a, log.With("bench", "fs"), &fs)
			if err != nil {
				return false, nil, err
			}
			return res.Passed(), func(r *benchreport.Report) error { return r.AddFS(res) }, nil
		},
		"submit": func(ctx context.Context) (bool, func(*benchreport.Report) error, error) {
			res, err := benchSubmit(ctx, a, log.With("bench", "submit"), &submit)
			if err != nil {
				return false, nil, err
			}
			return res.Passed(), func(r *benchreport.Report) error { return r.AddSubmit(res) }, nil
		},
		"mirror": func(ctx context.Context) (bool, func(*benchreport.Report) error, error) {
			res, err := benchMirror(ctx, a, log.With("bench", "mirror"), &mirror)
			if err != nil {
				return false, nil, err
			}
			return res.Passed(), func(r *benchreport.Report) error { return r.AddMirror(res) }, nil
		},
		"lag": func(ctx context.Context) (bool, func(*benchreport.Report) error, error) {
			res, err := benchLag(ctx, a, log.With("bench", "lag"), &lag)
			if err != nil {
				return false, nil, err
			}
			return res.Passed(), func(r *benchreport.Report) error { return r.AddLag(res) }, nil
		},
		"failover": func(ctx context.Context) (bool, func(*benchreport.Report) error, error) {
			res, err := benchFailover(ctx, a, log.With("bench", "failover"), &failover)
			if err != nil {
				return false, nil, err
			}
			return res.Passed, func(r *benchreport.Report) error { return r.AddFailover(res) }, nil
		},
	}, nil
}
