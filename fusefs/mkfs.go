package fusefs

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	"github.com/tricopy/tricopy/blockdev"
)

// DefaultBytesPerInode is the volume space per inode that Format reserves
// when FormatOptions.Inodes is 0.
const DefaultBytesPerInode = 16 << 10

// Format writes an empty filesystem to v in one batch and syncs it: a
// superblock, zeroed bitmaps and inode table, the root directory (inode 1,
// mode 0755, owned by uid and gid 0) and the orphan directory (inode 2).
func Format(ctx context.Context, v blockdev.Volume, opts FormatOptions) error {
	blocks := v.BlockCount()
	inodes := opts.Inodes
	if inodes == 0 {
		inodes = max(blocks*bs/DefaultBytesPerInode, 64)
	}
	sb, err := layout(blocks, inodes)
	if err != nil {
		return fmt.Errorf("format: %w", err)
	}
	if _, err := rand.Read(sb.uuid[:]); err != nil {
		return fmt.Errorf("format: uuid: %w", err)
	}
	now := time.Now().UnixNano()
	sb.created = now
	b := &blockdev.Batch{}
	put := func(blk uint64, p []byte) { b.Writes = append(b.Writes, blockdev.Write{Index: blk, Data: p}) }
	put(0, sb.encode())

	bbm := newBitset(blocks)
	for i := uint64(0); i < sb.dataStart; i++ {
		bbm.set(i, true)
	}
	ibm := newBitset(inodes)
	for _, ino := range []uint64{0, rootIno, orphanIno} {
		ibm.set(ino, true)
	}
	for i := uint64(0); i < sb.bbmBlocks; i++ {
		put(sb.bbmStart+i, encodeBitmapBlock(bbm, i))
	}
	for i := uint64(0); i < sb.ibmBlocks; i++ {
		put(sb.ibmStart+i, encodeBitmapBlock(ibm, i))
	}
	// Free inode slots must read as zeros. Zero the table blocks that are
	// not (a fresh volume reads zeros), in batches, before the final batch
	// that makes the volume a filesystem.
	if err := zeroBlocks(ctx, v, sb.itabStart+1, sb.itabBlocks-1); err != nil {
		return fmt.Errorf("format: clear inode table: %w", err)
	}
	p := make([]byte, bs)
	root := inode{mode: s_IFDIR | 0o755, nlink: 2, parent: rootIno, gen: 1, atime: now, mtime: now, ctime: now}
	orphans := inode{mode: s_IFDIR | 0o700, nlink: 2, parent: orphanIno, gen: 1, atime: now, mtime: now, ctime: now}
	root.encode(p[rootIno*inodeSize:], rootIno)
	orphans.encode(p[orphanIno*inodeSize:], orphanIno)
	put(sb.itabStart, p)
	if err := v.Apply(ctx, b, blockdev.ApplyOptions{Sync: true}); err != nil {
		return fmt.Errorf("format: write metadata: %w", err)
	}
	return nil
}

// encodeBitmapBlock encodes bitmap block i of b.
func encodeBitmapBlock(b *bitset, i uint64) []byte {
	p := make([]byte, bs)
	for j := uint64(0); j < bitsPerBitmap; j++ {
		n := i*bitsPerBitmap + j
		if n >= b.n {
			break
		}
		if b.get(n) {
			p[j/8] |= 1 << (j % 8)
		}
	}
	sealBitmap(p)
	return p
}

// zeroBlocks makes blocks [first, first+n) of v read as zeros, writing only
// those that do not already.
func zeroBlocks(ctx context.Context, v blockdev.Volume, first, n uint64) error {
	const chunk = 256
	p := make([]byte, bs)
	var b blockdev.Batch
	for i := first; i < first+n; i++ {
		if err := v.ReadBlock(i, p); err != nil {
			return err
		}
		for _, c := range p {
			if c != 0 {
				b.Writes = append(b.Writes, blockdev.Write{Index: i, Data: make([]byte, bs)})
				break
			}
		}
		if len(b.Writes) == chunk || (i == first+n-1 && len(b.Writes) > 0) {
			if err := v.Apply(ctx, &b, blockdev.ApplyOptions{}); err != nil {
				return err
			}
			b = blockdev.Batch{}
		}
	}
	return nil
}
