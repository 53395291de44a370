package fsbench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/fusefs"
)

// Names of the targets, in the order Run measures and reports them.
const (
	// TargetTricopy is a local-only tricopy mount.
	TargetTricopy = "tricopy"
	// TargetLoopback is go-fuse's loopback filesystem, the yardstick.
	TargetLoopback = "loopback"
	// TargetBare is the bare directory.
	TargetBare = "bare"
)

// target is a directory to run the workloads in.
type target struct {
	name string
	dir  string
	// attrTimeout is how long the kernel caches attributes and entries of
	// the target; the small-file workload waits that long before its stat
	// phase so that every stat reaches the filesystem.
	attrTimeout time.Duration
	// close unmounts the target and releases what it holds; nil for none.
	close func() error
}

// unmountTimeout bounds the retries of an unmount while the mount is busy.
const unmountTimeout = 10 * time.Second

// setUp creates and mounts the three targets in b.runDir.
func (b *bench) setUp(ctx context.Context) error {
	ours, err := b.mountTricopy(ctx)
	if err != nil {
		return err
	}
	b.targets = append(b.targets, ours)
	loop, err := b.mountLoopback()
	if err != nil {
		return err
	}
	b.targets = append(b.targets, loop)
	bare := filepath.Join(b.runDir, "bare")
	if err := os.Mkdir(bare, 0o755); err != nil {
		return fmt.Errorf("create bare dir: %w", err)
	}
	b.targets = append(b.targets, &target{name: TargetBare, dir: bare})
	return nil
}

// tearDown unmounts and closes the targets in reverse order, and removes
// the working directory if every unmount succeeded (removing it under a
// live mount would descend into the mount).
func (b *bench) tearDown() error {
	var errs []error
	for i := len(b.targets) - 1; i >= 0; i-- {
		t := b.targets[i]
		if t.close == nil {
			continue
		}
		if err := t.close(); err != nil {
			errs = append(errs, fmt.Errorf("tear down %s: %w", t.name, err))
		}
	}
	b.targets = nil
	if len(errs) > 0 {
		b.log.Warn("left the benchmark dir in place", "dir", b.runDir)
		return errors.Join(errs...)
	}
	if err := os.RemoveAll(b.runDir); err != nil {
		return fmt.Errorf("remove benchmark dir: %w", err)
	}
	return nil
}

// volumeBlocks returns the size in blocks of the tricopy volume: room for
// the largest fio file twice over, the small files, and the metadata.
func (o Options) volumeBlocks() uint64 {
	bytes := 2*max(o.SeqSize, o.RandSize) + int64(o.Files)*2*blockdev.BlockSize + 128<<20
	return uint64(bytes) / blockdev.BlockSize
}

// volumeInodes returns the inode count to format the volume with: the
// default unless the small files need more.
func (o Options) volumeInodes(blocks uint64) uint64 {
	need := uint64(o.Files) + 1024
	if blocks*blockdev.BlockSize/fusefs.DefaultBytesPerInode >= need {
		return 0
	}
	return need
}

// mountTricopy creates, formats and mounts a file volume the way
// `tricopy mount` does for a local-only mount.
func (b *bench) mountTricopy(ctx context.Context) (_ *target, err error) {
	volDir := filepath.Join(b.runDir, "tricopy-volume")
	mnt := filepath.Join(b.runDir, "tricopy-mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return nil, fmt.Errorf("create tricopy mountpoint: %w", err)
	}
	blocks := b.opts.volumeBlocks()
	vol, err := blockdev.Create(volDir, blocks, blockdev.Options{Logger: b.log})
	if err != nil {
		return nil, fmt.Errorf("create tricopy volume: %w", err)
	}
	defer func() {
		if err != nil {
			if cerr := vol.Close(); cerr != nil {
				b.log.Warn("close tricopy volume", "err", cerr)
			}
		}
	}()
	if err := fusefs.Format(ctx, vol, fusefs.FormatOptions{Inodes: b.opts.volumeInodes(blocks)}); err != nil {
		return nil, fmt.Errorf("format tricopy volume: %w", err)
	}
	if err := vol.Sync(ctx); err != nil {
		return nil, fmt.Errorf("sync tricopy volume: %w", err)
	}
	srv, err := fusefs.Mount(ctx, fusefs.LocalDevice(vol), fusefs.MountOptions{
		Mountpoint: mnt,
		Name:       "fsbench",
		Logger:     b.log,
	})
	if err != nil {
		return nil, fmt.Errorf("mount tricopy volume: %w", err)
	}
	closeFn := func() error {
		if err := srv.Unmount(); err != nil {
			// The mount is still there: keep the volume open under it.
			return err
		}
		rep, cerr := fusefs.Check(context.Background(), vol)
		if cerr != nil {
			cerr = fmt.Errorf("fsck tricopy volume after the benchmark: %w", cerr)
		} else if !rep.Clean {
			cerr = fmt.Errorf("fsck tricopy volume after the benchmark: %d problems, first: %s", len(rep.Problems), rep.Problems[0])
		}
		return errors.Join(cerr, vol.Close())
	}
	return &target{name: TargetTricopy, dir: mnt, attrTimeout: attrTimeout(), close: closeFn}, nil
}

// loopbackArgs returns the go-fuse options of the loopback yardstick:
// tricopy's, with passthrough disabled. With passthrough (negotiated on
// recent kernels when running as root) the kernel would do the loopback's
// file I/O itself, and the benchmark would measure the kernel rather than
// a FUSE server.
func loopbackArgs() *gofs.Options {
	o := fusefs.MountArgs("loopback", false, false, false)
	o.MountOptions.FsName = "fsbench:loopback"
	o.MountOptions.DisabledCapabilities |= fuse.CAP_PASSTHROUGH
	return o
}

// attrTimeout returns the attribute cache timeout both FUSE targets mount
// with.
func attrTimeout() time.Duration {
	if t := fusefs.MountArgs("", false, false, false).AttrTimeout; t != nil {
		return *t
	}
	return 0
}

// mountLoopback mounts go-fuse's loopback filesystem over a fresh
// directory.
func (b *bench) mountLoopback() (*target, error) {
	backing := filepath.Join(b.runDir, "loopback-backing")
	mnt := filepath.Join(b.runDir, "loopback-mnt")
	for _, d := range []string{backing, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, fmt.Errorf("create loopback dir: %w", err)
		}
	}
	root, err := gofs.NewLoopbackRoot(backing)
	if err != nil {
		return nil, fmt.Errorf("loopback root: %w", err)
	}
	srv, err := gofs.Mount(mnt, root, loopbackArgs())
	if err != nil {
		return nil, fmt.Errorf("mount loopback: %w", err)
	}
	closeFn := func() error {
		deadline := time.Now().Add(unmountTimeout)
		for {
			err := srv.Unmount()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("unmount loopback %q: %w", mnt, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
		srv.Wait()
		return nil
	}
	return &target{name: TargetLoopback, dir: mnt, attrTimeout: attrTimeout(), close: closeFn}, nil
}
