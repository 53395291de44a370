package secondary

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math/rand/v2"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

const (
	testVolume = "vol-a"
	testBlocks = 16
	stageDir   = "/data/stage/vol-a"
)

// quietLogger discards everything: for tests that open stages thousands of
// times.
var quietLogger = slog.New(slog.DiscardHandler)

func testOptions(fsys blockdev.FS) StageOptions {
	return StageOptions{FS: fsys, Volume: testVolume, BlockCount: testBlocks, Logger: quietLogger}
}

// oneBlockRecord is the size of the record of a batch of one block.
var oneBlockRecord = func() int64 {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(makeBatch(1000, 1))
	if err != nil {
		panic(err)
	}
	return recordSize(len(b))
}()

// testSeed returns the seed of a randomised test: TRICOPY_SEED if set, or
// the clock. It logs how to replay it.
func testSeed(t testing.TB) uint64 {
	t.Helper()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TRICOPY_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TRICOPY_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (replay: TRICOPY_SEED=%d go test -run '^%s$' ./secondary/)", seed, seed, t.Name())
	return seed
}

// blockData returns the content of block idx in the batch of seq.
func blockData(seq, idx uint64) []byte {
	p := make([]byte, wire.BlockSize)
	binary.LittleEndian.PutUint64(p, seq)
	binary.LittleEndian.PutUint64(p[8:], idx)
	for i := 16; i < len(p); i++ {
		p[i] = byte(seq*131 + idx*7 + uint64(i))
	}
	return p
}

// makeBatch returns the sealed committed batch of seq writing the blocks
// indexes of the test volume.
func makeBatch(seq uint64, indexes ...uint64) *wire.CommittedBatch {
	b := &wire.Batch{Volume: testVolume, Epoch: 1, VolumeSeq: seq}
	for _, i := range indexes {
		b.Blocks = append(b.Blocks, &wire.Block{Index: i, Data: blockData(seq, i)})
	}
	return &wire.CommittedBatch{Seq: seq, Batch: wire.Seal(b)}
}

func mustOpen(t testing.TB, opts StageOptions) *Stage {
	t.Helper()
	s, err := OpenStage(stageDir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// collect reads the batches of s in (after, upTo], stopping at the first
// error.
func collect(s *Stage, after, upTo uint64) ([]*wire.CommittedBatch, error) {
	var out []*wire.CommittedBatch
	for b, err := range s.Batches(after, upTo) {
		if err != nil {
			return out, err
		}
		out = append(out, b)
	}
	return out, nil
}

func seqsOf(bs []*wire.CommittedBatch) []uint64 {
	out := make([]uint64, len(bs))
	for i, b := range bs {
		out[i] = b.GetSeq()
	}
	return out
}

// sameBatches reports how got differs from want, or "".
func sameBatches(got, want []*wire.CommittedBatch) string {
	if !slices.Equal(seqsOf(got), seqsOf(want)) {
		return fmt.Sprintf("seqs %v, want %v", seqsOf(got), seqsOf(want))
	}
	for i := range got {
		if !proto.Equal(got[i], want[i]) {
			return fmt.Sprintf("batch seq %d differs from the one appended", got[i].GetSeq())
		}
	}
	return ""
}

// checkBatches fails t unless s reads back exactly want in (after, upTo].
func checkBatches(t testing.TB, s *Stage, after, upTo uint64, want []*wire.CommittedBatch) {
	t.Helper()
	got, err := collect(s, after, upTo)
	if err != nil {
		t.Fatalf("Batches(%d, %d): %v", after, upTo, err)
	}
	if d := sameBatches(got, want); d != "" {
		t.Fatalf("Batches(%d, %d): %s", after, upTo, d)
	}
}

// checkWatermarks fails t unless s has these Last, Fetched and Durable.
func checkWatermarks(t testing.TB, s *Stage, last, fetched, durable uint64) {
	t.Helper()
	if l, f, d := s.Last(), s.Fetched(), s.Durable(); l != last || f != fetched || d != durable {
		t.Fatalf("Last, Fetched, Durable = %d, %d, %d; want %d, %d, %d", l, f, d, last, fetched, durable)
	}
}

func readMemFile(t testing.TB, fsys blockdev.FS, name string) []byte {
	t.Helper()
	b, err := blockdev.ReadFileLimit(fsys, "test", name, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeMemFile(t testing.TB, fsys blockdev.FS, name string, data []byte) {
	t.Helper()
	f, err := fsys.OpenFile("test", name, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	must(t, f.Sync())
	must(t, fsys.SyncDir("test", path.Dir(name)))
}

func segmentFiles(t testing.TB, fsys blockdev.FS) []string {
	t.Helper()
	names, err := fsys.ReadDir("test", stageDir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		if _, ok := parseSegmentName(n); ok {
			out = append(out, n)
		}
	}
	return out
}

func segPath(n uint64) string { return path.Join(stageDir, segmentName(n)) }

// logBuffer is a slog handler target that tests can search.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func (b *logBuffer) logger() *slog.Logger { return slog.New(slog.NewTextHandler(b, nil)) }

// TestStageRoundTrip appends batches with gaps, marks and syncs, reads
// ranges back before and after a reopen, and checks the watermarks and the
// idempotent re-append.
func TestStageRoundTrip(t *testing.T) {
	fsys := blockdev.NewMemFS()
	opts := testOptions(fsys)
	s := mustOpen(t, opts)
	checkWatermarks(t, s, 0, 0, 0)

	b3, b5, b9, b14 := makeBatch(3, 1, 2), makeBatch(5, 0), makeBatch(9, 15, 3, 3), makeBatch(14, 7)
	must(t, s.Append([]*wire.CommittedBatch{b3, b5}))
	must(t, s.Append([]*wire.CommittedBatch{b9}))
	checkWatermarks(t, s, 9, 9, 0)
	if _, err := collect(s, 0, 9); !errors.Is(err, ErrNotDurable) {
		t.Fatalf("Batches above Durable = %v, want ErrNotDurable", err)
	}
	must(t, s.MarkFetched(12))
	must(t, s.MarkFetched(10)) // lower: ignored
	checkWatermarks(t, s, 9, 12, 0)
	must(t, s.Sync())
	checkWatermarks(t, s, 9, 12, 12)

	// A batch above Last but within the watermark contradicts it.
	if err := s.Append([]*wire.CommittedBatch{makeBatch(11, 1)}); !errors.Is(err, wire.ErrBadRequest) {
		t.Fatalf("Append of seq 11 under watermark 12 = %v, want ErrBadRequest", err)
	}
	// Re-fetching what is staged is a no-op; the new batch goes in.
	must(t, s.Append([]*wire.CommittedBatch{b3, b5, b9, b14}))
	must(t, s.Append([]*wire.CommittedBatch{b9}))
	checkWatermarks(t, s, 14, 14, 12)

	checkBatches(t, s, 0, 12, []*wire.CommittedBatch{b3, b5, b9})
	checkBatches(t, s, 3, 9, []*wire.CommittedBatch{b5, b9})
	checkBatches(t, s, 4, 8, []*wire.CommittedBatch{b5})
	checkBatches(t, s, 9, 12, nil)
	checkBatches(t, s, 7, 7, nil)
	checkBatches(t, s, 12, 3, nil)
	must(t, s.Sync())
	checkWatermarks(t, s, 14, 14, 14)
	all := []*wire.CommittedBatch{b3, b5, b9, b14}
	checkBatches(t, s, 0, 14, all)

	// Each batch read is the caller's: changing it changes nothing staged.
	got, err := collect(s, 0, 14)
	must(t, err)
	got[0].Batch.Blocks[0].Data[100] ^= 1
	checkBatches(t, s, 0, 14, all)

	must(t, s.Close())
	s = mustOpen(t, opts)
	checkWatermarks(t, s, 14, 14, 14)
	checkBatches(t, s, 0, 14, all)
	must(t, s.MarkFetched(20))
	must(t, s.Sync())
	must(t, s.Close())

	s = mustOpen(t, opts)
	checkWatermarks(t, s, 14, 20, 20)
	checkBatches(t, s, 0, 20, all)
	if err := s.Append([]*wire.CommittedBatch{makeBatch(18, 1)}); !errors.Is(err, wire.ErrBadRequest) {
		t.Fatalf("Append of seq 18 under the reopened watermark 20 = %v, want ErrBadRequest", err)
	}
	must(t, s.Close())

	// A closed stage refuses everything.
	for name, err := range map[string]error{
		"Append":      s.Append([]*wire.CommittedBatch{makeBatch(30, 1)}),
		"MarkFetched": s.MarkFetched(40),
		"Sync":        s.Sync(),
		"Trim":        s.Trim(1),
		"Close":       s.Close(),
	} {
		if !errors.Is(err, ErrStageClosed) {
			t.Errorf("%s after Close = %v, want ErrStageClosed", name, err)
		}
	}
	if _, err := collect(s, 0, 14); !errors.Is(err, ErrStageClosed) {
		t.Errorf("Batches after Close = %v, want ErrStageClosed", err)
	}
}

// TestStageOpenOptions checks the refusals of OpenStage and the exclusive
// lock on the directory.
func TestStageOpenOptions(t *testing.T) {
	fsys := blockdev.NewMemFS()
	for name, opts := range map[string]StageOptions{
		"no volume":      {FS: fsys, BlockCount: 1},
		"bad volume":     {FS: fsys, Volume: "a/b", BlockCount: 1},
		"no blocks":      {FS: fsys, Volume: testVolume},
		"negative bytes": {FS: fsys, Volume: testVolume, BlockCount: 1, SegmentBytes: -1},
	} {
		if s, err := OpenStage(stageDir, opts); err == nil {
			s.Close()
			t.Errorf("%s: OpenStage succeeded", name)
		}
	}
	s := mustOpen(t, testOptions(fsys))
	if s2, err := OpenStage(stageDir, testOptions(fsys)); !errors.Is(err, blockdev.ErrInUse) {
		if err == nil {
			s2.Close()
		}
		t.Fatalf("second OpenStage = %v, want ErrInUse", err)
	}
	must(t, s.Close())
	s = mustOpen(t, testOptions(fsys))
	must(t, s.Close())
}

// TestStageAppendRefusals checks that Append refuses a call with a bad batch
// anywhere in it, names the batch, and appends nothing of the call.
func TestStageAppendRefusals(t *testing.T) {
	badCRC := makeBatch(21, 4)
	badCRC.Batch.Blocks[0].Data[17] ^= 0x20
	otherVolume := makeBatch(21, 4)
	otherVolume.Batch.Volume = "vol-b"
	wire.Seal(otherVolume.Batch)
	outside := makeBatch(21, 4)
	outside.Batch.Blocks[0].Index = testBlocks
	wire.Seal(outside.Batch)
	short := makeBatch(21, 4)
	short.Batch.Blocks[0].Data = short.Batch.Blocks[0].Data[:100]
	wire.Seal(short.Batch)
	noBlocks := &wire.CommittedBatch{Seq: 21, Batch: wire.Seal(&wire.Batch{Volume: testVolume})}
	badStaged := makeBatch(5, 1) // at or below Last: still checked
	badStaged.Batch.Crc++

	cases := []struct {
		name  string
		batch []*wire.CommittedBatch // appended after a good batch of seq 20
		want  error
		names string
	}{
		{"bad crc", []*wire.CommittedBatch{badCRC}, wire.ErrBadCRC, "batch seq 21"},
		{"other volume", []*wire.CommittedBatch{otherVolume}, wire.ErrBadRequest, "batch seq 21"},
		{"block outside volume", []*wire.CommittedBatch{outside}, wire.ErrBadRequest, "batch seq 21"},
		{"short block", []*wire.CommittedBatch{short}, wire.ErrBadRequest, "batch seq 21"},
		{"no blocks", []*wire.CommittedBatch{noBlocks}, wire.ErrBadRequest, "batch seq 21"},
		{"seq backwards", []*wire.CommittedBatch{makeBatch(19, 1)}, wire.ErrBadRequest, "batch seq 19"},
		{"seq repeated", []*wire.CommittedBatch{makeBatch(20, 1)}, wire.ErrBadRequest, "batch seq 20"},
		{"seq zero", []*wire.CommittedBatch{makeBatch(0, 1)}, wire.ErrBadRequest, "seq 0"},
		{"nil", []*wire.CommittedBatch{nil}, wire.ErrBadRequest, "is nil"},
		{"nil batch", []*wire.CommittedBatch{{Seq: 21}}, wire.ErrBadRequest, "batch seq 21"},
		{"bad staged batch", []*wire.CommittedBatch{makeBatch(22, 1), badStaged}, wire.ErrBadRequest, "batch seq 5"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fsys := blockdev.NewMemFS()
			opts := testOptions(fsys)
			s := mustOpen(t, opts)
			b5 := makeBatch(5, 1)
			must(t, s.Append([]*wire.CommittedBatch{b5}))
			must(t, s.Sync())
			before := readMemFile(t, fsys, segPath(1))
			err := s.Append(append([]*wire.CommittedBatch{makeBatch(20, 2)}, c.batch...))
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.names) {
				t.Fatalf("Append = %v, want an error wrapping %v naming %q", err, c.want, c.names)
			}
			checkWatermarks(t, s, 5, 5, 5)
			if after := readMemFile(t, fsys, segPath(1)); !bytes.Equal(before, after) {
				t.Fatalf("refused Append changed the segment from %d to %d bytes", len(before), len(after))
			}
			// The stage is not failed: the good batch goes in alone.
			b20 := makeBatch(20, 2)
			must(t, s.Append([]*wire.CommittedBatch{b20}))
			must(t, s.Sync())
			must(t, s.Close())
			s = mustOpen(t, opts)
			defer s.Close()
			checkBatches(t, s, 0, 20, []*wire.CommittedBatch{b5, b20})
		})
	}
}

// TestStageRotationAndTrim fills many tiny segments, reads across them,
// trims them away part by part, and checks that Last and Fetched survive
// reopens, even after everything was trimmed.
func TestStageRotationAndTrim(t *testing.T) {
	fsys := blockdev.NewMemFS()
	opts := testOptions(fsys)
	opts.SegmentBytes = 2*oneBlockRecord + segHeaderSize // two one-block batches each
	s := mustOpen(t, opts)
	var all []*wire.CommittedBatch
	seq := uint64(0)
	next := func(blocks int) *wire.CommittedBatch {
		seq += 2
		idx := make([]uint64, blocks)
		for i := range idx {
			idx[i] = uint64(i) * 3 % testBlocks
		}
		b := makeBatch(seq, idx...)
		all = append(all, b)
		return b
	}
	for range 5 {
		must(t, s.Append([]*wire.CommittedBatch{next(1)}))
	}
	must(t, s.Append([]*wire.CommittedBatch{next(1), next(3), next(1), next(1), next(1)})) // one call over three segments
	must(t, s.MarkFetched(seq+1))
	must(t, s.Sync())
	// 10 batches, the one of 3 blocks alone: 1-2, 3-4, 5-6, 7, 8-9, 10.
	if got := segmentFiles(t, fsys); len(got) != 6 {
		t.Fatalf("segments %v, want 6", got)
	}
	checkWatermarks(t, s, 20, 21, 21)
	checkBatches(t, s, 0, 21, all)
	checkBatches(t, s, 3, 15, all[1:7])

	if err := s.Trim(22); !errors.Is(err, ErrNotDurable) {
		t.Fatalf("Trim above Durable = %v, want ErrNotDurable", err)
	}
	// Trim(9) drops segments 1-2 (batches 2-8), keeps 3 (10-12).
	must(t, s.Trim(9))
	if got := segmentFiles(t, fsys); len(got) != 4 || got[0] != segmentName(3) {
		t.Fatalf("segments after Trim(9): %v", got)
	}
	if got := s.Trimmed(); got != 8 {
		t.Fatalf("Trimmed = %d, want 8", got)
	}
	if _, err := collect(s, 0, 21); !errors.Is(err, ErrTrimmed) {
		t.Fatalf("Batches below Trimmed = %v, want ErrTrimmed", err)
	}
	checkBatches(t, s, 8, 21, all[4:])
	must(t, s.Close())
	s = mustOpen(t, opts)
	checkWatermarks(t, s, 20, 21, 21)
	if got := s.Trimmed(); got != 8 {
		t.Fatalf("reopened Trimmed = %d, want 8", got)
	}
	checkBatches(t, s, 8, 21, all[4:])

	// Trimming everything leaves a new empty segment recording Last and
	// Fetched.
	must(t, s.Trim(21))
	if got := segmentFiles(t, fsys); len(got) != 1 || got[0] != segmentName(7) {
		t.Fatalf("segments after Trim(21): %v", got)
	}
	checkWatermarks(t, s, 20, 21, 21)
	checkBatches(t, s, 20, 21, nil)
	must(t, s.Trim(21)) // nothing left to drop
	if got := segmentFiles(t, fsys); len(got) != 1 {
		t.Fatalf("segments after a second Trim(21): %v", got)
	}
	must(t, s.Close())
	s = mustOpen(t, opts)
	checkWatermarks(t, s, 20, 21, 21)
	if _, err := collect(s, 19, 21); !errors.Is(err, ErrTrimmed) {
		t.Fatalf("Batches below Trimmed after trimming all = %v, want ErrTrimmed", err)
	}
	if err := s.Append([]*wire.CommittedBatch{makeBatch(21, 1)}); !errors.Is(err, wire.ErrBadRequest) {
		t.Fatalf("Append under the watermark after trimming all = %v, want ErrBadRequest", err)
	}
	b30 := makeBatch(30, 5)
	must(t, s.Append([]*wire.CommittedBatch{b30}))
	must(t, s.Sync())
	must(t, s.Close())
	s = mustOpen(t, opts)
	defer s.Close()
	checkWatermarks(t, s, 30, 30, 30)
	checkBatches(t, s, 20, 30, []*wire.CommittedBatch{b30})
}

// workKind is the kind of a step of the crash workload.
type workKind uint8

const (
	workAppend workKind = iota
	workMark
	workSync
	workTrim
)

// workOp is one step of the crash workload.
type workOp struct {
	kind     workKind
	batches  []*wire.CommittedBatch // workAppend
	mark     uint64                 // workMark
	permille uint64                 // workTrim: trim up to this much of the way from Trimmed to Durable
}

// newWorkload returns a deterministic workload of n steps: appends of one
// to three batches with seq gaps (sometimes re-fetching the last one),
// watermarks below the next seq, syncs and trims.
func newWorkload(seed uint64, n int) []workOp {
	rng := rand.New(rand.NewPCG(seed, 0))
	var ops []workOp
	var last uint64
	next := uint64(1 + rng.IntN(3))
	var prev *wire.CommittedBatch
	for range n {
		switch r := rng.IntN(20); {
		case r < 9:
			var call []*wire.CommittedBatch
			if prev != nil && rng.IntN(5) == 0 {
				call = append(call, prev)
			}
			for range 1 + rng.IntN(3) {
				idx := make([]uint64, 1+rng.IntN(2))
				for i := range idx {
					idx[i] = uint64(rng.IntN(testBlocks))
				}
				prev = makeBatch(next, idx...)
				call = append(call, prev)
				last = next
				next += 1 + uint64(rng.IntN(4))
			}
			ops = append(ops, workOp{kind: workAppend, batches: call})
		case r < 12:
			ops = append(ops, workOp{kind: workMark, mark: last + uint64(rng.IntN(int(next-last)))})
		case r < 17:
			ops = append(ops, workOp{kind: workSync})
		default:
			ops = append(ops, workOp{kind: workTrim, permille: uint64(rng.IntN(1001))})
		}
	}
	return append(ops, workOp{kind: workSync})
}

// workResult is what a run of the workload that may have crashed tells
// about what the stage must hold.
type workResult struct {
	attempted []*wire.CommittedBatch // new batches of every Append called, in order
	durable   uint64                 // highest Durable() seen
	maxMark   uint64                 // highest watermark given
	maxTrim   uint64                 // highest Trim argument
	err       error
}

func runWorkload(s *Stage, ops []workOp) workResult {
	var r workResult
	var lastSeq uint64
	for _, op := range ops {
		var err error
		switch op.kind {
		case workAppend:
			for _, b := range op.batches {
				if b.GetSeq() > lastSeq {
					r.attempted = append(r.attempted, b)
					lastSeq = b.GetSeq()
				}
			}
			err = s.Append(op.batches)
		case workMark:
			r.maxMark = max(r.maxMark, op.mark)
			err = s.MarkFetched(op.mark)
		case workSync:
			err = s.Sync()
		case workTrim:
			lo := s.Trimmed()
			upTo := lo + (s.Durable()-lo)*op.permille/1000
			r.maxTrim = max(r.maxTrim, upTo)
			err = s.Trim(upTo)
		}
		r.durable = max(r.durable, s.Durable())
		if err != nil {
			r.err = err
			return r
		}
	}
	return r
}

// checkRecovered fails t unless s, reopened after a crash during a run of
// the workload with result r, holds a consistent prefix of the attempted
// batches with at least every durable one, byte for byte.
func checkRecovered(t testing.TB, s *Stage, r workResult) {
	t.Helper()
	last, fetched, durable, trimmed := s.Last(), s.Fetched(), s.Durable(), s.Trimmed()
	var maxSeq uint64
	seqs := map[uint64]bool{0: true}
	for _, b := range r.attempted {
		maxSeq = b.GetSeq()
		seqs[maxSeq] = true
	}
	switch {
	case fetched != durable:
		t.Fatalf("reopened: Fetched %d, Durable %d", fetched, durable)
	case durable < r.durable:
		t.Fatalf("reopened: Durable %d, but it was %d before the crash", durable, r.durable)
	case durable > max(r.maxMark, maxSeq):
		t.Fatalf("reopened: Durable %d, above every watermark and seq given (%d, %d)", durable, r.maxMark, maxSeq)
	case !seqs[last]:
		t.Fatalf("reopened: Last %d is no seq appended", last)
	case trimmed > last || trimmed > r.maxTrim:
		t.Fatalf("reopened: Trimmed %d, Last %d, highest Trim %d", trimmed, last, r.maxTrim)
	}
	var want []*wire.CommittedBatch
	for _, b := range r.attempted {
		seq := b.GetSeq()
		switch {
		case seq <= r.durable && seq > last:
			t.Fatalf("reopened: batch seq %d was durable (Durable %d) but Last is %d", seq, r.durable, last)
		case seq > last && seq <= durable:
			t.Fatalf("reopened: watermark %d but batch seq %d is missing (Last %d)", durable, seq, last)
		case seq > trimmed && seq <= last:
			want = append(want, b)
		}
	}
	got, err := collect(s, trimmed, durable)
	if err != nil {
		t.Fatalf("reopened: Batches(%d, %d): %v", trimmed, durable, err)
	}
	if d := sameBatches(got, want); d != "" {
		t.Fatalf("reopened: Batches(%d, %d): %s", trimmed, durable, d)
	}
}

type crashMode struct {
	name  string
	crash func(fsys *blockdev.MemFS, rng *rand.Rand)
}

var crashModes = []crashMode{
	{"Crash", func(fsys *blockdev.MemFS, _ *rand.Rand) { fsys.Crash() }},
	{"CrashRandom", func(fsys *blockdev.MemFS, rng *rand.Rand) { fsys.CrashRandom(rng) }},
}

// TestStageCrashPoints runs a workload of appends, watermarks, syncs and
// trims over tiny segments on MemFS, from OpenStage of an empty directory
// on, crashes it at every mutating operation in turn (losing every unsynced
// change, or a random part of them), and reopens: the stage must hold a
// consistent prefix of the appended batches with at least every durable
// one. Each recovery is crashed too at each of its own mutating operations
// and recovered again. Then the stage goes on: new batches survive a crash
// once synced.
func TestStageCrashPoints(t *testing.T) {
	seed := testSeed(t)
	ops := newWorkload(seed, 48)
	opts := func(fsys *blockdev.MemFS) StageOptions {
		o := testOptions(fsys)
		o.SegmentBytes = 3 * oneBlockRecord
		return o
	}

	fsys := blockdev.NewMemFS()
	s := mustOpen(t, opts(fsys))
	if r := runWorkload(s, ops); r.err != nil {
		t.Fatalf("workload without crash: %v", r.err)
	}
	segs := len(segmentFiles(t, fsys))
	must(t, s.Close())
	total := fsys.MutatingOps()
	t.Logf("%d steps, %d mutating operations, %d segments at the end", len(ops), total, segs)

	for _, mode := range crashModes {
		recoveryPoints := 0
		for k := 0; k <= total; k++ {
			rng := rand.New(rand.NewPCG(seed, uint64(k)))
			where := fmt.Sprintf("%s at operation %d", mode.name, k)
			fsys := blockdev.NewMemFS()
			fsys.FailAfter(k)
			var r workResult
			s, err := OpenStage(stageDir, opts(fsys))
			if err == nil {
				r = runWorkload(s, ops)
				err = r.err
				s.Close()
			}
			switch {
			case k < total && !errors.Is(err, blockdev.ErrCrashed):
				t.Fatalf("%s: workload returned %v, want a simulated crash", where, err)
			case k == total && err != nil:
				t.Fatalf("%s: %v", where, err)
			}
			mode.crash(fsys, rng)
			post := fsys.Clone()

			for j := 0; ; j++ {
				f := post.Clone()
				f.FailAfter(j)
				s, err := OpenStage(stageDir, opts(f))
				if err == nil {
					s.Close()
					break
				}
				if !errors.Is(err, blockdev.ErrCrashed) {
					t.Fatalf("%s, recovery crash at %d: %v", where, j, err)
				}
				recoveryPoints++
				mode.crash(f, rand.New(rand.NewPCG(seed, uint64(k)<<32|uint64(j))))
				s, err = OpenStage(stageDir, opts(f))
				if err != nil {
					t.Fatalf("%s, recovery crash at %d: reopen: %v", where, j, err)
				}
				checkRecoveredAt(t, s, r, fmt.Sprintf("%s, recovery crash at %d", where, j))
				s.Close()
			}

			s, err = OpenStage(stageDir, opts(post))
			if err != nil {
				t.Fatalf("%s: reopen: %v", where, err)
			}
			checkRecoveredAt(t, s, r, where)

			// The stage goes on after the recovered prefix.
			const base = 1 << 20
			more := []*wire.CommittedBatch{makeBatch(base, 3), makeBatch(base+5, 4, 5)}
			for _, b := range more {
				if err := s.Append([]*wire.CommittedBatch{b}); err != nil {
					t.Fatalf("%s: append after recovery: %v", where, err)
				}
			}
			if err := errors.Join(s.MarkFetched(base+7), s.Sync()); err != nil {
				t.Fatalf("%s: sync after recovery: %v", where, err)
			}
			s.Close()
			mode.crash(post, rng)
			s, err = OpenStage(stageDir, opts(post))
			if err != nil {
				t.Fatalf("%s: second reopen: %v", where, err)
			}
			if d := s.Durable(); d != base+7 {
				t.Fatalf("%s: second reopen: Durable %d, want %d", where, d, base+7)
			}
			got, err := collect(s, base-1, base+7)
			if d := sameBatches(got, more); err != nil || d != "" {
				t.Fatalf("%s: second reopen: Batches: %v %s", where, err, d)
			}
			s.Close()
		}
		t.Logf("%s: %d workload crash points, %d recovery crash points", mode.name, total+1, recoveryPoints)
	}
}

// checkRecoveredAt is checkRecovered, saying where the crash was on failure.
func checkRecoveredAt(t *testing.T, s *Stage, r workResult, where string) {
	t.Helper()
	defer func() {
		if t.Failed() {
			t.Logf("crash: %s (run ended with %v)", where, r.err)
		}
	}()
	checkRecovered(t, s, r)
}

// corruptionImage builds a synced stage of three segments: batches 1, 3 |
// 5, 7 | 9, 11, then a watermark of 50, each step synced. It returns the FS
// and, per segment, the offsets of its records (and the end).
func corruptionImage(t testing.TB) (*blockdev.MemFS, StageOptions, []*wire.CommittedBatch, [][]int64) {
	fsys := blockdev.NewMemFS()
	opts := testOptions(fsys)
	opts.SegmentBytes = segHeaderSize + 2*oneBlockRecord + recordSize(0)
	s := mustOpen(t, opts)
	var all []*wire.CommittedBatch
	for seq := uint64(1); seq <= 11; seq += 2 {
		b := makeBatch(seq, seq%testBlocks)
		all = append(all, b)
		must(t, s.Append([]*wire.CommittedBatch{b}))
		must(t, s.Sync())
	}
	must(t, s.MarkFetched(50))
	must(t, s.Sync())
	var offsets [][]int64
	for _, seg := range s.segs {
		var offs []int64
		for _, e := range seg.entries {
			offs = append(offs, e.off)
		}
		offsets = append(offsets, offs)
	}
	if len(offsets) != 3 {
		t.Fatalf("%d segments, want 3", len(offsets))
	}
	// The watermark record ends the last segment.
	last := &offsets[2]
	*last = append(*last, s.curSize-recordSize(0), s.curSize)
	for i := range 2 {
		offsets[i] = append(offsets[i], int64(len(readMemFile(t, fsys, segPath(uint64(i+1))))))
	}
	must(t, s.Close())
	return fsys, opts, all, offsets
}

// TestStageCorruption flips bytes at many offsets of the segments of a
// synced stage: every flip in a header or in a record that a later record
// says was synced makes OpenStage fail with ErrCorrupt naming the file.
// Only a flip in the very last record (nothing after it proves it was
// synced) is taken for a torn tail and cut off.
func TestStageCorruption(t *testing.T) {
	img, opts, all, offsets := corruptionImage(t)
	flips, tails := 0, 0
	for i, offs := range offsets {
		name := segPath(uint64(i + 1))
		data := readMemFile(t, img, name)
		var at []int64
		for off := int64(0); off < int64(len(data)); off++ {
			inRecordHeader := false
			for _, o := range offs {
				if off >= o && off < o+recHeaderSize+8 || off >= o-recTrailerSize && off < o {
					inRecordHeader = true
				}
			}
			if off < segHeaderSize || inRecordHeader || off%59 == 0 {
				at = append(at, off)
			}
		}
		lastRecord := offs[len(offs)-2]
		for _, off := range at {
			fsys := img.Clone()
			d := bytes.Clone(data)
			d[off] ^= 1 << (off % 8)
			writeMemFile(t, fsys, name, d)
			opts.FS = fsys
			s, err := OpenStage(stageDir, opts)
			if i == len(offsets)-1 && off >= lastRecord {
				// The watermark record: a torn tail.
				if err != nil {
					t.Fatalf("flip at %s offset %d (last record): %v", name, off, err)
				}
				checkWatermarks(t, s, 11, 11, 11)
				checkBatches(t, s, 0, 11, all)
				s.Close()
				tails++
				continue
			}
			if err == nil {
				s.Close()
				t.Fatalf("flip at %s offset %d: OpenStage succeeded", name, off)
			}
			if !errors.Is(err, blockdev.ErrCorrupt) || !strings.Contains(err.Error(), name) {
				t.Fatalf("flip at %s offset %d: %v, want ErrCorrupt naming the file", name, off, err)
			}
			flips++
		}
	}
	t.Logf("%d flips refused, %d flips taken for a torn tail", flips, tails)
}

// TestStageCorruptReadBack damages a segment under an open stage: Batches
// checks what it reads and yields ErrCorrupt naming the file and offset.
func TestStageCorruptReadBack(t *testing.T) {
	img, opts, all, offsets := corruptionImage(t)
	opts.FS = img
	s := mustOpen(t, opts)
	defer s.Close()
	name := segPath(2)
	data := readMemFile(t, img, name)
	data[offsets[1][1]+200] ^= 4 // in batch 7
	writeMemFile(t, img, name, data)
	got, err := collect(s, 0, 50)
	want := fmt.Sprintf("segment %q offset %d", name, offsets[1][1])
	if !errors.Is(err, blockdev.ErrCorrupt) || !strings.Contains(err.Error(), want) {
		t.Fatalf("Batches over a damaged record = %v, want ErrCorrupt naming %s", err, want)
	}
	if d := sameBatches(got, all[:3]); d != "" {
		t.Fatalf("before the damaged record: %s", d)
	}
}

// rewriteRecord edits the record at off of data, then makes its checksums
// match again.
func rewriteRecord(data []byte, off int64, edit func(rec []byte)) {
	rec := data[off:]
	edit(rec)
	binary.LittleEndian.PutUint32(rec[28:], crc32.Checksum(rec[:28], castagnoli))
	length := int64(binary.LittleEndian.Uint32(rec[24:]))
	if n := recHeaderSize + length; n+recTrailerSize <= int64(len(rec)) {
		binary.LittleEndian.PutUint32(rec[n:], crc32.Checksum(rec[:n], castagnoli))
	}
}

// TestStageCorruptStructure checks damage that passes the checksums: intact
// records and headers that break the rules of the format.
func TestStageCorruptStructure(t *testing.T) {
	encoded := func(b *wire.CommittedBatch) []byte {
		p, err := proto.MarshalOptions{Deterministic: true}.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	badCRC := makeBatch(60, 1)
	badCRC.Batch.Blocks[0].Data[9] ^= 1
	otherVolume := makeBatch(60, 1)
	otherVolume.Batch.Volume = "vol-b"
	wire.Seal(otherVolume.Batch)

	cases := []struct {
		name   string
		damage func(t *testing.T, fsys *blockdev.MemFS, offsets [][]int64)
		want   string // in the error
	}{
		{"missing middle segment", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			must(t, fsys.Remove("test", segPath(2)))
		}, "missing"},
		{"segment renamed", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			must(t, fsys.Rename("test", segPath(1), segPath(9)))
			must(t, fsys.Rename("test", segPath(2), segPath(10)))
			must(t, fsys.Rename("test", segPath(3), segPath(11)))
		}, "header says segment 1"},
		{"huge length", func(t *testing.T, fsys *blockdev.MemFS, offsets [][]int64) {
			editSegment(t, fsys, 3, func(d []byte) {
				rewriteRecord(d, offsets[2][0], func(rec []byte) { binary.LittleEndian.PutUint32(rec[24:], 1<<30) })
			})
		}, "more than"},
		{"length past the end of a full segment", func(t *testing.T, fsys *blockdev.MemFS, offsets [][]int64) {
			editSegment(t, fsys, 1, func(d []byte) {
				rewriteRecord(d, offsets[0][1], func(rec []byte) { binary.LittleEndian.PutUint32(rec[24:], 1<<20) })
			})
		}, "torn record"},
		{"seq backwards", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			appendToSegment(t, fsys, 3, kindBatch, 10, -1, encoded(makeBatch(10, 1)))
		}, "batch seq 10 after seq 11"},
		{"seq under watermark", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			appendToSegment(t, fsys, 3, kindBatch, 13, -1, encoded(makeBatch(13, 1)))
		}, "batch seq 13 after seq 11 with watermark 50"},
		{"watermark backwards", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			appendToSegment(t, fsys, 3, kindWatermark, 40, -1, nil)
		}, "watermark 40"},
		{"record seq differs from batch", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			appendToSegment(t, fsys, 3, kindBatch, 60, -1, encoded(makeBatch(61, 1)))
		}, "holds batch seq 61"},
		{"batch crc", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			appendToSegment(t, fsys, 3, kindBatch, 60, -1, encoded(badCRC))
		}, "checksum mismatch"},
		{"batch of another volume", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			appendToSegment(t, fsys, 3, kindBatch, 60, -1, encoded(otherVolume))
		}, `for volume "vol-b"`},
		{"undecodable batch", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			appendToSegment(t, fsys, 3, kindBatch, 60, -1, []byte{0xff, 0xff, 0xff})
		}, "batch record seq 60"},
		{"unknown kind", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			appendToSegment(t, fsys, 3, 7, 60, -1, []byte{1})
		}, "unknown kind 7"},
		{"claim beyond itself", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			appendToSegment(t, fsys, 3, kindWatermark, 60, 1<<40, nil)
		}, "were synced"},
		{"segment base differs", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			editSegment(t, fsys, 2, func(d []byte) {
				binary.LittleEndian.PutUint64(d[24:], 2)
				binary.LittleEndian.PutUint32(d[segHeaderCRCOff:], crc32.Checksum(d[:segHeaderCRCOff], castagnoli))
			})
		}, "starts after seq 2"},
		{"bad magic", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			editSegment(t, fsys, 1, func(d []byte) { d[0] = 'X' })
		}, "bad magic"},
		{"version", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			editSegment(t, fsys, 3, func(d []byte) {
				binary.LittleEndian.PutUint32(d[8:], 2)
				binary.LittleEndian.PutUint32(d[segHeaderCRCOff:], crc32.Checksum(d[:segHeaderCRCOff], castagnoli))
			})
		}, "version 2"},
		{"torn header of a full segment", func(t *testing.T, fsys *blockdev.MemFS, _ [][]int64) {
			editSegment(t, fsys, 3, func(d []byte) { clear(d[60:segHeaderSize]) })
		}, "checksum mismatch"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			img, opts, _, offsets := corruptionImage(t)
			c.damage(t, img, offsets)
			opts.FS = img
			s, err := OpenStage(stageDir, opts)
			if err == nil {
				s.Close()
				t.Fatal("OpenStage succeeded")
			}
			if !errors.Is(err, blockdev.ErrCorrupt) || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), stageDir) {
				t.Fatalf("OpenStage = %v, want ErrCorrupt and %q", err, c.want)
			}
			t.Log(err)
		})
	}

	// A stage of another volume in the directory.
	img, opts, _, _ := corruptionImage(t)
	opts.FS, opts.Volume = img, "vol-b"
	if s, err := OpenStage(stageDir, opts); !errors.Is(err, blockdev.ErrCorrupt) || !strings.Contains(err.Error(), `segment of volume "vol-a"`) {
		if err == nil {
			s.Close()
		}
		t.Fatalf("OpenStage of another volume's directory = %v, want ErrCorrupt", err)
	}
}

func editSegment(t testing.TB, fsys blockdev.FS, n uint64, edit func(d []byte)) {
	t.Helper()
	d := readMemFile(t, fsys, segPath(n))
	edit(d)
	writeMemFile(t, fsys, segPath(n), d)
}

// appendToSegment appends a record to segment n, intact, saying that the
// segment was synced up to it (or up to synced, if not negative).
func appendToSegment(t testing.TB, fsys blockdev.FS, n uint64, kind uint8, seq uint64, synced int64, payload []byte) {
	t.Helper()
	d := readMemFile(t, fsys, segPath(n))
	if synced < 0 {
		synced = int64(len(d))
	}
	writeMemFile(t, fsys, segPath(n), appendRecord(d, kind, seq, synced, payload))
}

// TestStageTornTail checks that what a crash can leave at the end of the
// last segment (a cut or zeroed record, junk past the records, a segment
// file without a whole header) is cut off with a log line, and the stage
// goes on.
func TestStageTornTail(t *testing.T) {
	b1, b3, b5 := makeBatch(1, 1), makeBatch(3, 2), makeBatch(5, 3, 4)
	// One segment: b1, b3 synced, b5 not. end[i] is the end of record i.
	build := func(t *testing.T) (*blockdev.MemFS, []int64) {
		fsys := blockdev.NewMemFS()
		s := mustOpen(t, testOptions(fsys))
		var ends []int64
		for i, b := range []*wire.CommittedBatch{b1, b3, b5} {
			must(t, s.Append([]*wire.CommittedBatch{b}))
			if i < 2 {
				must(t, s.Sync())
			}
			ends = append(ends, s.curSize)
		}
		must(t, s.Close())
		return fsys, ends
	}
	junk := bytes.Repeat([]byte("junk"), 3000)
	cases := []struct {
		name     string
		damage   func(t *testing.T, fsys *blockdev.MemFS, ends []int64)
		want     []*wire.CommittedBatch
		wantSize int64 // index into ends of the expected size, or -1: header only
		log      string
	}{
		{"cut record", func(t *testing.T, fsys *blockdev.MemFS, ends []int64) {
			editSegmentTo(t, fsys, 1, func(d []byte) []byte { return d[:ends[1]+5000] })
		}, []*wire.CommittedBatch{b1, b3}, 1, "discarding torn stage tail"},
		{"cut record header", func(t *testing.T, fsys *blockdev.MemFS, ends []int64) {
			editSegmentTo(t, fsys, 1, func(d []byte) []byte { return d[:ends[1]+20] })
		}, []*wire.CommittedBatch{b1, b3}, 1, "torn record header"},
		{"zeroed record", func(t *testing.T, fsys *blockdev.MemFS, ends []int64) {
			editSegment(t, fsys, 1, func(d []byte) { clear(d[ends[1]:]) })
		}, []*wire.CommittedBatch{b1, b3}, 1, "bad record header"},
		{"zeroed first page of a record", func(t *testing.T, fsys *blockdev.MemFS, ends []int64) {
			editSegment(t, fsys, 1, func(d []byte) { clear(d[ends[1] : ends[1]+1000]) })
		}, []*wire.CommittedBatch{b1, b3}, 1, "bad record header"},
		{"zeroed last page of a record", func(t *testing.T, fsys *blockdev.MemFS, ends []int64) {
			editSegment(t, fsys, 1, func(d []byte) { clear(d[ends[2]-1000:]) })
		}, []*wire.CommittedBatch{b1, b3}, 1, "record checksum mismatch"},
		{"zeros past the end", func(t *testing.T, fsys *blockdev.MemFS, ends []int64) {
			editSegmentTo(t, fsys, 1, func(d []byte) []byte { return append(d, make([]byte, 8192)...) })
		}, []*wire.CommittedBatch{b1, b3, b5}, 2, "bad record header"},
		{"junk past the end", func(t *testing.T, fsys *blockdev.MemFS, ends []int64) {
			editSegmentTo(t, fsys, 1, func(d []byte) []byte { return append(d, junk...) })
		}, []*wire.CommittedBatch{b1, b3, b5}, 2, "bad record header"},
		{"empty new segment", func(t *testing.T, fsys *blockdev.MemFS, ends []int64) {
			writeMemFile(t, fsys, segPath(2), nil)
		}, []*wire.CommittedBatch{b1, b3, b5}, 2, "removed torn segment"},
		{"torn header of a new segment", func(t *testing.T, fsys *blockdev.MemFS, ends []int64) {
			h := segHeader{number: 2, base: 5, watermark: 5, volume: testVolume}.encode()
			clear(h[70:])
			writeMemFile(t, fsys, segPath(2), h)
		}, []*wire.CommittedBatch{b1, b3, b5}, 2, "removed torn segment"},
		{"half a header of a new segment", func(t *testing.T, fsys *blockdev.MemFS, ends []int64) {
			h := segHeader{number: 2, base: 5, watermark: 5, volume: testVolume}.encode()
			writeMemFile(t, fsys, segPath(2), h[:64])
		}, []*wire.CommittedBatch{b1, b3, b5}, 2, "removed torn segment"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fsys, ends := build(t)
			c.damage(t, fsys, ends)
			var logs logBuffer
			opts := testOptions(fsys)
			opts.Logger = logs.logger()
			s := mustOpen(t, opts)
			if !strings.Contains(logs.String(), c.log) {
				t.Errorf("logs %q, want %q", logs.String(), c.log)
			}
			last := c.want[len(c.want)-1].GetSeq()
			checkWatermarks(t, s, last, last, last)
			checkBatches(t, s, 0, last, c.want)
			if got := segmentFiles(t, fsys); len(got) != 1 {
				t.Errorf("segments %v, want one", got)
			}
			if size := int64(len(readMemFile(t, fsys, segPath(1)))); size != ends[c.wantSize] {
				t.Errorf("segment of %d bytes after recovery, want %d", size, ends[c.wantSize])
			}
			// The stage goes on; the tail is gone for good.
			b9 := makeBatch(9, 9)
			must(t, s.Append([]*wire.CommittedBatch{b9}))
			must(t, s.Sync())
			must(t, s.Close())
			logs = logBuffer{}
			opts.Logger = logs.logger()
			s = mustOpen(t, opts)
			defer s.Close()
			if strings.Contains(logs.String(), "torn") {
				t.Errorf("second recovery logged %q", logs.String())
			}
			checkBatches(t, s, 0, 9, append(slices.Clone(c.want), b9))
		})
	}
}

func editSegmentTo(t testing.TB, fsys blockdev.FS, n uint64, edit func(d []byte) []byte) {
	t.Helper()
	writeMemFile(t, fsys, segPath(n), edit(readMemFile(t, fsys, segPath(n))))
}

// TestStageFailStop checks that an I/O error fails the stage: it refuses
// appends until reopened, keeps serving what is durable, and recovers.
func TestStageFailStop(t *testing.T) {
	fsys := blockdev.NewMemFS()
	opts := testOptions(fsys)
	s := mustOpen(t, opts)
	b1 := makeBatch(1, 1)
	must(t, s.Append([]*wire.CommittedBatch{b1}))
	must(t, s.Sync())
	fsys.FailAfter(0)
	if err := s.Append([]*wire.CommittedBatch{makeBatch(2, 1)}); !errors.Is(err, ErrStageFailed) || !errors.Is(err, blockdev.ErrCrashed) {
		t.Fatalf("Append with a failing FS = %v, want ErrStageFailed", err)
	}
	fsys.Crash()
	for name, err := range map[string]error{
		"Append":      s.Append([]*wire.CommittedBatch{makeBatch(3, 1)}),
		"MarkFetched": s.MarkFetched(4),
		"Sync":        s.Sync(),
		"Trim":        s.Trim(1),
	} {
		if !errors.Is(err, ErrStageFailed) {
			t.Errorf("%s after a failure = %v, want ErrStageFailed", name, err)
		}
	}
	checkWatermarks(t, s, 1, 1, 1)
	must(t, s.Close())
	s = mustOpen(t, opts)
	defer s.Close()
	checkWatermarks(t, s, 1, 1, 1)
	checkBatches(t, s, 0, 1, []*wire.CommittedBatch{b1})
}

// TestStageConcurrentApplier runs a fetcher (Append, MarkFetched, Sync,
// Trim) and an applier (Batches up to Durable) on one stage at once, over
// tiny segments: the applier sees every batch once, in order, intact.
func TestStageConcurrentApplier(t *testing.T) {
	seed := testSeed(t)
	fsys := blockdev.NewMemFS()
	opts := testOptions(fsys)
	opts.SegmentBytes = 3 * oneBlockRecord
	s := mustOpen(t, opts)
	defer s.Close()

	const n = 300
	rng := rand.New(rand.NewPCG(seed, 0))
	var want []*wire.CommittedBatch
	seq := uint64(0)
	for range n {
		seq += 1 + uint64(rng.IntN(3))
		want = append(want, makeBatch(seq, uint64(rng.IntN(testBlocks))))
	}
	final := seq + 2

	var applied atomic.Uint64
	done := make(chan error, 1)
	go func() {
		var got []*wire.CommittedBatch
		after := uint64(0)
		for after < final {
			d := s.Durable()
			if d == after {
				time.Sleep(20 * time.Microsecond)
				continue
			}
			for b, err := range s.Batches(after, d) {
				if err != nil {
					done <- err
					return
				}
				got = append(got, b)
			}
			after = d
			applied.Store(after)
		}
		if diff := sameBatches(got, want); diff != "" {
			done <- errors.New(diff)
			return
		}
		done <- nil
	}()

	for i := 0; i < n; {
		k := min(1+rng.IntN(4), n-i)
		must(t, s.Append(want[i:i+k]))
		i += k
		if rng.IntN(3) == 0 {
			must(t, s.Sync())
		}
		if rng.IntN(4) == 0 {
			must(t, s.Trim(applied.Load()))
		}
	}
	must(t, s.MarkFetched(final))
	must(t, s.Sync())
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("applier did not finish")
	}
	must(t, s.Trim(final))
	if got := segmentFiles(t, fsys); len(got) != 1 {
		t.Fatalf("segments after trimming everything: %v", got)
	}
}

// TestStageWatermarkOnlyRotates checks that watermarks alone do not grow a
// segment past its size: Sync then starts a new segment whose header
// records the watermark, and Trim drops the old ones.
func TestStageWatermarkOnlyRotates(t *testing.T) {
	fsys := blockdev.NewMemFS()
	opts := testOptions(fsys)
	opts.SegmentBytes = segHeaderSize + 10*recordSize(0)
	s := mustOpen(t, opts)
	b1 := makeBatch(1, 1)
	must(t, s.Append([]*wire.CommittedBatch{b1}))
	for w := uint64(2); w <= 100; w++ {
		must(t, s.MarkFetched(w))
		must(t, s.Sync())
		if d := s.Durable(); d != w {
			t.Fatalf("Durable %d after a Sync of watermark %d", d, w)
		}
	}
	checkWatermarks(t, s, 1, 100, 100)
	if got := len(segmentFiles(t, fsys)); got < 9 || got > 12 {
		t.Fatalf("%d segments for 100 watermarks, 10 to a segment", got)
	}
	for n := range uint64(len(segmentFiles(t, fsys))) {
		if size := len(readMemFile(t, fsys, segPath(n+1))); int64(size) > opts.SegmentBytes+oneBlockRecord {
			t.Fatalf("segment %d has %d bytes", n+1, size)
		}
	}
	must(t, s.Close())
	s = mustOpen(t, opts)
	checkWatermarks(t, s, 1, 100, 100)
	checkBatches(t, s, 0, 100, []*wire.CommittedBatch{b1})
	must(t, s.Trim(100))
	if got := segmentFiles(t, fsys); len(got) != 1 {
		t.Fatalf("segments after Trim: %v", got)
	}
	must(t, s.Close())
	s = mustOpen(t, opts)
	defer s.Close()
	checkWatermarks(t, s, 1, 100, 100)
	checkBatches(t, s, 1, 100, nil)
}

// TestStageReopenAfterProcessCrash closes a stage with unsynced appends (a
// process crash: the page cache keeps them), reopens it, appends again and
// then loses power: whatever survives opens cleanly, with the batches that
// recovery found, since recovery made them durable before appending after
// them.
func TestStageReopenAfterProcessCrash(t *testing.T) {
	seed := testSeed(t)
	for i := range uint64(50) {
		fsys := blockdev.NewMemFS()
		opts := testOptions(fsys)
		s := mustOpen(t, opts)
		b1, b2, b3 := makeBatch(1, 1), makeBatch(2, 2), makeBatch(3, 3)
		must(t, s.Append([]*wire.CommittedBatch{b1, b2}))
		must(t, s.Close())
		s = mustOpen(t, opts)
		checkWatermarks(t, s, 2, 2, 2)
		must(t, s.Append([]*wire.CommittedBatch{b3}))
		must(t, s.Close())
		fsys.CrashRandom(rand.New(rand.NewPCG(seed, i)))
		s, err := OpenStage(stageDir, opts)
		if err != nil {
			t.Fatalf("crash %d: %v", i, err)
		}
		want := []*wire.CommittedBatch{b1, b2, b3}[:s.Last()]
		if s.Last() < 2 {
			t.Fatalf("crash %d: Last %d, but batches up to 2 were made durable by the reopen", i, s.Last())
		}
		checkBatches(t, s, 0, s.Durable(), want)
		must(t, s.Close())
	}
}

// TestStageSteps: Steps cuts a range into steps of at most maxBytes of
// records, each of at least one batch, ending at the range's end.
func TestStageSteps(t *testing.T) {
	s := mustOpen(t, testOptions(blockdev.NewMemFS()))
	must(t, s.Append([]*wire.CommittedBatch{makeBatch(2, 0), makeBatch(4, 1, 2), makeBatch(5, 3), makeBatch(9, 4)}))
	must(t, s.MarkFetched(12))
	must(t, s.Sync())
	one := oneBlockRecord
	for _, tc := range []struct {
		after, upTo uint64
		max         int64
		want        []uint64
	}{
		{0, 12, 1 << 30, []uint64{12}},
		{0, 12, one, []uint64{2, 4, 5, 12}}, // the 2-block batch alone exceeds one
		{2, 9, 3 * one, []uint64{5, 9}},
		{9, 12, one, []uint64{12}},
		{12, 12, one, nil},
		{0, 3, 1, []uint64{3}},
	} {
		if got := s.Steps(tc.after, tc.upTo, tc.max); !slices.Equal(got, tc.want) {
			t.Errorf("Steps(%d, %d, %d) = %v, want %v", tc.after, tc.upTo, tc.max, got, tc.want)
		}
	}
}
