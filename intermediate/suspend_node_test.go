package intermediate_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// lastOpened returns the CoordinateOpened of the secondary's latest
// stream.
func (s *fakeSecondary) lastOpened() *wire.CoordinateOpened {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.opened
}

// TestSuspendLaggingSecondaryAndResync: with a small journal budget, a
// secondary that stops answering is suspended instead of the primary
// being refused with JOURNAL_FULL; the journal is trimmed past it and the
// other secondary keeps validating; status shows it suspended with its
// dirty regions. When it comes back, its hello resumes it, opened.resync
// is set, ReadRegions gives exactly the marked regions with the
// intermediate volume's content, the journal holds the redo, and once it
// applied the marked seq the bitmap is cleared.
func TestSuspendLaggingSecondaryAndResync(t *testing.T) {
	const budget = 1 << 20
	const blocks = 1024
	c := coordCluster(t, 1, func(cfg *intermediate.Config) {
		cfg.JournalBudget = budget
		cfg.SuspendThreshold = budget / 2
		cfg.TrimInterval = 20 * time.Millisecond
	})
	tn := c.leader(15 * time.Second)
	fsm := tn.node.FSM()
	pc := newTestClient(t, c.addrs())
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	va, err := pc.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 1, BlockCount: blocks})
	if err != nil {
		t.Fatal(err)
	}
	s1 := newFakeSecondary(t, "s1", "a", c.maxValidated)
	s2 := newFakeSecondary(t, "s2", "a", c.maxValidated)
	defer s1.check()
	defer s2.check()
	s1.connect(c.addrs())
	s2.connect(c.addrs())

	// submit writes n one-block batches spread over the volume, reports
	// them durable at the primary and stages them at s1 (and s2 when it
	// is up).
	i := 0
	var last uint64
	submit := func(n int, stageS2 bool) {
		t.Helper()
		for range n {
			data := make([]byte, wire.BlockSize)
			copy(data, fmt.Sprintf("batch %d", i))
			ack, err := va.Submit(ctx, []*wire.Block{{Index: uint64(i*37) % blocks, Data: data}})
			if err != nil {
				t.Fatalf("submit %d: %v", i, err)
			}
			i++
			last = ack.Seq
		}
		va.Report(&wire.PrimaryReport{State: "PAIR", DurableSeq: last})
		s1.stage(last)
		if stageS2 {
			s2.stage(last)
		}
	}
	submit(20, true)
	waitFor(t, 10*time.Second, "both applied", func() bool {
		a1, _, _ := s1.state()
		a2, _, _ := s2.state()
		return a1 == last && a2 == last
	})
	s2Applied, _, _ := s2.state()

	// s2 stops answering; the primary writes three budgets' worth. The
	// leader must have seen it go (else, both connected at one point,
	// either may be suspended first).
	s2.disconnect()
	waitFor(t, 10*time.Second, "the leader to see s2 disconnected", func() bool {
		st, err := pc.Status(ctx)
		if err != nil {
			return false
		}
		for _, sec := range st.GetSecondaries() {
			if sec.GetId() == "s2" {
				return !sec.GetConnected()
			}
		}
		return false
	})
	for range 3 * budget / wire.BlockSize / 32 {
		submit(32, false)
		// Once s2 is suspended, s1 can follow: keep the writer at its pace,
		// else on a slow machine (GOMAXPROCS=1 and -race) s1 itself lags
		// the journal past the threshold and is rightly suspended too.
		if info, _ := fsm.Secondary("s2"); info.Suspended {
			waitFor(t, 10*time.Second, "s1 to apply the last batch", func() bool {
				a1, _, _ := s1.state()
				return a1 == last
			})
		}
	}
	waitFor(t, 10*time.Second, "s1 validated the last batch", func() bool {
		a1, _, _ := s1.state()
		return fsm.Validated() == last && a1 == last
	})
	// The secondary that is down was suspended, not the one it held back
	// (both had applied the same point).
	if info, _ := fsm.Secondary("s1"); info.Suspended || info.DirtyRegions != 0 {
		t.Fatalf("s1 suspended: %+v", info)
	}
	if _, n1, _ := s1.state(); n1 != 1 {
		t.Fatalf("s1 connected %d times, want once (never suspended)", n1)
	}
	info, _ := fsm.Secondary("s2")
	if !info.Suspended || info.ResumeFrom > s2Applied || info.DirtyRegions == 0 {
		t.Fatalf("s2 after the journal filled up: %+v (it applied %d)", info, s2Applied)
	}
	if st := fsm.Stats(); st.JournalStart <= s2Applied+1 || st.JournalBytes > budget {
		t.Fatalf("journal from seq %d with %d bytes: not trimmed past s2 (applied %d)", st.JournalStart, st.JournalBytes, s2Applied)
	}
	waitFor(t, 10*time.Second, "status with s2 suspended", func() bool {
		st := statusOf(t, tn.node)
		ss := secondaryStatus(st, "s2")
		return ss.GetSuspended() && ss.GetDirtyRegions() == info.DirtyRegions && st.GetHeldBy() == "" &&
			!secondaryStatus(st, "s1").GetSuspended()
	})

	// s2 comes back with its old position: resumed, told to resync.
	s2.connect(c.addrs())
	waitFor(t, 10*time.Second, "s2 resumed", func() bool {
		info, _ := fsm.Secondary("s2")
		_, _, up := s2.state()
		return up && !info.Suspended && s2.lastOpened() != nil
	})
	if !s2.lastOpened().GetResync() {
		t.Fatalf("opened %v, want resync", s2.lastOpened())
	}
	info, _ = fsm.Secondary("s2")
	ranges, marked, _ := fsm.SecondaryBitmap("s2")
	want := map[uint64]bool{}
	for _, r := range ranges {
		for b := r.First * wire.RegionBlocks; b < min((r.First+r.Count)*wire.RegionBlocks, blocks); b++ {
			want[b] = true
		}
	}
	if marked == 0 || len(want) != int(info.DirtyRegions)*wire.RegionBlocks {
		t.Fatalf("bitmap %v marked %d, %d blocks for %d regions", ranges, marked, len(want), info.DirtyRegions)
	}
	rc := newTestClient(t, c.addrs())
	got := map[uint64]bool{}
	var startSeq, endSeq, redoAfter, markedSeq uint64
	chunks := 0
	err = rc.ReadRegions(ctx, "s2", blocks, func(r *wire.ReadVolumeResponse) error {
		if chunks == 0 {
			startSeq, redoAfter = r.GetStartSeq(), r.GetRedoAfter()
		}
		chunks++
		if r.GetDone() {
			endSeq, markedSeq = r.GetEndSeq(), r.GetMarkedSeq()
			return nil
		}
		if r.GetBlockCount() > 256 {
			t.Errorf("chunk of %d blocks", r.GetBlockCount())
		}
		p := make([]byte, wire.BlockSize)
		for k := uint64(0); k < uint64(r.GetBlockCount()); k++ {
			b := r.GetFirstBlock() + k
			got[b] = true
			if err := fsm.ReadVolumeBlock("a", b, p); err != nil {
				return err
			}
			var data []byte
			if len(r.GetData()) > 0 {
				data = r.GetData()[k*wire.BlockSize : (k+1)*wire.BlockSize]
			} else {
				data = make([]byte, wire.BlockSize)
			}
			if !bytes.Equal(data, p) {
				t.Errorf("block %d differs from the intermediate volume", b)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("read %d blocks, the bitmap marks %d", len(got), len(want))
	}
	for b := range want {
		if !got[b] {
			t.Fatalf("marked block %d not read", b)
		}
	}
	vol, _ := fsm.Volume("a")
	if markedSeq != marked || redoAfter != vol.TrimmedSeq || startSeq != last || endSeq != last || redoAfter < s2Applied {
		t.Fatalf("start %d end %d redo after %d marked %d; want start = end = %d, redo after the trimmed seq %d, marked %d",
			startSeq, endSeq, redoAfter, markedSeq, last, vol.TrimmedSeq, marked)
	}
	// The redo is in the journal (s2 holds trimming again), even after a
	// few trim passes.
	time.Sleep(100 * time.Millisecond)
	if _, compacted, err := fsm.Fetch("a", redoAfter, 0); err != nil || compacted {
		t.Fatalf("fetch after redo_after %d: compacted %t, %v", redoAfter, compacted, err)
	}

	// s2 applies the regions and the redo, and catches up: the bitmap is
	// cleared once it applied the marked seq.
	s2.stage(last)
	waitFor(t, 10*time.Second, "s2 applied and its bitmap cleared", func() bool {
		a2, _, _ := s2.state()
		info, _ := fsm.Secondary("s2")
		return a2 == last && info.MarkedSeq == 0 && info.DirtyRegions == 0 && !info.Suspended
	})
	waitFor(t, 10*time.Second, "status after the resync", func() bool {
		ss := secondaryStatus(statusOf(t, tn.node), "s2")
		return !ss.GetSuspended() && ss.GetDirtyRegions() == 0 && ss.GetConnected()
	})
	if st := fsm.Stats(); st.JournalBytes > budget {
		t.Fatalf("journal of %d bytes", st.JournalBytes)
	}
}
