package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/fusefs"
)

func newFormatCmd(a *app) *cobra.Command {
	cfg := configs.DefaultFormat()
	return newCommand(a, commandSpec{
		use:   "format",
		short: "Create a volume holding an empty filesystem",
		long: `Format creates a volume in the directory --data (creating the directory if
needed) and writes an empty filesystem on it (mkfs).

The volume has --size bytes rounded down to whole 4KiB blocks; sizes take the
units B, KiB, MiB, GiB, TiB (and K, M, G, T), or KB, MB, GB, TB for powers of
1000, and must be at least 1MiB. --inodes sets the number of files and
directories the filesystem can hold (default: one per 16KiB of volume).

Format refuses a directory that already holds a volume. The new filesystem is
checked (as fsck does) before format reports success, and what was created is
printed on standard output.`,
		example: `  tricopy format --data /var/lib/tricopy/a --size 1GiB
  tricopy format --data ./vol --size 256MiB --inodes 10000
  TRICOPY_SIZE=10GB tricopy format --data /var/lib/tricopy/b`,
	}, &cfg, runFormat)
}

// runFormat is `tricopy format`.
func runFormat(ctx context.Context, a *app, log *slog.Logger, cfg *configs.Format) error {
	vol, err := createFormatted(ctx, log, cfg.Data, cfg.Size, cfg.Inodes)
	if errors.Is(err, blockdev.ErrExists) {
		return fmt.Errorf("refusing to format %s: it already holds a volume (check it with fsck or mount it)", cfg.Data)
	}
	if err != nil {
		return err
	}
	blocks, uuid := vol.BlockCount(), vol.UUID()
	report, checkErr := fusefs.Check(ctx, vol)
	if err := closeVolume(log, vol); err != nil {
		return err
	}
	if checkErr != nil {
		return fmt.Errorf("check new filesystem in %s: %w", cfg.Data, checkErr)
	}
	if !report.Clean {
		return fmt.Errorf("check new filesystem in %s: %d problems, first: %s", cfg.Data, len(report.Problems), firstProblem(report))
	}
	if rounded := configs.Size(blocks * blockdev.BlockSize); rounded != cfg.Size {
		log.Info("size rounded down to whole blocks", "size", cfg.Size.String(), "rounded", rounded.String())
	}
	fmt.Fprintf(a.stdout, "formatted volume %s in %s: %s (%d blocks of %d bytes, %d free), %d inodes\n",
		uuid, cfg.Data, configs.Size(blocks*blockdev.BlockSize), blocks, blockdev.BlockSize, report.FreeBlocks, report.Inodes)
	return nil
}

func firstProblem(r *fusefs.Report) string {
	if len(r.Problems) == 0 {
		return "(none listed)"
	}
	return r.Problems[0]
}
