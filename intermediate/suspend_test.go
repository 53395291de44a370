package intermediate

import (
	"errors"
	"reflect"
	"testing"

	"github.com/tricopy/tricopy/intermediate/wire"
)

func ftSuspend(id string, applied uint64) *wire.Entry {
	return &wire.Entry{Op: &wire.Entry_SuspendSecondary{SuspendSecondary: &wire.SuspendSecondary{Id: id, AppliedSeq: applied}}}
}

func ftClear(id string, upTo uint64) *wire.Entry {
	return &wire.Entry{Op: &wire.Entry_ClearSecondaryBitmap{ClearSecondaryBitmap: &wire.ClearSecondaryBitmap{Id: id, UpToSeq: upTo}}}
}

func ftTrim(upTo uint64) *wire.Entry {
	return &wire.Entry{Op: &wire.Entry_TrimJournal{TrimJournal: &wire.TrimJournal{UpToSeq: upTo}}}
}

func (h *ftHarness) suspendResult(e *wire.Entry) *SuspendResult {
	h.t.Helper()
	res, ok := h.apply(e).(*SuspendResult)
	if !ok {
		h.t.Fatalf("%v: result %T", e, res)
	}
	return res
}

func ftBitmap(t testing.TB, f *FSM, id string) ([]RegionRange, uint64) {
	t.Helper()
	rs, marked, ok := f.SecondaryBitmap(id)
	if !ok {
		t.Fatalf("secondary %q not registered", id)
	}
	return rs, marked
}

// TestFSMSuspendMarkResumeClear: a suspended secondary's bitmap gets the
// regions of the batches of its volume dropped above its resume point,
// and only those; others' bitmaps stay empty; a registration resumes it
// and keeps the bitmap; a clear empties it only if nothing later marked it.
func TestFSMSuspendMarkResumeClear(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 70, 1) // 5 regions, the last one of 6 blocks
	h.register("b", 16, 1)
	h.apply(ftRegisterSecondary("sa", "a", ""))
	h.apply(ftRegisterSecondary("sa2", "a", ""))
	h.apply(ftRegisterSecondary("sb", "b", ""))
	h.submit(ftBatch("a", 1, 1, 0))      // seq 1
	h.submit(ftBatch("a", 1, 2, 17, 18)) // seq 2: region 1
	h.submit(ftBatch("b", 1, 1, 1))      // seq 3
	h.submit(ftBatch("a", 1, 3, 40, 69)) // seq 4: regions 2 and 4
	h.submit(ftBatch("a", 1, 4, 63))     // seq 5: region 3

	if res := h.suspendResult(ftSuspend("nope", 1)); !errors.Is(res.Err, wire.ErrUnknownVolume) || res.Suspended {
		t.Fatalf("suspend an unknown secondary: %+v", res)
	}
	ch := h.f.Changed()
	res := h.suspendResult(ftSuspend("sa", 1))
	if res.Err != nil || !res.Suspended || !res.Secondary.Suspended || res.Secondary.ResumeFrom != 1 {
		t.Fatalf("suspend sa: %+v", res)
	}
	select {
	case <-ch:
	default:
		t.Fatal("a suspension did not signal Changed")
	}
	// Again: idempotent, a higher point does not raise the resume point, a
	// lower one lowers it (marking more is harmless).
	if res := h.suspendResult(ftSuspend("sa", 3)); res.Suspended || res.Secondary.ResumeFrom != 1 {
		t.Fatalf("suspend sa again at 3: %+v", res)
	}
	if res := h.suspendResult(ftSuspend("sb", 1000)); res.Secondary.ResumeFrom != 5 {
		t.Fatalf("suspend sb above the counter: resume from %d, want the counter 5", res.Secondary.ResumeFrom)
	}
	h.suspendResult(ftSuspend("sb", 0))

	h.apply(ftTrim(4))
	rs, marked := ftBitmap(t, h.f, "sa")
	if want := []RegionRange{{1, 2}, {4, 1}}; !reflect.DeepEqual(rs, want) || marked != 4 {
		t.Fatalf("sa's bitmap after trimming to 4: %v marked %d, want %v marked 4 (seq 1 is at its resume point)", rs, marked, want)
	}
	if rs, marked := ftBitmap(t, h.f, "sa2"); len(rs) != 0 || marked != 0 {
		t.Fatalf("sa2 (not suspended) got a bitmap: %v %d", rs, marked)
	}
	if rs, marked := ftBitmap(t, h.f, "sb"); !reflect.DeepEqual(rs, []RegionRange{{0, 1}}) || marked != 3 {
		t.Fatalf("sb's bitmap: %v marked %d", rs, marked)
	}
	if info, _ := h.f.Secondary("sa"); info.DirtyRegions != 3 || info.MarkedSeq != 4 || !info.Suspended {
		t.Fatalf("sa: %+v", info)
	}
	ftCheckInvariants(t, h.f)

	// The hello's registration resumes sa; the bitmap stays, and later
	// trims do not mark it.
	r := h.secondary(ftRegisterSecondary("sa", "a", ""))
	if !r.Resumed || r.Updated || r.Created || r.Secondary.Suspended || r.Secondary.DirtyRegions != 3 {
		t.Fatalf("resume sa: %+v", r)
	}
	if r := h.secondary(ftRegisterSecondary("sa", "a", "")); r.Resumed {
		t.Fatalf("registering a running secondary resumed it: %+v", r)
	}
	h.apply(ftTrim(5))
	if rs, marked := ftBitmap(t, h.f, "sa"); !reflect.DeepEqual(rs, []RegionRange{{1, 2}, {4, 1}}) || marked != 4 {
		t.Fatalf("sa's bitmap after a trim while resumed: %v %d", rs, marked)
	}
	// Clear: not below the marked seq; unknown is a refusal.
	if res := h.suspendResult(ftClear("sa", 3)); res.Cleared || res.Secondary.DirtyRegions != 3 {
		t.Fatalf("clear below the marked seq: %+v", res)
	}
	if res := h.suspendResult(ftClear("nope", 3)); !errors.Is(res.Err, wire.ErrUnknownVolume) {
		t.Fatalf("clear unknown: %+v", res)
	}
	if res := h.suspendResult(ftClear("sa", 4)); !res.Cleared || res.Secondary.DirtyRegions != 0 || res.Secondary.MarkedSeq != 0 {
		t.Fatalf("clear at the marked seq: %+v", res)
	}
	if res := h.suspendResult(ftClear("sa", 9)); res.Cleared {
		t.Fatalf("clear an empty bitmap: %+v", res)
	}
	// A removal drops the bitmap; a new registration covers from the
	// volume's trimmed seq.
	h.apply(ftRemoveSecondary("sb"))
	if r := h.secondary(ftRegisterSecondary("sb", "b", "")); r.Secondary.CoveredFrom != 3 || r.Secondary.DirtyRegions != 0 || r.Secondary.Suspended {
		t.Fatalf("sb registered again: %+v", r.Secondary)
	}
	if h.f.Failed() != nil || h.fatals.Load() != 0 {
		t.Fatalf("refusals stopped the state machine: %v", h.f.Failed())
	}
	ftCheckInvariants(t, h.f)
}

func TestRegionSetRanges(t *testing.T) {
	var s regionSet
	for _, r := range []uint64{0, 1, 2, 63, 64, 65, 127, 128, 300, 1 << 35} {
		s.mark(r)
	}
	s.mark(2)
	want := []RegionRange{{0, 3}, {63, 3}, {127, 2}, {300, 1}, {1 << 35, 1}}
	if got := s.ranges(); !reflect.DeepEqual(got, want) || s.count != 10 {
		t.Fatalf("ranges %v count %d, want %v and 10", got, s.count, want)
	}
	back := regionSetOf(want)
	if !reflect.DeepEqual(back.ranges(), want) || back.count != 10 || !back.has(64) || back.has(66) {
		t.Fatalf("rebuilt: %v count %d", back.ranges(), back.count)
	}
	full := regionSetOf([]RegionRange{{5, 200}})
	if got := full.ranges(); !reflect.DeepEqual(got, []RegionRange{{5, 200}}) || full.count != 200 {
		t.Fatalf("a long run: %v count %d", got, full.count)
	}
}

// ftSuspendState builds a state with a suspended secondary and bitmaps.
func ftSuspendState(t testing.TB, h *ftHarness) {
	ftWorkload(t, h, 12)
	h.apply(ftRegisterSecondary("sa", "a", "127.0.0.1:7301"))
	h.apply(ftRegisterSecondary("sb", "b", "127.0.0.1:7302"))
	h.apply(ftRegisterSecondary("sc", "a", ""))
	h.apply(ftSuspend("sa", 2))
	h.apply(ftSuspend("sb", 0))
	h.apply(ftRecordValidated(9))
	h.apply(ftTrim(12))
	h.apply(ftRegisterSecondary("sb", "b", "127.0.0.1:7302")) // resumed, bitmap kept
}

// TestSnapshotBitmapsRoundTrip: suspensions and bitmaps survive a snapshot.
func TestSnapshotBitmapsRoundTrip(t *testing.T) {
	src := ftNew(t, nil, "/src")
	ftSuspendState(t, src)
	want := ftDumpOf(t, src.f)
	sa, _ := src.f.Secondary("sa")
	sb, _ := src.f.Secondary("sb")
	if !sa.Suspended || sa.DirtyRegions == 0 || sb.Suspended || sb.DirtyRegions == 0 {
		t.Fatalf("source state: sa %+v, sb %+v", sa, sb)
	}
	dst := ftNew(t, nil, "/dst")
	if err := ftRestore(dst.f, ftSnapshot(t, src.f)); err != nil {
		t.Fatal(err)
	}
	ftSameDump(t, "restored", ftDumpOf(t, dst.f), want)
	ftCheckInvariants(t, dst.f)
	// The restored state marks as the source does.
	for _, h := range []*ftHarness{src, dst} {
		h.submit(ftBatch("a", 1, 100, 5)) // a gap: refused, nothing changes
		h.apply(ftTrim(1000))
	}
	got, want2 := ftDumpOf(t, dst.f), ftDumpOf(t, src.f)
	if !reflect.DeepEqual(got.Secondaries, want2.Secondaries) || !reflect.DeepEqual(got.Bitmaps, want2.Bitmaps) {
		t.Fatalf("after the same trim: restored %+v %v, source %+v %v", got.Secondaries, got.Bitmaps, want2.Secondaries, want2.Bitmaps)
	}
}

// ftAsVersion3 rewrites a version 4 snapshot whose secondaries are not
// suspended and have empty bitmaps as version 3 wrote it.
func ftAsVersion3(t testing.TB, stream []byte) []byte {
	t.Helper()
	return ftAsVersion(t, stream, snapVersionNoBitmaps, func(m *snapshotMeta) bool {
		for _, s := range m.secondaries {
			if s.suspended || len(s.ranges) != 0 {
				return false
			}
		}
		return true
	})
}

// TestSnapshotRestoresVersion3: a version 3 snapshot restores with its
// secondaries not suspended, empty bitmaps, covered from their volume's
// trimmed seq.
func TestSnapshotRestoresVersion3(t *testing.T) {
	src := ftNew(t, nil, "/src")
	ftWorkload(t, src, 12)
	src.apply(ftTrim(7))
	src.apply(ftRegisterSecondary("sa", "a", "x"))
	src.apply(ftRegisterSecondary("sb", "b", ""))
	src.apply(ftRecordValidated(9))
	want := ftDumpOf(t, src.f)
	old := ftAsVersion3(t, ftSnapshot(t, src.f))
	dst := ftNew(t, nil, "/dst")
	if err := ftRestore(dst.f, old); err != nil {
		t.Fatalf("restore a version 3 snapshot: %v", err)
	}
	ftSameDump(t, "restored from version 3", ftDumpOf(t, dst.f), want)
	ftCheckInvariants(t, dst.f)
	if sa, _ := dst.f.Secondary("sa"); sa.CoveredFrom == 0 {
		t.Fatalf("sa restored from version 3: %+v, want covered from its volume's trimmed seq", sa)
	}
}
