package blockdev

import (
	"context"
	"fmt"
	"maps"
	"sync"
)

// MemVolume is a strict in-memory Volume for tests: the durability oracle.
// It keeps the durable content apart from the batches applied since the last
// Sync; Crash forgets those, CrashKeep keeps a prefix of them. Unlike a
// FileVolume it never fails on its own.
//
// Apply takes ownership of the batch's Data slices like every Volume; the
// MemVolume keeps them rather than copying them. MemVolume is safe for
// concurrent use.
type MemVolume struct {
	mu       sync.RWMutex
	blocks   uint64
	durable  map[uint64][]byte // content as of the last Sync
	current  map[uint64][]byte // content readers see
	unsynced []*Batch          // batches applied since the last Sync, in order
	closed   bool
}

var _ Volume = (*MemVolume)(nil)

// NewMem returns a MemVolume of blocks zero blocks.
func NewMem(blocks uint64) *MemVolume {
	return &MemVolume{blocks: blocks, durable: map[uint64][]byte{}, current: map[uint64][]byte{}}
}

// BlockCount implements Reader.
func (m *MemVolume) BlockCount() uint64 { return m.blocks }

// ReadBlock implements Reader.
func (m *MemVolume) ReadBlock(index uint64, p []byte) error {
	if len(p) != BlockSize {
		return fmt.Errorf("read block %d of memory volume: buffer of %d bytes: %w", index, len(p), ErrBadBlock)
	}
	if index >= m.blocks {
		return fmt.Errorf("read block %d of memory volume with %d blocks: %w", index, m.blocks, ErrOutOfRange)
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return fmt.Errorf("read block %d of memory volume: %w", index, ErrClosed)
	}
	if d, ok := m.current[index]; ok {
		copy(p, d)
	} else {
		clear(p)
	}
	return nil
}

// Apply implements Volume.
func (m *MemVolume) Apply(ctx context.Context, b *Batch, opts ApplyOptions) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("apply to memory volume: %w", err)
	}
	if err := b.Validate(m.blocks); err != nil {
		return fmt.Errorf("apply to memory volume: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("apply to memory volume: %w", ErrClosed)
	}
	if len(b.Writes) > 0 {
		kept := &Batch{Writes: append([]Write(nil), b.Writes...)}
		for _, w := range kept.Writes {
			m.current[w.Index] = w.Data
		}
		m.unsynced = append(m.unsynced, kept)
	}
	if opts.Sync {
		m.syncLocked(len(m.unsynced))
	}
	return nil
}

// Sync implements Volume.
func (m *MemVolume) Sync(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sync memory volume: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("sync memory volume: %w", ErrClosed)
	}
	m.syncLocked(len(m.unsynced))
	return nil
}

// syncLocked makes the first n unsynced batches durable.
func (m *MemVolume) syncLocked(n int) {
	for _, b := range m.unsynced[:n] {
		for _, w := range b.Writes {
			m.durable[w.Index] = w.Data
		}
	}
	m.unsynced = append([]*Batch(nil), m.unsynced[n:]...)
}

// Close implements Volume. The content survives: Reopen gives it back.
func (m *MemVolume) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("close memory volume: %w", ErrClosed)
	}
	m.closed = true
	return nil
}

// Unsynced returns the number of non-empty batches applied since the last
// Sync.
func (m *MemVolume) Unsynced() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return len(m.unsynced)
}

// Crash simulates a crash and restart: the volume forgets every batch
// applied since the last Sync and is open again, even if it was closed.
func (m *MemVolume) Crash() { m.CrashKeep(0) }

// CrashKeep is Crash, except that the first n batches applied since the
// last Sync survive (all of them if n exceeds Unsynced): it models a crash
// after which a prefix of the unsynced batches reached the disk.
func (m *MemVolume) CrashKeep(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.syncLocked(max(0, min(n, len(m.unsynced))))
	m.unsynced = nil
	m.current = maps.Clone(m.durable)
	m.closed = false
}

// Clone returns an independent copy of the volume, unsynced batches
// included, open even if m is closed.
func (m *MemVolume) Clone() *MemVolume {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return &MemVolume{
		blocks:   m.blocks,
		durable:  maps.Clone(m.durable),
		current:  maps.Clone(m.current),
		unsynced: append([]*Batch(nil), m.unsynced...),
	}
}
