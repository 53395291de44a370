package blockdev

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/bits"
)

// DefaultRegionSize is the region size in bytes of a Bitmap made with a zero
// region size.
const DefaultRegionSize = 64 << 10

// MaxRegionSize is the largest region size of a Bitmap.
const MaxRegionSize = 1 << 30

// maxBitmapFile bounds the size of a file LoadBitmap reads (enough for a
// volume of 512 TiB in 64 KiB regions).
const maxBitmapFile = 1 << 30

// Bitmap is a dirty-region bitmap of a volume: one bit per region of
// RegionSize bytes (the last region may be shorter), set when a block of the
// region changed while it was not mirrored. Its zero value is an empty bitmap
// of a volume of no blocks, ready for UnmarshalBinary.
//
// A Bitmap is not safe for concurrent use; callers synchronise. Methods
// taking a block or region index panic if it is out of range, like a slice
// index: callers validate indexes (Batch.Validate) before marking them.
type Bitmap struct {
	blocks    uint64
	perRegion uint64 // blocks per region
	regions   uint64
	count     uint64 // regions set
	words     []uint64
}

// NewBitmap returns a bitmap with no region set for a volume of blocks
// blocks, in regions of regionSize bytes: a positive multiple of BlockSize
// up to MaxRegionSize, or 0 for DefaultRegionSize.
func NewBitmap(blocks uint64, regionSize int) (*Bitmap, error) {
	if regionSize == 0 {
		regionSize = DefaultRegionSize
	}
	if err := checkGeometry(blocks, uint64(regionSize)); err != nil {
		return nil, fmt.Errorf("new bitmap: %w", err)
	}
	b := &Bitmap{}
	b.setGeometry(blocks, uint64(regionSize))
	b.words = make([]uint64, wordsFor(b.regions))
	return b, nil
}

func checkGeometry(blocks, regionSize uint64) error {
	if regionSize == 0 || regionSize%BlockSize != 0 || regionSize > MaxRegionSize {
		return fmt.Errorf("region size %d is not a multiple of %d in [%d, %d]", regionSize, BlockSize, BlockSize, MaxRegionSize)
	}
	if blocks > MaxBlocks {
		return fmt.Errorf("block count %d exceeds %d", blocks, uint64(MaxBlocks))
	}
	return nil
}

func (b *Bitmap) setGeometry(blocks, regionSize uint64) {
	b.blocks = blocks
	b.perRegion = regionSize / BlockSize
	b.regions = (blocks + b.perRegion - 1) / b.perRegion
	b.count = 0
}

func wordsFor(regions uint64) uint64 { return (regions + 63) / 64 }

// BlockCount returns the number of blocks of the volume the bitmap covers.
func (b *Bitmap) BlockCount() uint64 { return b.blocks }

// RegionSize returns the size in bytes of a region.
func (b *Bitmap) RegionSize() int { return int(b.perRegion * BlockSize) }

// Regions returns the number of regions.
func (b *Bitmap) Regions() uint64 { return b.regions }

// Count returns the number of regions set.
func (b *Bitmap) Count() uint64 { return b.count }

// RegionOf returns the region of block idx.
func (b *Bitmap) RegionOf(idx uint64) uint64 {
	b.checkBlock(idx)
	return idx / b.perRegion
}

// RegionBlocks returns the first block of region r and its number of blocks.
func (b *Bitmap) RegionBlocks(r uint64) (first, n uint64) {
	b.checkRegion(r)
	first = r * b.perRegion
	return first, min(b.perRegion, b.blocks-first)
}

// SetBlock sets the region of block idx.
func (b *Bitmap) SetBlock(idx uint64) {
	b.checkBlock(idx)
	b.set(idx / b.perRegion)
}

// SetRange sets the regions of blocks [first, first+n).
func (b *Bitmap) SetRange(first, n uint64) {
	if n == 0 {
		return
	}
	if first >= b.blocks || n > b.blocks-first {
		panic(fmt.Sprintf("blockdev: bitmap range [%d, %d+%d) out of %d blocks", first, first, n, b.blocks))
	}
	b.setRegions(first/b.perRegion, (first+n-1)/b.perRegion)
}

// SetAll sets every region.
func (b *Bitmap) SetAll() {
	if b.regions > 0 {
		b.setRegions(0, b.regions-1)
	}
}

// setRegions sets regions [r0, r1].
func (b *Bitmap) setRegions(r0, r1 uint64) {
	for w := r0 / 64; w <= r1/64; w++ {
		mask := ^uint64(0)
		if w == r0/64 {
			mask &= ^uint64(0) << (r0 % 64)
		}
		if w == r1/64 {
			mask &= ^uint64(0) >> (63 - r1%64)
		}
		b.count += uint64(bits.OnesCount64(mask &^ b.words[w]))
		b.words[w] |= mask
	}
}

func (b *Bitmap) set(r uint64) {
	w, m := r/64, uint64(1)<<(r%64)
	if b.words[w]&m == 0 {
		b.words[w] |= m
		b.count++
	}
}

// ClearRegion clears region r.
func (b *Bitmap) ClearRegion(r uint64) {
	b.checkRegion(r)
	w, m := r/64, uint64(1)<<(r%64)
	if b.words[w]&m != 0 {
		b.words[w] &^= m
		b.count--
	}
}

// ClearAll clears every region.
func (b *Bitmap) ClearAll() {
	clear(b.words)
	b.count = 0
}

// IsSet reports whether region r is set.
func (b *Bitmap) IsSet(r uint64) bool {
	b.checkRegion(r)
	return b.words[r/64]&(1<<(r%64)) != 0
}

// Iterate calls yield with every set region in increasing order until yield
// returns false. It is an iter.Seq[uint64]: `for r := range b.Iterate`.
// The bitmap must not change during the iteration.
func (b *Bitmap) Iterate(yield func(region uint64) bool) {
	for w, word := range b.words {
		for word != 0 {
			t := bits.TrailingZeros64(word)
			if !yield(uint64(w)*64 + uint64(t)) {
				return
			}
			word &^= 1 << t
		}
	}
}

// Clone returns an independent copy of b.
func (b *Bitmap) Clone() *Bitmap {
	c := *b
	c.words = append([]uint64(nil), b.words...)
	return &c
}

// Equal reports whether b and o have the same geometry and regions set.
func (b *Bitmap) Equal(o *Bitmap) bool {
	if b.blocks != o.blocks || b.perRegion != o.perRegion || b.count != o.count {
		return false
	}
	for i, w := range b.words {
		if o.words[i] != w {
			return false
		}
	}
	return true
}

// Or sets in b every region set in o (union). Both must cover the same
// number of blocks in regions of the same size.
func (b *Bitmap) Or(o *Bitmap) error {
	if b.blocks != o.blocks || b.perRegion != o.perRegion {
		return fmt.Errorf("or bitmaps: %d blocks in %d-byte regions with %d blocks in %d-byte regions",
			b.blocks, b.RegionSize(), o.blocks, o.RegionSize())
	}
	b.count = 0
	for i, w := range o.words {
		b.words[i] |= w
		b.count += uint64(bits.OnesCount64(b.words[i]))
	}
	return nil
}

func (b *Bitmap) checkBlock(idx uint64) {
	if idx >= b.blocks {
		panic(fmt.Sprintf("blockdev: bitmap block %d out of %d blocks", idx, b.blocks))
	}
}

func (b *Bitmap) checkRegion(r uint64) {
	if r >= b.regions {
		panic(fmt.Sprintf("blockdev: bitmap region %d out of %d regions", r, b.regions))
	}
}

// Bitmap encoding:
//
//	0  magic       [8]byte "TRICBMP\x00"
//	8  version     uint32 (1)
//	12 region size uint32, bytes
//	16 blocks      uint64
//	24 words       [(regions+63)/64]uint64, bit r%64 of word r/64 is region r
//	.. crc32c      uint32 over every byte before it
const (
	bitmapMagic      = "TRICBMP\x00"
	bitmapHeaderSize = 24
)

// MarshalBinary implements encoding.BinaryMarshaler.
func (b *Bitmap) MarshalBinary() ([]byte, error) {
	size := bitmapHeaderSize + 8*len(b.words) + 4
	data := make([]byte, size)
	copy(data, bitmapMagic)
	binary.LittleEndian.PutUint32(data[8:], formatVersion)
	binary.LittleEndian.PutUint32(data[12:], uint32(b.RegionSize()))
	binary.LittleEndian.PutUint64(data[16:], b.blocks)
	for i, w := range b.words {
		binary.LittleEndian.PutUint64(data[bitmapHeaderSize+8*i:], w)
	}
	binary.LittleEndian.PutUint32(data[size-4:], crc32.Checksum(data[:size-4], castagnoli))
	return data, nil
}

// UnmarshalBinary implements encoding.BinaryUnmarshaler. It replaces b with
// the decoded bitmap, or leaves b unchanged and returns an error wrapping
// ErrCorrupt (or ErrVersion) if data is not a valid encoding. Its
// allocation is bounded by len(data).
func (b *Bitmap) UnmarshalBinary(data []byte) error {
	if err := b.unmarshal(data); err != nil {
		return fmt.Errorf("decode bitmap: %w", err)
	}
	return nil
}

func (b *Bitmap) unmarshal(data []byte) error {
	if len(data) < 12 || string(data[:8]) != bitmapMagic {
		return fmt.Errorf("bad magic: %w", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(data[8:]); v != formatVersion {
		return fmt.Errorf("version %d: %w", v, ErrVersion)
	}
	if len(data) < bitmapHeaderSize+4 {
		return fmt.Errorf("%d bytes: %w", len(data), ErrCorrupt)
	}
	body := data[:len(data)-4]
	if got, want := crc32.Checksum(body, castagnoli), binary.LittleEndian.Uint32(data[len(data)-4:]); got != want {
		return fmt.Errorf("checksum %#08x, want %#08x: %w", got, want, ErrCorrupt)
	}
	regionSize := uint64(binary.LittleEndian.Uint32(data[12:]))
	blocks := binary.LittleEndian.Uint64(data[16:])
	if err := checkGeometry(blocks, regionSize); err != nil {
		return fmt.Errorf("%w: %w", err, ErrCorrupt)
	}
	var n Bitmap
	n.setGeometry(blocks, regionSize)
	words := wordsFor(n.regions)
	if have := uint64(len(body) - bitmapHeaderSize); have%8 != 0 || have/8 != words {
		return fmt.Errorf("%d bytes of words for %d regions: %w", have, n.regions, ErrCorrupt)
	}
	n.words = make([]uint64, words)
	for i := range n.words {
		n.words[i] = binary.LittleEndian.Uint64(body[bitmapHeaderSize+8*i:])
		n.count += uint64(bits.OnesCount64(n.words[i]))
	}
	if tail := n.regions % 64; tail != 0 && n.words[words-1]>>tail != 0 {
		return fmt.Errorf("bits set past region %d: %w", n.regions, ErrCorrupt)
	}
	*b = n
	return nil
}

// SaveBitmap writes b to the file path atomically (temporary file, fsync,
// rename, fsync of the directory). A nil fsys means OSFS.
func SaveBitmap(fsys FS, path string, b *Bitmap) error {
	if fsys == nil {
		fsys = OSFS{}
	}
	data, err := b.MarshalBinary()
	if err != nil {
		return fmt.Errorf("save bitmap %q: %w", path, err)
	}
	if err := writeFileAtomic(fsys, LabelBitmap, path, data); err != nil {
		return fmt.Errorf("save bitmap %q: %w", path, err)
	}
	return nil
}

// LoadBitmap reads a bitmap written by SaveBitmap. A nil fsys means OSFS. A
// missing file gives an error wrapping fs.ErrNotExist; a damaged one an error
// wrapping ErrCorrupt.
func LoadBitmap(fsys FS, path string) (*Bitmap, error) {
	if fsys == nil {
		fsys = OSFS{}
	}
	data, err := readSmallFile(fsys, LabelBitmap, path, maxBitmapFile)
	if err != nil {
		return nil, fmt.Errorf("load bitmap %q: %w", path, err)
	}
	b := new(Bitmap)
	if err := b.UnmarshalBinary(data); err != nil {
		return nil, fmt.Errorf("load bitmap %q: %w", path, err)
	}
	return b, nil
}
