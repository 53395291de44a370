package secondary

import (
	"encoding/binary"
	"errors"
	"runtime"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// fuzzImage returns the segment files of a stage built by a small workload
// over segments of two one-block batches (synced batches, a watermark, an
// unsynced batch at the end), and the batches appended, by seq.
func fuzzImage(tb testing.TB) ([][]byte, map[uint64]*wire.CommittedBatch) {
	fsys := blockdev.NewMemFS()
	opts := testOptions(fsys)
	opts.SegmentBytes = segHeaderSize + 2*oneBlockRecord
	s := mustOpen(tb, opts)
	batches := map[uint64]*wire.CommittedBatch{}
	add := func(bs ...*wire.CommittedBatch) {
		for _, b := range bs {
			batches[b.GetSeq()] = b
		}
		must(tb, s.Append(bs))
	}
	add(makeBatch(2, 1), makeBatch(3, 2))
	must(tb, s.Sync())
	add(makeBatch(5, 3))
	must(tb, s.MarkFetched(6))
	must(tb, s.Sync())
	add(makeBatch(7, 4))
	must(tb, s.Close())
	var segs [][]byte
	for _, name := range segmentFiles(tb, fsys) {
		segs = append(segs, readMemFile(tb, fsys, stageDir+"/"+name))
	}
	return segs, batches
}

// Fuzz damage operations: each is 6 bytes of spec, an operation, a file and
// a little-endian offset.
const (
	fuzzFlip      = iota // xor the byte at offset with a mask
	fuzzCut              // cut the file at offset
	fuzzAppend           // append raw to the file
	fuzzOverwrite        // write raw at offset
	fuzzReplace          // replace the file with raw
	fuzzRemove           // remove the file
	fuzzOps
)

// FuzzOpenStage damages the segment files of a valid stage as spec says,
// with arbitrary bytes (raw) written into them, appended to them, or making
// up a whole segment file, then opens the stage and reads everything back.
// OpenStage may refuse with ErrCorrupt only. Whatever it accepts must read
// back without error, in seq order, consistent with the watermarks, each
// batch equal to the one appended with its seq; it must take appends and
// reopen to the same plus the appended batch. No input may panic or
// allocate much more than the image.
func FuzzOpenStage(f *testing.F) {
	segs, batches := fuzzImage(f)
	op := func(kind byte, file byte, off uint32) []byte {
		return binary.LittleEndian.AppendUint32([]byte{kind, file}, off)
	}
	f.Add([]byte(nil), []byte(nil))
	f.Add([]byte(nil), op(fuzzFlip, 2, 300))
	f.Add([]byte(nil), op(fuzzCut, 2, 5000))
	f.Add([]byte("junk"), op(fuzzAppend, 2, 0))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff}, op(fuzzOverwrite, 1, 4300))
	f.Add(segs[0][:segHeaderSize], op(fuzzReplace, 3, 0))
	f.Add(segs[2][:segHeaderSize+40], op(fuzzReplace, 3, 0))
	f.Add(segs[1], op(fuzzReplace, 0, 0))
	f.Add([]byte(nil), op(fuzzRemove, 1, 0))
	f.Add(appendRecord(nil, kindWatermark, 9, segHeaderSize, nil), append(op(fuzzCut, 2, segHeaderSize), op(fuzzAppend, 2, 0)...))
	f.Fuzz(func(t *testing.T, raw, spec []byte) {
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		files := make([][]byte, len(segs)+1) // nil: no file
		for i, s := range segs {
			files[i] = slices.Clone(s)
		}
		for i := 0; i+6 <= len(spec) && i < 6*8; i += 6 {
			kind, n, off := spec[i]%fuzzOps, int(spec[i+1])%len(files), binary.LittleEndian.Uint32(spec[i+2:])
			d := files[n]
			switch kind {
			case fuzzFlip:
				if len(d) > 0 {
					d[int(off)%len(d)] ^= byte(off>>24) | 1
				}
			case fuzzCut:
				d = d[:int(off)%(len(d)+1)]
			case fuzzAppend:
				d = append(d, raw...)
			case fuzzOverwrite:
				if len(d) > 0 {
					at := int(off) % len(d)
					d = append(d[:at], append(slices.Clone(raw), d[min(at+len(raw), len(d)):]...)...)
				}
			case fuzzReplace:
				d = slices.Clone(raw)
			case fuzzRemove:
				d = nil
			}
			if d == nil && kind != fuzzRemove {
				d = []byte{}
			}
			files[n] = d
		}
		fsys := blockdev.NewMemFS()
		must(t, fsys.MkdirAll("test", stageDir, 0o700))
		for i, d := range files {
			if d != nil {
				writeMemFile(t, fsys, segPath(uint64(i+1)), d)
			}
		}
		opts := testOptions(fsys)
		opts.SegmentBytes = segHeaderSize + 2*oneBlockRecord
		s, err := OpenStage(stageDir, opts)
		if err != nil {
			if !errors.Is(err, blockdev.ErrCorrupt) {
				t.Fatalf("OpenStage = %v, want nil or ErrCorrupt", err)
			}
			if len(spec) < 6 {
				t.Fatalf("OpenStage of an undamaged stage: %v", err)
			}
			return
		}
		got := checkConsistent(t, s)
		for _, b := range got {
			if orig, ok := batches[b.GetSeq()]; ok && !proto.Equal(b, orig) {
				t.Fatalf("batch seq %d differs from the one appended", b.GetSeq())
			}
		}
		if len(spec) < 6 && len(got) != len(batches) {
			t.Fatalf("undamaged stage: %d batches, want %d", len(got), len(batches))
		}
		// The stage goes on.
		if s.Fetched() < 1<<40 {
			extra := makeBatch(s.Fetched()+1, 5)
			must(t, s.Append([]*wire.CommittedBatch{extra}))
			must(t, s.Sync())
			got = append(got, extra)
		}
		must(t, s.Close())
		s, err = OpenStage(stageDir, opts)
		if err != nil {
			t.Fatalf("second OpenStage: %v", err)
		}
		defer s.Close()
		if d := sameBatches(checkConsistent(t, s), got); d != "" {
			t.Fatalf("after an append and a reopen: %s", d)
		}
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 16<<20 {
			t.Fatalf("allocated %d bytes", alloc)
		}
	})
}

// checkConsistent reads everything s holds and checks it against its
// watermarks: seqs increasing above Trimmed up to Last, Durable = Fetched.
func checkConsistent(t *testing.T, s *Stage) []*wire.CommittedBatch {
	t.Helper()
	trimmed, last, fetched, durable := s.Trimmed(), s.Last(), s.Fetched(), s.Durable()
	if trimmed > last || last > fetched || fetched != durable {
		t.Fatalf("Trimmed %d, Last %d, Fetched %d, Durable %d", trimmed, last, fetched, durable)
	}
	got, err := collect(s, trimmed, durable)
	if err != nil {
		t.Fatalf("Batches(%d, %d) of an accepted stage: %v", trimmed, durable, err)
	}
	prev := trimmed
	for _, b := range got {
		if b.GetSeq() <= prev {
			t.Fatalf("batch seq %d after %d", b.GetSeq(), prev)
		}
		prev = b.GetSeq()
	}
	if prev != last {
		t.Fatalf("last batch read %d, Last %d", prev, last)
	}
	return got
}
