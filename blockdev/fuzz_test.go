package blockdev

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

const fuzzBlocks = 8

// fuzzBatches turns spec into batches of a volume of fuzzBlocks blocks: each
// pair of bytes is a write (block a%fuzzBlocks filled with b), and a pair
// whose a has its high bit set starts a new batch. At most 64 writes.
func fuzzBatches(spec []byte) []*Batch {
	var batches []*Batch
	for i := 0; i+1 < len(spec) && i < 128; i += 2 {
		a, b := spec[i], spec[i+1]
		if len(batches) == 0 || a&0x80 != 0 {
			batches = append(batches, &Batch{})
		}
		cur := batches[len(batches)-1]
		cur.Writes = append(cur.Writes, Write{Index: uint64(a) % fuzzBlocks, Data: bytes.Repeat([]byte{b}, BlockSize)})
	}
	return batches
}

// FuzzIntentLog writes an intent log of valid records built from spec,
// damages it (cut to cut bytes, junk appended, one byte xored with flipMask
// at flipAt), and opens the volume. Open must fail only if the header was
// damaged, and otherwise recover exactly the records before the first
// damaged byte (or, should junk rebuild the next record byte for byte,
// more of them): never panic, never show anything but a prefix.
func FuzzIntentLog(f *testing.F) {
	f.Add([]byte{0, 1, 1, 2, 0x82, 3}, uint32(0xffffffff), uint32(0), byte(0), []byte(nil))
	f.Add([]byte{0, 1, 0x81, 2, 0x82, 3, 0x83, 4}, uint32(9000), uint32(0), byte(0), []byte("junk"))
	f.Add([]byte{0, 1, 0x81, 2, 0x82, 3}, uint32(0xffffffff), uint32(5000), byte(0x40), []byte(nil))
	f.Add([]byte{}, uint32(0xffffffff), uint32(0), byte(0), []byte{0x54, 0x43, 0x52, 0x31, 1, 0, 0, 0})
	f.Add([]byte{0, 1}, uint32(30), uint32(3), byte(1), []byte(nil))
	f.Fuzz(func(t *testing.T, spec []byte, cut, flipAt uint32, flipMask byte, junk []byte) {
		fsys := NewMemFS()
		opts := Options{FS: fsys, Logger: quietLogger}
		v, err := Create(crashDir, fuzzBlocks, opts)
		if err != nil {
			t.Fatal(err)
		}
		v.Close()
		batches := fuzzBatches(spec)
		hdr := logHeader{uuid: v.uuid, gen: 7, startSeq: 100}
		log := hdr.encode()
		// Each record says half of the records before it were synced.
		synced := func(i int) uint64 { return hdr.startSeq - 1 + uint64(i)/2 }
		var ends []int
		for i, b := range batches {
			log = append(log, appendRecord(nil, hdr.gen, hdr.startSeq+uint64(i), synced(i), b)...)
			ends = append(ends, len(log))
		}
		orig := bytes.Clone(log)
		if int64(cut) < int64(len(log)) {
			log = log[:cut]
		}
		if len(junk) > 0 {
			log = append(log, junk...)
		}
		flipped := -1
		if flipMask != 0 && len(log) > 0 {
			flipped = int(flipAt % uint32(len(log)))
			log[flipped] ^= flipMask
		}
		// damage is the offset of the first byte that differs from the
		// log as written (junk may rebuild cut bytes exactly: the header
		// holds the volume's random UUID, so that happens by chance).
		damage := 0
		for damage < len(log) && damage < len(orig) && log[damage] == orig[damage] {
			damage++
		}
		writeMemFile(t, fsys, crashDir+"/"+logName, log)

		v, err = Open(crashDir, opts)
		if damage < logHeaderSize {
			if err == nil {
				v.Close()
				t.Fatalf("Open with the log header damaged at byte %d succeeded", damage)
			}
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("Open with damaged header = %v, want ErrCorrupt or ErrVersion", err)
			}
			return
		}
		intact := 0
		for intact < len(ends) && ends[intact] <= damage {
			intact++
		}
		if errors.Is(err, ErrCorrupt) {
			// Only a record written after the damaged one was synced, and
			// left intact, may prove the damage.
			proven := false
			for j := intact + 1; j < len(ends); j++ {
				// Whole: its bytes are all there and unchanged (junk may
				// rebuild the end of a cut record byte for byte).
				whole := ends[j] <= len(log) && bytes.Equal(log[ends[j-1]:ends[j]], orig[ends[j-1]:ends[j]])
				if whole && synced(j) >= hdr.startSeq+uint64(intact) {
					proven = true
				}
			}
			if !proven {
				t.Fatalf("Open = %v, but no intact record says record %d was synced", err, intact)
			}
			return
		}
		if err != nil {
			t.Fatalf("Open = %v", err)
		}
		m := newModel(fuzzBlocks)
		digests := [][32]byte{m.digest()}
		for _, b := range batches {
			m.apply(b)
			digests = append(digests, m.digest())
		}
		w := &workload{blocks: fuzzBlocks, digests: digests}
		p := w.checkPrefix(t, v, intact, len(batches))
		// The volume goes on from there.
		extra := &Batch{Writes: []Write{{Index: 3, Data: bytes.Repeat([]byte{0xee}, BlockSize)}}}
		if err := v.Apply(context.Background(), extra, ApplyOptions{Sync: true}); err != nil {
			t.Fatal(err)
		}
		v.Close()
		v, err = Open(crashDir, opts)
		if err != nil {
			t.Fatalf("second Open = %v", err)
		}
		defer v.Close()
		m = newModel(fuzzBlocks)
		for _, b := range batches[:p] {
			m.apply(b)
		}
		m.apply(extra)
		m.check(t, v)
	})
}

// FuzzVolumeMeta decodes arbitrary meta file bytes, and opens a volume with
// them: never a panic, and a meta that decodes is in canonical form.
func FuzzVolumeMeta(f *testing.F) {
	valid := volumeMeta{blocks: fuzzBlocks, uuid: [16]byte{1, 2, 3}}.encode()
	f.Add(valid)
	f.Add(volumeMeta{blocks: MaxBlocks, uuid: [16]byte{9}}.encode())
	f.Add(valid[:40])
	f.Add([]byte("TRICVOL\x00\x02\x00\x00\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := decodeMeta(data)
		if err == nil {
			if !bytes.Equal(m.encode(), data) {
				t.Fatalf("meta decodes but is not canonical")
			}
			if m.blocks == 0 || m.blocks > MaxBlocks {
				t.Fatalf("decoded block count %d", m.blocks)
			}
		} else if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
			t.Fatalf("decodeMeta = %v, want ErrCorrupt or ErrVersion", err)
		}
		fsys := NewMemFS()
		opts := Options{FS: fsys, Logger: quietLogger}
		v, cerr := Create(crashDir, fuzzBlocks, opts)
		if cerr != nil {
			t.Fatal(cerr)
		}
		v.Close()
		writeMemFile(t, fsys, crashDir+"/"+metaName, data)
		v, oerr := Open(crashDir, opts)
		if oerr == nil {
			defer v.Close()
			if err != nil || m.blocks != fuzzBlocks {
				t.Fatalf("Open succeeded with meta %x", data)
			}
			newModel(fuzzBlocks).check(t, v)
		}
	})
}

// FuzzBitmapUnmarshal decodes arbitrary bytes as a bitmap: never a panic,
// and what decodes is consistent and encodes back to the same bytes.
func FuzzBitmapUnmarshal(f *testing.F) {
	for _, blocks := range []uint64{0, 1, 100, 1000} {
		b, _ := NewBitmap(blocks, BlockSize)
		if blocks > 0 {
			b.SetRange(blocks/3, blocks/3+1)
		}
		data, _ := b.MarshalBinary()
		f.Add(data)
	}
	f.Add([]byte("TRICBMP\x00\x01\x00\x00\x00\x00\x10\x00\x00\xff\xff\xff\xff\xff\xff\xff\x7f"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		var b Bitmap
		if err := b.UnmarshalBinary(data); err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("UnmarshalBinary = %v, want ErrCorrupt or ErrVersion", err)
			}
			return
		}
		if b.Count() > b.Regions() {
			t.Fatalf("Count() %d > Regions() %d", b.Count(), b.Regions())
		}
		n := uint64(0)
		for r := range b.Iterate {
			if r >= b.Regions() {
				t.Fatalf("region %d of %d set", r, b.Regions())
			}
			n++
		}
		if n != b.Count() {
			t.Fatalf("iterated %d regions, Count() = %d", n, b.Count())
		}
		out, err := b.MarshalBinary()
		if err != nil || !bytes.Equal(out, data) {
			t.Fatalf("round trip differs (%v)", err)
		}
	})
}
