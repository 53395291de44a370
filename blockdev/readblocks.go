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
// top of which the blocks held in the frozen generation's overlay, then in
// the current one, are copied. It may run concurrently with every other
// method.
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
	v.readAhead(int64(first)*BlockSize, int64(len(p)))
	copyOverlay(v.frozenOverlay, first, p)
	copyOverlay(v.overlay, first, p)
	return nil
}

// willNeeder is a File that can be told which part will be read soon
// (osFile on Linux).
type willNeeder interface {
	WillNeed(off, n int64)
}

// readAheadBytes is how far past a sequential read of the data file
// ReadBlocks asks the kernel to read ahead. The kernel's own readahead is
// limited by the device's (read_ahead_kb, often 128 KiB) and confused by
// the out-of-order reads of concurrent FUSE requests.
const readAheadBytes = 1 << 20

// readAhead, after a read of n bytes at off of the data file that starts
// where the previous one ended, or is the one just before it (concurrent
// requests of a sequential reader arrive out of order), asks the kernel to
// read the next readAheadBytes. Random reads almost never qualify.
func (v *FileVolume) readAhead(off, n int64) {
	prev := v.readEnd.Swap(off + n)
	if off != prev && (off+n > prev || off < prev-2*n) {
		return
	}
	if wn, ok := v.data.(willNeeder); ok {
		wn.WillNeed(off+n, readAheadBytes)
	}
}

// copyOverlay copies over p, which holds the blocks from first on, those
// that overlay holds.
func copyOverlay(overlay map[uint64][]byte, first uint64, p []byte) {
	if len(overlay) == 0 {
		return
	}
	for i := range uint64(len(p) / BlockSize) {
		if d, ok := overlay[first+i]; ok {
			copy(p[i*BlockSize:], d)
		}
	}
}
