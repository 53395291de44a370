package blockdev

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
)

// workOp is one step of a crash test workload: an Apply of batch (with
// ApplyOptions.Sync if sync), a Sync if batch is nil, or, if frozen, the
// checkpoint of a FileVolume's frozen generation whose checkpoint is
// deferred (see runFrozen).
type workOp struct {
	batch  *Batch
	sync   bool
	frozen bool
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
		if rng.IntN(3) == 0 {
			w.ops = append(w.ops, workOp{frozen: true})
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
	// checkpoints counts the deferred checkpoints that frozen steps ran.
	checkpoints int
	err         error
}

func (w *workload) run(v Volume) outcome {
	ctx := context.Background()
	var o outcome
	for _, op := range w.ops {
		if op.frozen {
			if fv, ok := v.(*FileVolume); ok {
				ran, err := fv.runFrozen()
				if ran {
					o.checkpoints++
				}
				if o.err = err; err != nil {
					return o
				}
			}
			continue
		}
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

// runFrozen runs the checkpoint of a frozen generation that the volume
// (with deferCheckpoints) left waiting, if there is one, and reports its
// error as the Apply that found it would: failing the volume.
func (v *FileVolume) runFrozen() (ran bool, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	fz := v.frozen
	if fz == nil || fz.started || v.usable() != nil {
		return false, nil
	}
	bg := v.background
	v.background = false
	v.startLocked(fz)
	v.background = bg
	if err := v.reapLocked(false); err != nil {
		return true, fmt.Errorf("checkpoint volume %q: %w", v.dir, v.fail(err))
	}
	return true, nil
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
		for _, deferred := range []bool{false, true} {
			t.Run(fmt.Sprintf("workload%d/deferred=%v", i, deferred), func(t *testing.T) {
				t.Parallel()
				crashPoints(t, seed+uint64(i), deferred)
			})
		}
	}
}

// crashPoints is TestFileVolumeCrashPoints for one workload. With deferred,
// the checkpoint of a frozen log generation runs only at the workload's
// frozen steps or when the next checkpoint needs it done: crashes then hit
// a volume whose frozen generation is not yet in the data file while
// Applies and Syncs go to the next one, and the checkpoint of the frozen
// generation between them, at every one of its operations.
func crashPoints(t *testing.T, seed uint64, deferred bool) {
	w := newWorkload(seed, 40, 24)

	// Count the mutating operations of the workload.
	fsys := NewMemFS()
	v, err := Create(crashDir, w.blocks, crashOptions(fsys))
	if err != nil {
		t.Fatal(err)
	}
	v.deferCheckpoints = deferred
	base := fsys.MutatingOps()
	o := w.run(v)
	if o.err != nil {
		t.Fatalf("workload without crash: %v", o.err)
	}
	if deferred && o.checkpoints == 0 {
		t.Fatalf("seed %d: no frozen step found a frozen generation: the workload tests nothing deferred", seed)
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
			v.deferCheckpoints = deferred
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

// TestFileVolumeBackgroundCrash runs workloads on FileVolumes that
// checkpoint in a goroutine (so the interleaving varies from run to run),
// checks after every Apply that reads see every applied batch while the
// goroutine writes the data file, crashes the FS at sampled operations
// (inside a background checkpoint or not), and checks that the reopened
// volume holds a prefix of the batches that includes every synced one.
func TestFileVolumeBackgroundCrash(t *testing.T) {
	seed := testSeed(t)
	w := newWorkload(seed, 40, 24)
	fsys := NewMemFS()
	v, err := Create(crashDir, w.blocks, crashOptions(fsys))
	if err != nil {
		t.Fatal(err)
	}
	v.SetBackgroundCheckpoint(true)
	base := fsys.MutatingOps()
	if o := runChecked(t, w, v); o.err != nil {
		t.Fatalf("workload without crash: %v", o.err)
	}
	total := fsys.MutatingOps() - base
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	for _, mode := range crashModes {
		for k := 0; k <= total+5; k++ {
			rng := rand.New(rand.NewPCG(seed, uint64(k)))
			fsys := NewMemFS()
			v, err := Create(crashDir, w.blocks, crashOptions(fsys))
			if err != nil {
				t.Fatal(err)
			}
			v.SetBackgroundCheckpoint(true)
			fsys.FailAfter(k)
			o := runChecked(t, w, v)
			if o.err != nil && !errors.Is(o.err, ErrCrashed) {
				t.Fatalf("%s at %d (seed %d): workload: %v", mode.name, k, seed, o.err)
			}
			v.Close()
			mode.crash(fsys, rng)
			v, err = Open(crashDir, crashOptions(fsys))
			if err != nil {
				t.Fatalf("%s at %d (seed %d): reopen: %v", mode.name, k, seed, err)
			}
			func() {
				defer func() {
					if t.Failed() {
						t.Logf("%s at workload operation %d (seed %d, interleaving not reproducible): outcome %+v", mode.name, k, seed, o)
					}
				}()
				w.checkPrefix(t, v, o.synced, o.attempted)
			}()
			v.Close()
		}
	}
}

// runChecked runs w on v like workload.run, and after each Apply that
// returned nil checks that v reads as the content after the batches
// applied so far.
func runChecked(t *testing.T, w *workload, v Volume) outcome {
	t.Helper()
	ctx := context.Background()
	var o outcome
	for _, op := range w.ops {
		switch {
		case op.frozen:
		case op.batch == nil:
			if o.err = v.Sync(ctx); o.err != nil {
				return o
			}
			o.synced = o.applied
		default:
			o.attempted = o.applied + 1
			if o.err = v.Apply(ctx, op.batch, ApplyOptions{Sync: op.sync}); o.err != nil {
				return o
			}
			o.applied++
			if op.sync {
				o.synced = o.applied
			}
			h := sha256.New()
			p := make([]byte, BlockSize)
			for i := range v.BlockCount() {
				if err := v.ReadBlock(i, p); errors.Is(err, ErrCrashed) {
					return o // reads of the data file fail once the FS crashed
				} else if err != nil {
					t.Fatalf("ReadBlock(%d): %v", i, err)
				}
				h.Write(p)
			}
			if [32]byte(h.Sum(nil)) != w.digests[o.applied] {
				t.Fatalf("after %d batches, the volume reads differently from the batches", o.applied)
			}
		}
	}
	return o
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

// TestFrozenLogRecovery checks recovery with a frozen log generation
// (volume.prev.log) left by a checkpoint that did not finish: a frozen log
// that lost its tail makes recovery discard the current log, which follows
// the lost records, unless a record of the current log says they were
// synced (corruption); a frozen log older than the current generation's
// predecessor was checkpointed and is ignored; one not older than the
// current log is corruption.
func TestFrozenLogRecovery(t *testing.T) {
	ctx := context.Background()
	// Three one-block records fill a log: the third Apply freezes it.
	opts := func(fsys *MemFS) Options {
		return Options{FS: fsys, Logger: testLogger(t), CheckpointBytes: int64(logHeaderSize + 3*recordSize(1))}
	}
	prevPath, curPath := crashDir+"/"+prevLogName, crashDir+"/"+logName
	// setUp applies 5 batches, the fourth with Sync if sync: records 1-3
	// are frozen (not checkpointed), 4 and 5 in the current log.
	setUp := func(t *testing.T, sync bool) *MemFS {
		fsys := NewMemFS()
		v, err := Create(crashDir, 8, opts(fsys))
		if err != nil {
			t.Fatal(err)
		}
		v.deferCheckpoints = true
		for i := range uint64(5) {
			b := &Batch{Writes: []Write{{Index: i, Data: stampBlock(i+1, i)}}}
			if err := v.Apply(ctx, b, ApplyOptions{Sync: sync && i == 3}); err != nil {
				t.Fatal(err)
			}
		}
		if v.frozen == nil || v.frozen.started {
			t.Fatal("no frozen generation waiting for its checkpoint")
		}
		v.Close()
		return fsys
	}
	prefix := func(n int) *model {
		m := newModel(8)
		for i := range uint64(n) {
			m.data[i] = stampBlock(i+1, i)
		}
		return m
	}
	// cutLast removes the last record of the frozen log.
	cutLast := func(t *testing.T, fsys *MemFS) {
		prev := readMemFile(t, fsys, prevPath)
		writeMemFile(t, fsys, prevPath, prev[:len(prev)-recordSize(1)])
	}

	t.Run("intact", func(t *testing.T) {
		fsys := setUp(t, false)
		v, err := Open(crashDir, opts(fsys))
		if err != nil {
			t.Fatal(err)
		}
		prefix(5).check(t, v)
		v.Close()
	})
	t.Run("torn", func(t *testing.T) {
		fsys := setUp(t, false)
		cutLast(t, fsys)
		v, err := Open(crashDir, opts(fsys))
		if err != nil {
			t.Fatal(err)
		}
		prefix(2).check(t, v)
		v.Close()
	})
	t.Run("torn synced", func(t *testing.T) {
		fsys := setUp(t, true)
		cutLast(t, fsys)
		if _, err := Open(crashDir, opts(fsys)); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open = %v, want ErrCorrupt", err)
		}
	})
	t.Run("stale", func(t *testing.T) {
		fsys := setUp(t, false)
		old := readMemFile(t, fsys, prevPath)
		v, err := Open(crashDir, opts(fsys))
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Apply(ctx, &Batch{Writes: []Write{{Index: 0, Data: stampBlock(9, 0)}}}, ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		v.Close()
		// The checkpointed generation 1 reappears beside generation 3.
		writeMemFile(t, fsys, prevPath, old)
		if v, err = Open(crashDir, opts(fsys)); err != nil {
			t.Fatal(err)
		}
		m := prefix(5)
		m.data[0] = stampBlock(9, 0)
		m.check(t, v)
		v.Close()
	})
	t.Run("not older", func(t *testing.T) {
		fsys := setUp(t, false)
		prev := readMemFile(t, fsys, prevPath)
		hdr, err := decodeLogHeader(readMemFile(t, fsys, curPath))
		if err != nil {
			t.Fatal(err)
		}
		old, err := decodeLogHeader(prev)
		if err != nil {
			t.Fatal(err)
		}
		old.gen = hdr.gen
		writeMemFile(t, fsys, prevPath, append(old.encode(), prev[logHeaderSize:]...))
		if _, err := Open(crashDir, opts(fsys)); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open = %v, want ErrCorrupt", err)
		}
	})
}
