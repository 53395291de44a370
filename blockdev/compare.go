package blockdev

import (
	"bytes"
	"fmt"
)

// Compare reads every block of a and b and reports whether they hold the same
// content. If they do not, first is the lowest block index where they differ
// (the smaller block count if the counts differ).
func Compare(a, b Reader) (first uint64, equal bool, err error) {
	n := min(a.BlockCount(), b.BlockCount())
	pa, pb := make([]byte, BlockSize), make([]byte, BlockSize)
	for i := range n {
		if err := a.ReadBlock(i, pa); err != nil {
			return i, false, fmt.Errorf("compare volumes: %w", err)
		}
		if err := b.ReadBlock(i, pb); err != nil {
			return i, false, fmt.Errorf("compare volumes: %w", err)
		}
		if !bytes.Equal(pa, pb) {
			return i, false, nil
		}
	}
	if a.BlockCount() != b.BlockCount() {
		return n, false, nil
	}
	return 0, true, nil
}
