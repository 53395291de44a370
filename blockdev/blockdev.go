// Package blockdev provides fixed-size block volumes with atomic batches.
//
// A Volume is an array of BlockSize-byte blocks. Apply writes a Batch of blocks
// atomically: after a crash at any instant, a reopened volume shows each batch
// entirely or not at all, and the batches it shows are a prefix of the batches
// applied (in Apply order).
//
// Durability point: Apply makes a batch visible to readers of the volume at
// once, but durable (surviving a crash or power loss) only after a later Sync
// returns nil. A batch applied with ApplyOptions.Sync set is durable when
// Apply returns. Close does not sync. When Apply or Sync returns an error, the
// batches not yet synced, the failed one included, may or may not survive a
// crash (each whole or not at all, still as a prefix).
//
// Implementations:
//
//   - FileVolume (Create, Open) stores a volume in a directory, with atomic
//     batches by a write-ahead intent log; after an I/O error it refuses
//     every further write (fail-stop, ErrFailed). docs/ARCHITECTURE.md
//     describes its files, its recovery and its guarantees.
//   - MemVolume (NewMem) is the in-memory durability oracle for tests: it
//     forgets unsynced batches on Crash.
//   - Faulty wraps any Volume and fails chosen calls with ErrInjected.
//
// Every disk touch of FileVolume and of bitmap persistence goes through the
// FS seam: OSFS in production, MemFS (a strict in-memory file system that
// loses what was not synced on Crash) and FaultFS (fault injection) in tests.
//
// Bitmap is the dirty-region bitmap of a volume, with atomic persistence
// (SaveBitmap, LoadBitmap).
package blockdev

import (
	"context"
	"errors"
	"fmt"
)

// BlockSize is the size in bytes of every block of every volume.
const BlockSize = 4096

// Sentinel errors returned (wrapped) by volumes.
var (
	// ErrOutOfRange means a block index is not below the volume's BlockCount.
	ErrOutOfRange = errors.New("block index out of range")
	// ErrBadBlock means a write in a batch does not carry exactly BlockSize bytes.
	ErrBadBlock = errors.New("block data is not BlockSize bytes")
	// ErrCorrupt means on-disk state failed a checksum or structural check.
	ErrCorrupt = errors.New("volume corrupt")
	// ErrClosed means the volume was used after Close.
	ErrClosed = errors.New("volume closed")
	// ErrFailed means an earlier I/O error left the volume in an unknown state;
	// it refuses every further Apply and Sync until it is reopened (fail-stop).
	ErrFailed = errors.New("volume failed")
	// ErrExists means Create found a volume already in the directory.
	ErrExists = errors.New("volume already exists")
	// ErrInUse means another process or volume holds the lock of a volume
	// directory.
	ErrInUse = errors.New("volume in use")
	// ErrVersion means on-disk state has a format version this code does
	// not know.
	ErrVersion = errors.New("unsupported format version")
	// ErrInjected is the error that Faulty and FaultFS inject.
	ErrInjected = errors.New("injected fault")
	// ErrCrashed is returned by MemFS for every operation after the crash
	// point set by FailAfter, until Crash or CrashRandom is called, and by
	// files opened before a crash.
	ErrCrashed = errors.New("simulated crash")
)

// Write is one block write of a batch.
type Write struct {
	// Index is the block index, below the volume's BlockCount.
	Index uint64
	// Data holds exactly BlockSize bytes.
	Data []byte
}

// Batch is an ordered list of block writes applied atomically. When two writes
// name the same block, the later one wins.
type Batch struct {
	Writes []Write
}

// Bytes returns the payload size of the batch in bytes.
func (b *Batch) Bytes() int { return len(b.Writes) * BlockSize }

// Validate checks every write against a volume of n blocks.
func (b *Batch) Validate(n uint64) error {
	for i, w := range b.Writes {
		if w.Index >= n {
			return fmt.Errorf("write %d: block %d of %d: %w", i, w.Index, n, ErrOutOfRange)
		}
		if len(w.Data) != BlockSize {
			return fmt.Errorf("write %d: block %d has %d bytes: %w", i, w.Index, len(w.Data), ErrBadBlock)
		}
	}
	return nil
}

// ApplyOptions modify one Apply call.
type ApplyOptions struct {
	// Sync makes the batch (and every batch before it) durable before Apply returns.
	Sync bool
}

// Reader reads blocks. ReadBlock may be called concurrently with itself and
// with Apply; a read sees each batch entirely or not at all.
type Reader interface {
	// BlockCount returns the number of blocks of the volume.
	BlockCount() uint64
	// ReadBlock reads block index into p, which must be exactly BlockSize
	// bytes long (else ErrBadBlock). A block never written reads as zeros.
	ReadBlock(index uint64, p []byte) error
}

// Volume is a fixed-size array of blocks written in atomic batches.
//
// Apply takes ownership of the Data slices of the batch: the caller must not
// modify them after the call. Apply and Sync calls are serialised by the
// volume; ReadBlock may run concurrently with them.
type Volume interface {
	Reader
	// Apply writes b atomically, after every batch applied before it.
	Apply(ctx context.Context, b *Batch, opts ApplyOptions) error
	// Sync makes every batch applied so far durable.
	Sync(ctx context.Context) error
	// Close releases the volume. It does not sync.
	Close() error
}
