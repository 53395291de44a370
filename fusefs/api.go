package fusefs

import (
	"context"
	"errors"
	"log/slog"

	"github.com/tricopy/tricopy/blockdev"
)

// Device is where the filesystem reads its blocks and sends its batches.
//
// The filesystem calls Commit with its commit lock held, once per
// operation, in the order its in-memory state changed; Commit must apply the
// batch after every batch committed before it and return quickly. The
// returned Ack is called without the lock; the operation reports success to
// the kernel only when Ack returns nil. A nil Ack means the batch is already
// as durable as the device promises.
//
// Commit takes ownership of the batch's data slices. A Commit error stops
// the filesystem (fail-stop: every later change returns EIO, reads go on),
// because memory and device may then disagree, unless it wraps
// ErrDeviceUnavailable or ErrDeviceReadOnly, which say the device refused
// the batch whole. An Ack error fails only that operation with EIO, the batch
// staying applied. The contexts given to
// Commit, Ack and Sync are never cancelled by an interrupted system call: a
// device that may wait (the synchronous mirror) bounds its waits itself.
type Device interface {
	blockdev.Reader
	// Commit applies b after every batch committed before it.
	Commit(ctx context.Context, b *blockdev.Batch) (Ack, error)
	// Sync makes every committed batch durable (fsync).
	Sync(ctx context.Context) error
}

// Refusals a Device's Commit may return (wrapped) to say it applied nothing
// of the batch, so the filesystem need not stop.
var (
	// ErrDeviceUnavailable: the device cannot take batches for now (a
	// mirror that cannot reach its intermediate). The operation fails with
	// EIO; later operations are tried again.
	ErrDeviceUnavailable = errors.New("device unavailable")
	// ErrDeviceReadOnly: the device takes no more batches (a primary whose
	// volume was promoted elsewhere). The filesystem becomes read-only:
	// this and every later change fails with EROFS; reads go on.
	ErrDeviceReadOnly = errors.New("device read-only")
)

// Ack waits until a committed batch is acknowledged by the device.
type Ack func(ctx context.Context) error

// LocalDevice returns a Device that applies batches to v directly; a batch
// is durable after Sync.
func LocalDevice(v blockdev.Volume) Device { return localDevice{v} }

type localDevice struct{ blockdev.Volume }

// ReadBlocks reads consecutive blocks with one call when the volume can.
func (d localDevice) ReadBlocks(first uint64, p []byte) error {
	return readBlocks(d.Volume, first, p)
}

func (d localDevice) Commit(ctx context.Context, b *blockdev.Batch) (Ack, error) {
	return nil, d.Apply(ctx, b, blockdev.ApplyOptions{})
}

// FormatOptions tune Format.
type FormatOptions struct {
	// Inodes is the number of inodes; 0 picks one per DefaultBytesPerInode.
	Inodes uint64
}

// Report is the result of Check. Its JSON form is printed by `tricopy fsck --json`.
type Report struct {
	// Clean is true when no problem was found.
	Clean bool `json:"clean"`
	// Problems lists every violated invariant, one sentence each.
	Problems []string `json:"problems"`
	// Blocks and FreeBlocks count volume blocks.
	Blocks     uint64 `json:"blocks"`
	FreeBlocks uint64 `json:"free_blocks"`
	// Inodes and FreeInodes count inode slots.
	Inodes     uint64 `json:"inodes"`
	FreeInodes uint64 `json:"free_inodes"`
	// Files, Directories, Symlinks and Others count reachable inodes by type.
	Files       uint64 `json:"files"`
	Directories uint64 `json:"directories"`
	Symlinks    uint64 `json:"symlinks"`
	Others      uint64 `json:"others"`
}

// MountOptions configure Mount.
type MountOptions struct {
	// Mountpoint is the directory to mount on.
	Mountpoint string
	// Name names the volume in the mount table (fsname "tricopy:NAME").
	Name string
	// ReadOnly mounts the filesystem read-only.
	ReadOnly bool
	// AllowOther lets users other than the mounting one use the mount.
	AllowOther bool
	// Debug logs every FUSE request.
	Debug bool
	// Logger receives the filesystem's logs; nil means slog.Default().
	Logger *slog.Logger
}
