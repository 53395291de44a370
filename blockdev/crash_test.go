package blockdev

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
)

// workOp is one step of a crash test workload: an Apply of batch (with
// ApplyOptions.Sync if sync), or a Sync if batch is nil.
type workOp struct {
	batch *Batch
	sync  bool
}

// workload is a deterministic sequence of Applies and Syncs, with the digest
// of the expected content after each prefix of its batches.
type workload struct {
	blocks  uint64
	ops     []workOp
	digests [][32]byte // digests[p]: content after the first p batches
}

func newWorkload(seed uint64, batches int, blocks uint64) *workload {
	rng := rand.New(rand.NewPCG(seed, 0))
	w := &workload{blocks: blocks}
	m := newModel(blocks)
	w.digests = append(w.digests, m.digest())
	for i := range batches {
		if rng.IntN(6) == 0 {
			w.ops = append(w.ops, workOp{})
		}
		b := randBatch(rng, blocks, 5, uint64(i+1))
		w.ops = append(w.ops, workOp{batch: b, sync: rng.IntN(8) == 0})
		m.apply(b)
		w.digests = append(w.digests, m.digest())
	}
	return w
}

// outcome is what a run of a workload that may have crashed tells about the
// batches: the content after a crash must be the prefix of some p batches
// with synced <= p <= attempted.
type outcome struct {
	applied   int // batches whose Apply returned nil
	attempted int // applied, plus one if an Apply failed
	synced    int // batches covered by a Sync (or Apply with Sync) that returned nil
	err       error
}

func (w *workload) run(v Volume) outcome {
	ctx := context.Background()
	var o outcome
	for _, op := range w.ops {
		if op.batch == nil {
			if o.err = v.Sync(ctx); o.err != nil {
				return o
			}
			o.synced = o.applied
			continue
		}
		o.attempted = o.applied + 1
		if o.err = v.Apply(ctx, op.batch, ApplyOptions{Sync: op.sync}); o.err != nil {
			return o
		}
		o.applied++
		if op.sync {
			o.synced = o.applied
		}
	}
	return o
}

// checkPrefix fails t unless r holds the content after p batches of w for
// some p in [lo, hi], and returns p.
func (w *workload) checkPrefix(t testing.TB, r Reader, lo, hi int) int {
	t.Helper()
	d := digestOf(t, r)
	for p := hi; p >= lo; p-- {
		if w.digests[p] == d {
			return p
		}
	}
	for p, pd := range w.digests {
		if pd == d {
			t.Fatalf("content is the prefix of %d batches, want between %d and %d", p, lo, hi)
		}
	}
	t.Fatalf("content is no prefix of the batches (want between %d and %d)", lo, hi)
	return -1
}

// crashMode is how a crash test crashes a MemFS.
type crashMode struct {
	name  string
	crash func(fsys *MemFS, rng *rand.Rand)
}

var crashModes = []crashMode{
	{"Crash", func(fsys *MemFS, _ *rand.Rand) { fsys.Crash() }},
	{"CrashRandom", func(fsys *MemFS, rng *rand.Rand) { fsys.CrashRandom(rng) }},
}

const crashDir = "/data/vol"

func crashOptions(fsys *MemFS) Options {
	// A small log: checkpoints and log rotations happen every few batches.
	return Options{FS: fsys, Logger: quietLogger, CheckpointBytes: int64(3 * recordSize(3))}
}

var crashWorkloads = flag.Int("crash.workloads", 2, "number of random workloads TestFileVolumeCrashPoints runs (seeds seed, seed+1, ...)")

// TestFileVolumeCrashPoints runs a workload on a FileVolume over MemFS,
// crashes it at every mutating FS operation in turn (losing every unsynced
// change, or a random part of them), reopens the volume and checks that it
// holds the content after a prefix of the batches that includes every synced
// one. For every crash point it also crashes the recovery at every mutating
// operation in turn and recovers again.
func TestFileVolumeCrashPoints(t *testing.T) {
	seed := testSeed(t)
	runs := *crashWorkloads
	if testing.Short() {
		runs = 1
	}
	for i := range runs {
		t.Run(fmt.Sprintf("workload%d", i), func(t *testing.T) {
			t.Parallel()
			crashPoints(t, seed+uint64(i))
		})
	}
}

func crashPoints(t *testing.T, seed uint64) {
	w := newWorkload(seed, 40, 24)

	// Count the mutating operations of the workload.
	fsys := NewMemFS()
	v, err := Create(crashDir, w.blocks, crashOptions(fsys))
	if err != nil {
		t.Fatal(err)
	}
	base := fsys.MutatingOps()
	if o := w.run(v); o.err != nil {
		t.Fatalf("workload without crash: %v", o.err)
	}
	total := fsys.MutatingOps() - base
	v.Close()
	t.Logf("seed %d: %d batches, %d mutating operations", seed, len(w.digests)-1, total)

	for _, mode := range crashModes {
		recoveryPoints := 0
		for k := 0; k <= total; k++ {
			rng := rand.New(rand.NewPCG(seed, uint64(k)))
			fsys := NewMemFS()
			v, err := Create(crashDir, w.blocks, crashOptions(fsys))
			if err != nil {
				t.Fatal(err)
			}
			fsys.FailAfter(k)
			o := w.run(v)
			switch {
			case k < total && !errors.Is(o.err, ErrCrashed):
				t.Fatalf("%s at %d: workload returned %v, want a simulated crash", mode.name, k, o.err)
			case k == total && o.err != nil:
				t.Fatalf("%s at %d: %v", mode.name, k, o.err)
			}
			v.Close()
			mode.crash(fsys, rng)
			lo, hi := o.synced, o.attempted
			post := fsys.Clone()

			// Crash the recovery at each of its mutating operations, then
			// recover again.
			for j := 0; ; j++ {
				f := post.Clone()
				f.FailAfter(j)
				v, err := Open(crashDir, crashOptions(f))
				if err == nil {
					v.Close()
					break
				}
				if !errors.Is(err, ErrCrashed) {
					t.Fatalf("%s at %d, recovery crash at %d: %v", mode.name, k, j, err)
				}
				recoveryPoints++
				mode.crash(f, rand.New(rand.NewPCG(seed, uint64(k)<<32|uint64(j))))
				v, err = Open(crashDir, crashOptions(f))
				if err != nil {
					t.Fatalf("%s at %d, recovery crash at %d: reopen: %v", mode.name, k, j, err)
				}
				func() {
					defer func() {
						if t.Failed() {
							t.Logf("%s at workload operation %d, then at recovery operation %d", mode.name, k, j)
						}
					}()
					w.checkPrefix(t, v, lo, hi)
				}()
				v.Close()
			}

			v, err = Open(crashDir, crashOptions(post))
			if err != nil {
				t.Fatalf("%s at %d: reopen: %v", mode.name, k, err)
			}
			var p int
			func() {
				defer func() {
					if t.Failed() {
						t.Logf("%s at workload operation %d: outcome %+v", mode.name, k, o)
					}
				}()
				p = w.checkPrefix(t, v, lo, hi)
			}()
			// The recovered volume goes on: new batches land after the
			// recovered prefix and survive a crash once synced.
			m := newModel(w.blocks)
			for _, op := range w.ops {
				if op.batch != nil && p > 0 {
					m.apply(op.batch)
					p--
				}
			}
			for i := range 2 {
				b := randBatch(rng, w.blocks, 3, uint64(10000+i))
				if err := v.Apply(context.Background(), b, ApplyOptions{}); err != nil {
					t.Fatalf("%s at %d: apply after recovery: %v", mode.name, k, err)
				}
				m.apply(b)
			}
			if err := v.Sync(context.Background()); err != nil {
				t.Fatalf("%s at %d: sync after recovery: %v", mode.name, k, err)
			}
			v.Close()
			mode.crash(post, rng)
			v, err = Open(crashDir, crashOptions(post))
			if err != nil {
				t.Fatalf("%s at %d: second reopen: %v", mode.name, k, err)
			}
			m.check(t, v)
			v.Close()
		}
		t.Logf("%s: %d workload crash points, %d recovery crash points", mode.name, total+1, recoveryPoints)
	}
}

// TestCreateCrashPoints crashes Create at every mutating operation: the
// directory then holds no volume and Create succeeds, or a whole, empty one
// that opens.
func TestCreateCrashPoints(t *testing.T) {
	seed := testSeed(t)
	for _, mode := range crashModes {
		for k := 0; ; k++ {
			fsys := NewMemFS()
			fsys.FailAfter(k)
			v, err := Create(crashDir, 8, crashOptions(fsys))
			if err == nil {
				v.Close()
				if k < 4 {
					t.Fatalf("Create made only %d mutating operations", k)
				}
				break
			}
			if !errors.Is(err, ErrCrashed) {
				t.Fatalf("%s at %d: Create: %v", mode.name, k, err)
			}
			mode.crash(fsys, rand.New(rand.NewPCG(seed, uint64(k))))
			ok, err := Exists(crashDir, fsys)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				v, err = Open(crashDir, crashOptions(fsys))
			} else {
				v, err = Create(crashDir, 8, crashOptions(fsys))
			}
			if err != nil {
				t.Fatalf("%s at %d (exists %v): %v", mode.name, k, ok, err)
			}
			newModel(8).check(t, v)
			if err := v.Apply(context.Background(), &Batch{Writes: []Write{{Index: 7, Data: stampBlock(1, 7)}}}, ApplyOptions{Sync: true}); err != nil {
				t.Fatalf("%s at %d: %v", mode.name, k, err)
			}
			v.Close()
		}
	}
}

// TestRecoveryStopsAtFirstBadRecord damages the middle record of a log of
// three. If the damaged record was never synced, it may have been torn by a
// crash: recovery keeps the first record only, even though the third is
// intact. If the third record says the second was synced, the damage is
// corruption of durable data, and Open refuses the volume.
func TestRecoveryStopsAtFirstBadRecord(t *testing.T) {
	for _, synced := range []bool{false, true} {
		t.Run(fmt.Sprintf("synced=%v", synced), func(t *testing.T) {
			ctx := context.Background()
			fsys := NewMemFS()
			v, err := Create(crashDir, 8, Options{FS: fsys, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			m := newModel(8)
			var offsets []int64
			for i := range uint64(3) {
				offsets = append(offsets, v.logSize)
				b := &Batch{Writes: []Write{{Index: i, Data: stampBlock(i+1, i)}}}
				if err := v.Apply(ctx, b, ApplyOptions{Sync: synced}); err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					m.apply(b)
				}
			}
			v.Close()
			f, err := fsys.OpenFile(LabelLog, crashDir+"/"+logName, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte{0xff}, offsets[1]+recordHeaderSize+100); err != nil {
				t.Fatal(err)
			}
			f.Close()
			v, err = Open(crashDir, Options{FS: fsys, Logger: testLogger(t)})
			if synced {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Open = %v, want ErrCorrupt", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m.check(t, v)
			// The discarded records never come back: the log was reset.
			v.Close()
			v, err = Open(crashDir, Options{FS: fsys, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			m.check(t, v)
		})
	}
}

// TestStaleRecordsIgnored puts records of an older log generation after the
// header of a newer one, as a reused or badly restored file could: recovery
// must not replay them.
func TestStaleRecordsIgnored(t *testing.T) {
	ctx := context.Background()
	fsys := NewMemFS()
	opts := Options{FS: fsys, Logger: testLogger(t)}
	v, err := Create(crashDir, 8, opts)
	if err != nil {
		t.Fatal(err)
	}
	for i := range uint64(3) {
		if err := v.Apply(ctx, &Batch{Writes: []Write{{Index: i, Data: stampBlock(i+1, i)}}}, ApplyOptions{Sync: true}); err != nil {
			t.Fatal(err)
		}
	}
	old := readMemFile(t, fsys, crashDir+"/"+logName)
	if err := v.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	// Overwrite the first block by a new batch, then checkpoint it away.
	if err := v.Apply(ctx, &Batch{Writes: []Write{{Index: 0, Data: stampBlock(9, 0)}}}, ApplyOptions{Sync: true}); err != nil {
		t.Fatal(err)
	}
	if err := v.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	v.Close()
	m := newModel(8)
	m.data[0] = stampBlock(9, 0)
	m.data[1] = stampBlock(2, 1)
	m.data[2] = stampBlock(3, 2)

	cur := readMemFile(t, fsys, crashDir+"/"+logName)
	hdr, err := decodeLogHeader(cur)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		hdr  logHeader
	}{
		{"generation", hdr},
		// Same generation as the old records but a later start seq.
		{"seq", logHeader{uuid: hdr.uuid, gen: 1, startSeq: hdr.startSeq}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := fsys.Clone()
			writeMemFile(t, f, crashDir+"/"+logName, append(tc.hdr.encode(), old[logHeaderSize:]...))
			v, err := Open(crashDir, Options{FS: f, Logger: testLogger(t)})
			if err != nil {
				t.Fatal(err)
			}
			defer v.Close()
			m.check(t, v)
		})
	}
}

// TestCorruptVolumeFiles checks that damaged metadata and log headers are
// refused with ErrCorrupt (or ErrVersion), never recovered from.
func TestCorruptVolumeFiles(t *testing.T) {
	fsys := NewMemFS()
	v, err := Create(crashDir, 8, Options{FS: fsys, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	meta := readMemFile(t, fsys, crashDir+"/"+metaName)
	logb := readMemFile(t, fsys, crashDir+"/"+logName)
	other := NewMemFS()
	ov, err := Create(crashDir, 8, Options{FS: other, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ov.Close()
	otherLog := readMemFile(t, other, crashDir+"/"+logName)

	flip := func(b []byte, i int) []byte {
		c := append([]byte(nil), b...)
		c[i] ^= 0x10
		return c
	}
	version := func(b []byte) []byte {
		c := append([]byte(nil), b...)
		c[8] = 2
		return c
	}
	for _, tc := range []struct {
		name string
		file string
		data []byte
		want error
	}{
		{"meta magic", metaName, flip(meta, 0), ErrCorrupt},
		{"meta blocks", metaName, flip(meta, 16), ErrCorrupt},
		{"meta crc", metaName, flip(meta, 61), ErrCorrupt},
		{"meta short", metaName, meta[:40], ErrCorrupt},
		{"meta empty", metaName, nil, ErrCorrupt},
		{"meta version", metaName, version(meta), ErrVersion},
		{"log magic", logName, flip(logb, 1), ErrCorrupt},
		{"log gen", logName, flip(logb, 33), ErrCorrupt},
		{"log short", logName, logb[:20], ErrCorrupt},
		{"log empty", logName, nil, ErrCorrupt},
		{"log version", logName, version(logb), ErrVersion},
		{"log of another volume", logName, otherLog, ErrCorrupt},
		{"data short", dataName, make([]byte, 7*BlockSize), ErrCorrupt},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := fsys.Clone()
			writeMemFile(t, f, crashDir+"/"+tc.file, tc.data)
			v, err := Open(crashDir, Options{FS: f, Logger: testLogger(t)})
			if err == nil {
				v.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open = %v, want %v", err, tc.want)
			}
		})
	}
}

func readMemFile(t testing.TB, fsys FS, name string) []byte {
	t.Helper()
	b, err := readSmallFile(fsys, "test", name, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeMemFile replaces the content of name, durably.
func writeMemFile(t testing.TB, fsys FS, name string, data []byte) {
	t.Helper()
	f, err := fsys.OpenFile("test", name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}
