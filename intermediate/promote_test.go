package intermediate

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// ftPromoteTime is the time the tests' PromoteGroup entries carry.
var ftPromoteTime = time.Date(2026, 3, 4, 5, 6, 7, 8, time.UTC)

func ftPromote(id, by string, at time.Time) *wire.Entry {
	return &wire.Entry{Op: &wire.Entry_PromoteGroup{PromoteGroup: &wire.PromoteGroup{PromotionId: id, By: by, TimeUnixNano: at.UnixNano()}}}
}

func (h *ftHarness) promote(id, by string, at time.Time) *PromoteResult {
	h.t.Helper()
	res, ok := h.apply(ftPromote(id, by, at)).(*PromoteResult)
	if !ok {
		h.t.Fatalf("promote %q: result %T", id, res)
	}
	return res
}

// ftStaleEpoch fails unless err is a STALE_EPOCH refusal naming epoch.
func ftStaleEpoch(t testing.TB, what string, err error, epoch uint64) {
	t.Helper()
	var we *wire.Error
	if !errors.As(err, &we) || we.Code != wire.ErrorCode_ERROR_CODE_STALE_EPOCH || we.Epoch != epoch {
		t.Fatalf("%s: %v, want STALE_EPOCH at epoch %d", what, err, epoch)
	}
}

// ftSameState is ftSameDump but for the applied Raft index, which every
// entry moves (refused ones included).
func ftSameState(t testing.TB, what string, got, want ftDump) {
	t.Helper()
	got.Stats.AppliedIndex, want.Stats.AppliedIndex = 0, 0
	ftSameDump(t, what, got, want)
}

// ftPromotedState builds a group of two volumes at different epochs with
// batches, secondaries and a validated point.
func ftPromotedState(t testing.TB, h *ftHarness) {
	t.Helper()
	h.register("a", 16, 1)
	h.register("b", 8, 3)
	h.submit(ftBatch("a", 1, 1, 0), ftBatch("b", 3, 1, 1))
	h.submit(ftBatch("a", 1, 2, 2))
	h.submit(ftBatch("b", 3, 2, 3), ftBatch("a", 1, 3, 4))
	h.apply(ftRegisterSecondary("sa", "a", "127.0.0.1:7301"))
	h.apply(ftRegisterSecondary("sb", "b", ""))
	h.apply(ftRecordValidated(3))
}

// TestFSMPromoteGroup: a promotion raises every volume's epoch by one and
// records the valid counter and each volume's last batch; from then on
// nothing of the old epochs commits, a primary at the new epoch resumes
// after the volume's last volume seq, the secondaries stay registered, and
// running the same promotion again changes nothing and answers the same.
func TestFSMPromoteGroup(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	ftPromotedState(t, h)
	oldSessionA := h.f.st.volumes["a"].session
	res := h.promote("p1", "host-1 /dev/pts/0", ftPromoteTime)
	want := &PromoteResult{Seq: 5, Volumes: []PromotedVolume{
		{Name: "a", Epoch: 2, LastSeq: 5, LastVolumeSeq: 3, BlockCount: 16, JournalComplete: true},
		{Name: "b", Epoch: 4, LastSeq: 4, LastVolumeSeq: 2, BlockCount: 8, JournalComplete: true},
	}}
	if !reflect.DeepEqual(res, want) {
		t.Fatalf("promote: %+v, want %+v", res, want)
	}
	for _, v := range h.f.Volumes() {
		ps := h.f.Promotions(v.Name)
		wantP := []PromotionInfo{{ID: "p1", Epoch: v.Epoch, Seq: 5, Time: ftPromoteTime, By: "host-1 /dev/pts/0",
			LastSeq: v.LastSeq, LastVolumeSeq: v.LastVolumeSeq}}
		if !reflect.DeepEqual(ps, wantP) {
			t.Fatalf("history of %q: %+v, want %+v", v.Name, ps, wantP)
		}
	}
	if secs := h.f.Secondaries(); len(secs) != 2 {
		t.Fatalf("secondaries after the promotion: %+v, want both still registered", secs)
	}
	ftCheckInvariants(t, h.f)

	// Nothing of the old epochs commits any more: not a batch of the old
	// session, not a new open at the old epoch, which starts no session.
	e := ftSubmit(ftBatch("a", 1, 4, 0))
	e.GetSubmit().Sessions = []uint64{oldSessionA}
	r := h.apply(e).(*SubmitResult).Batches[0]
	ftStaleEpoch(t, "old primary's batch after the promotion", r.Err, 2)
	ftStaleEpoch(t, "old primary's open after the promotion", h.register("a", 16, 1).Err, 2)
	if got, _ := h.f.Volume("a"); got.Session != oldSessionA {
		t.Fatalf("an open at the old epoch moved the session from %d to %d", oldSessionA, got.Session)
	}
	ftStaleEpoch(t, "old primary's batch of volume b", h.submit(ftBatch("b", 3, 3, 0))[0].Err, 4)
	if st := h.f.Stats(); st.CommittedSeq != 5 {
		t.Fatalf("committed seq %d after the promotion, want 5: an old-epoch batch committed", st.CommittedSeq)
	}

	// Running it again (another node's clock, another by) changes nothing.
	before := ftDumpOf(t, h.f)
	again := h.promote("p1", "host-2", ftPromoteTime.Add(time.Hour))
	want.Already = true
	if !reflect.DeepEqual(again, want) {
		t.Fatalf("promote again: %+v, want %+v", again, want)
	}
	ftSameState(t, "after running the promotion again", ftDumpOf(t, h.f), before)

	// The new primary opens at the new epoch and resumes after the last
	// volume seq; its batches get the next seqs.
	reg := h.register("a", 16, 2)
	if reg.Err != nil || reg.Volume.LastVolumeSeq != 3 || reg.Volume.Epoch != 2 {
		t.Fatalf("open at the new epoch: %+v", reg)
	}
	if r := h.submit(ftBatch("a", 2, 4, 0))[0]; r.Err != nil || r.Seq != 6 {
		t.Fatalf("new primary's first batch: %+v, want seq 6", r)
	}
	if r := h.submit(ftBatch("a", 1, 5, 0))[0]; r.Err == nil {
		t.Fatalf("old-epoch batch accepted after the new primary's: %+v", r)
	}
	// The recorded values do not move with the new primary's writes.
	if again := h.promote("p1", "", ftPromoteTime); !reflect.DeepEqual(again, want) {
		t.Fatalf("promote again after new writes: %+v, want %+v", again, want)
	}

	// A second promotion raises the epochs again, at the new counter.
	res = h.promote("p2", "", ftPromoteTime.Add(time.Minute))
	if res.Already || res.Seq != 6 || len(res.Volumes) != 2 || res.Volumes[0].Epoch != 3 || res.Volumes[0].LastVolumeSeq != 4 ||
		res.Volumes[1].Epoch != 5 {
		t.Fatalf("second promotion: %+v", res)
	}
	if ps := h.f.Promotions("a"); len(ps) != 2 || ps[0].ID != "p1" || ps[1].ID != "p2" || ps[1].Seq != 6 {
		t.Fatalf("history of a: %+v", ps)
	}
	ftCheckInvariants(t, h.f)
	if h.fatals.Load() != 0 {
		t.Fatalf("the state machine stopped: %v", h.f.Failed())
	}
}

// TestFSMPromoteRefusals: a malformed promotion, or one that cannot raise
// an epoch, is refused and changes nothing; a group without volumes is
// promoted to nothing.
func TestFSMPromoteRefusals(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	if res := h.promote("p0", "", ftPromoteTime); res.Err != nil || res.Already || res.Seq != 0 || len(res.Volumes) != 0 {
		t.Fatalf("promote a group without volumes: %+v", res)
	}
	ftPromotedState(t, h)
	before := ftDumpOf(t, h.f)
	for _, tc := range []struct {
		id, by string
		want   string
	}{
		{"", "", "empty promotion id"},
		{strings.Repeat("x", MaxPromotionID+1), "", "promotion id of 65 bytes"},
		{"p\x01", "", "unprintable"},
		{"p\n", "", "unprintable"},
		{"p1", strings.Repeat("b", MaxPromotedBy+1), "by text of 257 bytes"},
	} {
		res := h.promote(tc.id, tc.by, ftPromoteTime)
		if !errors.Is(res.Err, wire.ErrBadRequest) || !strings.Contains(res.Err.Error(), tc.want) || len(res.Volumes) != 0 {
			t.Errorf("promote %q by %d bytes: %+v, want BAD_REQUEST %q", tc.id, len(tc.by), res, tc.want)
		}
	}
	ftSameState(t, "after refused promotions", ftDumpOf(t, h.f), before)
	for _, ok := range []string{"x", strings.Repeat("x", MaxPromotionID), "promote 2026-03-04T05:06:07Z", "été-1"} {
		if err := checkPromotion(ok, strings.Repeat("b", MaxPromotedBy)); err != nil {
			t.Errorf("promotion id %q: %v", ok, err)
		}
	}
	if err := checkPromotion("p\xff", ""); !errors.Is(err, wire.ErrBadRequest) {
		t.Errorf("promotion id that is not UTF-8: %v", err)
	}

	// A volume at the largest epoch cannot be promoted: nothing is.
	h.register("z", 4, math.MaxUint64)
	before = ftDumpOf(t, h.f)
	if res := h.promote("p1", "", ftPromoteTime); !errors.Is(res.Err, wire.ErrBadRequest) || !strings.Contains(res.Err.Error(), "largest epoch") {
		t.Fatalf("promote with a volume at the largest epoch: %+v", res)
	}
	ftSameState(t, "after the refused promotion", ftDumpOf(t, h.f), before)
	if h.fatals.Load() != 0 {
		t.Fatalf("a refused promotion stopped the state machine: %v", h.f.Failed())
	}
}

// TestFSMPromoteHistoryCapped: a volume keeps its latest MaxPromotions
// promotions; a volume registered later has only those after it.
func TestFSMPromoteHistoryCapped(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 4, 1)
	const n = MaxPromotions + 4
	for i := range n {
		if i == 10 {
			h.register("b", 4, 1)
		}
		if res := h.promote(fmt.Sprintf("p%d", i), "", ftPromoteTime.Add(time.Duration(i)*time.Second)); res.Err != nil || res.Already {
			t.Fatalf("promotion %d: %+v", i, res)
		}
	}
	ps := h.f.Promotions("a")
	if len(ps) != MaxPromotions || ps[0].ID != "p4" || ps[len(ps)-1].ID != fmt.Sprintf("p%d", n-1) || ps[len(ps)-1].Epoch != n+1 {
		t.Fatalf("history of a: %d promotions, first %+v, last %+v", len(ps), ps[0], ps[len(ps)-1])
	}
	if ps := h.f.Promotions("b"); len(ps) != n-10 || ps[0].ID != "p10" || ps[0].Epoch != 2 {
		t.Fatalf("history of b: %+v", ps)
	}
	ftCheckInvariants(t, h.f)
	// p12 is in both histories; p5 only in a's; p0 in none any more.
	if res := h.promote("p12", "", ftPromoteTime); !res.Already || len(res.Volumes) != 2 {
		t.Fatalf("p12 again: %+v", res)
	}
	if res := h.promote("p5", "", ftPromoteTime); !res.Already || len(res.Volumes) != 1 || res.Volumes[0].Name != "a" || res.Volumes[0].Epoch != 7 {
		t.Fatalf("p5 again: %+v", res)
	}
	if res := h.promote("p0", "", ftPromoteTime); res.Already || len(res.Volumes) != 2 {
		t.Fatalf("p0, dropped from every history, again: %+v, want a new promotion", res)
	}
	ftCheckInvariants(t, h.f)
}

// TestFSMPromoteReplay: replaying a log with promotions gives the same
// results and state (the time comes from the entry).
func TestFSMPromoteReplay(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	ftPromotedState(t, h)
	h.promote("p1", "me", ftPromoteTime)
	h.submit(ftBatch("a", 2, 4, 1))
	h.promote("p1", "me", ftPromoteTime.Add(time.Hour))
	h.promote("p2", "", ftPromoteTime.Add(2*time.Hour))
	want := ftDumpOf(t, h.f)
	ref := ftNew(t, nil, "/ref")
	for _, l := range h.log {
		ref.f.Apply(l)
	}
	ftSameDump(t, "replayed", ftDumpOf(t, ref.f), want)
}

// TestSnapshotPromotionsRoundTrip: the promotion histories survive a
// snapshot, and the restored state goes on as the source does.
func TestSnapshotPromotionsRoundTrip(t *testing.T) {
	src := ftNew(t, nil, "/src")
	ftPromotedState(t, src)
	src.promote("p1", "host-1", ftPromoteTime)
	src.submit(ftBatch("a", 2, 4, 1))
	src.promote("p2", "", ftPromoteTime.Add(time.Hour))
	want := ftDumpOf(t, src.f)
	if len(want.Promotions["a"]) != 2 || len(want.Promotions["b"]) != 2 {
		t.Fatalf("source state: %+v", want.Promotions)
	}
	dst := ftNew(t, nil, "/dst")
	if err := ftRestore(dst.f, ftSnapshot(t, src.f)); err != nil {
		t.Fatal(err)
	}
	ftSameDump(t, "restored", ftDumpOf(t, dst.f), want)
	ftCheckInvariants(t, dst.f)
	for _, h := range []*ftHarness{src, dst} {
		if res := h.promote("p1", "", ftPromoteTime); !res.Already || res.Seq != 5 {
			t.Fatalf("p1 again: %+v", res)
		}
		h.promote("p3", "", ftPromoteTime)
		ftStaleEpoch(t, "a batch of epoch 3", h.submit(ftBatch("a", 3, 5, 0))[0].Err, 4)
	}
	ftSameState(t, "after the same entries", ftDumpOf(t, dst.f), ftDumpOf(t, src.f))
}

// TestSnapshotRestoresVersion4: a version 4 snapshot (no promotion
// histories) restores, and the restored state promotes.
func TestSnapshotRestoresVersion4(t *testing.T) {
	src := ftNew(t, nil, "/src")
	ftSuspendState(t, src)
	want := ftDumpOf(t, src.f)
	old := ftAsVersion(t, ftSnapshot(t, src.f), snapVersionNoPromotions, func(*snapshotMeta) bool { return true })
	dst := ftNew(t, nil, "/dst")
	if err := ftRestore(dst.f, old); err != nil {
		t.Fatalf("restore a version 4 snapshot: %v", err)
	}
	ftSameDump(t, "restored from version 4", ftDumpOf(t, dst.f), want)
	ftCheckInvariants(t, dst.f)
	if res := dst.promote("p1", "", ftPromoteTime); res.Err != nil || len(res.Volumes) != 2 {
		t.Fatalf("promote the restored state: %+v", res)
	}
	again := ftNew(t, nil, "/again")
	if err := ftRestore(again.f, ftSnapshot(t, dst.f)); err != nil {
		t.Fatal(err)
	}
	ftSameDump(t, "version 5 of the restored state", ftDumpOf(t, again.f), ftDumpOf(t, dst.f))
}

// TestSnapshotMetaRefusesBadPromotions: a promotion history that disagrees
// with its volume's record is refused, naming the problem.
func TestSnapshotMetaRefusesBadPromotions(t *testing.T) {
	p1 := promotionRecord{id: "p1", epoch: 2, seq: 3, time: 1, by: "x", lastSeq: 2, lastVolumeSeq: 2}
	p2 := promotionRecord{id: "p2", epoch: 4, seq: 5, lastSeq: 5, lastVolumeSeq: 4}
	base := snapshotMeta{seq: 5, journalStart: 6, volumes: []volumeMeta{{name: "a", epoch: 4, blockCount: 4, lastVolumeSeq: 4, lastSeq: 5,
		trimmedSeq: 5, promotions: []promotionRecord{p1, p2}}}}
	m, err := decodeMeta(encodeMeta(base, snapVersion), snapVersion)
	if err != nil || !reflect.DeepEqual(m.volumes, base.volumes) {
		t.Fatalf("valid meta: %+v, %v", m.volumes, err)
	}
	// A promotion recorded late has its volume's last batch after its seq.
	late := base
	late.volumes = []volumeMeta{base.volumes[0]}
	late.volumes[0].promotions = []promotionRecord{p1, {id: "p2", epoch: 4, seq: 3, lastSeq: 5, lastVolumeSeq: 4}}
	if m, err := decodeMeta(encodeMeta(late, snapVersion), snapVersion); err != nil || !reflect.DeepEqual(m.volumes, late.volumes) {
		t.Fatalf("meta with a late promotion: %+v, %v", m.volumes, err)
	}
	for _, tc := range []struct {
		name   string
		change func(ps []promotionRecord) []promotionRecord
		want   string
	}{
		{"bad id", func(ps []promotionRecord) []promotionRecord { ps[0].id = ""; return ps }, "empty promotion id"},
		{"long by", func(ps []promotionRecord) []promotionRecord { ps[1].by = strings.Repeat("b", 257); return ps }, "by text of 257 bytes"},
		{"duplicate", func(ps []promotionRecord) []promotionRecord { ps[1].id = "p1"; return ps }, "duplicate true"},
		{"epoch above the volume's", func(ps []promotionRecord) []promotionRecord { ps[1].epoch = 5; return ps }, "to epoch 5"},
		{"epoch not rising", func(ps []promotionRecord) []promotionRecord { ps[1].epoch = 2; return ps }, "to epoch 2 at seq 5"},
		{"epoch 1", func(ps []promotionRecord) []promotionRecord { ps[0].epoch = 1; return ps }, "to epoch 1"},
		{"seq falling", func(ps []promotionRecord) []promotionRecord { ps[1].seq, ps[1].lastSeq = 2, 2; return ps }, "at seq 2"},
		{"seq above the counter", func(ps []promotionRecord) []promotionRecord { ps[1].seq = 6; return ps }, "at seq 6"},
		{"last seq above the volume's", func(ps []promotionRecord) []promotionRecord { ps[1].lastSeq = 6; return ps }, "with last seq 6"},
		{"last volume seq above the volume's", func(ps []promotionRecord) []promotionRecord { ps[1].lastVolumeSeq = 5; return ps }, "last volume seq 5"},
		{"last seq without a volume seq", func(ps []promotionRecord) []promotionRecord { ps[0].lastVolumeSeq = 0; return ps }, "last volume seq 0"},
		{"too many", func(ps []promotionRecord) []promotionRecord {
			var out []promotionRecord
			for i := range MaxPromotions + 1 {
				out = append(out, promotionRecord{id: fmt.Sprint(i), epoch: uint64(i) + 2})
			}
			return out
		}, "17 promotions"},
	} {
		m := base
		m.volumes = []volumeMeta{base.volumes[0]}
		m.volumes[0].promotions = tc.change([]promotionRecord{p1, p2})
		if tc.name == "too many" {
			m.volumes[0].epoch = MaxPromotions + 2
		}
		_, err := decodeMeta(encodeMeta(m, snapVersion), snapVersion)
		if !errors.Is(err, errBadSnapshot) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// A count of promotions the frame cannot hold is refused before
	// anything is allocated (the count follows the volume's six numbers
	// and its copy window).
	p := encodeMeta(snapshotMeta{seq: 0, journalStart: 1, volumes: []volumeMeta{{name: "a", epoch: 1, blockCount: 1}}}, snapVersion)
	p[8*4+4+4+1+7*8+3] = 0xff
	if _, err := decodeMeta(p, snapVersion); !errors.Is(err, errBadSnapshot) || !strings.Contains(err.Error(), "promotions in") {
		t.Fatalf("huge count: %v", err)
	}
	// Version 4 metas have no histories.
	if _, err := decodeMeta(encodeMeta(base, snapVersion), snapVersionNoPromotions); err == nil {
		t.Fatal("a version 5 meta read as version 4")
	}
	if _, err := decodeMeta(encodeMeta(base, snapVersionNoPromotions), snapVersion); err == nil {
		t.Fatal("a version 4 meta read as version 5")
	}
}
