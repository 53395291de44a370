package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/fusefs"
)

// volumeOptions are the blockdev options every command opens volumes with.
func volumeOptions(log *slog.Logger) blockdev.Options {
	return blockdev.Options{Logger: log}
}

// sizeBlocks returns the number of whole blocks of a volume of size bytes.
func sizeBlocks(size configs.Size) uint64 { return size.Bytes() / blockdev.BlockSize }

// createFormatted creates a volume of size (rounded down to whole blocks)
// in dir, formats the filesystem on it with inodes inodes (0: the default),
// makes it durable and returns it open. If anything fails, it closes the
// volume and removes the files it created, so that dir is as it was and a
// later create can be retried.
func createFormatted(ctx context.Context, log *slog.Logger, dir string, size configs.Size, inodes uint64) (_ *blockdev.FileVolume, err error) {
	before, dirExisted, err := listDir(dir)
	if err != nil {
		return nil, err
	}
	vol, err := blockdev.Create(dir, sizeBlocks(size), volumeOptions(log))
	if err != nil {
		return nil, err
	}
	defer func() {
		if err == nil {
			return
		}
		if cerr := vol.Close(); cerr != nil {
			log.Warn("close volume after failed format", "dir", dir, "err", cerr)
		}
		if rerr := removeNew(dir, before, dirExisted); rerr != nil {
			log.Warn("remove partly created volume", "dir", dir, "err", rerr)
		}
	}()
	if err := fusefs.Format(ctx, vol, fusefs.FormatOptions{Inodes: inodes}); err != nil {
		return nil, fmt.Errorf("format filesystem on volume in %s: %w", dir, err)
	}
	if err := vol.Sync(ctx); err != nil {
		return nil, fmt.Errorf("sync volume in %s: %w", dir, err)
	}
	return vol, nil
}

// listDir returns the names in dir, and whether dir exists.
func listDir(dir string) (map[string]bool, bool, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("list %s: %w", dir, err)
	}
	names := map[string]bool{}
	for _, e := range entries {
		names[e.Name()] = true
	}
	return names, true, nil
}

// removeNew removes the entries of dir that are not in before, and dir
// itself if it did not exist before.
func removeNew(dir string, before map[string]bool, dirExisted bool) error {
	if !dirExisted {
		return os.RemoveAll(dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		if !before[e.Name()] {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// closeVolume makes vol durable and closes it. It runs on shutdown paths,
// so it does not take the (possibly cancelled) context of the command.
func closeVolume(log *slog.Logger, vol *blockdev.FileVolume) error {
	serr := vol.Sync(context.Background())
	if serr != nil {
		serr = fmt.Errorf("sync volume in %s: %w", vol.Dir(), serr)
	}
	cerr := vol.Close()
	if err := errors.Join(serr, cerr); err != nil {
		return err
	}
	log.Debug("closed volume", "dir", vol.Dir())
	return nil
}

// openError describes an error of blockdev.Open for a person.
func openError(dir string, err error) error {
	if errors.Is(err, blockdev.ErrInUse) {
		return fmt.Errorf("volume in %s is in use by another process (mounted?): %w", dir, err)
	}
	return err
}
