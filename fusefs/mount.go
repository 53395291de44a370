package fusefs

import (
	"context"
	"fmt"
	"sync"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// Server is a mounted filesystem.
type Server struct {
	srv  *fuse.Server
	fs   *filesystem
	opts MountOptions
	once sync.Once
	err  error
}

// MountArgs returns the go-fuse options tricopy mounts with. The benchmark
// yardstick uses the same ones so the comparison is fair.
//
// Permissions are checked by the kernel (default_permissions), as for a
// kernel filesystem: access bits (with the caller's supplementary groups,
// which FUSE does not send), ownership rules of chmod, chown and utimes,
// sticky directories, the setgid bit a caller may not set, and clearing
// setuid and setgid on write, truncate and chown (go-fuse does not negotiate
// FUSE_HANDLE_KILLPRIV, so the kernel sends the SETATTR that clears them).
// The filesystem gives a new inode the caller's uid and gid, or the group of
// a setgid directory (initOwner), and refuses what the kernel leaves to the
// filesystem: xattr namespaces it has no handler for (checkXattrName) and
// trusted.* names listed to a non-root caller.
//
// Every mount, primary or replica, is nosuid and nodev. That is go-fuse's
// default for a direct mount, stated here so that the fusermount fallback
// and a later go-fuse do the same. A replica shows what another machine
// wrote, and a promoted replica keeps its mount as the primary, so no mount
// of a volume honours setuid bits or device nodes found on it. Both are
// still stored (mknod of a device and chmod u+s work, and the posix tests
// pass with these flags); the device just cannot be opened, nor the bit
// raise privileges (TestNosuidNodev).
func MountArgs(name string, readOnly, allowOther, debug bool) *gofs.Options {
	timeout := attrTimeout
	o := &gofs.Options{
		EntryTimeout:    &timeout,
		AttrTimeout:     &timeout,
		NegativeTimeout: &timeout,
		MountOptions: fuse.MountOptions{
			FsName:        "tricopy:" + name,
			Name:          "tricopy",
			DirectMount:   true,
			AllowOther:    allowOther,
			Debug:         debug,
			MaxWrite:      1 << 20,
			MaxReadAhead:  1 << 20,
			Options:       []string{"default_permissions", "nosuid", "nodev"},
			DisableXAttrs: false,
		},
	}
	if readOnly {
		o.MountOptions.Options = append(o.MountOptions.Options, "ro")
	}
	return o
}

// backgroundCheckpointer is a volume that can checkpoint its intent log
// off the request path (blockdev.FileVolume).
type backgroundCheckpointer interface {
	SetBackgroundCheckpoint(on bool)
}

// Mount loads the filesystem on dev and mounts it at opts.Mountpoint. It
// returns once the kernel serves the mount.
//
// On a writable mount of a LocalDevice whose volume can checkpoint in the
// background (blockdev.FileVolume), Mount turns that on: a write then
// returns once its batch is visible, while the volume's goroutines write
// the intent log and checkpoint it (fsync still waits for durability); the
// volume's Close stops them.
func Mount(ctx context.Context, dev Device, opts MountOptions) (*Server, error) {
	f, err := openFS(ctx, dev, engineOptions{readOnly: opts.ReadOnly, log: opts.Logger})
	if err != nil {
		return nil, fmt.Errorf("open filesystem: %w", err)
	}
	if ld, ok := dev.(localDevice); ok && !opts.ReadOnly {
		if bc, ok := ld.Volume.(backgroundCheckpointer); ok {
			bc.SetBackgroundCheckpoint(true)
		}
	}
	root := &node{fs: f, ino: rootIno, gen: 1}
	o := MountArgs(opts.Name, opts.ReadOnly, opts.AllowOther, opts.Debug)
	o.RootStableAttr = &gofs.StableAttr{Ino: rootIno, Gen: 1}
	srv, err := gofs.Mount(opts.Mountpoint, root, o)
	if err != nil {
		return nil, fmt.Errorf("mount %q: %w", opts.Mountpoint, err)
	}
	f.log.Info("mounted", "mountpoint", opts.Mountpoint, "volume", opts.Name, "blocks", f.sb.blocks, "inodes", f.sb.inodes)
	return &Server{srv: srv, fs: f, opts: opts}, nil
}

// Wait blocks until the filesystem is unmounted (by Unmount or externally).
func (s *Server) Wait() { s.srv.Wait() }

// Unmount unmounts the filesystem, retrying while it is busy for up to
// 10 seconds, waits until every operation has finished, and syncs the device.
func (s *Server) Unmount() error {
	s.once.Do(func() {
		var err error
		for i := 0; i < 100; i++ {
			if err = s.srv.Unmount(); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			s.err = fmt.Errorf("unmount %q: %w", s.opts.Mountpoint, err)
			return
		}
		s.srv.Wait()
		if err := s.fs.sync(context.Background()); err != nil {
			s.err = fmt.Errorf("sync after unmount: %w", err)
		}
	})
	return s.err
}
