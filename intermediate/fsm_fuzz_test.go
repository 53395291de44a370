package intermediate

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"testing"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// Modes of FuzzFSMApply: how the input becomes a log entry.
const (
	ftFuzzRaw    = iota // the bytes are the entry
	ftFuzzFramed        // the bytes are the protobuf body, framed with a valid CRC
	ftFuzzSealed        // as framed, with every batch resealed so that it passes its CRC
)

// ftFuzzMaxBlocks bounds the volumes a fuzzed entry may register: MemFS
// holds a volume's data file in memory.
const ftFuzzMaxBlocks = 64

// ftFuzzBase builds the state the fuzz targets start from.
func ftFuzzBase(t testing.TB, fsys blockdev.FS) *ftHarness {
	h := ftNew(t, fsys, "/vols")
	h.register("a", 8, 1)
	h.register("b", 4, 2)
	h.submit(ftBatch("a", 1, 1, 0, 7), ftBatch("b", 2, 1, 3))
	h.submit(ftBatch("a", 1, 2, 1))
	h.apply(ftNodeAddr("n1", "127.0.0.1:1"))
	h.apply(ftRegisterSecondary("sa", "a", "127.0.0.1:7301"))
	h.apply(ftRegisterSecondary("sb", "b", ""))
	h.apply(ftSuspend("sb", 0))
	h.apply(ftRecordValidated(2))
	// Recorded late, at seq 2: a's batch 3 follows the point. a is at
	// epoch 2, b at 3.
	h.apply(ftPromoteAt("p0", "fuzz", ftPromoteTime, 2, 0))
	return h
}

// ftFrame frames a protobuf body as wire.EncodeEntry does.
func ftFrame(body []byte) []byte {
	p := append([]byte{1}, body...)
	return binary.LittleEndian.AppendUint32(p, crc32.Checksum(p, crc32.MakeTable(crc32.Castagnoli)))
}

func ftFuzzSeedBody(t testing.TB, e *wire.Entry) []byte {
	b, err := proto.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// FuzzFSMApply applies arbitrary bytes as a log entry: the FSM must never
// panic, must stop (not skip) on an entry it cannot decode, and otherwise
// must keep its invariants.
func FuzzFSMApply(f *testing.F) {
	// Small seeds (one block each): the fuzzer minimises what it finds, and
	// that takes time proportional to the input's size.
	base := ftFuzzBase(f, nil).f
	for _, e := range []*wire.Entry{
		ftFill(base, ftSubmit(ftBatch("a", 2, 3, 2))),
		ftFill(base, ftSubmit(ftBatch("b", 3, 2, 1))),
		ftFill(base, ftSubmit(ftBatch("a", 2, 3, 2), ftBatch("b", 3, 2, 1))),
		ftFill(base, ftSubmit(ftBatch("a", 1, 3, 2))), // the epoch before the promotion: refused
		ftSubmit(ftBatch("a", 2, 3, 2)),               // no sessions: stops the FSM
		ftRegister("c", 16, 1),
		ftRegister("a", 9, 2),
		ftRegister("a", 8, 1), // the epoch before the promotion: refused
		ftRegister("a", 8, 2),
		ftSetEpoch("b", 4),
		ftNodeAddr("n2", "x"),
		ftRegisterSecondary("sb", "b", "127.0.0.1:7302"),
		ftRegisterSecondary("sa", "b", ""), // another volume: refused
		ftRegisterSecondary("sa", "a", "elsewhere"),
		ftRemoveSecondary("sa"),
		ftRecordValidated(3),
		ftRecordValidated(1),
		ftRecordValidated(4), // above the valid counter: stops the FSM
		ftTrim(2),            // marks sb's bitmap
		ftTrim(3),
		ftSuspend("sa", 1),
		ftSuspend("sb", 2),
		ftSuspend("zz", 0), // unknown: refused
		ftClear("sb", 2),
		ftClear("sa", 0),
		ftRegisterSecondary("sb", "b", ""), // resumes sb
		ftPromote("p1", "host", ftPromoteTime),
		ftPromote("p0", "again", ftPromoteTime),         // already recorded, with a's batch 3 after it
		ftPromote("", "", ftPromoteTime),                // refused
		ftPromoteAt("p1", "late", ftPromoteTime, 2, 0),  // at the last promotion's seq
		ftPromoteAt("p1", "", ftPromoteTime, 4, 0),      // above the counter: refused
		ftPromoteAt("p1", "", ftPromoteTime, 1, 0),      // below the last promotion's seq: refused
		ftPromoteAt("p1", "", ftPromoteTime, 0, 2),      // b at another epoch: refused
		ftPromoteAt("p0", "again", ftPromoteTime, 1, 9), // already recorded
		ftFailback("sa", "a", nil),
		ftFailback("sb", "b", ftPrimaryBitmap(f, 4, blockdev.BlockSize, 2)), // resumes sb
		ftFailback("sa", "a", ftPrimaryBitmap(f, 8, 1<<20, 0)),
		ftFailback("sa", "b", nil),                         // another volume: refused
		ftFailback("zz", "a", nil),                         // not registered: refused
		ftFailback("sa", "a", []byte("junk")),              // refused
		ftFailback("sa", "a", ftPrimaryBitmap(f, 9, 0, 0)), // another size: refused
	} {
		framed, err := wire.EncodeEntry(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(byte(ftFuzzRaw), framed)
		f.Add(byte(ftFuzzFramed), ftFuzzSeedBody(f, e))
		f.Add(byte(ftFuzzSealed), ftFuzzSeedBody(f, e))
	}
	f.Add(byte(ftFuzzRaw), []byte{})
	f.Add(byte(ftFuzzRaw), []byte{1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, mode byte, data []byte) {
		var l *raft.Log
		switch mode % 3 {
		case ftFuzzRaw:
			l = &raft.Log{Type: raft.LogCommand, Data: data}
		case ftFuzzFramed, ftFuzzSealed:
			e := new(wire.Entry)
			if proto.Unmarshal(data, e) == nil {
				if rv := e.GetRegisterVolume(); rv != nil && rv.GetBlockCount() > ftFuzzMaxBlocks {
					t.Skip("registers a volume too large for MemFS")
				}
				if mode%3 == ftFuzzSealed {
					for _, b := range e.GetSubmit().GetBatches() {
						wire.Seal(b)
					}
					body, err := proto.Marshal(e)
					if err != nil {
						t.Skip()
					}
					data = body
				}
			}
			l = &raft.Log{Type: raft.LogCommand, Data: ftFrame(data)}
		}
		h := ftFuzzBase(t, nil)
		before := h.f.Stats()
		res := h.applyLog(l)
		if failed := h.f.Failed(); failed != nil {
			if _, ok := res.(error); !ok {
				t.Fatalf("the entry stopped the FSM (%v) but Apply returned %T", failed, res)
			}
			if h.fatals.Load() != 1 {
				t.Fatalf("OnFatal called %d times", h.fatals.Load())
			}
			return
		}
		if err, ok := res.(error); ok {
			t.Fatalf("Apply returned error %v without stopping the FSM", err)
		}
		ftCheckInvariants(t, h.f)
		after := h.f.Stats()
		if sr, ok := res.(*SubmitResult); ok {
			accepted := uint64(0)
			for _, r := range sr.Batches {
				if r.Err == nil && !r.Duplicate {
					accepted++
					if r.Seq != before.CommittedSeq+accepted {
						t.Fatalf("accepted batch got seq %d, want %d", r.Seq, before.CommittedSeq+accepted)
					}
				}
			}
			if after.CommittedSeq != before.CommittedSeq+accepted {
				t.Fatalf("committed seq %d after %d accepted batches from %d", after.CommittedSeq, accepted, before.CommittedSeq)
			}
		} else if after.CommittedSeq != before.CommittedSeq {
			t.Fatalf("a %T entry moved the seq from %d to %d", res, before.CommittedSeq, after.CommittedSeq)
		}
		if pr, ok := res.(*PromoteResult); ok && pr.Err == nil {
			// A promotion raised every epoch by one: none of the base's
			// volumes keeps its epoch.
			if !pr.Already && (pr.Seq > before.CommittedSeq || len(pr.Volumes) != 2 || pr.Volumes[0].Epoch != 3 || pr.Volumes[1].Epoch != 4) {
				t.Fatalf("promotion of the base: %+v", pr)
			}
			ftCheckAfter(t, h.f, "promotion of the base", pr)
		}
		if fr, ok := res.(*FailbackResult); ok && fr.Err == nil {
			s := fr.Secondary
			if s.Suspended || s.FailbackSeq != max(before.CommittedSeq, 1) || s.MarkedSeq != s.FailbackSeq || s.DirtyRegions != fr.Regions ||
				fr.Epoch == 0 {
				t.Fatalf("failback: %+v", fr)
			}
		}
		if after.ValidatedSeq < before.ValidatedSeq {
			t.Fatalf("validated seq went back from %d to %d", before.ValidatedSeq, after.ValidatedSeq)
		}
	})
}

// ftLimitFS refuses to size a file beyond a limit, so that a fuzzed
// snapshot cannot make MemFS allocate a huge volume.
type ftLimitFS struct{ blockdev.FS }

func (l ftLimitFS) OpenFile(label, name string, flag int, perm fs.FileMode) (blockdev.File, error) {
	f, err := l.FS.OpenFile(label, name, flag, perm)
	if err != nil {
		return nil, err
	}
	return ftLimitFile{f}, nil
}

type ftLimitFile struct{ blockdev.File }

func (f ftLimitFile) Truncate(size int64) error {
	if size > ftFuzzMaxBlocks*blockdev.BlockSize {
		return fmt.Errorf("test file system: file of %d bytes refused", size)
	}
	return f.File.Truncate(size)
}

// Modes of FuzzSnapshotRestore.
const (
	ftSnapRaw    = iota // the bytes are the stream
	ftSnapFramed        // the bytes are frames (type, 4-byte length, payload) that get valid checksums
)

// ftUnframe turns a snapshot stream into the framed mode's input: the
// frames without their checksums.
func ftUnframe(stream []byte) []byte {
	var out []byte
	for len(stream) > 0 {
		n := int(binary.LittleEndian.Uint32(stream[1:]))
		out = append(out, stream[0])
		out = binary.LittleEndian.AppendUint32(out, uint32(n))
		out = append(out, stream[frameHeadSize:frameHeadSize+n]...)
		stream = stream[frameHeadSize+n+4:]
	}
	return out
}

// ftReframe builds a stream of frames with valid checksums from the framed
// mode's input; an incomplete last frame is cut short as it is.
func ftReframe(data []byte) []byte {
	var buf bytes.Buffer
	fw := &frameWriter{w: &buf}
	for len(data) >= 5 {
		typ, n := data[0], int(binary.LittleEndian.Uint32(data[1:]))
		data = data[5:]
		if n > len(data) {
			n = len(data)
		}
		fw.write(typ, data[:n])
		data = data[n:]
	}
	return append(buf.Bytes(), data...)
}

// ftAsVersion2 rewrites a snapshot of a state without secondaries and
// with nothing validated as version 2 wrote it.
func ftAsVersion2(t testing.TB, stream []byte) []byte {
	t.Helper()
	return ftAsVersion(t, stream, snapVersionNoSecondaries, func(m *snapshotMeta) bool {
		return m.validated == 0 && len(m.secondaries) == 0
	})
}

// ftAsVersion rewrites a snapshot of the current version as version wrote
// it: the header's version and the meta frame re-encoded, the rest as is.
// fits says whether the state can be held by that version at all.
func ftAsVersion(t testing.TB, stream []byte, version uint32, fits func(*snapshotMeta) bool) []byte {
	t.Helper()
	fr := &frameReader{r: bufio.NewReader(bytes.NewReader(stream))}
	var out bytes.Buffer
	fw := &frameWriter{w: &out}
	p, err := fr.next(frameHeader, maxSmallFrame)
	if err != nil {
		t.Fatal(err)
	}
	d := decoder{b: p}
	magic, _, group := d.raw(len(snapMagic)), d.u32(), d.str()
	var e encoder
	e.raw(magic)
	e.u32(version)
	e.str(group)
	fw.write(frameHeader, e.b)
	p, err = fr.next(frameMeta, maxMetaFrame)
	if err != nil {
		t.Fatal(err)
	}
	m, err := decodeMeta(p, snapVersion)
	if err != nil || !fits(&m) {
		t.Fatalf("not a state version %d can hold: %+v, %v", version, m, err)
	}
	for _, v := range m.volumes {
		if version < snapVersion && v.copySince != 0 {
			t.Fatalf("volume %q has an open copy window, which version %d cannot hold", v.name, version)
		}
		if version < snapVersionNoChanged && len(v.promotions) != 0 {
			t.Fatalf("volume %q was promoted, which version %d cannot hold", v.name, version)
		}
	}
	for _, s := range m.secondaries {
		if version < snapVersionNoCopy && s.failbackSeq != 0 {
			t.Fatalf("secondary %q failed back, which version %d cannot hold", s.id, version)
		}
	}
	fw.write(frameMeta, encodeMeta(m, version))
	// Versions before 6 have no changed-since-promotion bitmaps: drop them.
	r := &restorer{fr: fr}
	for _, v := range m.volumes {
		if len(v.promotions) == 0 || version >= snapVersionNoCopy {
			continue
		}
		if _, err := r.readChanged(v); err != nil {
			t.Fatalf("changed-since-promotion bitmap of %q: %v", v.name, err)
		}
	}
	rest, _ := io.ReadAll(fr.r)
	return append(out.Bytes(), rest...)
}

// FuzzSnapshotRestore restores arbitrary bytes: the FSM must never panic,
// and a refused stream must leave the state exactly as it was. In the
// framed mode the checksums are right, so the fuzzer reaches the checks of
// the frames' content; a stream that passes them must give a consistent
// state.
func FuzzSnapshotRestore(f *testing.F) {
	// Small seeds: one volume of two blocks, one batch of a zero block (so
	// the image's chunk carries no data), then the same trimmed, then with
	// secondaries and a validated seq, promoted, failed back; a version 2
	// stream; and a promotion recorded late.
	src := ftNew(f, nil, "/src")
	src.register("a", 2, 1)
	src.submit(wire.Seal(&wire.Batch{Volume: "a", Epoch: 1, VolumeSeq: 1, Blocks: []*wire.Block{{Index: 1, Data: make([]byte, wire.BlockSize)}}}))
	src.apply(ftNodeAddr("n1", "127.0.0.1:1"))
	full := ftSnapshot(f, src.f)
	src.f.trimJournal(1)
	trimmed := ftSnapshot(f, src.f)
	src.apply(ftRegisterSecondary("s1", "a", "127.0.0.1:7301"))
	src.apply(ftRegisterSecondary("s2", "a", ""))
	src.apply(ftRecordValidated(1))
	secondaries := ftSnapshot(f, src.f)
	src.apply(ftSuspend("s1", 0))
	src.submit(wire.Seal(&wire.Batch{Volume: "a", Epoch: 1, VolumeSeq: 2, Blocks: []*wire.Block{{Index: 0, Data: make([]byte, wire.BlockSize)}}}))
	src.apply(ftTrim(2))
	bitmaps := ftSnapshot(f, src.f)
	src.apply(ftPromote("p1", "host", ftPromoteTime))
	src.apply(ftPromote("p2", "", ftPromoteTime))
	promoted := ftSnapshot(f, src.f)
	v5 := ftAsVersion(f, promoted, snapVersionNoChanged, func(*snapshotMeta) bool { return true })
	src.register("a", 2, 3)
	src.submit(wire.Seal(&wire.Batch{Volume: "a", Epoch: 3, VolumeSeq: 3, Blocks: []*wire.Block{{Index: 1, Data: make([]byte, wire.BlockSize)}}}))
	src.apply(ftFailback("s2", "a", ftPrimaryBitmap(f, 2, blockdev.BlockSize, 0)))
	failback := ftSnapshot(f, src.f)
	empty := ftSnapshot(f, ftNew(f, nil, "/empty").f)
	v2 := ftNew(f, nil, "/v2")
	v2.register("a", 2, 1)
	v2.apply(ftNodeAddr("n1", "127.0.0.1:1"))
	v2snap := ftSnapshot(f, v2.f)
	v2snap = ftAsVersion2(f, v2snap)
	if err := ftRestore(ftNew(f, nil, "/v2check").f, v2snap); err != nil {
		f.Fatalf("the version 2 seed: %v", err)
	}
	// A promotion recorded late: the volume's last batch follows its seq.
	late := ftNew(f, nil, "/late")
	late.register("a", 2, 1)
	late.submit(wire.Seal(&wire.Batch{Volume: "a", Epoch: 1, VolumeSeq: 1, Blocks: []*wire.Block{{Index: 1, Data: make([]byte, wire.BlockSize)}}}))
	late.submit(wire.Seal(&wire.Batch{Volume: "a", Epoch: 1, VolumeSeq: 2, Blocks: []*wire.Block{{Index: 0, Data: make([]byte, wire.BlockSize)}}}))
	late.apply(ftPromoteAt("p1", "host", ftPromoteTime, 1, 1))
	lateSnap := ftSnapshot(f, late.f)
	for _, seed := range [][]byte{full, trimmed, secondaries, bitmaps, promoted, v5, failback, empty, v2snap, lateSnap} {
		f.Add(byte(ftSnapRaw), seed)
		f.Add(byte(ftSnapFramed), ftUnframe(seed))
	}
	f.Add(byte(ftSnapRaw), trimmed[:len(trimmed)/2])
	f.Add(byte(ftSnapRaw), []byte{})
	f.Add(byte(ftSnapRaw), []byte(snapMagic))
	f.Fuzz(func(t *testing.T, mode byte, data []byte) {
		if mode%2 == ftSnapFramed {
			data = ftReframe(data)
		}
		h := ftNew(t, ftLimitFS{blockdev.NewMemFS()}, "/vols")
		h.register("a", 8, 1)
		h.register("c", 2, 1)
		h.submit(ftBatch("a", 1, 1, 4), ftBatch("c", 1, 1, 1))
		before := ftDumpOf(t, h.f)
		if err := ftRestore(h.f, data); err != nil {
			if h.f.Failed() != nil {
				t.Fatalf("a refused stream stopped the FSM: %v", h.f.Failed())
			}
			ftSameDump(t, "after a refused stream", ftDumpOf(t, h.f), before)
			if left := ftLeftovers(t, h); len(left) != 0 {
				t.Fatalf("temporary directories left: %v", left)
			}
			return
		}
		ftCheckInvariants(t, h.f)
		// The restored state takes entries and snapshots again.
		for _, v := range h.f.Volumes() {
			h.submit(ftBatch(v.Name, v.Epoch, v.LastVolumeSeq+1, 0))
		}
		ftCheckInvariants(t, h.f)
		again := ftSnapshot(t, h.f)
		if err := ftRestore(ftNew(t, nil, "/again").f, again); err != nil {
			t.Fatalf("restore of a snapshot of the restored state: %v", err)
		}
	})
}
