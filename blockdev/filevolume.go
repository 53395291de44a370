package blockdev

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// Names of the files of a volume directory.
const (
	metaName  = "volume.meta"
	dataName  = "volume.data"
	logName   = "volume.log"
	lockName  = "volume.lock"
	tmpSuffix = ".tmp"
)

// DefaultCheckpointBytes is the intent log size past which a FileVolume
// checkpoints when Options.CheckpointBytes is zero.
const DefaultCheckpointBytes = 64 << 20

// Options configure Create and Open.
type Options struct {
	// FS is the file system the volume lives on; nil means OSFS.
	FS FS
	// Logger receives the volume's logs; nil means slog.Default().
	Logger *slog.Logger
	// CheckpointBytes is the intent log size that triggers a checkpoint at
	// the end of an Apply; 0 means DefaultCheckpointBytes. The batches of
	// the log are also held in memory until the checkpoint, so this bounds
	// the memory of the volume too.
	CheckpointBytes int64
}

func (o Options) withDefaults() (Options, error) {
	if o.FS == nil {
		o.FS = OSFS{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case o.CheckpointBytes == 0:
		o.CheckpointBytes = DefaultCheckpointBytes
	case o.CheckpointBytes < 0:
		return o, fmt.Errorf("checkpoint bytes %d is negative", o.CheckpointBytes)
	}
	return o, nil
}

// maxKeptBuffer is the largest record buffer a FileVolume keeps for reuse.
const maxKeptBuffer = 4 << 20

// maxRunBlocks is the largest number of consecutive blocks a checkpoint
// writes to the data file in one call.
const maxRunBlocks = 256

// FileVolume is a Volume stored in a directory of an FS, with atomic batches
// by a write-ahead intent log; see docs/ARCHITECTURE.md for the layout, the
// recovery and the guarantees.
//
// Apply appends the batch's record to the intent log with one write and
// keeps its blocks in memory, where readers find them; the data file is
// written only by checkpoints, once the records are durable. Sync fsyncs the
// intent log. Close neither syncs nor checkpoints: the next Open replays the
// log, whatever of it survived.
//
// After an I/O error in Apply, Sync or Checkpoint, the volume is failed:
// every later Apply, Sync and Checkpoint returns an error wrapping ErrFailed
// (fail-stop). ReadBlock keeps serving what Apply made visible until Close.
// Reopening the volume recovers it.
type FileVolume struct {
	fsys            FS
	dir             string
	logger          *slog.Logger
	blocks          uint64
	uuid            [16]byte
	checkpointBytes int64
	lock            io.Closer

	// syncMu serialises Sync calls: one fsyncs the log outside mu while the
	// others wait here, and usually find their records synced when they get
	// in (group sync).
	syncMu sync.Mutex

	// mu serialises Apply, Checkpoint and Close (and Sync's bookkeeping),
	// and guards the fields below.
	mu      sync.Mutex
	logf    File
	logSize int64  // offset of the next record
	gen     uint64 // generation of the log file
	nextSeq uint64 // seq of the next record
	synced  uint64 // every record with seq <= synced is durable
	failed  error  // the error that failed the volume
	buf     []byte // record encoding buffer
	scratch []byte // checkpoint write buffer

	// rw guards overlay and closed. ReadBlock holds it for reading across
	// its read of the data file, so that a block it finds missing from
	// overlay cannot be added and then written in place by a checkpoint
	// during the read. It is written only by holders of mu.
	rw      sync.RWMutex
	overlay map[uint64][]byte // blocks of the log's records, latest data
	data    File
	closed  bool
}

var _ Volume = (*FileVolume)(nil)

// Exists reports whether dir holds a volume (its meta file), so that a caller
// can tell an empty directory to format from a volume to open. A nil fsys
// means OSFS. It reports false for a directory that does not exist.
func Exists(dir string, fsys FS) (bool, error) {
	if fsys == nil {
		fsys = OSFS{}
	}
	_, err := fsys.Stat(LabelMeta, filepath.Join(dir, metaName))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("check for volume in %q: %w", dir, err)
	}
}

// Create makes a volume of blocks zero blocks in dir, creating dir if needed,
// and returns it open. It fails with an error wrapping ErrExists if dir
// already holds a volume. A Create interrupted by a crash leaves no volume
// (Exists reports false) and may be repeated.
func Create(dir string, blocks uint64, opts Options) (*FileVolume, error) {
	v, err := create(dir, blocks, opts)
	if err != nil {
		return nil, fmt.Errorf("create volume %q: %w", dir, err)
	}
	return v, nil
}

func create(dir string, blocks uint64, opts Options) (_ *FileVolume, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if blocks == 0 || blocks > MaxBlocks {
		return nil, fmt.Errorf("block count %d not in [1, %d]", blocks, uint64(MaxBlocks))
	}
	fsys := opts.FS
	if err := MkdirAllDurable(fsys, LabelDir, dir); err != nil {
		return nil, err
	}
	v := newFileVolume(dir, opts)
	if v.lock, err = fsys.Lock(LabelLock, v.path(lockName)); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			v.closeFiles()
		}
	}()
	switch ok, err := Exists(dir, fsys); {
	case err != nil:
		return nil, err
	case ok:
		return nil, ErrExists
	}
	if v.uuid, err = newUUID(); err != nil {
		return nil, err
	}
	v.blocks = blocks

	dataPath := v.path(dataName)
	if v.data, err = fsys.OpenFile(LabelData, dataPath, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600); err != nil {
		return nil, err
	}
	if err := v.data.Truncate(int64(blocks) * BlockSize); err != nil {
		return nil, fmt.Errorf("size data file %q: %w", dataPath, err)
	}
	if err := v.data.Sync(); err != nil {
		return nil, fmt.Errorf("sync data file %q: %w", dataPath, err)
	}
	// The new log's SyncDir also makes the data file's entry durable.
	if v.logf, err = v.newLog(1, 1); err != nil {
		return nil, err
	}
	v.gen, v.nextSeq, v.logSize = 1, 1, logHeaderSize
	// The meta file goes last: it is what makes the directory a volume.
	if err := writeFileAtomic(fsys, LabelMeta, v.path(metaName), volumeMeta{blocks: blocks, uuid: v.uuid}.encode()); err != nil {
		return nil, err
	}
	v.logger.Info("created volume", "uuid", formatUUID(v.uuid), "blocks", blocks)
	return v, nil
}

// Open opens the volume in dir and recovers it: it replays into the data file
// the intent log's records up to the first that is torn or invalid, makes the
// data file durable, and starts a new log. A directory without a volume gives
// an error wrapping fs.ErrNotExist.
func Open(dir string, opts Options) (*FileVolume, error) {
	v, err := open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open volume %q: %w", dir, err)
	}
	return v, nil
}

func open(dir string, opts Options) (_ *FileVolume, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	fsys := opts.FS
	v := newFileVolume(dir, opts)
	if v.lock, err = fsys.Lock(LabelLock, v.path(lockName)); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			v.closeFiles()
		}
	}()
	meta, err := readMeta(fsys, v.path(metaName))
	if err != nil {
		return nil, err
	}
	v.blocks, v.uuid = meta.blocks, meta.uuid

	dataPath := v.path(dataName)
	if v.data, err = fsys.OpenFile(LabelData, dataPath, os.O_RDWR, 0); err != nil {
		return nil, err
	}
	size, err := v.data.Size()
	if err != nil {
		return nil, fmt.Errorf("size of data file %q: %w", dataPath, err)
	}
	if size != int64(v.blocks)*BlockSize {
		return nil, fmt.Errorf("data file %q has %d bytes, want %d: %w", dataPath, size, int64(v.blocks)*BlockSize, ErrCorrupt)
	}
	if err := v.recover(); err != nil {
		return nil, err
	}
	return v, nil
}

func newFileVolume(dir string, opts Options) *FileVolume {
	return &FileVolume{
		fsys:            opts.FS,
		dir:             dir,
		logger:          opts.Logger.With("volume", dir),
		checkpointBytes: opts.CheckpointBytes,
		overlay:         map[uint64][]byte{},
	}
}

func (v *FileVolume) path(name string) string { return filepath.Join(v.dir, name) }

// readMeta reads and checks the meta file at name.
func readMeta(fsys FS, name string) (volumeMeta, error) {
	b, err := readSmallFile(fsys, LabelMeta, name, metaSize)
	if err != nil {
		return volumeMeta{}, err
	}
	m, err := decodeMeta(b)
	if err != nil {
		return m, fmt.Errorf("meta file %q: %w", name, err)
	}
	return m, nil
}

// readSmallFile reads the whole of name, which must not exceed limit bytes.
func readSmallFile(fsys FS, label, name string, limit int64) ([]byte, error) {
	f, err := fsys.OpenFile(label, name, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, fmt.Errorf("size of %q: %w", name, err)
	}
	if size > limit {
		return nil, fmt.Errorf("%q has %d bytes, more than %d: %w", name, size, limit, ErrCorrupt)
	}
	b := make([]byte, size)
	if err := readFull(f, b, 0); err != nil {
		return nil, fmt.Errorf("read %q: %w", name, err)
	}
	return b, nil
}

// recover replays the intent log into the data file and, if the log held
// anything past its header, makes the data file durable and starts a new log
// generation. It sets the log fields of v.
func (v *FileVolume) recover() error {
	logPath := v.path(logName)
	f, err := v.fsys.OpenFile(LabelLog, logPath, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	v.logf = f
	size, err := f.Size()
	if err != nil {
		return fmt.Errorf("size of intent log %q: %w", logPath, err)
	}
	hdrBytes := make([]byte, min(size, logHeaderSize))
	if err := readFull(f, hdrBytes, 0); err != nil {
		return fmt.Errorf("read intent log %q: %w", logPath, err)
	}
	hdr, err := decodeLogHeader(hdrBytes)
	if err != nil {
		return fmt.Errorf("intent log %q: %w", logPath, err)
	}
	if hdr.uuid != v.uuid {
		return fmt.Errorf("intent log %q belongs to volume %s, not %s: %w", logPath, formatUUID(hdr.uuid), formatUUID(v.uuid), ErrCorrupt)
	}
	v.gen, v.nextSeq, v.logSize = hdr.gen, hdr.startSeq, logHeaderSize
	v.synced = hdr.startSeq - 1 // older generations are in the data file
	if size == logHeaderSize {
		return nil
	}

	lr := newLogReader(f, size, hdr, v.blocks)
	records, writes := 0, 0
	for {
		rec, err := lr.next()
		var tail *tailError
		switch {
		case err == nil:
		case errors.Is(err, errEndOfLog):
		case errors.As(err, &tail):
			claim, cerr := lr.syncClaim(f)
			if cerr != nil {
				return fmt.Errorf("read intent log %q: %w", logPath, cerr)
			}
			if claim != 0 {
				return fmt.Errorf("intent log %q record seq %d at offset %d: %s, but record seq %d says it was synced: %w",
					logPath, lr.seq, lr.off, tail.reason, claim, ErrCorrupt)
			}
			v.logger.Info("discarding intent log tail", "offset", lr.off, "bytes", size-lr.off, "reason", tail.reason, "seq", lr.seq)
		default:
			return fmt.Errorf("intent log %q record seq %d at offset %d: %w", logPath, lr.seq, lr.off, err)
		}
		if err != nil {
			break
		}
		for i := range rec.count() {
			idx := rec.index(i)
			if _, err := v.data.WriteAt(rec.block(i), int64(idx)*BlockSize); err != nil {
				return fmt.Errorf("redo intent log %q record seq %d to data file: %w", logPath, rec.seq, err)
			}
		}
		records++
		writes += rec.count()
	}
	if records > 0 {
		if err := v.data.Sync(); err != nil {
			return fmt.Errorf("sync data file %q: %w", v.path(dataName), err)
		}
	}
	nf, err := v.newLog(hdr.gen+1, lr.seq)
	if err != nil {
		return err
	}
	v.closeLog()
	v.logf, v.gen, v.nextSeq, v.synced = nf, hdr.gen+1, lr.seq, lr.seq-1
	v.logger.Info("recovered intent log", "records", records, "writes", writes, "next_seq", lr.seq, "generation", v.gen)
	return nil
}

// newLog starts a log file of generation gen whose first record will have
// seq: it writes the header to a temporary file, makes it durable, renames
// it over the log and makes the rename durable. It returns the new log open.
func (v *FileVolume) newLog(gen, seq uint64) (_ File, err error) {
	logPath := v.path(logName)
	tmp := logPath + tmpSuffix
	f, err := v.fsys.OpenFile(LabelLog, tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	if _, err := f.WriteAt(logHeader{uuid: v.uuid, gen: gen, startSeq: seq}.encode(), 0); err != nil {
		return nil, fmt.Errorf("write intent log header %q: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return nil, fmt.Errorf("sync intent log %q: %w", tmp, err)
	}
	if err := v.fsys.Rename(LabelLog, tmp, logPath); err != nil {
		return nil, err
	}
	if err := v.fsys.SyncDir(LabelLog, v.dir); err != nil {
		return nil, fmt.Errorf("sync directory %q: %w", v.dir, err)
	}
	return f, nil
}

// closeLog closes the current log file, logging a failure: by the time it
// is called the log holds nothing that is not durable elsewhere.
func (v *FileVolume) closeLog() {
	if v.logf == nil {
		return
	}
	if err := v.logf.Close(); err != nil {
		v.logger.Warn("close intent log", "err", err)
	}
	v.logf = nil
}

// writeFileAtomic replaces name with a file holding b: it writes a temporary
// file, makes it durable, renames it over name and makes the rename durable.
func writeFileAtomic(fsys FS, label, name string, b []byte) error {
	tmp := name + tmpSuffix
	f, err := fsys.OpenFile(label, tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.WriteAt(b, 0); err != nil {
		f.Close()
		return fmt.Errorf("write %q: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %q: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %q: %w", tmp, err)
	}
	if err := fsys.Rename(label, tmp, name); err != nil {
		return err
	}
	dir := filepath.Dir(name)
	if err := fsys.SyncDir(label, dir); err != nil {
		return fmt.Errorf("sync directory %q: %w", dir, err)
	}
	return nil
}

// RemoveAll removes name on fsys and, if it is a directory, everything in
// it. A missing name is not an error. label names the operations for fault
// injection.
func RemoveAll(fsys FS, label, name string) error {
	fi, err := fsys.Stat(label, name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.IsDir() {
		names, err := fsys.ReadDir(label, name)
		if err != nil {
			return err
		}
		for _, n := range names {
			if err := RemoveAll(fsys, label, filepath.Join(name, n)); err != nil {
				return err
			}
		}
	}
	if err := fsys.Remove(label, name); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// MkdirAllDurable creates dir and its missing parents on fsys, and makes
// each creation durable by syncing the parent directory. label names the
// operations for fault injection.
func MkdirAllDurable(fsys FS, label, dir string) error {
	var missing []string
	for d := filepath.Clean(dir); ; {
		_, err := fsys.Stat(label, d)
		if err == nil {
			break
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		missing = append(missing, d)
		parent := filepath.Dir(d)
		if parent == d {
			break
		}
		d = parent
	}
	if len(missing) == 0 {
		return nil
	}
	if err := fsys.MkdirAll(label, dir, 0o700); err != nil {
		return err
	}
	for _, d := range slices.Backward(missing) {
		parent := filepath.Dir(d)
		if err := fsys.SyncDir(label, parent); err != nil {
			return fmt.Errorf("sync directory %q: %w", parent, err)
		}
	}
	return nil
}

// BlockCount implements Reader.
func (v *FileVolume) BlockCount() uint64 { return v.blocks }

// Dir returns the directory of the volume.
func (v *FileVolume) Dir() string { return v.dir }

// UUID returns the identifier the volume was created with, in the
// 8-4-4-4-12 hexadecimal form.
func (v *FileVolume) UUID() string { return formatUUID(v.uuid) }

// ReadBlock implements Reader. It may run concurrently with every other
// method.
func (v *FileVolume) ReadBlock(index uint64, p []byte) error {
	if len(p) != BlockSize {
		return fmt.Errorf("read block %d of volume %q: buffer of %d bytes: %w", index, v.dir, len(p), ErrBadBlock)
	}
	if index >= v.blocks {
		return fmt.Errorf("read block %d of volume %q with %d blocks: %w", index, v.dir, v.blocks, ErrOutOfRange)
	}
	v.rw.RLock()
	defer v.rw.RUnlock()
	if v.closed {
		return fmt.Errorf("read block %d of volume %q: %w", index, v.dir, ErrClosed)
	}
	if d, ok := v.overlay[index]; ok {
		copy(p, d)
		return nil
	}
	if err := readFull(v.data, p, int64(index)*BlockSize); err != nil {
		return fmt.Errorf("read block %d of volume %q: %w", index, v.dir, err)
	}
	return nil
}

// Apply implements Volume. It appends the batch's record to the intent log
// with one write, then makes the batch visible to readers; with opts.Sync it
// then fsyncs the log. When the log has reached Options.CheckpointBytes it
// then checkpoints. An empty batch writes nothing.
func (v *FileVolume) Apply(ctx context.Context, b *Batch, opts ApplyOptions) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("apply to volume %q: %w", v.dir, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usable(); err != nil {
		return fmt.Errorf("apply to volume %q: %w", v.dir, err)
	}
	if err := b.Validate(v.blocks); err != nil {
		return fmt.Errorf("apply to volume %q: %w", v.dir, err)
	}
	if uint64(len(b.Writes)) > math.MaxUint32 {
		return fmt.Errorf("apply to volume %q: batch of %d writes exceeds %d", v.dir, len(b.Writes), uint32(math.MaxUint32))
	}
	if len(b.Writes) > 0 {
		if err := v.appendLocked(b); err != nil {
			return fmt.Errorf("apply to volume %q: %w", v.dir, v.fail(err))
		}
	}
	if opts.Sync {
		if err := v.syncLocked(); err != nil {
			return fmt.Errorf("apply to volume %q: %w", v.dir, v.fail(err))
		}
	}
	if v.logSize >= v.checkpointBytes {
		if err := v.checkpointLocked(); err != nil {
			return fmt.Errorf("apply to volume %q: %w", v.dir, v.fail(err))
		}
	}
	return nil
}

// appendLocked writes the record of b to the log and adds its blocks to the
// overlay.
func (v *FileVolume) appendLocked(b *Batch) error {
	v.buf = appendRecord(v.buf, v.gen, v.nextSeq, v.synced, b)
	n, err := v.logf.WriteAt(v.buf, v.logSize)
	if err == nil && n != len(v.buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("intent log %q record seq %d: write at offset %d: %w", v.path(logName), v.nextSeq, v.logSize, err)
	}
	if cap(v.buf) > maxKeptBuffer {
		v.buf = nil
	}
	v.logSize += int64(n)
	v.nextSeq++
	v.rw.Lock()
	for _, w := range b.Writes {
		v.overlay[w.Index] = w.Data
	}
	v.rw.Unlock()
	return nil
}

// Sync implements Volume: it fsyncs the intent log if a record was written
// since its last fsync. The fsync runs without holding the volume's lock,
// so Apply and ReadBlock go on meanwhile, and concurrent Syncs share one
// fsync (the ones that wait find their records synced).
func (v *FileVolume) Sync(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("sync volume %q: %w", v.dir, err)
	}
	v.syncMu.Lock()
	defer v.syncMu.Unlock()
	v.mu.Lock()
	if err := v.usable(); err != nil {
		v.mu.Unlock()
		return fmt.Errorf("sync volume %q: %w", v.dir, err)
	}
	f, gen, target := v.logf, v.gen, v.nextSeq-1
	done := v.synced >= target // a Sync that held syncMu before, or an Apply with Sync, covered it
	v.mu.Unlock()
	if done {
		return nil
	}

	err := f.Sync()

	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case v.gen != gen:
		// A checkpoint replaced the log meanwhile: it fsynced the old log
		// and wrote its records to the data file, which covers target, so
		// an error of the old file (closed under us) does not matter.
	case err != nil:
		return fmt.Errorf("sync volume %q: %w", v.dir, v.fail(fmt.Errorf("sync intent log %q: %w", v.path(logName), err)))
	default:
		v.synced = max(v.synced, target)
	}
	if err := v.usable(); err != nil {
		return fmt.Errorf("sync volume %q: %w", v.dir, err)
	}
	return nil
}

// syncLocked fsyncs the log unless every record is known durable.
func (v *FileVolume) syncLocked() error {
	if v.synced+1 >= v.nextSeq {
		return nil
	}
	if err := v.logf.Sync(); err != nil {
		return fmt.Errorf("sync intent log %q: %w", v.path(logName), err)
	}
	v.synced = v.nextSeq - 1
	return nil
}

// Checkpoint makes every applied batch durable and empties the intent log:
// it fsyncs the log, writes the blocks of its records to the data file,
// fsyncs the data file, and replaces the log with an empty one of the next
// generation. Apply calls it when the log reaches Options.CheckpointBytes.
func (v *FileVolume) Checkpoint(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("checkpoint volume %q: %w", v.dir, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usable(); err != nil {
		return fmt.Errorf("checkpoint volume %q: %w", v.dir, err)
	}
	if err := v.checkpointLocked(); err != nil {
		return fmt.Errorf("checkpoint volume %q: %w", v.dir, v.fail(err))
	}
	return nil
}

func (v *FileVolume) checkpointLocked() error {
	if v.logSize == logHeaderSize {
		return nil
	}
	// The records must be durable before any of their blocks reaches the
	// data file: a crash must never leave there a batch the log lost.
	if err := v.syncLocked(); err != nil {
		return err
	}
	if len(v.overlay) > 0 {
		if err := v.writeOverlay(); err != nil {
			return err
		}
		if err := v.data.Sync(); err != nil {
			return fmt.Errorf("checkpoint: sync data file %q: %w", v.path(dataName), err)
		}
	}
	nf, err := v.newLog(v.gen+1, v.nextSeq)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	v.closeLog()
	v.logf, v.gen, v.logSize, v.synced = nf, v.gen+1, logHeaderSize, v.nextSeq-1
	v.rw.Lock()
	clear(v.overlay)
	v.rw.Unlock()
	v.logger.Debug("checkpointed", "generation", v.gen, "next_seq", v.nextSeq)
	return nil
}

// writeOverlay writes the overlay's blocks to the data file, coalescing runs
// of consecutive blocks. Readers hold rw while they read from the data file
// and find there only blocks missing from the overlay, so they never see a
// block being written; the overlay is read here without rw, as only holders
// of mu change it.
func (v *FileVolume) writeOverlay() error {
	indexes := slices.Sorted(maps.Keys(v.overlay))
	for len(indexes) > 0 {
		run := 1
		for run < len(indexes) && run < maxRunBlocks && indexes[run] == indexes[0]+uint64(run) {
			run++
		}
		p := v.overlay[indexes[0]]
		if run > 1 {
			if len(v.scratch) < run*BlockSize {
				v.scratch = make([]byte, run*BlockSize)
			}
			p = v.scratch[:run*BlockSize]
			for i, idx := range indexes[:run] {
				copy(p[i*BlockSize:], v.overlay[idx])
			}
		}
		if _, err := v.data.WriteAt(p, int64(indexes[0])*BlockSize); err != nil {
			return fmt.Errorf("checkpoint: write blocks %d-%d to data file %q: %w", indexes[0], indexes[0]+uint64(run)-1, v.path(dataName), err)
		}
		indexes = indexes[run:]
	}
	return nil
}

// usable returns why the volume refuses Apply, Sync and Checkpoint, if it
// does. The caller holds mu.
func (v *FileVolume) usable() error {
	if v.closed {
		return ErrClosed
	}
	if v.failed != nil {
		return fmt.Errorf("%w: %w", ErrFailed, v.failed)
	}
	return nil
}

// fail records err as the reason the volume failed and returns it wrapped
// with ErrFailed. The caller holds mu.
func (v *FileVolume) fail(err error) error {
	v.failed = err
	v.logger.Error("volume failed: refusing writes until reopened", "err", err)
	return fmt.Errorf("%w: %w", ErrFailed, err)
}

// Close implements Volume. It does not sync and does not checkpoint; it
// waits for a running Apply, Sync or Checkpoint, and makes every later call
// return an error wrapping ErrClosed.
func (v *FileVolume) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.rw.Lock()
	if v.closed {
		v.rw.Unlock()
		return fmt.Errorf("close volume %q: %w", v.dir, ErrClosed)
	}
	v.closed = true
	v.overlay = nil
	v.rw.Unlock()
	if err := v.closeFiles(); err != nil {
		return fmt.Errorf("close volume %q: %w", v.dir, err)
	}
	return nil
}

// closeFiles closes the files of the volume and releases its lock.
func (v *FileVolume) closeFiles() error {
	var errs []error
	if v.logf != nil {
		errs = append(errs, v.logf.Close())
		v.logf = nil
	}
	if v.data != nil {
		errs = append(errs, v.data.Close())
		v.data = nil
	}
	if v.lock != nil {
		errs = append(errs, v.lock.Close())
		v.lock = nil
	}
	return errors.Join(errs...)
}

// WriteFileAtomic replaces name on fsys with a file holding b, durably: it
// writes and fsyncs a temporary file, renames it over name and fsyncs the
// directory. After a crash, name holds the old content or the new, whole.
// label names the operations for fault injection.
func WriteFileAtomic(fsys FS, label, name string, b []byte) error {
	return writeFileAtomic(fsys, label, name, b)
}

// ReadFileLimit reads the whole of name on fsys, refusing a file of more
// than limit bytes with an error wrapping ErrCorrupt. A missing file gives
// an error wrapping fs.ErrNotExist.
func ReadFileLimit(fsys FS, label, name string, limit int64) ([]byte, error) {
	return readSmallFile(fsys, label, name, limit)
}
