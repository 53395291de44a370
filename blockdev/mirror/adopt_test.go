package mirror_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/blockdev/mirror"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// TestAdoptPromoted plays a promotion: primary a writes, the intermediate
// raises the volume's epoch, and a second volume holding the same blocks
// (the promoted replica) adopts the mirror at the new epoch and resumes
// after the last volume seq: its batches commit, the old primary is fenced,
// and the intermediate volume ends equal to the new primary's.
func TestAdoptPromoted(t *testing.T) {
	const blocks = 256
	in, old := newPaired(t, blocks, nil)
	md := make(model, blocks*blockdev.BlockSize)
	for i := 1; i <= 5; i++ {
		if err := old.commit(i, uint64(i)); err != nil {
			t.Fatal(err)
		}
		md.apply(i, uint64(i))
	}
	data, err := wire.EncodeEntry(&wire.Entry{Op: &wire.Entry_SetEpoch{SetEpoch: &wire.SetEpoch{Volume: "a", Epoch: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.node.Raft().Apply(data, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	info, ok := in.node.FSM().Volume("a")
	if !ok {
		t.Fatal("volume a not registered")
	}
	image := old.local()

	// The promoted replica: a volume with the same blocks.
	np := newPrimaryNamed(t, in, "a", blocks, func(c *mirror.Config) { c.Fence = mirror.FenceData })
	var b blockdev.Batch
	for i := uint64(0); i < blocks; i++ {
		b.Writes = append(b.Writes, blockdev.Write{Index: i, Data: image[i*blockdev.BlockSize : (i+1)*blockdev.BlockSize]})
	}
	if err := np.vol.Apply(context.Background(), &b, blockdev.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	opts := mirror.AdoptOptions{FS: np.fsys, Dir: volDir, Volume: "a", Group: "default", BlockCount: blocks,
		Epoch: 2, AppliedVolumeSeq: info.LastVolumeSeq, AppliedSeq: info.LastSeq}
	if err := mirror.Adopt(opts); err != nil {
		t.Fatal(err)
	}
	if err := mirror.Adopt(opts); err != nil {
		t.Fatalf("adopt again: %v", err)
	}
	bad := opts
	bad.Epoch = 3
	if err := mirror.Adopt(bad); err == nil {
		t.Fatal("adopt at another epoch over an existing state: no error")
	}
	np.cfg = func(c *mirror.Config) { c.Fence = mirror.FenceData }
	np.mustOpen()
	if st := np.m.Status(); st.State != mirror.StatePair || st.Epoch != 2 || st.AppliedVolumeSeq != info.LastVolumeSeq {
		t.Fatalf("adopted mirror: %+v, want PAIR at epoch 2 after volume seq %d", st, info.LastVolumeSeq)
	}
	for i := 10; i < 15; i++ {
		if err := np.commit(i, uint64(i)); err != nil {
			t.Fatalf("commit on the new primary: %v", err)
		}
		md.apply(i, uint64(i))
	}
	if err := old.commit(99, 99); !errors.Is(err, mirror.ErrFenced) {
		t.Fatalf("commit on the old primary: %v, want ErrFenced", err)
	}
	waitFor(t, 10*time.Second, "the intermediate volume to hold the new primary's batches", func() bool {
		return string(in.volume("a", blocks)) == string(np.local())
	})
	sameImage(t, "new primary", np.local(), md)
}

// TestAdoptDetachedAttach plays a promotion without the intermediate: the
// old primary commits batches after the promote point N; the new primary
// (its volume at N) runs detached, changes stay local and marked, and it
// never contacts the intermediate; once the intermediate raised the epoch,
// Attach marks the regions of the old primary's batches after N, and the
// resync makes the intermediate volume equal to the new primary's.
func TestAdoptDetachedAttach(t *testing.T) {
	const blocks = 256
	in, old := newPaired(t, blocks, nil)
	for i := 1; i <= 5; i++ {
		if err := old.commit(i, uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	image := old.local() // the volume at N
	for _, idx := range []uint64{100, 101, 3} {
		if err := old.commit(50+int(idx), idx); err != nil { // after N: never reaches the new primary
			t.Fatal(err)
		}
	}
	np := newPrimaryNamed(t, in, "a", blocks, nil)
	var b blockdev.Batch
	for i := uint64(0); i < blocks; i++ {
		b.Writes = append(b.Writes, blockdev.Write{Index: i, Data: image[i*blockdev.BlockSize : (i+1)*blockdev.BlockSize]})
	}
	if err := np.vol.Apply(context.Background(), &b, blockdev.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := mirror.Adopt(mirror.AdoptOptions{FS: np.fsys, Dir: volDir, Volume: "a", Group: "default", BlockCount: blocks,
		Epoch: 2, AppliedSeq: 5, Suspended: true, Reason: "promoted without the intermediate"}); err != nil {
		t.Fatal(err)
	}
	np.mustOpen()
	if !np.m.Detached() {
		t.Fatal("an adopted suspended mirror is not detached")
	}
	if err := np.commit(7, 200); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // several retry intervals: it must not connect
	if st := np.m.Status(); st.State != mirror.StateSusp || st.DirtyRegions != 1 || st.Epoch != 2 {
		t.Fatalf("detached: %+v, want SUSP at epoch 2 with one dirty region", st)
	}
	// A restart keeps it detached.
	np.close()
	np.mustOpen()
	if !np.m.Detached() {
		t.Fatal("detached lost across a restart")
	}
	// The intermediate learns the promotion: epoch 2; the old primary's
	// batches after N touched blocks 100, 101 and 3.
	data, err := wire.EncodeEntry(&wire.Entry{Op: &wire.Entry_SetEpoch{SetEpoch: &wire.SetEpoch{Volume: "a", Epoch: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.node.Raft().Apply(data, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	if err := np.m.Attach(mirror.Attachment{Epoch: 3}); err == nil {
		t.Fatal("attach at another epoch: no error")
	}
	after, err := blockdev.NewBitmap(blocks, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	for _, idx := range []uint64{100, 101, 3} {
		after.SetBlock(idx)
	}
	regions, err := after.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := np.m.Attach(mirror.Attachment{Epoch: 2, Regions: regions}); err != nil {
		t.Fatal(err)
	}
	np.waitState(mirror.StatePair)
	if err := np.commit(8, 201); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the intermediate volume to equal the new primary's", func() bool {
		return string(in.volume("a", blocks)) == string(np.local())
	})
	if err := old.commit(99, 99); !errors.Is(err, mirror.ErrFenced) {
		t.Fatalf("commit on the old primary: %v, want ErrFenced", err)
	}
	np.close()
	np.mustOpen()
	if np.m.Detached() {
		t.Fatal("attached mirror detached again after a restart")
	}
}

// TestAttachNothingMarked attaches a detached mirror that changed nothing
// and learns of no region to overwrite: its resync has nothing to copy and
// must end at once in PAIR.
func TestAttachNothingMarked(t *testing.T) {
	const blocks = 128
	in := newInter(t)
	p := newPrimary(t, in, blocks, nil)
	if err := mirror.Adopt(mirror.AdoptOptions{FS: p.fsys, Dir: volDir, Volume: "a", Group: "default", BlockCount: blocks,
		Epoch: 1, Suspended: true}); err != nil {
		t.Fatal(err)
	}
	p.mustOpen()
	if err := p.m.Attach(mirror.Attachment{Epoch: 1}); err != nil {
		t.Fatal(err)
	}
	p.waitState(mirror.StatePair)
	if err := p.commit(1, 5); err != nil {
		t.Fatal(err)
	}
}
