package secondary

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"iter"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// DefaultMaxRoundBytes is the largest round, in block bytes, that
// ApplyRound accepts when ReplicaOptions.MaxRoundBytes is zero.
const DefaultMaxRoundBytes = 256 << 20

// DefaultInPlaceBytes is the size, in block bytes, from which ApplyRound
// writes a round in place when ReplicaOptions.InPlaceBytes is zero.
const DefaultInPlaceBytes = 4 << 20

// LabelReplicaDir labels the operations of CreateReplica on the replica
// directory's parent (the replica's own files carry blockdev's labels).
const LabelReplicaDir = "replica dir"

// newReplicaPrefix starts the name of the directory, beside the replica's,
// in which CreateReplica builds a replica before renaming it into place.
const newReplicaPrefix = ".new-"

// Errors of a Replica, besides blockdev.ErrCorrupt and blockdev.ErrVersion
// (a damaged or unknown header), blockdev.ErrClosed, blockdev.ErrFailed
// (fail-stop after an I/O error), blockdev.ErrExists (CreateReplica over an
// existing directory), blockdev.ErrOutOfRange (reads), and the wire errors
// that refused batches wrap (wire.ErrBadRequest, wire.ErrBadCRC).
var (
	// ErrRoundTooLarge means the batches of a round hold more block bytes
	// than ReplicaOptions.MaxRoundBytes; nothing of the round was applied.
	ErrRoundTooLarge = errors.New("round too large")
	// ErrStaleRound means a round to a seq below the replica's applied seq:
	// the seq a replica is at never goes back.
	ErrStaleRound = errors.New("round below the applied seq")
	// ErrInterruptedRound means the replica holds an in-place round that a
	// crash or an error interrupted (InterruptedRound): its blocks are
	// torn, so it refuses reads and rounds until Redo applied that round
	// again.
	ErrInterruptedRound = errors.New("replica has an interrupted in-place round")
)

// ReplicaOptions configure CreateReplica and OpenReplica.
type ReplicaOptions struct {
	// FS is the file system the replica lives on; nil means blockdev.OSFS.
	FS blockdev.FS
	// Logger receives the replica's logs; nil means slog.Default().
	Logger *slog.Logger
	// CheckpointBytes is passed to the replica's blockdev.FileVolume: the
	// intent log size that triggers a checkpoint; 0 means
	// blockdev.DefaultCheckpointBytes.
	CheckpointBytes int64
	// MaxRoundBytes bounds the block bytes of the batches ApplyRound
	// applies in one round, which it holds in memory; 0 means
	// DefaultMaxRoundBytes.
	MaxRoundBytes int64
	// InPlaceBytes is the size of a round, in block bytes, from which
	// ApplyRound writes it in place, with the staged batches as its redo
	// log, instead of through the FileVolume's intent log: each block is
	// written once, not twice. 0 means DefaultInPlaceBytes; negative,
	// never.
	InPlaceBytes int64
}

func (o ReplicaOptions) withDefaults() (ReplicaOptions, error) {
	if o.FS == nil {
		o.FS = blockdev.OSFS{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case o.MaxRoundBytes == 0:
		o.MaxRoundBytes = DefaultMaxRoundBytes
	case o.MaxRoundBytes < 0:
		return o, fmt.Errorf("max round bytes %d is negative", o.MaxRoundBytes)
	}
	if o.CheckpointBytes < 0 {
		return o, fmt.Errorf("checkpoint bytes %d is negative", o.CheckpointBytes)
	}
	if o.InPlaceBytes == 0 {
		o.InPlaceBytes = DefaultInPlaceBytes
	}
	return o, nil
}

func (o ReplicaOptions) volumeOptions() blockdev.Options {
	return blockdev.Options{FS: o.FS, Logger: o.Logger, CheckpointBytes: o.CheckpointBytes}
}

// Replica is the volume a secondary exposes, read-only: a
// blockdev.FileVolume with one block more than the volume, whose last block
// is a header recording the volume's name and size and the seq N the
// replica is at (applied(N)): every batch of the volume with seq <= N is in
// the blocks, none after. The format is in the package documentation.
//
// ApplyRound moves the replica from one validated N to the next in one
// atomic, durable blockdev Apply that writes the round's batches together
// with the header recording the new N: after a crash the replica is at the
// old N or the new one, never between, and a reader sees each round whole
// per call. A large round (ReplicaOptions.InPlaceBytes) is written in
// place instead, with the staged batches as its redo log: after a crash
// inside it the replica is at the old N with the round interrupted
// (InterruptedRound), and Redo writes it again (the package documentation
// has the argument).
//
// Concurrency: ApplyRound and Close are serialised. ReadBlock, ReadBlocks,
// Applied, Volume and BlockCount may run concurrently with them from any
// goroutine; a ReadBlock or ReadBlocks call sees each round entirely or not
// at all (the FileVolume's guarantee), but a reader that needs several
// calls to read from one N (the read-only filesystem) must not let a round
// run between them: the caller serialises such readers with ApplyRound.
//
// After an I/O error in ApplyRound the replica is failed: every later
// ApplyRound returns an error wrapping blockdev.ErrFailed, while reads go on
// until Close. Reopening recovers it.
type Replica struct {
	dir      string
	volume   string
	blocks   uint64 // blocks of the volume; the header is block blocks
	vol      *blockdev.FileVolume
	logger   *slog.Logger
	maxRound int64
	inPlace  int64 // ReplicaOptions.InPlaceBytes; negative: never

	// applied is the seq N the replica is at, durably. Only ApplyRound,
	// holding mu, writes it.
	applied atomic.Uint64
	// copied is set while the replica holds a copy whose applied seq is
	// not a validated point (replicaFlagCopied); the next round clears it.
	copied atomic.Bool
	// redoTo is the seq of the in-place round being written or
	// interrupted (the header's redoTo), 0 when none.
	redoTo atomic.Uint64
	// torn is set while the blocks are torn by an interrupted in-place
	// round (found at open, or left by a failed one): reads are refused.
	torn atomic.Bool

	// mu serialises ApplyRound and Close, and guards the fields below.
	mu     sync.Mutex
	failed error // the error that failed the replica
	closed bool
}

var (
	_ blockdev.Reader      = (*Replica)(nil)
	_ blockdev.RangeReader = (*Replica)(nil)
)

// CreateReplica makes a replica of blocks zero blocks of the volume named
// volume in dir, at N = 0, durably, and returns it open. dir must not exist
// (else the error wraps blockdev.ErrExists); its parent is created if
// needed. The replica is built in a directory beside dir (".new-" and dir's
// base name) and renamed into place once durable, so dir only ever holds a
// whole replica: a CreateReplica interrupted by a crash leaves no dir and
// may be repeated (it removes the leftover).
func CreateReplica(dir, volume string, blocks uint64, opts ReplicaOptions) (*Replica, error) {
	r, err := createReplica(dir, volume, blocks, opts)
	if err != nil {
		return nil, fmt.Errorf("create replica %q: %w", dir, err)
	}
	return r, nil
}

func createReplica(dir, volume string, blocks uint64, opts ReplicaOptions) (*Replica, error) {
	fsys := opts.FS
	if fsys == nil {
		fsys = blockdev.OSFS{}
	}
	switch _, err := fsys.Stat(LabelReplicaDir, filepath.Clean(dir)); {
	case err == nil:
		return nil, blockdev.ErrExists
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	b, err := buildReplica(dir, volume, blocks, opts)
	if err != nil {
		return nil, err
	}
	r, err := b.finish(context.Background(), 0, false)
	if err != nil {
		return nil, err
	}
	r.logger.Info("created replica", "blocks", blocks)
	return r, nil
}

// ReplicaBuilder builds a replica aside, from a copy of the volume's blocks
// and the batches after it, and puts it in place of the replica directory
// (an initial copy). Create it with BuildReplica; end with Finish or Abort.
// It is not safe for concurrent use.
type ReplicaBuilder struct {
	dir, tmp string
	volume   string
	blocks   uint64
	fsys     blockdev.FS
	opts     ReplicaOptions
	vol      *blockdev.FileVolume
}

// BuildReplica starts building a replica of blocks zero blocks of volume
// for dir, in a directory beside it (".new-" and dir's base name; a
// leftover of an interrupted build is removed). dir itself is untouched
// until Finish.
func BuildReplica(dir, volume string, blocks uint64, opts ReplicaOptions) (*ReplicaBuilder, error) {
	b, err := buildReplica(dir, volume, blocks, opts)
	if err != nil {
		return nil, fmt.Errorf("build replica %q: %w", dir, err)
	}
	return b, nil
}

func buildReplica(dir, volume string, blocks uint64, opts ReplicaOptions) (*ReplicaBuilder, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := wire.CheckVolumeName(volume); err != nil {
		return nil, err
	}
	if blocks == 0 || blocks >= blockdev.MaxBlocks {
		return nil, fmt.Errorf("block count %d not in [1, %d]", blocks, uint64(blockdev.MaxBlocks-1))
	}
	dir = filepath.Clean(dir)
	parent := filepath.Dir(dir)
	if parent == dir {
		return nil, errors.New("the root directory cannot hold a replica")
	}
	fsys := opts.FS
	if err := blockdev.MkdirAllDurable(fsys, LabelReplicaDir, parent); err != nil {
		return nil, err
	}
	tmp := filepath.Join(parent, newReplicaPrefix+filepath.Base(dir))
	if err := blockdev.RemoveAll(fsys, LabelReplicaDir, tmp); err != nil {
		return nil, fmt.Errorf("remove leftover %q: %w", tmp, err)
	}
	vol, err := blockdev.Create(tmp, blocks+1, opts.volumeOptions())
	if err != nil {
		return nil, err
	}
	return &ReplicaBuilder{dir: dir, tmp: tmp, volume: volume, blocks: blocks, fsys: fsys, opts: opts, vol: vol}, nil
}

// WriteBlocks writes len(data)/BlockSize blocks from block first (a chunk
// of the copy), as one batch, without syncing.
func (b *ReplicaBuilder) WriteBlocks(ctx context.Context, first uint64, data []byte) error {
	n := uint64(len(data) / blockdev.BlockSize)
	if len(data)%blockdev.BlockSize != 0 || first > b.blocks || n > b.blocks-first {
		return fmt.Errorf("build replica %q: write %d bytes at block %d of %d: %w", b.dir, len(data), first, b.blocks, blockdev.ErrOutOfRange)
	}
	batch := &blockdev.Batch{Writes: make([]blockdev.Write, n)}
	for i := range n {
		batch.Writes[i] = blockdev.Write{Index: first + i, Data: data[i*blockdev.BlockSize : (i+1)*blockdev.BlockSize]}
	}
	if err := b.vol.Apply(ctx, batch, blockdev.ApplyOptions{}); err != nil {
		return fmt.Errorf("build replica %q: %w", b.dir, err)
	}
	return nil
}

// ApplyBatch applies a committed batch of the volume (checked as
// ApplyRound checks them), without syncing.
func (b *ReplicaBuilder) ApplyBatch(ctx context.Context, cb *wire.CommittedBatch) error {
	if v := cb.GetBatch().GetVolume(); v != b.volume {
		return fmt.Errorf("build replica %q: %w: batch seq %d is for volume %q", b.dir, wire.ErrBadRequest, cb.GetSeq(), v)
	}
	if err := wire.CheckBatch(cb.GetBatch(), b.blocks); err != nil {
		return fmt.Errorf("build replica %q: batch seq %d: %w", b.dir, cb.GetSeq(), err)
	}
	batch := &blockdev.Batch{}
	for _, blk := range cb.GetBatch().GetBlocks() {
		batch.Writes = append(batch.Writes, blockdev.Write{Index: blk.GetIndex(), Data: blk.GetData()})
	}
	if err := b.vol.Apply(ctx, batch, blockdev.ApplyOptions{}); err != nil {
		return fmt.Errorf("build replica %q: %w", b.dir, err)
	}
	return nil
}

// Finish records that the blocks are the volume at seq n, a copy: the
// replica is not to be exposed (Exposable is false) until a round moves it
// to a validated point. It makes the replica durable, replaces the replica
// directory with it (a crash leaves the old directory, the new one, or
// none, never a mix; none means build again) and opens it.
func (b *ReplicaBuilder) Finish(ctx context.Context, n uint64) (*Replica, error) {
	r, err := b.finish(ctx, n, true)
	if err != nil {
		return nil, fmt.Errorf("build replica %q: %w", b.dir, err)
	}
	r.logger.Info("built replica from a copy", "blocks", b.blocks, "applied_seq", n)
	return r, nil
}

func (b *ReplicaBuilder) finish(ctx context.Context, n uint64, copied bool) (*Replica, error) {
	h := replicaHeader{volume: b.volume, blocks: b.blocks, applied: n, copied: copied}
	batch := &blockdev.Batch{Writes: []blockdev.Write{{Index: b.blocks, Data: h.encode()}}}
	err := b.vol.Apply(ctx, batch, blockdev.ApplyOptions{Sync: true})
	if cerr := b.vol.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("write header: %w", err)
	}
	if err := blockdev.RemoveAll(b.fsys, LabelReplicaDir, b.dir); err != nil {
		return nil, fmt.Errorf("remove the replica it replaces: %w", err)
	}
	if err := b.fsys.Rename(LabelReplicaDir, b.tmp, b.dir); err != nil {
		return nil, err
	}
	parent := filepath.Dir(b.dir)
	if err := b.fsys.SyncDir(LabelReplicaDir, parent); err != nil {
		return nil, fmt.Errorf("sync directory %q: %w", parent, err)
	}
	return openReplica(b.dir, b.opts)
}

// Seal records that the blocks are the volume at seq n, a copy not yet
// validated (as Finish does), makes the replica durable and closes it, but
// leaves it aside; it returns its directory, which InstallReplica puts in
// place later (a resync: the old replica keeps serving meanwhile). The
// builder is done.
func (b *ReplicaBuilder) Seal(ctx context.Context, n uint64) (string, error) {
	h := replicaHeader{volume: b.volume, blocks: b.blocks, applied: n, copied: true}
	batch := &blockdev.Batch{Writes: []blockdev.Write{{Index: b.blocks, Data: h.encode()}}}
	err := b.vol.Apply(ctx, batch, blockdev.ApplyOptions{Sync: true})
	if cerr := b.vol.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("build replica %q: write header: %w", b.dir, err)
	}
	return b.tmp, nil
}

// oldReplicaPrefix starts the name of the directory, beside the replica's,
// that InstallReplica moves the replica it replaces to.
const oldReplicaPrefix = ".old-"

// InstallReplica replaces the replica in dir (closed) by the sealed one in
// aside, durably, and opens it. The old replica is moved beside dir
// (".old-" and dir's base name) first and removed last, so that after a
// crash dir holds the old replica, the new one, or none with the old one
// beside it, which RecoverReplica puts back.
func InstallReplica(dir, aside string, opts ReplicaOptions) (*Replica, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	fsys := opts.FS
	dir = filepath.Clean(dir)
	parent := filepath.Dir(dir)
	old := filepath.Join(parent, oldReplicaPrefix+filepath.Base(dir))
	if err := blockdev.RemoveAll(fsys, LabelReplicaDir, old); err != nil {
		return nil, fmt.Errorf("install replica %q: remove leftover %q: %w", dir, old, err)
	}
	if err := fsys.Rename(LabelReplicaDir, dir, old); err != nil {
		return nil, fmt.Errorf("install replica %q: %w", dir, err)
	}
	if err := fsys.Rename(LabelReplicaDir, aside, dir); err != nil {
		return nil, fmt.Errorf("install replica %q: %w", dir, err)
	}
	if err := fsys.SyncDir(LabelReplicaDir, parent); err != nil {
		return nil, fmt.Errorf("install replica %q: sync directory %q: %w", dir, parent, err)
	}
	if err := blockdev.RemoveAll(fsys, LabelReplicaDir, old); err != nil {
		return nil, fmt.Errorf("install replica %q: remove the old one: %w", dir, err)
	}
	r, err := openReplica(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("install replica %q: %w", dir, err)
	}
	return r, nil
}

// RecoverReplica finishes or undoes an InstallReplica a crash interrupted:
// a replica moved aside while dir is missing is put back; one left beside a
// complete dir is removed.
func RecoverReplica(dir string, opts ReplicaOptions) error {
	fsys := opts.FS
	if fsys == nil {
		fsys = blockdev.OSFS{}
	}
	dir = filepath.Clean(dir)
	parent := filepath.Dir(dir)
	old := filepath.Join(parent, oldReplicaPrefix+filepath.Base(dir))
	if _, err := fsys.Stat(LabelReplicaDir, old); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	switch _, err := fsys.Stat(LabelReplicaDir, dir); {
	case errors.Is(err, fs.ErrNotExist):
		if err := fsys.Rename(LabelReplicaDir, old, dir); err != nil {
			return fmt.Errorf("recover replica %q: %w", dir, err)
		}
		return fsys.SyncDir(LabelReplicaDir, parent)
	case err != nil:
		return err
	}
	return blockdev.RemoveAll(fsys, LabelReplicaDir, old)
}

// Abort drops what was built.
func (b *ReplicaBuilder) Abort() error {
	b.vol.Close()
	if err := blockdev.RemoveAll(b.fsys, LabelReplicaDir, b.tmp); err != nil {
		return fmt.Errorf("build replica %q: remove %q: %w", b.dir, b.tmp, err)
	}
	return nil
}

// OpenReplica opens the replica in dir: it opens (and so recovers) its
// FileVolume and checks the header: magic, CRC, version, a valid volume
// name and a block count one less than the FileVolume's. A damaged header
// gives an error wrapping blockdev.ErrCorrupt, an intact header of an
// unknown version one wrapping blockdev.ErrVersion; a directory without a
// volume gives one wrapping fs.ErrNotExist. Errors name dir.
func OpenReplica(dir string, opts ReplicaOptions) (*Replica, error) {
	r, err := openReplica(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open replica %q: %w", dir, err)
	}
	return r, nil
}

func openReplica(dir string, opts ReplicaOptions) (*Replica, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	vol, err := blockdev.Open(dir, opts.volumeOptions())
	if err != nil {
		return nil, err
	}
	h, err := readReplicaHeader(vol)
	if err != nil {
		vol.Close()
		return nil, err
	}
	r := &Replica{
		dir:      dir,
		volume:   h.volume,
		blocks:   h.blocks,
		vol:      vol,
		logger:   opts.Logger.With("replica", dir, "volume", h.volume),
		maxRound: opts.MaxRoundBytes,
		inPlace:  opts.InPlaceBytes,
	}
	r.applied.Store(h.applied)
	r.copied.Store(h.copied)
	r.redoTo.Store(h.redoTo)
	r.torn.Store(h.redoTo != 0)
	if h.redoTo != 0 {
		r.logger.Warn("opened replica with an interrupted in-place round: it must be redone from the staged batches",
			"blocks", h.blocks, "applied_seq", h.applied, "round", h.redoTo)
		return r, nil
	}
	r.logger.Info("opened replica", "blocks", h.blocks, "applied_seq", h.applied, "copied", h.copied)
	return r, nil
}

// readReplicaHeader reads the header block of a freshly opened FileVolume
// and checks it against the volume's size.
func readReplicaHeader(vol *blockdev.FileVolume) (replicaHeader, error) {
	n := vol.BlockCount()
	if n < 2 {
		return replicaHeader{}, fmt.Errorf("%d blocks, too few for data and a header: %w", n, blockdev.ErrCorrupt)
	}
	p := make([]byte, blockdev.BlockSize)
	if err := vol.ReadBlock(n-1, p); err != nil {
		return replicaHeader{}, fmt.Errorf("read header: %w", err)
	}
	h, err := decodeReplicaHeader(p)
	if err != nil {
		return h, err
	}
	if h.blocks != n-1 {
		return h, fmt.Errorf("header says %d blocks, the volume holds %d and the header: %w", h.blocks, n-1, blockdev.ErrCorrupt)
	}
	return h, nil
}

// Volume returns the name of the volume the replica is a copy of.
func (r *Replica) Volume() string { return r.volume }

// Applied returns the seq N the replica is at, durably: every batch of the
// volume with seq <= N is in its blocks, none after. After a failed
// ApplyRound it stays at the N before the round, even if readers see the
// round (see ApplyRound).
func (r *Replica) Applied() uint64 { return r.applied.Load() }

// Exposable reports whether the replica's applied seq is a validated point
// that may be shown: false for a replica built from a copy until a round
// (ApplyRound, also one to its own seq) validated it.
func (r *Replica) Exposable() bool { return !r.copied.Load() }

// BlockCount returns the number of blocks of the volume, without the
// header. It implements blockdev.Reader.
func (r *Replica) BlockCount() uint64 { return r.blocks }

// ReadBlock reads block index (below BlockCount: the header is not
// readable) into p, of exactly blockdev.BlockSize bytes. It implements
// blockdev.Reader and may run concurrently with every other method.
func (r *Replica) ReadBlock(index uint64, p []byte) error {
	if err := r.readable(); err != nil {
		return err
	}
	if index >= r.blocks {
		return fmt.Errorf("read block %d of replica %q with %d blocks: %w", index, r.dir, r.blocks, blockdev.ErrOutOfRange)
	}
	if err := r.vol.ReadBlock(index, p); err != nil {
		return fmt.Errorf("read replica %q: %w", r.dir, err)
	}
	return nil
}

// ReadBlocks reads len(p)/blockdev.BlockSize consecutive blocks, the first
// at index first, into p, whose length must be a multiple of
// blockdev.BlockSize; they must all lie below BlockCount. It implements
// blockdev.RangeReader and may run concurrently with every other method.
func (r *Replica) ReadBlocks(first uint64, p []byte) error {
	if len(p)%blockdev.BlockSize != 0 {
		return fmt.Errorf("read blocks from %d of replica %q: buffer of %d bytes: %w", first, r.dir, len(p), blockdev.ErrBadBlock)
	}
	n := uint64(len(p) / blockdev.BlockSize)
	if first >= r.blocks || n > r.blocks-first {
		return fmt.Errorf("read %d blocks from %d of replica %q with %d blocks: %w", n, first, r.dir, r.blocks, blockdev.ErrOutOfRange)
	}
	if err := r.readable(); err != nil {
		return err
	}
	if err := r.vol.ReadBlocks(first, p); err != nil {
		return fmt.Errorf("read replica %q: %w", r.dir, err)
	}
	return nil
}

// ApplyRound moves the replica to seq n, a validated point, and returns the indices of the
// blocks it wrote (each once, in no particular order), which is what a
// read-only filesystem over the replica must drop from its caches. It applies every batch from
// batches with Applied() < seq <= n, in seq order, together with the
// header recording n, as one blockdev Apply with Sync, so that after a
// crash the replica is at the old N or at n, never between; then Applied()
// is n. batches must yield the volume's batches in increasing seq order,
// none above n (Stage.Batches(r.Applied(), n) does); those at or below
// Applied() are skipped (a VALIDATE re-sent after a restart), though
// checked like the others. n == Applied() does nothing (on a replica built from a copy it records that n is validated: Exposable turns true); n below it is
// refused with ErrStaleRound. A round without batches only moves N.
//
// Every batch must be of the replica's volume and pass wire.CheckBatch
// against BlockCount, its CRC included. A refused batch (an error wrapping
// wire.ErrBadRequest or wire.ErrBadCRC), an error yielded by batches, a
// round whose batches hold more than ReplicaOptions.MaxRoundBytes block
// bytes (ErrRoundTooLarge) or a cancelled ctx stops ApplyRound before it
// writes anything: the replica stays at its N, unchanged. When two batches
// write one block, the later one wins.
//
// Memory: the round is held in memory once, up to MaxRoundBytes: the data
// slices of the blocks of its batches, which ApplyRound takes ownership of
// without copying them (a block written again in the round drops its
// earlier data). The FileVolume encodes them into one intent log record (a
// transient copy while it writes) and keeps them until its next checkpoint.
//
// An I/O error during the Apply fails the replica (fail-stop): this and
// every later ApplyRound return an error wrapping blockdev.ErrFailed, and
// Applied() stays at the old N, the last one known durable. Readers may
// then see the old N or n, each whole; a reopen recovers one of them.
func (r *Replica) ApplyRound(ctx context.Context, n uint64, batches iter.Seq2[*wire.CommittedBatch, error]) ([]uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	changed, err := r.applyRoundLocked(ctx, n, batches)
	if err != nil {
		return nil, fmt.Errorf("apply round %d to replica %q: %w", n, r.dir, err)
	}
	return changed, nil
}

func (r *Replica) applyRoundLocked(ctx context.Context, n uint64, batches iter.Seq2[*wire.CommittedBatch, error]) ([]uint64, error) {
	switch {
	case r.closed:
		return nil, blockdev.ErrClosed
	case r.failed != nil:
		return nil, fmt.Errorf("%w: %w", blockdev.ErrFailed, r.failed)
	case r.redoTo.Load() != 0:
		return nil, fmt.Errorf("%w to seq %d: redo it first", ErrInterruptedRound, r.redoTo.Load())
	}
	applied := r.applied.Load()
	switch {
	case n < applied:
		return nil, fmt.Errorf("%w: replica at seq %d", ErrStaleRound, applied)
	case n == applied && !r.copied.Load():
		return nil, nil
	}
	round, err := r.collect(ctx, applied, n, batches)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	changed := make([]uint64, len(round.writes))
	for i, w := range round.writes {
		changed[i] = w.Index
	}
	if r.inPlace >= 0 && round.bytes >= r.inPlace {
		if err := r.applyInPlace(ctx, applied, n, round); err != nil {
			return nil, err
		}
		return changed, nil
	}
	h := replicaHeader{volume: r.volume, blocks: r.blocks, applied: n}
	round.writes = append(round.writes, blockdev.Write{Index: r.blocks, Data: h.encode()})
	if err := r.vol.Apply(ctx, &blockdev.Batch{Writes: round.writes}, blockdev.ApplyOptions{Sync: true}); err != nil {
		// Only a cancelled context stops the FileVolume before it writes;
		// after any other error the round may or may not be there.
		if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) && !errors.Is(err, blockdev.ErrFailed) {
			return nil, err
		}
		r.failed = err
		r.logger.Error("replica failed: refusing rounds until reopened", "applied_seq", applied, "round", n, "err", err)
		return nil, fmt.Errorf("%w: %w", blockdev.ErrFailed, err)
	}
	r.applied.Store(n)
	r.copied.Store(false)
	r.logger.Debug("applied round", "applied_seq", n, "previous", applied,
		"batches", round.batches, "skipped", round.skipped, "writes", len(round.writes)-1)
	return changed, nil
}

// round is what collect gathers of a round.
type round struct {
	writes  []blockdev.Write // one per block, the data of the last batch writing it
	bytes   int64            // block bytes of the batches applied
	batches int              // batches applied
	skipped int              // batches at or below the applied seq
}

// applyInPlace writes round, from applied to n, in place: a header that
// records the round as started (redoTo n), durably through the intent
// log; the round's blocks straight into the data file, synced
// (FileVolume.WriteInPlace); then the header recording n. A crash between
// the first and the last step leaves the blocks torn and the header saying
// so: the replica then refuses reads and rounds until Redo writes the
// round again from the staged batches, which the stage keeps until the
// replica applied them. The caller holds mu.
func (r *Replica) applyInPlace(ctx context.Context, applied, n uint64, rd round) error {
	copied := r.copied.Load()
	start := replicaHeader{volume: r.volume, blocks: r.blocks, applied: applied, copied: copied, redoTo: n}
	if err := r.writeHeader(ctx, start); err != nil {
		return r.failRound(ctx, applied, n, err)
	}
	r.redoTo.Store(n)
	if err := r.vol.WriteInPlace(ctx, rd.writes); err != nil {
		return r.failRound(ctx, applied, n, err)
	}
	if err := r.writeHeader(ctx, replicaHeader{volume: r.volume, blocks: r.blocks, applied: n}); err != nil {
		return r.failRound(ctx, applied, n, err)
	}
	r.applied.Store(n)
	r.copied.Store(false)
	r.redoTo.Store(0)
	r.torn.Store(false)
	r.logger.Debug("applied round in place", "applied_seq", n, "previous", applied,
		"batches", rd.batches, "skipped", rd.skipped, "writes", len(rd.writes), "bytes", rd.bytes)
	return nil
}

// writeHeader writes h durably through the intent log.
func (r *Replica) writeHeader(ctx context.Context, h replicaHeader) error {
	b := &blockdev.Batch{Writes: []blockdev.Write{{Index: r.blocks, Data: h.encode()}}}
	return r.vol.Apply(ctx, b, blockdev.ApplyOptions{Sync: true})
}

// failRound fails the replica after an error in a round from applied to
// n, unless only a cancelled ctx stopped the FileVolume before it wrote.
func (r *Replica) failRound(ctx context.Context, applied, n uint64, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) && !errors.Is(err, blockdev.ErrFailed) && r.redoTo.Load() == 0 {
		return err
	}
	r.failed = err
	if r.redoTo.Load() != 0 {
		r.torn.Store(true)
	}
	r.logger.Error("replica failed: refusing rounds until reopened", "applied_seq", applied, "round", n, "err", err)
	return fmt.Errorf("%w: %w", blockdev.ErrFailed, err)
}

// readable returns the error reads get while the blocks are torn by an
// interrupted in-place round, nil otherwise.
func (r *Replica) readable() error {
	if r.torn.Load() {
		return fmt.Errorf("read replica %q: %w to seq %d: its blocks are torn until it is redone", r.dir, ErrInterruptedRound, r.redoTo.Load())
	}
	return nil
}

// InterruptedRound returns the in-place round a crash or an error
// interrupted: from the applied seq to seq to, whose batches Redo needs;
// ok is false when there is none.
func (r *Replica) InterruptedRound() (from, to uint64, ok bool) {
	to = r.redoTo.Load()
	return r.applied.Load(), to, to != 0
}

// Redo writes the interrupted in-place round again (InterruptedRound) from
// batches, which must yield the volume's batches from the applied seq to
// the round's seq (Stage.Batches does), and returns the blocks it wrote,
// like ApplyRound. Without an interrupted round it does nothing.
func (r *Replica) Redo(ctx context.Context, batches iter.Seq2[*wire.CommittedBatch, error]) ([]uint64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case r.closed:
		return nil, fmt.Errorf("redo the round of replica %q: %w", r.dir, blockdev.ErrClosed)
	case r.failed != nil:
		return nil, fmt.Errorf("redo the round of replica %q: %w: %w", r.dir, blockdev.ErrFailed, r.failed)
	}
	applied, n, ok := r.InterruptedRound()
	if !ok {
		return nil, nil
	}
	rd, err := r.collect(ctx, applied, n, batches)
	if err != nil {
		return nil, fmt.Errorf("redo round %d of replica %q: %w", n, r.dir, err)
	}
	changed := make([]uint64, len(rd.writes))
	for i, w := range rd.writes {
		changed[i] = w.Index
	}
	if err := r.applyInPlace(ctx, applied, n, rd); err != nil {
		return nil, fmt.Errorf("redo round %d of replica %q: %w", n, r.dir, err)
	}
	r.logger.Info("redid the interrupted in-place round", "applied_seq", n, "previous", applied, "writes", len(rd.writes))
	return changed, nil
}

// collect reads the batches of a round from applied to n, checks them, and
// gathers the writes of those above applied.
func (r *Replica) collect(ctx context.Context, applied, n uint64, batches iter.Seq2[*wire.CommittedBatch, error]) (round, error) {
	var (
		rd    round
		pos   = map[uint64]int{} // block index -> its write in rd.writes
		bytes int64
		prev  uint64
	)
	for cb, err := range batches {
		if err != nil {
			return rd, fmt.Errorf("read batches: %w", err)
		}
		if err := ctx.Err(); err != nil {
			return rd, err
		}
		if err := r.checkBatch(cb, prev, n); err != nil {
			return rd, err
		}
		prev = cb.GetSeq()
		if prev <= applied {
			rd.skipped++
			continue
		}
		bytes += int64(wire.BatchBytes(cb.GetBatch()))
		rd.bytes = bytes
		if bytes > r.maxRound {
			return rd, fmt.Errorf("%w: more than %d block bytes by batch seq %d", ErrRoundTooLarge, r.maxRound, prev)
		}
		for _, blk := range cb.GetBatch().GetBlocks() {
			if i, ok := pos[blk.GetIndex()]; ok {
				rd.writes[i].Data = blk.GetData()
				continue
			}
			pos[blk.GetIndex()] = len(rd.writes)
			rd.writes = append(rd.writes, blockdev.Write{Index: blk.GetIndex(), Data: blk.GetData()})
		}
		rd.batches++
	}
	return rd, nil
}

// checkBatch checks a batch of a round to n that follows the batch of seq
// prev (0 for the first one).
func (r *Replica) checkBatch(cb *wire.CommittedBatch, prev, n uint64) error {
	if cb == nil {
		return fmt.Errorf("%w: missing batch after seq %d", wire.ErrBadRequest, prev)
	}
	seq := cb.GetSeq()
	switch {
	case seq == 0:
		return fmt.Errorf("%w: batch with seq 0", wire.ErrBadRequest)
	case seq <= prev:
		return fmt.Errorf("%w: batch seq %d after seq %d: seqs must increase", wire.ErrBadRequest, seq, prev)
	case seq > n:
		return fmt.Errorf("%w: batch seq %d is above the round's seq", wire.ErrBadRequest, seq)
	}
	if v := cb.GetBatch().GetVolume(); v != r.volume {
		return fmt.Errorf("%w: batch seq %d is for volume %q, not %q", wire.ErrBadRequest, seq, v, r.volume)
	}
	if err := wire.CheckBatch(cb.GetBatch(), r.blocks); err != nil {
		return fmt.Errorf("batch seq %d: %w", seq, err)
	}
	return nil
}

// Close closes the replica. It waits for a running ApplyRound; every later
// ApplyRound and read returns an error wrapping blockdev.ErrClosed. Every
// round ApplyRound returned nil for is durable already.
func (r *Replica) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return fmt.Errorf("close replica %q: %w", r.dir, blockdev.ErrClosed)
	}
	r.closed = true
	if err := r.vol.Close(); err != nil {
		return fmt.Errorf("close replica %q: %w", r.dir, err)
	}
	return nil
}

// The header block, the last block of the FileVolume. Every integer is
// little-endian; the package documentation describes it.
const (
	replicaMagic   = "TRIREPH\x00"
	replicaVersion = 1
	// replicaVersionRedo is the version of a header that records an
	// interrupted in-place round (redoTo, at replicaRedoOff); a header
	// without one is written as version 1.
	replicaVersionRedo = 2
	replicaNameOff     = 34
	replicaRedoOff     = blockdev.BlockSize - 12
	replicaCRCOff      = blockdev.BlockSize - 4
)

// replicaFlagCopied is the header flag of a replica built from a copy
// (ReplicaBuilder): its applied seq is not a validated point yet, so it is
// not exposed. The next round clears it.
const replicaFlagCopied = 1

// replicaHeader is the decoded header block of a replica.
type replicaHeader struct {
	volume  string
	blocks  uint64 // blocks of the volume, without the header
	applied uint64 // the seq N the blocks are at
	copied  bool   // replicaFlagCopied
	// redoTo, when not 0, is the seq of an in-place round from applied
	// that was started and may be partly written: the blocks are torn
	// until Redo applies the round again.
	redoTo uint64
}

// encode returns the header block.
func (h replicaHeader) encode() []byte {
	p := make([]byte, blockdev.BlockSize)
	copy(p, replicaMagic)
	binary.LittleEndian.PutUint32(p[8:], replicaVersion)
	if h.redoTo != 0 {
		binary.LittleEndian.PutUint32(p[8:], replicaVersionRedo)
		binary.LittleEndian.PutUint64(p[replicaRedoOff:], h.redoTo)
	}
	if h.copied {
		binary.LittleEndian.PutUint32(p[12:], replicaFlagCopied)
	}
	binary.LittleEndian.PutUint64(p[16:], h.blocks)
	binary.LittleEndian.PutUint64(p[24:], h.applied)
	binary.LittleEndian.PutUint16(p[32:], uint16(len(h.volume)))
	copy(p[replicaNameOff:], h.volume)
	binary.LittleEndian.PutUint32(p[replicaCRCOff:], crc32.Checksum(p[:replicaCRCOff], castagnoli))
	return p
}

// decodeReplicaHeader decodes and checks a header block. The magic, the
// version and the CRC stay where they are in every version, so an intact
// header of another version is told from a damaged one: the error wraps
// blockdev.ErrVersion for the first, blockdev.ErrCorrupt for the second.
func decodeReplicaHeader(p []byte) (replicaHeader, error) {
	var h replicaHeader
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("replica header: %s: %w", fmt.Sprintf(format, args...), blockdev.ErrCorrupt)
	}
	if len(p) != blockdev.BlockSize {
		return h, corrupt("%d bytes", len(p))
	}
	if string(p[:8]) != replicaMagic {
		return h, corrupt("magic %q", p[:8])
	}
	if got, want := crc32.Checksum(p[:replicaCRCOff], castagnoli), binary.LittleEndian.Uint32(p[replicaCRCOff:]); got != want {
		return h, corrupt("crc %08x, computed %08x", want, got)
	}
	end := replicaCRCOff
	switch v := binary.LittleEndian.Uint32(p[8:]); v {
	case replicaVersion:
	case replicaVersionRedo:
		h.redoTo, end = binary.LittleEndian.Uint64(p[replicaRedoOff:]), replicaRedoOff
		if h.redoTo == 0 {
			return h, corrupt("version %d without an interrupted round", replicaVersionRedo)
		}
	default:
		return h, fmt.Errorf("replica header: version %d, want %d or %d: %w", v, replicaVersion, replicaVersionRedo, blockdev.ErrVersion)
	}
	flags := binary.LittleEndian.Uint32(p[12:])
	if flags&^replicaFlagCopied != 0 {
		return h, corrupt("unknown flags %#x", flags)
	}
	h.copied = flags&replicaFlagCopied != 0
	h.blocks = binary.LittleEndian.Uint64(p[16:])
	if h.blocks == 0 || h.blocks >= blockdev.MaxBlocks {
		return h, corrupt("block count %d", h.blocks)
	}
	h.applied = binary.LittleEndian.Uint64(p[24:])
	n := int(binary.LittleEndian.Uint16(p[32:]))
	if n > wire.MaxVolumeName {
		return h, corrupt("volume name of %d bytes", n)
	}
	name := string(p[replicaNameOff : replicaNameOff+n])
	if err := wire.CheckVolumeName(name); err != nil {
		return h, corrupt("%v", err)
	}
	if !allZero(p[replicaNameOff+n : end]) {
		return h, corrupt("bytes set after the volume name")
	}
	if h.redoTo != 0 && h.redoTo <= h.applied {
		return h, corrupt("interrupted round to seq %d, not above the applied seq %d", h.redoTo, h.applied)
	}
	h.volume = name
	return h, nil
}

// PrimaryVolume returns the replica's blocks as a blockdev.Volume of the
// volume's size (the header block is out of its reach), for a promoted
// replica that becomes its volume's primary: the mirror writes through it.
// Use it only once no round runs any more (Secondary.Promote stopped the
// applier); its Close does nothing (Replica.Close closes the blocks).
func (r *Replica) PrimaryVolume() blockdev.Volume { return primaryVolume{r} }

// primaryVolume is the Volume of PrimaryVolume.
type primaryVolume struct{ *Replica }

var _ blockdev.RangeReader = primaryVolume{}

// Apply implements blockdev.Volume.
func (v primaryVolume) Apply(ctx context.Context, b *blockdev.Batch, opts blockdev.ApplyOptions) error {
	if err := b.Validate(v.blocks); err != nil {
		return fmt.Errorf("apply to promoted replica %q: %w", v.dir, err)
	}
	return v.vol.Apply(ctx, b, opts)
}

// Sync implements blockdev.Volume.
func (v primaryVolume) Sync(ctx context.Context) error { return v.vol.Sync(ctx) }

// Close implements blockdev.Volume: the Replica owns the blocks.
func (v primaryVolume) Close() error { return nil }
