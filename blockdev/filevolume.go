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
	"sync/atomic"
)

// Names of the files of a volume directory.
const (
	metaName = "volume.meta"
	dataName = "volume.data"
	logName  = "volume.log"
	// prevLogName is the previous log generation while a checkpoint
	// writes its records to the data file.
	prevLogName = "volume.prev.log"
	lockName    = "volume.lock"
	tmpSuffix   = ".tmp"
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
	// the log are also held in memory until their checkpoint ends, so this
	// bounds the memory of the volume too: twice this with background
	// checkpoints (SetBackgroundCheckpoint), which keep the generation
	// being checkpointed in memory while the next one fills.
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

// maxInlineRecord is the largest record that Apply writes itself, rather
// than queueing it for the log writer, when the writer is idle.
const maxInlineRecord = 64 << 10

// maxRunBlocks is the largest number of consecutive blocks a checkpoint
// writes to the data file in one call.
const maxRunBlocks = 256

// FileVolume is a Volume stored in a directory of an FS, with atomic batches
// by a write-ahead intent log; see docs/ARCHITECTURE.md for the layout, the
// recovery and the guarantees.
//
// Apply appends the batch's record to the intent log with one write (or,
// in background mode, queues it for a goroutine that writes the records in
// order) and keeps its blocks in memory, where readers find them; the data
// file is written only by checkpoints, once the records are durable. Sync
// fsyncs the intent log. Close neither syncs nor checkpoints: the next Open
// replays the log, whatever of it survived.
//
// A checkpoint freezes the log: it renames it to volume.prev.log and starts
// an empty log of the next generation, where the next Applies go. The frozen
// generation is then made durable, its blocks written to the data file, the
// data file fsynced and the frozen log removed: on the Apply that filled the
// log, or, after SetBackgroundCheckpoint(true), in a goroutine while Applies
// go on (an Apply that fills the new log first waits for it). Readers find a
// block in the current generation's blocks, then the frozen one's, then the
// data file. Recovery replays the frozen log, then the current one.
//
// After an I/O error in Apply, Sync or Checkpoint, or in a background
// checkpoint (reported by the next Apply, Sync or Checkpoint), the volume
// is failed: every later Apply, Sync and Checkpoint returns an error
// wrapping ErrFailed (fail-stop). ReadBlock keeps serving what Apply made
// visible until Close. Reopening the volume recovers it.
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
	mu         sync.Mutex
	logf       File
	logSize    int64      // offset of the next record
	gen        uint64     // generation of the log file
	nextSeq    uint64     // seq of the next record
	synced     uint64     // every record with seq <= synced is durable
	ckptGen    uint64     // every generation <= ckptGen is in the data file, durably
	frozen     *frozenLog // the generation being checkpointed, or nil
	background bool       // checkpoints run in a goroutine
	writer     *logWriter // writes the log's records, in background mode
	// deferCheckpoints (tests) leaves the checkpoint of a frozen generation
	// to the test, or to the next checkpoint that must wait for it, so that
	// crash tests can place its I/O between Applies deterministically.
	deferCheckpoints bool
	failed           error        // the error that failed the volume
	rec              recordWriter // writes records without a log writer

	// scratch is the checkpoint's write buffer, used by one checkpoint at
	// a time (each starts after the previous one was reaped).
	scratch []byte

	// rw guards overlay, frozenOverlay and closed. ReadBlock holds it for
	// reading across its read of the data file, so that a block it finds
	// missing from both overlays cannot be added and then written in place
	// by a checkpoint during the read. It is written only by holders of mu.
	rw            sync.RWMutex
	overlay       map[uint64][]byte // blocks of the current log's records, latest data
	frozenOverlay map[uint64][]byte // blocks of the frozen log's records, or nil
	data          File
	closed        bool

	// readEnd is where the last ReadBlocks of the data file ended (for
	// readAhead).
	readEnd atomic.Int64
}

// frozenLog is a log generation being checkpointed. Its fields other than
// synced and done are set before the checkpoint starts and not changed
// while it runs; started, finished and err are guarded by FileVolume.mu.
type frozenLog struct {
	f       File
	gen     uint64
	end     uint64            // seq of the first record of the next generation
	overlay map[uint64][]byte // the generation's blocks; read-only
	writer  *logWriter        // writes its records, or nil
	synced  atomic.Bool       // the log file is durable
	done    chan error        // receives the checkpoint's outcome once
	cancel  context.CancelCauseFunc

	started  bool  // the checkpoint was started
	finished bool  // done was received from
	err      error // the checkpoint's outcome, once finished
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
	// A frozen log of an earlier volume in dir must not be replayed.
	if err := fsys.Remove(LabelLog, v.path(prevLogName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
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

// recover replays the intent logs into the data file: the frozen
// generation (volume.prev.log) if a checkpoint did not finish, then the
// current one. If they held anything past their headers, it makes the data
// file durable and starts a new log generation. It sets the log fields of v.
func (v *FileVolume) recover() error {
	cur, curHdr, curSize, curErr := v.openLog(logName)
	if curErr != nil && !errors.Is(curErr, fs.ErrNotExist) {
		return curErr
	}
	prev, prevHdr, prevSize, err := v.openLog(prevLogName)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		if cur != nil {
			cur.Close()
		}
		return err
	}
	keep := false // cur becomes the volume's log
	defer func() {
		if cur != nil && !keep {
			cur.Close()
		}
		if prev != nil {
			prev.Close()
		}
	}()
	if cur == nil && prev == nil {
		return curErr
	}

	replayPrev := false
	if prev != nil {
		switch {
		case cur == nil || prevHdr.gen+1 == curHdr.gen:
			replayPrev = true
		case prevHdr.gen+1 < curHdr.gen:
			// Checkpointed; its removal did not survive a crash.
		default:
			return fmt.Errorf("intent log %q has generation %d, not older than %d of %q: %w",
				v.path(prevLogName), prevHdr.gen, curHdr.gen, v.path(logName), ErrCorrupt)
		}
	}
	if !replayPrev && curSize == logHeaderSize {
		v.logf, keep = cur, true
		v.gen, v.nextSeq, v.logSize = curHdr.gen, curHdr.startSeq, logHeaderSize
		v.synced = curHdr.startSeq - 1 // older generations are in the data file
		v.ckptGen = curHdr.gen - 1
		return nil
	}

	var seq uint64
	records, writes := 0, 0
	replayCur := cur != nil
	if cur != nil {
		seq = curHdr.startSeq
	}
	if replayPrev {
		next, r, w, err := v.replayLog(prev, prevLogName, prevHdr, prevSize)
		if err != nil {
			return err
		}
		records, writes, seq = r, w, next
		if cur != nil && next != curHdr.startSeq {
			if next > curHdr.startSeq {
				return fmt.Errorf("intent log %q ends at seq %d, past seq %d where %q starts: %w",
					v.path(prevLogName), next, curHdr.startSeq, v.path(logName), ErrCorrupt)
			}
			// The frozen generation lost its tail in a crash: the records
			// of the current one follow a gap, so none of them may have been
			// synced, and none is replayed.
			claim, err := maxSyncClaim(cur, curHdr, curSize, v.blocks)
			if err != nil {
				return fmt.Errorf("read intent log %q: %w", v.path(logName), err)
			}
			if claim >= next {
				return fmt.Errorf("intent log %q ends at seq %d, but a record of %q says seq %d was synced: %w",
					v.path(prevLogName), next, v.path(logName), claim, ErrCorrupt)
			}
			v.logger.Info("discarding intent log: it follows records lost from the previous generation",
				"log", v.path(logName), "start_seq", curHdr.startSeq, "lost_from", next)
			replayCur = false
		}
	}
	if replayCur {
		next, r, w, err := v.replayLog(cur, logName, curHdr, curSize)
		if err != nil {
			return err
		}
		records, writes, seq = records+r, writes+w, next
	}
	if records > 0 {
		if err := v.data.Sync(); err != nil {
			return fmt.Errorf("sync data file %q: %w", v.path(dataName), err)
		}
	}
	gen := max(curHdr.gen, prevHdr.gen) + 1
	nf, err := v.newLog(gen, seq)
	if err != nil {
		return err
	}
	v.logf, v.gen, v.nextSeq, v.logSize, v.synced, v.ckptGen = nf, gen, seq, logHeaderSize, seq-1, gen-1
	if prev != nil {
		// A frozen log left behind is ignored (older than gen-1): its
		// removal need not be durable.
		if err := v.fsys.Remove(LabelLog, v.path(prevLogName)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	v.logger.Info("recovered intent log", "records", records, "writes", writes, "next_seq", seq, "generation", gen)
	return nil
}

// openLog opens the log file name of the volume and reads its header. It
// returns an error wrapping fs.ErrNotExist if there is no such file.
func (v *FileVolume) openLog(name string) (_ File, _ logHeader, size int64, err error) {
	p := v.path(name)
	f, err := v.fsys.OpenFile(LabelLog, p, os.O_RDWR, 0)
	if err != nil {
		return nil, logHeader{}, 0, err
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	size, err = f.Size()
	if err != nil {
		return nil, logHeader{}, 0, fmt.Errorf("size of intent log %q: %w", p, err)
	}
	hdrBytes := make([]byte, min(size, logHeaderSize))
	if err := readFull(f, hdrBytes, 0); err != nil {
		return nil, logHeader{}, 0, fmt.Errorf("read intent log %q: %w", p, err)
	}
	hdr, err := decodeLogHeader(hdrBytes)
	if err != nil {
		return nil, logHeader{}, 0, fmt.Errorf("intent log %q: %w", p, err)
	}
	if hdr.uuid != v.uuid {
		return nil, logHeader{}, 0, fmt.Errorf("intent log %q belongs to volume %s, not %s: %w", p, formatUUID(hdr.uuid), formatUUID(v.uuid), ErrCorrupt)
	}
	return f, hdr, size, nil
}

// replayLog redoes into the data file the records of the log f (named
// name, with header hdr and size bytes) up to the first that is torn or
// invalid, and returns the seq after the last one redone.
func (v *FileVolume) replayLog(f File, name string, hdr logHeader, size int64) (next uint64, records, writes int, err error) {
	logPath := v.path(name)
	lr := newLogReader(f, size, hdr, v.blocks)
	for {
		rec, err := lr.next()
		var tail *tailError
		switch {
		case err == nil:
		case errors.Is(err, errEndOfLog):
		case errors.As(err, &tail):
			claim, cerr := lr.syncClaim(f)
			if cerr != nil {
				return 0, 0, 0, fmt.Errorf("read intent log %q: %w", logPath, cerr)
			}
			if claim != 0 {
				return 0, 0, 0, fmt.Errorf("intent log %q record seq %d at offset %d: %s, but record seq %d says it was synced: %w",
					logPath, lr.seq, lr.off, tail.reason, claim, ErrCorrupt)
			}
			v.logger.Info("discarding intent log tail", "log", logPath, "offset", lr.off, "bytes", size-lr.off, "reason", tail.reason, "seq", lr.seq)
		default:
			return 0, 0, 0, fmt.Errorf("intent log %q record seq %d at offset %d: %w", logPath, lr.seq, lr.off, err)
		}
		if err != nil {
			return lr.seq, records, writes, nil
		}
		for i := range rec.count() {
			idx := rec.index(i)
			if _, err := v.data.WriteAt(rec.block(i), int64(idx)*BlockSize); err != nil {
				return 0, 0, 0, fmt.Errorf("redo intent log %q record seq %d to data file: %w", logPath, rec.seq, err)
			}
		}
		records++
		writes += rec.count()
	}
}

// maxSyncClaim returns the largest synced seq claimed by the valid records
// of the log f, read up to the first that is torn or invalid.
func maxSyncClaim(f File, hdr logHeader, size int64, blocks uint64) (uint64, error) {
	lr := newLogReader(f, size, hdr, blocks)
	var claim uint64
	for {
		rec, err := lr.next()
		var tail *tailError
		switch {
		case err == nil:
			claim = max(claim, rec.synced)
		case errors.Is(err, errEndOfLog), errors.As(err, &tail):
			return claim, nil
		default:
			return 0, err
		}
	}
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
	if d, ok := v.frozenOverlay[index]; ok {
		copy(p, d)
		return nil
	}
	if err := readFull(v.data, p, int64(index)*BlockSize); err != nil {
		return fmt.Errorf("read block %d of volume %q: %w", index, v.dir, err)
	}
	return nil
}

// SetBackgroundCheckpoint chooses where the intent log is written and
// where the checkpoints that Apply starts when the log reaches
// Options.CheckpointBytes run. With on, a goroutine writes the records in
// order and another runs each checkpoint, so that Apply returns once its
// batch is queued and visible, without waiting for the log file nor the
// data file (an Apply that fills the next generation before the checkpoint
// is done waits for it); a failed write is reported by the next Apply or
// Sync. With off (the default), Apply writes its record and runs the
// checkpoint itself, so that the volume's I/O is a deterministic sequence,
// as crash tests need. Either way a crash at any instant leaves every batch
// entirely or not at all, Sync makes every applied batch durable, and Close
// stops the goroutines after the queued records are written.
func (v *FileVolume) SetBackgroundCheckpoint(on bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.background = on
	switch {
	case on && v.writer == nil && !v.closed && v.failed == nil:
		v.writer = startLogWriter(v.nextSeq)
	case !on && v.writer != nil:
		if err := v.stopWriterLocked(); err != nil {
			v.fail(err)
		}
	}
}

// stopWriterLocked stops the log writer after it wrote the queued records
// and returns the error of a failed write. The caller holds mu.
func (v *FileVolume) stopWriterLocked() error {
	w := v.writer
	v.writer = nil
	return w.close()
}

// Apply implements Volume. It appends the batch's record to the intent log
// with one write, then makes the batch visible to readers; with opts.Sync it
// then fsyncs the log. When the log has reached Options.CheckpointBytes it
// then checkpoints (see SetBackgroundCheckpoint). An empty batch writes
// nothing.
func (v *FileVolume) Apply(ctx context.Context, b *Batch, opts ApplyOptions) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("apply to volume %q: %w", v.dir, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usable(); err != nil {
		return fmt.Errorf("apply to volume %q: %w", v.dir, err)
	}
	if err := v.reapLocked(false); err != nil {
		return fmt.Errorf("apply to volume %q: %w", v.dir, v.fail(err))
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
		if err := v.checkpointLocked(!v.background && !v.deferCheckpoints); err != nil {
			return fmt.Errorf("apply to volume %q: %w", v.dir, v.fail(err))
		}
	}
	return nil
}

// appendLocked writes the record of b to the log, or queues it for the log
// writer, and adds its blocks to the overlay.
func (v *FileVolume) appendLocked(b *Batch) error {
	size := recordSize(len(b.Writes))
	queue := false
	if w := v.writer; w != nil {
		// A small record is written here when the writer is idle: handing
		// it over would cost more than the write.
		idle, err := w.idle()
		if err != nil {
			return err
		}
		queue = !idle || size > maxInlineRecord
	}
	if queue {
		// The queue keeps its own copy of the writes: the caller may reuse
		// b (not the blocks, which the overlay keeps too).
		err := v.writer.enqueue(logJob{f: v.logf, name: v.path(logName), off: v.logSize,
			gen: v.gen, seq: v.nextSeq, synced: v.synced, writes: slices.Clone(b.Writes)})
		if err != nil {
			return err
		}
	} else {
		_, err := v.rec.write(v.logf, v.logSize, v.gen, v.nextSeq, v.synced, b.Writes)
		if err != nil {
			err = fmt.Errorf("intent log %q record seq %d: write at offset %d: %w", v.path(logName), v.nextSeq, v.logSize, err)
		}
		if v.writer != nil {
			v.writer.wrote(v.nextSeq, err)
		}
		if err != nil {
			return err
		}
	}
	v.logSize += int64(size)
	v.nextSeq++
	v.rw.Lock()
	for _, w := range b.Writes {
		v.overlay[w.Index] = w.Data
	}
	v.rw.Unlock()
	return nil
}

// Sync implements Volume: it fsyncs the intent log if a record was written
// since its last fsync, and first the frozen generation's log if a
// checkpoint has not made it durable yet. The fsyncs run without holding
// the volume's lock, so Apply and ReadBlock go on meanwhile, and concurrent
// Syncs share one fsync (the ones that wait find their records synced).
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
	if err := v.reapLocked(false); err != nil {
		err = v.fail(err)
		v.mu.Unlock()
		return fmt.Errorf("sync volume %q: %w", v.dir, err)
	}
	f, gen, target, w := v.logf, v.gen, v.nextSeq-1, v.writer
	var fz *frozenLog
	if v.frozen != nil && !v.frozen.synced.Load() {
		fz = v.frozen
	}
	done := v.synced >= target // a Sync that held syncMu before, or an Apply with Sync, covered it
	v.mu.Unlock()
	if done {
		return nil
	}
	if w != nil {
		if err := w.wait(target); err != nil {
			v.mu.Lock()
			defer v.mu.Unlock()
			if err := v.usable(); err != nil {
				return fmt.Errorf("sync volume %q: %w", v.dir, err)
			}
			return fmt.Errorf("sync volume %q: %w", v.dir, v.fail(err))
		}
	}

	var fzErr, err error
	if fz != nil {
		if fzErr = fz.f.Sync(); fzErr != nil {
			fzErr = fmt.Errorf("sync intent log %q: %w", v.path(prevLogName), fzErr)
		} else {
			fz.synced.Store(true)
		}
	}
	if err = f.Sync(); err != nil {
		err = fmt.Errorf("sync intent log %q: %w", v.path(logName), err)
	}

	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usable(); err != nil {
		return fmt.Errorf("sync volume %q: %w", v.dir, err)
	}
	// A log file that a checkpoint made durable meanwhile may have been
	// closed under us: its error does not matter.
	if fzErr != nil && !v.genDurable(fz.gen) {
		return fmt.Errorf("sync volume %q: %w", v.dir, v.fail(fzErr))
	}
	if err != nil && !v.genDurable(gen) {
		return fmt.Errorf("sync volume %q: %w", v.dir, v.fail(err))
	}
	v.synced = max(v.synced, target)
	return nil
}

// genDurable reports whether every record of log generation gen is known
// durable because a checkpoint fsynced its log or finished. The caller
// holds mu.
func (v *FileVolume) genDurable(gen uint64) bool {
	return v.ckptGen >= gen || (v.frozen != nil && v.frozen.gen == gen && v.frozen.synced.Load())
}

// syncLocked fsyncs the frozen generation's log, unless it is known
// durable, and the current log, unless every record is known durable.
func (v *FileVolume) syncLocked() error {
	if v.synced+1 >= v.nextSeq {
		return nil
	}
	if v.writer != nil {
		if err := v.writer.wait(v.nextSeq - 1); err != nil {
			return err
		}
	}
	if fz := v.frozen; fz != nil && !fz.synced.Load() {
		// A background checkpoint may fsync and close the file meanwhile.
		if err := fz.f.Sync(); err != nil && !fz.synced.Load() {
			return fmt.Errorf("sync intent log %q: %w", v.path(prevLogName), err)
		}
		fz.synced.Store(true)
	}
	if err := v.logf.Sync(); err != nil {
		return fmt.Errorf("sync intent log %q: %w", v.path(logName), err)
	}
	v.synced = v.nextSeq - 1
	return nil
}

// Checkpoint makes every applied batch durable and empties the intent log:
// it waits for a background checkpoint, then checkpoints the current log
// and waits for that: the log is fsynced, the blocks of its records are
// written to the data file, the data file is fsynced, and the log is
// replaced with an empty one of the next generation. Apply starts a
// checkpoint when the log reaches Options.CheckpointBytes.
func (v *FileVolume) Checkpoint(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("checkpoint volume %q: %w", v.dir, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usable(); err != nil {
		return fmt.Errorf("checkpoint volume %q: %w", v.dir, err)
	}
	if err := v.checkpointLocked(true); err != nil {
		return fmt.Errorf("checkpoint volume %q: %w", v.dir, v.fail(err))
	}
	return nil
}

// checkpointLocked waits for the checkpoint of the frozen generation, if
// any, then freezes the current log, if it holds records, and starts its
// checkpoint; with wait it also waits for that one.
func (v *FileVolume) checkpointLocked(wait bool) error {
	if err := v.reapLocked(true); err != nil {
		return err
	}
	if v.logSize == logHeaderSize {
		return nil
	}
	if err := v.freezeLocked(); err != nil {
		return err
	}
	if wait {
		return v.reapLocked(true)
	}
	return nil
}

// freezeLocked makes the current log the frozen generation: it renames it
// to prevLogName, starts an empty log of the next generation (whose
// directory sync also makes the rename durable), moves the overlay to
// frozenOverlay, and starts the checkpoint of the frozen generation. A
// crash anywhere in between leaves the log under one of its names, which
// recovery replays either way. The caller holds mu and no frozen generation
// exists.
func (v *FileVolume) freezeLocked() error {
	if err := v.fsys.Rename(LabelLog, v.path(logName), v.path(prevLogName)); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	nf, err := v.newLog(v.gen+1, v.nextSeq)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	fz := &frozenLog{f: v.logf, gen: v.gen, end: v.nextSeq, overlay: v.overlay, writer: v.writer, done: make(chan error, 1)}
	fz.synced.Store(v.synced+1 >= v.nextSeq)
	v.rw.Lock()
	v.frozenOverlay = v.overlay
	v.overlay = make(map[uint64][]byte, len(v.overlay))
	v.rw.Unlock()
	v.logf, v.gen, v.logSize = nf, v.gen+1, logHeaderSize
	v.frozen = fz
	if !v.deferCheckpoints {
		v.startLocked(fz)
	}
	return nil
}

// startLocked starts the checkpoint of fz: in a goroutine with background
// checkpoints, else here.
func (v *FileVolume) startLocked(fz *frozenLog) {
	ctx, cancel := context.WithCancelCause(context.Background())
	fz.cancel, fz.started = cancel, true
	if v.background {
		go func() { fz.done <- v.writeFrozen(ctx, fz) }()
		return
	}
	fz.done <- v.writeFrozen(ctx, fz)
}

// writeFrozen is the checkpoint of the frozen generation fz: it makes the
// frozen log durable unless it is, writes its blocks to the data file,
// fsyncs the data file, and removes the frozen log. It takes no lock: it
// uses only fz, the data file, scratch and the FS, and neither Apply nor
// readers touch the data file's blocks of fz.overlay while it runs (readers
// find them in frozenOverlay). It stops early when ctx is cancelled.
func (v *FileVolume) writeFrozen(ctx context.Context, fz *frozenLog) error {
	if fz.writer != nil {
		if err := fz.writer.wait(fz.end - 1); err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
	}
	if !fz.synced.Load() {
		if err := fz.f.Sync(); err != nil {
			return fmt.Errorf("checkpoint: sync intent log %q: %w", v.path(prevLogName), err)
		}
		fz.synced.Store(true)
	}
	if len(fz.overlay) > 0 {
		if err := v.writeBlocks(ctx, fz.overlay); err != nil {
			return err
		}
		if err := v.data.Sync(); err != nil {
			return fmt.Errorf("checkpoint: sync data file %q: %w", v.path(dataName), err)
		}
	}
	// Recovery ignores a frozen log older than the current generation's
	// predecessor, so the removal need not be durable; until the next
	// freeze, a crash replays it again, harmlessly.
	if err := v.fsys.Remove(LabelLog, v.path(prevLogName)); err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	// Closing the removed file frees its blocks: off the request path, here.
	if err := fz.f.Close(); err != nil {
		v.logger.Warn("close intent log", "log", v.path(prevLogName), "err", err)
	}
	return nil
}

// reapLocked collects the outcome of the frozen generation's checkpoint:
// with block it waits for it (running it here if it was deferred), else it
// returns nil at once if it is not finished. After a successful checkpoint
// it drops the frozen generation; it returns the checkpoint's error, each
// time it is called, after a failed one. The caller holds mu.
func (v *FileVolume) reapLocked(block bool) error {
	fz := v.frozen
	if fz == nil {
		return nil
	}
	if !fz.finished {
		if !fz.started {
			if !block {
				return nil
			}
			v.startLocked(fz)
		}
		if block {
			fz.err = <-fz.done
		} else {
			select {
			case fz.err = <-fz.done:
			default:
				return nil
			}
		}
		fz.finished = true
		fz.cancel(nil)
	}
	if fz.err != nil {
		return fz.err
	}
	v.frozen = nil // writeFrozen closed its file
	v.rw.Lock()
	v.frozenOverlay = nil
	v.rw.Unlock()
	v.ckptGen = max(v.ckptGen, fz.gen)
	v.synced = max(v.synced, fz.end-1)
	v.logger.Debug("checkpointed", "generation", fz.gen, "next_seq", fz.end)
	return nil
}

// writeBlocks writes the blocks of overlay to the data file, coalescing
// runs of consecutive blocks, and stops early when ctx is cancelled.
func (v *FileVolume) writeBlocks(ctx context.Context, overlay map[uint64][]byte) error {
	indexes := slices.Sorted(maps.Keys(overlay))
	for len(indexes) > 0 {
		if err := context.Cause(ctx); err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
		run := 1
		for run < len(indexes) && run < maxRunBlocks && indexes[run] == indexes[0]+uint64(run) {
			run++
		}
		p := overlay[indexes[0]]
		if run > 1 && !contiguous(overlay, indexes[:run]) {
			if len(v.scratch) < run*BlockSize {
				v.scratch = make([]byte, run*BlockSize)
			}
			p = v.scratch[:run*BlockSize]
			for i, idx := range indexes[:run] {
				copy(p[i*BlockSize:], overlay[idx])
			}
		}
		if run > 1 && len(p) == BlockSize {
			p = p[:run*BlockSize] // the run lies in one buffer
		}
		if _, err := v.data.WriteAt(p, int64(indexes[0])*BlockSize); err != nil {
			return fmt.Errorf("checkpoint: write blocks %d-%d to data file %q: %w", indexes[0], indexes[0]+uint64(run)-1, v.path(dataName), err)
		}
		indexes = indexes[run:]
	}
	return nil
}

// contiguous reports whether the blocks of overlay at indexes follow each
// other in memory, each in the spare capacity of the one before, as the
// blocks a caller cut from one buffer do: then they can be written from
// there, without a copy.
func contiguous(overlay map[uint64][]byte, indexes []uint64) bool {
	prev := overlay[indexes[0]]
	for _, idx := range indexes[1:] {
		d := overlay[idx]
		if cap(prev) < 2*BlockSize || &prev[:BlockSize+1][BlockSize] != &d[0] {
			return false
		}
		prev = d
	}
	return true
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

// Close implements Volume. It does not sync and does not checkpoint: it
// stops the log writer once the queued records are written, stops a
// background checkpoint and waits for it, waits for a running
// Apply, Sync or Checkpoint, and makes every later call return an error
// wrapping ErrClosed.
func (v *FileVolume) Close() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.writer != nil {
		if err := v.stopWriterLocked(); err != nil {
			v.logger.Warn("intent log write failed; the next open replays the log up to it", "err", err)
		}
	}
	if fz := v.frozen; fz != nil && fz.started && !fz.finished {
		fz.cancel(ErrClosed)
		fz.err, fz.finished = <-fz.done, true
		if fz.err != nil && !errors.Is(fz.err, ErrClosed) {
			v.logger.Warn("background checkpoint failed; the next open replays its log", "err", fz.err)
		}
	}
	if fz := v.frozen; fz != nil && fz.finished && fz.err == nil {
		v.frozen = nil // writeFrozen closed its file
	}
	v.rw.Lock()
	if v.closed {
		v.rw.Unlock()
		return fmt.Errorf("close volume %q: %w", v.dir, ErrClosed)
	}
	v.closed = true
	v.overlay = nil
	v.frozenOverlay = nil
	v.rw.Unlock()
	if err := v.closeFiles(); err != nil {
		return fmt.Errorf("close volume %q: %w", v.dir, err)
	}
	return nil
}

// closeFiles closes the files of the volume and releases its lock.
func (v *FileVolume) closeFiles() error {
	var errs []error
	if v.frozen != nil {
		errs = append(errs, v.frozen.f.Close())
		v.frozen = nil
	}
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
