package secondary_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
	"github.com/tricopy/tricopy/secondary"
)

// TestFailbackReplica fails an old primary back: its volume holds the
// volume up to some batch plus a change of its own the intermediate never
// committed; after a promotion the new primary writes more. The secondary
// built from it copies only marked regions and ends equal to the
// intermediate volume. Before a promotion, failback is refused.
func TestFailbackReplica(t *testing.T) {
	n, addr := startNode(t)
	cl := newClient(t, addr)
	rng := rand.New(rand.NewPCG(5, 6))
	va := openVolume(t, cl, "a")
	sent := submitLogged(t, va, rng, 20)

	// The old primary's volume: the batches up to the 15th, plus a local
	// change of block 200 (marked in its primary bitmap).
	old := blockdev.NewMem(testBlocks)
	img := imageAt(sent, testBlocks, sent[14].seq)
	local := bytes.Repeat([]byte{0xee}, wire.BlockSize)
	copy(img[200*wire.BlockSize:], local)
	var b blockdev.Batch
	for i := range uint64(testBlocks) {
		b.Writes = append(b.Writes, blockdev.Write{Index: i, Data: img[i*wire.BlockSize : (i+1)*wire.BlockSize]})
	}
	if err := old.Apply(context.Background(), &b, blockdev.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	bm, err := blockdev.NewBitmap(testBlocks, blockdev.DefaultRegionSize)
	if err != nil {
		t.Fatal(err)
	}
	bm.SetBlock(200)
	marked, err := bm.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	src := &secondary.FailbackSource{Volume: old, Bitmap: marked}
	open := func(dir string) (*secondary.Secondary, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return secondary.Open(ctx, secondary.Config{Volume: "a", ID: "a-back", Dir: dir, Addr: "127.0.0.1:1", Intermediate: cl,
			ReportInterval: 20 * time.Millisecond, Failback: src, Logger: testLog(t).With("component", "secondary")})
	}
	if _, err := open(t.TempDir()); err == nil || !strings.Contains(err.Error(), "never promoted") {
		t.Fatalf("failback before a promotion: %v, want a refusal saying the volume was never promoted", err)
	}
	if _, _, err := cl.RemoveSecondary(context.Background(), "a-back"); err != nil {
		t.Fatal(err)
	}

	if _, err := cl.Promote(context.Background(), "p1", "test"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nv, err := newClient(t, addr).OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 2, BlockCount: testBlocks})
	if err != nil {
		t.Fatal(err)
	}
	defer nv.Close()
	after := submitLogged(t, nv, rng, 10)

	s, err := open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st := s.Status().Failback
	if st == nil || st.Regions == 0 || st.CopiedBytes > st.Regions*uint64(blockdev.DefaultRegionSize) {
		t.Fatalf("failback stats %+v", st)
	}
	if s.Replica().Exposable() {
		t.Fatal("a failback replica is exposable before a validated point")
	}
	if err := s.Start(nil); err != nil {
		t.Fatal(err)
	}
	last := after[len(after)-1].seq
	waitApplied(t, s, last)
	sameAsIntermediate(t, n, s)
	t.Logf("failback copied %d regions (%d bytes), redid %d batches", st.Regions, st.CopiedBytes, st.RedoBatches)
}
