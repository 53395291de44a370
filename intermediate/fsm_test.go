package intermediate

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// Test helpers of the state machine's tests carry the prefix ft, so that
// they cannot collide with the rest of the package.

const ftGroup = "g1"

// ftBlock returns the deterministic content of block index of volume
// written by batch volumeSeq.
func ftBlock(volume string, index, volumeSeq uint64) []byte {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s/%d/%d", volume, index, volumeSeq)
	rng := rand.New(rand.NewPCG(h.Sum64(), volumeSeq))
	p := make([]byte, wire.BlockSize)
	for i := 0; i < len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], rng.Uint64())
	}
	return p
}

// ftBatch returns a sealed batch writing the given blocks.
func ftBatch(volume string, epoch, volumeSeq uint64, indexes ...uint64) *wire.Batch {
	b := &wire.Batch{Volume: volume, Epoch: epoch, VolumeSeq: volumeSeq}
	for _, i := range indexes {
		b.Blocks = append(b.Blocks, &wire.Block{Index: i, Data: ftBlock(volume, i, volumeSeq)})
	}
	return wire.Seal(b)
}

func ftSubmit(batches ...*wire.Batch) *wire.Entry {
	return &wire.Entry{Op: &wire.Entry_Submit{Submit: &wire.SubmitEntry{Batches: batches}}}
}

// ftFill sets the sessions of a submit entry to the current sessions of its
// batches' volumes in f (a volume f does not know gets session 0), as the
// leader's server stamps them.
func ftFill(f *FSM, e *wire.Entry) *wire.Entry {
	se := e.GetSubmit()
	if se == nil || len(se.Sessions) == len(se.Batches) {
		return e
	}
	se.Sessions = nil
	for _, b := range se.GetBatches() {
		info, _ := f.Volume(b.GetVolume())
		se.Sessions = append(se.Sessions, info.Session)
	}
	return e
}

func ftRegister(name string, blocks, epoch uint64) *wire.Entry {
	return &wire.Entry{Op: &wire.Entry_RegisterVolume{RegisterVolume: &wire.RegisterVolume{Volume: name, BlockCount: blocks, Epoch: epoch}}}
}

func ftSetEpoch(name string, epoch uint64) *wire.Entry {
	return &wire.Entry{Op: &wire.Entry_SetEpoch{SetEpoch: &wire.SetEpoch{Volume: name, Epoch: epoch}}}
}

func ftNodeAddr(id, addr string) *wire.Entry {
	return &wire.Entry{Op: &wire.Entry_NodeAddr{NodeAddr: &wire.NodeAddr{Id: id, ClientAddr: addr}}}
}

// ftEncode encodes an entry as a raft command log (the index is set when it
// is applied).
func ftEncode(t testing.TB, e *wire.Entry) *raft.Log {
	t.Helper()
	data, err := wire.EncodeEntry(e)
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Type: raft.LogCommand, Data: data}
}

// ftHarness drives one FSM with a raft log it records, so that the log can
// be replayed on another FSM.
type ftHarness struct {
	t      testing.TB
	fsys   blockdev.FS
	dir    string
	config func(*FSMConfig) // adjusts the configuration, when set
	f      *FSM
	log    []*raft.Log
	fatals atomic.Int32
	fatal  atomic.Value
}

func ftLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// ftNew opens an FSM on dir of fsys (a fresh MemFS when nil).
func ftNew(t testing.TB, fsys blockdev.FS, dir string) *ftHarness {
	t.Helper()
	return ftNewWith(t, fsys, dir, nil)
}

// ftNewWith is ftNew with config adjusting the FSM's configuration.
func ftNewWith(t testing.TB, fsys blockdev.FS, dir string, config func(*FSMConfig)) *ftHarness {
	t.Helper()
	if fsys == nil {
		fsys = blockdev.NewMemFS()
	}
	h := &ftHarness{t: t, fsys: fsys, dir: dir, config: config}
	h.open()
	t.Cleanup(func() { h.f.Close() })
	return h
}

func (h *ftHarness) open() {
	h.t.Helper()
	cfg := FSMConfig{Group: ftGroup, Dir: h.dir, FS: h.fsys, Logger: ftLogger(), OnFatal: func(err error) {
		h.fatal.Store(err) // before the count: tests poll the count, then read err
		h.fatals.Add(1)
	}}
	if h.config != nil {
		h.config(&cfg)
	}
	f, err := NewFSM(cfg)
	if err != nil {
		h.t.Fatalf("new fsm on %s: %v", h.dir, err)
	}
	h.f = f
}

// restart closes the FSM and opens a new one on the same directory.
func (h *ftHarness) restart() {
	h.t.Helper()
	if err := h.f.Close(); err != nil {
		h.t.Fatal(err)
	}
	h.open()
}

// applyLog appends l to the log with the next index and applies it.
func (h *ftHarness) applyLog(l *raft.Log) any {
	l.Index = uint64(len(h.log)) + 1
	l.Term = 1
	h.log = append(h.log, l)
	return h.f.Apply(l)
}

func (h *ftHarness) apply(e *wire.Entry) any {
	h.t.Helper()
	return h.applyLog(ftEncode(h.t, ftFill(h.f, e)))
}

func (h *ftHarness) submit(batches ...*wire.Batch) []BatchResult {
	h.t.Helper()
	res, ok := h.apply(ftSubmit(batches...)).(*SubmitResult)
	if !ok {
		h.t.Fatalf("submit: result %T", res)
	}
	return res.Batches
}

func (h *ftHarness) register(name string, blocks, epoch uint64) *RegisterResult {
	h.t.Helper()
	res, ok := h.apply(ftRegister(name, blocks, epoch)).(*RegisterResult)
	if !ok {
		h.t.Fatalf("register %q: result %T", name, res)
	}
	return res
}

// ftSink is a raft.SnapshotSink into memory.
type ftSink struct {
	bytes.Buffer
	closed, cancelled bool
}

func (s *ftSink) ID() string    { return "test-snapshot" }
func (s *ftSink) Cancel() error { s.cancelled = true; return nil }
func (s *ftSink) Close() error  { s.closed = true; return nil }

// ftSnapshot takes a snapshot of f and persists it into memory.
func ftSnapshot(t testing.TB, f *FSM) []byte {
	t.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	return ftPersist(t, snap)
}

func ftPersist(t testing.TB, snap raft.FSMSnapshot) []byte {
	t.Helper()
	defer snap.Release()
	sink := &ftSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatalf("persist: %v", err)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("persist: sink closed %t, cancelled %t", sink.closed, sink.cancelled)
	}
	return sink.Bytes()
}

func ftRestore(f *FSM, p []byte) error {
	return f.Restore(io.NopCloser(bytes.NewReader(p)))
}

// ftDump is everything observable of an FSM's state, for comparisons.
type ftDump struct {
	Stats        FSMStats // ValidatedSeq included
	Volumes      []VolumeInfo
	Secondaries  []SecondaryInfo
	Bitmaps      map[string][]RegionRange
	Nodes        map[string]string
	JournalStart uint64
	Trimmed      map[string]uint64
	Fetch        map[string][]string        // per volume: seq and the hash of each batch
	Images       map[string][32]byte        // per volume: hash of its blocks
	Promotions   map[string][]PromotionInfo // per volume promoted: its history
	Changed      map[string][]RegionRange   // per volume promoted: its changed-since-promotion bitmap
}

func ftDumpOf(t testing.TB, f *FSM) ftDump {
	t.Helper()
	d := ftDump{Stats: f.Stats(), Volumes: f.Volumes(), Secondaries: f.Secondaries(), Fetch: map[string][]string{}, Images: map[string][32]byte{},
		Trimmed: map[string]uint64{}, Promotions: map[string][]PromotionInfo{}, Changed: map[string][]RegionRange{}}
	f.mu.RLock()
	d.Nodes = maps.Clone(f.st.nodeAddrs)
	d.Bitmaps = map[string][]RegionRange{}
	for id, s := range f.st.secondaries {
		d.Bitmaps[id] = s.regions.ranges()
	}
	d.JournalStart = f.st.journalStart
	for name, rec := range f.st.volumes {
		d.Trimmed[name] = rec.trimmedSeq
	}
	f.mu.RUnlock()
	for _, v := range d.Volumes {
		batches, compacted, err := f.Fetch(v.Name, 0, 0)
		if err != nil {
			t.Fatalf("fetch %q: %v", v.Name, err)
		}
		if compacted {
			batches, _, err = f.Fetch(v.Name, d.Trimmed[v.Name], 0)
			if err != nil {
				t.Fatal(err)
			}
		}
		for _, cb := range batches {
			p, err := proto.MarshalOptions{Deterministic: true}.Marshal(cb)
			if err != nil {
				t.Fatal(err)
			}
			d.Fetch[v.Name] = append(d.Fetch[v.Name], fmt.Sprintf("%d:%x", cb.GetSeq(), sha256.Sum256(p)))
		}
		d.Images[v.Name] = ftImage(t, f, v.Name, v.BlockCount)
		if ps := f.Promotions(v.Name); ps != nil {
			d.Promotions[v.Name] = ps
		}
		if rs, ok := f.ChangedSincePromotion(v.Name); ok {
			d.Changed[v.Name] = rs
		}
	}
	return d
}

// ftImage hashes the blocks of an intermediate volume.
func ftImage(t testing.TB, f *FSM, volume string, blocks uint64) [32]byte {
	t.Helper()
	h := sha256.New()
	p := make([]byte, wire.BlockSize)
	for i := uint64(0); i < blocks; i++ {
		if err := f.ReadVolumeBlock(volume, i, p); err != nil {
			t.Fatalf("read block %d of %q: %v", i, volume, err)
		}
		h.Write(p)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// ftDrain waits for the applier to have written every entry applied.
func ftDrain(t testing.TB, f *FSM) {
	t.Helper()
	if err := f.drain(); err != nil {
		t.Fatalf("drain the applier: %v", err)
	}
}

// ftRawImage hashes every block of an open intermediate volume, the header
// included, whether the volume is registered or not.
func ftRawImage(t testing.TB, f *FSM, volume string) [32]byte {
	t.Helper()
	iv := f.vols[volume]
	if iv == nil {
		t.Fatalf("volume %q is not open", volume)
	}
	h := sha256.New()
	p := make([]byte, wire.BlockSize)
	for i := uint64(0); i <= iv.blocks; i++ {
		if err := iv.vol.ReadBlock(i, p); err != nil {
			t.Fatalf("read block %d of %q: %v", i, volume, err)
		}
		h.Write(p)
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

func ftSameDump(t testing.TB, what string, got, want ftDump) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: state differs\n got %+v\nwant %+v", what, got, want)
	}
}

// ftCheckInvariants checks the FSM's internal consistency.
func ftCheckInvariants(t testing.TB, f *FSM) {
	t.Helper()
	f.mu.RLock()
	defer f.mu.RUnlock()
	st := &f.st
	var bytes uint64
	perVolume := map[string][]*wire.CommittedBatch{}
	for i, cb := range st.journal {
		if cb.GetSeq() != st.journalStart+uint64(i) {
			t.Fatalf("journal[%d] has seq %d, journal from %d: seqs are not gapless", i, cb.GetSeq(), st.journalStart)
		}
		bytes += uint64(wire.BatchBytes(cb.GetBatch()))
		perVolume[cb.GetBatch().GetVolume()] = append(perVolume[cb.GetBatch().GetVolume()], cb)
	}
	if st.journalStart+uint64(len(st.journal)) != st.seq+1 {
		t.Fatalf("journal of %d batches from seq %d, counter %d", len(st.journal), st.journalStart, st.seq)
	}
	if bytes != st.journalBytes {
		t.Fatalf("journal bytes %d, computed %d", st.journalBytes, bytes)
	}
	if st.validated > st.seq {
		t.Fatalf("validated seq %d above the counter %d", st.validated, st.seq)
	}
	for id, s := range st.secondaries {
		if s.id != id || st.volumes[s.volume] == nil || checkSecondaryID(id) != nil {
			t.Fatalf("secondary %q: %+v (volume registered: %t)", id, s.info(), st.volumes[s.volume] != nil)
		}
		rec := st.volumes[s.volume]
		ranges := s.regions.ranges()
		var n uint64
		for _, r := range ranges {
			n += r.Count
			if r.Count == 0 || r.First+r.Count > regionCount(rec.blockCount) {
				t.Fatalf("secondary %q: run %+v outside the %d regions of volume %q", id, r, regionCount(rec.blockCount), s.volume)
			}
		}
		// A bitmap is marked up to a batch the journal dropped, or set by
		// a failback (which may leave it empty).
		if n != s.regions.count || (s.markedSeq == 0 && (n != 0 || s.failbackSeq != 0)) || (n == 0 && s.markedSeq != 0 && s.failbackSeq == 0) ||
			s.markedSeq > max(rec.trimmedSeq, s.failbackSeq) || s.markedSeq < s.failbackSeq || s.failbackSeq > max(st.seq, 1) ||
			s.coveredFrom > rec.trimmedSeq {
			t.Fatalf("secondary %q: %d regions in runs, count %d, marked up to %d, failback at %d, covered from %d, volume trimmed to %d (counter %d)",
				id, n, s.regions.count, s.markedSeq, s.failbackSeq, s.coveredFrom, rec.trimmedSeq, st.seq)
		}
		sm := secondaryMeta{id: s.id, volume: s.volume, addr: s.addr, suspended: s.suspended, coveredFrom: s.coveredFrom,
			resumeFrom: s.resumeFrom, markedSeq: s.markedSeq, ranges: ranges, failbackSeq: s.failbackSeq}
		if err := checkSecondaryMeta(sm, volumeMeta{name: rec.name, blockCount: rec.blockCount, trimmedSeq: rec.trimmedSeq}, st.seq); err != nil {
			t.Fatalf("secondary %q, as a snapshot carries it: %v", id, err)
		}
	}
	for name, rec := range st.volumes {
		if !slices.Equal(rec.batches, perVolume[name]) {
			t.Fatalf("volume %q: index of %d batches disagrees with the journal's %d", name, len(rec.batches), len(perVolume[name]))
		}
		if len(rec.sums) != len(rec.batches) || len(rec.times) != len(rec.batches) {
			t.Fatalf("volume %q: %d batches, %d sums, %d times", name, len(rec.batches), len(rec.sums), len(rec.times))
		}
		for i, cb := range rec.batches {
			if i > 0 && rec.sums[i] != rec.sums[i-1]+uint64(wire.BatchBytes(cb.GetBatch())) {
				t.Fatalf("volume %q: prefix sum %d after %d for a batch of %d bytes", name, rec.sums[i], rec.sums[i-1], wire.BatchBytes(cb.GetBatch()))
			}
			if i > 0 && cb.GetBatch().GetVolumeSeq() != rec.batches[i-1].GetBatch().GetVolumeSeq()+1 {
				t.Fatalf("volume %q: volume seq %d after %d", name, cb.GetBatch().GetVolumeSeq(), rec.batches[i-1].GetBatch().GetVolumeSeq())
			}
		}
		if n := len(rec.batches); n > 0 {
			last := rec.batches[n-1]
			if last.GetSeq() != rec.lastSeq || last.GetBatch().GetVolumeSeq() != rec.lastVolumeSeq {
				t.Fatalf("volume %q: record at %d/%d, journal at %d/%d", name, rec.lastVolumeSeq, rec.lastSeq, last.GetBatch().GetVolumeSeq(), last.GetSeq())
			}
		}
		if rec.epoch == 0 || rec.lastSeq > st.seq || rec.trimmedSeq >= st.journalStart || rec.trimmedSeq > rec.lastSeq ||
			(len(rec.batches) == 0 && rec.lastSeq != rec.trimmedSeq) {
			t.Fatalf("volume %q: epoch %d, last seq %d, trimmed to %d, %d batches (counter %d, journal from %d)",
				name, rec.epoch, rec.lastSeq, rec.trimmedSeq, len(rec.batches), st.seq, st.journalStart)
		}
		ftCheckPromotions(t, rec, st.seq)
		ftCheckChanged(t, rec)
		iv := f.vols[name]
		if iv == nil {
			t.Fatalf("volume %q has no intermediate volume", name)
		}
		if iv.hdr.applied < rec.lastSeq || iv.hdr.restoring || iv.blocks != rec.blockCount {
			t.Fatalf("volume %q: header %+v, record at seq %d with %d blocks", name, iv.hdr, rec.lastSeq, rec.blockCount)
		}
	}
}

// ftCheckPromotions checks a volume's promotion history: what a snapshot
// would carry, and what it must hold.
func ftCheckPromotions(t testing.TB, rec *volumeRecord, seq uint64) {
	t.Helper()
	vm := volumeMeta{name: rec.name, epoch: rec.epoch, lastSeq: rec.lastSeq, lastVolumeSeq: rec.lastVolumeSeq, promotions: rec.promotions}
	if err := checkPromotionsMeta(vm, seq); err != nil {
		t.Fatalf("promotion history: %v", err)
	}
}

// ftCheckChanged checks a volume's changed-since-promotion bitmap: there
// is one exactly when the volume was promoted, of its size in the
// secondaries' regions, and it marks every batch of the volume in the
// journal (each came after the promotion or was in the journal then).
func ftCheckChanged(t testing.TB, rec *volumeRecord) {
	t.Helper()
	if (rec.changed != nil) != (len(rec.promotions) > 0) {
		t.Fatalf("volume %q: %d promotions, changed-since-promotion bitmap %t", rec.name, len(rec.promotions), rec.changed != nil)
	}
	if rec.changed == nil {
		return
	}
	if rec.changed.BlockCount() != rec.blockCount || rec.changed.RegionSize() != changedRegionSize {
		t.Fatalf("volume %q of %d blocks: changed-since-promotion bitmap of %d blocks in regions of %d bytes",
			rec.name, rec.blockCount, rec.changed.BlockCount(), rec.changed.RegionSize())
	}
	for _, cb := range rec.batches {
		for _, b := range cb.GetBatch().GetBlocks() {
			if !rec.changed.IsSet(b.GetIndex() / wire.RegionBlocks) {
				t.Fatalf("volume %q: block %d of batch seq %d in the journal is not marked changed since the promotion",
					rec.name, b.GetIndex(), cb.GetSeq())
			}
		}
	}
}

// ftLeftovers lists the temporary directories in the volumes directory.
func ftLeftovers(t testing.TB, h *ftHarness) []string {
	t.Helper()
	names, err := h.fsys.ReadDir(labelVolumes, h.dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, ".") {
			out = append(out, n)
		}
	}
	return out
}

// ftWorkload builds a state over two volumes: registrations, batches
// interleaved, node addresses, repeated registrations and non-command
// entries.
func ftWorkload(t testing.TB, h *ftHarness, rounds int) {
	t.Helper()
	h.register("a", 16, 1)
	h.register("b", 8, 0)
	h.applyLog(&raft.Log{Type: raft.LogConfiguration})
	h.apply(ftNodeAddr("n1", "127.0.0.1:1"))
	vsA, vsB := uint64(0), uint64(0)
	for r := range rounds {
		var batches []*wire.Batch
		for range 1 + r%3 {
			vsA++
			batches = append(batches, ftBatch("a", 1, vsA, uint64(r)%16, (uint64(r)*7+3)%16))
		}
		if r%2 == 0 {
			vsB++
			batches = append(batches, ftBatch("b", 1, vsB, uint64(r)%8))
		}
		for _, res := range h.submit(batches...) {
			if res.Err != nil || res.Duplicate {
				t.Fatalf("round %d: %+v", r, res)
			}
		}
		if r%5 == 4 {
			h.applyLog(&raft.Log{Type: raft.LogNoop})
			h.register("a", 16, 1)
		}
	}
}

func TestFSMSeqGaplessAcrossVolumesAndEntries(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	if res := h.register("a", 16, 1); res.Err != nil || res.Volume != (VolumeInfo{Name: "a", Epoch: 1, BlockCount: 16, Session: 1}) {
		t.Fatalf("register a: %+v", res)
	}
	if res := h.register("b", 8, 0); res.Err != nil || res.Volume.Epoch != 1 {
		t.Fatalf("register b with epoch 0: %+v, want epoch 1", res)
	}
	model := map[string]map[uint64][]byte{"a": {}, "b": {}}
	seq, vs := uint64(0), map[string]uint64{}
	for r := range 30 {
		var batches []*wire.Batch
		for _, v := range []string{"a", "b", "a"}[:1+r%3] {
			vs[v]++
			idx := uint64(r*5) % 7
			batches = append(batches, ftBatch(v, 1, vs[v], idx, idx+1))
			model[v][idx] = ftBlock(v, idx, vs[v])
			model[v][idx+1] = ftBlock(v, idx+1, vs[v])
		}
		results := h.submit(batches...)
		for i, res := range results {
			seq++
			want := BatchResult{VolumeSeq: batches[i].GetVolumeSeq(), Seq: seq}
			if res != want {
				t.Fatalf("round %d batch %d: %+v, want %+v", r, i, res, want)
			}
		}
		switch r % 4 {
		case 0:
			h.applyLog(&raft.Log{Type: raft.LogNoop})
		case 1:
			h.apply(ftNodeAddr(fmt.Sprintf("n%d", r), "addr"))
		case 2:
			h.register("a", 16, 5)
		case 3:
			h.applyLog(&raft.Log{Type: raft.LogConfiguration})
		}
	}
	st := h.f.Stats()
	if st.CommittedSeq != seq || st.ValidSeq != seq || st.AppliedIndex != uint64(len(h.log)) || st.JournalBatches != seq {
		t.Fatalf("stats %+v: want committed = valid = %d, applied index %d", st, seq, len(h.log))
	}
	for _, v := range h.f.Volumes() {
		if v.LastVolumeSeq != vs[v.Name] || v.Epoch != 1 {
			t.Errorf("volume %+v: want last volume seq %d, epoch 1", v, vs[v.Name])
		}
		p := make([]byte, wire.BlockSize)
		for idx, want := range model[v.Name] {
			if err := h.f.ReadVolumeBlock(v.Name, idx, p); err != nil || !bytes.Equal(p, want) {
				t.Fatalf("block %d of %q: err %v, content differs: %t", idx, v.Name, err, !bytes.Equal(p, want))
			}
		}
	}
	if got := h.f.NodeAddr("n1"); got != "addr" {
		t.Errorf("node address of n1 = %q", got)
	}
	ftCheckInvariants(t, h.f)
}

func TestFSMDuplicateReturnsOriginalSeq(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 4, 1)
	h.register("b", 4, 1)
	h.submit(ftBatch("a", 1, 1, 0), ftBatch("b", 1, 1, 0), ftBatch("a", 1, 2, 1))
	before := h.f.Stats()
	res := h.submit(ftBatch("a", 1, 2, 1), ftBatch("a", 1, 1, 0), ftBatch("a", 1, 3, 2))
	want := []BatchResult{{VolumeSeq: 2, Seq: 3, Duplicate: true}, {VolumeSeq: 1, Seq: 1, Duplicate: true}, {VolumeSeq: 3, Seq: 4}}
	if !reflect.DeepEqual(res, want) {
		t.Fatalf("results %+v, want %+v", res, want)
	}
	if got := h.f.Stats(); got.CommittedSeq != before.CommittedSeq+1 {
		t.Fatalf("committed seq %d, want %d: duplicates must not take a seq", got.CommittedSeq, before.CommittedSeq+1)
	}
	h.f.trimJournal(3)
	res = h.submit(ftBatch("a", 1, 2, 1), ftBatch("a", 1, 3, 2))
	want = []BatchResult{{VolumeSeq: 2, Seq: 0, Duplicate: true}, {VolumeSeq: 3, Seq: 4, Duplicate: true}}
	if !reflect.DeepEqual(res, want) {
		t.Fatalf("after trim: results %+v, want %+v", res, want)
	}
	ftCheckInvariants(t, h.f)
}

func TestFSMGapNamesResumePoint(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 4, 1)
	h.submit(ftBatch("a", 1, 1, 0))
	res := h.submit(ftBatch("a", 1, 3, 0), ftBatch("a", 1, 2, 1), ftBatch("a", 1, 4, 1))
	var we *wire.Error
	if !errors.As(res[0].Err, &we) || we.Code != wire.ErrorCode_ERROR_CODE_GAP || we.ResumeVolumeSeq != 2 || !errors.Is(res[0].Err, wire.ErrGap) {
		t.Fatalf("batch 3 after 1: %+v, want GAP resuming at 2", res[0])
	}
	if res[1] != (BatchResult{VolumeSeq: 2, Seq: 2}) {
		t.Fatalf("batch 2: %+v", res[1])
	}
	if !errors.As(res[2].Err, &we) || we.ResumeVolumeSeq != 3 {
		t.Fatalf("batch 4 after 2: %+v, want GAP resuming at 3", res[2])
	}
	if !strings.Contains(res[2].Err.Error(), "resume at volume seq 3") {
		t.Errorf("gap error %q does not name the resume point", res[2].Err)
	}
	if res := h.submit(ftBatch("a", 1, 0, 0)); !errors.Is(res[0].Err, wire.ErrBadRequest) {
		t.Fatalf("volume seq 0: %+v, want BAD_REQUEST", res[0])
	}
	if got := h.f.Stats().CommittedSeq; got != 2 {
		t.Fatalf("committed seq %d, want 2", got)
	}
}

func TestFSMStaleEpochAfterSetEpoch(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 4, 1)
	h.submit(ftBatch("a", 1, 1, 0))
	res, _ := h.apply(ftSetEpoch("a", 3)).(*EpochResult)
	if res == nil || res.Err != nil || res.Volume.Epoch != 3 {
		t.Fatalf("set epoch 3: %+v", res)
	}
	for _, epoch := range []uint64{1, 2, 4} {
		r := h.submit(ftBatch("a", epoch, 2, 0))[0]
		var we *wire.Error
		if !errors.As(r.Err, &we) || we.Code != wire.ErrorCode_ERROR_CODE_STALE_EPOCH || we.Epoch != 3 {
			t.Fatalf("batch with epoch %d: %+v, want STALE_EPOCH at 3", epoch, r)
		}
	}
	if r := h.submit(ftBatch("a", 3, 2, 0))[0]; r != (BatchResult{VolumeSeq: 2, Seq: 2}) {
		t.Fatalf("batch with epoch 3: %+v", r)
	}
	for _, epoch := range []uint64{2, 3, 0} {
		res, _ := h.apply(ftSetEpoch("a", epoch)).(*EpochResult)
		if res == nil || res.Err != nil || res.Volume.Epoch != 3 {
			t.Fatalf("set epoch %d over 3: %+v, want a no-op", epoch, res)
		}
	}
	res, _ = h.apply(ftSetEpoch("zz", 9)).(*EpochResult)
	if res == nil || !errors.Is(res.Err, wire.ErrUnknownVolume) {
		t.Fatalf("set epoch of an unknown volume: %+v", res)
	}
}

func TestFSMUnknownVolume(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 4, 1)
	res := h.submit(ftBatch("nope", 1, 1, 0), ftBatch("a", 1, 1, 0))
	if !errors.Is(res[0].Err, wire.ErrUnknownVolume) || res[0].Seq != 0 {
		t.Fatalf("unknown volume: %+v", res[0])
	}
	if res[1] != (BatchResult{VolumeSeq: 1, Seq: 1}) {
		t.Fatalf("batch after the refused one: %+v", res[1])
	}
	if _, _, err := h.f.Fetch("nope", 0, 10); !errors.Is(err, wire.ErrUnknownVolume) {
		t.Fatalf("fetch of an unknown volume: %v", err)
	}
	if err := h.f.ReadVolumeBlock("nope", 0, make([]byte, wire.BlockSize)); !errors.Is(err, wire.ErrUnknownVolume) {
		t.Fatalf("read of an unknown volume: %v", err)
	}
}

// TestFSMStaleSession checks the fence between Submit streams of a volume:
// once a newer open recorded its RegisterVolume, a batch of the older stream
// that reaches the log later is refused and takes no seq, even when it
// carries the volume seq the newer stream will use.
func TestFSMStaleSession(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	old := h.register("a", 4, 1).Volume.Session
	h.register("b", 4, 1)
	h.submit(ftBatch("a", 1, 1, 0))
	cur := h.register("a", 4, 1).Volume
	if cur.Session == old || cur.LastVolumeSeq != 1 {
		t.Fatalf("second open: %+v (first session %d)", cur, old)
	}
	e := ftSubmit(ftBatch("a", 1, 2, 1), ftBatch("b", 1, 1, 1))
	e.GetSubmit().Sessions = []uint64{old, h.f.st.volumes["b"].session}
	res, ok := h.apply(e).(*SubmitResult)
	if !ok {
		t.Fatalf("submit: %T", res)
	}
	if r := res.Batches[0]; !errors.Is(r.Err, wire.ErrStaleSession) || r.Seq != 0 {
		t.Fatalf("batch of the old session: %+v, want STALE_SESSION", r)
	}
	if r := res.Batches[1]; r.Err != nil || r.Seq != 2 {
		t.Fatalf("batch of another volume in the same entry: %+v, want seq 2", r)
	}
	if r := h.submit(ftBatch("a", 1, 2, 2))[0]; r.Err != nil || r.Seq != 3 || r.Duplicate {
		t.Fatalf("batch of the new session with the same volume seq: %+v, want committed at seq 3", r)
	}
	// The session survives a snapshot.
	dst := ftNew(t, nil, "/dst")
	if err := ftRestore(dst.f, ftSnapshot(t, h.f)); err != nil {
		t.Fatal(err)
	}
	if got, _ := dst.f.Volume("a"); got.Session != cur.Session {
		t.Fatalf("session after restore: %d, want %d", got.Session, cur.Session)
	}
	// An entry whose sessions do not match its batches stops the FSM.
	bad := ftSubmit(ftBatch("a", 1, 3, 0))
	bad.GetSubmit().Sessions = []uint64{cur.Session, cur.Session}
	if _, ok := h.applyLog(ftEncode(t, bad)).(error); !ok {
		t.Fatal("an entry with two sessions for one batch was applied")
	}
	if err, _ := h.fatal.Load().(error); !errors.Is(err, wire.ErrBadEntry) {
		t.Fatalf("fatal error %v, want ErrBadEntry", err)
	}
}

func TestFSMRegisterVolume(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 4, 2)
	h.submit(ftBatch("a", 2, 1, 0))
	if res := h.register("a", 4, 2); res.Err != nil || res.Created ||
		res.Volume != (VolumeInfo{Name: "a", Epoch: 2, BlockCount: 4, LastVolumeSeq: 1, LastSeq: 1, Session: 3}) {
		t.Fatalf("register again: %+v, want the record unchanged but for a new session", res)
	}
	if res := h.register("a", 4, 0); res.Err != nil || res.Volume.Session != 4 || res.Volume.Epoch != 2 {
		t.Fatalf("register again at any epoch (0): %+v, want a new session", res)
	}
	// Another epoch is refused and starts no session: a fenced primary
	// must not end the stream of the volume's current one.
	for _, epoch := range []uint64{1, 7} {
		res := h.register("a", 4, epoch)
		var we *wire.Error
		if !errors.As(res.Err, &we) || we.Code != wire.ErrorCode_ERROR_CODE_STALE_EPOCH || we.Epoch != 2 || res.Volume.Session != 4 {
			t.Fatalf("register at epoch %d: %+v, want STALE_EPOCH at 2 and the session unchanged", epoch, res)
		}
	}
	if got, _ := h.f.Volume("a"); got.Session != 4 {
		t.Fatalf("session after refused registrations: %d, want 4", got.Session)
	}
	if res := h.register("a", 5, 2); !errors.Is(res.Err, wire.ErrVolumeMismatch) || res.Volume.BlockCount != 4 {
		t.Fatalf("register with another size: %+v, want VOLUME_MISMATCH", res)
	}
	for _, tc := range []struct {
		name   string
		blocks uint64
	}{
		{"", 4}, {".hidden", 4}, {"a/b", 4}, {"..", 4}, {strings.Repeat("x", 65), 4},
		{"ok", 0}, {"ok", maxBlockCount},
	} {
		if res := h.register(tc.name, tc.blocks, 1); !errors.Is(res.Err, wire.ErrBadRequest) {
			t.Errorf("register %q of %d blocks: %+v, want BAD_REQUEST", tc.name, tc.blocks, res)
		}
	}
	if vols := h.f.Volumes(); len(vols) != 1 {
		t.Fatalf("volumes %+v", vols)
	}
	if h.fatals.Load() != 0 {
		t.Fatalf("a refused registration stopped the state machine: %v", h.f.Failed())
	}
}

func TestFSMSubmitOneApplyPerVolume(t *testing.T) {
	cfs := &ftCountFS{FS: blockdev.NewMemFS()}
	h := ftNew(t, cfs, "/vols")
	h.register("a", 8, 1)
	h.register("b", 8, 1)
	cfs.logWrites.Store(0)
	h.submit(ftBatch("a", 1, 1, 0), ftBatch("b", 1, 1, 0), ftBatch("a", 1, 2, 1, 2), ftBatch("a", 1, 3, 1), ftBatch("b", 1, 2, 3))
	ftDrain(t, h.f)
	if n := cfs.logWrites.Load(); n != 2 {
		t.Fatalf("%d intent log writes for one entry over two volumes, want 2", n)
	}
	p := make([]byte, wire.BlockSize)
	if err := h.f.ReadVolumeBlock("a", 1, p); err != nil || !bytes.Equal(p, ftBlock("a", 1, 3)) {
		t.Fatalf("block 1 of a must hold the later batch's write (err %v)", err)
	}
}

// ftCountFS counts the writes to intent logs.
type ftCountFS struct {
	blockdev.FS
	logWrites atomic.Int64
}

func (c *ftCountFS) OpenFile(label, name string, flag int, perm fs.FileMode) (blockdev.File, error) {
	f, err := c.FS.OpenFile(label, name, flag, perm)
	if err != nil || label != blockdev.LabelLog {
		return f, err
	}
	return ftCountFile{File: f, n: &c.logWrites}, nil
}

type ftCountFile struct {
	blockdev.File
	n *atomic.Int64
}

func (f ftCountFile) WriteAt(p []byte, off int64) (int, error) {
	f.n.Add(1)
	return f.File.WriteAt(p, off)
}

func TestFSMFatalUndecodableEntry(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 4, 1)
	good := ftEncode(t, ftFill(h.f, ftSubmit(ftBatch("a", 1, 1, 0))))
	bad := &raft.Log{Type: raft.LogCommand, Data: bytes.Clone(good.Data)}
	bad.Data[len(bad.Data)/2] ^= 0xff
	res := h.applyLog(bad)
	if err, ok := res.(error); !ok || !errors.Is(err, wire.ErrFailed) {
		t.Fatalf("undecodable entry: result %v, want an error wrapping ErrFailed", res)
	}
	ftCheckStopped(t, h, wire.ErrBadEntry)
}

func TestFSMFatalBadBatch(t *testing.T) {
	for _, tc := range []struct {
		name  string
		batch func() *wire.Batch
		want  error
	}{
		{"bad crc", func() *wire.Batch { b := ftBatch("a", 1, 2, 0); b.Crc ^= 1; return b }, wire.ErrBadCRC},
		{"index outside", func() *wire.Batch { return ftBatch("a", 1, 2, 4) }, wire.ErrBadRequest},
		{"short block", func() *wire.Batch {
			b := ftBatch("a", 1, 2, 0)
			b.Blocks[0].Data = b.Blocks[0].Data[:100]
			return wire.Seal(b)
		}, wire.ErrBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := ftNew(t, nil, "/vols")
			h.register("a", 4, 1)
			h.submit(ftBatch("a", 1, 1, 1))
			before := ftDumpOf(t, h.f)
			res := h.apply(ftSubmit(ftBatch("a", 1, 2, 1), tc.batch()))
			if err, ok := res.(error); !ok || !errors.Is(err, wire.ErrFailed) {
				t.Fatalf("entry with a bad batch: result %v, want an error wrapping ErrFailed", res)
			}
			ftSameDump(t, "after the refused entry", ftDumpOf(t, h.f), before)
			ftCheckStopped(t, h, tc.want)
		})
	}
}

// ftCheckStopped checks that the FSM stopped on an error wrapping cause.
func ftCheckStopped(t *testing.T, h *ftHarness, cause error) {
	t.Helper()
	if n := h.fatals.Load(); n != 1 {
		t.Fatalf("OnFatal called %d times, want 1", n)
	}
	if err := h.f.Failed(); !errors.Is(err, cause) {
		t.Fatalf("Failed() = %v, want an error wrapping %v", err, cause)
	}
	if err, _ := h.fatal.Load().(error); !errors.Is(err, cause) {
		t.Fatalf("OnFatal got %v", err)
	}
	for _, e := range []*wire.Entry{ftRegister("z", 4, 1), ftSubmit(ftBatch("a", 1, 9, 0)), ftNodeAddr("x", "y")} {
		if err, ok := h.apply(e).(error); !ok || !errors.Is(err, wire.ErrFailed) {
			t.Fatalf("apply after the fatal error: %v, want ErrFailed", err)
		}
	}
	if n := h.fatals.Load(); n != 1 {
		t.Fatalf("OnFatal called %d times, want 1", n)
	}
	if _, err := h.f.Snapshot(); !errors.Is(err, wire.ErrFailed) {
		t.Fatalf("snapshot after the fatal error: %v, want ErrFailed", err)
	}
	if err := ftRestore(h.f, nil); !errors.Is(err, wire.ErrFailed) {
		t.Fatalf("restore after the fatal error: %v, want ErrFailed", err)
	}
}

func TestFSMReplayIdempotent(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("crash=%t", crash), func(t *testing.T) {
			mem := blockdev.NewMemFS()
			h := ftNew(t, mem, "/vols")
			ftWorkload(t, h, 25)
			want := ftDumpOf(t, h.f)
			// A reference FSM that applies the log once gives the results.
			ref := ftNew(t, nil, "/ref")
			results := make([]any, len(h.log))
			for i, l := range h.log {
				results[i] = ref.f.Apply(l)
			}
			if err := h.f.Close(); err != nil {
				t.Fatal(err)
			}
			if crash {
				mem.Crash()
			}
			h.open()
			if len(h.f.Volumes()) != 0 {
				t.Fatal("a restarted FSM must start from an empty state")
			}
			for i, l := range h.log {
				got := h.f.Apply(l)
				if !reflect.DeepEqual(got, results[i]) {
					t.Fatalf("replayed entry %d: %+v, want %+v", l.Index, got, results[i])
				}
			}
			ftSameDump(t, "after replay", ftDumpOf(t, h.f), want)
			ftCheckInvariants(t, h.f)
		})
	}
}

func TestSnapshotRestoreRoundTrip(t *testing.T) {
	mem := blockdev.NewMemFS()
	src := ftNew(t, mem, "/src")
	ftWorkload(t, src, 30)
	src.apply(ftSetEpoch("b", 4))
	src.submit(ftBatch("b", 4, src.f.Volumes()[1].LastVolumeSeq+1, 7))
	src.f.trimJournal(10)
	src.apply(ftNodeAddr("n2", "127.0.0.1:2"))
	want := ftDumpOf(t, src.f)
	snap := ftSnapshot(t, src.f)

	dst := ftNew(t, mem, "/dst")
	dst.register("old", 4, 1) // local state the snapshot replaces
	if err := ftRestore(dst.f, snap); err != nil {
		t.Fatalf("restore: %v", err)
	}
	ftSameDump(t, "restored", ftDumpOf(t, dst.f), want)
	ftCheckInvariants(t, dst.f)
	if left := ftLeftovers(t, dst); len(left) != 0 {
		t.Fatalf("temporary directories left: %v", left)
	}
	if ok, _ := blockdev.Exists(filepath.Join("/dst", "old"), mem); ok {
		t.Fatal("a volume the snapshot does not name was not removed")
	}
	// Both continue identically.
	l := ftEncode(t, ftFill(src.f, ftSubmit(ftBatch("a", 1, want.Volumes[0].LastVolumeSeq+1, 3))))
	l.Index = uint64(len(src.log)) + 1
	src.f.Apply(l)
	dst.f.Apply(l)
	ftSameDump(t, "after one more entry", ftDumpOf(t, dst.f), ftDumpOf(t, src.f))

	// A restarted node opens the restored volumes.
	dst.restart()
	if err := ftRestore(dst.f, snap); err != nil {
		t.Fatalf("restore after restart: %v", err)
	}
	ftCheckInvariants(t, dst.f)
}

// TestSnapshotFuzzyImage persists a snapshot while later entries are
// applied, some of them between the read of a volume's header and the read
// of its blocks, restores it elsewhere and replays the log after the
// snapshot's index: the result must equal the source.
func TestSnapshotFuzzyImage(t *testing.T) {
	mem := blockdev.NewMemFS()
	src := ftNew(t, mem, "/src")
	ftWorkload(t, src, 10)
	snap, err := src.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	snapIndex := uint64(len(src.log))
	va, vb := src.f.Volumes()[0].LastVolumeSeq, src.f.Volumes()[1].LastVolumeSeq
	for i := range uint64(4) {
		va, vb = va+1, vb+1
		src.submit(ftBatch("a", 1, va, i%16, (i+5)%16), ftBatch("b", 1, vb, i%8))
	}
	var headers []uint64
	src.f.imageHook = func(volume string, applied uint64) {
		headers = append(headers, applied)
		for i := range uint64(6) {
			va, vb = va+1, vb+1
			src.submit(ftBatch("a", 1, va, (i*3)%16, 15), ftBatch("b", 1, vb, (i+2)%8))
		}
	}
	data := ftPersist(t, snap)
	src.f.imageHook = nil
	if len(headers) != 2 || headers[0] == src.f.vols["a"].hdr.applied {
		t.Fatalf("the hook did not apply batches while the image was read (headers %v)", headers)
	}
	for i := range uint64(3) {
		va++
		src.submit(ftBatch("a", 1, va, (i*5)%16))
	}

	dst := ftNew(t, mem, "/dst")
	if err := ftRestore(dst.f, data); err != nil {
		t.Fatal(err)
	}
	if got := dst.f.vols["a"].hdr.applied; got != headers[0] {
		t.Fatalf("restored volume a at applied seq %d, want the image's %d", got, headers[0])
	}
	for _, l := range src.log[snapIndex:] {
		dst.f.Apply(l)
	}
	ftSameDump(t, "restored and replayed", ftDumpOf(t, dst.f), ftDumpOf(t, src.f))
	ftCheckInvariants(t, dst.f)
}

// TestSnapshotRestoreKeepsVolumeAhead is the restart case: a node restores
// its own snapshot over volumes that are ahead of it, after a clean
// shutdown or a crash that lost the batches applied after Persist.
func TestSnapshotRestoreKeepsVolumeAhead(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("crash=%t", crash), func(t *testing.T) {
			mem := blockdev.NewMemFS()
			h := ftNew(t, mem, "/vols")
			ftWorkload(t, h, 10)
			snap := ftSnapshot(t, h.f)
			snapIndex := uint64(len(h.log))
			snapApplied := h.f.vols["a"].hdr.applied
			va := h.f.Volumes()[0].LastVolumeSeq
			for i := range uint64(6) {
				h.submit(ftBatch("a", 1, va+i+1, i%16))
			}
			want := ftDumpOf(t, h.f)
			wantApplied := h.f.vols["a"].hdr.applied
			if crash {
				// The crash loses what was applied after Persist synced.
				wantApplied = snapApplied
				if err := h.f.Close(); err != nil {
					t.Fatal(err)
				}
				mem.Crash()
				h.open()
			} else {
				h.restart()
			}
			before := ftRawImage(t, h.f, "a")
			if err := ftRestore(h.f, snap); err != nil {
				t.Fatal(err)
			}
			if got := h.f.vols["a"].hdr.applied; got != wantApplied {
				t.Fatalf("volume a at applied seq %d after restore, want the local %d (kept)", got, wantApplied)
			}
			if got := ftRawImage(t, h.f, "a"); got != before {
				t.Fatal("volume a was rewritten from the snapshot instead of kept")
			}
			for _, l := range h.log[snapIndex:] {
				h.f.Apply(l)
			}
			ftSameDump(t, "after restart, restore and replay", ftDumpOf(t, h.f), want)
		})
	}
}

func TestSnapshotRestoreRewritesRestoringVolume(t *testing.T) {
	mem := blockdev.NewMemFS()
	h := ftNew(t, mem, "/vols")
	ftWorkload(t, h, 10)
	want := ftDumpOf(t, h.f)
	snap := ftSnapshot(t, h.f)

	// Leave volume a as a crash in the middle of a restore would: ahead
	// (so it would be kept) but restoring, and with other content.
	iv := h.f.vols["a"]
	hdr := iv.hdr
	hdr.applied, hdr.restoring = 1<<40, true
	if err := iv.writeHeader(hdr, true); err != nil {
		t.Fatal(err)
	}
	if err := iv.vol.Apply(t.Context(), &blockdev.Batch{Writes: []blockdev.Write{{Index: 0, Data: bytes.Repeat([]byte{0xee}, wire.BlockSize)}}}, blockdev.ApplyOptions{Sync: true}); err != nil {
		t.Fatal(err)
	}
	h.restart()
	if !h.f.vols["a"].hdr.restoring {
		t.Fatal("the reopened volume is not restoring")
	}
	if err := ftRestore(h.f, snap); err != nil {
		t.Fatal(err)
	}
	if got := h.f.vols["a"].hdr; got.restoring || got.applied != want.Volumes[0].LastSeq {
		t.Fatalf("header after restore %+v, want applied seq %d, not restoring", got, want.Volumes[0].LastSeq)
	}
	ftSameDump(t, "restored over a restoring volume", ftDumpOf(t, h.f), want)
}

func TestSnapshotRestoreRefusesCorruptStream(t *testing.T) {
	mem := blockdev.NewMemFS()
	src := ftNew(t, mem, "/src")
	ftWorkload(t, src, 8)
	src.f.trimJournal(3)
	snap := ftSnapshot(t, src.f)

	dst := ftNew(t, mem, "/dst")
	dst.register("a", 16, 1)
	dst.register("c", 4, 1)
	dst.submit(ftBatch("a", 1, 1, 5), ftBatch("c", 1, 1, 2))
	dst.apply(ftNodeAddr("n9", "x"))
	before := ftDumpOf(t, dst.f)

	check := func(what string, p []byte) {
		t.Helper()
		err := ftRestore(dst.f, p)
		if err == nil {
			t.Fatalf("%s: restore succeeded", what)
		}
		if !errors.Is(err, errBadSnapshot) {
			t.Fatalf("%s: error %v does not say the snapshot is bad", what, err)
		}
		ftSameDump(t, what, ftDumpOf(t, dst.f), before)
		if left := ftLeftovers(t, dst); len(left) != 0 {
			t.Fatalf("%s: temporary directories left: %v", what, left)
		}
		if dst.f.Failed() != nil {
			t.Fatalf("%s: a bad snapshot stopped the state machine: %v", what, dst.f.Failed())
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	offsets := []int{0, 1, 5, 8, 9, 20, len(snap) - 1, len(snap) - 5}
	for range 150 {
		offsets = append(offsets, rng.IntN(len(snap)))
	}
	for _, off := range offsets {
		p := bytes.Clone(snap)
		p[off] ^= 1 << rng.IntN(8)
		check(fmt.Sprintf("bit flipped at offset %d of %d", off, len(snap)), p)
	}
	for _, n := range []int{0, 1, 8, 9, 100, len(snap) / 2, len(snap) - 4, len(snap) - 1} {
		check(fmt.Sprintf("truncated to %d of %d bytes", n, len(snap)), snap[:n])
	}
	check("trailing byte", append(bytes.Clone(snap), 0))

	other := ftNew(t, mem, "/other")
	other.f.cfg.Group = "another"
	if err := ftRestore(other.f, snap); err == nil || !strings.Contains(err.Error(), `group "g1"`) {
		t.Fatalf("snapshot of another group: %v", err)
	}
	if err := ftRestore(dst.f, snap); err != nil {
		t.Fatalf("the intact snapshot: %v", err)
	}
}

func TestSnapshotStreamsLargeVolume(t *testing.T) {
	if testing.Short() {
		t.Skip("writes and reads a 256 MiB sparse volume")
	}
	const blocks = 256 << 20 / wire.BlockSize
	dir := t.TempDir()
	src := ftNew(t, blockdev.OSFS{}, filepath.Join(dir, "src"))
	src.register("big", blocks, 1)
	// 96 MiB of data in runs across the volume; the rest stays sparse.
	vs := uint64(0)
	for run := uint64(0); run < 96; run++ {
		vs++
		first := run * 512 // chunk-aligned runs of 256 blocks
		var idx []uint64
		for i := range uint64(256) {
			idx = append(idx, first+i)
		}
		src.submit(ftBatch("big", 1, vs, idx...))
	}
	src.f.trimJournal(vs)
	snap, err := src.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := &ftCountSink{}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	snap.Release()
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("persisted a %d MiB volume: %d bytes streamed, %d bytes allocated", blocks*wire.BlockSize>>20, sink.n, alloc)
	if alloc > 16<<20 {
		t.Fatalf("persist allocated %d bytes for a volume of %d: it must stream", alloc, blocks*wire.BlockSize)
	}
	if sink.n < 96<<20 || sink.n > 98<<20 {
		t.Fatalf("streamed %d bytes; want the 96 MiB of data with small frames around it", sink.n)
	}

	// Restore it elsewhere on the disk, from a file as Raft does: a staged
	// volume checkpoints as it goes, so restoring streams too.
	snapFile, err := os.Create(filepath.Join(dir, "snapshot"))
	if err != nil {
		t.Fatal(err)
	}
	defer snapFile.Close()
	snap2, err := src.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if err := snap2.Persist(&ftSinkWriter{w: snapFile}); err != nil {
		t.Fatal(err)
	}
	if _, err := snapFile.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	dst := ftNew(t, blockdev.OSFS{}, filepath.Join(dir, "dst"))
	// Sample the live heap while restoring (a full collection before each
	// sample, so only reachable bytes count): it must not grow with the
	// volume (each chunk is garbage once written).
	runtime.GC()
	runtime.ReadMemStats(&before)
	stopSampling := make(chan struct{})
	peak := make(chan uint64)
	go func() {
		var top uint64
		var ms runtime.MemStats
		for {
			runtime.GC()
			runtime.ReadMemStats(&ms)
			top = max(top, ms.HeapAlloc)
			select {
			case <-stopSampling:
				peak <- top
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	restoreErr := dst.f.Restore(io.NopCloser(snapFile))
	close(stopSampling)
	var grew uint64
	if top := <-peak; top > before.HeapAlloc {
		grew = top - before.HeapAlloc
	}
	if restoreErr != nil {
		t.Fatal(restoreErr)
	}
	t.Logf("restored a %d MiB volume (%d MiB of data): live heap grew by at most %d bytes", blocks*wire.BlockSize>>20, sink.n>>20, grew)
	// About 20 MiB is typical; allocations made while a sample's collection
	// runs count as live, which on one CPU can inflate a sample, so the bound
	// is the property itself: less than the volume's data.
	if grew >= uint64(sink.n) {
		t.Fatalf("restore grew the live heap by %d bytes for %d bytes of volume data: it must stream", grew, sink.n)
	}
	if got, want := ftImage(t, dst.f, "big", blocks), ftImage(t, src.f, "big", blocks); got != want {
		t.Fatal("restored volume differs")
	}
}

// ftCountSink is a raft.SnapshotSink that counts and drops what it gets.
type ftCountSink struct{ n int64 }

func (s *ftCountSink) Write(p []byte) (int, error) { s.n += int64(len(p)); return len(p), nil }
func (s *ftCountSink) ID() string                  { return "count" }
func (s *ftCountSink) Cancel() error               { return nil }
func (s *ftCountSink) Close() error                { return nil }

// ftSinkWriter is a raft.SnapshotSink over a writer.
type ftSinkWriter struct{ w io.Writer }

func (s *ftSinkWriter) Write(p []byte) (int, error) { return s.w.Write(p) }
func (s *ftSinkWriter) ID() string                  { return "writer" }
func (s *ftSinkWriter) Cancel() error               { return nil }
func (s *ftSinkWriter) Close() error                { return nil }

func TestFSMFetch(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 8, 1)
	h.register("b", 8, 1)
	for i := range uint64(10) {
		h.submit(ftBatch("a", 1, i+1, i%8), ftBatch("b", 1, i+1, i%8)) // a: odd seqs, b: even
	}
	batches, compacted, err := h.f.Fetch("a", 0, 0)
	if err != nil || compacted || len(batches) != 10 {
		t.Fatalf("fetch all of a: %d batches, compacted %t, err %v", len(batches), compacted, err)
	}
	for i, cb := range batches {
		if cb.GetSeq() != uint64(2*i+1) || cb.GetBatch().GetVolumeSeq() != uint64(i+1) || cb.GetBatch().GetVolume() != "a" {
			t.Fatalf("batch %d: seq %d, volume seq %d of %q", i, cb.GetSeq(), cb.GetBatch().GetVolumeSeq(), cb.GetBatch().GetVolume())
		}
	}
	batches, _, _ = h.f.Fetch("a", 6, 3)
	if got := ftSeqs(batches); !slices.Equal(got, []uint64{7, 9, 11}) {
		t.Fatalf("fetch a after 6, max 3: seqs %v", got)
	}
	batches, _, _ = h.f.Fetch("b", 19, 0)
	if got := ftSeqs(batches); !slices.Equal(got, []uint64{20}) {
		t.Fatalf("fetch b after 19: seqs %v", got)
	}
	if batches, _, _ := h.f.Fetch("b", 20, 0); len(batches) != 0 {
		t.Fatalf("fetch b after the last seq: %v", ftSeqs(batches))
	}

	// Blocking: take Changed before Fetch, wait, fetch again.
	got := make(chan []uint64)
	go func() {
		for {
			changed := h.f.Changed()
			batches, _, err := h.f.Fetch("b", 20, 0)
			if err != nil {
				close(got)
				return
			}
			if len(batches) > 0 {
				got <- ftSeqs(batches)
				return
			}
			<-changed
		}
	}()
	time.Sleep(10 * time.Millisecond)
	h.submit(ftBatch("a", 1, 11, 0))
	h.submit(ftBatch("b", 1, 11, 0))
	select {
	case seqs := <-got:
		if !slices.Equal(seqs, []uint64{22}) {
			t.Fatalf("blocked fetch got seqs %v, want [22]", seqs)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a fetch waiting on Changed was not woken")
	}

	// Compaction.
	h.f.trimJournal(8)
	if st := h.f.Stats(); st.JournalBatches != 22-8 || st.JournalBytes != (22-8)*wire.BlockSize {
		t.Fatalf("stats after trim to 8: %+v", st)
	}
	for _, tc := range []struct {
		volume    string
		after     uint64
		compacted bool
		first     uint64
	}{
		{"a", 0, true, 0}, {"a", 6, true, 0}, {"a", 7, false, 9}, {"a", 8, false, 9},
		{"b", 7, true, 0}, {"b", 8, false, 10},
	} {
		batches, compacted, err := h.f.Fetch(tc.volume, tc.after, 0)
		if err != nil || compacted != tc.compacted || (!compacted && (len(batches) == 0 || batches[0].GetSeq() != tc.first)) {
			t.Errorf("fetch %s after %d: seqs %v, compacted %t, err %v; want compacted %t, first %d",
				tc.volume, tc.after, ftSeqs(batches), compacted, err, tc.compacted, tc.first)
		}
	}
	h.f.trimJournal(1000) // bounded by the committed seq
	if st := h.f.Stats(); st.JournalBatches != 0 || st.JournalBytes != 0 {
		t.Fatalf("stats after trimming everything: %+v", st)
	}
	if r := h.submit(ftBatch("a", 1, 12, 0))[0]; r.Seq != 23 {
		t.Fatalf("batch after a full trim: %+v", r)
	}
	if batches, compacted, _ := h.f.Fetch("a", 21, 0); compacted || !slices.Equal(ftSeqs(batches), []uint64{23}) {
		t.Fatalf("fetch a after 21 once trimmed to 22: %v, compacted %t", ftSeqs(batches), compacted)
	}
	ftCheckInvariants(t, h.f)
}

func ftSeqs(batches []*wire.CommittedBatch) []uint64 {
	var out []uint64
	for _, cb := range batches {
		out = append(out, cb.GetSeq())
	}
	return out
}

// TestFSMConcurrentReaders runs the read side and Persist against Apply,
// for the race detector.
func TestFSMConcurrentReaders(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 16, 1)
	h.register("b", 16, 1)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for r := range 4 {
		wg.Go(func() {
			p := make([]byte, wire.BlockSize)
			for {
				select {
				case <-stop:
					return
				default:
				}
				h.f.Stats()
				h.f.Volumes()
				h.f.NodeAddr("n1")
				h.f.Changed()
				if _, _, err := h.f.Fetch("a", uint64(r), 5); err != nil {
					t.Error(err)
					return
				}
				if err := h.f.ReadVolumeBlock("b", uint64(r), p); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	var snaps []raft.FSMSnapshot
	for i := range uint64(60) {
		h.submit(ftBatch("a", 1, i+1, i%16, (i+1)%16), ftBatch("b", 1, i+1, i%16))
		h.apply(ftNodeAddr("n1", fmt.Sprint(i)))
		if i%20 == 0 {
			s, err := h.f.Snapshot()
			if err != nil {
				t.Fatal(err)
			}
			snaps = append(snaps, s)
			wg.Go(func() {
				if err := s.Persist(&ftCountSink{}); err != nil {
					t.Error(err)
				}
			})
		}
	}
	close(stop)
	wg.Wait()
	for _, s := range snaps {
		s.Release()
	}
}

func TestFSMOpenRefusesCorruptHeader(t *testing.T) {
	mem := blockdev.NewMemFS()
	h := ftNew(t, mem, "/vols")
	h.register("vol-1", 4, 1)
	h.submit(ftBatch("vol-1", 1, 1, 0))
	ftDrain(t, h.f) // the junk header must land after the batch's
	iv := h.f.vols["vol-1"]
	junk := bytes.Repeat([]byte{0x5a}, wire.BlockSize)
	if err := iv.vol.Apply(t.Context(), &blockdev.Batch{Writes: []blockdev.Write{{Index: 4, Data: junk}}}, blockdev.ApplyOptions{Sync: true}); err != nil {
		t.Fatal(err)
	}
	if err := h.f.Close(); err != nil {
		t.Fatal(err)
	}
	_, err := NewFSM(FSMConfig{Group: ftGroup, Dir: "/vols", FS: mem, Logger: ftLogger()})
	if err == nil || !strings.Contains(err.Error(), `"vol-1"`) || !errors.Is(err, blockdev.ErrCorrupt) {
		t.Fatalf("open over a corrupt header: %v, want an error naming the volume", err)
	}
}

func TestFSMOpenRemovesLeftovers(t *testing.T) {
	mem := blockdev.NewMemFS()
	h := ftNew(t, mem, "/vols")
	h.register("a", 4, 1)
	for _, dir := range []string{"/vols/.restore-a", "/vols/.new-b", "/vols/.old-c/sub"} {
		if err := mem.MkdirAll("test", dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	f, err := mem.OpenFile("test", "/vols/.restore-a/volume.data", 0o102, 0o600) // O_RDWR|O_CREATE
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	h.restart()
	if left := ftLeftovers(t, h); len(left) != 0 {
		t.Fatalf("leftovers not removed: %v", left)
	}
	if err := mem.MkdirAll("test", "/vols/not a volume", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := h.f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := NewFSM(FSMConfig{Group: ftGroup, Dir: "/vols", FS: mem, Logger: ftLogger()}); err == nil || !strings.Contains(err.Error(), "not a volume") {
		t.Fatalf("open with a stray entry: %v", err)
	}
}

func TestFSMRegisterRebuildsRestoringVolume(t *testing.T) {
	mem := blockdev.NewMemFS()
	h := ftNew(t, mem, "/vols")
	ftWorkload(t, h, 6)
	want := ftDumpOf(t, h.f)
	iv := h.f.vols["b"]
	hdr := iv.hdr
	hdr.restoring = true
	if err := iv.writeHeader(hdr, true); err != nil {
		t.Fatal(err)
	}
	h.restart()
	for _, l := range h.log {
		h.f.Apply(l)
	}
	ftSameDump(t, "replayed over a restoring volume", ftDumpOf(t, h.f), want)
}
