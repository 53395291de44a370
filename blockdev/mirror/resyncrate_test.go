package mirror_test

import (
	"context"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/blockdev/mirror"
)

// TestResyncRate: a copy is paced to Config.ResyncRate, and still ends
// with identical volumes.
func TestResyncRate(t *testing.T) {
	const blocks = 2048 // 128 regions of 64 KiB
	const rate = 4 << 20
	in := newInter(t)
	p := newPrimary(t, in, blocks, func(c *mirror.Config) { c.ResyncRate = rate })
	md := make(model, blocks*blockdev.BlockSize)
	// 64 regions with data: 4 MiB to copy, 1 s at the rate.
	for r := uint64(0); r < 64; r++ {
		if err := p.vol.Apply(context.Background(), batch(int(r)+1, r*32), blockdev.ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		md.apply(int(r)+1, r*32)
	}
	start := time.Now()
	p.mustOpen()
	p.waitState(mirror.StatePair)
	took := time.Since(start)
	// Batches of 16 regions (1 MiB): the first goes at once, each next
	// one 1/4 s later.
	if min := 700 * time.Millisecond; took < min {
		t.Fatalf("a copy of 4 MiB at %d B/s took %v, want at least %v", rate, took, min)
	}
	if st := p.m.Status(); st.CopiedBytes != 4<<20 {
		t.Fatalf("copied %d bytes, want 4 MiB", st.CopiedBytes)
	}
	waitFor(t, 10*time.Second, "every batch applied", func() bool { return p.m.Status().PendingBatches == 0 })
	sameImage(t, "intermediate after a paced copy", in.volume("a", blocks), md)
}
