package intermediate

import (
	"errors"
	"strings"
	"testing"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// ftCopying returns a sealed batch with the copying flag set.
func ftCopying(volume string, epoch, volumeSeq uint64, indexes ...uint64) *wire.Batch {
	b := ftBatch(volume, epoch, volumeSeq, indexes...)
	b.Copying = true
	return wire.Seal(b)
}

// ftConsistent fails unless the FSM's consistent seq is want, held by
// heldBy, and volume's copy window opened at since.
func ftConsistent(t testing.TB, f *FSM, want uint64, heldBy, volume string, since uint64) {
	t.Helper()
	st := f.Stats()
	if st.ConsistentSeq != want || st.CopyHeldBy != heldBy {
		t.Fatalf("consistent seq %d held by %q, want %d held by %q (valid %d)", st.ConsistentSeq, st.CopyHeldBy, want, heldBy, st.ValidSeq)
	}
	if v, _ := f.Volume(volume); v.CopySince != since {
		t.Fatalf("volume %q: copy window from %d, want %d", volume, v.CopySince, since)
	}
}

// TestFSMCopyWindowHoldsValidatedPoint: a primary's batches sent during
// its COPY or RESYNC open a copy window, in which its volume's image is
// torn; no validated point and no promotion lands inside it, a snapshot
// and a replay keep it, and a batch without the flag closes it.
func TestFSMCopyWindowHoldsValidatedPoint(t *testing.T) {
	mem := blockdev.NewMemFS()
	h := ftNew(t, mem, "/n1")
	h.register("a", 64, 1)
	h.register("b", 64, 1)
	h.submit(ftBatch("a", 1, 1, 0), ftBatch("b", 1, 1, 0)) // seqs 1, 2
	ftConsistent(t, h.f, 2, "", "a", 0)

	// a resynchronises: seq 3 opens the window; b's batches go on.
	h.submit(ftCopying("a", 1, 2, 16, 17)) // 3
	h.submit(ftBatch("b", 1, 2, 5))        // 4
	h.submit(ftCopying("a", 1, 3, 1))      // 5: a write during the resync
	ftConsistent(t, h.f, 2, "a", "a", 3)

	// The validated point stops below the window.
	err, _ := h.apply(ftRecordValidated(3)).(error)
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.ErrorCode_ERROR_CODE_BAD_REQUEST || !strings.Contains(err.Error(), `copy window of volume "a"`) {
		t.Fatalf("validated seq 3 inside the window: %v, want a refusal naming volume a", err)
	}
	if res, ok := h.apply(ftRecordValidated(2)).(*ValidatedResult); !ok || res.Validated != 2 {
		t.Fatalf("validated seq 2 below the window: %+v", res)
	}
	if h.fatals.Load() != 0 {
		t.Fatalf("a refused validated seq stopped the state machine: %v", h.fatal.Load())
	}

	// A snapshot carries the window, and a replay of the log rebuilds it.
	want := ftDumpOf(t, h.f)
	dst := ftNew(t, mem, "/n2")
	if err := ftRestore(dst.f, ftSnapshot(t, h.f)); err != nil {
		t.Fatalf("restore: %v", err)
	}
	ftSameDump(t, "restored", ftDumpOf(t, dst.f), want)
	ftConsistent(t, dst.f, 2, "a", "a", 3)
	replay := ftNew(t, mem, "/n3")
	for _, l := range h.log {
		replay.f.Apply(l)
	}
	ftSameDump(t, "replayed", ftDumpOf(t, replay.f), want)

	// A second window of b, opened later, does not lower the point.
	h.submit(ftCopying("b", 1, 3, 9)) // 6
	ftConsistent(t, h.f, 2, "a", "b", 6)

	// a's window closes (the end-of-copy batch): the point is b's now.
	h.submit(ftBatch("a", 1, 4, 0)) // 7
	ftConsistent(t, h.f, 5, "b", "a", 0)
	h.submit(ftBatch("b", 1, 4, 0)) // 8
	ftConsistent(t, h.f, 8, "", "b", 0)
	if res, ok := h.apply(ftRecordValidated(8)).(*ValidatedResult); !ok || res.Validated != 8 {
		t.Fatalf("validated seq 8 once every window closed: %+v", res)
	}
}

// TestPromoteBelowOpenCopyWindow: a promotion while a primary's copy
// window is open lands just below the window, and every volume's batches
// after that point are after regions, which the new primaries' resyncs
// overwrite; a late promotion inside the window is refused.
func TestPromoteBelowOpenCopyWindow(t *testing.T) {
	h := ftNew(t, nil, "/n1")
	h.register("a", 64, 1)
	h.register("b", 64, 1)
	h.submit(ftBatch("a", 1, 1, 0), ftBatch("b", 1, 1, 0)) // seqs 1, 2
	h.submit(ftCopying("a", 1, 2, 20))                     // 3
	h.submit(ftBatch("b", 1, 2, 40))                       // 4

	late := &wire.Entry{Op: &wire.Entry_PromoteGroup{PromoteGroup: &wire.PromoteGroup{PromotionId: "late", By: "t",
		TimeUnixNano: ftPromoteTime.UnixNano(), AtSeq: 3, FromEpoch: 1}}}
	if res := h.apply(late).(*PromoteResult); res.Err == nil || !strings.Contains(res.Err.Error(), "open copy window") {
		t.Fatalf("a late promotion at seq 3, inside a's window: %+v", res)
	}

	res := h.promote("p1", "t", ftPromoteTime)
	if res.Err != nil || res.Seq != 2 {
		t.Fatalf("promotion: seq %d, err %v; want seq 2, below a's window", res.Seq, res.Err)
	}
	for _, v := range res.Volumes {
		wantRegion := map[string]uint64{"a": 20 / wire.RegionBlocks, "b": 40 / wire.RegionBlocks}[v.Name]
		if v.AfterRegions == nil || v.AfterRegions.Count() != 1 || !v.AfterRegions.IsSet(wantRegion) || !v.JournalComplete {
			t.Fatalf("volume %s: after regions %v (complete %v), want exactly region %d", v.Name, v.AfterRegions, v.JournalComplete, wantRegion)
		}
		if v.Epoch != 2 {
			t.Fatalf("volume %s: epoch %d after the promotion", v.Name, v.Epoch)
		}
	}
	if p := h.f.Promotions("a"); len(p) != 1 || p[0].Seq != 2 {
		t.Fatalf("a's promotion history: %+v", p)
	}
	// The window stays open until the new primary's resync ends it: the
	// image at the intermediate is still torn.
	ftConsistent(t, h.f, 2, "a", "a", 3)
	h.register("a", 64, 2)
	h.submit(ftCopying("a", 2, 3, 20)) // 5: the new primary's resync
	h.submit(ftBatch("a", 2, 4, 0))    // 6: its end
	ftConsistent(t, h.f, 6, "", "a", 0)
}

// TestBatchCRCCoversCopying: the copying flag is checksummed, and a batch
// without it has the CRC it had before the flag existed.
func TestBatchCRCCoversCopying(t *testing.T) {
	plain := ftBatch("a", 1, 1, 0, 1)
	crc := plain.GetCrc()
	flipped := ftBatch("a", 1, 1, 0, 1)
	flipped.Copying = true
	if err := wire.CheckBatch(flipped, 64); !errors.Is(err, wire.ErrBadCRC) {
		t.Fatalf("copying flag set after sealing: %v, want ErrBadCRC", err)
	}
	if wire.Seal(flipped).GetCrc() == crc {
		t.Fatal("the copying flag does not change the CRC")
	}
	if err := wire.CheckBatch(flipped, 64); err != nil {
		t.Fatalf("sealed with the flag: %v", err)
	}
	flipped.Copying = false
	if err := wire.CheckBatch(flipped, 64); !errors.Is(err, wire.ErrBadCRC) {
		t.Fatalf("copying flag cleared after sealing: %v, want ErrBadCRC", err)
	}
	if wire.Seal(flipped).GetCrc() != crc {
		t.Fatal("a batch without the flag changed its CRC")
	}
}
