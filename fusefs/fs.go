package fusefs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"syscall"
	"time"
)

// Errors of the filesystem engine that map to specific errnos.
var (
	errNoSpace  = fmt.Errorf("no free block: %w", syscall.ENOSPC)
	errNoInodes = fmt.Errorf("no free inode: %w", syscall.ENOSPC)
)

// DefaultCacheBlocks is the default size, in blocks, of the metadata cache.
const DefaultCacheBlocks = 16384 // 64 MiB

// filesystem is the engine: the on-volume filesystem with its in-memory
// indexes, independent of FUSE. Mutating operations run one at a time under
// mu held for writing, each as one tx that becomes one batch; reads take mu
// for reading.
type filesystem struct {
	mu        sync.RWMutex
	dev       Device
	sb        superblock
	cache     *blockCache
	bmap      *bitset // block allocation, mirrors the on-volume bitmap
	imap      *bitset // inode allocation
	nextBlock uint64  // allocation cursor (next-fit)
	nextIno   uint64
	opens     map[uint32]int // open file handles per inode
	failed    error          // set when a commit failed: every later change is refused
	readOnly  bool
	deviceRO  bool // the device refused a batch with ErrDeviceReadOnly; guarded by mu
	log       *slog.Logger
	clock     func() int64
	gen       uint32 // last inode generation handed out

	dirMu sync.Mutex
	dirs  map[uint32]*dirIndex // loaded directory indexes

	rep *replica // set on a replica mount (replica.go), also once promoted; else nil
}

type engineOptions struct {
	readOnly    bool
	cacheBlocks int
	log         *slog.Logger
	clock       func() int64
}

// openFS loads the filesystem from dev: superblock, bitmaps; then, unless
// read-only, frees the inodes left in the orphan directory by a crash.
func openFS(ctx context.Context, dev Device, opts engineOptions) (*filesystem, error) {
	if opts.cacheBlocks <= 0 {
		opts.cacheBlocks = DefaultCacheBlocks
	}
	if opts.log == nil {
		opts.log = slog.Default()
	}
	if opts.clock == nil {
		opts.clock = func() int64 { return time.Now().UnixNano() }
	}
	fs := &filesystem{
		dev:      dev,
		cache:    newBlockCache(opts.cacheBlocks),
		opens:    make(map[uint32]int),
		dirs:     make(map[uint32]*dirIndex),
		readOnly: opts.readOnly,
		log:      opts.log,
		clock:    opts.clock,
	}
	p := make([]byte, bs)
	if dev.BlockCount() == 0 {
		return nil, ErrNoFilesystem
	}
	if err := dev.ReadBlock(0, p); err != nil {
		return nil, fmt.Errorf("read superblock: %w", err)
	}
	sb, err := decodeSuper(p, dev.BlockCount())
	if err != nil {
		return nil, err
	}
	fs.sb = sb
	if fs.bmap, err = fs.loadBitmap(sb.bbmStart, sb.bbmBlocks, sb.blocks); err != nil {
		return nil, fmt.Errorf("block bitmap: %w", err)
	}
	if fs.imap, err = fs.loadBitmap(sb.ibmStart, sb.ibmBlocks, sb.inodes); err != nil {
		return nil, fmt.Errorf("inode bitmap: %w", err)
	}
	for i := uint64(0); i < sb.dataStart; i++ {
		if !fs.bmap.get(i) {
			return nil, corruptf("block bitmap: metadata block %d marked free", i)
		}
	}
	for _, ino := range []uint64{0, rootIno, orphanIno} {
		if !fs.imap.get(ino) {
			return nil, corruptf("inode bitmap: reserved inode %d marked free", ino)
		}
	}
	fs.nextBlock = sb.dataStart
	fs.nextIno = firstIno
	for _, ino := range []uint32{rootIno, orphanIno} {
		in, err := fs.loadInode(ino)
		if err != nil {
			return nil, err
		}
		if !in.isDir() {
			return nil, corruptf("inode %d: not a directory", ino)
		}
	}
	if !fs.readOnly {
		if err := fs.reapOrphans(ctx); err != nil {
			return nil, fmt.Errorf("free orphaned inodes: %w", err)
		}
	}
	return fs, nil
}

func (fs *filesystem) loadBitmap(start, nblocks, nbits uint64) (*bitset, error) {
	b := newBitset(nbits)
	for i := uint64(0); i < nblocks; i++ {
		if err := fs.loadBitmapBlock(b, start, i); err != nil {
			return nil, err
		}
	}
	return b, nil
}

// loadBitmapBlock loads block i of the bitmap starting at block start into b.
func (fs *filesystem) loadBitmapBlock(b *bitset, start, i uint64) error {
	blk := start + i
	p, err := fs.readMeta(uint32(blk), func(p []byte) error { return checkBitmap(p, blk) })
	if err != nil {
		return err
	}
	for j := uint64(0); j < bitsPerBitmap; j++ {
		n := i*bitsPerBitmap + j
		set := p[j/8]&(1<<(j%8)) != 0
		if n >= b.n {
			if set {
				return corruptf("bitmap block %d: bit %d set beyond the end", blk, j)
			}
			continue
		}
		b.set(n, set)
	}
	return nil
}

// reapOrphans frees every inode left in the orphan directory (unlinked
// while open when the filesystem last stopped) that nobody holds open. On
// a promoted replica it runs while the mount serves: an orphan still open
// through the mount is left to its last release, which frees it, and one
// freed meanwhile is skipped.
func (fs *filesystem) reapOrphans(ctx context.Context) error {
	fs.mu.RLock()
	ents, err := fs.readdir(orphanIno)
	fs.mu.RUnlock()
	if err != nil {
		return err
	}
	freed := 0
	for _, d := range ents {
		reaped := false
		err := fs.update(ctx, func(t *tx) error {
			if t.fs.opens[d.ino] > 0 {
				return nil
			}
			if _, ok, err := t.lookup(orphanIno, d.name); err != nil || !ok {
				return err
			}
			reaped = true
			return t.reap(d.ino)
		})
		if err != nil {
			return fmt.Errorf("orphan inode %d: %w", d.ino, err)
		}
		if reaped {
			freed++
		}
	}
	if freed > 0 {
		fs.log.Info("freed orphaned inodes", "count", freed)
	}
	return nil
}

func (fs *filesystem) inodeLoc(ino uint32) (blk uint32, off int) {
	return uint32(fs.sb.itabStart) + ino/inodesPerBlock, int(ino%inodesPerBlock) * inodeSize
}

// loadInode reads and verifies the committed inode ino.
func (fs *filesystem) loadInode(ino uint32) (inode, error) {
	if ino == 0 || uint64(ino) >= fs.sb.inodes {
		return inode{}, corruptf("inode number %d out of range", ino)
	}
	blk, off := fs.inodeLoc(ino)
	p, err := fs.readMeta(blk, nil)
	if err != nil {
		return inode{}, err
	}
	in, err := decodeInode(p[off:], ino)
	if err != nil {
		return in, err
	}
	if in.mode == 0 {
		return in, fmt.Errorf("inode %d: %w", ino, errStale)
	}
	return in, nil
}

// errStale means an inode number refers to a free inode (the file was
// deleted).
var errStale = fmt.Errorf("inode is free: %w", syscall.ESTALE)

// metaReader reads metadata blocks: the committed state (*filesystem) or a
// tx's view of it (*tx).
type metaReader interface {
	readMeta(blk uint32, check func([]byte) error) ([]byte, error)
}

func mapCheck(ino, blk uint32) func([]byte) error {
	return func(p []byte) error { return checkMap(p, ino, blk) }
}

// mapPath locates logical block lblk: the root entry (a direct entry when
// level is 0, otherwise indirect entry level-1) and the indexes into each
// map block below it.
func mapPath(lblk uint64) (level int, root int, idx [3]int, err error) {
	const f = mapFanout
	if lblk < directEntries {
		return 0, int(lblk), idx, nil
	}
	lblk -= directEntries
	if lblk < f {
		idx[0] = int(lblk)
		return 1, 0, idx, nil
	}
	lblk -= f
	if lblk < f*f {
		idx[0], idx[1] = int(lblk/f), int(lblk%f)
		return 2, 1, idx, nil
	}
	lblk -= f * f
	if lblk < f*f*f {
		idx[0], idx[1], idx[2] = int(lblk/(f*f)), int(lblk/f%f), int(lblk%f)
		return 3, 2, idx, nil
	}
	return 0, 0, idx, fmt.Errorf("block %d beyond the largest file: %w", lblk, syscall.EFBIG)
}

// lookupEntry returns the map entry of logical block lblk of inode ino.
func lookupEntry(r metaReader, in *inode, ino uint32, lblk uint64) (entry, error) {
	level, root, idx, err := mapPath(lblk)
	if err != nil || level == 0 {
		return in.direct[root], err
	}
	leaf, err := leafBlock(r, in, ino, level, root, idx)
	if leaf == nil || err != nil {
		return entry{}, err
	}
	return getEntry(leaf[8*idx[level-1]:]), nil
}

// leafBlock walks from indirect root entry root down level-1 map blocks
// along idx and returns the leaf map block, or nil inside a hole.
func leafBlock(r metaReader, in *inode, ino uint32, level, root int, idx [3]int) ([]byte, error) {
	e := in.ind[root]
	for l := 0; ; l++ {
		if e.blk == 0 {
			return nil, nil
		}
		p, err := r.readMeta(e.blk, mapCheck(ino, e.blk))
		if err != nil || l == level-1 {
			return p, err
		}
		e = getEntry(p[8*idx[l]:])
	}
}

// setEntry sets the map entry of logical block lblk, allocating map blocks
// on the way when e is not a hole.
func (t *tx) setEntry(in *inode, ino uint32, lblk uint64, e entry) error {
	level, root, idx, err := mapPath(lblk)
	if err != nil {
		return err
	}
	if level == 0 {
		in.direct[root] = e
		return nil
	}
	cur := in.ind[root]
	if cur.blk == 0 {
		if e.blk == 0 {
			return nil // clearing inside a hole
		}
		if cur.blk, err = t.newMapBlock(in, ino); err != nil {
			return err
		}
		in.ind[root] = cur
	}
	for i := 0; i < level; i++ {
		if i < level-1 {
			p, err := t.readMeta(cur.blk, mapCheck(ino, cur.blk))
			if err != nil {
				return err
			}
			if next := getEntry(p[8*idx[i]:]); next.blk != 0 {
				cur = next
				continue
			}
			if e.blk == 0 {
				return nil
			}
		}
		p, err := t.modifyMeta(cur.blk, mapCheck(ino, cur.blk))
		if err != nil {
			return err
		}
		t.sealMapLater(cur.blk, ino)
		if i == level-1 {
			putEntry(p[8*idx[i]:], e)
			return nil
		}
		blk, err := t.newMapBlock(in, ino)
		if err != nil {
			return err
		}
		putEntry(p[8*idx[i]:], entry{blk: blk})
		cur = entry{blk: blk}
	}
	return nil
}

// newMapBlock allocates an empty map block for inode ino.
func (t *tx) newMapBlock(in *inode, ino uint32) (uint32, error) {
	blk, err := t.allocBlock(uint32(t.fs.nextBlock))
	if err != nil {
		return 0, err
	}
	in.blocks++
	t.putMeta(blk, make([]byte, bs))
	t.sealMapLater(blk, ino)
	return blk, nil
}

func (t *tx) sealMapLater(blk, ino uint32) {
	if t.maps == nil {
		t.maps = make(map[uint32]uint32)
	}
	t.maps[blk] = ino
}

// freeTree frees every block of the subtree at e with logical blocks at or
// after from. level 0 is a data block at logical block base; level k is a
// map block covering mapFanout^k blocks from base. It returns the new entry.
func (t *tx) freeTree(in *inode, ino uint32, e entry, level int, base, from uint64) (entry, error) {
	if e.blk == 0 {
		return e, nil
	}
	span := uint64(1)
	for i := 0; i < level; i++ {
		span *= mapFanout
	}
	if from >= base+span {
		return e, nil
	}
	if level == 0 {
		t.freeBlock(e.blk)
		in.blocks--
		return entry{}, nil
	}
	if from <= base {
		// The whole subtree goes: read children without copying.
		p, err := t.readMeta(e.blk, mapCheck(ino, e.blk))
		if err != nil {
			return e, err
		}
		for i := 0; i < mapFanout; i++ {
			if c := getEntry(p[8*i:]); c.blk != 0 {
				if _, err := t.freeTree(in, ino, c, level-1, base+uint64(i)*span/mapFanout, from); err != nil {
					return e, err
				}
			}
		}
		t.freeBlock(e.blk)
		in.blocks--
		return entry{}, nil
	}
	p, err := t.modifyMeta(e.blk, mapCheck(ino, e.blk))
	if err != nil {
		return e, err
	}
	t.sealMapLater(e.blk, ino)
	child := span / mapFanout
	empty := true
	for i := 0; i < mapFanout; i++ {
		c := getEntry(p[8*i:])
		if c.blk == 0 {
			continue
		}
		nc, err := t.freeTree(in, ino, c, level-1, base+uint64(i)*child, from)
		if err != nil {
			return e, err
		}
		putEntry(p[8*i:], nc)
		if nc.blk != 0 {
			empty = false
		}
	}
	if empty {
		delete(t.maps, e.blk)
		t.freeBlock(e.blk)
		in.blocks--
		return entry{}, nil
	}
	return e, nil
}

// truncateBlocks frees every block of the inode at logical block from and
// after.
func (t *tx) truncateBlocks(in *inode, ino uint32, from uint64) error {
	for i := range in.direct {
		if uint64(i) >= from && in.direct[i].blk != 0 {
			t.freeBlock(in.direct[i].blk)
			in.blocks--
			in.direct[i] = entry{}
		}
	}
	base := uint64(directEntries)
	span := uint64(mapFanout)
	for lvl := 1; lvl <= indirectLevels; lvl++ {
		ne, err := t.freeTree(in, ino, in.ind[lvl-1], lvl, base, from)
		if err != nil {
			return err
		}
		in.ind[lvl-1] = ne
		base += span
		span *= mapFanout
	}
	return nil
}

// writeFileBlock stores p as logical block lblk of the inode, allocating a
// block for a hole. meta marks blocks kept in the metadata cache
// (directories).
func (t *tx) writeFileBlock(in *inode, ino uint32, lblk uint64, p []byte, meta bool) error {
	e, err := lookupEntry(t, in, ino, lblk)
	if err != nil {
		return err
	}
	if e.blk == 0 {
		blk, err := t.allocBlock(uint32(t.fs.nextBlock))
		if err != nil {
			return err
		}
		in.blocks++
		e.blk = blk
	}
	if meta {
		t.putMeta(e.blk, p)
	} else {
		t.putData(e.blk, p)
	}
	e.sum = crc(p)
	return t.setEntry(in, ino, lblk, e)
}

// readFileBlock reads logical block lblk of the inode into p (zeros for a hole).
func readFileBlock(r metaReader, dataRead func(blk, sum uint32, p []byte) error, in *inode, ino uint32, lblk uint64, p []byte) error {
	e, err := lookupEntry(r, in, ino, lblk)
	if err != nil {
		return err
	}
	if e.blk == 0 {
		clear(p)
		return nil
	}
	return dataRead(e.blk, e.sum, p)
}

// update runs fn as one transaction and waits for the device's Ack.
func (fs *filesystem) update(ctx context.Context, fn func(t *tx) error) error {
	fs.mu.Lock()
	if fs.readOnly || fs.deviceRO {
		fs.mu.Unlock()
		return syscall.EROFS
	}
	// Once an operation starts committing it runs to the end: an interrupt
	// (a signal to the caller makes the kernel send FUSE_INTERRUPT, which
	// cancels ctx) must neither fail the filesystem nor report an error for
	// a batch that was applied.
	ctx = context.WithoutCancel(ctx)
	t := fs.begin()
	err := fn(t)
	var ack Ack
	if err == nil {
		ack, err = t.commit(ctx)
	}
	if err != nil {
		t.abort()
	}
	fs.mu.Unlock()
	if err != nil {
		return err
	}
	if ack != nil {
		if err := ack(ctx); err != nil {
			return fmt.Errorf("acknowledge batch: %w: %w", err, errAck)
		}
	}
	return nil
}

// errAck marks a batch that was applied but not acknowledged by the device.
var errAck = errors.New("batch not acknowledged")

// sync makes every committed batch durable on the device the engine uses
// now (Promote may replace it). Like update, it is not cut short by an
// interrupt: an fsync that returns EIO tells the caller data may be lost.
func (fs *filesystem) sync(ctx context.Context) error {
	fs.mu.RLock()
	dev := fs.dev
	fs.mu.RUnlock()
	return dev.Sync(context.WithoutCancel(ctx))
}
