package mirror_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/blockdev/mirror"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// journalOf returns the batches of volume a the intermediate's journal
// holds after seq.
func journalOf(t testing.TB, in *inter, after uint64) []*wire.CommittedBatch {
	t.Helper()
	batches, compacted, err := in.node.FSM().Fetch("a", after, 0)
	if err != nil || compacted {
		t.Fatalf("fetch after %d: compacted %v, %v", after, compacted, err)
	}
	return batches
}

// checkWindowClosed fails unless the batches are a copy window: every one
// carries the copying flag but the last, which closes it with block 0 as
// the local volume holds it; and unless the intermediate counts no window
// open and its consistent seq is its valid counter.
func checkWindowClosed(t testing.TB, in *inter, p *primary, batches []*wire.CommittedBatch) {
	t.Helper()
	if len(batches) < 2 {
		t.Fatalf("%d batches, want a copy and the batch closing its window", len(batches))
	}
	for _, cb := range batches[:len(batches)-1] {
		if !cb.GetBatch().GetCopying() {
			t.Fatalf("batch %d (volume seq %d) inside the copy has no copying flag", cb.GetSeq(), cb.GetBatch().GetVolumeSeq())
		}
	}
	last := batches[len(batches)-1].GetBatch()
	local := p.local()
	if last.GetCopying() || len(last.GetBlocks()) != 1 || last.GetBlocks()[0].GetIndex() != 0 ||
		!bytes.Equal(last.GetBlocks()[0].GetData(), local[:blockdev.BlockSize]) {
		t.Fatalf("last batch: copying %v, %d blocks; want block 0 as the volume holds it, without the flag", last.GetCopying(), len(last.GetBlocks()))
	}
	st := in.node.FSM().Stats()
	if v, _ := in.node.FSM().Volume("a"); v.CopySince != 0 || st.ConsistentSeq != st.ValidSeq || st.CopyHeldBy != "" {
		t.Fatalf("copy window from %d, consistent seq %d held by %q, valid %d: want the window closed", v.CopySince, st.ConsistentSeq, st.CopyHeldBy, st.ValidSeq)
	}
}

// TestCopyWindow: the batches of a primary's COPY and RESYNC carry the
// copying flag, so the intermediate keeps validated points out of them,
// and the primary closes the window when the copy ends, also when it
// restarted with the window still open.
func TestCopyWindow(t *testing.T) {
	const blocks = 1024
	in := newInter(t)
	p := newPrimary(t, in, blocks, func(c *mirror.Config) { c.Fence = mirror.FenceNever })
	md := make(model, blocks*blockdev.BlockSize)
	for tag := 1; tag <= 8; tag++ {
		if err := p.vol.Apply(context.Background(), batch(tag, uint64(tag*100)), blockdev.ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		md.apply(tag, uint64(tag*100))
	}

	// COPY: the data regions go out flagged, then the window closes.
	p.mustOpen()
	p.waitState(mirror.StatePair)
	waitFor(t, 10*time.Second, "every batch applied", func() bool { return p.m.Status().PendingBatches == 0 })
	all := journalOf(t, in, 0)
	checkWindowClosed(t, in, p, all)
	sameImage(t, "intermediate after the copy", in.volume("a", blocks), md)
	last := all[len(all)-1].GetSeq()

	// RESYNC after a suspension: the same.
	in.stop()
	for tag := 20; tag < 30; tag++ {
		if err := p.commit(tag, uint64(tag*31%blocks)); err != nil {
			t.Fatal(err)
		}
		md.apply(tag, uint64(tag*31%blocks))
	}
	p.waitState(mirror.StateSusp)
	in.start()
	p.waitState(mirror.StatePair)
	waitFor(t, 10*time.Second, "every batch applied", func() bool { return p.m.Status().PendingBatches == 0 })
	resync := journalOf(t, in, last)
	checkWindowClosed(t, in, p, resync)
	sameImage(t, "intermediate after the resync", in.volume("a", blocks), md)
	last = resync[len(resync)-1].GetSeq()

	// A primary that stopped after its copy ended but before the batch
	// closing the window committed: the window is open when it comes
	// back in PAIR, and it closes it.
	p.close()
	cl, err := client.New(client.Config{Addrs: []string{in.clientAddr}, Logger: in.log})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := cl.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 1, BlockCount: blocks})
	if err != nil {
		t.Fatal(err)
	}
	if v.CopyOpen() {
		t.Fatal("the window is open after the primary closed it")
	}
	if _, err := v.SubmitCopyingAsync([]*wire.Block{{Index: 300, Data: md[300*blockdev.BlockSize : 301*blockdev.BlockSize]}}).Wait(ctx); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	if v, _ := in.node.FSM().Volume("a"); v.CopySince != last+1 {
		t.Fatalf("copy window from %d, want %d", v.CopySince, last+1)
	}
	p.mustOpen()
	waitFor(t, 10*time.Second, "the window to close", func() bool {
		v, _ := in.node.FSM().Volume("a")
		return v.CopySince == 0
	})
	checkWindowClosed(t, in, p, journalOf(t, in, last))
	sameImage(t, "intermediate after the window closed", in.volume("a", blocks), md)
}
