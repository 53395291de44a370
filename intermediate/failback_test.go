package intermediate

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

func ftFailback(id, volume string, bitmap []byte) *wire.Entry {
	return &wire.Entry{Op: &wire.Entry_FailbackSecondary{FailbackSecondary: &wire.FailbackSecondary{Id: id, Volume: volume, Bitmap: bitmap}}}
}

func (h *ftHarness) failback(id, volume string, bitmap []byte) *FailbackResult {
	h.t.Helper()
	res, ok := h.apply(ftFailback(id, volume, bitmap)).(*FailbackResult)
	if !ok {
		h.t.Fatalf("failback %q: result %T", id, res)
	}
	return res
}

// ftPrimaryBitmap encodes a primary bitmap of a volume of blocks blocks in
// regions of regionSize bytes (0: the default) with the regions of the
// given blocks set.
func ftPrimaryBitmap(t testing.TB, blocks uint64, regionSize int, set ...uint64) []byte {
	t.Helper()
	b, err := blockdev.NewBitmap(blocks, regionSize)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range set {
		b.SetBlock(i)
	}
	p, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// ftChanged returns the changed-since-promotion bitmap of a volume; ok is
// false when it has none.
func ftChanged(t testing.TB, f *FSM, volume string) ([]RegionRange, bool) {
	t.Helper()
	rs, ok := f.ChangedSincePromotion(volume)
	v, _ := f.Volume(volume)
	var n uint64
	for _, r := range rs {
		n += r.Count
	}
	if v.ChangedSincePromotion != n {
		t.Fatalf("volume %q: ChangedSincePromotion %d in its record, %d regions in the bitmap", volume, v.ChangedSincePromotion, n)
	}
	return rs, ok
}

// TestFSMChangedSincePromotion: a promotion gives each volume a bitmap
// with the regions of its batches the journal holds (the old primary may
// lack them) marked; every batch committed after it marks its regions,
// a refused one does not; running the promotion again keeps the bitmap,
// a second promotion replaces it; a volume registered later has none. A
// replay of the log reaches the same bitmaps.
func TestFSMChangedSincePromotion(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 70, 1) // 5 regions, the last one of 6 blocks
	h.register("b", 16, 1)
	h.submit(ftBatch("a", 1, 1, 0))      // seq 1: region 0
	h.submit(ftBatch("a", 1, 2, 17, 18)) // seq 2: region 1
	h.submit(ftBatch("b", 1, 1, 1))      // seq 3
	h.submit(ftBatch("a", 1, 3, 40))     // seq 4: region 2
	h.apply(ftTrim(2))                   // the primaries hold seqs 1 and 2
	if rs, ok := ftChanged(t, h.f, "a"); ok || rs != nil {
		t.Fatalf("volume a never promoted: changed %v, %t", rs, ok)
	}
	ftCheckInvariants(t, h.f)

	if res := h.promote("p1", "", ftPromoteTime); res.Err != nil || res.Seq != 4 {
		t.Fatalf("promote: %+v", res)
	}
	if rs, ok := ftChanged(t, h.f, "a"); !ok || !reflect.DeepEqual(rs, []RegionRange{{2, 1}}) {
		t.Fatalf("a after the promotion: %v, %t; want region 2 (seq 4, in the journal), not the trimmed ones", rs, ok)
	}
	if rs, ok := ftChanged(t, h.f, "b"); !ok || !reflect.DeepEqual(rs, []RegionRange{{0, 1}}) {
		t.Fatalf("b after the promotion: %v, %t", rs, ok)
	}
	ftCheckInvariants(t, h.f)

	// The new primary's batches mark; the old primary's are refused and
	// do not.
	h.register("a", 70, 2)
	if r := h.submit(ftBatch("a", 2, 4, 69))[0]; r.Err != nil || r.Seq != 5 {
		t.Fatalf("new primary's batch: %+v", r)
	}
	if r := h.submit(ftBatch("a", 1, 5, 30))[0]; !errors.Is(r.Err, wire.ErrStaleEpoch) {
		t.Fatalf("old primary's batch: %+v", r)
	}
	h.apply(ftTrim(5))
	want := []RegionRange{{2, 1}, {4, 1}}
	if rs, _ := ftChanged(t, h.f, "a"); !reflect.DeepEqual(rs, want) {
		t.Fatalf("a after the new primary's batch and a trim: %v, want %v", rs, want)
	}
	if res := h.promote("p1", "", ftPromoteTime); !res.Already {
		t.Fatalf("p1 again: %+v", res)
	}
	if rs, _ := ftChanged(t, h.f, "a"); !reflect.DeepEqual(rs, want) {
		t.Fatalf("a after p1 again: %v, want %v kept", rs, want)
	}
	h.register("c", 8, 1)
	if _, ok := ftChanged(t, h.f, "c"); ok {
		t.Fatal("volume c, registered after the promotion, has a changed-since-promotion bitmap")
	}
	ftCheckInvariants(t, h.f)

	// A second promotion replaces the bitmaps: the journal is empty.
	h.promote("p2", "", ftPromoteTime.Add(time.Minute))
	for _, v := range []string{"a", "b", "c"} {
		if rs, ok := ftChanged(t, h.f, v); !ok || len(rs) != 0 {
			t.Fatalf("%s after the second promotion: %v, %t; want an empty bitmap", v, rs, ok)
		}
	}
	h.register("a", 70, 3)
	h.submit(ftBatch("a", 3, 5, 63)) // seq 6: region 3
	if rs, _ := ftChanged(t, h.f, "a"); !reflect.DeepEqual(rs, []RegionRange{{3, 1}}) {
		t.Fatalf("a after the second promotion's first batch: %v", rs)
	}
	ftCheckInvariants(t, h.f)
	if h.fatals.Load() != 0 {
		t.Fatalf("the state machine stopped: %v", h.f.Failed())
	}

	ref := ftNew(t, nil, "/ref")
	for _, l := range h.log {
		ref.f.Apply(l)
	}
	ftSameDump(t, "replayed", ftDumpOf(t, ref.f), ftDumpOf(t, h.f))
}

// TestFSMFailbackSecondary: a failback sets a registered secondary's
// bitmap to its volume's changed-since-promotion bitmap united with the
// uploaded one (in any region size), replacing what it held, resumes it,
// and sets its marked and failback seqs to the committed seq; it is
// refused, changing nothing, for a volume never promoted, a secondary not
// registered or of another volume, and a bad bitmap; running it again
// takes what changed meanwhile; a clear at the failback seq ends it.
func TestFSMFailbackSecondary(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 70, 1) // 5 regions
	h.register("b", 16, 1)
	h.apply(ftRegisterSecondary("fb", "a", ""))
	h.apply(ftRegisterSecondary("sb", "b", ""))
	h.submit(ftBatch("a", 1, 1, 0))  // seq 1: region 0
	h.submit(ftBatch("a", 1, 2, 40)) // seq 2: region 2

	before := ftDumpOf(t, h.f)
	if res := h.failback("fb", "a", nil); !errors.Is(res.Err, wire.ErrBadRequest) ||
		!strings.Contains(res.Err.Error(), `volume "a" never promoted: nothing to fail back`) {
		t.Fatalf("failback of a volume never promoted: %+v", res)
	}
	ftSameState(t, "after the refused failback", ftDumpOf(t, h.f), before)

	h.apply(ftTrim(1))
	h.promote("p1", "", ftPromoteTime) // at seq 2: a's bitmap has region 2
	h.apply(ftSuspend("fb", 0))
	h.apply(ftTrim(2)) // marks fb's bitmap (region 2)
	before = ftDumpOf(t, h.f)
	for _, tc := range []struct {
		name, id, volume string
		bitmap           []byte
		want             error
		text             string
	}{
		{"unregistered", "nope", "a", nil, wire.ErrUnknownVolume, "register the secondary first (say HELLO"},
		{"another volume", "sb", "a", nil, wire.ErrVolumeMismatch, `registered for volume "b"`},
		{"unknown volume", "fb", "zz", nil, wire.ErrUnknownVolume, `volume "zz" is not registered`},
		{"bad id", "", "a", nil, wire.ErrBadRequest, "empty secondary id"},
		{"bad volume name", "fb", "a/b", nil, wire.ErrBadRequest, "volume"},
		{"undecodable bitmap", "fb", "a", []byte("junk"), wire.ErrBadRequest, "bitmap: decode bitmap"},
		{"bitmap of another size", "fb", "a", ftPrimaryBitmap(t, 71, 0, 3), wire.ErrBadRequest, "bitmap: it covers 71 blocks, the volume has 70"},
	} {
		res := h.failback(tc.id, tc.volume, tc.bitmap)
		if !errors.Is(res.Err, tc.want) || !strings.Contains(res.Err.Error(), tc.text) || res.Regions != 0 {
			t.Errorf("%s: %+v, want %v naming %q", tc.name, res, tc.want, tc.text)
		}
	}
	ftSameState(t, "after refused failbacks", ftDumpOf(t, h.f), before)

	// Uploaded in 4 KiB regions: blocks 5 and 50 are regions 0 and 3.
	ch := h.f.Changed()
	res := h.failback("fb", "a", ftPrimaryBitmap(t, 70, blockdev.BlockSize, 5, 50))
	if res.Err != nil || res.Regions != 3 || res.PromotionSeq != 2 || res.Epoch != 2 || !res.Resumed {
		t.Fatalf("failback: %+v", res)
	}
	select {
	case <-ch:
	default:
		t.Fatal("a failback did not signal Changed")
	}
	info, _ := h.f.Secondary("fb")
	if info.Suspended || info.FailbackSeq != 2 || info.MarkedSeq != 2 || info.DirtyRegions != 3 || info != res.Secondary {
		t.Fatalf("fb after the failback: %+v (result %+v)", info, res.Secondary)
	}
	if rs, marked := ftBitmap(t, h.f, "fb"); !reflect.DeepEqual(rs, []RegionRange{{0, 1}, {2, 2}}) || marked != 2 {
		t.Fatalf("fb's bitmap: %v marked %d", rs, marked)
	}
	ftCheckInvariants(t, h.f)

	// Again after the new primary wrote: what changed meanwhile is added,
	// the earlier upload is replaced.
	h.register("a", 70, 2)
	h.submit(ftBatch("a", 2, 3, 69)) // seq 3: region 4
	res = h.failback("fb", "a", nil)
	if res.Err != nil || res.Regions != 2 || res.Resumed || res.Secondary.FailbackSeq != 3 || res.Secondary.MarkedSeq != 3 {
		t.Fatalf("failback again: %+v", res)
	}
	if rs, _ := ftBitmap(t, h.f, "fb"); !reflect.DeepEqual(rs, []RegionRange{{2, 1}, {4, 1}}) {
		t.Fatalf("fb's bitmap after the second failback: %v", rs)
	}
	// A coarse upload (1 MiB regions: one region for the whole volume)
	// marks every region.
	if res := h.failback("fb", "a", ftPrimaryBitmap(t, 70, 1<<20, 0)); res.Err != nil || res.Regions != 5 {
		t.Fatalf("failback with a 1 MiB region: %+v", res)
	}
	ftCheckInvariants(t, h.f)

	// The coordinator clears it once the secondary applied the failback
	// seq, not before.
	if res := h.suspendResult(ftClear("fb", 2)); res.Cleared || res.Secondary.FailbackSeq != 3 {
		t.Fatalf("clear below the failback seq: %+v", res)
	}
	if res := h.suspendResult(ftClear("fb", 3)); !res.Cleared || res.Secondary.FailbackSeq != 0 || res.Secondary.MarkedSeq != 0 ||
		res.Secondary.DirtyRegions != 0 {
		t.Fatalf("clear at the failback seq: %+v", res)
	}
	ftCheckInvariants(t, h.f)
	if h.fatals.Load() != 0 {
		t.Fatalf("the state machine stopped: %v", h.f.Failed())
	}
	ref := ftNew(t, nil, "/ref")
	for _, l := range h.log {
		ref.f.Apply(l)
	}
	ftSameDump(t, "replayed", ftDumpOf(t, ref.f), ftDumpOf(t, h.f))
}

// TestFSMFailbackNothingCommitted: in a group that never committed a batch
// a failback marks only what was uploaded, with marked and failback seqs
// of 1 (the bitmap stays until the secondary applied something), and a
// failback with nothing to copy still records its seq.
func TestFSMFailbackNothingCommitted(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("z", 40, 1)
	h.apply(ftRegisterSecondary("f1", "z", ""))
	h.apply(ftRegisterSecondary("f2", "z", ""))
	h.promote("p1", "", ftPromoteTime)
	if res := h.failback("f1", "z", ftPrimaryBitmap(t, 40, 0, 39)); res.Err != nil || res.Regions != 1 || res.PromotionSeq != 0 ||
		res.Secondary.FailbackSeq != 1 || res.Secondary.MarkedSeq != 1 {
		t.Fatalf("failback with an upload: %+v", res)
	}
	if res := h.failback("f2", "z", nil); res.Err != nil || res.Regions != 0 || res.Secondary.FailbackSeq != 1 || res.Secondary.MarkedSeq != 1 {
		t.Fatalf("failback with nothing to copy: %+v", res)
	}
	ftCheckInvariants(t, h.f)
	dst := ftNew(t, nil, "/dst")
	if err := ftRestore(dst.f, ftSnapshot(t, h.f)); err != nil {
		t.Fatal(err)
	}
	ftSameDump(t, "restored", ftDumpOf(t, dst.f), ftDumpOf(t, h.f))
	if res := h.suspendResult(ftClear("f2", 0)); res.Cleared {
		t.Fatalf("cleared at applied 0: %+v", res)
	}
	if res := h.suspendResult(ftClear("f2", 1)); !res.Cleared || res.Secondary.FailbackSeq != 0 {
		t.Fatalf("clear at 1: %+v", res)
	}
	ftCheckInvariants(t, h.f)
}

// ftFailbackState builds a promoted state with a new primary's batches,
// a failback with an upload, an empty failback and a suspension.
func ftFailbackState(t testing.TB, h *ftHarness) {
	t.Helper()
	ftPromotedState(t, h) // a (16 blocks), b (8 blocks), secondaries sa, sb
	h.apply(ftSuspend("sb", 0))
	h.apply(ftTrim(2)) // marks sb's bitmap
	h.promote("p1", "host-1", ftPromoteTime)
	h.register("a", 16, 2)
	h.submit(ftBatch("a", 2, 4, 15))
	h.apply(ftRegisterSecondary("fa", "a", ""))
	h.apply(ftRegisterSecondary("fb", "b", "127.0.0.1:7309"))
	h.apply(ftFailback("fa", "a", ftPrimaryBitmap(t, 16, blockdev.BlockSize, 3)))
	h.apply(ftFailback("fb", "b", nil))
	h.apply(ftTrim(3))
}

// TestSnapshotFailbackRoundTrip: the changed-since-promotion bitmaps and
// the failback seqs survive a snapshot, and the restored state goes on as
// the source does.
func TestSnapshotFailbackRoundTrip(t *testing.T) {
	src := ftNew(t, nil, "/src")
	ftFailbackState(t, src)
	want := ftDumpOf(t, src.f)
	fa, _ := src.f.Secondary("fa")
	if len(want.Changed) != 2 || fa.FailbackSeq == 0 || fa.DirtyRegions == 0 {
		t.Fatalf("source state: changed %v, fa %+v", want.Changed, fa)
	}
	dst := ftNew(t, nil, "/dst")
	if err := ftRestore(dst.f, ftSnapshot(t, src.f)); err != nil {
		t.Fatal(err)
	}
	ftSameDump(t, "restored", ftDumpOf(t, dst.f), want)
	ftCheckInvariants(t, dst.f)
	for _, h := range []*ftHarness{src, dst} {
		h.submit(ftBatch("a", 2, 5, 9))
		h.failback("fb", "b", ftPrimaryBitmap(h.t, 8, 0, 7))
		h.apply(ftClear("fa", 100))
		h.promote("p2", "", ftPromoteTime)
		h.apply(ftTrim(100))
	}
	ftSameState(t, "after the same entries", ftDumpOf(t, dst.f), ftDumpOf(t, src.f))
	ftCheckInvariants(t, dst.f)
}

// TestSnapshotRestoresVersion5: a version 5 snapshot restores; its
// promoted volumes have every region marked changed since the promotion
// (nothing says which changed), and a failback copies them all.
func TestSnapshotRestoresVersion5(t *testing.T) {
	src := ftNew(t, nil, "/src")
	src.register("a", 70, 1) // 5 regions
	src.register("b", 16, 1)
	src.submit(ftBatch("a", 1, 1, 0), ftBatch("b", 1, 1, 1))
	src.submit(ftBatch("a", 1, 2, 40))
	src.apply(ftRegisterSecondary("sa", "a", ""))
	src.apply(ftTrim(2))
	src.promote("p1", "", ftPromoteTime)
	src.register("a", 70, 2)
	src.submit(ftBatch("a", 2, 3, 69))
	src.register("c", 40, 1) // not promoted
	want := ftDumpOf(t, src.f)
	if !reflect.DeepEqual(want.Changed, map[string][]RegionRange{"a": {{2, 1}, {4, 1}}, "b": nil}) {
		t.Fatalf("source state: changed %v", want.Changed)
	}
	old := ftAsVersion(t, ftSnapshot(t, src.f), snapVersionNoChanged, func(*snapshotMeta) bool { return true })
	dst := ftNew(t, nil, "/dst")
	if err := ftRestore(dst.f, old); err != nil {
		t.Fatalf("restore a version 5 snapshot: %v", err)
	}
	want.Changed = map[string][]RegionRange{"a": {{0, 5}}, "b": {{0, 1}}}
	for i, v := range want.Volumes {
		want.Volumes[i].ChangedSincePromotion = map[string]uint64{"a": 5, "b": 1}[v.Name]
	}
	ftSameDump(t, "restored from version 5", ftDumpOf(t, dst.f), want)
	ftCheckInvariants(t, dst.f)
	dst.apply(ftRegisterSecondary("fa", "a", ""))
	if res := dst.failback("fa", "a", nil); res.Err != nil || res.Regions != 5 {
		t.Fatalf("failback after a version 5 restore: %+v", res)
	}
	again := ftNew(t, nil, "/again")
	if err := ftRestore(again.f, ftSnapshot(t, dst.f)); err != nil {
		t.Fatal(err)
	}
	ftSameDump(t, "version 6 of the restored state", ftDumpOf(t, again.f), ftDumpOf(t, dst.f))
}

// ftChangedFrames writes a volume's changed frames in pieces of piece
// bytes.
func ftChangedFrames(t testing.TB, vm volumeMeta, piece int) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := writeChanged(&frameWriter{w: &buf}, vm, piece); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// ftReadChanged reads a volume's changed frames from stream.
func ftReadChanged(stream []byte, vm volumeMeta) (*blockdev.Bitmap, error) {
	r := &restorer{fr: &frameReader{r: bufio.NewReader(bytes.NewReader(stream))}}
	return r.readChanged(vm)
}

// TestSnapshotChangedFrames: a bitmap split over several changed frames
// reads back whole; frames out of order, of another volume, with a
// changing total, or a bitmap of another geometry are refused.
func TestSnapshotChangedFrames(t *testing.T) {
	b, err := blockdev.NewBitmap(1000, changedRegionSize) // 63 regions
	if err != nil {
		t.Fatal(err)
	}
	b.SetRange(16, 40)
	b.SetBlock(999)
	vm := volumeMeta{name: "a", blockCount: 1000, changed: b}
	for _, piece := range []int{1, 7, 8, changedPiece} {
		got, err := ftReadChanged(ftChangedFrames(t, vm, piece), vm)
		if err != nil || !got.Equal(b) {
			t.Fatalf("pieces of %d bytes: %v", piece, err)
		}
	}
	enc, err := b.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	frame := func(name string, total, off uint64, piece []byte) []byte {
		var buf bytes.Buffer
		var e encoder
		e.str(name)
		e.u64(total)
		e.u64(off)
		(&frameWriter{w: &buf}).write(frameChanged, e.b, piece)
		return buf.Bytes()
	}
	n := uint64(len(enc))
	other, err := blockdev.NewBitmap(1001, changedRegionSize)
	if err != nil {
		t.Fatal(err)
	}
	fine, err := blockdev.NewBitmap(1000, blockdev.BlockSize)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		stream []byte
		want   string
	}{
		{"another volume", frame("b", n, 0, enc), `changed frame of "b"`},
		{"gap", append(frame("a", n, 0, enc[:8]), frame("a", n, 9, enc[9:])...), "at offset 9"},
		{"total changes", append(frame("a", n, 0, enc[:8]), frame("a", n+1, 8, enc[8:])...), fmt.Sprintf("at offset 8 of %d", n+1)},
		{"past the total", frame("a", 4, 0, enc), "at offset 0 of 4"},
		{"empty piece", frame("a", n, 0, nil), "with 0 bytes"},
		{"truncated", frame("a", n, 0, enc[:8]), "truncated"},
		{"corrupt", frame("a", n, 0, append(bytes.Clone(enc[:n-1]), enc[n-1]^1)), "checksum"},
		{"another size", ftChangedFrames(t, volumeMeta{name: "a", changed: other}, 64), "bitmap of 1001 blocks"},
		{"another region size", ftChangedFrames(t, volumeMeta{name: "a", changed: fine}, 64), "regions of 4096 bytes"},
	} {
		_, err := ftReadChanged(tc.stream, vm)
		if !errors.Is(err, errBadSnapshot) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want a bad snapshot naming %q", tc.name, err, tc.want)
		}
	}
}

// TestSnapshotMetaRefusesBadFailbacks: failback seqs that disagree with
// the bitmap, the marked seq or the counter are refused; an empty
// failback bitmap is fine; versions before 6 carry no failback seq.
func TestSnapshotMetaRefusesBadFailbacks(t *testing.T) {
	base := snapshotMeta{seq: 5, journalStart: 6, volumes: []volumeMeta{{name: "a", epoch: 2, blockCount: 40, lastVolumeSeq: 5, lastSeq: 5, trimmedSeq: 5,
		promotions: []promotionRecord{{id: "p1", epoch: 2, seq: 3, lastSeq: 3, lastVolumeSeq: 3}}}},
		secondaries: []secondaryMeta{
			{id: "s1", volume: "a", markedSeq: 5, failbackSeq: 5, ranges: []RegionRange{{0, 2}}},
			{id: "s2", volume: "a", markedSeq: 5, failbackSeq: 5},
		}}
	if m, err := decodeMeta(encodeMeta(base, snapVersion), snapVersion); err != nil || !reflect.DeepEqual(m.secondaries, base.secondaries) {
		t.Fatalf("valid meta: %+v, %v", m.secondaries, err)
	}
	for _, tc := range []struct {
		name   string
		change func(m *snapshotMeta)
		want   string
	}{
		{"failback above the counter", func(m *snapshotMeta) { m.secondaries[0].failbackSeq, m.secondaries[0].markedSeq = 6, 6 }, "failback at 6"},
		{"marked below the failback", func(m *snapshotMeta) { m.secondaries[0].markedSeq = 4 }, "marked up to 4, failback at 5"},
		{"empty bitmap without a failback", func(m *snapshotMeta) { m.secondaries[1].failbackSeq = 0 }, "bitmap of 0 runs marked up to seq 5"},
		{"failback without a marked seq", func(m *snapshotMeta) { m.secondaries[1].markedSeq = 0 }, "marked up to 0, failback at 5"},
	} {
		m := base
		m.secondaries = append([]secondaryMeta(nil), base.secondaries...)
		tc.change(&m)
		_, err := decodeMeta(encodeMeta(m, snapVersion), snapVersion)
		if !errors.Is(err, errBadSnapshot) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// A group that never committed fails back at seq 1.
	empty := snapshotMeta{seq: 0, journalStart: 1, volumes: []volumeMeta{{name: "a", epoch: 2, blockCount: 40,
		promotions: []promotionRecord{{id: "p1", epoch: 2}}}}, secondaries: []secondaryMeta{{id: "s1", volume: "a", markedSeq: 1, failbackSeq: 1}}}
	if _, err := decodeMeta(encodeMeta(empty, snapVersion), snapVersion); err != nil {
		t.Fatalf("failback at seq 1 of an empty group: %v", err)
	}
	// Version 5 metas have no failback seqs.
	if _, err := decodeMeta(encodeMeta(base, snapVersion), snapVersionNoChanged); err == nil {
		t.Fatal("a version 6 meta read as version 5")
	}
	if _, err := decodeMeta(encodeMeta(base, snapVersionNoChanged), snapVersion); err == nil {
		t.Fatal("a version 5 meta read as version 6")
	}
}
