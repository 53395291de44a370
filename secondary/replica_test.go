package secondary

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"iter"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

const replicaDir = "/data/replica/vol-a"

func replicaOptions(fsys blockdev.FS) ReplicaOptions {
	return ReplicaOptions{FS: fsys, Logger: quietLogger}
}

func mustCreateReplica(t testing.TB, opts ReplicaOptions) *Replica {
	t.Helper()
	r, err := CreateReplica(replicaDir, testVolume, testBlocks, opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func mustOpenReplica(t testing.TB, opts ReplicaOptions) *Replica {
	t.Helper()
	r, err := OpenReplica(replicaDir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// batchesOf yields bs in order, without error.
func batchesOf(bs ...*wire.CommittedBatch) iter.Seq2[*wire.CommittedBatch, error] {
	return func(yield func(*wire.CommittedBatch, error) bool) {
		for _, b := range bs {
			if !yield(b, nil) {
				return
			}
		}
	}
}

// failingBatches yields bs, then err.
func failingBatches(err error, bs ...*wire.CommittedBatch) iter.Seq2[*wire.CommittedBatch, error] {
	return func(yield func(*wire.CommittedBatch, error) bool) {
		for _, b := range bs {
			if !yield(b, nil) {
				return
			}
		}
		yield(nil, err)
	}
}

// image is the expected content of the blocks of a replica of the test
// volume.
type image []byte

func zeroImage() image { return make(image, testBlocks*blockdev.BlockSize) }

// with returns a copy of m with the batches applied in order.
func (m image) with(bs ...*wire.CommittedBatch) image {
	out := bytes.Clone(m)
	for _, cb := range bs {
		for _, blk := range cb.GetBatch().GetBlocks() {
			copy(out[blk.GetIndex()*blockdev.BlockSize:], blk.GetData())
		}
	}
	return out
}

// readImage reads every block of r, with one ReadBlocks and block by block,
// and fails t unless both agree.
func readImage(t testing.TB, r *Replica) image {
	t.Helper()
	all := make(image, r.BlockCount()*blockdev.BlockSize)
	if err := r.ReadBlocks(0, all); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, blockdev.BlockSize)
	for i := range r.BlockCount() {
		if err := r.ReadBlock(i, p); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(p, all[i*blockdev.BlockSize:(i+1)*blockdev.BlockSize]) {
			t.Fatalf("ReadBlock(%d) differs from ReadBlocks", i)
		}
	}
	return all
}

// diffBlock returns the first block where a and b differ, or -1.
func diffBlock(a, b image) int {
	for i := 0; i*blockdev.BlockSize < len(a); i++ {
		if !bytes.Equal(a[i*blockdev.BlockSize:(i+1)*blockdev.BlockSize], b[i*blockdev.BlockSize:(i+1)*blockdev.BlockSize]) {
			return i
		}
	}
	return -1
}

// checkReplica fails t unless r is at seq applied with content want.
func checkReplica(t testing.TB, r *Replica, applied uint64, want image) {
	t.Helper()
	if got := r.Applied(); got != applied {
		t.Fatalf("Applied() = %d, want %d", got, applied)
	}
	if d := diffBlock(readImage(t, r), want); d >= 0 {
		t.Fatalf("at seq %d: block %d differs from the model", applied, d)
	}
}

// sealed returns the sealed committed batch of seq writing blocks, given by
// index and data, in order.
func sealed(volume string, seq uint64, blocks ...*wire.Block) *wire.CommittedBatch {
	return &wire.CommittedBatch{Seq: seq, Batch: wire.Seal(&wire.Batch{Volume: volume, Epoch: 1, VolumeSeq: seq, Blocks: blocks})}
}

func filled(b byte) []byte { return bytes.Repeat([]byte{b}, blockdev.BlockSize) }

func TestReplicaRoundTrip(t *testing.T) {
	fsys := blockdev.NewMemFS()
	opts := replicaOptions(fsys)
	// A small intent log: rounds checkpoint now and then.
	opts.CheckpointBytes = 48 << 10
	r := mustCreateReplica(t, opts)
	if r.Volume() != testVolume || r.BlockCount() != testBlocks {
		t.Fatalf("Volume, BlockCount = %q, %d", r.Volume(), r.BlockCount())
	}
	m := zeroImage()
	checkReplica(t, r, 0, m)
	ctx := context.Background()

	// One batch writing block 4 twice: the later write wins.
	twice := sealed(testVolume, 8, &wire.Block{Index: 4, Data: filled(1)}, &wire.Block{Index: 9, Data: filled(2)}, &wire.Block{Index: 4, Data: filled(3)})
	rounds := []struct {
		n       uint64
		batches []*wire.CommittedBatch
	}{
		{5, []*wire.CommittedBatch{makeBatch(1, 0, 1), makeBatch(3, 1, 2), makeBatch(5, 15)}},
		{9, []*wire.CommittedBatch{makeBatch(7, 0, 3), twice}},
		{12, nil}, // N moves, the blocks stay
		{20, []*wire.CommittedBatch{makeBatch(13, 3, 4, 5), makeBatch(17, 5), makeBatch(20, 5, 6)}},
	}
	var all []*wire.CommittedBatch
	for _, rd := range rounds {
		changed, err := r.ApplyRound(ctx, rd.n, batchesOf(rd.batches...))
		must(t, err)
		want := map[uint64]bool{}
		for _, cb := range rd.batches {
			for _, b := range cb.GetBatch().GetBlocks() {
				want[b.GetIndex()] = true
			}
		}
		got := map[uint64]bool{}
		for _, i := range changed {
			if got[i] {
				t.Fatalf("round %d: block %d reported changed twice", rd.n, i)
			}
			got[i] = true
		}
		if !maps.Equal(got, want) {
			t.Fatalf("round %d: changed blocks %v, want %v", rd.n, got, want)
		}
		m = m.with(rd.batches...)
		all = append(all, rd.batches...)
		checkReplica(t, r, rd.n, m)
	}
	if p := make([]byte, blockdev.BlockSize); r.ReadBlock(4, p) != nil || !bytes.Equal(p, blockData(13, 4)) {
		t.Fatal("block 4 is not the one of the last batch writing it")
	}

	// Re-sent rounds change nothing: the same n, and batches at or below
	// Applied() (skipped: seqs 1 and 7 would take blocks 1 and 3 back).
	must(t, r.applyRoundErr(ctx, 20, batchesOf(all...)))
	checkReplica(t, r, 20, m)
	more := []*wire.CommittedBatch{makeBatch(22, 0), makeBatch(25, 7, 0)}
	must(t, r.applyRoundErr(ctx, 25, batchesOf(all[0], all[3], more[0], more[1])))
	m = m.with(more...)
	checkReplica(t, r, 25, m)

	must(t, r.Close())
	r = mustOpenReplica(t, opts)
	checkReplica(t, r, 25, m)
	if r.Volume() != testVolume || r.BlockCount() != testBlocks {
		t.Fatalf("after reopen: Volume, BlockCount = %q, %d", r.Volume(), r.BlockCount())
	}
	// The header is not a block of the volume.
	if err := r.ReadBlock(testBlocks, make([]byte, blockdev.BlockSize)); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("ReadBlock of the header: %v, want ErrOutOfRange", err)
	}
	if err := r.ReadBlocks(testBlocks-1, make([]byte, 2*blockdev.BlockSize)); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("ReadBlocks over the header: %v, want ErrOutOfRange", err)
	}
	if err := r.ReadBlocks(0, make([]byte, 100)); !errors.Is(err, blockdev.ErrBadBlock) {
		t.Fatalf("ReadBlocks of 100 bytes: %v, want ErrBadBlock", err)
	}

	// Closed: everything refuses.
	must(t, r.Close())
	if err := r.Close(); !errors.Is(err, blockdev.ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	if err := r.applyRoundErr(ctx, 30, batchesOf()); !errors.Is(err, blockdev.ErrClosed) {
		t.Fatalf("ApplyRound after Close: %v", err)
	}
	if err := r.ReadBlock(0, make([]byte, blockdev.BlockSize)); !errors.Is(err, blockdev.ErrClosed) {
		t.Fatalf("ReadBlock after Close: %v", err)
	}
}

// TestReplicaOS runs a round trip on the operating system's file system.
func TestReplicaOS(t *testing.T) {
	dir := path.Join(t.TempDir(), "replicas", testVolume)
	opts := ReplicaOptions{Logger: quietLogger}
	r, err := CreateReplica(dir, testVolume, testBlocks, opts)
	must(t, err)
	if _, err := OpenReplica(dir, opts); !errors.Is(err, blockdev.ErrInUse) {
		t.Fatalf("OpenReplica of an open replica: %v, want ErrInUse", err)
	}
	bs := []*wire.CommittedBatch{makeBatch(2, 1, 2), makeBatch(3, 2, 15)}
	must(t, r.applyRoundErr(context.Background(), 4, batchesOf(bs...)))
	must(t, r.Close())
	r, err = OpenReplica(dir, opts)
	must(t, err)
	checkReplica(t, r, 4, zeroImage().with(bs...))
	must(t, r.Close())
	if _, err := CreateReplica(dir, testVolume, testBlocks, opts); !errors.Is(err, blockdev.ErrExists) {
		t.Fatalf("CreateReplica over a replica: %v, want ErrExists", err)
	}
}

func TestReplicaOptions(t *testing.T) {
	fsys := blockdev.NewMemFS()
	for _, tc := range []struct {
		name   string
		volume string
		blocks uint64
		opts   ReplicaOptions
	}{
		{"bad name", "a/b", testBlocks, replicaOptions(fsys)},
		{"no name", "", testBlocks, replicaOptions(fsys)},
		{"no blocks", testVolume, 0, replicaOptions(fsys)},
		{"too many blocks", testVolume, blockdev.MaxBlocks, replicaOptions(fsys)},
		{"negative max round", testVolume, testBlocks, ReplicaOptions{FS: fsys, Logger: quietLogger, MaxRoundBytes: -1}},
		{"negative checkpoint", testVolume, testBlocks, ReplicaOptions{FS: fsys, Logger: quietLogger, CheckpointBytes: -1}},
	} {
		if _, err := CreateReplica(replicaDir, tc.volume, tc.blocks, tc.opts); err == nil || !strings.Contains(err.Error(), replicaDir) {
			t.Errorf("%s: CreateReplica: %v, want an error naming the directory", tc.name, err)
		}
	}
	if _, err := CreateReplica("/", testVolume, testBlocks, replicaOptions(fsys)); err == nil {
		t.Error("CreateReplica at the root succeeded")
	}
	if _, err := OpenReplica(replicaDir, replicaOptions(fsys)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenReplica without a replica: %v, want fs.ErrNotExist", err)
	}
	// A directory that exists, even empty, is not for CreateReplica.
	must(t, fsys.MkdirAll("test", replicaDir, 0o700))
	if _, err := CreateReplica(replicaDir, testVolume, testBlocks, replicaOptions(fsys)); !errors.Is(err, blockdev.ErrExists) {
		t.Errorf("CreateReplica over a directory: %v, want ErrExists", err)
	}
}

// TestReplicaRefusals checks that every refused round leaves the replica as
// it was, in memory and on disk, and usable.
func TestReplicaRefusals(t *testing.T) {
	fsys := blockdev.NewMemFS()
	opts := replicaOptions(fsys)
	opts.MaxRoundBytes = 4 * blockdev.BlockSize
	r := mustCreateReplica(t, opts)
	ctx := context.Background()
	first := []*wire.CommittedBatch{makeBatch(2, 0, 1), makeBatch(5, 1, 2)}
	must(t, r.applyRoundErr(ctx, 5, batchesOf(first...)))
	m := zeroImage().with(first...)

	badCRC := makeBatch(7, 3)
	badCRC.Batch.Blocks[0].Data[100] ^= 1
	oldBadCRC := makeBatch(4, 3)
	oldBadCRC.Batch.Blocks[0].Data[100] ^= 1
	injected := errors.New("stage read failed")
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	// A context cancelled once every batch is read.
	lateCtx, lateCancel := context.WithCancel(ctx)
	late := func(yield func(*wire.CommittedBatch, error) bool) {
		if yield(makeBatch(6, 3), nil) {
			lateCancel()
		}
	}
	for _, tc := range []struct {
		name    string
		ctx     context.Context
		n       uint64
		batches iter.Seq2[*wire.CommittedBatch, error]
		want    error
	}{
		{"N backwards", ctx, 3, batchesOf(), ErrStaleRound},
		{"N backwards with batches", ctx, 4, batchesOf(makeBatch(4, 9)), ErrStaleRound},
		{"other volume", ctx, 9, batchesOf(makeBatch(6, 3), sealed("vol-b", 7, &wire.Block{Index: 3, Data: filled(9)})), wire.ErrBadRequest},
		{"bad crc", ctx, 9, batchesOf(makeBatch(6, 3), badCRC), wire.ErrBadCRC},
		{"bad crc below N", ctx, 9, batchesOf(oldBadCRC, makeBatch(6, 3)), wire.ErrBadCRC},
		{"index out of range", ctx, 9, batchesOf(makeBatch(6, 3), makeBatch(7, testBlocks)), wire.ErrBadRequest},
		{"short block", ctx, 9, batchesOf(sealed(testVolume, 7, &wire.Block{Index: 3, Data: filled(9)[:100]})), wire.ErrBadRequest},
		{"no blocks", ctx, 9, batchesOf(sealed(testVolume, 7)), wire.ErrBadRequest},
		{"seqs decreasing", ctx, 9, batchesOf(makeBatch(7, 3), makeBatch(6, 4)), wire.ErrBadRequest},
		{"seq repeated", ctx, 9, batchesOf(makeBatch(7, 3), makeBatch(7, 4)), wire.ErrBadRequest},
		{"seq above n", ctx, 9, batchesOf(makeBatch(7, 3), makeBatch(10, 4)), wire.ErrBadRequest},
		{"seq 0", ctx, 9, batchesOf(makeBatch(0, 3)), wire.ErrBadRequest},
		{"nil batch", ctx, 9, batchesOf(makeBatch(7, 3), nil), wire.ErrBadRequest},
		{"iterator error", ctx, 9, failingBatches(injected, makeBatch(6, 3), makeBatch(7, 4)), injected},
		{"too large", ctx, 9, batchesOf(makeBatch(6, 3, 4), makeBatch(7, 4, 5), makeBatch(8, 6)), ErrRoundTooLarge},
		{"cancelled", cancelled, 9, batchesOf(makeBatch(6, 3)), context.Canceled},
		{"cancelled after the batches", lateCtx, 9, late, context.Canceled},
	} {
		err := r.applyRoundErr(tc.ctx, tc.n, tc.batches)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), replicaDir) {
			t.Fatalf("%s: ApplyRound: %v, want an error wrapping %v naming the directory", tc.name, err, tc.want)
		}
		checkReplica(t, r, 5, m)
	}
	// No refusal failed the replica: it takes a round of exactly
	// MaxRoundBytes (re-sent batches do not count).
	last := []*wire.CommittedBatch{makeBatch(6, 3, 4), makeBatch(9, 3, 7)}
	must(t, r.applyRoundErr(ctx, 9, batchesOf(append(slices.Clone(first), last...)...)))
	m = m.with(last...)
	checkReplica(t, r, 9, m)
	must(t, r.Close())
	r = mustOpenReplica(t, opts)
	checkReplica(t, r, 9, m)
	must(t, r.Close())
}

// TestReplicaFailStop fails the intent log's write or fsync under a round:
// the replica then refuses rounds, Applied stays, reads go on, and a reopen
// recovers it at one of the two seqs.
func TestReplicaFailStop(t *testing.T) {
	for _, kind := range []blockdev.OpKind{blockdev.OpWrite, blockdev.OpSync} {
		t.Run(kind.String(), func(t *testing.T) {
			fsys := blockdev.NewFaultFS(blockdev.NewMemFS())
			opts := replicaOptions(fsys)
			r := mustCreateReplica(t, opts)
			ctx := context.Background()
			b1, b2 := makeBatch(1, 0, 1), makeBatch(2, 1, 2)
			must(t, r.applyRoundErr(ctx, 1, batchesOf(b1)))
			m1 := zeroImage().with(b1)
			m2 := m1.with(b2)
			fsys.Inject(blockdev.FSFault{Kind: kind, Label: blockdev.LabelLog, N: 1})
			err := r.applyRoundErr(ctx, 2, batchesOf(b2))
			if !errors.Is(err, blockdev.ErrFailed) || !errors.Is(err, blockdev.ErrInjected) {
				t.Fatalf("ApplyRound with a failing %s: %v, want ErrFailed and ErrInjected", kind, err)
			}
			fsys.Clear()
			if got := r.Applied(); got != 1 {
				t.Fatalf("Applied() after the failed round = %d, want 1", got)
			}
			// Readers see one round or the other, whole.
			if got := readImage(t, r); diffBlock(got, m1) >= 0 && diffBlock(got, m2) >= 0 {
				t.Fatal("after the failed round, the blocks are neither at seq 1 nor at seq 2")
			}
			for _, n := range []uint64{1, 3} {
				if err := r.applyRoundErr(ctx, n, batchesOf()); !errors.Is(err, blockdev.ErrFailed) {
					t.Fatalf("ApplyRound(%d) on a failed replica: %v, want ErrFailed", n, err)
				}
			}
			must(t, r.Close())
			r = mustOpenReplica(t, opts)
			want := m1
			if r.Applied() == 2 {
				want = m2
			}
			if kind == blockdev.OpWrite {
				checkReplica(t, r, 1, m1)
			}
			checkReplica(t, r, r.Applied(), want)
			must(t, r.applyRoundErr(ctx, 3, batchesOf(b2, makeBatch(3, 5))))
			must(t, r.Close())
		})
	}
}

// replicaRound is one ApplyRound of a crash workload.
type replicaRound struct {
	n       uint64
	batches []*wire.CommittedBatch
}

// newReplicaWorkload returns rounds with gaps in the seqs, overlapping
// writes, empty rounds, re-sent rounds and replayed batches, and the
// content after each prefix of them: images[i] is the content at seq
// ns[i], after i rounds.
func newReplicaWorkload(seed uint64, rounds int) (work []replicaRound, ns []uint64, images []image) {
	rng := rand.New(rand.NewPCG(seed, 1))
	ns, images = []uint64{0}, []image{zeroImage()}
	var seq uint64
	var prev []*wire.CommittedBatch
	for range rounds {
		var rd replicaRound
		if rng.IntN(4) == 0 {
			rd.batches = append(rd.batches, prev...) // replayed: skipped
		}
		prev = nil
		for range rng.IntN(4) {
			seq += 1 + uint64(rng.IntN(3))
			idx := make([]uint64, 1+rng.IntN(3))
			for i := range idx {
				idx[i] = uint64(rng.IntN(testBlocks))
			}
			prev = append(prev, makeBatch(seq, idx...))
		}
		seq += uint64(rng.IntN(3))
		if seq == ns[len(ns)-1] {
			seq++
		}
		rd.n = seq
		rd.batches = append(rd.batches, prev...)
		work = append(work, rd)
		if rng.IntN(5) == 0 {
			work = append(work, rd) // re-sent: a no-op
		}
		ns = append(ns, seq)
		images = append(images, images[len(images)-1].with(prev...))
	}
	return work, ns, images
}

// runReplicaWorkload applies the rounds of work until one fails; it returns
// how many returned nil and the error.
func runReplicaWorkload(r *Replica, work []replicaRound) (int, error) {
	for i, rd := range work {
		if err := r.applyRoundErr(context.Background(), rd.n, batchesOf(rd.batches...)); err != nil {
			return i, err
		}
	}
	return len(work), nil
}

// checkRecoveredReplica fails t unless r is at the seq of the last round
// that returned nil or of the one that failed, with that round's content.
// It returns the index in ns of where r is.
func checkRecoveredReplica(t testing.TB, r *Replica, work []replicaRound, ns []uint64, images []image, ok int) int {
	t.Helper()
	lo := uint64(0)
	if ok > 0 {
		lo = work[ok-1].n
	}
	hi := lo
	if ok < len(work) {
		hi = work[ok].n
	}
	got := r.Applied()
	if got != lo && got != hi {
		t.Fatalf("recovered at seq %d, want %d or %d", got, lo, hi)
	}
	for i, n := range ns {
		if n == got {
			if d := diffBlock(readImage(t, r), images[i]); d >= 0 {
				t.Fatalf("recovered at seq %d: block %d differs from the model at that seq", got, d)
			}
			return i
		}
	}
	t.Fatalf("recovered at seq %d, which no round reached", got)
	return -1
}

func crashReplicaOptions(fsys blockdev.FS) ReplicaOptions {
	o := replicaOptions(fsys)
	// A small intent log: a checkpoint every few rounds, some inside the
	// Apply of a round.
	o.CheckpointBytes = 24 << 10
	return o
}

// TestReplicaCrashPoints runs a workload of rounds on a replica over MemFS,
// crashes it at every mutating FS operation in turn (losing every unsynced
// change, or a random part of them), reopens it and checks that it is at
// the last seq a round returned nil for, or at the seq of the round that
// failed, with exactly the content at that seq. For every crash point it
// also crashes the recovery at each mutating operation and recovers again,
// then goes on with a round.
func TestReplicaCrashPoints(t *testing.T) {
	testReplicaCrashPoints(t, crashReplicaOptions)
}

// TestReplicaInPlaceCrashPoints is TestReplicaCrashPoints with every round
// written in place: a crash inside one leaves it interrupted, and the
// reopened replica redoes it from the workload's batches (the stage's part)
// before it is checked.
func TestReplicaInPlaceCrashPoints(t *testing.T) {
	before := redoneRounds.Load()
	testReplicaCrashPoints(t, func(fsys blockdev.FS) ReplicaOptions {
		o := crashReplicaOptions(fsys)
		o.InPlaceBytes = 1
		return o
	})
	redone := redoneRounds.Load() - before
	t.Logf("%d interrupted rounds redone", redone)
	if redone == 0 {
		t.Fatal("no crash point interrupted an in-place round")
	}
}

// TestReplicaMixedCrashPoints is TestReplicaCrashPoints with the larger
// rounds written in place and the smaller ones through the intent log, so
// that blocks move between the two ways of writing them.
func TestReplicaMixedCrashPoints(t *testing.T) {
	testReplicaCrashPoints(t, func(fsys blockdev.FS) ReplicaOptions {
		o := crashReplicaOptions(fsys)
		o.InPlaceBytes = 3 * blockdev.BlockSize
		return o
	})
}

// redoneRounds counts the interrupted rounds openRedone redid.
var redoneRounds atomic.Int64

// openRedone opens the replica in replicaDir and redoes its interrupted
// in-place round, if any, from the batches of work.
func openRedone(opts ReplicaOptions, work []replicaRound) (*Replica, error) {
	r, err := OpenReplica(replicaDir, opts)
	if err != nil {
		return nil, err
	}
	from, to, ok := r.InterruptedRound()
	if !ok {
		return r, nil
	}
	if err := r.readable(); !errors.Is(err, ErrInterruptedRound) {
		r.Close()
		return nil, fmt.Errorf("a replica with an interrupted round is readable: %v", err)
	}
	if _, err := r.Redo(context.Background(), batchesOf(stagedBetween(work, from, to)...)); err != nil {
		r.Close()
		return nil, err
	}
	redoneRounds.Add(1)
	return r, nil
}

// stagedBetween returns the batches of work with a seq in (from, to], once
// each, in seq order: what the stage would yield.
func stagedBetween(work []replicaRound, from, to uint64) []*wire.CommittedBatch {
	seen := map[uint64]bool{}
	var out []*wire.CommittedBatch
	for _, rd := range work {
		for _, cb := range rd.batches {
			if s := cb.GetSeq(); s > from && s <= to && !seen[s] {
				seen[s] = true
				out = append(out, cb)
			}
		}
	}
	slices.SortFunc(out, func(a, b *wire.CommittedBatch) int { return cmp.Compare(a.GetSeq(), b.GetSeq()) })
	return out
}

func testReplicaCrashPoints(t *testing.T, crashReplicaOptions func(blockdev.FS) ReplicaOptions) {
	seed := testSeed(t)
	work, ns, images := newReplicaWorkload(seed, 14)

	fsys := blockdev.NewMemFS()
	var logs logBuffer
	opts := crashReplicaOptions(fsys)
	opts.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r := mustCreateReplica(t, opts)
	base := fsys.MutatingOps()
	if _, err := runReplicaWorkload(r, work); err != nil {
		t.Fatalf("workload without crash: %v", err)
	}
	total := fsys.MutatingOps() - base
	must(t, r.Close())
	checkpoints := strings.Count(logs.String(), "msg=checkpointed")
	t.Logf("%d rounds up to seq %d, %d mutating operations, %d checkpoints", len(work), ns[len(ns)-1], total, checkpoints)
	if checkpoints < 2 {
		t.Fatalf("only %d checkpoints in the workload: make CheckpointBytes smaller", checkpoints)
	}

	for _, mode := range crashModes {
		recoveryPoints := 0
		for k := 0; k <= total; k++ {
			rng := rand.New(rand.NewPCG(seed, uint64(k)))
			where := fmt.Sprintf("%s at operation %d", mode.name, k)
			fsys := blockdev.NewMemFS()
			r := mustCreateReplica(t, crashReplicaOptions(fsys))
			fsys.FailAfter(k)
			ok, err := runReplicaWorkload(r, work)
			switch {
			case k < total && !errors.Is(err, blockdev.ErrCrashed):
				t.Fatalf("%s: workload returned %v, want a simulated crash", where, err)
			case k == total && err != nil:
				t.Fatalf("%s: %v", where, err)
			}
			r.Close()
			mode.crash(fsys, rng)
			post := fsys.Clone()

			r, err = openRedone(crashReplicaOptions(post.Clone()), work)
			if err != nil {
				t.Fatalf("%s: reopen: %v", where, err)
			}
			at := checkReplicaRecoveredAt(t, r, work, ns, images, ok, where)
			must(t, r.Close())

			// Crash the recovery at each of its mutating operations, then
			// recover again: the same seq.
			for j := 0; ; j++ {
				f := post.Clone()
				f.FailAfter(j)
				r, err := openRedone(crashReplicaOptions(f), work)
				if err == nil {
					r.Close()
					break
				}
				if !errors.Is(err, blockdev.ErrCrashed) {
					t.Fatalf("%s, recovery crash at %d: %v", where, j, err)
				}
				recoveryPoints++
				mode.crash(f, rand.New(rand.NewPCG(seed, uint64(k)<<32|uint64(j))))
				r, err = openRedone(crashReplicaOptions(f), work)
				if err != nil {
					t.Fatalf("%s, recovery crash at %d: reopen: %v", where, j, err)
				}
				if got := checkReplicaRecoveredAt(t, r, work, ns, images, ok, fmt.Sprintf("%s, recovery crash at %d", where, j)); got != at {
					t.Fatalf("%s, recovery crash at %d: recovered at seq %d, a recovery without crash at %d", where, j, ns[got], ns[at])
				}
				r.Close()
			}

			// The replica goes on from where it recovered.
			r, err = openRedone(crashReplicaOptions(post), work)
			if err != nil {
				t.Fatalf("%s: reopen: %v", where, err)
			}
			next := ns[len(ns)-1] + 10
			more := makeBatch(next, 0, uint64(k%testBlocks))
			if err := r.applyRoundErr(context.Background(), next, batchesOf(more)); err != nil {
				t.Fatalf("%s: round after recovery: %v", where, err)
			}
			r.Close()
			mode.crash(post, rng)
			r, err = openRedone(crashReplicaOptions(post), stagedAfter(work, more))
			if err != nil {
				t.Fatalf("%s: second reopen: %v", where, err)
			}
			checkReplica(t, r, next, images[at].with(more))
			r.Close()
		}
		t.Logf("%s: %d workload crash points, %d recovery crash points", mode.name, total+1, recoveryPoints)
	}
}

// stagedAfter returns work with one more round of batch more.
func stagedAfter(work []replicaRound, more *wire.CommittedBatch) []replicaRound {
	return append(slices.Clone(work), replicaRound{n: more.GetSeq(), batches: []*wire.CommittedBatch{more}})
}

// checkReplicaRecoveredAt is checkRecoveredReplica, saying where the crash was on
// failure.
func checkReplicaRecoveredAt(t *testing.T, r *Replica, work []replicaRound, ns []uint64, images []image, ok int, where string) int {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("crash: %s (%d rounds returned nil)", where, ok)
		}
	}()
	return checkRecoveredReplica(t, r, work, ns, images, ok)
}

// TestCreateReplicaCrashPoints crashes CreateReplica at every mutating
// operation: then either the replica directory does not exist and
// CreateReplica succeeds, or it holds a whole replica at seq 0.
func TestCreateReplicaCrashPoints(t *testing.T) {
	seed := testSeed(t)
	for _, mode := range crashModes {
		for k := 0; ; k++ {
			where := fmt.Sprintf("%s at operation %d", mode.name, k)
			fsys := blockdev.NewMemFS()
			fsys.FailAfter(k)
			r, err := CreateReplica(replicaDir, testVolume, testBlocks, replicaOptions(fsys))
			if err == nil {
				r.Close()
				if k < 10 {
					t.Fatalf("CreateReplica made only %d mutating operations", k)
				}
				break
			}
			if !errors.Is(err, blockdev.ErrCrashed) {
				t.Fatalf("%s: CreateReplica: %v", where, err)
			}
			mode.crash(fsys, rand.New(rand.NewPCG(seed, uint64(k))))
			_, statErr := fsys.Stat("test", replicaDir)
			exists := statErr == nil
			if exists {
				r, err = OpenReplica(replicaDir, replicaOptions(fsys))
			} else {
				r, err = CreateReplica(replicaDir, testVolume, testBlocks, replicaOptions(fsys))
			}
			if err != nil {
				t.Fatalf("%s (exists %v): %v", where, exists, err)
			}
			checkReplica(t, r, 0, zeroImage())
			b := makeBatch(3, 2)
			if err := r.applyRoundErr(context.Background(), 3, batchesOf(b)); err != nil {
				t.Fatalf("%s: %v", where, err)
			}
			checkReplica(t, r, 3, zeroImage().with(b))
			r.Close()
			if names, _ := fsys.ReadDir("test", path.Dir(replicaDir)); len(names) != 1 {
				t.Fatalf("%s: the parent directory holds %q, want the replica only", where, names)
			}
		}
	}
}

// headerImage returns a MemFS holding a closed replica of blocks blocks at
// seq 5 in dir, whose header is in the data file, and the path of that
// file.
func headerImage(t testing.TB, dir string, blocks uint64) (*blockdev.MemFS, string) {
	fsys := blockdev.NewMemFS()
	r, err := CreateReplica(dir, testVolume, blocks, replicaOptions(fsys))
	must(t, err)
	must(t, r.applyRoundErr(context.Background(), 5, batchesOf(makeBatch(4, 0))))
	must(t, r.Close())
	// Reopening replays the intent log into the data file.
	r, err = OpenReplica(dir, replicaOptions(fsys))
	must(t, err)
	must(t, r.Close())
	return fsys, path.Join(dir, "volume.data")
}

// writeHeaderBlock writes p as the header block of the data file dataPath
// of a replica of blocks blocks, durably.
func writeHeaderBlock(t testing.TB, fsys blockdev.FS, dataPath string, blocks uint64, p []byte) {
	t.Helper()
	f, err := fsys.OpenFile("test", dataPath, os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	_, err = f.WriteAt(p, int64(blocks)*blockdev.BlockSize)
	must(t, err)
	must(t, f.Sync())
}

// TestReplicaHeaderCorruption flips each byte of the header block on disk:
// OpenReplica refuses with ErrCorrupt naming the directory. Headers with a
// good CRC but impossible fields are refused too.
func TestReplicaHeaderCorruption(t *testing.T) {
	// A volume of one block keeps the rewrites of the data file cheap.
	const small = "/data/replica/small"
	fsys, dataPath := headerImage(t, small, 1)
	orig := readMemFile(t, fsys, dataPath)[blockdev.BlockSize:]
	if h, err := decodeReplicaHeader(orig); err != nil || h.applied != 5 || h.volume != testVolume {
		t.Fatalf("the data file holds header %+v, %v; want one at seq 5", h, err)
	}
	p := bytes.Clone(orig)
	for i := range blockdev.BlockSize {
		p[i] ^= 0xff
		writeHeaderBlock(t, fsys, dataPath, 1, p)
		p[i] = orig[i]
		r, err := OpenReplica(small, replicaOptions(fsys))
		if err == nil {
			r.Close()
			t.Fatalf("header byte %d flipped: OpenReplica succeeded", i)
		}
		if !errors.Is(err, blockdev.ErrCorrupt) || !strings.Contains(err.Error(), small) {
			t.Fatalf("header byte %d flipped: %v, want ErrCorrupt naming the directory", i, err)
		}
	}
	writeHeaderBlock(t, fsys, dataPath, 1, orig)
	r, err := OpenReplica(small, replicaOptions(fsys))
	must(t, err)
	must(t, r.Close())

	// Fields that the CRC covers but that are wrong.
	fsys, dataPath = headerImage(t, replicaDir, testBlocks)
	good := replicaHeader{volume: testVolume, blocks: testBlocks, applied: 5}.encode()
	if !bytes.Equal(readMemFile(t, fsys, dataPath)[testBlocks*blockdev.BlockSize:], good) {
		t.Fatal("the data file does not end with the header at seq 5")
	}
	for _, tc := range []struct {
		name string
		edit func(p []byte)
		want error
	}{
		{"version 3", func(p []byte) { p[8] = 3 }, blockdev.ErrVersion},
		{"version 2 without a round", func(p []byte) { p[8] = 2 }, blockdev.ErrCorrupt},
		{"round not above applied", func(p []byte) { p[8] = 2; p[replicaRedoOff] = 1 }, blockdev.ErrCorrupt},
		{"round in version 1", func(p []byte) { p[replicaRedoOff] = 9 }, blockdev.ErrCorrupt},
		{"flags", func(p []byte) { p[12] = 2 }, blockdev.ErrCorrupt},
		{"fewer blocks", func(p []byte) { p[16] = testBlocks - 1 }, blockdev.ErrCorrupt},
		{"more blocks", func(p []byte) { p[16] = testBlocks + 1 }, blockdev.ErrCorrupt},
		{"no blocks", func(p []byte) { p[16] = 0 }, blockdev.ErrCorrupt},
		{"empty name", func(p []byte) { p[32] = 0; clear(p[34:40]) }, blockdev.ErrCorrupt},
		{"name too long", func(p []byte) { p[32] = wire.MaxVolumeName + 1 }, blockdev.ErrCorrupt},
		{"name longer than the block", func(p []byte) { p[32], p[33] = 0xff, 0xff }, blockdev.ErrCorrupt},
		{"name with slash", func(p []byte) { p[36] = '/' }, blockdev.ErrCorrupt},
		{"name with dot first", func(p []byte) { p[34] = '.' }, blockdev.ErrCorrupt},
		{"byte after the name", func(p []byte) { p[34+len(testVolume)+3] = 1 }, blockdev.ErrCorrupt},
		{"zeros", func(p []byte) { clear(p) }, blockdev.ErrCorrupt},
	} {
		p := bytes.Clone(good)
		tc.edit(p)
		if !bytes.Equal(p, make([]byte, len(p))) {
			reseal(p)
		}
		writeHeaderBlock(t, fsys, dataPath, testBlocks, p)
		_, err := OpenReplica(replicaDir, replicaOptions(fsys))
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), replicaDir) {
			t.Fatalf("%s: OpenReplica: %v, want an error wrapping %v naming the directory", tc.name, err, tc.want)
		}
		if tc.want == blockdev.ErrVersion && errors.Is(err, blockdev.ErrCorrupt) {
			t.Fatalf("%s: OpenReplica: %v, also ErrCorrupt", tc.name, err)
		}
	}
	writeHeaderBlock(t, fsys, dataPath, testBlocks, good)
	r = mustOpenReplica(t, replicaOptions(fsys))
	checkReplica(t, r, 5, zeroImage().with(makeBatch(4, 0)))
	must(t, r.Close())

	// A volume too small for a header.
	tiny, err := blockdev.Create("/data/tiny", 1, blockdev.Options{FS: fsys, Logger: quietLogger})
	must(t, err)
	must(t, tiny.Close())
	if _, err := OpenReplica("/data/tiny", replicaOptions(fsys)); !errors.Is(err, blockdev.ErrCorrupt) {
		t.Fatalf("OpenReplica of a one-block volume: %v, want ErrCorrupt", err)
	}
}

// reseal sets the CRC of a header block.
func reseal(p []byte) {
	binary.LittleEndian.PutUint32(p[replicaCRCOff:], crc32.Checksum(p[:replicaCRCOff], castagnoli))
}

// TestReplicaFromStage feeds a replica from a staging store, as the
// applier does at VALIDATE: rounds at seqs with and without a batch of the
// volume, a trim between them, a re-sent round after a reopen.
func TestReplicaFromStage(t *testing.T) {
	fsys := blockdev.NewMemFS()
	s := mustOpen(t, testOptions(fsys))
	r := mustCreateReplica(t, replicaOptions(fsys))
	ctx := context.Background()
	var staged []*wire.CommittedBatch
	for seq := uint64(1); seq <= 40; seq += 3 {
		staged = append(staged, makeBatch(seq, seq%testBlocks, (seq*7)%testBlocks, 3))
	}
	must(t, s.Append(staged))
	must(t, s.MarkFetched(45))
	must(t, s.Sync())
	m := zeroImage()
	upTo := func(n uint64) []*wire.CommittedBatch {
		var out []*wire.CommittedBatch
		for _, b := range staged {
			if b.GetSeq() <= n {
				out = append(out, b)
			}
		}
		return out
	}
	for _, n := range []uint64{4, 5, 17, 30, 45} {
		if n == 30 {
			must(t, s.Trim(r.Applied()))
		}
		must(t, r.applyRoundErr(ctx, n, s.Batches(r.Applied(), n)))
		m = zeroImage().with(upTo(n)...)
		checkReplica(t, r, n, m)
	}
	// Beyond what is durably staged: the stage's error, nothing applied.
	if err := r.applyRoundErr(ctx, 50, s.Batches(r.Applied(), 50)); !errors.Is(err, ErrNotDurable) {
		t.Fatalf("ApplyRound past Durable: %v, want ErrNotDurable", err)
	}
	checkReplica(t, r, 45, m)
	must(t, r.Close())
	r = mustOpenReplica(t, replicaOptions(fsys))
	must(t, r.applyRoundErr(ctx, 45, s.Batches(30, 45)))
	checkReplica(t, r, 45, m)
	must(t, errors.Join(r.Close(), s.Close()))
}

// TestReplicaConcurrentReaders reads the whole volume in a loop while
// rounds are applied: each ReadBlocks call sees the content at one round's
// seq, never part of a round, never older than a read before it, and never
// older than Applied() said before the read.
func TestReplicaConcurrentReaders(t *testing.T) {
	seed := testSeed(t)
	work, ns, images := newReplicaWorkload(seed, 40)
	// Rounds that write nothing leave the same content at several seqs.
	at := map[string][]int{}
	for i, img := range images {
		at[string(img)] = append(at[string(img)], i)
	}
	fsys := blockdev.NewMemFS()
	r := mustCreateReplica(t, crashReplicaOptions(fsys))
	var (
		done  atomic.Bool
		wg    sync.WaitGroup
		reads atomic.Int64
	)
	errs := make(chan error, 4)
	for range 3 {
		wg.Go(func() {
			buf := make([]byte, testBlocks*blockdev.BlockSize)
			seen := 0
			for !done.Load() {
				before := r.Applied()
				if err := r.ReadBlocks(0, buf); err != nil {
					errs <- err
					return
				}
				i := -1
				for _, j := range at[string(buf)] {
					if j >= seen && ns[j] >= before {
						i = j
						break
					}
				}
				if i < 0 {
					errs <- fmt.Errorf("a read saw a content at no seq from %d (read before) and %d (Applied() before)", ns[seen], before)
					return
				}
				seen = i
				reads.Add(1)
			}
		})
	}
	_, err := runReplicaWorkload(r, work)
	done.Store(true)
	wg.Wait()
	must(t, err)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	checkReplica(t, r, ns[len(ns)-1], images[len(images)-1])
	must(t, r.Close())
	t.Logf("%d reads during %d rounds", reads.Load(), len(work))
}

// applyRoundErr is ApplyRound for tests that only look at the error.
func (r *Replica) applyRoundErr(ctx context.Context, n uint64, batches iter.Seq2[*wire.CommittedBatch, error]) error {
	_, err := r.ApplyRound(ctx, n, batches)
	return err
}

// TestReplicaBuilder: a replica built from a copy replaces the replica
// directory whole, is at the copy's seq and not exposable, stays so across
// a reopen, and becomes exposable with a round to its own seq (or past it).
func TestReplicaBuilder(t *testing.T) {
	fsys := blockdev.NewMemFS()
	opts := ReplicaOptions{FS: fsys, Logger: quietLogger}
	dir := "/data/replica"
	old, err := CreateReplica(dir, testVolume, testBlocks, opts)
	must(t, err)
	must(t, old.Close())
	b, err := BuildReplica(dir, testVolume, testBlocks, opts)
	must(t, err)
	data := make([]byte, 2*blockdev.BlockSize)
	data[0], data[blockdev.BlockSize] = 1, 2
	must(t, b.WriteBlocks(context.Background(), 3, data))
	must(t, b.ApplyBatch(context.Background(), makeBatch(7, 4, 9)))
	if err := b.ApplyBatch(context.Background(), sealed("other", 7, &wire.Block{Index: 1, Data: filled(1)})); !errors.Is(err, wire.ErrBadRequest) {
		t.Fatalf("ApplyBatch of another volume: %v", err)
	}
	if err := b.WriteBlocks(context.Background(), testBlocks-1, data); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("WriteBlocks past the end: %v", err)
	}
	r, err := b.Finish(context.Background(), 7)
	must(t, err)
	check := func(r *Replica) {
		t.Helper()
		if r.Applied() != 7 || r.Exposable() {
			t.Fatalf("built replica: applied %d, exposable %v; want 7, false", r.Applied(), r.Exposable())
		}
		p := make([]byte, blockdev.BlockSize)
		must(t, r.ReadBlock(3, p))
		if p[0] != 1 {
			t.Fatal("block 3 is not the copy's")
		}
		must(t, r.ReadBlock(4, p))
		if !bytes.Equal(p, blockData(7, 4)) {
			t.Fatal("block 4 is not the batch's")
		}
	}
	check(r)
	must(t, r.Close())
	r, err = OpenReplica(dir, opts)
	must(t, err)
	check(r)
	// A round to its own seq validates it: only the header changes.
	changed, err := r.ApplyRound(context.Background(), 7, batchesOf())
	must(t, err)
	if len(changed) != 0 || !r.Exposable() || r.Applied() != 7 {
		t.Fatalf("after the validating round: changed %v, exposable %v, applied %d", changed, r.Exposable(), r.Applied())
	}
	must(t, r.Close())
	r, err = OpenReplica(dir, opts)
	must(t, err)
	if !r.Exposable() {
		t.Fatal("exposable lost at reopen")
	}
	must(t, r.Close())
	// Abort leaves the replica as it was and no leftover.
	b, err = BuildReplica(dir, testVolume, testBlocks, opts)
	must(t, err)
	must(t, b.Abort())
	if _, err := fsys.Stat(LabelReplicaDir, "/data/"+newReplicaPrefix+"replica"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("leftover after Abort: %v", err)
	}
	r, err = OpenReplica(dir, opts)
	must(t, err)
	if r.Applied() != 7 || !r.Exposable() {
		t.Fatal("Abort changed the replica")
	}
	must(t, r.Close())
}

// TestInstallReplica: a sealed replica built aside replaces the replica;
// RecoverReplica puts the old one back when a crash left none in place,
// and drops it when the new one made it.
func TestInstallReplica(t *testing.T) {
	fsys := blockdev.NewMemFS()
	opts := ReplicaOptions{FS: fsys, Logger: quietLogger}
	dir, old := "/data/replica", "/data/"+oldReplicaPrefix+"replica"
	r, err := CreateReplica(dir, testVolume, testBlocks, opts)
	must(t, err)
	must(t, r.applyRoundErr(context.Background(), 3, batchesOf(makeBatch(3, 1))))
	must(t, r.Close())
	build := func(n uint64) string {
		t.Helper()
		b, err := BuildReplica(dir, testVolume, testBlocks, opts)
		must(t, err)
		must(t, b.ApplyBatch(context.Background(), makeBatch(n, 2)))
		aside, err := b.Seal(context.Background(), n)
		must(t, err)
		return aside
	}
	r, err = InstallReplica(dir, build(9), opts)
	must(t, err)
	if r.Applied() != 9 || r.Exposable() {
		t.Fatalf("installed: applied %d exposable %v", r.Applied(), r.Exposable())
	}
	must(t, r.Close())
	if _, err := fsys.Stat(LabelReplicaDir, old); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("old replica left: %v", err)
	}
	// A crash after the old one moved aside, before the new one came in.
	aside := build(12)
	must(t, fsys.Rename(LabelReplicaDir, dir, old))
	must(t, RecoverReplica(dir, opts))
	r, err = OpenReplica(dir, opts)
	must(t, err)
	if r.Applied() != 9 {
		t.Fatalf("recovered replica at %d, want the old one at 9", r.Applied())
	}
	must(t, r.Close())
	// A crash after the new one came in, before the old one was removed.
	must(t, fsys.Rename(LabelReplicaDir, dir, old))
	must(t, fsys.Rename(LabelReplicaDir, aside, dir))
	must(t, RecoverReplica(dir, opts))
	if _, err := fsys.Stat(LabelReplicaDir, old); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("old replica left after recovery: %v", err)
	}
	r, err = OpenReplica(dir, opts)
	must(t, err)
	if r.Applied() != 12 {
		t.Fatalf("recovered replica at %d, want the new one at 12", r.Applied())
	}
	must(t, r.Close())
}

// TestReplicaInPlaceAfterLogged: a block written by a logged round, which a
// checkpoint then wrote to the data file, and written again by an in-place
// round, keeps the in-place data across a crash: the checkpointed log that
// held its older data is not replayed over it.
func TestReplicaInPlaceAfterLogged(t *testing.T) {
	ctx := context.Background()
	fsys := blockdev.NewMemFS()
	opts := replicaOptions(fsys)
	opts.InPlaceBytes = 2 * blockdev.BlockSize
	r := mustCreateReplica(t, opts)
	small := makeBatch(1, 5)
	must(t, r.applyRoundErr(ctx, 1, batchesOf(small)))
	must(t, r.vol.Checkpoint(ctx))
	big := makeBatch(2, 5, 6)
	must(t, r.applyRoundErr(ctx, 2, batchesOf(big)))
	must(t, r.Close())
	fsys.Crash()
	r = mustOpenReplica(t, opts)
	defer r.Close()
	checkReplica(t, r, 2, zeroImage().with(small, big))
}
