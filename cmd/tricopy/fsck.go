package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/fusefs"
)

// errDamaged is returned by fsck when the check found problems.
var errDamaged = errors.New("filesystem damaged")

func newFsckCmd(a *app) *cobra.Command {
	cfg := configs.DefaultFsck()
	return newCommand(a, commandSpec{
		use:   "fsck",
		short: "Check the filesystem on a volume",
		long: `Fsck opens the volume in the directory --data (recovering its intent log, as
a mount would) and checks every invariant of the filesystem on it: reachable
inodes, link counts, no block allocated twice, free maps that agree with what
is in use.

It prints a report on standard output, or with --json the report as one JSON
object with the fields clean, problems, blocks, free_blocks, inodes,
free_inodes, files, directories, symlinks and others. It exits 0 when the
filesystem is clean, 1 when it is damaged or the volume cannot be opened (for
instance while it is mounted).`,
		example: `  tricopy fsck --data /var/lib/tricopy/a
  tricopy fsck --data /var/lib/tricopy/a --json | jq .problems`,
	}, &cfg, runFsck)
}

// runFsck is `tricopy fsck`.
func runFsck(ctx context.Context, a *app, log *slog.Logger, cfg *configs.Fsck) error {
	switch ok, err := blockdev.Exists(cfg.Data, nil); {
	case err != nil:
		return err
	case !ok:
		return fmt.Errorf("no volume in %s", cfg.Data)
	}
	vol, err := blockdev.Open(cfg.Data, volumeOptions(log))
	if err != nil {
		return openError(cfg.Data, err)
	}
	report, checkErr := fusefs.Check(ctx, vol)
	if err := vol.Close(); err != nil {
		log.Warn("close volume", "dir", cfg.Data, "err", err)
	}
	if checkErr != nil {
		return fmt.Errorf("check filesystem in %s: %w", cfg.Data, checkErr)
	}
	if cfg.JSON {
		out := *report
		if out.Problems == nil {
			out.Problems = []string{}
		}
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(&out); err != nil {
			return fmt.Errorf("write report: %w", err)
		}
	} else {
		printReport(a, cfg.Data, report)
	}
	if !report.Clean {
		return fmt.Errorf("%w: %s: %d problems", errDamaged, cfg.Data, len(report.Problems))
	}
	return nil
}

// printReport prints r for a person.
func printReport(a *app, dir string, r *fusefs.Report) {
	state := "clean"
	if !r.Clean {
		state = fmt.Sprintf("DAMAGED, %d problems", len(r.Problems))
	}
	fmt.Fprintf(a.stdout, "%s: %s\n", dir, state)
	fmt.Fprintf(a.stdout, "  blocks: %d, %d free\n", r.Blocks, r.FreeBlocks)
	fmt.Fprintf(a.stdout, "  inodes: %d, %d free\n", r.Inodes, r.FreeInodes)
	fmt.Fprintf(a.stdout, "  files: %d, directories: %d, symlinks: %d, others: %d\n", r.Files, r.Directories, r.Symlinks, r.Others)
	for _, p := range r.Problems {
		fmt.Fprintf(a.stdout, "  problem: %s\n", p)
	}
}
