package blockdev

import "fmt"

// RangeReader reads runs of consecutive blocks with one call. Volumes that
// can do it faster than block by block implement it.
type RangeReader interface {
	// ReadBlocks reads len(p)/BlockSize consecutive blocks, the first at
	// index first, into p, whose length must be a multiple of BlockSize.
	ReadBlocks(first uint64, p []byte) error
}

var _ RangeReader = (*FileVolume)(nil)

// ReadBlocks implements RangeReader with one read of the data file, on
// top of which the blocks held in the overlay are copied. It may run
// concurrently with every other method.
func (v *FileVolume) ReadBlocks(first uint64, p []byte) error {
	if len(p)%BlockSize != 0 {
		return fmt.Errorf("read blocks from %d of volume %q: buffer of %d bytes: %w", first, v.dir, len(p), ErrBadBlock)
	}
	n := uint64(len(p) / BlockSize)
	if first >= v.blocks || n > v.blocks-first {
		return fmt.Errorf("read %d blocks from %d of volume %q with %d blocks: %w", n, first, v.dir, v.blocks, ErrOutOfRange)
	}
	v.rw.RLock()
	defer v.rw.RUnlock()
	if v.closed {
		return fmt.Errorf("read blocks from %d of volume %q: %w", first, v.dir, ErrClosed)
	}
	if err := readFull(v.data, p, int64(first)*BlockSize); err != nil {
		return fmt.Errorf("read %d blocks from %d of volume %q: %w", n, first, v.dir, err)
	}
	if len(v.overlay) == 0 {
		return nil
	}
	for i := uint64(0); i < n; i++ {
		if d, ok := v.overlay[first+i]; ok {
			copy(p[i*BlockSize:], d)
		}
	}
	return nil
}
