package intermediate

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate/wire"
)

func ftRegisterSecondary(id, volume, addr string) *wire.Entry {
	return &wire.Entry{Op: &wire.Entry_RegisterSecondary{RegisterSecondary: &wire.RegisterSecondary{Id: id, Volume: volume, Addr: addr}}}
}

func ftRemoveSecondary(id string) *wire.Entry {
	return &wire.Entry{Op: &wire.Entry_RemoveSecondary{RemoveSecondary: &wire.RemoveSecondary{Id: id}}}
}

func ftRecordValidated(seq uint64) *wire.Entry {
	return &wire.Entry{Op: &wire.Entry_RecordValidated{RecordValidated: &wire.RecordValidated{Seq: seq}}}
}

func (h *ftHarness) secondary(e *wire.Entry) *SecondaryResult {
	h.t.Helper()
	res, ok := h.apply(e).(*SecondaryResult)
	if !ok {
		h.t.Fatalf("%v: result %T", e, res)
	}
	return res
}

func TestFSMRegisterSecondary(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 4, 1)
	h.register("b", 4, 1)
	changes := func() <-chan struct{} { return h.f.Changed() }

	ch := changes()
	res := h.secondary(ftRegisterSecondary("s1", "a", "10.0.0.1:7301"))
	want := SecondaryInfo{ID: "s1", Volume: "a", Addr: "10.0.0.1:7301"}
	if res.Err != nil || !res.Created || res.Updated || res.Secondary != want {
		t.Fatalf("first registration: %+v", res)
	}
	select {
	case <-ch:
	default:
		t.Fatal("a registration did not signal Changed")
	}
	if res := h.secondary(ftRegisterSecondary("s1", "a", "10.0.0.1:7301")); res.Err != nil || res.Created || res.Updated || res.Secondary != want {
		t.Fatalf("same registration again: %+v", res)
	}
	res = h.secondary(ftRegisterSecondary("s1", "a", "10.0.0.9:7301"))
	want.Addr = "10.0.0.9:7301"
	if res.Err != nil || res.Created || !res.Updated || res.Secondary != want {
		t.Fatalf("new address: %+v", res)
	}
	h.secondary(ftRegisterSecondary("r0", "b", ""))
	for _, tc := range []struct {
		e    *wire.Entry
		want error
	}{
		{ftRegisterSecondary("s1", "b", "x"), wire.ErrVolumeMismatch},
		{ftRegisterSecondary("s2", "nope", "x"), wire.ErrUnknownVolume},
		{ftRegisterSecondary("", "a", "x"), wire.ErrBadRequest},
		{ftRegisterSecondary("s/2", "a", "x"), wire.ErrBadRequest},
		{ftRegisterSecondary(strings.Repeat("s", MaxSecondaryID+1), "a", "x"), wire.ErrBadRequest},
		{ftRegisterSecondary("s2", "../a", "x"), wire.ErrBadRequest},
		{ftRegisterSecondary("s2", "a", strings.Repeat("x", MaxSecondaryAddr+1)), wire.ErrBadRequest},
	} {
		res := h.secondary(tc.e)
		if !errors.Is(res.Err, tc.want) || res.Created || res.Updated {
			t.Errorf("%v: %+v, want %v", tc.e, res, tc.want)
		}
	}
	if got := h.f.Secondaries(); !reflect.DeepEqual(got, []SecondaryInfo{{ID: "r0", Volume: "b"}, want}) {
		t.Fatalf("Secondaries = %+v", got)
	}
	if got, ok := h.f.Secondary("s1"); !ok || got != want {
		t.Fatalf("Secondary(s1) = %+v %t", got, ok)
	}
	if res := h.secondary(ftRemoveSecondary("s1")); !res.Removed || res.Secondary != want || res.Err != nil {
		t.Fatalf("remove: %+v", res)
	}
	if res := h.secondary(ftRemoveSecondary("s1")); res.Removed || res.Err != nil {
		t.Fatalf("remove again: %+v", res)
	}
	if _, ok := h.f.Secondary("s1"); ok {
		t.Fatal("s1 still registered")
	}
	// Once removed, the ID may follow another volume.
	if res := h.secondary(ftRegisterSecondary("s1", "b", "")); res.Err != nil || !res.Created {
		t.Fatalf("register a removed ID for another volume: %+v", res)
	}
	if h.f.Failed() != nil || h.fatals.Load() != 0 {
		t.Fatalf("refusals stopped the state machine: %v", h.f.Failed())
	}
	ftCheckInvariants(t, h.f)
	if got := h.f.Stats().AppliedIndex; got != uint64(len(h.log)) {
		t.Fatalf("applied index %d after %d entries", got, len(h.log))
	}
}

func TestFSMRecordValidated(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 4, 1)
	for vs := uint64(1); vs <= 5; vs++ {
		h.submit(ftBatch("a", 1, vs, 0))
	}
	record := func(seq, want uint64) {
		t.Helper()
		res, ok := h.apply(ftRecordValidated(seq)).(*ValidatedResult)
		if !ok || res.Validated != want {
			t.Fatalf("record %d: %+v, want validated %d", seq, res, want)
		}
		if h.f.Validated() != want || h.f.Stats().ValidatedSeq != want {
			t.Fatalf("record %d: Validated %d, stats %d, want %d", seq, h.f.Validated(), h.f.Stats().ValidatedSeq, want)
		}
	}
	record(3, 3)
	record(2, 3) // an older leader's decision applied late: the maximum stays
	record(3, 3)
	record(5, 5)
	record(0, 5)
	// Above the valid counter: the coordinator never does that.
	before := ftDumpOf(t, h.f)
	if err, ok := h.apply(ftRecordValidated(6)).(error); !ok || !errors.Is(err, wire.ErrFailed) {
		t.Fatalf("validated above the valid counter: %v, want ErrFailed", err)
	}
	ftSameDump(t, "after the refused entry", ftDumpOf(t, h.f), before)
	ftCheckStopped(t, h, wire.ErrBadEntry)
}

// ftSecondaryState builds a state with secondaries and a validated seq.
func ftSecondaryState(t testing.TB, h *ftHarness) {
	ftWorkload(t, h, 12)
	h.apply(ftRegisterSecondary("sa", "a", "127.0.0.1:7301"))
	h.apply(ftRegisterSecondary("sb", "b", "127.0.0.1:7302"))
	h.apply(ftRegisterSecondary("sa2", "a", ""))
	h.apply(ftRemoveSecondary("sa2"))
	h.apply(ftRecordValidated(9))
	h.f.trimJournal(4)
}

func TestSnapshotSecondariesRoundTrip(t *testing.T) {
	src := ftNew(t, nil, "/src")
	ftSecondaryState(t, src)
	want := ftDumpOf(t, src.f)
	if want.Stats.ValidatedSeq != 9 || len(want.Secondaries) != 2 {
		t.Fatalf("source state: %+v", want)
	}
	dst := ftNew(t, nil, "/dst")
	dst.register("a", 16, 1)
	dst.apply(ftRegisterSecondary("old", "a", ""))
	if err := ftRestore(dst.f, ftSnapshot(t, src.f)); err != nil {
		t.Fatal(err)
	}
	ftSameDump(t, "restored", ftDumpOf(t, dst.f), want)
	ftCheckInvariants(t, dst.f)
}

// ftGoldenWorkload is the workload testdata/snapshot-v2.bin was made from,
// by the version 2 code (commit 5da795e).
func ftGoldenWorkload(t testing.TB, h *ftHarness) {
	h.register("a", 4, 1)
	h.register("b", 2, 1)
	h.apply(ftNodeAddr("n1", "127.0.0.1:1"))
	h.submit(ftBatch("a", 1, 1, 0), ftBatch("b", 1, 1, 1))
	h.submit(ftBatch("a", 1, 2, 3))
	h.submit(ftBatch("a", 1, 3, 1), ftBatch("b", 1, 2, 0))
	h.f.trimJournal(2)
	h.apply(ftSetEpoch("b", 2))
	h.submit(ftBatch("b", 2, 3, 1))
	h.register("a", 4, 1)
	h.apply(ftNodeAddr("n2", "127.0.0.1:2"))
}

// TestSnapshotRestoresVersion2 restores a snapshot written by the previous
// version of the format: the state is the same as the workload's, with no
// secondaries and nothing validated.
func TestSnapshotRestoresVersion2(t *testing.T) {
	old, err := os.ReadFile("testdata/snapshot-v2.bin")
	if err != nil {
		t.Fatal(err)
	}
	src := ftNew(t, nil, "/src")
	ftGoldenWorkload(t, src)
	want := ftDumpOf(t, src.f)

	dst := ftNew(t, nil, "/dst")
	if err := ftRestore(dst.f, old); err != nil {
		t.Fatalf("restore a version 2 snapshot: %v", err)
	}
	ftSameDump(t, "restored from version 2", ftDumpOf(t, dst.f), want)
	ftCheckInvariants(t, dst.f)
	// It goes on like a version 3 state and snapshots as version 3.
	dst.apply(ftRegisterSecondary("s", "a", ""))
	dst.apply(ftRecordValidated(4))
	again := ftNew(t, nil, "/again")
	if err := ftRestore(again.f, ftSnapshot(t, dst.f)); err != nil {
		t.Fatal(err)
	}
	ftSameDump(t, "version 3 of the restored state", ftDumpOf(t, again.f), ftDumpOf(t, dst.f))

	// A version 1 header is refused.
	v1 := ftNew(t, nil, "/v1")
	var e encoder
	e.raw([]byte(snapMagic))
	e.u32(1)
	e.str(ftGroup)
	var buf ftSink
	if err := (&frameWriter{w: &buf}).write(frameHeader, e.b); err != nil {
		t.Fatal(err)
	}
	if err := ftRestore(v1.f, buf.Bytes()); !errors.Is(err, errBadSnapshot) || !strings.Contains(err.Error(), "version 1") {
		t.Fatalf("version 1: %v", err)
	}
}

// TestSnapshotMetaRefusesBadSecondaries: a meta frame whose secondaries or
// validated seq disagree with the rest is refused, naming the problem.
func TestSnapshotMetaRefusesBadSecondaries(t *testing.T) {
	base := snapshotMeta{seq: 5, journalStart: 6, volumes: []volumeMeta{{name: "a", epoch: 1, blockCount: 4, lastVolumeSeq: 5, lastSeq: 5, trimmedSeq: 5}},
		validated: 5, secondaries: []secondaryMeta{{id: "s1", volume: "a"}, {id: "s2", volume: "a", addr: "x"}}}
	if _, err := decodeMeta(encodeMeta(base, snapVersion), snapVersion); err != nil {
		t.Fatalf("valid meta: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(m *snapshotMeta)
		want   string
	}{
		{"validated above the counter", func(m *snapshotMeta) { m.validated = 6 }, "validated seq 6 above the counter 5"},
		{"unsorted", func(m *snapshotMeta) { m.secondaries[0].id = "s3" }, `secondary "s2" after "s3"`},
		{"duplicate", func(m *snapshotMeta) { m.secondaries[1].id = "s1" }, `secondary "s1" after "s1"`},
		{"unknown volume", func(m *snapshotMeta) { m.secondaries[1].volume = "b" }, `secondary "s2" follows volume "b", which is not registered`},
		{"bad id", func(m *snapshotMeta) { m.secondaries[0].id = "" }, "empty secondary id"},
		{"long address", func(m *snapshotMeta) { m.secondaries[0].addr = strings.Repeat("x", MaxSecondaryAddr+1) }, "address of 257 bytes"},
		{"marked above the trim", func(m *snapshotMeta) {
			m.secondaries[0].markedSeq = 6
			m.secondaries[0].ranges = []RegionRange{{0, 1}}
		}, "marked up to 6"},
		{"covered above the trim", func(m *snapshotMeta) { m.secondaries[0].coveredFrom = 6 }, "covered from seq 6"},
		{"runs without a marked seq", func(m *snapshotMeta) { m.secondaries[0].ranges = []RegionRange{{0, 1}} }, "bitmap of 1 runs marked up to seq 0"},
		{"marked seq without runs", func(m *snapshotMeta) { m.secondaries[0].markedSeq = 3 }, "bitmap of 0 runs marked up to seq 3"},
		{"run outside the volume", func(m *snapshotMeta) {
			m.secondaries[0].markedSeq = 3
			m.secondaries[0].ranges = []RegionRange{{1, 1}}
		}, "run 0 of the bitmap, 1 regions from 1"},
		{"empty run", func(m *snapshotMeta) {
			m.secondaries[0].markedSeq = 3
			m.secondaries[0].ranges = []RegionRange{{0, 0}}
		}, "run 0 of the bitmap, 0 regions"},
	} {
		m := base
		m.secondaries = append([]secondaryMeta(nil), base.secondaries...)
		tc.change(&m)
		_, err := decodeMeta(encodeMeta(m, snapVersion), snapVersion)
		if !errors.Is(err, errBadSnapshot) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	// A count of secondaries the frame cannot hold is refused before
	// anything is allocated.
	p := encodeMeta(snapshotMeta{seq: 0, journalStart: 1}, snapVersion)
	p[len(p)-4] = 0xff
	if _, err := decodeMeta(p, snapVersion); !errors.Is(err, errBadSnapshot) || !strings.Contains(err.Error(), "secondaries in") {
		t.Fatalf("huge count: %v", err)
	}
	// Flags other than suspended are refused (the last secondary ends with
	// its flags, three seqs, its failback seq and a count of no runs).
	p = encodeMeta(base, snapVersion)
	p[len(p)-4-8-3*8-4] = 2
	if _, err := decodeMeta(p, snapVersion); !errors.Is(err, errBadSnapshot) || !strings.Contains(err.Error(), "flags 0x2") {
		t.Fatalf("unknown flag: %v", err)
	}
	// Version 2 metas end after the nodes.
	if _, err := decodeMeta(encodeMeta(snapshotMeta{seq: 0, journalStart: 1}, snapVersionNoSecondaries), snapVersion); err == nil {
		t.Fatal("a version 2 meta read as version 3")
	}
	if _, err := decodeMeta(encodeMeta(base, snapVersion), snapVersionNoSecondaries); err == nil {
		t.Fatal("a version 4 meta read as version 2")
	}
	if _, err := decodeMeta(encodeMeta(base, snapVersion), snapVersionNoBitmaps); err == nil {
		t.Fatal("a version 4 meta read as version 3")
	}
	if _, err := decodeMeta(encodeMeta(base, snapVersionNoBitmaps), snapVersion); err == nil {
		t.Fatal("a version 3 meta read as version 4")
	}
}

func TestFSMJournalLag(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 8, 1)
	h.register("b", 8, 1)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	submit := func(at time.Time, batches ...*wire.Batch) {
		t.Helper()
		l := ftEncode(t, ftFill(h.f, ftSubmit(batches...)))
		l.AppendedAt = at
		if _, ok := h.applyLog(l).(*SubmitResult); !ok {
			t.Fatal("submit failed")
		}
	}
	// a: seqs 1 (1 block), 3 (2 blocks), 4 (3 blocks); b: seq 2.
	submit(t0, ftBatch("a", 1, 1, 0), ftBatch("b", 1, 1, 0))
	submit(t0.Add(time.Second), ftBatch("a", 1, 2, 0, 1))
	submit(t0.Add(2*time.Second), ftBatch("a", 1, 3, 0, 1, 2))
	const bs = wire.BlockSize
	for _, tc := range []struct {
		volume  string
		after   uint64
		batches uint64
		bytes   uint64
		oldest  time.Time
	}{
		{"a", 0, 3, 6 * bs, t0},
		{"a", 1, 2, 5 * bs, t0.Add(time.Second)},
		{"a", 2, 2, 5 * bs, t0.Add(time.Second)},
		{"a", 3, 1, 3 * bs, t0.Add(2 * time.Second)},
		{"a", 4, 0, 0, time.Time{}},
		{"a", 100, 0, 0, time.Time{}},
		{"b", 0, 1, bs, t0},
		{"b", 2, 0, 0, time.Time{}},
		{"nope", 0, 0, 0, time.Time{}},
	} {
		n, b, oldest := h.f.JournalLag(tc.volume, tc.after)
		if n != tc.batches || b != tc.bytes || !oldest.Equal(tc.oldest) {
			t.Errorf("JournalLag(%s, %d) = %d, %d, %v; want %d, %d, %v", tc.volume, tc.after, n, b, oldest, tc.batches, tc.bytes, tc.oldest)
		}
	}
	// Trimmed batches no longer count.
	h.f.trimJournal(3)
	if n, b, oldest := h.f.JournalLag("a", 0); n != 1 || b != 3*bs || !oldest.Equal(t0.Add(2*time.Second)) {
		t.Fatalf("after trimming to 3: %d, %d, %v", n, b, oldest)
	}
	// An entry without an append time counts as committed when applied.
	before := time.Now()
	h.submit(ftBatch("b", 1, 2, 5))
	if n, b, oldest := h.f.JournalLag("b", 2); n != 1 || b != bs || oldest.Before(before) || oldest.After(time.Now()) {
		t.Fatalf("without an append time: %d, %d, %v (applied after %v)", n, b, oldest, before)
	}
	// A restored journal counts from the restore.
	dst := ftNew(t, nil, "/dst")
	before = time.Now()
	if err := ftRestore(dst.f, ftSnapshot(t, h.f)); err != nil {
		t.Fatal(err)
	}
	if n, b, oldest := dst.f.JournalLag("a", 0); n != 1 || b != 3*bs || oldest.Before(before) || oldest.After(time.Now()) {
		t.Fatalf("restored: %d, %d, %v (restored after %v)", n, b, oldest, before)
	}
	ftCheckInvariants(t, dst.f)
}
