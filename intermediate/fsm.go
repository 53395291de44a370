package intermediate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// Log attribute keys of the state machine.
const (
	fsmKeyGroup      = "group"
	fsmKeyVolume     = "volume"
	fsmKeyIndex      = "index"
	fsmKeySeq        = "seq"
	fsmKeyEpoch      = "epoch"
	fsmKeyBlocks     = "blocks"
	fsmKeyAppliedSeq = "applied_seq"
	fsmKeyRestoring  = "restoring"
	fsmKeyPath       = "path"
	fsmKeyBatches    = "batches"
	fsmKeyBytes      = "bytes"
	fsmKeySnapshot   = "snapshot"
	fsmKeyKept       = "kept"
	fsmKeyRewritten  = "rewritten"
	fsmKeyRemoved    = "removed"
	fsmKeyPrevEpoch  = "previous_epoch"
	fsmKeyDuration   = "duration"
	fsmKeyErr        = "err"
	fsmKeySecondary  = "secondary"
	fsmKeyAddr       = "addr"
	fsmKeyCreated    = "created"
	fsmKeyRegions    = "regions"
	fsmKeyMarkedSeq  = "marked_seq"
)

// Limits on a secondary's registration.
const (
	// MaxSecondaryID is the length limit of a secondary's ID, in bytes.
	MaxSecondaryID = 64
	// MaxSecondaryAddr is the length limit of a secondary's address, in
	// bytes.
	MaxSecondaryAddr = 256
)

// FSMConfig configures NewFSM.
type FSMConfig struct {
	// Group is the consistency group's name, for the logs and the snapshot
	// header (a snapshot of another group is refused).
	Group string
	// Dir holds the intermediate volumes, one subdirectory per volume
	// (Dir/<name>); it is created if missing. The FSM owns it.
	Dir string
	// FS is the file system of Dir; nil means blockdev.OSFS.
	FS blockdev.FS
	// Logger receives the state machine's logs; nil means slog.Default().
	Logger *slog.Logger
	// OnFatal is called once, when the state machine stops on a fatal
	// error (see FSM): from the goroutine that calls Apply or Restore, or
	// from the FSM's applier goroutine for an error writing a volume.
	OnFatal func(error)
	// OnBatchApplied, when set, is called for each batch Apply accepts
	// (neither refused nor a duplicate) with its volume and block bytes:
	// once per committed batch for each time this state machine applies
	// the log (on the leader and on followers, and again for the entries
	// the log replays at start; not for what Restore brings). It is
	// called on the apply goroutine, without the FSM's lock, and must not
	// block.
	OnBatchApplied func(volume string, blockBytes int)
	// ApplyQueueBytes bounds the block data of the entries queued to the
	// applier goroutine (see FSM); 0 means DefaultApplyQueueBytes.
	ApplyQueueBytes int64
	// ApplyQueueEntries bounds the number of entries queued to the
	// applier goroutine; 0 means DefaultApplyQueueEntries.
	ApplyQueueEntries int
}

// FSM is the Raft state machine of an intermediate node. It holds the
// group's gapless seq counter, the volumes' records (epoch, last volume seq,
// last seq, promotion history), the journal of committed batches, the
// intermediate volumes, the client addresses of the nodes, the registered
// secondaries and the validated seq (the point every secondary prepared, as
// the coordinator recorded it).
//
// Goroutines:
//
//   - hashicorp/raft calls Apply, Snapshot and Restore from its one FSM
//     goroutine (the apply goroutine), never concurrently with each other.
//     Only the apply goroutine changes the state; it does so under mu,
//     which readers take for reading.
//   - The applier goroutine, started by NewFSM and stopped by Close, owns
//     the writes of Submit entries to the intermediate volumes. Apply
//     decides an entry in memory (seqs, dedupe, journal, results), queues
//     the entry's volume writes (the blocks and, per volume, the header
//     with the new applied seq, one atomic blockdev Apply per volume) and
//     returns; the applier applies them in log order. The queue is bounded
//     (ApplyQueueBytes, ApplyQueueEntries): when it is full, Apply blocks
//     until the applier makes room, which holds up Raft's apply goroutine
//     and so the results of later entries (back-pressure). The apply
//     goroutine drains the queue before it touches a volume itself
//     (registering a new volume, Restore). Crash semantics are unchanged:
//     Apply never synced the volumes, and the Raft log replayed after a
//     restart rewrites what a crash lost, skipping what a volume holds by
//     the applied seq of its header.
//   - FSMSnapshot.Persist runs on Raft's snapshot goroutine, concurrently
//     with Apply; it first waits for the applier to have written every
//     entry up to the snapshot.
//   - Every read method (Stats, Volume, Volumes, Promotions,
//     ChangedSincePromotion, NodeAddr, Fetch, Changed, Failed,
//     ReadVolumeBlock, Validated, Secondaries, Secondary, SecondaryBitmap,
//     JournalLag) may be called from any goroutine at any time.
//     ReadVolumeBlock first waits for the applier to have written every
//     entry applied before the call.
//   - Close is called once Raft has stopped: it drains the queue, stops
//     the applier and closes the volumes.
//
// The state machine is deterministic: every node applying the same log
// returns the same results and reaches the same state. Seqs are assigned at
// apply time from the FSM's own counter, never from the Raft index (which
// configuration changes and leader no-ops advance too).
//
// Fatal errors: a committed entry that cannot be decoded, a batch that fails
// wire.CheckBatch, a RecordValidated above the valid counter (the
// coordinator records only committed points), or an I/O error on an
// intermediate volume stops the state machine (fail-stop, never a silent skip): the error is logged and recorded,
// OnFatal is called once, and from then on Apply returns an error wrapping
// wire.ErrFailed for every entry and Snapshot and Restore refuse. The node
// must be restarted once the cause is fixed. An I/O error of the applier
// surfaces after the entry's Apply returned: that entry's result stands (it
// is committed in the Raft log, which the restarted node replays), and the
// entries applied after the error fail.
type FSM struct {
	cfg  FSMConfig
	fsys blockdev.FS
	log  *slog.Logger

	// mu guards the fields below. The apply goroutine is their only writer.
	mu      sync.RWMutex
	st      fsmState
	vols    map[string]*ivolume // open intermediate volumes, by name
	changed chan struct{}       // closed and replaced at each state change
	failed  error               // the fatal error
	closed  bool
	// jobs is the number of the last job queued (or about to be) to the
	// applier: the volumes are as of the state once ap has applied it.
	jobs uint64

	// ap writes the Submit entries to the intermediate volumes.
	ap *applier

	// imageHook, when set (by tests), is called by Persist after it has
	// read the header of a volume (at applied seq applied) and before it
	// reads the blocks.
	imageHook func(volume string, applied uint64)
}

var _ raft.FSM = (*FSM)(nil)

// fsmState is the replicated state: equal on every node at the same log
// position, and what a snapshot carries (with the volumes' images).
type fsmState struct {
	// seq is the group's seq counter: the seq of the last accepted batch.
	seq uint64
	// appliedIndex is the Raft index of the last applied entry.
	appliedIndex uint64
	// journalStart is the first seq the journal may still hold: every
	// batch with a lower seq was trimmed.
	journalStart uint64
	// journal holds the committed batches not trimmed, in seq order. Its
	// elements are never modified: a snapshot shares the array.
	journal      []*wire.CommittedBatch
	journalBytes uint64
	volumes      map[string]*volumeRecord
	nodeAddrs    map[string]string
	// validated is the validated seq: max over the RecordValidated
	// entries applied.
	validated uint64
	// secondaries are the registered secondaries, by ID.
	secondaries map[string]*secondaryRecord
}

// volumeRecord is the state of one registered volume.
type volumeRecord struct {
	name          string
	epoch         uint64
	blockCount    uint64
	lastVolumeSeq uint64
	lastSeq       uint64
	// trimmedSeq is the seq of the last batch of the volume dropped from
	// the journal (0 when none was).
	trimmedSeq uint64
	// copySince is the seq of the first batch of the volume's open copy
	// window: its batches from there on carry the copying flag (its
	// primary is in COPY or RESYNC), so the volume's image is not a
	// consistent filesystem at any seq from copySince on until a batch
	// without the flag closes the window. 0 when no window is open.
	copySince uint64
	// session is the Raft index of the volume's latest RegisterVolume
	// entry: only batches of that Submit session are accepted.
	session uint64
	// batches are the volume's batches in the journal, in seq order, which
	// is also volume-seq order without a gap.
	batches []*wire.CommittedBatch
	// sums[i] is the block bytes of batches[:i+1] plus those of the
	// batches trimmed before them (prefix sums, for JournalLag), and
	// times[i] the commit time of batches[i] in Unix ns. Neither is
	// replicated state: a restored journal gets the restore time.
	sums  []uint64
	times []int64
	// promotions is the volume's promotion history, oldest first, at
	// most MaxPromotions (see promote.go). Its elements are never
	// modified.
	promotions []promotionRecord
	// changed is the changed-since-promotion bitmap (see failback.go), in
	// regions of wire.RegionBlocks blocks: nil until the volume's first
	// promotion (it is set exactly when promotions is not empty), replaced
	// by each promotion, then marked by each batch of the volume
	// committed. A snapshot copies it.
	changed *blockdev.Bitmap
}

// appendBatch adds a batch committed at the time at (Unix ns) to the
// volume's index.
func (r *volumeRecord) appendBatch(cb *wire.CommittedBatch, at int64) {
	sum := uint64(wire.BatchBytes(cb.GetBatch()))
	if n := len(r.sums); n > 0 {
		sum += r.sums[n-1]
	}
	r.batches = append(r.batches, cb)
	r.sums = append(r.sums, sum)
	r.times = append(r.times, at)
}

// dropBatches drops the volume's first n batches from its index, into new
// arrays (a snapshot may share the old ones, and the dropped batches must
// not stay reachable).
func (r *volumeRecord) dropBatches(n int) {
	r.batches = slices.Clone(r.batches[n:])
	r.sums = slices.Clone(r.sums[n:])
	r.times = slices.Clone(r.times[n:])
}

func (r *volumeRecord) info() VolumeInfo {
	v := VolumeInfo{Name: r.name, Epoch: r.epoch, BlockCount: r.blockCount, LastVolumeSeq: r.lastVolumeSeq, LastSeq: r.lastSeq,
		Session: r.session, TrimmedSeq: r.trimmedSeq, CopySince: r.copySince}
	if r.changed != nil {
		v.ChangedSincePromotion = r.changed.Count()
	}
	return v
}

// seqOf returns the seq of the volume's batch volumeSeq, or 0 when the
// journal no longer holds it.
func (r *volumeRecord) seqOf(volumeSeq uint64) uint64 {
	if len(r.batches) == 0 {
		return 0
	}
	first := r.batches[0].GetBatch().GetVolumeSeq()
	if volumeSeq < first || volumeSeq-first >= uint64(len(r.batches)) {
		return 0
	}
	return r.batches[volumeSeq-first].GetSeq()
}

func newState() fsmState {
	return fsmState{journalStart: 1, volumes: map[string]*volumeRecord{}, nodeAddrs: map[string]string{},
		secondaries: map[string]*secondaryRecord{}}
}

// SubmitResult is what Apply returns for a SubmitEntry: one result per
// batch, in the entry's order.
type SubmitResult struct {
	Batches []BatchResult
}

// BatchResult is the outcome of one batch of a SubmitEntry.
type BatchResult struct {
	// VolumeSeq is the batch's volume seq.
	VolumeSeq uint64
	// Seq is the global seq the batch was committed at; for a duplicate,
	// the seq of the original, or 0 if the journal no longer holds it.
	Seq uint64
	// Duplicate is set when the volume seq had been committed before.
	Duplicate bool
	// Err is a *wire.Error when the batch was refused: UNKNOWN_VOLUME,
	// STALE_EPOCH (Epoch is the volume's current epoch), GAP
	// (ResumeVolumeSeq is the next volume seq expected) or BAD_REQUEST
	// (volume seq 0).
	Err error
}

// RegisterResult is what Apply returns for a RegisterVolume entry.
type RegisterResult struct {
	// Volume is the volume's record after the entry (zero when the request
	// was malformed).
	Volume VolumeInfo
	// Err is a *wire.Error: BAD_REQUEST for a bad name or block count,
	// VOLUME_MISMATCH when the volume is registered with another block
	// count, STALE_EPOCH (Epoch is the volume's epoch) when the volume is
	// registered at another epoch than the entry's (when the entry names
	// one). A refused entry starts no session.
	Err error
	// Created is set when the entry registered the volume.
	Created bool
}

// EpochResult is what Apply returns for a SetEpoch entry.
type EpochResult struct {
	// Volume is the volume's record after the entry.
	Volume VolumeInfo
	// Err is a *wire.Error UNKNOWN_VOLUME for a volume not registered.
	Err error
}

// SecondaryInfo is the record of one registered secondary.
type SecondaryInfo struct {
	// ID names the secondary, unique in the group.
	ID string
	// Volume is the volume it follows.
	Volume string
	// Addr is its admin listen address.
	Addr string
	// CoveredFrom is its volume's trimmed seq when it registered: the
	// journal had dropped the batches up to it, so neither the journal nor
	// the intermediate bitmap covers them for this secondary (one that
	// applied less needs a full copy).
	CoveredFrom uint64
	// Suspended is set while it is suspended (see SuspendSecondary):
	// neither trimming nor the validated point waits for it, and each
	// batch of its volume the journal drops with a seq above ResumeFrom
	// marks its regions in the secondary's intermediate bitmap.
	Suspended  bool
	ResumeFrom uint64
	// MarkedSeq is the highest seq of a batch that marked the bitmap, or
	// FailbackSeq if that is higher; 0 when the bitmap is empty and no
	// failback set it. Once the secondary applied a point at or above it,
	// the bitmap is cleared. DirtyRegions is the number of regions marked.
	MarkedSeq    uint64
	DirtyRegions uint64
	// FailbackSeq is set while the bitmap is a failback's (see
	// FailbackSecondary): the committed seq of the failback, at least 1.
	// The secondary starts from an old primary's volume, which differs
	// from the intermediate volume at FailbackSeq only in the bitmap's
	// regions. 0 otherwise.
	FailbackSeq uint64
}

// SecondaryResult is what Apply returns for a RegisterSecondary or a
// RemoveSecondary entry.
type SecondaryResult struct {
	// Secondary is the secondary's record after a RegisterSecondary, the
	// record removed by a RemoveSecondary (zero when the request was
	// refused, or named no registered secondary).
	Secondary SecondaryInfo
	// Created is set when a RegisterSecondary registered a new secondary,
	// Updated when it changed a registered one's address, Resumed when it
	// ended a registered one's suspension (its bitmap stays), Removed when
	// a RemoveSecondary removed one.
	Created, Updated, Resumed, Removed bool
	// Err is a *wire.Error: BAD_REQUEST for a malformed ID, volume name or
	// address, UNKNOWN_VOLUME for a volume not registered, VOLUME_MISMATCH
	// when the ID is registered for another volume.
	Err error
}

// ValidatedResult is what Apply returns for a RecordValidated entry.
type ValidatedResult struct {
	// Validated is the validated seq after the entry: the maximum of the
	// recorded ones.
	Validated uint64
}

// VolumeInfo is the record of one registered volume.
type VolumeInfo struct {
	Name          string
	Epoch         uint64
	BlockCount    uint64
	LastVolumeSeq uint64 // the volume seq of the volume's last committed batch
	LastSeq       uint64 // the seq of the volume's last committed batch
	Session       uint64 // the Raft index of the latest RegisterVolume: the open Submit session
	TrimmedSeq    uint64 // the journal no longer holds the volume's batches with seq <= it
	// ChangedSincePromotion is the number of regions of the volume's
	// changed-since-promotion bitmap (0 when it was never promoted).
	ChangedSincePromotion uint64
	// CopySince is the seq of the first batch of the volume's open copy
	// window (wire.Batch.copying), 0 when none is open.
	CopySince uint64
}

// FSMStats are the state machine's counters.
type FSMStats struct {
	// CommittedSeq is the seq of the last committed batch of the group.
	CommittedSeq uint64
	// ValidSeq is the valid counter: every batch with seq <= ValidSeq is
	// committed. Seqs are assigned when entries are applied, in order, so
	// on a node's applied state it always equals CommittedSeq.
	ValidSeq uint64
	// AppliedIndex is the Raft index of the last applied entry.
	AppliedIndex uint64
	// JournalBatches and JournalBytes are the batches the journal holds
	// and their payload bytes.
	JournalBatches uint64
	JournalBytes   uint64
	// JournalStart is the first seq the journal may hold: every batch with
	// a lower seq was trimmed.
	JournalStart uint64
	// ValidatedSeq is the validated seq: every secondary prepared it, as
	// the coordinator recorded (RecordValidated).
	ValidatedSeq uint64
	// ConsistentSeq is the highest seq a validated point (or a promotion)
	// may take: ValidSeq, or just below the first batch of the earliest
	// open copy window, where CopyHeldBy's image stops being a consistent
	// filesystem. It never moves backwards: a window opens above every
	// seq committed before it.
	ConsistentSeq uint64
	// CopyHeldBy names the volume whose open copy window holds
	// ConsistentSeq below ValidSeq, empty when none does.
	CopyHeldBy string
}

// NewFSM opens the intermediate volumes already in cfg.Dir (creating the
// directory if needed), starts the applier goroutine and returns a state
// machine with an empty state: the Raft log (or a snapshot) brings it up to
// date. A volume whose header is corrupt is an error naming it. Close stops
// the applier.
func NewFSM(cfg FSMConfig) (*FSM, error) {
	if cfg.Dir == "" {
		return nil, errors.New("new state machine: volumes directory is empty")
	}
	if cfg.ApplyQueueBytes < 0 || cfg.ApplyQueueEntries < 0 {
		return nil, fmt.Errorf("new state machine: apply queue bounds %d bytes, %d entries: negative", cfg.ApplyQueueBytes, cfg.ApplyQueueEntries)
	}
	if cfg.ApplyQueueBytes == 0 {
		cfg.ApplyQueueBytes = DefaultApplyQueueBytes
	}
	if cfg.ApplyQueueEntries == 0 {
		cfg.ApplyQueueEntries = DefaultApplyQueueEntries
	}
	f := &FSM{cfg: cfg, fsys: cfg.FS, log: cfg.Logger, st: newState(), changed: make(chan struct{})}
	if f.fsys == nil {
		f.fsys = blockdev.OSFS{}
	}
	if f.log == nil {
		f.log = slog.Default()
	}
	f.log = f.log.With(fsmKeyGroup, cfg.Group)
	if err := blockdev.MkdirAllDurable(f.fsys, labelVolumes, cfg.Dir); err != nil {
		return nil, fmt.Errorf("create volumes directory %q: %w", cfg.Dir, err)
	}
	vols, err := f.openVolumes()
	if err != nil {
		return nil, err
	}
	f.vols = vols
	f.ap = newApplier(cfg.ApplyQueueBytes, cfg.ApplyQueueEntries, func(err error) { f.fatal(err) })
	return f, nil
}

// Apply implements raft.FSM. It returns *SubmitResult, *RegisterResult,
// *EpochResult, *SecondaryResult (RegisterSecondary, RemoveSecondary),
// *SuspendResult (SuspendSecondary, ClearSecondaryBitmap),
// *ValidatedResult, *PromoteResult (PromoteGroup), *FailbackResult
// (FailbackSecondary) or nil (NodeAddr, TrimJournal and non-command
// entries); after a fatal error, an error wrapping wire.ErrFailed.
func (f *FSM) Apply(l *raft.Log) any {
	if err := f.refusal(); err != nil {
		return err
	}
	if l.Type != raft.LogCommand {
		f.mu.Lock()
		f.st.appliedIndex = l.Index
		f.mu.Unlock()
		return nil
	}
	e, err := wire.DecodeEntry(l.Data)
	if err != nil {
		return f.fatal(fmt.Errorf("raft entry %d: %w", l.Index, err))
	}
	switch op := e.GetOp().(type) {
	case *wire.Entry_Submit:
		at := l.AppendedAt
		if at.IsZero() {
			at = time.Now()
		}
		return f.applySubmit(l.Index, op.Submit, at.UnixNano())
	case *wire.Entry_RegisterVolume:
		return f.applyRegister(l.Index, op.RegisterVolume)
	case *wire.Entry_SetEpoch:
		return f.applySetEpoch(l.Index, op.SetEpoch)
	case *wire.Entry_TrimJournal:
		f.trimJournal(op.TrimJournal.GetUpToSeq())
		f.mu.Lock()
		f.st.appliedIndex = l.Index
		f.mu.Unlock()
		return nil
	case *wire.Entry_NodeAddr:
		f.mu.Lock()
		f.st.nodeAddrs[op.NodeAddr.GetId()] = op.NodeAddr.GetClientAddr()
		f.st.appliedIndex = l.Index
		f.broadcastLocked()
		f.mu.Unlock()
		return nil
	case *wire.Entry_RegisterSecondary:
		return f.applyRegisterSecondary(l.Index, op.RegisterSecondary)
	case *wire.Entry_RemoveSecondary:
		return f.applyRemoveSecondary(l.Index, op.RemoveSecondary)
	case *wire.Entry_RecordValidated:
		return f.applyRecordValidated(l.Index, op.RecordValidated)
	case *wire.Entry_SuspendSecondary:
		return f.applySuspendSecondary(l.Index, op.SuspendSecondary)
	case *wire.Entry_ClearSecondaryBitmap:
		return f.applyClearSecondaryBitmap(l.Index, op.ClearSecondaryBitmap)
	case *wire.Entry_PromoteGroup:
		return f.applyPromoteGroup(l.Index, op.PromoteGroup)
	case *wire.Entry_FailbackSecondary:
		return f.applyFailbackSecondary(l.Index, op.FailbackSecondary)
	default:
		return f.fatal(fmt.Errorf("raft entry %d: %w: operation %T", l.Index, wire.ErrBadEntry, op))
	}
}

// applySubmit applies a SubmitEntry committed at the time at (Unix ns).
func (f *FSM) applySubmit(index uint64, se *wire.SubmitEntry, at int64) any {
	batches := se.GetBatches()
	if len(se.GetSessions()) != len(batches) {
		return f.fatal(fmt.Errorf("raft entry %d: %d batches with %d sessions: %w", index, len(batches), len(se.GetSessions()), wire.ErrBadEntry))
	}
	// Check every batch before changing anything, so that an entry is
	// applied whole, or not at all when it stops the state machine.
	f.mu.RLock()
	counts := make([]uint64, len(batches))
	for i, b := range batches {
		if rec := f.st.volumes[b.GetVolume()]; rec != nil {
			counts[i] = rec.blockCount
		}
	}
	f.mu.RUnlock()
	for i, b := range batches {
		if err := wire.CheckBatch(b, counts[i]); err != nil {
			return f.fatal(fmt.Errorf("raft entry %d: batch %d of %d: %w", index, i, len(batches), err))
		}
	}

	res := &SubmitResult{Batches: make([]BatchResult, len(batches))}
	job := &volumeJob{index: index}
	accepted := false
	var applied []*wire.Batch // for OnBatchApplied
	f.mu.Lock()
	for i, b := range batches {
		r := f.submitLocked(b, se.GetSessions()[i], at)
		res.Batches[i] = r
		if r.Err != nil || r.Duplicate {
			continue
		}
		accepted = true
		if f.cfg.OnBatchApplied != nil {
			applied = append(applied, b)
		}
		iv := f.vols[b.GetVolume()]
		if iv == nil {
			f.mu.Unlock()
			return f.fatal(fmt.Errorf("raft entry %d: volume %q is registered but has no intermediate volume", index, b.GetVolume()))
		}
		if r.Seq <= iv.hdr.applied {
			continue // replay: the volume already holds the batch
		}
		var w *volumeWrite
		for _, q := range job.writes {
			if q.iv == iv {
				w = q
			}
		}
		if w == nil {
			w = &volumeWrite{iv: iv}
			job.writes = append(job.writes, w)
			job.bytes += blockdev.BlockSize // the header
		}
		for _, blk := range b.GetBlocks() {
			w.writes = append(w.writes, blockdev.Write{Index: blk.GetIndex(), Data: blk.GetData()})
		}
		job.bytes += int64(len(b.GetBlocks())) * blockdev.BlockSize
		w.hdr = iv.hdr
		w.hdr.applied = r.Seq
	}
	// The headers are the volumes' state once the job is applied; the
	// job's number tells readers what to wait for.
	for _, w := range job.writes {
		w.iv.hdr = w.hdr
	}
	if len(job.writes) > 0 {
		f.jobs++
		job.n = f.jobs
	}
	f.st.appliedIndex = index
	f.mu.Unlock()

	// Outside mu: the queue may be full, and readers must not wait on it.
	if job.n != 0 {
		if err := f.ap.enqueue(job); err != nil {
			return f.fatal(fmt.Errorf("raft entry %d: %w", index, err))
		}
	}
	if accepted {
		f.mu.Lock()
		f.broadcastLocked()
		f.mu.Unlock()
	}
	for _, b := range applied {
		f.cfg.OnBatchApplied(b.GetVolume(), wire.BatchBytes(b))
	}
	return res
}

// submitLocked decides one checked batch that came on Submit session
// session, in an entry committed at the time at (Unix ns): refused,
// duplicate, or accepted with the next seq and appended to the journal. The
// caller holds mu.
func (f *FSM) submitLocked(b *wire.Batch, session uint64, at int64) BatchResult {
	vs := b.GetVolumeSeq()
	r := BatchResult{VolumeSeq: vs}
	rec := f.st.volumes[b.GetVolume()]
	switch {
	case rec == nil:
		r.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "batch %d: volume %q is not registered", vs, b.GetVolume())
	case b.GetEpoch() != rec.epoch:
		e := wire.Errorf(wire.ErrorCode_ERROR_CODE_STALE_EPOCH, "batch %d of volume %q carries epoch %d, the volume is at epoch %d",
			vs, rec.name, b.GetEpoch(), rec.epoch)
		e.Epoch = rec.epoch
		r.Err = e
	case session != rec.session:
		r.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_STALE_SESSION, "batch %d of volume %q came on submit session %d, the volume's session is %d",
			vs, rec.name, session, rec.session)
	case vs == 0:
		r.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "batch of volume %q has volume seq 0; volume seqs start at 1", rec.name)
	case vs <= rec.lastVolumeSeq:
		r.Duplicate = true
		r.Seq = rec.seqOf(vs)
	case vs > rec.lastVolumeSeq+1:
		e := wire.Errorf(wire.ErrorCode_ERROR_CODE_GAP, "batch %d of volume %q skips volume seq %d", vs, rec.name, rec.lastVolumeSeq+1)
		e.ResumeVolumeSeq = rec.lastVolumeSeq + 1
		r.Err = e
	default:
		f.st.seq++
		r.Seq = f.st.seq
		switch {
		case !b.GetCopying():
			rec.copySince = 0
		case rec.copySince == 0:
			rec.copySince = r.Seq
		}
		cb := &wire.CommittedBatch{Seq: r.Seq, Batch: b}
		f.st.journal = append(f.st.journal, cb)
		f.st.journalBytes += uint64(wire.BatchBytes(b))
		rec.appendBatch(cb, at)
		rec.lastVolumeSeq, rec.lastSeq = vs, r.Seq
		if rec.changed != nil {
			markChanged(rec.changed, b)
		}
	}
	return r
}

func (f *FSM) applyRegister(index uint64, rv *wire.RegisterVolume) any {
	name, blocks := rv.GetVolume(), rv.GetBlockCount()
	res := &RegisterResult{}
	f.mu.RLock()
	rec := f.st.volumes[name]
	f.mu.RUnlock()
	switch {
	case wire.CheckVolumeName(name) != nil:
		res.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "register volume: %v", wire.CheckVolumeName(name))
	case blocks == 0 || blocks >= maxBlockCount:
		res.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "register volume %q: block count %d not in [1, %d)", name, blocks, uint64(maxBlockCount))
	case rec != nil && rec.blockCount != blocks:
		res.Volume = rec.info()
		res.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_VOLUME_MISMATCH, "volume %q is registered with %d blocks, not %d", name, rec.blockCount, blocks)
	case rec != nil && rv.GetEpoch() != 0 && rv.GetEpoch() != rec.epoch:
		// A primary of another epoch (one fenced by a promotion) must not
		// start a session: that would end the current primary's stream.
		res.Volume = rec.info()
		e := wire.Errorf(wire.ErrorCode_ERROR_CODE_STALE_EPOCH, "volume %q is at epoch %d, the primary says %d", name, rec.epoch, rv.GetEpoch())
		e.Epoch = rec.epoch
		res.Err = e
	case rec != nil:
		res.Volume = rec.info()
	}
	if res.Err != nil || rec != nil {
		f.mu.Lock()
		if res.Err == nil {
			rec.session = index
			res.Volume = rec.info()
		}
		f.st.appliedIndex = index
		f.mu.Unlock()
		return res
	}

	// The volume work below must not run beside the applier.
	if err := f.drain(); err != nil {
		return f.fatal(fmt.Errorf("raft entry %d: register volume %q: %w", index, name, err))
	}
	iv, err := f.volumeFor(name, blocks)
	if err != nil {
		return f.fatal(fmt.Errorf("raft entry %d: register volume %q: %w", index, name, err))
	}
	rec = &volumeRecord{name: name, epoch: max(rv.GetEpoch(), 1), blockCount: blocks, session: index}
	f.mu.Lock()
	f.st.volumes[name] = rec
	f.vols[name] = iv
	f.st.appliedIndex = index
	f.broadcastLocked()
	f.mu.Unlock()
	f.log.Info("registered volume", fsmKeyVolume, name, fsmKeyBlocks, blocks, fsmKeyEpoch, rec.epoch, fsmKeyIndex, index)
	res.Volume = rec.info()
	res.Created = true
	return res
}

// volumeFor returns the intermediate volume for a volume being registered:
// the one already on disk, left by an earlier run of the node whose log is
// being replayed, or a new one. A volume on disk left restoring is rebuilt;
// one of another size means the directory does not belong to this log.
func (f *FSM) volumeFor(name string, blocks uint64) (*ivolume, error) {
	f.mu.RLock()
	iv := f.vols[name]
	f.mu.RUnlock()
	if iv != nil {
		switch {
		case iv.hdr.restoring:
			f.log.Warn("rebuilding intermediate volume left restoring", fsmKeyVolume, name)
			f.mu.Lock()
			delete(f.vols, name)
			f.mu.Unlock()
			if err := iv.close(); err != nil {
				return nil, err
			}
		case iv.blocks != blocks:
			return nil, fmt.Errorf("intermediate volume on disk has %d blocks, the log registers %d: %w",
				iv.blocks, blocks, blockdev.ErrCorrupt)
		default:
			f.log.Info("using intermediate volume on disk", fsmKeyVolume, name, fsmKeyAppliedSeq, iv.hdr.applied)
			return iv, nil
		}
	}
	return f.createIvolume(name, blocks)
}

func (f *FSM) applySetEpoch(index uint64, se *wire.SetEpoch) any {
	res := &EpochResult{}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.appliedIndex = index
	rec := f.st.volumes[se.GetVolume()]
	if rec == nil {
		res.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "set epoch: volume %q is not registered", se.GetVolume())
		return res
	}
	if se.GetEpoch() > rec.epoch {
		f.log.Info("raised volume epoch", fsmKeyVolume, rec.name, fsmKeyEpoch, se.GetEpoch(), fsmKeyPrevEpoch, rec.epoch, fsmKeyIndex, index)
		rec.epoch = se.GetEpoch()
		f.broadcastLocked()
	}
	res.Volume = rec.info()
	return res
}

// trimJournal drops the journal's batches with seq <= upTo (at most the
// committed seq). A reader that asks for a dropped batch of its volume is
// told the journal is compacted. Each dropped batch marks its regions in
// the bitmaps of the suspended secondaries of its volume that may lack it
// (see suspend.go). Like every state change it runs on the apply
// goroutine, driven by TrimJournal entries.
func (f *FSM) trimJournal(upTo uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	upTo = min(upTo, f.st.seq)
	if upTo < f.st.journalStart {
		return
	}
	k := sort.Search(len(f.st.journal), func(i int) bool { return f.st.journal[i].GetSeq() > upTo })
	dropped := map[string]int{}
	suspended := f.suspendedOfLocked()
	for _, cb := range f.st.journal[:k] {
		rec := f.st.volumes[cb.GetBatch().GetVolume()]
		if suspended != nil {
			markDropped(cb, suspended[rec.name])
		}
		rec.trimmedSeq = cb.GetSeq()
		dropped[rec.name]++
		f.st.journalBytes -= uint64(wire.BatchBytes(cb.GetBatch()))
	}
	for name, n := range dropped {
		f.st.volumes[name].dropBatches(n)
	}
	// New arrays: a snapshot may share the old ones, and the dropped
	// batches must not stay reachable.
	f.st.journal = slices.Clone(f.st.journal[k:])
	f.st.journalStart = upTo + 1
	f.broadcastLocked()
}

// checkSecondaryID reports whether id may name a secondary: 1 to
// MaxSecondaryID bytes of [A-Za-z0-9._-]. The error wraps
// wire.ErrBadRequest.
func checkSecondaryID(id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty secondary id", wire.ErrBadRequest)
	case len(id) > MaxSecondaryID:
		return fmt.Errorf("%w: secondary id of %d bytes, longer than %d", wire.ErrBadRequest, len(id), MaxSecondaryID)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: secondary id %q has byte %q at offset %d; allowed are A-Z a-z 0-9 . _ -",
				wire.ErrBadRequest, id, c, i)
		}
	}
	return nil
}

// checkSecondaryAddr reports whether addr may be a secondary's address: at
// most MaxSecondaryAddr bytes (empty is allowed: not listening). The error
// wraps wire.ErrBadRequest.
func checkSecondaryAddr(addr string) error {
	if len(addr) > MaxSecondaryAddr {
		return fmt.Errorf("%w: secondary address of %d bytes, longer than %d", wire.ErrBadRequest, len(addr), MaxSecondaryAddr)
	}
	return nil
}

// applyRegisterSecondary registers a secondary, updates the address of a
// registered one, and ends the suspension of a suspended one (its bitmap
// stays). Refusals are results, never fatal.
func (f *FSM) applyRegisterSecondary(index uint64, rs *wire.RegisterSecondary) any {
	res := &SecondaryResult{}
	id, volume, addr := rs.GetId(), rs.GetVolume(), rs.GetAddr()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.appliedIndex = index
	old := f.st.secondaries[id]
	switch {
	case checkSecondaryID(id) != nil:
		res.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "register secondary: %v", checkSecondaryID(id))
	case wire.CheckVolumeName(volume) != nil:
		res.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "register secondary %q: %v", id, wire.CheckVolumeName(volume))
	case checkSecondaryAddr(addr) != nil:
		res.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "register secondary %q: %v", id, checkSecondaryAddr(addr))
	case old != nil && old.volume != volume:
		res.Secondary = old.info()
		res.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_VOLUME_MISMATCH, "secondary %q is registered for volume %q, not %q", id, old.volume, volume)
	case f.st.volumes[volume] == nil:
		res.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "register secondary %q: volume %q is not registered", id, volume)
	case old == nil:
		s := &secondaryRecord{id: id, volume: volume, addr: addr, coveredFrom: f.st.volumes[volume].trimmedSeq}
		f.st.secondaries[id] = s
		res.Secondary, res.Created = s.info(), true
		f.broadcastLocked()
		f.log.Info("registered secondary", fsmKeySecondary, id, fsmKeyVolume, volume, fsmKeyAddr, addr,
			fsmKeyIndex, index, fsmKeyCreated, true)
	default:
		res.Updated = old.addr != addr
		res.Resumed = old.suspended
		old.addr, old.suspended = addr, false
		res.Secondary = old.info()
		if res.Updated || res.Resumed {
			f.broadcastLocked()
			f.log.Info("registered secondary", fsmKeySecondary, id, fsmKeyVolume, volume, fsmKeyAddr, addr,
				fsmKeyIndex, index, fsmKeyCreated, false, "resumed", res.Resumed, "dirty_regions", old.regions.count)
		}
	}
	return res
}

// applyRemoveSecondary takes a secondary out of the group, with its
// bitmap; removing one that is not registered changes nothing.
func (f *FSM) applyRemoveSecondary(index uint64, rs *wire.RemoveSecondary) any {
	res := &SecondaryResult{}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.appliedIndex = index
	if old := f.st.secondaries[rs.GetId()]; old != nil {
		delete(f.st.secondaries, rs.GetId())
		res.Secondary, res.Removed = old.info(), true
		f.broadcastLocked()
		f.log.Info("removed secondary", fsmKeySecondary, old.id, fsmKeyVolume, old.volume, fsmKeyIndex, index)
	}
	return res
}

// applyRecordValidated raises the validated seq. A seq above the valid
// counter is fatal: the coordinator records only what every secondary
// prepared, which is committed.
func (f *FSM) applyRecordValidated(index uint64, rv *wire.RecordValidated) any {
	f.mu.Lock()
	if seq := rv.GetSeq(); seq > f.st.seq {
		valid := f.st.seq
		f.mu.Unlock()
		return f.fatal(fmt.Errorf("raft entry %d: validated seq %d above the valid counter %d: %w", index, seq, valid, wire.ErrBadEntry))
	}
	defer f.mu.Unlock()
	f.st.appliedIndex = index
	if c, held := f.consistentLocked(); rv.GetSeq() > c {
		// The coordinator never asks for this (it prepares at most the
		// consistent seq, which never moves backwards): refused, not
		// fatal, so that no replay of the log can stop a node on it.
		f.log.Error("refused a validated seq inside an open copy window", fsmKeySeq, rv.GetSeq(), fsmKeyVolume, held,
			"consistent_seq", c, fsmKeyIndex, index)
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST,
			"validated seq %d is inside the open copy window of volume %q: the highest consistent seq is %d", rv.GetSeq(), held, c)
	}
	if rv.GetSeq() > f.st.validated {
		f.st.validated = rv.GetSeq()
		f.broadcastLocked()
	}
	return &ValidatedResult{Validated: f.st.validated}
}

// broadcastLocked wakes every waiter on Changed. The caller holds mu.
func (f *FSM) broadcastLocked() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// fatal stops the state machine on err (the first time), calls OnFatal,
// and returns the error Apply returns from then on.
func (f *FSM) fatal(err error) error {
	f.mu.Lock()
	first := f.failed == nil
	if first {
		f.failed = err
		f.broadcastLocked()
	}
	f.mu.Unlock()
	if first {
		f.log.Error("state machine stopped on a fatal error", fsmKeyErr, err)
		if f.cfg.OnFatal != nil {
			f.cfg.OnFatal(err)
		}
	}
	return f.refusal()
}

// refusal returns the error with which Apply refuses entries once the state
// machine has stopped or was closed, or nil.
func (f *FSM) refusal() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	switch {
	case f.failed != nil:
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_FAILED, "state machine of group %q stopped: %v", f.cfg.Group, f.failed)
	case f.closed:
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_FAILED, "state machine of group %q is closed", f.cfg.Group)
	}
	return nil
}

// Failed returns the fatal error that stopped the state machine, or nil.
func (f *FSM) Failed() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.failed
}

// consistentLocked returns FSMStats.ConsistentSeq and CopyHeldBy. The
// caller holds mu.
func (f *FSM) consistentLocked() (seq uint64, heldBy string) {
	seq = f.st.seq
	for _, rec := range f.st.volumes {
		if rec.copySince != 0 && rec.copySince-1 < seq { // seqs are distinct: no ties
			seq, heldBy = rec.copySince-1, rec.name
		}
	}
	return seq, heldBy
}

// Stats returns the state machine's counters.
func (f *FSM) Stats() FSMStats {
	f.mu.RLock()
	defer f.mu.RUnlock()
	consistent, heldBy := f.consistentLocked()
	return FSMStats{
		ConsistentSeq:  consistent,
		CopyHeldBy:     heldBy,
		CommittedSeq:   f.st.seq,
		ValidSeq:       f.st.seq,
		AppliedIndex:   f.st.appliedIndex,
		JournalBatches: uint64(len(f.st.journal)),
		JournalBytes:   f.st.journalBytes,
		JournalStart:   f.st.journalStart,
		ValidatedSeq:   f.st.validated,
	}
}

// Validated returns the validated seq.
func (f *FSM) Validated() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.validated
}

// Secondaries returns the records of every registered secondary, sorted by
// ID.
func (f *FSM) Secondaries() []SecondaryInfo {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]SecondaryInfo, 0, len(f.st.secondaries))
	for _, id := range slices.Sorted(maps.Keys(f.st.secondaries)) {
		out = append(out, f.st.secondaries[id].info())
	}
	return out
}

// Secondary returns the record of a registered secondary.
func (f *FSM) Secondary(id string) (SecondaryInfo, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if s := f.st.secondaries[id]; s != nil {
		return s.info(), true
	}
	return SecondaryInfo{}, false
}

// JournalLag returns what the journal holds of volume after afterSeq: the
// number of its batches with seq > afterSeq, their block bytes, and the
// commit time of the oldest of them (zero when there is none). A batch's
// commit time is when the leader appended its entry to the log, or, for
// batches restored from a snapshot, when the node restored it. Batches
// already trimmed are not counted. It takes O(log n) time for n batches of
// the volume in the journal.
func (f *FSM) JournalLag(volume string, afterSeq uint64) (batches, bytes uint64, oldest time.Time) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	rec := f.st.volumes[volume]
	if rec == nil {
		return 0, 0, time.Time{}
	}
	n := len(rec.batches)
	i := sort.Search(n, func(i int) bool { return rec.batches[i].GetSeq() > afterSeq })
	if i == n {
		return 0, 0, time.Time{}
	}
	bytes = rec.sums[n-1] - rec.sums[i] + uint64(wire.BatchBytes(rec.batches[i].GetBatch()))
	return uint64(n - i), bytes, time.Unix(0, rec.times[i])
}

// Volume returns the record of a registered volume.
func (f *FSM) Volume(name string) (VolumeInfo, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	rec := f.st.volumes[name]
	if rec == nil {
		return VolumeInfo{}, false
	}
	return rec.info(), true
}

// Volumes returns the records of every registered volume, sorted by name.
func (f *FSM) Volumes() []VolumeInfo {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]VolumeInfo, 0, len(f.st.volumes))
	for _, name := range slices.Sorted(maps.Keys(f.st.volumes)) {
		out = append(out, f.st.volumes[name].info())
	}
	return out
}

// NodeAddr returns the client address a NodeAddr entry recorded for the
// node id, or "" if none did.
func (f *FSM) NodeAddr(id string) string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.nodeAddrs[id]
}

// Fetch returns the journal's batches of volume with seq > afterSeq, in seq
// order, at most max of them (max <= 0: all). compacted is set, with no
// batches, when the journal no longer holds some batch of the volume with
// seq > afterSeq: the caller must resynchronise from the intermediate
// volume. The batches are shared and must not be modified. An unregistered
// volume gives a *wire.Error UNKNOWN_VOLUME.
func (f *FSM) Fetch(volume string, afterSeq uint64, max int) (batches []*wire.CommittedBatch, compacted bool, err error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	rec := f.st.volumes[volume]
	if rec == nil {
		return nil, false, wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "fetch: volume %q is not registered", volume)
	}
	if afterSeq < rec.trimmedSeq {
		return nil, true, nil
	}
	i := sort.Search(len(rec.batches), func(i int) bool { return rec.batches[i].GetSeq() > afterSeq })
	j := len(rec.batches)
	if max > 0 && j-i > max {
		j = i + max
	}
	if i == j {
		return nil, false, nil
	}
	return slices.Clone(rec.batches[i:j]), false, nil
}

// Changed returns a channel that is closed at the next Apply or Restore
// that changes the state (or when the state machine stops). To wait for
// new batches without missing a wake-up, take the channel before calling
// Fetch, and wait on it only if Fetch returned nothing.
func (f *FSM) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

// ReadVolumeBlock reads block index of the intermediate volume of volume
// into p (BlockSize bytes). The volume holds every batch the node applied
// before the call: ReadVolumeBlock first waits for the applier goroutine to
// have written them (one atomic load when it has). Just after a Restore that
// rewrote the volume from a snapshot image, some of its blocks may already
// hold batches that the node has yet to apply again. Once the state machine
// stopped on an error writing the volumes, a read that would wait for the
// applier returns an error.
func (f *FSM) ReadVolumeBlock(volume string, index uint64, p []byte) error {
	f.mu.RLock()
	rec, iv, jobs := f.st.volumes[volume], f.vols[volume], f.jobs
	f.mu.RUnlock()
	if rec == nil || iv == nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "read block %d: volume %q is not registered", index, volume)
	}
	if index >= rec.blockCount {
		return fmt.Errorf("read block %d of intermediate volume %q of %d blocks: %w", index, volume, rec.blockCount, blockdev.ErrOutOfRange)
	}
	if err := f.ap.wait(context.Background(), jobs); err != nil {
		return fmt.Errorf("read block %d of intermediate volume %q: %w", index, volume, err)
	}
	if err := iv.vol.ReadBlock(index, p); err != nil {
		return fmt.Errorf("read intermediate volume %q: %w", volume, err)
	}
	return nil
}

// drain waits for the applier to have written every job queued. The apply
// goroutine calls it before it touches a volume itself; it returns an error
// only when the applier failed or was stopped.
func (f *FSM) drain() error {
	f.mu.RLock()
	jobs := f.jobs
	f.mu.RUnlock()
	return f.ap.wait(context.Background(), jobs)
}

// Close drains the applier's queue, stops the applier goroutine and closes
// the intermediate volumes, without syncing them: what they lose in a crash,
// the Raft log replays. Apply refuses entries afterwards. It is called once
// Raft has stopped.
func (f *FSM) Close() error {
	f.mu.Lock()
	f.closed = true
	f.mu.Unlock()
	// A drain fails only after the applier failed, which stopped the state
	// machine with its error already.
	if err := f.drain(); err != nil {
		f.log.Warn("closing with intermediate volume writes not applied", fsmKeyErr, err)
	}
	f.ap.stop()
	f.mu.Lock()
	vols := f.vols
	f.vols = map[string]*ivolume{}
	f.mu.Unlock()
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(vols)) {
		if err := vols[name].close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
