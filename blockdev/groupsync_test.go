package blockdev

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"testing"
)

// TestConcurrentSyncsAndApplies runs writers that each apply a batch and
// then Sync, concurrently, on a volume that checkpoints often (so Syncs run
// beside log rotations), then crashes the FS: every batch whose Sync
// returned must have survived, and the volume must recover to a prefix.
func TestConcurrentSyncsAndApplies(t *testing.T) {
	// Without checkpoints only the Syncs make batches durable; with
	// frequent ones Syncs race log rotations.
	for _, cp := range []int64{1 << 20, 32 << 10} {
		t.Run(fmt.Sprintf("checkpoint%dKiB", cp>>10), func(t *testing.T) { testConcurrentSyncs(t, cp) })
	}
}

func testConcurrentSyncs(t *testing.T, checkpointBytes int64) {
	ctx := context.Background()
	fsys := NewMemFS()
	v, err := Create("/v", 64, Options{FS: fsys, CheckpointBytes: checkpointBytes, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	const writers, rounds = 8, 40
	// Writer w owns block w; its round r writes the value r+1.
	synced := make([]uint64, writers)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := uint64(1); r <= rounds; r++ {
				p := make([]byte, BlockSize)
				binary.LittleEndian.PutUint64(p, r)
				if err := v.Apply(ctx, &Batch{Writes: []Write{{Index: uint64(w), Data: p}}}, ApplyOptions{}); err != nil {
					t.Error(err)
					return
				}
				if err := v.Sync(ctx); err != nil {
					t.Error(err)
					return
				}
				synced[w] = r
			}
		}()
	}
	wg.Wait()
	fsys.Crash()
	v.Close()
	v, err = Open("/v", Options{FS: fsys, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	p := make([]byte, BlockSize)
	for w := 0; w < writers; w++ {
		if err := v.ReadBlock(uint64(w), p); err != nil {
			t.Fatal(err)
		}
		if got := binary.LittleEndian.Uint64(p); got < synced[w] || !bytes.Equal(p[8:], make([]byte, BlockSize-8)) {
			t.Fatalf("block %d holds round %d after the crash, but round %d was synced", w, got, synced[w])
		}
	}
}
