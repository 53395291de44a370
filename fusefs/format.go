package fusefs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/tricopy/tricopy/blockdev"
)

// On-volume layout (all integers little-endian, every structure checksummed
// with CRC-32C):
//
//	block 0                     superblock
//	[bbmStart, +bbmBlocks)      block allocation bitmap
//	[ibmStart, +ibmBlocks)      inode allocation bitmap
//	[itabStart, +itabBlocks)    inode table, inodesPerBlock inodes per block
//	[dataStart, blocks)         data, directory, map and xattr blocks
//
// A file's blocks are found through a block map rooted in its inode: 12 direct
// entries and one single, one double and one triple indirect entry. An entry
// is {block uint32, crc uint32}: block 0 is a hole, and crc is the CRC-32C of
// the block it points to (data blocks) so every byte of file data is checked
// on read. Map blocks hold mapFanout entries and a trailer with their own
// CRC, owner inode and block number.

const (
	bs = blockdev.BlockSize

	// Version is the on-volume format version written by Format.
	Version = 1

	superMagic = "TRICOPYF"

	inodeSize      = 256
	inodesPerBlock = bs / inodeSize

	// Bitmap blocks keep their CRC in the last 4 bytes.
	bitmapBytes    = bs - 8
	bitsPerBitmap  = bitmapBytes * 8
	bitmapMagic    = 0x504d4254 // "TBMP"
	mapMagic       = 0x50414d54 // "TMAP"
	dirMagic       = 0x52494454 // "TDIR"
	xattrMagic     = 0x52415854 // "TXAR"
	mapFanout      = (bs - 16) / 8
	directEntries  = 12
	indirectLevels = 3

	rootIno   = 1
	orphanIno = 2
	firstIno  = 3

	maxNameLen = 255
	// maxSymlinkLen is the longest symlink target (PATH_MAX - 1).
	maxSymlinkLen = 4095
	// maxXattrStream bounds the encoded size of one inode's xattrs.
	maxXattrStream = 1 << 20
	// maxXattrValue is the kernel's XATTR_SIZE_MAX.
	maxXattrValue = 64 << 10
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

func crc(p []byte) uint32 { return crc32.Checksum(p, crcTable) }

// Sentinel errors of the on-volume format.
var (
	// ErrCorrupt means a structure on the volume failed its checksum or a
	// structural check. The message names the structure and block.
	ErrCorrupt = errors.New("filesystem corrupt")
	// ErrNoFilesystem means block 0 holds no tricopy superblock.
	ErrNoFilesystem = errors.New("no tricopy filesystem on volume")
)

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), ErrCorrupt)
}

// superblock describes the layout of the filesystem.
type superblock struct {
	version    uint32
	blocks     uint64
	inodes     uint64
	bbmStart   uint64
	bbmBlocks  uint64
	ibmStart   uint64
	ibmBlocks  uint64
	itabStart  uint64
	itabBlocks uint64
	dataStart  uint64
	uuid       [16]byte
	created    int64
}

func (s *superblock) encode() []byte {
	p := make([]byte, bs)
	copy(p, superMagic)
	le := binary.LittleEndian
	le.PutUint32(p[8:], s.version)
	le.PutUint32(p[12:], bs)
	le.PutUint64(p[16:], s.blocks)
	le.PutUint64(p[24:], s.inodes)
	le.PutUint64(p[32:], s.bbmStart)
	le.PutUint64(p[40:], s.bbmBlocks)
	le.PutUint64(p[48:], s.ibmStart)
	le.PutUint64(p[56:], s.ibmBlocks)
	le.PutUint64(p[64:], s.itabStart)
	le.PutUint64(p[72:], s.itabBlocks)
	le.PutUint64(p[80:], s.dataStart)
	copy(p[88:104], s.uuid[:])
	le.PutUint64(p[104:], uint64(s.created))
	le.PutUint32(p[bs-4:], crc(p[:bs-4]))
	return p
}

// layout computes the regions of a filesystem of the given size.
func layout(blocks, inodes uint64) (superblock, error) {
	s := superblock{version: Version, blocks: blocks, inodes: inodes}
	if blocks > 1<<32-1 {
		return s, fmt.Errorf("volume of %d blocks: at most %d blocks (16 TiB) supported", blocks, uint64(1<<32-1))
	}
	if inodes < 16 || inodes > 1<<32-1 {
		return s, fmt.Errorf("%d inodes: need between 16 and %d", inodes, uint64(1<<32-1))
	}
	s.bbmStart = 1
	s.bbmBlocks = ceilDiv(blocks, bitsPerBitmap)
	s.ibmStart = s.bbmStart + s.bbmBlocks
	s.ibmBlocks = ceilDiv(inodes, bitsPerBitmap)
	s.itabStart = s.ibmStart + s.ibmBlocks
	s.itabBlocks = ceilDiv(inodes, inodesPerBlock)
	s.dataStart = s.itabStart + s.itabBlocks
	if s.dataStart+16 > blocks {
		return s, fmt.Errorf("volume of %d blocks too small for %d inodes (metadata needs %d blocks)", blocks, inodes, s.dataStart)
	}
	return s, nil
}

func ceilDiv(a, b uint64) uint64 { return (a + b - 1) / b }

// decodeSuper decodes and checks a superblock read from block 0 of a volume
// of volBlocks blocks.
func decodeSuper(p []byte, volBlocks uint64) (superblock, error) {
	var s superblock
	if len(p) != bs {
		return s, corruptf("superblock: %d bytes", len(p))
	}
	if string(p[:8]) != superMagic {
		return s, ErrNoFilesystem
	}
	le := binary.LittleEndian
	if got, want := le.Uint32(p[bs-4:]), crc(p[:bs-4]); got != want {
		return s, corruptf("superblock: checksum %08x, want %08x", got, want)
	}
	s.version = le.Uint32(p[8:])
	if s.version != Version {
		return s, fmt.Errorf("superblock: format version %d, this tricopy reads version %d: %w", s.version, Version, ErrCorrupt)
	}
	if b := le.Uint32(p[12:]); b != bs {
		return s, corruptf("superblock: block size %d, want %d", b, bs)
	}
	s.blocks = le.Uint64(p[16:])
	s.inodes = le.Uint64(p[24:])
	want, err := layout(s.blocks, s.inodes)
	if err != nil {
		return s, corruptf("superblock: %v", err)
	}
	s.bbmStart = le.Uint64(p[32:])
	s.bbmBlocks = le.Uint64(p[40:])
	s.ibmStart = le.Uint64(p[48:])
	s.ibmBlocks = le.Uint64(p[56:])
	s.itabStart = le.Uint64(p[64:])
	s.itabBlocks = le.Uint64(p[72:])
	s.dataStart = le.Uint64(p[80:])
	copy(s.uuid[:], p[88:104])
	s.created = int64(le.Uint64(p[104:]))
	want.uuid, want.created = s.uuid, s.created
	if want != s {
		return s, corruptf("superblock: region layout does not match %d blocks and %d inodes", s.blocks, s.inodes)
	}
	if s.blocks > volBlocks {
		return s, corruptf("superblock: filesystem of %d blocks on a volume of %d blocks", s.blocks, volBlocks)
	}
	return s, nil
}

// Bitmap blocks: bits in bytes [0, bitmapBytes), magic at bs-8, CRC at bs-4.

func sealBitmap(p []byte) {
	binary.LittleEndian.PutUint32(p[bs-8:], bitmapMagic)
	binary.LittleEndian.PutUint32(p[bs-4:], crc(p[:bs-4]))
}

func checkBitmap(p []byte, blk uint64) error {
	if len(p) != bs {
		return corruptf("bitmap block %d: %d bytes", blk, len(p))
	}
	if m := binary.LittleEndian.Uint32(p[bs-8:]); m != bitmapMagic {
		return corruptf("bitmap block %d: bad magic %08x", blk, m)
	}
	if got, want := binary.LittleEndian.Uint32(p[bs-4:]), crc(p[:bs-4]); got != want {
		return corruptf("bitmap block %d: checksum %08x, want %08x", blk, got, want)
	}
	return nil
}

// entry is one block map entry: a block number (0 = hole) and the CRC-32C of
// the block's content.
type entry struct {
	blk uint32
	sum uint32
}

func getEntry(p []byte) entry {
	return entry{binary.LittleEndian.Uint32(p), binary.LittleEndian.Uint32(p[4:])}
}

func putEntry(p []byte, e entry) {
	binary.LittleEndian.PutUint32(p, e.blk)
	binary.LittleEndian.PutUint32(p[4:], e.sum)
}

// Map blocks: mapFanout entries, then magic, owner inode, own block number and CRC.

func sealMap(p []byte, ino, blk uint32) {
	le := binary.LittleEndian
	le.PutUint32(p[bs-16:], mapMagic)
	le.PutUint32(p[bs-12:], ino)
	le.PutUint32(p[bs-8:], blk)
	le.PutUint32(p[bs-4:], crc(p[:bs-4]))
}

func checkMap(p []byte, ino, blk uint32) error {
	if len(p) != bs {
		return corruptf("map block %d of inode %d: %d bytes", blk, ino, len(p))
	}
	le := binary.LittleEndian
	if got, want := le.Uint32(p[bs-4:]), crc(p[:bs-4]); got != want {
		return corruptf("map block %d of inode %d: checksum %08x, want %08x", blk, ino, got, want)
	}
	if m := le.Uint32(p[bs-16:]); m != mapMagic {
		return corruptf("map block %d of inode %d: bad magic %08x", blk, ino, m)
	}
	if o, b := le.Uint32(p[bs-12:]), le.Uint32(p[bs-8:]); o != ino || b != blk {
		return corruptf("map block %d of inode %d: labelled block %d of inode %d (misdirected write)", blk, ino, b, o)
	}
	return nil
}

// inode is the decoded form of a 256-byte inode record.
type inode struct {
	mode   uint32 // S_IFMT | permission bits; 0 means free
	uid    uint32
	gid    uint32
	nlink  uint32
	gen    uint32
	size   uint64
	atime  int64
	mtime  int64
	ctime  int64
	rdev   uint32
	flags  uint32
	xattr  uint32 // inode holding the xattr stream, 0 if none
	parent uint32 // directories: the parent directory
	blocks uint64 // blocks owned: data, directory, map blocks
	direct [directEntries]entry
	ind    [indirectLevels]entry
}

// Inode flags.
const (
	// flagXattr marks a hidden inode holding another inode's xattr stream.
	flagXattr = 1 << 0
)

func (in *inode) encode(p []byte, ino uint32) {
	le := binary.LittleEndian
	clear(p[:inodeSize])
	le.PutUint32(p[4:], in.mode)
	le.PutUint32(p[8:], in.uid)
	le.PutUint32(p[12:], in.gid)
	le.PutUint32(p[16:], in.nlink)
	le.PutUint32(p[20:], in.gen)
	le.PutUint64(p[24:], in.size)
	le.PutUint64(p[32:], uint64(in.atime))
	le.PutUint64(p[40:], uint64(in.mtime))
	le.PutUint64(p[48:], uint64(in.ctime))
	le.PutUint32(p[56:], in.rdev)
	le.PutUint32(p[60:], in.flags)
	le.PutUint32(p[64:], in.xattr)
	le.PutUint32(p[68:], in.parent)
	le.PutUint64(p[72:], in.blocks)
	for i, e := range in.direct {
		putEntry(p[80+8*i:], e)
	}
	for i, e := range in.ind {
		putEntry(p[176+8*i:], e)
	}
	if in.mode == 0 {
		return // a free slot is all zeros
	}
	le.PutUint32(p, inodeCRC(p, ino))
}

// inodeCRC covers the record and the inode number, so a record written to
// the wrong slot is detected.
func inodeCRC(p []byte, ino uint32) uint32 {
	var n [4]byte
	binary.LittleEndian.PutUint32(n[:], ino)
	return crc32.Update(crc(n[:]), crcTable, p[4:inodeSize])
}

// decodeInode decodes the record of inode ino. A free slot (all zeros)
// decodes to an inode with mode 0.
func decodeInode(p []byte, ino uint32) (inode, error) {
	var in inode
	if len(p) < inodeSize {
		return in, corruptf("inode %d: short record", ino)
	}
	le := binary.LittleEndian
	in.mode = le.Uint32(p[4:])
	if in.mode == 0 {
		for _, b := range p[:inodeSize] {
			if b != 0 {
				return in, corruptf("inode %d: free slot is not zeroed", ino)
			}
		}
		return in, nil
	}
	if got, want := le.Uint32(p), inodeCRC(p, ino); got != want {
		return in, corruptf("inode %d: checksum %08x, want %08x", ino, got, want)
	}
	in.uid = le.Uint32(p[8:])
	in.gid = le.Uint32(p[12:])
	in.nlink = le.Uint32(p[16:])
	in.gen = le.Uint32(p[20:])
	in.size = le.Uint64(p[24:])
	in.atime = int64(le.Uint64(p[32:]))
	in.mtime = int64(le.Uint64(p[40:]))
	in.ctime = int64(le.Uint64(p[48:]))
	in.rdev = le.Uint32(p[56:])
	in.flags = le.Uint32(p[60:])
	in.xattr = le.Uint32(p[64:])
	in.parent = le.Uint32(p[68:])
	in.blocks = le.Uint64(p[72:])
	for i := range in.direct {
		in.direct[i] = getEntry(p[80+8*i:])
	}
	for i := range in.ind {
		in.ind[i] = getEntry(p[176+8*i:])
	}
	switch in.mode & s_IFMT {
	case s_IFREG, s_IFDIR, s_IFLNK, s_IFIFO, s_IFCHR, s_IFBLK, s_IFSOCK:
	default:
		return in, corruptf("inode %d: bad file type in mode %o", ino, in.mode)
	}
	if in.size > maxFileSize {
		return in, corruptf("inode %d: size %d beyond the format's limit", ino, in.size)
	}
	return in, nil
}

// Mode bits (syscall's are untyped ints of varying type across platforms).
const (
	s_IFMT   = 0o170000
	s_IFSOCK = 0o140000
	s_IFLNK  = 0o120000
	s_IFREG  = 0o100000
	s_IFBLK  = 0o060000
	s_IFDIR  = 0o040000
	s_IFCHR  = 0o020000
	s_IFIFO  = 0o010000
)

func (in *inode) isDir() bool  { return in.mode&s_IFMT == s_IFDIR }
func (in *inode) isReg() bool  { return in.mode&s_IFMT == s_IFREG }
func (in *inode) isLink() bool { return in.mode&s_IFMT == s_IFLNK }

// hasData reports whether the inode's block map holds content.
func (in *inode) hasData() bool { return in.isReg() || in.isDir() || in.isLink() }

// maxFileBlocks is the number of blocks a block map can address.
const maxFileBlocks = directEntries + mapFanout + mapFanout*mapFanout + mapFanout*mapFanout*mapFanout

// maxFileSize is the largest file size the format allows.
const maxFileSize = uint64(maxFileBlocks) * bs

// Directory blocks: a 12-byte header {magic, owner inode, count u16, used
// u16}, then entries {ino u32, type u8, namelen u8, name}, packed; used is
// the end offset of the last entry. The block's CRC lives in the map entry
// that points to it.
const dirHeader = 12

type dirent struct {
	name string
	ino  uint32
	typ  uint8 // file type: mode >> 12
}

func direntSize(name string) int { return 6 + len(name) }

// decodeDirBlock decodes a directory block of directory dir.
func decodeDirBlock(p []byte, dir uint32, fn func(d dirent) error) error {
	if len(p) != bs {
		return corruptf("directory %d: block of %d bytes", dir, len(p))
	}
	le := binary.LittleEndian
	if m := le.Uint32(p); m != dirMagic {
		if m == 0 && le.Uint32(p[4:]) == 0 && le.Uint32(p[8:]) == 0 {
			return nil // never written (sparse hole filled with zeros)
		}
		return corruptf("directory %d: block has bad magic %08x", dir, m)
	}
	if o := le.Uint32(p[4:]); o != dir {
		return corruptf("directory %d: block belongs to inode %d", dir, o)
	}
	count := int(le.Uint16(p[8:]))
	used := int(le.Uint16(p[10:]))
	if used < dirHeader || used > bs {
		return corruptf("directory %d: block claims %d bytes used", dir, used)
	}
	off := dirHeader
	for i := 0; i < count; i++ {
		if off+6 > used {
			return corruptf("directory %d: entry %d runs past end of block", dir, i)
		}
		d := dirent{ino: le.Uint32(p[off:]), typ: p[off+4]}
		n := int(p[off+5])
		if n == 0 || off+6+n > used {
			return corruptf("directory %d: entry %d has bad name length %d", dir, i, n)
		}
		d.name = string(p[off+6 : off+6+n])
		if d.ino == 0 || !validName(d.name) {
			return corruptf("directory %d: entry %d (%q, inode %d) is invalid", dir, i, d.name, d.ino)
		}
		if err := fn(d); err != nil {
			return err
		}
		off += 6 + n
	}
	if off != used {
		return corruptf("directory %d: %d entries end at %d, header says %d", dir, count, off, used)
	}
	return nil
}

func validName(name string) bool {
	if name == "" || name == "." || name == ".." || len(name) > maxNameLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '/' || name[i] == 0 {
			return false
		}
	}
	return true
}

// encodeDirBlock writes the entries to a fresh directory block.
func encodeDirBlock(dir uint32, ents []dirent) []byte {
	p := make([]byte, bs)
	le := binary.LittleEndian
	le.PutUint32(p, dirMagic)
	le.PutUint32(p[4:], dir)
	off := dirHeader
	for _, d := range ents {
		le.PutUint32(p[off:], d.ino)
		p[off+4] = d.typ
		p[off+5] = byte(len(d.name))
		copy(p[off+6:], d.name)
		off += direntSize(d.name)
	}
	le.PutUint16(p[8:], uint16(len(ents)))
	le.PutUint16(p[10:], uint16(off))
	return p
}

// Xattr stream: {magic u32, count u32, crc u32 over the rest}, then entries
// {namelen u16, valuelen u32, name, value}.

type xattr struct {
	name  string
	value []byte
}

func encodeXattrs(xs []xattr) []byte {
	n := 12
	for _, x := range xs {
		n += 6 + len(x.name) + len(x.value)
	}
	p := make([]byte, n)
	le := binary.LittleEndian
	le.PutUint32(p, xattrMagic)
	le.PutUint32(p[4:], uint32(len(xs)))
	off := 12
	for _, x := range xs {
		le.PutUint16(p[off:], uint16(len(x.name)))
		le.PutUint32(p[off+2:], uint32(len(x.value)))
		off += 6
		off += copy(p[off:], x.name)
		off += copy(p[off:], x.value)
	}
	le.PutUint32(p[8:], crc(p[12:]))
	return p
}

func decodeXattrs(p []byte, ino uint32) ([]xattr, error) {
	le := binary.LittleEndian
	if len(p) < 12 || le.Uint32(p) != xattrMagic {
		return nil, corruptf("xattrs of inode %d: bad header", ino)
	}
	if got, want := le.Uint32(p[8:]), crc(p[12:]); got != want {
		return nil, corruptf("xattrs of inode %d: checksum %08x, want %08x", ino, got, want)
	}
	count := le.Uint32(p[4:])
	if uint64(count)*6 > uint64(len(p)) {
		return nil, corruptf("xattrs of inode %d: %d entries in %d bytes", ino, count, len(p))
	}
	xs := make([]xattr, 0, count)
	off := 12
	for i := uint32(0); i < count; i++ {
		if off+6 > len(p) {
			return nil, corruptf("xattrs of inode %d: entry %d truncated", ino, i)
		}
		nl, vl := int(le.Uint16(p[off:])), int(le.Uint32(p[off+2:]))
		off += 6
		if nl == 0 || nl > maxNameLen || vl > maxXattrValue || off+nl+vl > len(p) {
			return nil, corruptf("xattrs of inode %d: entry %d has bad lengths", ino, i)
		}
		xs = append(xs, xattr{name: string(p[off : off+nl]), value: append([]byte(nil), p[off+nl:off+nl+vl]...)})
		off += nl + vl
	}
	if off != len(p) {
		return nil, corruptf("xattrs of inode %d: %d trailing bytes", ino, len(p)-off)
	}
	return xs, nil
}
