package blockdev

import (
	"context"
	"fmt"
	"testing"
)

// benchVolume returns a FileVolume of 1 GiB on the real file system, in a
// temporary directory.
func benchVolume(b *testing.B) *FileVolume {
	b.Helper()
	v, err := Create(b.TempDir(), 1<<18, Options{Logger: quietLogger})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { v.Close() })
	return v
}

// BenchmarkFileVolumeApply measures Apply without Sync, checkpoints at the
// default log size included, for batches of consecutive blocks.
func BenchmarkFileVolumeApply(b *testing.B) {
	for _, size := range []int{4 << 10, 128 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			ctx := context.Background()
			v := benchVolume(b)
			n := size / BlockSize
			// Apply keeps the data slices; they are never modified, so
			// every batch can share them.
			data := make([][]byte, n)
			for i := range data {
				data[i] = stampBlock(uint64(i), uint64(i))
			}
			next := uint64(0)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				batch := &Batch{Writes: make([]Write, n)}
				for i := range batch.Writes {
					batch.Writes[i] = Write{Index: next % v.BlockCount(), Data: data[i]}
					next++
				}
				if err := v.Apply(ctx, batch, ApplyOptions{}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFileVolumeSync measures a 4 KiB Apply followed by a Sync: the
// latency of one durable write.
func BenchmarkFileVolumeSync(b *testing.B) {
	ctx := context.Background()
	v := benchVolume(b)
	data := stampBlock(1, 1)
	next := uint64(0)
	b.SetBytes(BlockSize)
	b.ReportAllocs()
	for b.Loop() {
		batch := &Batch{Writes: []Write{{Index: next % v.BlockCount(), Data: data}}}
		next++
		if err := v.Apply(ctx, batch, ApplyOptions{}); err != nil {
			b.Fatal(err)
		}
		if err := v.Sync(ctx); err != nil {
			b.Fatal(err)
		}
	}
}
