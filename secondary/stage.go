package secondary

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"iter"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// DefaultSegmentBytes is the segment size past which a Stage starts a new
// segment when StageOptions.SegmentBytes is zero.
const DefaultSegmentBytes = 64 << 20

// Labels that a Stage passes to its FS, so that a test can single out, say,
// the third Sync of a segment.
const (
	// LabelStageDir labels operations on the stage directory itself.
	LabelStageDir = "stage dir"
	// LabelStageSegment labels operations on segment files.
	LabelStageSegment = "stage segment"
	// LabelStageLock labels the lock of the stage directory.
	LabelStageLock = "stage lock"
)

// Errors of a Stage, besides the wire errors that Append's refusals wrap
// (wire.ErrBadRequest, wire.ErrBadCRC) and blockdev.ErrCorrupt for damaged
// segment files.
var (
	// ErrStageClosed is returned by every method of a closed Stage.
	ErrStageClosed = errors.New("stage closed")
	// ErrStageFailed is returned by Append, MarkFetched, Sync and Trim after
	// an I/O error made the Stage fail (fail-stop); reopening recovers it.
	ErrStageFailed = errors.New("stage failed")
	// ErrStageFull is returned by Append and Sync when a write found the
	// stage's filesystem full (ENOSPC, EDQUOT, a short write). Unlike
	// other I/O errors it leaves the Stage usable, as it was before the
	// call (or with a prefix of the batches appended): the caller may try
	// again once space was freed. An fsync that fails is never this.
	ErrStageFull = errors.New("stage full: no space left for staged batches")
	// ErrTrimmed is what Batches yields for a range that starts below
	// Trimmed(): those batches may have been dropped.
	ErrTrimmed = errors.New("staged batches trimmed")
	// ErrNotDurable is what Batches yields, and Trim returns, for a range
	// that ends above Durable().
	ErrNotDurable = errors.New("batches not durably staged")
)

// StageOptions configure OpenStage.
type StageOptions struct {
	// FS is the file system the stage lives on; nil means blockdev.OSFS.
	FS blockdev.FS
	// Volume is the name of the volume the stage holds batches of. Every
	// appended batch, and every segment and batch read back, must be for it.
	Volume string
	// BlockCount is the number of blocks of the volume; every block of
	// every batch must lie below it. It must not be zero.
	BlockCount uint64
	// SegmentBytes is the segment size past which Append starts a new
	// segment; 0 means DefaultSegmentBytes. A segment holds at least one
	// batch, whatever its size.
	SegmentBytes int64
	// Logger receives the stage's logs; nil means slog.Default().
	Logger *slog.Logger
}

func (o StageOptions) withDefaults() (StageOptions, error) {
	if err := wire.CheckVolumeName(o.Volume); err != nil {
		return o, err
	}
	if o.BlockCount == 0 {
		return o, errors.New("block count is zero")
	}
	switch {
	case o.SegmentBytes == 0:
		o.SegmentBytes = DefaultSegmentBytes
	case o.SegmentBytes < 0:
		return o, fmt.Errorf("segment bytes %d is negative", o.SegmentBytes)
	}
	if o.FS == nil {
		o.FS = blockdev.OSFS{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// Stage is the durable staging area of one secondary volume: an append-only
// log of the volume's committed batches, in seq order, in segment files in a
// directory (the format is in the package documentation).
//
// The fetcher appends the batches it fetches (Append), records how far the
// fetch stream says the volume is complete (MarkFetched) and makes both
// durable (Sync) before the secondary answers PREPARED(N) for an N <=
// Durable(). The applier reads the batches back (Batches) at VALIDATE(N),
// and once the volume holds them the fetcher drops them (Trim).
//
// Concurrency: Append, MarkFetched, Sync, Trim and Close are meant for one
// goroutine (the fetcher) and are serialised by a mutex if called from more.
// Batches, Last, Fetched, Durable and Trimmed may run concurrently with them
// from any goroutine; Batches reads with file handles of its own and never
// waits for the fetcher's I/O. A Trim must not drop segments that a running
// Batches still has to read: the iteration then yields an error.
//
// After an I/O error in Append, Sync or Trim the Stage is failed: those
// methods and MarkFetched return an error wrapping ErrStageFailed until
// Close, while Batches keeps reading what is durable. Reopening recovers.
type Stage struct {
	fsys         blockdev.FS
	dir          string
	volume       string
	blockCount   uint64
	segmentBytes int64
	logger       *slog.Logger
	lock         io.Closer

	// mu serialises Append, MarkFetched, Sync, Trim and Close, and guards
	// the fields below.
	mu         sync.Mutex
	cur        blockdev.File // the last segment, open for writing
	curSize    int64         // offset of the next record in cur
	curSynced  int64         // bytes of cur known durable; records claim it
	dirty      bool          // cur was written since its last fsync
	markOnDisk uint64        // highest watermark in a record or segment header
	failed     error         // the error that failed the stage
	buf        []byte        // record encoding buffer

	// state guards the fields below. Only holders of mu write them, so
	// those read them without state.
	state   sync.Mutex
	segs    []segment // the segments in order; the last one is cur
	last    uint64    // seq of the last batch appended
	mark    uint64    // highest watermark given to MarkFetched or recovered
	durable uint64    // the fetched watermark as of the last Sync
	closed  bool
}

// segment is one segment file as the Stage knows it.
type segment struct {
	number  uint64
	path    string
	base    uint64   // every batch of the segment has a seq above base
	entries []recPos // its batch records, in seq order; only appended to
}

// recPos locates a batch record in its segment file.
type recPos struct {
	seq  uint64
	off  int64
	size int64
}

// maxKeptBuffer is the largest encoding buffer a Stage keeps for reuse.
const maxKeptBuffer = 4 << 20

// OpenStage opens the stage in dir, creating dir (durably) and an empty
// stage if there is none, and recovers it: it reads and checks every
// segment, cuts off a torn tail of the last one (what a crash leaves of
// unsynced appends) and makes what remains durable, so that Durable() is
// then the recovered watermark. Damage that a crash cannot explain gives an
// error wrapping blockdev.ErrCorrupt naming the file and the offset.
func OpenStage(dir string, opts StageOptions) (*Stage, error) {
	s, err := openStage(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open stage %q: %w", dir, err)
	}
	return s, nil
}

func openStage(dir string, opts StageOptions) (_ *Stage, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Stage{
		fsys:         opts.FS,
		dir:          dir,
		volume:       opts.Volume,
		blockCount:   opts.BlockCount,
		segmentBytes: opts.SegmentBytes,
		logger:       opts.Logger.With("stage", dir, "volume", opts.Volume),
	}
	if err := blockdev.MkdirAllDurable(s.fsys, LabelStageDir, dir); err != nil {
		return nil, err
	}
	if s.lock, err = s.fsys.Lock(LabelStageLock, filepath.Join(dir, stageLockName)); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.closeFiles()
		}
	}()
	if err := s.recover(); err != nil {
		return nil, err
	}
	s.durable = max(s.mark, s.last)
	s.logger.Info("opened stage", "segments", len(s.segs), "last_seq", s.last, "fetched", s.durable, "trimmed", s.segs[0].base)
	return s, nil
}

// segmentNumbers returns the numbers of the segment files of the stage
// directory, in order, checking that they follow each other.
func (s *Stage) segmentNumbers() ([]uint64, error) {
	names, err := s.fsys.ReadDir(LabelStageDir, s.dir)
	if err != nil {
		return nil, err
	}
	var numbers []uint64
	for _, name := range names {
		if n, ok := parseSegmentName(name); ok {
			numbers = append(numbers, n)
		}
	}
	slices.Sort(numbers)
	for i := 1; i < len(numbers); i++ {
		if numbers[i] != numbers[i-1]+1 {
			return nil, fmt.Errorf("segment %q is missing between %q and %q: %w",
				s.segmentPath(numbers[i-1]+1), s.segmentPath(numbers[i-1]), s.segmentPath(numbers[i]), blockdev.ErrCorrupt)
		}
	}
	return numbers, nil
}

// recovery is what recover has learnt so far.
type recovery struct {
	last uint64 // seq of the last batch read (or base of the first segment)
	mark uint64 // highest watermark read
}

func (r *recovery) fetched() uint64 { return max(r.mark, r.last) }

// recover reads every segment, sets the state of s from them and leaves
// the last segment open for appending and durable.
func (s *Stage) recover() error {
	numbers, err := s.segmentNumbers()
	if err != nil {
		return err
	}
	// A crash while a segment was being started can leave it without a
	// whole header; it holds nothing yet.
	if n := len(numbers); n > 0 {
		torn, err := s.tornSegment(numbers[n-1])
		if err != nil {
			return err
		}
		if torn {
			if n == 1 && numbers[0] != 1 {
				// Segments are dropped only once a later one is durable.
				return fmt.Errorf("segment %q, the only one, has no header: %w", s.segmentPath(numbers[0]), blockdev.ErrCorrupt)
			}
			if err := s.removeSegments(numbers[n-1:]); err != nil {
				return err
			}
			s.logger.Warn("removed torn segment", "segment", s.segmentPath(numbers[n-1]))
			numbers = numbers[:n-1]
		}
	}
	if len(numbers) == 0 {
		return s.startFirstSegment()
	}
	var r recovery
	for i, n := range numbers {
		if err := s.recoverSegment(&r, n, i == 0, i == len(numbers)-1); err != nil {
			return err
		}
	}
	s.last, s.mark, s.markOnDisk = r.last, r.mark, r.mark
	return nil
}

// tornSegment reports whether the segment file number, the last one, is what
// a crash leaves of a segment being started: no more than a header's bytes,
// and not a whole, intact header.
func (s *Stage) tornSegment(number uint64) (bool, error) {
	path := s.segmentPath(number)
	f, err := s.fsys.OpenFile(LabelStageSegment, path, os.O_RDONLY, 0)
	if err != nil {
		return false, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return false, fmt.Errorf("size of segment %q: %w", path, err)
	}
	if size < segHeaderSize {
		return true, nil
	}
	if size > segHeaderSize {
		return false, nil
	}
	b := make([]byte, segHeaderSize)
	if err := readFull(f, b, 0); err != nil {
		return false, fmt.Errorf("read segment %q: %w", path, err)
	}
	return !segHeaderIntact(b), nil
}

// removeSegments removes the segment files numbers, in order, then makes
// the removals durable.
func (s *Stage) removeSegments(numbers []uint64) error {
	for _, n := range numbers {
		if err := s.fsys.Remove(LabelStageSegment, s.segmentPath(n)); err != nil {
			return err
		}
	}
	if err := s.fsys.SyncDir(LabelStageDir, s.dir); err != nil {
		return fmt.Errorf("sync directory %q: %w", s.dir, err)
	}
	return nil
}

// startFirstSegment starts the stage with segment 1, empty.
func (s *Stage) startFirstSegment() error {
	h := segHeader{number: 1, volume: s.volume}
	f, err := s.createSegment(h)
	if err != nil {
		return err
	}
	s.setCurrent(f, h)
	return nil
}

// createSegment makes the segment file of header h, durably: it creates the
// file, writes the header, fsyncs the file and its directory. It returns the
// file open for writing. On an error it removes the file again, so that a
// later attempt (after ErrStageFull) can create it.
func (s *Stage) createSegment(h segHeader) (_ blockdev.File, err error) {
	path := s.segmentPath(h.number)
	f, err := s.fsys.OpenFile(LabelStageSegment, path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fullOr(err)
	}
	defer func() {
		if err != nil {
			f.Close()
			if rerr := s.fsys.Remove(LabelStageSegment, path); rerr != nil {
				s.logger.Warn("remove the segment that could not be created", "segment", path, "err", rerr)
			}
		}
	}()
	hdr := h.encode()
	if n, err := f.WriteAt(hdr, 0); err != nil || n != len(hdr) {
		if err == nil {
			err = io.ErrShortWrite
		}
		return nil, fullOr(fmt.Errorf("write header of segment %q: %w", path, err))
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("sync segment %q: %w", path, err)
	}
	if err := s.fsys.SyncDir(LabelStageDir, s.dir); err != nil {
		return nil, fmt.Errorf("sync directory %q: %w", s.dir, err)
	}
	return f, nil
}

// setCurrent makes f, just created with header h, the segment Append writes
// to, closing the previous one. The caller holds mu, or is OpenStage.
func (s *Stage) setCurrent(f blockdev.File, h segHeader) {
	if s.cur != nil {
		if err := s.cur.Close(); err != nil {
			s.logger.Warn("close segment", "err", err)
		}
	}
	s.cur, s.curSize, s.curSynced, s.dirty = f, segHeaderSize, segHeaderSize, false
	s.markOnDisk = max(s.markOnDisk, h.watermark)
	s.state.Lock()
	s.segs = append(s.segs, segment{number: h.number, path: s.segmentPath(h.number), base: h.base})
	s.state.Unlock()
}

// recoverSegment reads and checks segment number, adding it to s.segs and
// what it holds to r. The last segment has a torn tail cut off and stays
// open as the current segment, durable.
func (s *Stage) recoverSegment(r *recovery, number uint64, first, last bool) (err error) {
	path := s.segmentPath(number)
	flag := os.O_RDONLY
	if last {
		flag = os.O_RDWR
	}
	f, err := s.fsys.OpenFile(LabelStageSegment, path, flag, 0)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil || !last {
			f.Close()
		}
	}()
	size, err := f.Size()
	if err != nil {
		return fmt.Errorf("size of segment %q: %w", path, err)
	}
	hb := make([]byte, min(size, segHeaderSize))
	if err := readFull(f, hb, 0); err != nil {
		return fmt.Errorf("read segment %q: %w", path, err)
	}
	h, err := decodeSegHeader(hb)
	if err != nil {
		return fmt.Errorf("segment %q offset 0: %w", path, err)
	}
	switch {
	case h.number != number:
		return fmt.Errorf("segment %q offset 0: header says segment %d: %w", path, h.number, blockdev.ErrCorrupt)
	case h.volume != s.volume:
		return fmt.Errorf("segment %q offset 0: segment of volume %q, not %q: %w", path, h.volume, s.volume, blockdev.ErrCorrupt)
	case first:
		r.last = h.base
	case h.base != r.last || h.watermark < r.fetched():
		return fmt.Errorf("segment %q offset 0: starts after seq %d with watermark %d, but the segments before end at seq %d with watermark %d: %w",
			path, h.base, h.watermark, r.last, r.fetched(), blockdev.ErrCorrupt)
	}
	r.mark = max(r.mark, h.watermark)
	seg := segment{number: number, path: path, base: h.base}
	end, err := s.scanSegment(f, path, size, last, r, &seg)
	if err != nil {
		return err
	}
	s.segs = append(s.segs, seg)
	if !last {
		return nil
	}
	if end < size {
		if err := f.Truncate(end); err != nil {
			return fmt.Errorf("truncate segment %q to %d bytes: %w", path, end, err)
		}
	}
	// What was read may be in the page cache only (a process crash): it
	// must be durable before records claim it is. The directory entries of
	// the segments too.
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync segment %q: %w", path, err)
	}
	if err := s.fsys.SyncDir(LabelStageDir, s.dir); err != nil {
		return fmt.Errorf("sync directory %q: %w", s.dir, err)
	}
	s.cur, s.curSize, s.curSynced = f, end, end
	return nil
}

// scanSegment reads the records of a segment of size bytes, whose header
// was read, adding its batches to seg and what they say to r. It returns
// the offset where the valid records end: size, or for the last segment the
// start of a torn tail.
func (s *Stage) scanSegment(f blockdev.File, path string, size int64, last bool, r *recovery, seg *segment) (int64, error) {
	off := int64(segHeaderSize)
	claim := int64(segHeaderSize) // the header was durable before any record
	br := bufio.NewReaderSize(io.NewSectionReader(f, off, size-off), int(min(max(size-off, 16), 1<<20)))
	var buf []byte
	tail := func(reason string) (int64, error) {
		if !last {
			return 0, fmt.Errorf("segment %q offset %d: %s: %w", path, off, reason, blockdev.ErrCorrupt)
		}
		at, claimed, err := findSyncClaim(f, size, off)
		if err != nil {
			return 0, fmt.Errorf("read segment %q: %w", path, err)
		}
		if at >= 0 {
			return 0, fmt.Errorf("segment %q offset %d: %s, but the record at offset %d says the first %d bytes were synced: %w",
				path, off, reason, at, claimed, blockdev.ErrCorrupt)
		}
		s.logger.Warn("discarding torn stage tail", "segment", path, "offset", off, "bytes", size-off, "reason", reason)
		return off, nil
	}
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("segment %q offset %d: %s: %w", path, off, fmt.Sprintf(format, args...), blockdev.ErrCorrupt)
	}
	for off < size {
		if size-off < recHeaderSize {
			return tail("torn record header")
		}
		var hb [recHeaderSize]byte
		if _, err := io.ReadFull(br, hb[:]); err != nil {
			return 0, fmt.Errorf("read segment %q at offset %d: %w", path, off, err)
		}
		h, intact, err := decodeRecHeader(hb[:])
		if !intact {
			return tail("bad record header")
		}
		if err != nil {
			return 0, corrupt("%v", err)
		}
		if h.synced > off || h.synced < claim {
			return 0, corrupt("record says the first %d bytes were synced, after a record that said %d", h.synced, claim)
		}
		recSize := h.size()
		if recSize > size-off {
			return tail("torn record")
		}
		if cap(buf) < int(recSize) {
			buf = make([]byte, recSize)
		}
		buf = buf[:recSize]
		copy(buf, hb[:])
		if _, err := io.ReadFull(br, buf[recHeaderSize:]); err != nil {
			return 0, fmt.Errorf("read segment %q at offset %d: %w", path, off, err)
		}
		if !recordIntact(buf) {
			return tail("record checksum mismatch")
		}
		claim = h.synced
		switch h.kind {
		case kindBatch:
			if h.seq <= r.fetched() {
				return 0, corrupt("batch seq %d after seq %d with watermark %d", h.seq, r.last, r.mark)
			}
			if _, err := s.decodeBatch(h, buf); err != nil {
				return 0, corrupt("%v", err)
			}
			seg.entries = append(seg.entries, recPos{seq: h.seq, off: off, size: recSize})
			r.last = h.seq
		case kindWatermark:
			if h.seq <= r.fetched() {
				return 0, corrupt("watermark %d after seq %d with watermark %d", h.seq, r.last, r.mark)
			}
			r.mark = h.seq
		}
		off += recSize
	}
	return off, nil
}

// decodeBatch decodes the batch record rec, of header h and intact, and
// checks it against the stage's volume.
func (s *Stage) decodeBatch(h recHeader, rec []byte) (*wire.CommittedBatch, error) {
	cb := new(wire.CommittedBatch)
	if err := proto.Unmarshal(rec[recHeaderSize:len(rec)-recTrailerSize], cb); err != nil {
		return nil, fmt.Errorf("batch record seq %d: %v", h.seq, err)
	}
	if cb.GetSeq() != h.seq {
		return nil, fmt.Errorf("batch record seq %d holds batch seq %d", h.seq, cb.GetSeq())
	}
	if err := s.checkBatch(cb); err != nil {
		return nil, err
	}
	return cb, nil
}

// checkBatch checks a committed batch against the stage's volume: its name,
// its size, its blocks and its CRC.
func (s *Stage) checkBatch(cb *wire.CommittedBatch) error {
	if v := cb.GetBatch().GetVolume(); v != s.volume {
		return fmt.Errorf("%w: batch seq %d is for volume %q, not %q", wire.ErrBadRequest, cb.GetSeq(), v, s.volume)
	}
	if err := wire.CheckBatch(cb.GetBatch(), s.blockCount); err != nil {
		return fmt.Errorf("batch seq %d: %w", cb.GetSeq(), err)
	}
	return nil
}

// findSyncClaim looks, past offset from of a segment of size bytes where the
// valid records stop, for a record header that is intact and says that more
// than from bytes of the segment were synced when it was written. Such a
// record proves that the bytes at from were damaged after they were synced,
// not torn by a crash. The walk follows the lengths of intact headers, and
// scans for the next record magic past a damaged header or one whose record
// runs past the end of the file. It returns the offset of the claiming
// record and its claim, or -1.
func findSyncClaim(f io.ReaderAt, size, from int64) (int64, int64, error) {
	var hb [recHeaderSize]byte
	for pos := from; size-pos >= recHeaderSize; {
		if err := readFull(f, hb[:], pos); err != nil {
			return -1, 0, err
		}
		h, intact, err := decodeRecHeader(hb[:])
		if intact {
			if h.synced > from && h.synced <= pos {
				return pos, h.synced, nil
			}
			if err == nil && h.size() <= size-pos {
				pos += h.size()
				continue
			}
		}
		next, err := indexMagic(f, pos+1, size)
		if err != nil || next < 0 {
			return -1, 0, err
		}
		pos = next
	}
	return -1, 0, nil
}

// indexMagic returns the offset of the first record magic at or after from
// in the first size bytes of f, or -1.
func indexMagic(f io.ReaderAt, from, size int64) (int64, error) {
	const chunk = 64 << 10
	var magic [4]byte
	binary.LittleEndian.PutUint32(magic[:], recMagic)
	buf := make([]byte, min(chunk, max(size-from, 0)))
	for pos := from; size-pos >= int64(len(magic)); pos += int64(len(buf)) - int64(len(magic)) + 1 {
		n := min(int64(len(buf)), size-pos)
		if err := readFull(f, buf[:n], pos); err != nil {
			return -1, err
		}
		if i := bytes.Index(buf[:n], magic[:]); i >= 0 {
			return pos + int64(i), nil
		}
		if n < int64(len(buf)) {
			break
		}
	}
	return -1, nil
}

// Append appends batches, in seq order, to the stage. Each must be for the
// stage's volume and pass wire.CheckBatch (its CRC included) against the
// block count, and seqs must increase within the call. A batch with a seq
// at or below Last() is skipped (an idempotent re-fetch), after the same
// checks. A batch above Last() but at or below Fetched() contradicts the
// watermark and is refused. A refusal (an error wrapping wire.ErrBadRequest
// or wire.ErrBadCRC, naming the batch) appends nothing of the call.
//
// Append writes without fsync, except that it starts a new segment when the
// current one would grow past StageOptions.SegmentBytes: it then syncs the
// current one first (so Durable() may advance) and makes the new one
// durable. A crash keeps a prefix of the appended batches, at least every
// one that was durable.
func (s *Stage) Append(batches []*wire.CommittedBatch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(); err != nil {
		return fmt.Errorf("append to stage %q: %w", s.dir, err)
	}
	recs, err := s.prepare(batches)
	if err != nil {
		return fmt.Errorf("append to stage %q: %w", s.dir, err)
	}
	if len(recs) == 0 {
		return nil
	}
	if err := s.appendLocked(recs); err != nil {
		if errors.Is(err, ErrStageFull) {
			return fmt.Errorf("append to stage %q: %w", s.dir, err)
		}
		return fmt.Errorf("append to stage %q: %w", s.dir, s.fail(err))
	}
	return nil
}

// fullOr returns err wrapping ErrStageFull as well when it says that the
// filesystem is full.
func fullOr(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, io.ErrShortWrite) {
		return fmt.Errorf("%w: %w", ErrStageFull, err)
	}
	return err
}

// pendingBatch is a checked batch of an Append, encoded.
type pendingBatch struct {
	seq     uint64
	payload []byte
}

// prepare checks every batch of an Append and encodes those to append. The
// caller holds mu.
func (s *Stage) prepare(batches []*wire.CommittedBatch) ([]pendingBatch, error) {
	var recs []pendingBatch
	fetched := max(s.mark, s.last)
	var prev uint64
	for i, cb := range batches {
		if cb == nil {
			return nil, fmt.Errorf("%w: batch %d of %d is nil", wire.ErrBadRequest, i, len(batches))
		}
		seq := cb.GetSeq()
		switch {
		case seq == 0:
			return nil, fmt.Errorf("%w: batch %d of %d has seq 0", wire.ErrBadRequest, i, len(batches))
		case seq <= prev:
			return nil, fmt.Errorf("%w: batch seq %d after seq %d: seqs must increase", wire.ErrBadRequest, seq, prev)
		}
		prev = seq
		if err := s.checkBatch(cb); err != nil {
			return nil, err
		}
		if seq <= s.last {
			continue
		}
		if seq <= fetched {
			return nil, fmt.Errorf("%w: batch seq %d is new but at or below the fetched watermark %d", wire.ErrBadRequest, seq, fetched)
		}
		payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(cb)
		if err != nil {
			return nil, fmt.Errorf("encode batch seq %d: %w", seq, err)
		}
		if len(payload) > maxRecordPayload {
			return nil, fmt.Errorf("%w: batch seq %d encodes to %d bytes, more than %d", wire.ErrBadRequest, seq, len(payload), maxRecordPayload)
		}
		recs = append(recs, pendingBatch{seq: seq, payload: payload})
	}
	return recs, nil
}

// appendLocked writes the records of recs to the segments, starting new
// segments as needed, and adds them to the state. The caller holds mu.
func (s *Stage) appendLocked(recs []pendingBatch) error {
	s.buf = s.buf[:0]
	var pending []recPos
	flush := func() error {
		if len(s.buf) == 0 {
			return nil
		}
		n, err := s.cur.WriteAt(s.buf, s.curSize)
		if err == nil && n != len(s.buf) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return fullOr(fmt.Errorf("write segment %q at offset %d: %w", s.curPath(), s.curSize, err))
		}
		s.curSize += int64(n)
		s.dirty = true
		s.state.Lock()
		cur := &s.segs[len(s.segs)-1]
		cur.entries = append(cur.entries, pending...)
		s.last = pending[len(pending)-1].seq
		s.state.Unlock()
		s.buf, pending = s.buf[:0], pending[:0]
		return nil
	}
	for _, r := range recs {
		size := recordSize(len(r.payload))
		end := s.curSize + int64(len(s.buf))
		if end > segHeaderSize && end+size > s.segmentBytes {
			if err := flush(); err != nil {
				return err
			}
			if err := s.rotateLocked(); err != nil {
				return err
			}
			end = s.curSize
		}
		s.buf = appendRecord(s.buf, kindBatch, r.seq, s.curSynced, r.payload)
		pending = append(pending, recPos{seq: r.seq, off: end, size: size})
	}
	err := flush()
	if cap(s.buf) > maxKeptBuffer {
		s.buf = nil
	}
	return err
}

// rotateLocked fsyncs the current segment and starts the next one, whose
// header records Last() and Fetched(): everything is then durable. The
// caller holds mu.
func (s *Stage) rotateLocked() error {
	if err := s.fsyncLocked(); err != nil {
		return err
	}
	cur := s.segs[len(s.segs)-1]
	h := segHeader{number: cur.number + 1, base: s.last, watermark: max(s.mark, s.last), volume: s.volume}
	f, err := s.createSegment(h)
	if err != nil {
		return err
	}
	s.setCurrent(f, h)
	s.state.Lock()
	s.durable = h.watermark
	s.state.Unlock()
	s.logger.Debug("started segment", "segment", s.curPath(), "last_seq", h.base, "fetched", h.watermark)
	return nil
}

// fsyncLocked fsyncs the current segment if it was written since its last
// fsync. The caller holds mu.
func (s *Stage) fsyncLocked() error {
	if !s.dirty {
		return nil
	}
	if err := s.cur.Sync(); err != nil {
		return fmt.Errorf("sync segment %q: %w", s.curPath(), err)
	}
	s.dirty = false
	s.curSynced = s.curSize
	return nil
}

// MarkFetched records that every batch of the volume with a seq at or below
// seq has been appended (what the Fetch stream says of how far the group is
// committed). The watermark never goes back: a seq at or below Fetched() is
// ignored. The watermark is written at the next Sync.
func (s *Stage) MarkFetched(seq uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(); err != nil {
		return fmt.Errorf("mark stage %q fetched: %w", s.dir, err)
	}
	if seq > max(s.mark, s.last) {
		s.state.Lock()
		s.mark = seq
		s.state.Unlock()
	}
	return nil
}

// Sync makes every appended batch and the watermark durable: it writes the
// watermark if it moved past what is recorded (in a record, or in the header
// of a new segment if the current one is full), and fsyncs the current
// segment. Durable() is then Fetched() as of the call.
func (s *Stage) Sync() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(); err != nil {
		return fmt.Errorf("sync stage %q: %w", s.dir, err)
	}
	if err := s.syncLocked(); err != nil {
		if errors.Is(err, ErrStageFull) {
			return fmt.Errorf("sync stage %q: %w", s.dir, err)
		}
		return fmt.Errorf("sync stage %q: %w", s.dir, s.fail(err))
	}
	return nil
}

func (s *Stage) syncLocked() error {
	if s.mark > max(s.markOnDisk, s.last) {
		if s.curSize > segHeaderSize && s.curSize+recordSize(0) > s.segmentBytes {
			// The header of the next segment records the watermark: a
			// segment does not grow past its size by watermarks alone.
			return s.rotateLocked()
		}
		rec := appendRecord(nil, kindWatermark, s.mark, s.curSynced, nil)
		n, err := s.cur.WriteAt(rec, s.curSize)
		if err == nil && n != len(rec) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return fullOr(fmt.Errorf("write segment %q at offset %d: %w", s.curPath(), s.curSize, err))
		}
		s.curSize += int64(n)
		s.dirty = true
		s.markOnDisk = s.mark
	}
	if err := s.fsyncLocked(); err != nil {
		return err
	}
	s.state.Lock()
	s.durable = max(s.mark, s.last)
	s.state.Unlock()
	return nil
}

// Trim drops the segments whose batches all have a seq at or below upTo,
// which must not exceed Durable(): call it once the volume holds them.
// Trimmed() then tells below which seq batches may be missing. Last() and
// Fetched() survive, even a reopen after every batch was dropped: when the
// current segment goes too, Trim first starts a new one that records them.
func (s *Stage) Trim(upTo uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(); err != nil {
		return fmt.Errorf("trim stage %q: %w", s.dir, err)
	}
	if upTo > s.durable {
		return fmt.Errorf("trim stage %q up to seq %d: %w (durable up to %d)", s.dir, upTo, ErrNotDurable, s.durable)
	}
	if cur := s.segs[len(s.segs)-1]; len(cur.entries) > 0 && s.last <= upTo {
		if err := s.rotateLocked(); err != nil {
			return fmt.Errorf("trim stage %q: %w", s.dir, s.fail(err))
		}
	}
	k := 0
	for k < len(s.segs)-1 && s.segs[k+1].base <= upTo {
		k++
	}
	if k == 0 {
		return nil
	}
	dropped := make([]uint64, k)
	s.state.Lock()
	for i, seg := range s.segs[:k] {
		dropped[i] = seg.number
	}
	s.segs = slices.Clone(s.segs[k:])
	s.state.Unlock()
	if err := s.removeSegments(dropped); err != nil {
		return fmt.Errorf("trim stage %q: %w", s.dir, s.fail(err))
	}
	s.logger.Info("trimmed stage", "segments", k, "up_to", upTo, "trimmed", s.segs[0].base)
	return nil
}

// Last returns the seq of the last batch appended, 0 if none ever was.
func (s *Stage) Last() uint64 {
	s.state.Lock()
	defer s.state.Unlock()
	return s.last
}

// Fetched returns the watermark as appended and marked: every batch of the
// volume with a seq at or below it has been appended. It is at least
// Last().
func (s *Stage) Fetched() uint64 {
	s.state.Lock()
	defer s.state.Unlock()
	return max(s.mark, s.last)
}

// Durable returns the watermark as of the last successful Sync (or
// OpenStage): every batch of the volume with a seq at or below it is
// durably staged, so PREPARED(N) may be answered for every N <= Durable().
func (s *Stage) Durable() uint64 {
	s.state.Lock()
	defer s.state.Unlock()
	return s.durable
}

// Trimmed returns the seq at or below which Trim may have dropped batches:
// Batches refuses a range that starts below it.
func (s *Stage) Trimmed() uint64 {
	s.state.Lock()
	defer s.state.Unlock()
	return s.segs[0].base
}

// Batches returns the staged batches with after < seq <= upTo, in seq
// order, read back from disk and checked again (record checksum, batch CRC,
// volume, blocks). upTo must not exceed Durable() and after must not be
// below Trimmed(): such a range yields one error wrapping ErrNotDurable or
// ErrTrimmed. Damage yields an error wrapping blockdev.ErrCorrupt naming the
// file and offset. The iteration stops after the first error. An empty range
// (upTo <= after) yields nothing. Each batch yielded is new, the caller's to
// keep.
func (s *Stage) Batches(after, upTo uint64) iter.Seq2[*wire.CommittedBatch, error] {
	return func(yield func(*wire.CommittedBatch, error) bool) {
		if upTo <= after {
			return
		}
		s.state.Lock()
		closed, durable := s.closed, s.durable
		segs := slices.Clone(s.segs)
		s.state.Unlock()
		switch {
		case closed:
			yield(nil, fmt.Errorf("read stage %q: %w", s.dir, ErrStageClosed))
			return
		case upTo > durable:
			yield(nil, fmt.Errorf("read stage %q up to seq %d: %w (durable up to %d)", s.dir, upTo, ErrNotDurable, durable))
			return
		case after < segs[0].base:
			yield(nil, fmt.Errorf("read stage %q after seq %d: %w up to seq %d", s.dir, after, ErrTrimmed, segs[0].base))
			return
		}
		for _, seg := range segs {
			i := sort.Search(len(seg.entries), func(i int) bool { return seg.entries[i].seq > after })
			j := sort.Search(len(seg.entries), func(i int) bool { return seg.entries[i].seq > upTo })
			if i < j && !s.readBatches(seg.path, seg.entries[i:j], yield) {
				return
			}
		}
	}
}

// Steps splits the range after < seq <= upTo into steps of at most
// maxBytes of staged records each (a step holds at least one batch, whatever
// its size), and returns the seq each step ends at, in increasing order; the
// last is upTo. An empty range gives no step. The applier applies a long
// range (a restart after a long outage, a catch-up) step by step, so that a
// round never holds more than maxBytes in memory.
func (s *Stage) Steps(after, upTo uint64, maxBytes int64) []uint64 {
	if upTo <= after {
		return nil
	}
	s.state.Lock()
	segs := slices.Clone(s.segs)
	s.state.Unlock()
	var (
		steps []uint64
		size  int64
		last  uint64 // seq of the last batch counted in the current step
	)
	for _, seg := range segs {
		i := sort.Search(len(seg.entries), func(i int) bool { return seg.entries[i].seq > after })
		for _, e := range seg.entries[i:] {
			if e.seq > upTo {
				break
			}
			if size > 0 && size+e.size > maxBytes {
				steps = append(steps, last)
				size = 0
			}
			size += e.size
			last = e.seq
		}
	}
	return append(steps, upTo)
}

// readBatches reads the batch records at entries of the segment file path
// and yields their batches. It returns false if the iteration must stop.
func (s *Stage) readBatches(path string, entries []recPos, yield func(*wire.CommittedBatch, error) bool) bool {
	f, err := s.fsys.OpenFile(LabelStageSegment, path, os.O_RDONLY, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			err = fmt.Errorf("%w: %w", ErrTrimmed, err)
		}
		yield(nil, fmt.Errorf("read stage %q: %w", s.dir, err))
		return false
	}
	defer f.Close()
	var buf []byte
	for _, e := range entries {
		if cap(buf) < int(e.size) {
			buf = make([]byte, e.size)
		}
		buf = buf[:e.size]
		cb, err := s.readBatch(f, path, e, buf)
		if !yield(cb, err) || err != nil {
			return false
		}
	}
	return true
}

// readBatch reads and checks the batch record at e into buf.
func (s *Stage) readBatch(f blockdev.File, path string, e recPos, buf []byte) (*wire.CommittedBatch, error) {
	if err := readFull(f, buf, e.off); err != nil {
		return nil, fmt.Errorf("read segment %q at offset %d: %w", path, e.off, err)
	}
	h, intact, err := decodeRecHeader(buf)
	switch {
	case !intact || !recordIntact(buf):
		err = errors.New("record checksum mismatch")
	case err != nil:
	case h.kind != kindBatch || h.seq != e.seq || h.size() != e.size:
		err = fmt.Errorf("record of kind %d seq %d and %d bytes, want a batch record seq %d of %d bytes", h.kind, h.seq, h.size(), e.seq, e.size)
	}
	var cb *wire.CommittedBatch
	if err == nil {
		cb, err = s.decodeBatch(h, buf)
	}
	if err != nil {
		return nil, fmt.Errorf("segment %q offset %d: %w: %w", path, e.off, err, blockdev.ErrCorrupt)
	}
	return cb, nil
}

// Close closes the stage's files and releases its directory. It does not
// sync: what was not made durable may be lost, as in a crash. Batches
// iterations still running keep their own files.
func (s *Stage) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state.Lock()
	if s.closed {
		s.state.Unlock()
		return fmt.Errorf("close stage %q: %w", s.dir, ErrStageClosed)
	}
	s.closed = true
	s.state.Unlock()
	if err := s.closeFiles(); err != nil {
		return fmt.Errorf("close stage %q: %w", s.dir, err)
	}
	return nil
}

// closeFiles closes the current segment and releases the lock.
func (s *Stage) closeFiles() error {
	var errs []error
	if s.cur != nil {
		errs = append(errs, s.cur.Close())
		s.cur = nil
	}
	if s.lock != nil {
		errs = append(errs, s.lock.Close())
		s.lock = nil
	}
	return errors.Join(errs...)
}

// usable returns why the stage refuses Append, MarkFetched, Sync and Trim,
// if it does. The caller holds mu.
func (s *Stage) usable() error {
	if s.closed {
		return ErrStageClosed
	}
	if s.failed != nil {
		return fmt.Errorf("%w: %w", ErrStageFailed, s.failed)
	}
	return nil
}

// fail records err as the reason the stage failed and returns it wrapped
// with ErrStageFailed. The caller holds mu.
func (s *Stage) fail(err error) error {
	s.failed = err
	s.logger.Error("stage failed: refusing appends until reopened", "err", err)
	return fmt.Errorf("%w: %w", ErrStageFailed, err)
}

func (s *Stage) segmentPath(number uint64) string {
	return filepath.Join(s.dir, segmentName(number))
}

// curPath returns the path of the current segment. The caller holds mu.
func (s *Stage) curPath() string { return s.segs[len(s.segs)-1].path }

// readFull reads exactly len(p) bytes at off, turning a short read into
// io.ErrUnexpectedEOF.
func readFull(f io.ReaderAt, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// On-disk format; the package documentation describes it. Every integer is
// little-endian.

// castagnoli is the CRC-32C table of every checksum of the stage.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Segment files.
const (
	stageLockName   = "stage.lock"
	segSuffix       = ".seg"
	segNameDigits   = 20
	segMagic        = "TRICSTG\x00"
	segVersion      = 1
	segHeaderSize   = 128
	segHeaderCRCOff = segHeaderSize - 4
	segNameOff      = 40
)

func segmentName(number uint64) string {
	return fmt.Sprintf("%0*d%s", segNameDigits, number, segSuffix)
}

// parseSegmentName returns the number of the segment file name, or false if
// name is not a segment file name.
func parseSegmentName(name string) (uint64, bool) {
	digits, ok := strings.CutSuffix(name, segSuffix)
	if !ok || len(digits) != segNameDigits {
		return 0, false
	}
	n, err := strconv.ParseUint(digits, 10, 64)
	if err != nil || n == 0 {
		return 0, false
	}
	return n, true
}

// segHeader is the header of a segment file (128 bytes):
//
//	0   magic       [8]byte "TRICSTG\x00"
//	8   version     uint32 (1)
//	12  name length uint32, 1 to wire.MaxVolumeName
//	16  number      uint64, the segment's number (its file name), >= 1
//	24  base        uint64, Last() when the segment was started
//	32  watermark   uint64, Fetched() when the segment was started, >= base
//	40  volume      [64]byte, the volume name, zero-padded
//	104 reserved    [20]byte, zero
//	124 crc32c      uint32 over bytes [0, 124)
type segHeader struct {
	number    uint64
	base      uint64
	watermark uint64
	volume    string
}

func (h segHeader) encode() []byte {
	b := make([]byte, segHeaderSize)
	copy(b, segMagic)
	binary.LittleEndian.PutUint32(b[8:], segVersion)
	binary.LittleEndian.PutUint32(b[12:], uint32(len(h.volume)))
	binary.LittleEndian.PutUint64(b[16:], h.number)
	binary.LittleEndian.PutUint64(b[24:], h.base)
	binary.LittleEndian.PutUint64(b[32:], h.watermark)
	copy(b[segNameOff:segNameOff+wire.MaxVolumeName], h.volume)
	binary.LittleEndian.PutUint32(b[segHeaderCRCOff:], crc32.Checksum(b[:segHeaderCRCOff], castagnoli))
	return b
}

// segHeaderIntact reports whether b is a whole header whose checksum
// matches.
func segHeaderIntact(b []byte) bool {
	return len(b) >= segHeaderSize &&
		crc32.Checksum(b[:segHeaderCRCOff], castagnoli) == binary.LittleEndian.Uint32(b[segHeaderCRCOff:])
}

func decodeSegHeader(b []byte) (segHeader, error) {
	var h segHeader
	if len(b) < segHeaderSize {
		return h, fmt.Errorf("header of %d bytes: %w", len(b), blockdev.ErrCorrupt)
	}
	if string(b[:8]) != segMagic {
		return h, fmt.Errorf("header: bad magic: %w", blockdev.ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != segVersion {
		return h, fmt.Errorf("header: version %d: %w: %w", v, blockdev.ErrVersion, blockdev.ErrCorrupt)
	}
	if !segHeaderIntact(b) {
		return h, fmt.Errorf("header: checksum mismatch: %w", blockdev.ErrCorrupt)
	}
	n := binary.LittleEndian.Uint32(b[12:])
	if n == 0 || n > wire.MaxVolumeName {
		return h, fmt.Errorf("header: volume name of %d bytes: %w", n, blockdev.ErrCorrupt)
	}
	name := b[segNameOff : segNameOff+wire.MaxVolumeName]
	if !allZero(name[n:]) || !allZero(b[segNameOff+wire.MaxVolumeName:segHeaderCRCOff]) {
		return h, fmt.Errorf("header: reserved bytes set: %w", blockdev.ErrCorrupt)
	}
	h.volume = string(name[:n])
	h.number = binary.LittleEndian.Uint64(b[16:])
	h.base = binary.LittleEndian.Uint64(b[24:])
	h.watermark = binary.LittleEndian.Uint64(b[32:])
	if h.watermark < h.base {
		return h, fmt.Errorf("header: watermark %d below base seq %d: %w", h.watermark, h.base, blockdev.ErrCorrupt)
	}
	return h, nil
}

// Records follow the segment header back to back:
//
//	0  magic   uint32 recMagic
//	4  kind    uint8: kindBatch or kindWatermark
//	5  zero    [3]byte
//	8  seq     uint64: the batch's seq, or the watermark
//	16 synced  uint64: the first synced bytes of the segment were durable
//	           (fsynced) when this record was written; <= its offset
//	24 length  uint32: payload bytes, <= wire.DefaultMaxMessage
//	28 hdrcrc  uint32: crc32c over bytes [0, 28)
//	32 payload [length]byte: batch: the protobuf wire.CommittedBatch
//	           (deterministic); watermark: none
//	.. crc32c  uint32 over the header and the payload
const (
	recMagic         = 0x31525354 // "TSR1"
	recHeaderSize    = 32
	recTrailerSize   = 4
	kindBatch        = 1
	kindWatermark    = 2
	maxRecordPayload = wire.DefaultMaxMessage
)

// recordSize returns the encoded size of a record of n payload bytes.
func recordSize(n int) int64 { return recHeaderSize + int64(n) + recTrailerSize }

// appendRecord appends the encoding of a record to buf.
func appendRecord(buf []byte, kind uint8, seq uint64, synced int64, payload []byte) []byte {
	start := len(buf)
	buf = binary.LittleEndian.AppendUint32(buf, recMagic)
	buf = append(buf, kind, 0, 0, 0)
	buf = binary.LittleEndian.AppendUint64(buf, seq)
	buf = binary.LittleEndian.AppendUint64(buf, uint64(synced))
	buf = binary.LittleEndian.AppendUint32(buf, uint32(len(payload)))
	buf = binary.LittleEndian.AppendUint32(buf, crc32.Checksum(buf[start:], castagnoli))
	buf = append(buf, payload...)
	return binary.LittleEndian.AppendUint32(buf, crc32.Checksum(buf[start:], castagnoli))
}

// recHeader is a decoded record header.
type recHeader struct {
	kind   uint8
	seq    uint64
	synced int64
	length uint32
}

func (h recHeader) size() int64 { return recordSize(int(h.length)) }

// decodeRecHeader decodes the record header at the start of b (at least
// recHeaderSize bytes). It reports as not intact a header whose magic or
// checksum does not match: what a torn write may leave. An intact header
// with impossible fields gives an error.
func decodeRecHeader(b []byte) (h recHeader, intact bool, err error) {
	if binary.LittleEndian.Uint32(b) != recMagic ||
		crc32.Checksum(b[:28], castagnoli) != binary.LittleEndian.Uint32(b[28:]) {
		return h, false, nil
	}
	h = recHeader{
		kind:   b[4],
		seq:    binary.LittleEndian.Uint64(b[8:]),
		length: binary.LittleEndian.Uint32(b[24:]),
	}
	synced := binary.LittleEndian.Uint64(b[16:])
	switch {
	case !allZero(b[5:8]):
		return h, true, errors.New("record reserved bytes set")
	case synced > uint64(maxSegmentOffset):
		return h, true, fmt.Errorf("record says the first %d bytes were synced", synced)
	case h.length > maxRecordPayload:
		return h, true, fmt.Errorf("record of %d payload bytes, more than %d", h.length, maxRecordPayload)
	case h.seq == 0:
		return h, true, errors.New("record seq 0")
	case h.kind == kindBatch && h.length == 0:
		return h, true, fmt.Errorf("batch record seq %d is empty", h.seq)
	case h.kind == kindWatermark && h.length != 0:
		return h, true, fmt.Errorf("watermark record %d has %d payload bytes", h.seq, h.length)
	case h.kind != kindBatch && h.kind != kindWatermark:
		return h, true, fmt.Errorf("record of unknown kind %d", h.kind)
	}
	h.synced = int64(synced)
	return h, true, nil
}

// maxSegmentOffset bounds the offsets a record may claim.
const maxSegmentOffset = 1 << 62

// recordIntact reports whether the whole record rec, whose header decoded,
// has a matching checksum.
func recordIntact(rec []byte) bool {
	n := len(rec) - recTrailerSize
	return n >= recHeaderSize && crc32.Checksum(rec[:n], castagnoli) == binary.LittleEndian.Uint32(rec[n:])
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
