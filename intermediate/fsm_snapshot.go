package intermediate

// Snapshots of the state machine, and why a fuzzy volume image is correct.
//
// Snapshot runs on the apply goroutine just after the entry at the
// snapshot's index was applied; let C be the seq counter then. Apply queues
// each entry's volume writes to the applier goroutine (applier.go), which
// writes them in log order; Snapshot records the number J of the last job
// queued then. Once the applier has applied job J, each intermediate volume
// holds every batch of its volume with seq <= C, and its header's applied
// seq is at least the volume's last seq at the snapshot; later jobs only
// raise it. Snapshot copies the metadata and the journal slice (batches are
// never modified, and the journal's array is never written below its
// length), so it is cheap; Persist does the I/O, concurrently with later
// Applies and with the applier.
//
// Persist streams, in frames each carrying its length and CRC-32C:
//
//	header   magic, version, group
//	meta     seq counter, applied index, journal start, journal batch count,
//	         the volumes' records, the nodes' client addresses; from
//	         version 3 on, the validated seq and the registered secondaries;
//	         from version 4 on, each secondary's suspension, the seq its
//	         bitmap covers from and its intermediate bitmap (runs of regions);
//	         from version 5 on, each volume's promotion history; from
//	         version 6 on, each secondary's failback seq; from version 7
//	         on, each volume's copy window (the seq it opened at, or 0)
//	changed  from version 6 on, for each volume with a promotion history,
//	         by name: its changed-since-promotion bitmap
//	         (blockdev.Bitmap.MarshalBinary) in frames of name, total
//	         length, offset and at most changedPiece bytes
//	batch    one frame per journal batch (seq, protobuf Batch), in seq order
//	image    per volume, by name: name, block count, H; then chunk frames of
//	         at most chunkBlocks blocks (an all-zero chunk carries no data)
//	end      the counts again
//
// Persist first waits for the applier to have applied job J (it runs on
// Raft's snapshot goroutine, so waiting does not hold up Apply; the wait
// ends with an error, and the sink is cancelled, if the applier fails or the
// FSM is closed). For each volume Persist then Syncs it, so that the local
// volume is from then on durably at least where this snapshot says; then it
// reads the header, whose applied seq H is >= the volume's last seq at the
// snapshot (applies only raise it); then it reads the blocks, a chunk at a
// time, never holding a volume in memory. The applier writes every batch
// together with its header in one atomic blockdev Apply and reads see each
// batch whole or not at all, so the blocks read after the header reflect
// every batch <= H. They may also reflect later batches: the image is fuzzy.
//
// Restore writes the image and sets the header to H. The node then applies
// the log after the snapshot's index, which holds exactly the batches with
// seq > C, in seq order: those <= H are skipped (the image holds them); those
// > H are applied again, each rewriting all of its blocks, so once the node
// has applied every batch the image reflects (all committed, so all in the
// log), each block holds its last write, as on the node that made the
// snapshot. Until then a block may already show a later batch's data; only
// ReadVolumeBlock can observe that, never the journal.
//
// A local volume whose header is valid, not restoring, and at an applied
// seq h >= H is kept and the image discarded: it holds every committed batch
// <= h of the same log, which is all the image could give it, and the
// replay skips exactly the batches <= h. This is the restart case, where
// Raft restores the node's own latest snapshot: Persist synced the volume,
// and a FileVolume recovers a prefix of its batches each with its header, so
// h >= H and nothing is rewritten.
//
// Restore runs on the apply goroutine and first drains the applier's queue,
// so the applier never writes a volume that Restore reads, closes or
// replaces; Apply, the only source of jobs, runs on the same goroutine.
//
// A volume that is rewritten is built in Dir/.restore-<name> (header with
// restoring set, then the chunks, then the header with H and restoring
// clear, synced) and renamed into place only once the whole stream has been
// read and verified. A crash leaves a dot directory, which NewFSM removes,
// and a volume ever found with restoring set is never trusted. A corrupt or
// truncated stream (a checksum, a size, an order or a count that is wrong)
// fails Restore with the old state and volumes untouched.
//
// Versions: 7 (this one) added the volumes' open copy windows; Restore
// still reads version 6 (no batch of that time carried the copying flag,
// so no window was open). 6 added the volumes' changed-since-promotion
// bitmaps and the secondaries' failback seqs; Restore still reads version 5 (no
// failback of that time; a volume promoted then has no record of what
// changed since, so it gets a bitmap with every region set: a failback of
// its old primary copies the whole volume). 5 added the volumes' promotion
// histories; Restore still reads version 4 (no volume of that time was ever
// promoted: no PromoteGroup entry existed). 4 added the secondaries'
// suspension and intermediate bitmaps. 3 added the validated seq and the
// secondaries to the meta frame; Restore still reads it (no secondary of
// that time was ever suspended; each one's covered-from seq is taken as its
// volume's trimmed seq, which is conservative: a secondary that applied
// less is refused ReadRegions and copies the whole volume). Restore also
// reads version 2 (no validated seq, no secondaries: a group of that time
// had none). Version 1 streams (volume records without a Submit session)
// are refused: the Submit entries of their logs carry no sessions either,
// which this state machine cannot apply.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// Snapshot stream format.
const (
	snapMagic   = "TRISNAP\x00"
	snapVersion = 7
	// snapVersionNoCopy is the previous version, which Restore still
	// reads: no copy windows.
	snapVersionNoCopy = 6
	// snapVersionNoChanged is the version before, which Restore still
	// reads: no changed-since-promotion bitmaps, no failback seqs.
	snapVersionNoChanged = 5
	// snapVersionNoPromotions is the version before, which Restore still
	// reads: its volume records have no promotion history.
	snapVersionNoPromotions = 4
	// snapVersionNoBitmaps is the version before that, which Restore still
	// reads: its secondaries are ID, volume and address only.
	snapVersionNoBitmaps = 3
	// snapVersionNoSecondaries is the oldest version Restore reads: its
	// meta frame ends after the node addresses.
	snapVersionNoSecondaries = 2

	// chunkBlocks is the largest number of blocks in one image chunk.
	chunkBlocks = 256

	frameHeader byte = 1
	frameMeta   byte = 2
	frameBatch  byte = 3
	frameImage  byte = 4
	frameChunk  byte = 5
	frameEnd    byte = 6
	// frameChanged carries (part of) a changed-since-promotion bitmap.
	frameChanged byte = 7

	// frameHeadSize is the size of a frame's head: type, length, CRC-32C
	// of both. The payload follows, then its CRC-32C.
	frameHeadSize = 1 + 4 + 4

	chunkHeadSize  = 8 + 4 + 1
	chunkFlagZeros = 1

	// Bounds on frame payloads, checked before anything is allocated.
	maxSmallFrame = 64 << 10
	maxMetaFrame  = 64 << 20
	maxBatchFrame = 1 << 30
	maxChunkFrame = chunkHeadSize + chunkBlocks*blockdev.BlockSize

	// changedPiece is the most bitmap bytes one changed frame carries (a
	// 1 TiB volume's bitmap is 2 MiB); maxChangedFrame adds the name,
	// the total length and the offset.
	changedPiece    = 16 << 20
	maxChangedFrame = maxSmallFrame + changedPiece

	// readStep bounds how much a frame's buffer grows ahead of the bytes
	// actually read, so that a lying length costs little.
	readStep = 1 << 20
)

var frameNames = map[byte]string{
	frameHeader: "header", frameMeta: "meta", frameBatch: "batch",
	frameImage: "image", frameChunk: "chunk", frameEnd: "end", frameChanged: "changed",
}

// errBadSnapshot is wrapped by every error about the content of a snapshot
// stream.
var errBadSnapshot = errors.New("bad snapshot")

var zeroBlock [blockdev.BlockSize]byte

// snapshotMeta is the metadata of a snapshot.
type snapshotMeta struct {
	seq, appliedIndex, journalStart, journalBatches uint64
	volumes                                         []volumeMeta    // sorted by name; their bitmaps are not in the meta frame
	nodes                                           []nodeMeta      // sorted by id
	validated                                       uint64          // version 3
	secondaries                                     []secondaryMeta // sorted by ID; version 3
}

// secondaryMeta is a secondary's record in a snapshot: the bitmap as runs
// of regions (version 4), the failback seq (version 6).
type secondaryMeta struct {
	id, volume, addr                   string
	suspended                          bool
	coveredFrom, resumeFrom, markedSeq uint64
	ranges                             []RegionRange
	failbackSeq                        uint64
}

type volumeMeta struct {
	name                                                           string
	epoch, blockCount, lastVolumeSeq, lastSeq, trimmedSeq, session uint64
	// copySince is the volume's open copy window (version 7 on).
	copySince  uint64
	promotions []promotionRecord // version 5
	// changed is a copy of the changed-since-promotion bitmap (set exactly
	// when promotions is not empty); it travels in changed frames
	// (version 6), not in the meta frame.
	changed *blockdev.Bitmap
}

type nodeMeta struct{ id, addr string }

// fsmSnapshot is a point-in-time copy of the state machine's metadata and
// journal, with the intermediate volumes to image.
type fsmSnapshot struct {
	f       *FSM
	jobs    uint64 // the applier's job that brings the volumes to the snapshot
	meta    snapshotMeta
	journal []*wire.CommittedBatch
	vols    []*ivolume // in meta.volumes order
}

var _ raft.FSMSnapshot = (*fsmSnapshot)(nil)

// Snapshot implements raft.FSM: it copies the metadata and the journal
// slice; Persist does the I/O. It refuses after a fatal error.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	if err := f.refusal(); err != nil {
		return nil, fmt.Errorf("snapshot: %w", err)
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	n := len(f.st.journal)
	s := &fsmSnapshot{f: f, jobs: f.jobs, journal: f.st.journal[:n:n]}
	s.meta = snapshotMeta{seq: f.st.seq, appliedIndex: f.st.appliedIndex, journalStart: f.st.journalStart, journalBatches: uint64(n)}
	for _, name := range slices.Sorted(maps.Keys(f.st.volumes)) {
		rec, iv := f.st.volumes[name], f.vols[name]
		if iv == nil {
			return nil, fmt.Errorf("snapshot: volume %q has no intermediate volume", name)
		}
		vm := volumeMeta{name: name, epoch: rec.epoch, blockCount: rec.blockCount,
			lastVolumeSeq: rec.lastVolumeSeq, lastSeq: rec.lastSeq, trimmedSeq: rec.trimmedSeq, session: rec.session,
			copySince: rec.copySince, promotions: slices.Clone(rec.promotions)}
		if rec.changed != nil {
			// Later batches mark the bitmap in place: copy it.
			vm.changed = rec.changed.Clone()
		}
		s.meta.volumes = append(s.meta.volumes, vm)
		s.vols = append(s.vols, iv)
	}
	for _, id := range slices.Sorted(maps.Keys(f.st.nodeAddrs)) {
		s.meta.nodes = append(s.meta.nodes, nodeMeta{id: id, addr: f.st.nodeAddrs[id]})
	}
	s.meta.validated = f.st.validated
	for _, id := range slices.Sorted(maps.Keys(f.st.secondaries)) {
		sr := f.st.secondaries[id]
		s.meta.secondaries = append(s.meta.secondaries, secondaryMeta{id: sr.id, volume: sr.volume, addr: sr.addr,
			suspended: sr.suspended, coveredFrom: sr.coveredFrom, resumeFrom: sr.resumeFrom, markedSeq: sr.markedSeq,
			ranges: sr.regions.ranges(), failbackSeq: sr.failbackSeq})
	}
	return s, nil
}

// Persist implements raft.FSMSnapshot: it waits for the applier to have
// written the volumes up to the snapshot, streams the snapshot to sink and
// closes it, or cancels it on error. It runs concurrently with Apply.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	start := time.Now()
	cw := &countingWriter{w: sink}
	if err := s.persist(cw); err != nil {
		sink.Cancel()
		s.f.log.Error("persist snapshot", fsmKeySnapshot, sink.ID(), fsmKeyErr, err)
		return fmt.Errorf("persist snapshot %s: %w", sink.ID(), err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("persist snapshot %s: close: %w", sink.ID(), err)
	}
	s.f.log.Info("persisted snapshot", fsmKeySnapshot, sink.ID(), fsmKeyIndex, s.meta.appliedIndex, fsmKeySeq, s.meta.seq,
		fsmKeyBatches, len(s.journal), fsmKeyBytes, cw.n, fsmKeyDuration, time.Since(start))
	return nil
}

// Release implements raft.FSMSnapshot; there is nothing to release.
func (s *fsmSnapshot) Release() {}

func (s *fsmSnapshot) persist(w io.Writer) error {
	if err := s.f.ap.wait(context.Background(), s.jobs); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	fw := &frameWriter{w: bw}
	var e encoder
	e.raw([]byte(snapMagic))
	e.u32(snapVersion)
	e.str(s.f.cfg.Group)
	if err := fw.write(frameHeader, e.b); err != nil {
		return err
	}
	if err := fw.write(frameMeta, encodeMeta(s.meta, snapVersion)); err != nil {
		return err
	}
	for _, vm := range s.meta.volumes {
		if err := writeChanged(fw, vm, changedPiece); err != nil {
			return fmt.Errorf("changed-since-promotion bitmap of volume %q: %w", vm.name, err)
		}
	}
	var buf []byte
	for _, cb := range s.journal {
		buf = binary.LittleEndian.AppendUint64(buf[:0], cb.GetSeq())
		var err error
		buf, err = proto.MarshalOptions{Deterministic: true}.MarshalAppend(buf, cb.GetBatch())
		if err != nil {
			return fmt.Errorf("encode batch seq %d: %w", cb.GetSeq(), err)
		}
		if err := fw.write(frameBatch, buf); err != nil {
			return err
		}
	}
	chunk := make([]byte, chunkBlocks*blockdev.BlockSize)
	for i, vm := range s.meta.volumes {
		if err := s.writeImage(fw, vm, s.vols[i], chunk); err != nil {
			return fmt.Errorf("image of volume %q: %w", vm.name, err)
		}
	}
	e = encoder{}
	e.u64(uint64(len(s.meta.volumes)))
	e.u64(s.meta.journalBatches)
	if err := fw.write(frameEnd, e.b); err != nil {
		return err
	}
	return bw.Flush()
}

// writeChanged writes the changed frames of one volume's
// changed-since-promotion bitmap, if it has one: name, total length, offset
// and a piece of the encoded bitmap of at most piece bytes in each.
func writeChanged(fw *frameWriter, vm volumeMeta, piece int) error {
	if vm.changed == nil {
		return nil
	}
	data, err := vm.changed.MarshalBinary()
	if err != nil {
		return err
	}
	for off := 0; off < len(data); off += piece {
		var e encoder
		e.str(vm.name)
		e.u64(uint64(len(data)))
		e.u64(uint64(off))
		if err := fw.write(frameChanged, e.b, data[off:min(off+piece, len(data))]); err != nil {
			return err
		}
	}
	return nil
}

// writeImage streams the image of one volume: see the comment at the top of
// the file for why reading a volume that the applier keeps writing is
// correct.
func (s *fsmSnapshot) writeImage(fw *frameWriter, vm volumeMeta, iv *ivolume, chunk []byte) error {
	if err := iv.vol.Sync(context.Background()); err != nil {
		return err
	}
	h, err := iv.readHeader()
	if err != nil {
		return err
	}
	if h.restoring || h.applied < vm.lastSeq {
		return fmt.Errorf("header at applied seq %d (restoring %t) is behind the volume's last seq %d at the snapshot",
			h.applied, h.restoring, vm.lastSeq)
	}
	if s.f.imageHook != nil {
		s.f.imageHook(vm.name, h.applied)
	}
	var e encoder
	e.str(vm.name)
	e.u64(vm.blockCount)
	e.u64(h.applied)
	if err := fw.write(frameImage, e.b); err != nil {
		return err
	}
	var head [chunkHeadSize]byte
	for start := uint64(0); start < vm.blockCount; start += chunkBlocks {
		n := min(chunkBlocks, vm.blockCount-start)
		p := chunk[:n*blockdev.BlockSize]
		if err := iv.vol.ReadBlocks(start, p); err != nil {
			return err
		}
		binary.LittleEndian.PutUint64(head[0:], start)
		binary.LittleEndian.PutUint32(head[8:], uint32(n))
		if allZeros(p) {
			head[12] = chunkFlagZeros
			err = fw.write(frameChunk, head[:])
		} else {
			head[12] = 0
			err = fw.write(frameChunk, head[:], p)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func allZeros(p []byte) bool {
	for len(p) > 0 {
		n := min(len(p), len(zeroBlock))
		if !bytes.Equal(p[:n], zeroBlock[:n]) {
			return false
		}
		p = p[n:]
	}
	return true
}

// Restore implements raft.FSM. It reads and verifies the whole stream,
// building the new state and writing the volume images that must be
// rewritten into temporary directories, then swaps the new state and
// volumes in. On a bad stream it returns an error and the old state stays.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if err := f.refusal(); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	if err := f.drain(); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	start := time.Now()
	r := &restorer{f: f, fr: &frameReader{r: bufio.NewReaderSize(rc, 1<<20)}, keep: map[string]*ivolume{}, staged: map[string]string{}}
	st, err := r.read()
	if err != nil {
		r.cleanup()
		f.log.Error("refused snapshot", fsmKeyErr, err)
		return fmt.Errorf("restore snapshot of group %q: %w", f.cfg.Group, err)
	}
	removed, err := f.swap(st, r.staged)
	if err != nil {
		return f.fatal(fmt.Errorf("restore snapshot of group %q: %w", f.cfg.Group, err))
	}
	f.log.Info("restored snapshot", fsmKeyIndex, st.appliedIndex, fsmKeySeq, st.seq, fsmKeyBatches, len(st.journal),
		fsmKeyKept, len(r.keep), fsmKeyRewritten, len(r.staged), fsmKeyRemoved, removed, fsmKeyDuration, time.Since(start))
	return nil
}

// restorer reads a snapshot stream into a new state.
type restorer struct {
	f      *FSM
	fr     *frameReader
	keep   map[string]*ivolume // local volumes kept as they are
	staged map[string]string   // volumes rewritten: name -> temporary directory
	cur    *ivolume            // the volume being written, if any
}

func (r *restorer) read() (fsmState, error) {
	st := newState()
	p, err := r.fr.next(frameHeader, maxSmallFrame)
	if err != nil {
		return st, err
	}
	d := decoder{b: p}
	magic, version, group := d.raw(len(snapMagic)), d.u32(), d.str()
	if err := d.finish("header"); err != nil {
		return st, err
	}
	if string(magic) != snapMagic {
		return st, fmt.Errorf("%w: magic %q", errBadSnapshot, magic)
	}
	if version < snapVersionNoSecondaries || version > snapVersion {
		return st, fmt.Errorf("%w: version %d, want %d to %d", errBadSnapshot, version, snapVersionNoSecondaries, snapVersion)
	}
	if group != r.f.cfg.Group {
		return st, fmt.Errorf("%w: snapshot of group %q, this node serves %q", errBadSnapshot, group, r.f.cfg.Group)
	}

	p, err = r.fr.next(frameMeta, maxMetaFrame)
	if err != nil {
		return st, err
	}
	meta, err := decodeMeta(p, version)
	if err != nil {
		return st, err
	}
	st.seq, st.appliedIndex, st.journalStart, st.validated = meta.seq, meta.appliedIndex, meta.journalStart, meta.validated
	for _, vm := range meta.volumes {
		st.volumes[vm.name] = &volumeRecord{name: vm.name, epoch: vm.epoch, blockCount: vm.blockCount,
			lastVolumeSeq: vm.lastVolumeSeq, lastSeq: vm.lastSeq, trimmedSeq: vm.trimmedSeq, session: vm.session,
			copySince: vm.copySince, promotions: vm.promotions}
	}
	for _, nm := range meta.nodes {
		st.nodeAddrs[nm.id] = nm.addr
	}
	if version >= snapVersionNoCopy {
		for _, vm := range meta.volumes {
			if len(vm.promotions) == 0 {
				continue
			}
			b, err := r.readChanged(vm)
			if err != nil {
				return st, fmt.Errorf("changed-since-promotion bitmap of volume %q: %w", vm.name, err)
			}
			st.volumes[vm.name].changed = b
		}
	}

	if err := r.readJournal(&st, meta); err != nil {
		return st, err
	}
	for _, vm := range meta.volumes {
		if err := r.readImage(vm); err != nil {
			return st, fmt.Errorf("image of volume %q: %w", vm.name, err)
		}
	}
	// The bitmaps are built once the images checked out: a bitmap is
	// bounded by its volume's size, which is real by now.
	if version < snapVersionNoCopy {
		for _, vm := range meta.volumes {
			if len(vm.promotions) == 0 {
				continue
			}
			// Promoted before changes were tracked: every region may
			// have changed.
			rec := st.volumes[vm.name]
			b, err := blockdev.NewBitmap(rec.blockCount, changedRegionSize)
			if err != nil {
				return st, fmt.Errorf("%w: volume %q: %w", errBadSnapshot, vm.name, err)
			}
			b.SetAll()
			rec.changed = b
		}
	}
	for _, sm := range meta.secondaries {
		sr := &secondaryRecord{id: sm.id, volume: sm.volume, addr: sm.addr, coveredFrom: sm.coveredFrom,
			suspended: sm.suspended, resumeFrom: sm.resumeFrom, markedSeq: sm.markedSeq, regions: regionSetOf(sm.ranges),
			failbackSeq: sm.failbackSeq}
		if version < snapVersionNoPromotions {
			sr.coveredFrom = st.volumes[sm.volume].trimmedSeq
		}
		st.secondaries[sm.id] = sr
	}

	p, err = r.fr.next(frameEnd, maxSmallFrame)
	if err != nil {
		return st, err
	}
	d = decoder{b: p}
	nvol, nbatch := d.u64(), d.u64()
	if err := d.finish("end"); err != nil {
		return st, err
	}
	if nvol != uint64(len(meta.volumes)) || nbatch != meta.journalBatches {
		return st, fmt.Errorf("%w: end frame counts %d volumes and %d batches, the meta %d and %d",
			errBadSnapshot, nvol, nbatch, len(meta.volumes), meta.journalBatches)
	}
	switch _, err := r.fr.r.ReadByte(); {
	case err == nil:
		return st, fmt.Errorf("%w: data after the end frame", errBadSnapshot)
	case !errors.Is(err, io.EOF):
		return st, fmt.Errorf("read snapshot: %w", err)
	}
	return st, nil
}

// readChanged reads the changed frames of a promoted volume and returns its
// changed-since-promotion bitmap. The bitmap's buffer grows with the bytes
// actually read, never by a length the stream claims.
func (r *restorer) readChanged(vm volumeMeta) (*blockdev.Bitmap, error) {
	var data []byte
	for total := uint64(1); uint64(len(data)) < total; {
		p, err := r.fr.next(frameChanged, maxChangedFrame)
		if err != nil {
			return nil, err
		}
		d := decoder{b: p}
		name, t, off := d.str(), d.u64(), d.u64()
		if d.err != nil {
			return nil, fmt.Errorf("changed frame: %w", d.err)
		}
		piece := d.b
		if name != vm.name || (len(data) > 0 && t != total) || off != uint64(len(data)) || len(piece) == 0 ||
			uint64(len(piece)) > t-off || len(piece) > changedPiece {
			return nil, fmt.Errorf("%w: changed frame of %q at offset %d of %d with %d bytes, want one of %q at offset %d",
				errBadSnapshot, name, off, t, len(piece), vm.name, len(data))
		}
		total = t
		data = append(data, piece...)
	}
	b := new(blockdev.Bitmap)
	if err := b.UnmarshalBinary(data); err != nil {
		return nil, fmt.Errorf("%w: %w", errBadSnapshot, err)
	}
	if b.BlockCount() != vm.blockCount || b.RegionSize() != changedRegionSize {
		return nil, fmt.Errorf("%w: bitmap of %d blocks in regions of %d bytes, want %d blocks in regions of %d",
			errBadSnapshot, b.BlockCount(), b.RegionSize(), vm.blockCount, changedRegionSize)
	}
	return b, nil
}

// readJournal reads and checks the journal's batches.
func (r *restorer) readJournal(st *fsmState, meta snapshotMeta) error {
	// Commit times are not in the stream: the batches count as committed
	// now, for JournalLag.
	now := time.Now().UnixNano()
	for i := uint64(0); i < meta.journalBatches; i++ {
		p, err := r.fr.next(frameBatch, maxBatchFrame)
		if err != nil {
			return fmt.Errorf("journal batch %d of %d: %w", i, meta.journalBatches, err)
		}
		if len(p) < 8 {
			return fmt.Errorf("%w: journal batch %d: %d bytes", errBadSnapshot, i, len(p))
		}
		seq := binary.LittleEndian.Uint64(p)
		b := new(wire.Batch)
		if err := proto.Unmarshal(p[8:], b); err != nil {
			return fmt.Errorf("%w: journal batch seq %d: %v", errBadSnapshot, seq, err)
		}
		if seq != st.journalStart+i {
			return fmt.Errorf("%w: journal batch %d has seq %d, want %d", errBadSnapshot, i, seq, st.journalStart+i)
		}
		rec := st.volumes[b.GetVolume()]
		if rec == nil {
			return fmt.Errorf("%w: journal batch seq %d of unknown volume %q", errBadSnapshot, seq, b.GetVolume())
		}
		if err := wire.CheckBatch(b, rec.blockCount); err != nil {
			return fmt.Errorf("%w: journal batch seq %d: %w", errBadSnapshot, seq, err)
		}
		if n := len(rec.batches); n > 0 && b.GetVolumeSeq() != rec.batches[n-1].GetBatch().GetVolumeSeq()+1 {
			return fmt.Errorf("%w: journal batch seq %d of volume %q has volume seq %d after %d",
				errBadSnapshot, seq, rec.name, b.GetVolumeSeq(), rec.batches[n-1].GetBatch().GetVolumeSeq())
		}
		if seq <= rec.trimmedSeq || b.GetEpoch() > rec.epoch {
			return fmt.Errorf("%w: journal batch seq %d of volume %q (epoch %d) disagrees with the volume's record",
				errBadSnapshot, seq, rec.name, b.GetEpoch())
		}
		cb := &wire.CommittedBatch{Seq: seq, Batch: b}
		st.journal = append(st.journal, cb)
		st.journalBytes += uint64(wire.BatchBytes(b))
		rec.appendBatch(cb, now)
	}
	for _, rec := range st.volumes {
		last := rec.trimmedSeq
		if n := len(rec.batches); n > 0 {
			last = rec.batches[n-1].GetSeq()
			if rec.batches[n-1].GetBatch().GetVolumeSeq() != rec.lastVolumeSeq {
				return fmt.Errorf("%w: volume %q: last journal batch has volume seq %d, the record %d",
					errBadSnapshot, rec.name, rec.batches[n-1].GetBatch().GetVolumeSeq(), rec.lastVolumeSeq)
			}
		}
		if last != rec.lastSeq {
			return fmt.Errorf("%w: volume %q: last seq %d in the record, %d from the journal", errBadSnapshot, rec.name, rec.lastSeq, last)
		}
	}
	return nil
}

// readImage reads the image of one volume and either discards it (the local
// volume is kept) or writes it to a temporary directory.
func (r *restorer) readImage(vm volumeMeta) error {
	p, err := r.fr.next(frameImage, maxSmallFrame)
	if err != nil {
		return err
	}
	d := decoder{b: p}
	name, blocks, h := d.str(), d.u64(), d.u64()
	if err := d.finish("image"); err != nil {
		return err
	}
	if name != vm.name || blocks != vm.blockCount || h < vm.lastSeq {
		return fmt.Errorf("%w: image of %q with %d blocks at applied seq %d, want %d blocks at applied seq >= %d",
			errBadSnapshot, name, blocks, h, vm.blockCount, vm.lastSeq)
	}
	f := r.f
	local := f.vols[name]
	keep := local != nil && local.blocks == blocks && !local.hdr.restoring && local.hdr.applied >= h
	if keep {
		r.keep[name] = local
	} else {
		tmp := filepath.Join(f.cfg.Dir, restoreDirPrefix+name)
		opts := f.volumeOptions()
		opts.CheckpointBytes = restoreCheckpointBytes
		iv, err := f.buildIvolume(tmp, name, blocks, ivolHeader{name: name, blocks: blocks, applied: h, restoring: true}, opts)
		if err != nil {
			return err
		}
		r.cur = iv
		r.staged[name] = tmp
	}

	for next := uint64(0); next < blocks; {
		p, err := r.fr.next(frameChunk, maxChunkFrame)
		if err != nil {
			return fmt.Errorf("chunk at block %d: %w", next, err)
		}
		if len(p) < chunkHeadSize {
			return fmt.Errorf("%w: chunk at block %d: %d bytes", errBadSnapshot, next, len(p))
		}
		start, n, flags := binary.LittleEndian.Uint64(p), uint64(binary.LittleEndian.Uint32(p[8:])), p[12]
		data := p[chunkHeadSize:]
		want := n * blockdev.BlockSize
		if flags == chunkFlagZeros {
			want = 0
		}
		if start != next || n == 0 || n > chunkBlocks || n > blocks-start || flags&^chunkFlagZeros != 0 || uint64(len(data)) != want {
			return fmt.Errorf("%w: chunk of %d blocks at %d (flags %#x, %d bytes), want one at %d of the %d blocks",
				errBadSnapshot, n, start, flags, len(data), next, blocks)
		}
		next += n
		if keep || flags == chunkFlagZeros {
			continue // the new volume is all zeros already
		}
		var b blockdev.Batch
		for i := uint64(0); i < n; i++ {
			blk := data[i*blockdev.BlockSize : (i+1)*blockdev.BlockSize]
			if !allZeros(blk) {
				// The volume keeps the slice until its next checkpoint:
				// give it its own copy.
				b.Writes = append(b.Writes, blockdev.Write{Index: start + i, Data: bytes.Clone(blk)})
			}
		}
		if err := r.cur.vol.Apply(context.Background(), &b, blockdev.ApplyOptions{}); err != nil {
			return err
		}
	}
	if keep {
		return nil
	}
	if err := r.cur.writeHeader(ivolHeader{name: name, blocks: blocks, applied: h}, true); err != nil {
		return err
	}
	iv := r.cur
	r.cur = nil
	return iv.close()
}

// cleanup removes the temporary directories of a failed restore.
func (r *restorer) cleanup() {
	if r.cur != nil {
		r.cur.close()
	}
	for _, name := range slices.Sorted(maps.Keys(r.staged)) {
		if err := blockdev.RemoveAll(r.f.fsys, labelVolumes, r.staged[name]); err != nil {
			r.f.log.Warn("remove temporary directory of a refused snapshot", fsmKeyPath, r.staged[name], fsmKeyErr, err)
		}
	}
}

// swap installs a restored state: the rewritten volumes replace the local
// ones, the local volumes the snapshot does not name are removed. It returns
// how many volumes it removed. An error leaves the FSM unusable (the caller
// makes it fatal).
func (f *FSM) swap(st fsmState, staged map[string]string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, name := range slices.Sorted(maps.Keys(staged)) {
		if old := f.vols[name]; old != nil {
			delete(f.vols, name)
			if err := old.close(); err != nil {
				f.log.Warn("close replaced intermediate volume", fsmKeyVolume, name, fsmKeyErr, err)
			}
		}
		iv, err := f.install(staged[name], name)
		if err != nil {
			return 0, err
		}
		f.vols[name] = iv
	}
	removed := 0
	for _, name := range slices.Sorted(maps.Keys(f.vols)) {
		if _, ok := st.volumes[name]; ok {
			continue
		}
		iv := f.vols[name]
		delete(f.vols, name)
		if err := iv.close(); err != nil {
			f.log.Warn("close removed intermediate volume", fsmKeyVolume, name, fsmKeyErr, err)
		}
		if err := f.discard(name); err != nil {
			return 0, err
		}
		removed++
	}
	f.st = st
	f.broadcastLocked()
	return removed, nil
}

// encodeMeta encodes the metadata frame of a snapshot of the given
// version (tests write older versions).
func encodeMeta(m snapshotMeta, version uint32) []byte {
	var e encoder
	e.u64(m.seq)
	e.u64(m.appliedIndex)
	e.u64(m.journalStart)
	e.u64(m.journalBatches)
	e.u32(uint32(len(m.volumes)))
	for _, v := range m.volumes {
		e.str(v.name)
		e.u64(v.epoch)
		e.u64(v.blockCount)
		e.u64(v.lastVolumeSeq)
		e.u64(v.lastSeq)
		e.u64(v.trimmedSeq)
		e.u64(v.session)
		if version < snapVersionNoChanged {
			continue
		}
		if version >= snapVersion {
			e.u64(v.copySince)
		}
		e.u32(uint32(len(v.promotions)))
		for _, p := range v.promotions {
			e.str(p.id)
			e.u64(p.epoch)
			e.u64(p.seq)
			e.u64(uint64(p.time))
			e.str(p.by)
			e.u64(p.lastSeq)
			e.u64(p.lastVolumeSeq)
		}
	}
	e.u32(uint32(len(m.nodes)))
	for _, n := range m.nodes {
		e.str(n.id)
		e.str(n.addr)
	}
	if version < snapVersionNoBitmaps {
		return e.b
	}
	e.u64(m.validated)
	e.u32(uint32(len(m.secondaries)))
	for _, s := range m.secondaries {
		e.str(s.id)
		e.str(s.volume)
		e.str(s.addr)
		if version < snapVersionNoPromotions {
			continue
		}
		flags := uint32(0)
		if s.suspended {
			flags = secondaryFlagSuspended
		}
		e.u32(flags)
		e.u64(s.coveredFrom)
		e.u64(s.resumeFrom)
		e.u64(s.markedSeq)
		if version >= snapVersionNoCopy {
			e.u64(s.failbackSeq)
		}
		e.u32(uint32(len(s.ranges)))
		for _, r := range s.ranges {
			e.u64(r.First)
			e.u64(r.Count)
		}
	}
	return e.b
}

// minVolumeMeta and minNodeMeta are the smallest encodings of a volume and
// of a node address: counts read from the stream are bounded by them before
// anything is allocated.
const (
	minVolumeMeta = 4 + 6*8
	// minVolumeMetaV5 adds the count of promotions.
	minVolumeMetaV5 = minVolumeMeta + 4
	// minPromotionMeta is a promotion: two strings and five numbers.
	minPromotionMeta = 2*4 + 5*8
	minNodeMeta      = 4 + 4
	minSecondaryMeta = 3 * 4
	// minSecondaryMetaV4 adds flags, three seqs and the count of runs.
	minSecondaryMetaV4 = minSecondaryMeta + 4 + 3*8 + 4
	// minSecondaryMetaV6 adds the failback seq.
	minSecondaryMetaV6 = minSecondaryMetaV4 + 8
	minRegionRange     = 2 * 8

	// secondaryFlagSuspended marks a suspended secondary in its flags.
	secondaryFlagSuspended = 1
)

// decodeMeta decodes the metadata frame of a snapshot of the given version
// and checks it is consistent.
func decodeMeta(p []byte, version uint32) (snapshotMeta, error) {
	var m snapshotMeta
	d := decoder{b: p}
	m.seq, m.appliedIndex, m.journalStart, m.journalBatches = d.u64(), d.u64(), d.u64(), d.u64()
	nv := d.u32()
	minVolume := uint64(minVolumeMeta)
	if version >= snapVersionNoChanged {
		minVolume = minVolumeMetaV5
	}
	if d.err == nil && uint64(nv) > uint64(len(d.b))/minVolume {
		return m, fmt.Errorf("%w: meta claims %d volumes in %d bytes", errBadSnapshot, nv, len(d.b))
	}
	for i := uint32(0); i < nv && d.err == nil; i++ {
		v := volumeMeta{name: d.str()}
		v.epoch, v.blockCount, v.lastVolumeSeq, v.lastSeq, v.trimmedSeq, v.session = d.u64(), d.u64(), d.u64(), d.u64(), d.u64(), d.u64()
		if version >= snapVersion {
			v.copySince = d.u64()
		}
		if version >= snapVersionNoChanged {
			np := d.u32()
			if d.err == nil && uint64(np) > uint64(len(d.b))/minPromotionMeta {
				return m, fmt.Errorf("%w: volume %q claims %d promotions in %d bytes", errBadSnapshot, v.name, np, len(d.b))
			}
			for j := uint32(0); j < np && d.err == nil; j++ {
				p := promotionRecord{id: d.str(), epoch: d.u64(), seq: d.u64(), time: int64(d.u64()), by: d.str()}
				p.lastSeq, p.lastVolumeSeq = d.u64(), d.u64()
				v.promotions = append(v.promotions, p)
			}
		}
		m.volumes = append(m.volumes, v)
	}
	nn := d.u32()
	if d.err == nil && uint64(nn) > uint64(len(d.b))/minNodeMeta {
		return m, fmt.Errorf("%w: meta claims %d node addresses in %d bytes", errBadSnapshot, nn, len(d.b))
	}
	for i := uint32(0); i < nn && d.err == nil; i++ {
		m.nodes = append(m.nodes, nodeMeta{id: d.str(), addr: d.str()})
	}
	if version >= snapVersionNoBitmaps {
		m.validated = d.u64()
		ns := d.u32()
		minSize := uint64(minSecondaryMeta)
		switch {
		case version >= snapVersionNoCopy:
			minSize = minSecondaryMetaV6
		case version >= snapVersionNoPromotions:
			minSize = minSecondaryMetaV4
		}
		if d.err == nil && uint64(ns) > uint64(len(d.b))/minSize {
			return m, fmt.Errorf("%w: meta claims %d secondaries in %d bytes", errBadSnapshot, ns, len(d.b))
		}
		for i := uint32(0); i < ns && d.err == nil; i++ {
			s := secondaryMeta{id: d.str(), volume: d.str(), addr: d.str()}
			if version >= snapVersionNoPromotions {
				flags := d.u32()
				if flags&^secondaryFlagSuspended != 0 {
					return m, fmt.Errorf("%w: secondary %q has flags %#x", errBadSnapshot, s.id, flags)
				}
				s.suspended = flags&secondaryFlagSuspended != 0
				s.coveredFrom, s.resumeFrom, s.markedSeq = d.u64(), d.u64(), d.u64()
				if version >= snapVersionNoCopy {
					s.failbackSeq = d.u64()
				}
				nr := d.u32()
				if d.err == nil && uint64(nr) > uint64(len(d.b))/minRegionRange {
					return m, fmt.Errorf("%w: secondary %q claims %d runs of regions in %d bytes", errBadSnapshot, s.id, nr, len(d.b))
				}
				for j := uint32(0); j < nr && d.err == nil; j++ {
					s.ranges = append(s.ranges, RegionRange{First: d.u64(), Count: d.u64()})
				}
			}
			m.secondaries = append(m.secondaries, s)
		}
	}
	if err := d.finish("meta"); err != nil {
		return m, err
	}
	// Trimming cuts a prefix, so the journal holds every seq from its
	// start to the counter.
	if m.journalStart == 0 || m.journalStart > m.seq+1 || m.journalBatches != m.seq-m.journalStart+1 {
		return m, fmt.Errorf("%w: journal of %d batches from seq %d with counter %d", errBadSnapshot, m.journalBatches, m.journalStart, m.seq)
	}
	for i, v := range m.volumes {
		if err := wire.CheckVolumeName(v.name); err != nil {
			return m, fmt.Errorf("%w: %w", errBadSnapshot, err)
		}
		if i > 0 && m.volumes[i-1].name >= v.name {
			return m, fmt.Errorf("%w: volume %q after %q", errBadSnapshot, v.name, m.volumes[i-1].name)
		}
		if v.blockCount == 0 || v.blockCount >= maxBlockCount || v.epoch == 0 || v.lastSeq > m.seq ||
			(v.lastSeq == 0) != (v.lastVolumeSeq == 0) || v.trimmedSeq > v.lastSeq || v.trimmedSeq >= m.journalStart {
			return m, fmt.Errorf("%w: volume %q: epoch %d, %d blocks, last volume seq %d, last seq %d, trimmed to seq %d (counter %d, journal from %d)",
				errBadSnapshot, v.name, v.epoch, v.blockCount, v.lastVolumeSeq, v.lastSeq, v.trimmedSeq, m.seq, m.journalStart)
		}
		if v.copySince != 0 && (v.copySince > v.lastSeq || v.copySince <= m.validated) {
			return m, fmt.Errorf("%w: volume %q: copy window from seq %d, last seq %d, validated seq %d",
				errBadSnapshot, v.name, v.copySince, v.lastSeq, m.validated)
		}
		if err := checkPromotionsMeta(v, m.seq); err != nil {
			return m, err
		}
	}
	for i := 1; i < len(m.nodes); i++ {
		if m.nodes[i-1].id >= m.nodes[i].id {
			return m, fmt.Errorf("%w: node %q after %q", errBadSnapshot, m.nodes[i].id, m.nodes[i-1].id)
		}
	}
	if m.validated > m.seq {
		return m, fmt.Errorf("%w: validated seq %d above the counter %d", errBadSnapshot, m.validated, m.seq)
	}
	for i, s := range m.secondaries {
		if i > 0 && m.secondaries[i-1].id >= s.id {
			return m, fmt.Errorf("%w: secondary %q after %q", errBadSnapshot, s.id, m.secondaries[i-1].id)
		}
		if err := checkSecondaryID(s.id); err != nil {
			return m, fmt.Errorf("%w: %w", errBadSnapshot, err)
		}
		if err := checkSecondaryAddr(s.addr); err != nil {
			return m, fmt.Errorf("%w: secondary %q: %w", errBadSnapshot, s.id, err)
		}
		k, ok := slices.BinarySearchFunc(m.volumes, s.volume, func(v volumeMeta, name string) int { return strings.Compare(v.name, name) })
		if !ok {
			return m, fmt.Errorf("%w: secondary %q follows volume %q, which is not registered", errBadSnapshot, s.id, s.volume)
		}
		if err := checkSecondaryMeta(s, m.volumes[k], m.seq); err != nil {
			return m, err
		}
	}
	return m, nil
}

// checkPromotionsMeta checks a volume's promotion history against its
// record and the seq counter: at most MaxPromotions, well-formed and
// distinct IDs, epochs rising up to the volume's, seqs never falling and
// at most the counter, each with the volume's last batch then (which may
// follow the promotion's seq: a promotion recorded late).
func checkPromotionsMeta(v volumeMeta, seq uint64) error {
	if len(v.promotions) > MaxPromotions {
		return fmt.Errorf("%w: volume %q has %d promotions, more than %d", errBadSnapshot, v.name, len(v.promotions), MaxPromotions)
	}
	ids := map[string]bool{}
	var prev promotionRecord
	for i, p := range v.promotions {
		if err := checkPromotion(p.id, p.by); err != nil {
			return fmt.Errorf("%w: volume %q: promotion %d: %w", errBadSnapshot, v.name, i, err)
		}
		if ids[p.id] || p.epoch < 2 || p.epoch > v.epoch || p.epoch <= prev.epoch || p.seq < prev.seq || p.seq > seq ||
			p.lastSeq > v.lastSeq || p.lastVolumeSeq > v.lastVolumeSeq || (p.lastSeq == 0) != (p.lastVolumeSeq == 0) {
			return fmt.Errorf("%w: volume %q (epoch %d, last seq %d, last volume seq %d, counter %d): promotion %d %q to epoch %d at seq %d with last seq %d, last volume seq %d (duplicate %t), after epoch %d at seq %d",
				errBadSnapshot, v.name, v.epoch, v.lastSeq, v.lastVolumeSeq, seq, i, p.id, p.epoch, p.seq, p.lastSeq, p.lastVolumeSeq,
				ids[p.id], prev.epoch, prev.seq)
		}
		ids[p.id] = true
		prev = p
	}
	return nil
}

// checkSecondaryMeta checks a secondary's suspension and bitmap against
// its volume's record and the seq counter: a bitmap is marked up to a
// batch the journal dropped, or set by a failback (marked seq at or above
// the failback seq, which is at most the counter, or 1); only a failback's
// bitmap may be empty with a marked seq.
func checkSecondaryMeta(s secondaryMeta, v volumeMeta, seq uint64) error {
	if s.coveredFrom > v.trimmedSeq || s.resumeFrom > seq || s.markedSeq > max(v.trimmedSeq, s.failbackSeq) ||
		s.failbackSeq > max(seq, 1) || s.markedSeq < s.failbackSeq {
		return fmt.Errorf("%w: secondary %q: covered from seq %d, resume from %d, marked up to %d, failback at %d (volume %q trimmed to %d, counter %d)",
			errBadSnapshot, s.id, s.coveredFrom, s.resumeFrom, s.markedSeq, s.failbackSeq, v.name, v.trimmedSeq, seq)
	}
	if (s.markedSeq == 0 && len(s.ranges) != 0) || (s.markedSeq != 0 && len(s.ranges) == 0 && s.failbackSeq == 0) {
		return fmt.Errorf("%w: secondary %q: bitmap of %d runs marked up to seq %d", errBadSnapshot, s.id, len(s.ranges), s.markedSeq)
	}
	regions := regionCount(v.blockCount)
	next := uint64(0)
	for i, r := range s.ranges {
		// Runs are as long as possible: a run starts after a gap.
		if r.Count == 0 || r.First < next || (i > 0 && r.First == next) || r.First >= regions || r.Count > regions-r.First {
			return fmt.Errorf("%w: secondary %q: run %d of the bitmap, %d regions from %d, after region %d of %d",
				errBadSnapshot, s.id, i, r.Count, r.First, next, regions)
		}
		next = r.First + r.Count
	}
	return nil
}

// frameWriter writes frames: type, length, CRC-32C of both, payload,
// CRC-32C of the payload.
type frameWriter struct {
	w io.Writer
}

// write writes one frame whose payload is the concatenation of parts.
func (fw *frameWriter) write(typ byte, parts ...[]byte) error {
	n := 0
	for _, p := range parts {
		n += len(p)
	}
	if n > maxBatchFrame {
		return fmt.Errorf("write %s frame: %d bytes, over the limit of %d", frameNames[typ], n, maxBatchFrame)
	}
	var head [frameHeadSize]byte
	head[0] = typ
	binary.LittleEndian.PutUint32(head[1:], uint32(n))
	binary.LittleEndian.PutUint32(head[5:], crc32.Checksum(head[:5], castagnoli))
	if _, err := fw.w.Write(head[:]); err != nil {
		return fmt.Errorf("write %s frame: %w", frameNames[typ], err)
	}
	crc := uint32(0)
	for _, p := range parts {
		crc = crc32.Update(crc, castagnoli, p)
		if _, err := fw.w.Write(p); err != nil {
			return fmt.Errorf("write %s frame: %w", frameNames[typ], err)
		}
	}
	if _, err := fw.w.Write(binary.LittleEndian.AppendUint32(nil, crc)); err != nil {
		return fmt.Errorf("write %s frame: %w", frameNames[typ], err)
	}
	return nil
}

// frameReader reads and checks frames. The payload it returns is valid
// until the next call.
type frameReader struct {
	r     *bufio.Reader
	buf   []byte
	count int // frames read
}

// next reads the next frame, which must be of type want with a payload of
// at most limit bytes.
func (fr *frameReader) next(want byte, limit int) ([]byte, error) {
	name := frameNames[want]
	var head [frameHeadSize]byte
	if _, err := io.ReadFull(fr.r, head[:]); err != nil {
		return nil, fr.readErr(name, err)
	}
	if got, crc := crc32.Checksum(head[:5], castagnoli), binary.LittleEndian.Uint32(head[5:]); got != crc {
		return nil, fmt.Errorf("%w: frame %d (expecting %s): head crc %08x, computed %08x", errBadSnapshot, fr.count, name, crc, got)
	}
	typ, n := head[0], int(binary.LittleEndian.Uint32(head[1:]))
	if typ != want {
		return nil, fmt.Errorf("%w: frame %d is of type %d, expecting %s", errBadSnapshot, fr.count, typ, name)
	}
	if n > limit {
		return nil, fmt.Errorf("%w: %s frame %d of %d bytes, over the limit of %d", errBadSnapshot, name, fr.count, n, limit)
	}
	// Grow the buffer as the bytes arrive, not by the announced length.
	fr.buf = fr.buf[:0]
	for len(fr.buf) < n {
		step := min(n-len(fr.buf), readStep)
		fr.buf = slices.Grow(fr.buf, step)
		m, err := io.ReadFull(fr.r, fr.buf[len(fr.buf):len(fr.buf)+step])
		fr.buf = fr.buf[:len(fr.buf)+m]
		if err != nil {
			return nil, fr.readErr(name, err)
		}
	}
	var tail [4]byte
	if _, err := io.ReadFull(fr.r, tail[:]); err != nil {
		return nil, fr.readErr(name, err)
	}
	if got, crc := crc32.Checksum(fr.buf, castagnoli), binary.LittleEndian.Uint32(tail[:]); got != crc {
		return nil, fmt.Errorf("%w: %s frame %d: crc %08x, computed %08x", errBadSnapshot, name, fr.count, crc, got)
	}
	fr.count++
	return fr.buf, nil
}

func (fr *frameReader) readErr(name string, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%w: truncated in %s frame %d", errBadSnapshot, name, fr.count)
	}
	return fmt.Errorf("read snapshot: %s frame %d: %w", name, fr.count, err)
}

// encoder appends little-endian fields.
type encoder struct{ b []byte }

func (e *encoder) raw(p []byte) { e.b = append(e.b, p...) }
func (e *encoder) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *encoder) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *encoder) str(s string) {
	e.u32(uint32(len(s)))
	e.b = append(e.b, s...)
}

// decoder reads the fields encoder writes; the first short read sets err
// and makes every later read return zero.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n uint64) []byte {
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = fmt.Errorf("%w: field of %d bytes with %d left", errBadSnapshot, n, len(d.b))
		return nil
	}
	p := d.b[:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) raw(n int) []byte { return bytes.Clone(d.take(uint64(n))) }

func (d *decoder) u32() uint32 {
	if p := d.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if p := d.take(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

func (d *decoder) str() string { return string(d.take(uint64(d.u32()))) }

// finish reports a short read or bytes left over in the frame what.
func (d *decoder) finish(what string) error {
	if d.err != nil {
		return fmt.Errorf("%s frame: %w", what, d.err)
	}
	if len(d.b) != 0 {
		return fmt.Errorf("%w: %s frame has %d bytes too many", errBadSnapshot, what, len(d.b))
	}
	return nil
}

// countingWriter counts the bytes written through it.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
