package intermediate_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// TestPromoteFencesOldPrimaries: on a three-node cluster over TCP, a
// client that knows only a follower promotes the group (the call follows
// the leader); the promotion answers the committed seq and every volume's
// new epoch; the old primaries' Submit and a fresh open at the old epoch
// fail with STALE_EPOCH, without disturbing a new primary at the new
// epoch, which resumes after the volume's last volume seq; running the
// promotion again answers the same with already set; every node's status
// shows the history; and the secondary stays registered and drains to
// the promotion's seq.
func TestPromoteFencesOldPrimaries(t *testing.T) {
	c := coordCluster(t, 3, nil)
	leader := c.leader(15 * time.Second)
	waitFor(t, 10*time.Second, "the leader's address in the log", func() bool {
		for _, tn := range c.nodes {
			if tn.node.FSM().NodeAddr(leader.id) != leader.clientAddr {
				return false
			}
		}
		return true
	})
	var follower *testNode
	for _, tn := range c.nodes {
		if tn != leader {
			follower = tn
			break
		}
	}
	pc := newTestClient(t, c.addrs())
	va, vb := openTestVolume(t, pc, "a"), openTestVolume(t, pc, "b")
	submitN(t, va, 5)
	submitN(t, vb, 3)
	last := submitN(t, va, 2)
	s := newFakeSecondary(t, "sa", "a", c.maxValidated)
	defer s.check()
	s.connect(c.addrs())
	waitFor(t, 10*time.Second, "the secondary's link", func() bool { _, _, up := s.state(); return up })

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	oc := newTestClient(t, []string{follower.clientAddr})
	resp, err := oc.Promote(ctx, "promo-1", "test host")
	if err != nil {
		t.Fatalf("promote through follower %s: %v", follower.id, err)
	}
	if resp.GetSeq() != last || resp.GetAlready() || len(resp.GetVolumes()) != 2 {
		t.Fatalf("promote: %v, want seq %d and two volumes", resp, last)
	}
	for i, want := range []struct {
		name          string
		lastVolumeSeq uint64
	}{{"a", 7}, {"b", 3}} {
		v := resp.GetVolumes()[i]
		if v.GetName() != want.name || v.GetEpoch() != 2 || v.GetLastVolumeSeq() != want.lastVolumeSeq || v.GetBlockCount() != 16 ||
			v.GetLastSeq() == 0 || v.GetLastSeq() > resp.GetSeq() {
			t.Errorf("promoted volume %d: %v, want %s at epoch 2 after volume seq %d", i, v, want.name, want.lastVolumeSeq)
		}
	}

	// The secondary stays registered and drains to the promotion's seq.
	s.stage(resp.GetSeq())
	waitFor(t, 10*time.Second, "the secondary to apply the promotion's seq", func() bool {
		applied, _, _ := s.state()
		return applied >= resp.GetSeq()
	})

	// The old primaries are fenced.
	if _, err := va.Submit(ctx, []*wire.Block{{Index: 0, Data: make([]byte, wire.BlockSize)}}); !errors.Is(err, wire.ErrStaleEpoch) {
		t.Fatalf("old primary's submit after the promotion: %v, want ErrStaleEpoch", err)
	}
	if _, err := vb.Submit(ctx, []*wire.Block{{Index: 0, Data: make([]byte, wire.BlockSize)}}); !errors.Is(err, wire.ErrStaleEpoch) {
		t.Fatalf("old primary's submit to b after the promotion: %v, want ErrStaleEpoch", err)
	}
	if _, err := newTestClient(t, c.addrs()).OpenVolume(ctx, client.VolumeOptions{Name: "b", Epoch: 1, BlockCount: 16}); !errors.Is(err, wire.ErrStaleEpoch) {
		t.Fatalf("open at the old epoch: %v, want ErrStaleEpoch", err)
	}

	// A new primary opens at the new epoch and resumes after the last
	// volume seq; an old primary opening meanwhile does not end its stream.
	nc := newTestClient(t, c.addrs())
	na, err := nc.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 2, BlockCount: 16})
	if err != nil {
		t.Fatalf("open at the new epoch: %v", err)
	}
	ack, err := na.Submit(ctx, []*wire.Block{{Index: 1, Data: make([]byte, wire.BlockSize)}})
	if err != nil || ack.Seq != resp.GetSeq()+1 {
		t.Fatalf("new primary's first batch: %+v, %v; want seq %d", ack, err, resp.GetSeq()+1)
	}
	raw := rawClient(t, leader.clientAddr, 1<<20)
	st, err := raw.Submit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&wire.SubmitRequest{Msg: &wire.SubmitRequest_Open{Open: &wire.SubmitOpen{Volume: "a", Epoch: 1, BlockCount: 16}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); !errors.Is(wire.FromStatus(err), wire.ErrStaleEpoch) {
		t.Fatalf("raw open at the old epoch: %v, want STALE_EPOCH", wire.FromStatus(err))
	}
	if ack2, err := na.Submit(ctx, []*wire.Block{{Index: 2, Data: make([]byte, wire.BlockSize)}}); err != nil || ack2.Seq != ack.Seq+1 {
		t.Fatalf("new primary after an old primary's open: %+v, %v", ack2, err)
	}

	// Running the promotion again changes nothing and answers the same.
	again, err := oc.Promote(ctx, "promo-1", "another host")
	if err != nil {
		t.Fatal(err)
	}
	if !again.GetAlready() || again.GetSeq() != resp.GetSeq() || len(again.GetVolumes()) != 2 {
		t.Fatalf("promote again: %v, want already with seq %d", again, resp.GetSeq())
	}
	for i, v := range again.GetVolumes() {
		w := resp.GetVolumes()[i]
		if v.GetName() != w.GetName() || v.GetEpoch() != w.GetEpoch() || v.GetLastSeq() != w.GetLastSeq() || v.GetLastVolumeSeq() != w.GetLastVolumeSeq() {
			t.Errorf("promote again, volume %d: %v, want %v", i, v, w)
		}
	}
	if _, err := oc.Promote(ctx, "", "x"); !errors.Is(err, wire.ErrBadRequest) {
		t.Fatalf("promote without an id: %v, want BAD_REQUEST", err)
	}

	c.waitConverged(10 * time.Second)
	for _, tn := range c.nodes {
		st := statusOf(t, tn.node)
		for _, v := range st.GetVolumes() {
			ps := v.GetPromotions()
			if v.GetEpoch() != 2 || len(ps) != 1 || ps[0].GetPromotionId() != "promo-1" || ps[0].GetEpoch() != 2 ||
				ps[0].GetSeq() != resp.GetSeq() || ps[0].GetBy() != "test host" || ps[0].GetTimeUnixNano() == 0 {
				t.Errorf("node %s: volume %v", tn.id, v)
			}
		}
		if secondaryStatus(st, "sa") == nil {
			t.Errorf("node %s: secondary sa no longer registered after the promotion", tn.id)
		}
	}
}

// TestPromoteAtRecordsLatePromotion: on a three-node cluster over TCP, the
// old primaries commit batches of a and b; their secondaries were promoted
// without the intermediate at a point N among them, and the new primary
// re-attaches: PromoteAt(N, epoch 1) fences the old primaries, records N
// as the promotion's seq, and answers for each volume the regions of its
// batches after N, the journal complete; another late promotion from
// epoch 1, or at a point above the counter, is refused; a new primary
// opening at epoch 2 continues after the volume's last volume seq; and
// running the promotion again answers the same.
func TestPromoteAtRecordsLatePromotion(t *testing.T) {
	c := coordCluster(t, 3, nil)
	c.leader(15 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	open := func(cl *client.Client, name string, epoch uint64) *client.Volume {
		t.Helper()
		v, err := cl.OpenVolume(ctx, client.VolumeOptions{Name: name, Epoch: epoch, BlockCount: 64})
		if err != nil {
			t.Fatalf("open %s at epoch %d: %v", name, epoch, err)
		}
		return v
	}
	submit := func(v *client.Volume, index uint64) client.Ack {
		t.Helper()
		data := make([]byte, wire.BlockSize)
		copy(data, fmt.Sprintf("%s %d", v.Name(), index))
		ack, err := v.Submit(ctx, []*wire.Block{{Index: index, Data: data}})
		if err != nil {
			t.Fatalf("submit block %d to %s: %v", index, v.Name(), err)
		}
		return ack
	}
	pc := newTestClient(t, c.addrs())
	va, vb := open(pc, "a", 1), open(pc, "b", 1)
	// Up to the point: a writes regions 0 and 1, b region 0. After it: a
	// regions 2, 1 and 3, b region 2.
	submit(va, 0)
	submit(vb, 1)
	n := submit(va, 17).Seq
	submit(va, 40)
	submit(vb, 33)
	submit(va, 18)
	last := submit(va, 63)

	resp, err := pc.PromoteAt(ctx, "late-1", "test host", n, 1)
	if err != nil {
		t.Fatalf("promote at %d: %v", n, err)
	}
	if resp.GetSeq() != n || resp.GetAlready() || len(resp.GetVolumes()) != 2 {
		t.Fatalf("promote at %d: %v", n, resp)
	}
	for i, want := range []struct {
		name          string
		lastVolumeSeq uint64
		after         []uint64
	}{{"a", 5, []uint64{1, 2, 3}}, {"b", 2, []uint64{2}}} {
		v := resp.GetVolumes()[i]
		if v.GetName() != want.name || v.GetEpoch() != 2 || v.GetLastVolumeSeq() != want.lastVolumeSeq || v.GetBlockCount() != 64 ||
			!v.GetJournalComplete() || v.GetLastSeq() <= n {
			t.Errorf("promoted volume %d: %v, want %s at epoch 2 after volume seq %d, the journal complete", i, v, want.name, want.lastVolumeSeq)
		}
		var b blockdev.Bitmap
		if err := b.UnmarshalBinary(v.GetAfterRegions()); err != nil {
			t.Fatalf("after regions of %s: %v", want.name, err)
		}
		if got := slices.Collect(b.Iterate); b.BlockCount() != 64 || b.RegionSize() != wire.RegionBlocks*wire.BlockSize || !slices.Equal(got, want.after) {
			t.Errorf("after regions of %s: %v (%d blocks, regions of %d bytes), want %v", want.name, got, b.BlockCount(), b.RegionSize(), want.after)
		}
	}
	if resp.GetVolumes()[0].GetLastSeq() != last.Seq {
		t.Errorf("last seq of a: %d, want %d", resp.GetVolumes()[0].GetLastSeq(), last.Seq)
	}

	// The old primaries are fenced; nobody else promotes from epoch 1,
	// nor at a point the group never reached.
	if _, err := va.Submit(ctx, []*wire.Block{{Index: 0, Data: make([]byte, wire.BlockSize)}}); !errors.Is(err, wire.ErrStaleEpoch) {
		t.Fatalf("old primary's submit after the late promotion: %v, want ErrStaleEpoch", err)
	}
	if _, err := pc.PromoteAt(ctx, "late-2", "", n, 1); !errors.Is(err, wire.ErrStaleEpoch) || !strings.Contains(err.Error(), "from epoch 1") {
		t.Fatalf("another promotion from epoch 1: %v, want ErrStaleEpoch", err)
	}
	if _, err := pc.PromoteAt(ctx, "late-3", "", last.Seq+100, 0); !errors.Is(err, wire.ErrBadRequest) {
		t.Fatalf("promotion above the counter: %v, want ErrBadRequest", err)
	}

	// The new primary opens at the new epoch and continues after the last
	// volume seq.
	na := open(newTestClient(t, c.addrs()), "a", 2)
	if vs, seq := na.OpenedAt(); vs != 5 || seq != last.Seq {
		t.Fatalf("new primary opened after volume seq %d, seq %d; want 5, %d", vs, seq, last.Seq)
	}
	if ack := submit(na, 18); ack.VolumeSeq != 6 || ack.Seq != last.Seq+1 || ack.Duplicate {
		t.Fatalf("new primary's first batch: %+v, want volume seq 6 at seq %d", ack, last.Seq+1)
	}

	// Running it again answers the same, the new primary's batch aside.
	again, err := pc.PromoteAt(ctx, "late-1", "another host", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !again.GetAlready() || again.GetSeq() != n || len(again.GetVolumes()) != 2 {
		t.Fatalf("promote again: %v, want already at %d", again, n)
	}
	for i, v := range again.GetVolumes() {
		if w := resp.GetVolumes()[i]; !proto.Equal(v, w) {
			t.Errorf("promote again, volume %d: %v, want %v", i, v, w)
		}
	}

	c.waitConverged(10 * time.Second)
	for _, tn := range c.nodes {
		for _, v := range statusOf(t, tn.node).GetVolumes() {
			ps := v.GetPromotions()
			if v.GetEpoch() != 2 || len(ps) != 1 || ps[0].GetPromotionId() != "late-1" || ps[0].GetSeq() != n {
				t.Errorf("node %s: volume %v", tn.id, v)
			}
		}
	}
}
