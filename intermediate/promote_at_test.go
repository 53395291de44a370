package intermediate

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate/wire"
)

func ftPromoteAt(id, by string, at time.Time, atSeq, fromEpoch uint64) *wire.Entry {
	return &wire.Entry{Op: &wire.Entry_PromoteGroup{PromoteGroup: &wire.PromoteGroup{PromotionId: id, By: by, TimeUnixNano: at.UnixNano(),
		AtSeq: atSeq, FromEpoch: fromEpoch}}}
}

func (h *ftHarness) promoteAt(id string, atSeq, fromEpoch uint64) *PromoteResult {
	h.t.Helper()
	res, ok := h.apply(ftPromoteAt(id, "late host", ftPromoteTime, atSeq, fromEpoch)).(*PromoteResult)
	if !ok {
		h.t.Fatalf("promote %q at %d from epoch %d: result %T", id, atSeq, fromEpoch, res)
	}
	return res
}

// ftPromoted is a PromotedVolume with its after regions as a list, for
// comparing.
type ftPromoted struct {
	Name                   string
	Epoch                  uint64
	LastSeq, LastVolumeSeq uint64
	BlockCount             uint64
	After                  []uint64
	Complete               bool
}

// ftPromotedOf lists the volumes of a promotion's result, checking the
// geometry of their after-regions bitmaps.
func ftPromotedOf(t testing.TB, res *PromoteResult) []ftPromoted {
	t.Helper()
	var out []ftPromoted
	for _, v := range res.Volumes {
		p := ftPromoted{Name: v.Name, Epoch: v.Epoch, LastSeq: v.LastSeq, LastVolumeSeq: v.LastVolumeSeq, BlockCount: v.BlockCount,
			Complete: v.JournalComplete}
		if b := v.AfterRegions; b != nil {
			if b.BlockCount() != v.BlockCount || b.RegionSize() != changedRegionSize || b.Count() == 0 {
				t.Fatalf("volume %q of %d blocks: after-regions bitmap of %d blocks in regions of %d bytes, %d set",
					v.Name, v.BlockCount, b.BlockCount(), b.RegionSize(), b.Count())
			}
			p.After = slices.Collect(b.Iterate)
		}
		out = append(out, p)
	}
	return out
}

// ftAfterRegions computes, from the group's journal, the regions of the
// batches of volume with a seq in (seq, lastSeq], and whether the journal
// holds every batch of the volume in that range: what a promotion's after
// regions must be.
func ftAfterRegions(f *FSM, volume string, seq, lastSeq uint64) ([]uint64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	set := map[uint64]bool{}
	for _, cb := range f.st.journal {
		if cb.GetBatch().GetVolume() != volume || cb.GetSeq() <= seq || cb.GetSeq() > lastSeq {
			continue
		}
		for _, b := range cb.GetBatch().GetBlocks() {
			set[b.GetIndex()/wire.RegionBlocks] = true
		}
	}
	var out []uint64
	for r := range set {
		out = append(out, r)
	}
	slices.Sort(out)
	rec := f.st.volumes[volume]
	return out, rec.trimmedSeq <= seq || lastSeq <= seq
}

// ftCheckAfter checks every volume's after regions of a promotion's
// result against the journal.
func ftCheckAfter(t testing.TB, f *FSM, what string, res *PromoteResult) {
	t.Helper()
	for _, v := range ftPromotedOf(t, res) {
		after, complete := ftAfterRegions(f, v.Name, res.Seq, v.LastSeq)
		if !slices.Equal(v.After, after) || v.Complete != complete {
			t.Fatalf("%s: volume %q: after regions %v (journal complete %t), the journal says %v (%t)", what, v.Name, v.After, v.Complete,
				after, complete)
		}
	}
}

// ftLateState builds a group of two volumes at epoch 1 whose batches
// write, by seq: 1 a{0}, 2 b{1}, 3 a{17}, 4 a{40}, 5 b{20}, 6 a{18}
// (regions of 16 blocks: a 0, b 0, a 1, a 2, b 1, a 1).
func ftLateState(t testing.TB, h *ftHarness) {
	t.Helper()
	h.register("a", 64, 1)
	h.register("b", 32, 1)
	h.submit(ftBatch("a", 1, 1, 0), ftBatch("b", 1, 1, 1))
	h.submit(ftBatch("a", 1, 2, 17))
	h.submit(ftBatch("a", 1, 3, 40), ftBatch("b", 1, 2, 20))
	h.submit(ftBatch("a", 1, 4, 18))
	if st := h.f.Stats(); st.CommittedSeq != 6 {
		t.Fatalf("late state at seq %d, want 6", st.CommittedSeq)
	}
}

// TestFSMPromoteAtPoint: a promotion recorded late, at a point before the
// valid counter, records that point as its seq, fences the old primaries,
// and answers per volume the regions of its batches after the point (the
// journal holds them all); running it again answers the same, also once
// the new primary wrote, and says the journal is incomplete once it was
// trimmed past the point; a snapshot and a replay keep all of it.
func TestFSMPromoteAtPoint(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	ftLateState(t, h)
	res := h.promoteAt("late", 2, 1)
	want := []ftPromoted{
		{Name: "a", Epoch: 2, LastSeq: 6, LastVolumeSeq: 4, BlockCount: 64, After: []uint64{1, 2}, Complete: true},
		{Name: "b", Epoch: 2, LastSeq: 5, LastVolumeSeq: 2, BlockCount: 32, After: []uint64{1}, Complete: true},
	}
	if res.Err != nil || res.Already || res.Seq != 2 || !reflect.DeepEqual(ftPromotedOf(t, res), want) {
		t.Fatalf("promote at seq 2: %+v (%+v), want seq 2 and %+v", res, ftPromotedOf(t, res), want)
	}
	ftCheckAfter(t, h.f, "promote at seq 2", res)
	for _, v := range want {
		ps := h.f.Promotions(v.Name)
		wantP := []PromotionInfo{{ID: "late", Epoch: 2, Seq: 2, Time: ftPromoteTime, By: "late host", LastSeq: v.LastSeq,
			LastVolumeSeq: v.LastVolumeSeq}}
		if !reflect.DeepEqual(ps, wantP) {
			t.Fatalf("history of %q: %+v, want %+v", v.Name, ps, wantP)
		}
	}
	// The changed-since-promotion bitmap marks every batch the journal
	// holds, those after the point included.
	if rs, ok := h.f.ChangedSincePromotion("a"); !ok || !reflect.DeepEqual(rs, []RegionRange{{First: 0, Count: 3}}) {
		t.Fatalf("changed since the promotion of a: %v, %t", rs, ok)
	}
	ftCheckInvariants(t, h.f)
	ftStaleEpoch(t, "old primary's batch after the late promotion", h.submit(ftBatch("a", 1, 5, 0))[0].Err, 2)

	// Again: the recorded values, whatever the entry says, changing
	// nothing.
	before := ftDumpOf(t, h.f)
	again := h.promoteAt("late", 5, 7)
	if again.Err != nil || !again.Already || again.Seq != 2 || !reflect.DeepEqual(ftPromotedOf(t, again), want) {
		t.Fatalf("promote again: %+v (%+v), want already and %+v", again, ftPromotedOf(t, again), want)
	}
	ftSameState(t, "after running the promotion again", ftDumpOf(t, h.f), before)

	// The new primary opens at the new epoch and goes on after the last
	// volume seq; its batches are not after regions of the promotion.
	if reg := h.register("a", 64, 2); reg.Err != nil || reg.Volume.LastVolumeSeq != 4 || reg.Volume.Epoch != 2 {
		t.Fatalf("open at the new epoch: %+v", reg)
	}
	if r := h.submit(ftBatch("a", 2, 5, 60))[0]; r.Err != nil || r.Seq != 7 {
		t.Fatalf("new primary's first batch: %+v, want seq 7", r)
	}
	if again := h.promoteAt("late", 0, 0); !again.Already || !reflect.DeepEqual(ftPromotedOf(t, again), want) {
		t.Fatalf("promote again after the new primary's batch: %+v, want %+v", ftPromotedOf(t, again), want)
	}

	// Trimmed past the point: a's journal lost seq 3 and 4, b's only seq 2.
	h.apply(ftTrim(4))
	trimmed := h.promoteAt("late", 0, 0)
	wantTrimmed := slices.Clone(want)
	wantTrimmed[0].After, wantTrimmed[0].Complete = []uint64{1}, false
	if !trimmed.Already || !reflect.DeepEqual(ftPromotedOf(t, trimmed), wantTrimmed) {
		t.Fatalf("promote again after a trim: %+v, want %+v", ftPromotedOf(t, trimmed), wantTrimmed)
	}
	ftCheckAfter(t, h.f, "promote again after a trim", trimmed)
	ftCheckInvariants(t, h.f)

	// A snapshot restores the late promotion, and so does a replay.
	dst := ftNew(t, nil, "/dst")
	if err := ftRestore(dst.f, ftSnapshot(t, h.f)); err != nil {
		t.Fatalf("restore a snapshot with a late promotion: %v", err)
	}
	ftSameDump(t, "restored", ftDumpOf(t, dst.f), ftDumpOf(t, h.f))
	ftCheckInvariants(t, dst.f)
	ref := ftNew(t, nil, "/ref")
	for _, l := range h.log {
		ref.f.Apply(l)
	}
	ftSameDump(t, "replayed", ftDumpOf(t, ref.f), ftDumpOf(t, h.f))
	for _, o := range []*ftHarness{dst, ref} {
		if r := o.promoteAt("late", 0, 0); !reflect.DeepEqual(r, trimmed) {
			t.Fatalf("promote again on a copy: %+v, want %+v", r, trimmed)
		}
	}
	if h.fatals.Load() != 0 {
		t.Fatalf("the state machine stopped: %v", h.f.Failed())
	}
}

// TestFSMPromoteAtRefusals: a late promotion at a point above the valid
// counter or below a volume's last promotion, or from an epoch a volume
// is no longer at, is refused and changes nothing; a promotion at the
// counter answers no after regions.
func TestFSMPromoteAtRefusals(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	if res := h.promoteAt("p0", 1, 0); !errors.Is(res.Err, wire.ErrBadRequest) || !strings.Contains(res.Err.Error(), "above the valid counter 0") {
		t.Fatalf("promote an empty group at seq 1: %+v", res)
	}
	ftLateState(t, h)
	h.apply(ftSetEpoch("b", 3))
	before := ftDumpOf(t, h.f)
	for _, tc := range []struct {
		name      string
		at, from  uint64
		sentinel  error
		want      string
		wantEpoch uint64
	}{
		{"above the counter", 7, 0, wire.ErrBadRequest, "at seq 7 is above the valid counter 6", 0},
		{"from another epoch", 2, 2, wire.ErrStaleEpoch, `volume "a" is at epoch 1, the promotion is from epoch 2`, 1},
		{"a volume at another epoch", 2, 1, wire.ErrStaleEpoch, `volume "b" is at epoch 3, the promotion is from epoch 1`, 3},
	} {
		res := h.promoteAt("p1", tc.at, tc.from)
		if !errors.Is(res.Err, tc.sentinel) || !strings.Contains(res.Err.Error(), tc.want) || len(res.Volumes) != 0 || res.Already {
			t.Errorf("%s: %+v, want %v %q", tc.name, res, tc.sentinel, tc.want)
		}
		if tc.wantEpoch != 0 {
			ftStaleEpoch(t, tc.name, res.Err, tc.wantEpoch)
		}
	}
	ftSameState(t, "after refused promotions", ftDumpOf(t, h.f), before)

	// At the counter: nothing after the point, the journal complete.
	res := h.promoteAt("p1", 6, 0)
	if res.Err != nil || res.Seq != 6 {
		t.Fatalf("promote at the counter: %+v", res)
	}
	for _, v := range ftPromotedOf(t, res) {
		if v.After != nil || !v.Complete {
			t.Fatalf("promote at the counter: volume %+v, want no after regions and the journal complete", v)
		}
	}
	// A point below the last promotion's is refused; at it is not.
	h.submit(ftBatch("a", 2, 5, 1))
	before = ftDumpOf(t, h.f)
	res = h.promoteAt("p2", 5, 0)
	if !errors.Is(res.Err, wire.ErrBadRequest) || !strings.Contains(res.Err.Error(), `at seq 5 is below seq 6 of promotion "p1" of volume "a"`) {
		t.Fatalf("promote below the last promotion: %+v", res)
	}
	ftSameState(t, "after a promotion below the last one", ftDumpOf(t, h.f), before)
	res = h.promoteAt("p2", 6, 2)
	if res.Err == nil {
		t.Fatalf("promote from epoch 2 with b at epoch 4: %+v", res)
	}
	ftStaleEpoch(t, "promote from epoch 2 with b at epoch 4", res.Err, 4)
	h.apply(ftSetEpoch("a", 4))
	res = h.promoteAt("p2", 6, 4)
	if res.Err != nil || res.Seq != 6 || len(res.Volumes) != 2 || res.Volumes[0].Epoch != 5 || res.Volumes[1].Epoch != 5 {
		t.Fatalf("promote at the last promotion's seq from epoch 4: %+v", res)
	}
	ftCheckAfter(t, h.f, "promote at the last promotion's seq", res)
	if got := ftPromotedOf(t, res)[0]; !slices.Equal(got.After, []uint64{0}) || !got.Complete {
		t.Fatalf("volume a promoted at seq 6 after seq 7: %+v, want region 0 after", got)
	}
	ftCheckInvariants(t, h.f)
	if h.fatals.Load() != 0 {
		t.Fatalf("a refused promotion stopped the state machine: %v", h.f.Failed())
	}
}

// TestFSMAfterRegionsMatchJournal: over late promotions at points of a
// workload's journal, with trims before some of them (one past the
// point), the after regions are those the journal says.
func TestFSMAfterRegionsMatchJournal(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 64, 1)
	h.register("b", 32, 1)
	idx := []uint64{0, 17, 40, 18, 63, 33, 2, 50}
	epoch := uint64(1)
	vs := map[string]uint64{}
	incomplete := 0
	for round := range 6 {
		for i, k := range idx {
			name, blocks := "a", uint64(64)
			if (i+round)%3 == 0 {
				name, blocks = "b", 32
			}
			vs[name]++
			if r := h.submit(ftBatch(name, epoch, vs[name], k%blocks))[0]; r.Err != nil {
				t.Fatalf("round %d: batch %d of %q: %v", round, vs[name], name, r.Err)
			}
		}
		at := h.f.Stats().CommittedSeq - uint64(round+1)
		if round%2 == 1 {
			h.apply(ftTrim(at - 1 + uint64(round%3)))
		}
		res := h.promoteAt(fmt.Sprintf("p%d", round), at, epoch)
		if res.Err != nil || res.Seq != at || len(res.Volumes) != 2 {
			t.Fatalf("round %d: promote at %d: %+v", round, at, res)
		}
		ftCheckAfter(t, h.f, fmt.Sprintf("round %d: promotion at %d", round, at), res)
		for _, v := range res.Volumes {
			if !v.JournalComplete {
				incomplete++
			}
		}
		epoch++
	}
	if incomplete == 0 {
		t.Fatal("no promotion found the journal trimmed past its point")
	}
	ftCheckInvariants(t, h.f)
}
