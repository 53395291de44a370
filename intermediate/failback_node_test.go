package intermediate_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// TestFailbackCopiesChangedRegions: on a three-node cluster over TCP, an
// old primary fenced by a promotion fails back. Its volume lacks the last
// batches it had committed (still in the journal: beyond the durable seq
// it reported) and holds local changes it never committed (its primary
// bitmap). After the new primary wrote, the failback secondary registers
// (hello, applied 0), Failback (through a follower) sets its bitmap to the
// regions the journal held at the promotion, the new primary's and the
// uploaded ones; every node's status counts the changed regions.
// ReadRegions streams exactly those regions, with the intermediate
// volume's data, and the old volume with them written over it and the
// journal's batches in (redo_after, end_seq] applied (some committed after
// the failback) is the intermediate volume at end_seq. Once the secondary
// applied it, the bitmap is cleared.
func TestFailbackCopiesChangedRegions(t *testing.T) {
	const blocks = 1024 // 64 regions
	c := coordCluster(t, 3, func(cfg *intermediate.Config) { cfg.TrimInterval = 20 * time.Millisecond })
	leader := c.leader(15 * time.Second)
	fsm := leader.node.FSM()
	var follower *testNode
	for _, tn := range c.nodes {
		if tn != leader {
			follower = tn
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	data := func(tag string, i int) []byte {
		p := make([]byte, wire.BlockSize)
		copy(p, fmt.Sprintf("%s %d", tag, i))
		return p
	}
	submit := func(v *client.Volume, idx uint64, p []byte) uint64 {
		t.Helper()
		ack, err := v.Submit(ctx, []*wire.Block{{Index: idx, Data: p}})
		if err != nil {
			t.Fatalf("submit block %d: %v", idx, err)
		}
		return ack.Seq
	}

	// The old primary: 30 batches, durable up to the 20th; the last three
	// never reached its volume.
	old := map[uint64][]byte{} // the old primary's volume, by block
	pc := newTestClient(t, c.addrs())
	va, err := pc.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 1, BlockCount: blocks})
	if err != nil {
		t.Fatal(err)
	}
	wantChanged := map[uint64]bool{} // regions changed since the promotion
	var seqs []uint64
	for i := range 30 {
		idx, p := uint64(i*37)%blocks, data("old", i)
		seqs = append(seqs, submit(va, idx, p))
		if i < 27 {
			old[idx] = p
		}
		if i >= 20 {
			wantChanged[idx/wire.RegionBlocks] = true // in the journal at the promotion
		}
	}
	va.Report(&wire.PrimaryReport{State: "PAIR", DurableSeq: seqs[19]})
	waitFor(t, 10*time.Second, "the journal trimmed to the old primary's durable seq", func() bool {
		return fsm.Stats().JournalStart == seqs[19]+1
	})
	// Local changes it never committed, in its primary bitmap (4 KiB
	// regions: the intermediate converts them).
	pb, err := blockdev.NewBitmap(blocks, blockdev.BlockSize)
	if err != nil {
		t.Fatal(err)
	}
	wantRegions := maps.Clone(wantChanged)
	for _, idx := range []uint64{500, 501, 900} {
		old[idx] = data("local", int(idx))
		pb.SetBlock(idx)
		wantRegions[idx/wire.RegionBlocks] = true
	}
	bitmap, err := pb.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}

	promo, err := pc.Promote(ctx, "p1", "failback test")
	if err != nil || promo.GetSeq() != seqs[29] {
		t.Fatalf("promote: %v, %v; want seq %d", promo, err, seqs[29])
	}
	nc := newTestClient(t, c.addrs())
	na, err := nc.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 2, BlockCount: blocks})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		idx := uint64(i*53+7) % blocks
		submit(na, idx, data("new", i))
		wantChanged[idx/wire.RegionBlocks] = true
		wantRegions[idx/wire.RegionBlocks] = true
	}
	if rs, ok := fsm.ChangedSincePromotion("a"); !ok || !slices.Equal(regionsOf(rs), sortedKeys(wantChanged)) {
		t.Fatalf("changed since the promotion: %v, %t; want regions %v", rs, ok, sortedKeys(wantChanged))
	}
	c.waitConverged(10 * time.Second)
	for _, tn := range c.nodes {
		for _, v := range statusOf(t, tn.node).GetVolumes() {
			if v.GetChangedSincePromotion() != uint64(len(wantChanged)) {
				t.Errorf("node %s: volume %s shows %d regions changed since the promotion, want %d", tn.id, v.GetName(),
					v.GetChangedSincePromotion(), len(wantChanged))
			}
		}
	}

	// Failback before the secondary registered is refused; registered
	// (hello, applied 0), it sets the bitmap.
	if _, err := nc.Failback(ctx, "fb", "a", bitmap); !errors.Is(err, wire.ErrUnknownVolume) || !strings.Contains(err.Error(), "register the secondary first") {
		t.Fatalf("failback of an unregistered secondary: %v", err)
	}
	s := newFakeSecondary(t, "fb", "a", c.maxValidated)
	defer s.check()
	s.connect(c.addrs())
	waitFor(t, 10*time.Second, "the failback secondary's link", func() bool { _, _, up := s.state(); return up })
	fc := newTestClient(t, []string{follower.clientAddr})
	if _, err := fc.Failback(ctx, "fb", "a", emptyBitmap(t, blocks+1)); !errors.Is(err, wire.ErrBadRequest) || !strings.Contains(err.Error(), "bitmap") {
		t.Fatalf("failback with a bitmap of another size: %v", err)
	}
	resp, err := fc.Failback(ctx, "fb", "a", bitmap)
	if err != nil {
		t.Fatalf("failback through follower %s: %v", follower.id, err)
	}
	if resp.GetRegions() != uint64(len(wantRegions)) || resp.GetPromotionSeq() != promo.GetSeq() || resp.GetEpoch() != 2 {
		t.Fatalf("failback: %v; want %d regions, promotion seq %d, epoch 2", resp, len(wantRegions), promo.GetSeq())
	}
	info, _ := fsm.Secondary("fb")
	failbackSeq := fsm.Stats().CommittedSeq
	if info.Suspended || info.FailbackSeq != failbackSeq || info.MarkedSeq != failbackSeq || info.DirtyRegions != uint64(len(wantRegions)) {
		t.Fatalf("fb after the failback: %+v, want failback and marked seq %d", info, failbackSeq)
	}
	// The new primary goes on: the journal keeps these for the redo.
	for i := 10; i < 15; i++ {
		submit(na, uint64(i*53+7)%blocks, data("new", i))
	}

	replica := maps.Clone(old)
	read := map[uint64]bool{}
	var startSeq, endSeq, redoAfter uint64
	first := true
	rc := newTestClient(t, c.addrs())
	err = rc.ReadRegions(ctx, "fb", blocks, func(r *wire.ReadVolumeResponse) error {
		if first {
			startSeq, redoAfter, first = r.GetStartSeq(), r.GetRedoAfter(), false
		}
		if r.GetDone() {
			endSeq = r.GetEndSeq()
			return nil
		}
		p := make([]byte, wire.BlockSize)
		for k := range uint64(r.GetBlockCount()) {
			b := r.GetFirstBlock() + k
			got := make([]byte, wire.BlockSize)
			if len(r.GetData()) > 0 {
				got = r.GetData()[k*wire.BlockSize : (k+1)*wire.BlockSize]
			}
			if err := fsm.ReadVolumeBlock("a", b, p); err != nil {
				return err
			}
			if !bytes.Equal(got, p) {
				t.Errorf("block %d differs from the intermediate volume", b)
			}
			read[b] = true
			replica[b] = bytes.Clone(got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var wantBlocks []uint64
	for _, r := range sortedKeys(wantRegions) {
		for b := r * wire.RegionBlocks; b < (r+1)*wire.RegionBlocks; b++ {
			wantBlocks = append(wantBlocks, b)
		}
	}
	if got := sortedKeys(read); !slices.Equal(got, wantBlocks) {
		t.Fatalf("read %d blocks, want the %d blocks of regions %v", len(got), len(wantBlocks), sortedKeys(wantRegions))
	}
	committed := fsm.Stats().CommittedSeq
	if redoAfter != seqs[19] || startSeq != committed || endSeq != committed {
		t.Fatalf("start %d, end %d, redo after %d; want start = end = %d, redo after the trimmed seq %d", startSeq, endSeq, redoAfter, committed, seqs[19])
	}

	// The redo from the journal brings the old volume to end_seq.
	var redone int
	errDone := errors.New("redo done")
	err = rc.Fetch(ctx, "a", redoAfter, func(r *wire.FetchResponse) error {
		if r.GetCompacted() {
			return fmt.Errorf("the journal dropped the redo after %d", redoAfter)
		}
		for _, cb := range r.GetBatches() {
			if cb.GetSeq() > endSeq {
				return errDone
			}
			for _, b := range cb.GetBatch().GetBlocks() {
				replica[b.GetIndex()] = b.GetData()
			}
			redone++
		}
		if r.GetCompleteSeq() >= endSeq {
			return errDone
		}
		return nil
	})
	if !errors.Is(err, errDone) {
		t.Fatalf("redo: %v", err)
	}
	if redone != 25 {
		t.Fatalf("redid %d batches, want 25: the old primary's 10 after its durable seq and the new primary's 15", redone)
	}
	p := make([]byte, wire.BlockSize)
	for b := range uint64(blocks) {
		if err := fsm.ReadVolumeBlock("a", b, p); err != nil {
			t.Fatal(err)
		}
		want := replica[b]
		if want == nil {
			want = make([]byte, wire.BlockSize)
		}
		if !bytes.Equal(p, want) {
			t.Fatalf("block %d: the failed-back volume differs from the intermediate volume at seq %d", b, endSeq)
		}
	}

	// The secondary goes on from end_seq: once it applied it, the bitmap
	// is cleared.
	s.stage(endSeq)
	waitFor(t, 10*time.Second, "fb applied and its bitmap cleared", func() bool {
		applied, _, _ := s.state()
		info, _ := fsm.Secondary("fb")
		return applied >= endSeq && info.MarkedSeq == 0 && info.FailbackSeq == 0 && info.DirtyRegions == 0
	})
}

// regionsOf lists the regions of runs.
func regionsOf(rs []intermediate.RegionRange) []uint64 {
	var out []uint64
	for _, r := range rs {
		for k := range r.Count {
			out = append(out, r.First+k)
		}
	}
	return out
}

func sortedKeys(m map[uint64]bool) []uint64 {
	return slices.Sorted(maps.Keys(m))
}

// emptyBitmap encodes a primary bitmap of blocks blocks with no region set.
func emptyBitmap(t testing.TB, blocks uint64) []byte {
	t.Helper()
	b, err := blockdev.NewBitmap(blocks, 0)
	if err != nil {
		t.Fatal(err)
	}
	p, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return p
}
