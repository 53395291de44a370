package fusefs

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"sync"
	"syscall"

	"github.com/tricopy/tricopy/blockdev"
)

// blockCache holds verified metadata blocks (inode table, bitmap, map and
// directory blocks), keyed by block number. Cached slices are never modified:
// a transaction copies a block before changing it. Safe for concurrent use.
type blockCache struct {
	mu    sync.Mutex
	max   int
	items map[uint32]*list.Element
	lru   list.List // of *cacheItem, most recent at front
}

type cacheItem struct {
	blk uint32
	p   []byte
}

func newBlockCache(maxBlocks int) *blockCache {
	return &blockCache{max: maxBlocks, items: make(map[uint32]*list.Element)}
}

func (c *blockCache) get(blk uint32) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[blk]; ok {
		c.lru.MoveToFront(e)
		return e.Value.(*cacheItem).p
	}
	return nil
}

func (c *blockCache) put(blk uint32, p []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[blk]; ok {
		e.Value.(*cacheItem).p = p
		c.lru.MoveToFront(e)
		return
	}
	c.items[blk] = c.lru.PushFront(&cacheItem{blk, p})
	for c.lru.Len() > c.max {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.items, old.Value.(*cacheItem).blk)
	}
}

func (c *blockCache) drop(blk uint32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[blk]; ok {
		c.lru.Remove(e)
		delete(c.items, blk)
	}
}

// bitset is an in-memory allocation bitmap: bit set means in use.
type bitset struct {
	words []uint64
	n     uint64
	used  uint64
}

func newBitset(n uint64) *bitset { return &bitset{words: make([]uint64, ceilDiv(n, 64)), n: n} }

func (b *bitset) get(i uint64) bool { return b.words[i/64]&(1<<(i%64)) != 0 }

func (b *bitset) set(i uint64, v bool) {
	if b.get(i) == v {
		return
	}
	b.words[i/64] ^= 1 << (i % 64)
	if v {
		b.used++
	} else {
		b.used--
	}
}

// findFree returns the first clear bit at or after from (wrapping around)
// for which skip (if not nil) returns false.
func (b *bitset) findFree(from uint64, skip func(uint64) bool) (uint64, bool) {
	if from >= b.n {
		from = 0
	}
	nw := uint64(len(b.words))
	start := from / 64
	for k := uint64(0); k <= nw; k++ {
		wi := (start + k) % nw
		w := b.words[wi]
		if k == 0 {
			w |= (1 << (from % 64)) - 1 // bits before from count as used on the first pass
		}
		for w != ^uint64(0) {
			bit := uint64(bits.TrailingZeros64(^w))
			i := wi*64 + bit
			if i >= b.n {
				break
			}
			if skip == nil || !skip(i) {
				return i, true
			}
			w |= 1 << bit
		}
	}
	// The first word's low bits were masked on the first pass; scan them.
	for i := start * 64; i < from && i < b.n; i++ {
		if !b.get(i) && (skip == nil || !skip(i)) {
			return i, true
		}
	}
	return 0, false
}

// tx is one filesystem operation in progress. It reads through to the
// committed state and records every change privately; nothing is visible to
// other operations until commit, and an aborted tx leaves no trace. Only one
// tx runs at a time (the caller holds fs.mu for writing).
type tx struct {
	fs     *filesystem
	writes map[uint32][]byte // block → new content
	meta   map[uint32]bool   // blocks among writes that are metadata (cached after commit)
	inodes map[uint32]*inode // modified inodes
	balloc map[uint32]bool   // block → true allocated, false freed
	ialloc map[uint32]bool   // inode → true allocated, false freed
	maps   map[uint32]uint32 // modified map blocks → owner inode, sealed at commit
	dirs   map[uint32]*dirTx // pending directory index changes
	after  []func()          // in-memory index updates run after a successful commit
	now    int64
	// Allocation cursors of this tx: searches continue where the last one
	// ended instead of rescanning the tx's own allocations.
	nextBlock, nextIno uint64
}

func (fs *filesystem) begin() *tx {
	return &tx{
		fs:        fs,
		writes:    make(map[uint32][]byte),
		meta:      make(map[uint32]bool),
		inodes:    make(map[uint32]*inode),
		balloc:    make(map[uint32]bool),
		ialloc:    make(map[uint32]bool),
		now:       fs.clock(),
		nextBlock: fs.nextBlock,
		nextIno:   fs.nextIno,
	}
}

// readMeta returns the current content of metadata block blk, verifying it
// with check when it comes from the device. The result must not be modified.
func (t *tx) readMeta(blk uint32, check func([]byte) error) ([]byte, error) {
	if p, ok := t.writes[blk]; ok {
		return p, nil
	}
	return t.fs.readMeta(blk, check)
}

// readMeta reads a metadata block through the cache.
func (fs *filesystem) readMeta(blk uint32, check func([]byte) error) ([]byte, error) {
	if p := fs.cache.get(blk); p != nil {
		return p, nil
	}
	p := make([]byte, bs)
	if err := fs.dev.ReadBlock(uint64(blk), p); err != nil {
		return nil, fmt.Errorf("read block %d: %w", blk, err)
	}
	if check != nil {
		if err := check(p); err != nil {
			return nil, err
		}
	}
	fs.cache.put(blk, p)
	return p, nil
}

// modifyMeta returns a private, writable copy of metadata block blk.
func (t *tx) modifyMeta(blk uint32, check func([]byte) error) ([]byte, error) {
	if p, ok := t.writes[blk]; ok {
		return p, nil
	}
	old, err := t.fs.readMeta(blk, check)
	if err != nil {
		return nil, err
	}
	p := slices.Clone(old)
	t.writes[blk] = p
	t.meta[blk] = true
	return p, nil
}

// putMeta sets the full content of metadata block blk.
func (t *tx) putMeta(blk uint32, p []byte) {
	t.writes[blk] = p
	t.meta[blk] = true
}

// putData sets the full content of data block blk.
func (t *tx) putData(blk uint32, p []byte) {
	t.writes[blk] = p
	delete(t.meta, blk)
}

// readData reads data block blk into p and verifies it against sum.
func (t *tx) readData(blk, sum uint32, p []byte) error {
	if w, ok := t.writes[blk]; ok {
		copy(p, w)
		return nil
	}
	return t.fs.readData(blk, sum, p)
}

// zeroSum is the CRC of a block of zeros. A map entry with this CRC reads
// as zeros without reading the block: fallocate allocates blocks that way
// without writing them (ext4 calls them unwritten extents).
var zeroSum = crc(make([]byte, bs))

func (fs *filesystem) readData(blk, sum uint32, p []byte) error {
	if sum == zeroSum {
		clear(p)
		return nil
	}
	if err := fs.dev.ReadBlock(uint64(blk), p); err != nil {
		return fmt.Errorf("read block %d: %w", blk, err)
	}
	if got := crc(p); got != sum {
		return corruptf("data block %d: checksum %08x, want %08x", blk, got, sum)
	}
	return nil
}

// inode returns the tx's private, modifiable copy of inode ino.
func (t *tx) inode(ino uint32) (*inode, error) {
	if in, ok := t.inodes[ino]; ok {
		return in, nil
	}
	in, err := t.fs.loadInode(ino)
	if err != nil {
		return nil, err
	}
	t.inodes[ino] = &in
	return &in, nil
}

// peek returns inode ino as the tx sees it, for reading only: unlike
// inode, it does not make the tx rewrite the inode.
func (t *tx) peek(ino uint32) (inode, error) {
	if in, ok := t.inodes[ino]; ok {
		return *in, nil
	}
	return t.fs.loadInode(ino)
}

// allocBlock allocates a data-region block, preferring one at or after goal.
// The block's bit is set in the in-memory bitmap at once, so later searches
// of this tx skip it without a lookup; abort clears it again.
func (t *tx) allocBlock(goal uint32) (uint32, error) {
	fs := t.fs
	if uint64(goal) < fs.sb.dataStart || uint64(goal) >= fs.sb.blocks {
		goal = uint32(t.nextBlock)
	}
	i, ok := fs.bmap.findFree(uint64(goal), nil)
	if !ok {
		return 0, errNoSpace
	}
	fs.bmap.set(i, true)
	t.balloc[uint32(i)] = true
	t.nextBlock = i + 1
	return uint32(i), nil
}

// freeBlock releases block blk. A block freed by the tx keeps its bit set
// in memory until commit, so the tx does not reuse it.
func (t *tx) freeBlock(blk uint32) {
	if t.balloc[blk] {
		delete(t.balloc, blk) // allocated and freed in this tx
		t.fs.bmap.set(uint64(blk), false)
	} else {
		t.balloc[blk] = false
	}
	delete(t.writes, blk)
	delete(t.meta, blk)
}

// allocInode allocates an inode number, setting its bit at once like
// allocBlock. It skips free inodes still held open: only on a promoted
// replica, where a handle opened before the promotion may name an inode
// the primary freed, which must not come back as another file under it.
func (t *tx) allocInode() (uint32, error) {
	fs := t.fs
	i, ok := fs.imap.findFree(t.nextIno, func(i uint64) bool { return fs.opens[uint32(i)] > 0 })
	if !ok {
		return 0, errNoInodes
	}
	fs.imap.set(i, true)
	t.ialloc[uint32(i)] = true
	t.nextIno = i + 1
	return uint32(i), nil
}

func (t *tx) freeInode(ino uint32) {
	if t.ialloc[ino] {
		delete(t.ialloc, ino)
		t.fs.imap.set(uint64(ino), false)
		return
	}
	t.ialloc[ino] = false
}

// abort undoes what the tx did to shared state: the bits of the blocks and
// inodes it allocated. Everything else it changed was private.
func (t *tx) abort() {
	for blk, used := range t.balloc {
		if used {
			t.fs.bmap.set(uint64(blk), false)
		}
	}
	for ino, used := range t.ialloc {
		if used {
			t.fs.imap.set(uint64(ino), false)
		}
	}
}

// commit turns the tx into one batch, sends it to the device and installs
// the new state in memory. It returns the device's Ack.
func (t *tx) commit(ctx context.Context) (Ack, error) {
	fs := t.fs
	if fs.failed != nil {
		return nil, fs.failed
	}
	// Inodes: encode into (copies of) their table blocks.
	for ino, in := range t.inodes {
		blk, off := fs.inodeLoc(ino)
		p, err := t.modifyMeta(blk, nil) // inodes are verified one by one when decoded
		if err != nil {
			return nil, err
		}
		in.encode(p[off:], ino)
	}
	// Bitmaps: flip bits in copies of the bitmap blocks.
	for blk, used := range t.balloc {
		if err := t.setBitmapBit(uint32(fs.sb.bbmStart), uint64(blk), used); err != nil {
			return nil, err
		}
	}
	for ino, used := range t.ialloc {
		if err := t.setBitmapBit(uint32(fs.sb.ibmStart), uint64(ino), used); err != nil {
			return nil, err
		}
	}
	if len(t.writes) == 0 {
		return nil, nil
	}
	for blk, ino := range t.maps {
		if p, ok := t.writes[blk]; ok {
			sealMap(p, ino, blk)
		}
	}
	b := &blockdev.Batch{Writes: make([]blockdev.Write, 0, len(t.writes))}
	for blk, p := range t.writes {
		if t.meta[blk] && uint64(blk) >= fs.sb.bbmStart && uint64(blk) < fs.sb.itabStart {
			sealBitmap(p)
		}
		b.Writes = append(b.Writes, blockdev.Write{Index: uint64(blk), Data: p})
	}
	slices.SortFunc(b.Writes, func(a, b blockdev.Write) int { return int(int64(a.Index) - int64(b.Index)) })
	ack, err := fs.dev.Commit(ctx, b)
	switch {
	case err == nil:
	case errors.Is(err, ErrDeviceUnavailable):
		return nil, err
	case errors.Is(err, ErrDeviceReadOnly):
		if !fs.deviceRO {
			fs.deviceRO = true
			fs.log.Error("the device refuses changes; filesystem is read-only from now on", "err", err)
		}
		return nil, fmt.Errorf("%w: %w", syscall.EROFS, err)
	default:
		fs.failed = fmt.Errorf("filesystem stopped after a failed commit: %w", err)
		fs.log.Error("commit failed; filesystem refuses further changes", "err", err)
		return nil, fs.failed
	}
	// Install: the batch is applied; make memory agree.
	for blk, p := range t.writes {
		if t.meta[blk] {
			fs.cache.put(blk, p)
		} else {
			fs.cache.drop(blk)
		}
	}
	for blk, used := range t.balloc {
		fs.bmap.set(uint64(blk), used)
		if !used {
			fs.cache.drop(blk)
		} else {
			fs.nextBlock = uint64(blk) + 1
		}
	}
	for ino, used := range t.ialloc {
		fs.imap.set(uint64(ino), used)
		if used {
			fs.nextIno = uint64(ino) + 1
		}
	}
	for _, f := range t.after {
		f()
	}
	return ack, nil
}

// setBitmapBit sets bit i of the bitmap starting at block start in the tx.
func (t *tx) setBitmapBit(start uint32, i uint64, v bool) error {
	blk := start + uint32(i/bitsPerBitmap)
	p, err := t.modifyMeta(blk, func(p []byte) error { return checkBitmap(p, uint64(blk)) })
	if err != nil {
		return err
	}
	bit := i % bitsPerBitmap
	if v {
		p[bit/8] |= 1 << (bit % 8)
	} else {
		p[bit/8] &^= 1 << (bit % 8)
	}
	return nil
}
