package fusefs

import (
	"context"
	"errors"
	"fmt"

	"github.com/tricopy/tricopy/blockdev"
)

// maxProblems bounds the problems one Check reports.
const maxProblems = 1000

// Check checks every structural invariant of the filesystem on r: the
// superblock; the checksums of every inode, bitmap, map, directory and data
// block; that every inode in use is reachable from the root (or is an
// orphan or an xattr stream) and every reachable one is in use; link counts;
// block counts; that no block is owned twice or lies outside the data region;
// and that both bitmaps agree with what is reachable. Damage is reported in
// the Report; the error is for failures to read the volume.
func Check(ctx context.Context, r blockdev.Reader) (*Report, error) {
	c := &checker{r: r, rep: &Report{}, refs: make(map[uint32]uint32), subdirs: make(map[uint32]uint32),
		inodes: make(map[uint32]*inode)}
	err := c.run(ctx)
	if err != nil && !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNoFilesystem) {
		return nil, err
	}
	if err != nil {
		c.problemf("%v", err)
	}
	c.rep.Clean = len(c.rep.Problems) == 0
	if c.rep.Problems == nil {
		c.rep.Problems = []string{}
	}
	return c.rep, nil
}

type checker struct {
	r       blockdev.Reader
	sb      superblock
	rep     *Report
	owned   *bitset           // blocks owned by reachable inodes or metadata
	refs    map[uint32]uint32 // inode → directory entries naming it
	subdirs map[uint32]uint32 // directory → subdirectories
	inodes  map[uint32]*inode // reachable inodes
	xattrOf map[uint32]uint32 // xattr inode → owner
	queue   []uint32
	buf     []byte
}

func (c *checker) problemf(format string, args ...any) {
	if len(c.rep.Problems) < maxProblems {
		c.rep.Problems = append(c.rep.Problems, fmt.Sprintf(format, args...))
	}
}

func (c *checker) read(blk uint64) ([]byte, error) {
	p := make([]byte, bs)
	if err := c.r.ReadBlock(blk, p); err != nil {
		return nil, fmt.Errorf("read block %d: %w", blk, err)
	}
	return p, nil
}

func (c *checker) run(ctx context.Context) error {
	if c.r.BlockCount() == 0 {
		return ErrNoFilesystem
	}
	p, err := c.read(0)
	if err != nil {
		return err
	}
	if c.sb, err = decodeSuper(p, c.r.BlockCount()); err != nil {
		return err
	}
	sb := c.sb
	c.rep.Blocks, c.rep.Inodes = sb.blocks, sb.inodes
	c.owned = newBitset(sb.blocks)
	c.xattrOf = make(map[uint32]uint32)
	for i := uint64(0); i < sb.dataStart; i++ {
		c.owned.set(i, true)
	}
	bmap, err := c.bitmap(sb.bbmStart, sb.bbmBlocks, sb.blocks, "block")
	if err != nil {
		return err
	}
	imap, err := c.bitmap(sb.ibmStart, sb.ibmBlocks, sb.inodes, "inode")
	if err != nil {
		return err
	}
	// Walk the tree from the root and the orphan directory.
	c.refs[rootIno], c.refs[orphanIno] = 1, 1
	for _, ino := range []uint32{rootIno, orphanIno} {
		if err := c.visit(ino); err != nil {
			return err
		}
	}
	for len(c.queue) > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		dir := c.queue[0]
		c.queue = c.queue[1:]
		if err := c.walkDir(dir); err != nil {
			return err
		}
	}
	c.checkLinks()
	// Scan the inode table: every slot in use must be reachable, and the
	// inode bitmap must agree.
	for ino := uint64(1); ino < sb.inodes; ino++ {
		blk, off := sb.itabStart+ino/inodesPerBlock, int(ino%inodesPerBlock)*inodeSize
		if ino%inodesPerBlock == 0 || ino == 1 {
			if c.buf, err = c.read(blk); err != nil {
				return err
			}
		}
		in, err := decodeInode(c.buf[off:], uint32(ino))
		inUse := err != nil || in.mode != 0
		_, reachable := c.inodes[uint32(ino)]
		switch {
		case err != nil && !reachable:
			c.problemf("%v", err)
		case inUse && !reachable:
			c.problemf("inode %d is in use but not reachable (leaked)", ino)
		}
		if ino == orphanIno {
			continue
		}
		if imap.get(ino) != reachable {
			c.problemf("inode bitmap: inode %d marked %s, but it is %s", ino, used(imap.get(ino)), reachableWord(reachable))
		}
	}
	if !imap.get(0) {
		c.problemf("inode bitmap: reserved inode 0 marked free")
	}
	for b := uint64(0); b < sb.blocks; b++ {
		if bmap.get(b) != c.owned.get(b) {
			c.problemf("block bitmap: block %d marked %s, but it is %s", b, used(bmap.get(b)), ownedWord(c.owned.get(b)))
		}
	}
	c.rep.FreeBlocks = sb.blocks - c.owned.used
	c.rep.FreeInodes = sb.inodes - uint64(len(c.inodes)) - 1
	return nil
}

func used(b bool) string {
	if b {
		return "used"
	}
	return "free"
}

func reachableWord(b bool) string {
	if b {
		return "reachable"
	}
	return "not"
}

func ownedWord(b bool) string {
	if b {
		return "owned"
	}
	return "owned by nothing"
}

func (c *checker) bitmap(start, nblocks, nbits uint64, what string) (*bitset, error) {
	b := newBitset(nbits)
	for i := uint64(0); i < nblocks; i++ {
		p, err := c.read(start + i)
		if err != nil {
			return nil, err
		}
		if err := checkBitmap(p, start+i); err != nil {
			c.problemf("%s bitmap: %v", what, err)
			continue
		}
		for j := uint64(0); j < bitsPerBitmap && i*bitsPerBitmap+j < nbits; j++ {
			b.set(i*bitsPerBitmap+j, p[j/8]&(1<<(j%8)) != 0)
		}
	}
	return b, nil
}

func (c *checker) loadInode(ino uint32) (*inode, error) {
	if in, ok := c.inodes[ino]; ok {
		return in, nil
	}
	if ino == 0 || uint64(ino) >= c.sb.inodes {
		return nil, corruptf("inode number %d out of range", ino)
	}
	blk, off := c.sb.itabStart+uint64(ino/inodesPerBlock), int(ino%inodesPerBlock)*inodeSize
	p, err := c.read(blk)
	if err != nil {
		return nil, err
	}
	in, err := decodeInode(p[off:], ino)
	if err != nil {
		return nil, err
	}
	if in.mode == 0 {
		return nil, corruptf("inode %d is free", ino)
	}
	return &in, nil
}

// visit loads a newly reached inode and claims its blocks.
func (c *checker) visit(ino uint32) error {
	in, err := c.loadInode(ino)
	if err != nil {
		if errors.Is(err, ErrCorrupt) {
			c.problemf("%v", err)
			return nil
		}
		return err
	}
	c.inodes[ino] = in
	switch {
	case in.flags&flagXattr != 0:
		c.rep.Others++
	case in.isReg():
		c.rep.Files++
	case in.isDir():
		c.rep.Directories++
		c.queue = append(c.queue, ino)
	case in.isLink():
		c.rep.Symlinks++
		if in.size == 0 || in.size > maxSymlinkLen {
			c.problemf("symlink %d: target length %d", ino, in.size)
		}
	default:
		c.rep.Others++
	}
	if !in.hasData() {
		for _, e := range append(in.direct[:], in.ind[:]...) {
			if e.blk != 0 {
				c.problemf("inode %d (mode %o) has blocks", ino, in.mode)
				break
			}
		}
		return nil
	}
	var count uint64
	err = c.walkMap(ino, in, func(lblk uint64, e entry, isMap bool) error {
		count++
		if !isMap && lblk >= ceilDiv(in.size, bs) {
			c.problemf("inode %d: block %d mapped at logical block %d, past the size %d", ino, e.blk, lblk, in.size)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if count != in.blocks {
		c.problemf("inode %d: owns %d blocks, inode says %d", ino, count, in.blocks)
	}
	if in.isDir() && in.size%bs != 0 {
		c.problemf("directory %d: size %d is not a multiple of the block size", ino, in.size)
	}
	if in.xattr != 0 {
		if owner, dup := c.xattrOf[in.xattr]; dup {
			c.problemf("xattr inode %d claimed by inodes %d and %d", in.xattr, owner, ino)
			return nil
		}
		c.xattrOf[in.xattr] = ino
		xin, err := c.loadInode(in.xattr)
		if err != nil {
			c.problemf("inode %d: xattrs: %v", ino, err)
			return nil
		}
		if xin.flags&flagXattr == 0 {
			c.problemf("inode %d: xattr inode %d is not an xattr stream", ino, in.xattr)
			return nil
		}
		if err := c.visit(in.xattr); err != nil {
			return err
		}
		if xin.size > maxXattrStream {
			c.problemf("inode %d: xattr stream inode %d of %d bytes, above the limit of %d", ino, in.xattr, xin.size, maxXattrStream)
			return nil
		}
		p := make([]byte, xin.size)
		buf := make([]byte, bs)
		for lblk := uint64(0); lblk*bs < xin.size; lblk++ {
			if err := c.readFileBlock(xin, in.xattr, lblk, buf); err != nil {
				return c.soft(err)
			}
			copy(p[lblk*bs:], buf)
		}
		if _, err := decodeXattrs(p, ino); err != nil {
			c.problemf("%v", err)
		}
	}
	return nil
}

// soft turns corruption into a reported problem and passes other errors.
func (c *checker) soft(err error) error {
	if errors.Is(err, ErrCorrupt) {
		c.problemf("%v", err)
		return nil
	}
	return err
}

// claim marks blk as owned by inode ino.
func (c *checker) claim(ino, blk uint32) bool {
	if uint64(blk) < c.sb.dataStart || uint64(blk) >= c.sb.blocks {
		c.problemf("inode %d: block %d outside the data region", ino, blk)
		return false
	}
	if c.owned.get(uint64(blk)) {
		c.problemf("inode %d: block %d is owned twice", ino, blk)
		return false
	}
	c.owned.set(uint64(blk), true)
	return true
}

// walkMap visits every block of the inode's map (data and map blocks),
// verifying checksums of both.
func (c *checker) walkMap(ino uint32, in *inode, fn func(lblk uint64, e entry, isMap bool) error) error {
	buf := make([]byte, bs)
	data := func(lblk uint64, e entry) error {
		if !c.claim(ino, e.blk) {
			return nil
		}
		if e.sum == zeroSum {
			return fn(lblk, e, false) // allocated, reads as zeros, content unused
		}
		if err := c.r.ReadBlock(uint64(e.blk), buf); err != nil {
			return fmt.Errorf("read block %d: %w", e.blk, err)
		}
		if got := crc(buf); got != e.sum {
			c.problemf("inode %d: block %d (logical %d): checksum %08x, want %08x", ino, e.blk, lblk, got, e.sum)
		}
		return fn(lblk, e, false)
	}
	for i, e := range in.direct {
		if e.blk != 0 {
			if err := data(uint64(i), e); err != nil {
				return err
			}
		}
	}
	var walk func(e entry, level int, base uint64) error
	walk = func(e entry, level int, base uint64) error {
		if level == 0 {
			return data(base, e)
		}
		if !c.claim(ino, e.blk) {
			return nil
		}
		if err := fn(base, e, true); err != nil {
			return err
		}
		p, err := c.read(uint64(e.blk))
		if err != nil {
			return err
		}
		if err := checkMap(p, ino, e.blk); err != nil {
			c.problemf("%v", err)
			return nil
		}
		span := uint64(1)
		for i := 1; i < level; i++ {
			span *= mapFanout
		}
		for i := 0; i < mapFanout; i++ {
			if ce := getEntry(p[8*i:]); ce.blk != 0 {
				if err := walk(ce, level-1, base+uint64(i)*span); err != nil {
					return err
				}
			}
		}
		return nil
	}
	base, span := uint64(directEntries), uint64(mapFanout)
	for lvl := 1; lvl <= indirectLevels; lvl++ {
		if e := in.ind[lvl-1]; e.blk != 0 {
			if err := walk(e, lvl, base); err != nil {
				return err
			}
		}
		base += span
		span *= mapFanout
	}
	return nil
}

// readFileBlock reads a logical block the way the filesystem does.
func (c *checker) readFileBlock(in *inode, ino uint32, lblk uint64, p []byte) error {
	return readFileBlock(c, func(blk, sum uint32, p []byte) error {
		if sum == zeroSum {
			clear(p)
			return nil
		}
		if err := c.r.ReadBlock(uint64(blk), p); err != nil {
			return fmt.Errorf("read block %d: %w", blk, err)
		}
		if got := crc(p); got != sum {
			return corruptf("data block %d: checksum %08x, want %08x", blk, got, sum)
		}
		return nil
	}, in, ino, lblk, p)
}

// readMeta makes the checker a metaReader (no cache).
func (c *checker) readMeta(blk uint32, check func([]byte) error) ([]byte, error) {
	p, err := c.read(uint64(blk))
	if err != nil {
		return nil, err
	}
	if check != nil {
		if err := check(p); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// walkDir checks the entries of directory dir and visits their inodes.
func (c *checker) walkDir(dir uint32) error {
	din := c.inodes[dir]
	names := make(map[string]bool)
	buf := make([]byte, bs)
	for lblk := uint64(0); lblk < din.size/bs; lblk++ {
		if err := c.readFileBlock(din, dir, lblk, buf); err != nil {
			if err := c.soft(err); err != nil {
				return err
			}
			continue
		}
		var ents []dirent
		if err := decodeDirBlock(buf, dir, func(d dirent) error { ents = append(ents, d); return nil }); err != nil {
			c.problemf("%v", err)
			continue
		}
		for _, d := range ents {
			if names[d.name] {
				c.problemf("directory %d: name %q appears twice", dir, d.name)
				continue
			}
			names[d.name] = true
			if d.ino == rootIno || d.ino == orphanIno {
				c.problemf("directory %d: entry %q names reserved inode %d", dir, d.name, d.ino)
				continue
			}
			first := c.refs[d.ino] == 0
			c.refs[d.ino]++
			if first {
				if err := c.visit(d.ino); err != nil {
					return err
				}
			}
			in, ok := c.inodes[d.ino]
			if !ok {
				c.problemf("directory %d: entry %q names bad inode %d", dir, d.name, d.ino)
				continue
			}
			if typeOf(in.mode) != d.typ {
				c.problemf("directory %d: entry %q has type %d, inode %d has mode %o", dir, d.name, d.typ, d.ino, in.mode)
			}
			if in.flags&flagXattr != 0 {
				c.problemf("directory %d: entry %q names xattr inode %d", dir, d.name, d.ino)
			}
			if dir == orphanIno && (d.name != orphanName(d.ino) || in.nlink != 0) {
				c.problemf("orphan directory: entry %q names inode %d with %d links", d.name, d.ino, in.nlink)
			}
			if in.isDir() {
				if !first {
					c.problemf("directory %d is linked more than once", d.ino)
				}
				if in.parent != dir {
					c.problemf("directory %d: parent is %d, but it is listed in %d", d.ino, in.parent, dir)
				}
				if dir != orphanIno {
					c.subdirs[dir]++
				}
			}
		}
	}
	return nil
}

// checkLinks compares link counts with the references found.
func (c *checker) checkLinks() {
	for ino, in := range c.inodes {
		if in.flags&flagXattr != 0 {
			if c.refs[ino] != 0 {
				c.problemf("xattr inode %d is named by a directory", ino)
			}
			continue
		}
		if in.isDir() && in.nlink != 0 {
			if want := 2 + c.subdirs[ino]; in.nlink != want {
				c.problemf("directory %d: link count %d, want %d", ino, in.nlink, want)
			}
			continue
		}
		// Orphans have no links; their one reference is the orphan entry.
		if in.nlink == 0 {
			if in.isDir() && c.subdirs[ino] != 0 {
				c.problemf("orphaned directory %d is not empty", ino)
			}
			continue
		}
		if in.nlink != c.refs[ino] {
			c.problemf("inode %d: link count %d, but %d directory entries name it", ino, in.nlink, c.refs[ino])
		}
	}
}
