package intermediate

import (
	"testing"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// TestFSMTrimJournalEntry applies TrimJournal entries: the journal and the
// volumes' indexes drop the batches up to the seq (never past the committed
// seq), Fetch of a dropped batch says compacted, and a snapshot keeps the
// trimmed journal.
func TestFSMTrimJournalEntry(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 8, 1)
	h.register("b", 8, 1)
	for vs := uint64(1); vs <= 3; vs++ {
		h.submit(ftBatch("a", 1, vs, 0), ftBatch("b", 1, vs, 1))
	}
	trim := func(up uint64) {
		t.Helper()
		if res := h.apply(&wire.Entry{Op: &wire.Entry_TrimJournal{TrimJournal: &wire.TrimJournal{UpToSeq: up}}}); res != nil {
			t.Fatalf("trim to %d: %v", up, res)
		}
	}
	trim(4)
	st := h.f.Stats()
	if st.JournalBatches != 2 || st.JournalStart != 5 || st.CommittedSeq != 6 {
		t.Fatalf("after trimming to 4: %+v", st)
	}
	if _, compacted, err := h.f.Fetch("a", 2, 10); err != nil || !compacted {
		t.Fatalf("fetch of a trimmed batch: compacted %v, err %v", compacted, err)
	}
	if got, compacted, err := h.f.Fetch("b", 4, 10); err != nil || compacted || len(got) != 1 || got[0].GetSeq() != 6 {
		t.Fatalf("fetch after the trim point: %v %v %v", got, compacted, err)
	}
	trim(2)    // behind: no change
	trim(1000) // bounded by the committed seq
	if st := h.f.Stats(); st.JournalBatches != 0 || st.JournalStart != 7 || st.JournalBytes != 0 {
		t.Fatalf("after trimming everything: %+v", st)
	}
	// Later batches are journaled as usual, and a snapshot carries the
	// trimmed journal.
	h.submit(ftBatch("a", 1, 4, 2))
	dst := ftNew(t, nil, "/dst")
	if err := ftRestore(dst.f, ftSnapshot(t, h.f)); err != nil {
		t.Fatal(err)
	}
	if st := dst.f.Stats(); st.JournalBatches != 1 || st.JournalStart != 7 || st.CommittedSeq != 7 {
		t.Fatalf("restored: %+v", st)
	}
}

// TestTrimPoint checks the trim bound the primaries' reports give.
func TestTrimPoint(t *testing.T) {
	r := newPrimaryReports()
	vols := []VolumeInfo{{Name: "a", LastSeq: 90}, {Name: "b", LastSeq: 100}, {Name: "c", LastSeq: 5}}
	// b never reported: the journal stays (c's batches are all trimmed).
	if got := r.trimPoint(vols, 100, 10); got != 9 {
		t.Fatalf("with an unreported volume: %d, want 9 (no progress)", got)
	}
	r.connect("b", 3)
	r.report("b", 3, &wire.PrimaryReport{State: "PAIR", DurableSeq: 70})
	if got := r.trimPoint(vols, 100, 10); got != 9 {
		t.Fatalf("a unreported: %d, want 9", got)
	}
	r.report("a", 2, &wire.PrimaryReport{State: "PAIR", DurableSeq: 90})
	if got := r.trimPoint(vols, 100, 10); got != 70 {
		t.Fatalf("a holds all its batches, b up to 70: %d, want 70", got)
	}
	r.report("b", 3, &wire.PrimaryReport{State: "SUSP", DurableSeq: 100})
	if got := r.trimPoint(vols, 100, 10); got != 100 {
		t.Fatalf("every primary holds its batches: %d, want 100", got)
	}
	// A report of an older stream is ignored.
	r.report("b", 1, &wire.PrimaryReport{DurableSeq: 0})
	if got := r.trimPoint(vols, 100, 10); got != 100 {
		t.Fatalf("after a stale report: %d, want 100", got)
	}
}

// TestSecondaryTrimPoint checks the trim bound the secondaries' applied
// points give.
func TestSecondaryTrimPoint(t *testing.T) {
	vols := []VolumeInfo{{Name: "a", LastSeq: 90}, {Name: "b", LastSeq: 100}, {Name: "c", LastSeq: 5}}
	applied := map[string]uint64{}
	get := func(id string) uint64 { return applied[id] }
	if got := secondaryTrimPoint(vols, nil, get, 100, 10); got != 100 {
		t.Fatalf("no secondaries: %d, want 100", got)
	}
	secs := []SecondaryInfo{{ID: "sa", Volume: "a"}, {ID: "sb", Volume: "b"}, {ID: "sb2", Volume: "b"}, {ID: "sc", Volume: "c"}}
	// Nobody heard from: the journal stays (sc's volume has nothing in it).
	if got := secondaryTrimPoint(vols, secs, get, 100, 10); got != 0 {
		t.Fatalf("nobody heard from: %d, want 0", got)
	}
	applied["sa"], applied["sb"], applied["sb2"] = 90, 60, 80
	if got := secondaryTrimPoint(vols, secs, get, 100, 10); got != 60 {
		t.Fatalf("sb at 60: %d, want 60", got)
	}
	applied["sb"] = 100
	if got := secondaryTrimPoint(vols, secs, get, 100, 10); got != 80 {
		t.Fatalf("sb2 at 80: %d, want 80", got)
	}
	applied["sb2"] = 120 // above its volume's last batch: no bound
	if got := secondaryTrimPoint(vols, secs, get, 100, 10); got != 100 {
		t.Fatalf("everyone applied everything: %d, want 100", got)
	}
	applied["sa"] = 50
	if got := secondaryTrimPoint(vols, secs, get, 100, 10); got != 50 {
		t.Fatalf("sa at 50: %d, want 50", got)
	}
}

// TestSecondaryTrimPointSkipsSuspended: a suspended secondary no longer
// bounds the trim point, and the lagging secondary is the lowest bound.
func TestSecondaryTrimPointSkipsSuspended(t *testing.T) {
	vols := []VolumeInfo{{Name: "a", LastSeq: 90}}
	applied := map[string]uint64{"s1": 40, "s2": 20, "s3": 20}
	get := func(id string) uint64 { return applied[id] }
	secs := []SecondaryInfo{{ID: "s1", Volume: "a"}, {ID: "s2", Volume: "a"}, {ID: "s3", Volume: "a"}}
	if id, bound, ok := laggingSecondary(vols, secs, get, 100, 10); !ok || id != "s2" || bound != 20 {
		t.Fatalf("lagging: %q %d %t, want s2 at 20 (first of the lowest)", id, bound, ok)
	}
	secs[1].Suspended, secs[2].Suspended = true, true
	if got := secondaryTrimPoint(vols, secs, get, 100, 10); got != 40 {
		t.Fatalf("s2 and s3 suspended: %d, want 40", got)
	}
	secs[0].Suspended = true
	if got := secondaryTrimPoint(vols, secs, get, 100, 10); got != 100 {
		t.Fatalf("all suspended: %d, want 100", got)
	}
	if _, _, ok := laggingSecondary(vols, secs, get, 100, 10); ok {
		t.Fatal("a suspended secondary reported lagging")
	}
}
