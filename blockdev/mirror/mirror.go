// Package mirror is the primary's mirrored volume: a local block volume whose
// every batch is committed at the intermediate cluster before it is
// acknowledged, with the fence levels, the primary bitmap and the resync of
// DESIGN.md section 2.
//
// The intermediate comes first. Commit hands a batch to the Submit pipeline
// and keeps its blocks in an in-memory overlay, where reads find them; the
// batch is applied to the local volume only once the intermediate has
// committed it, in volume-seq order. So the local volume is always a prefix
// of what the intermediate holds (plus, after a suspension, changes marked
// in the primary bitmap), and a primary restarted after any crash catches
// up by replaying the committed batches after its last recorded position.
//
// Goroutines: the applier (applies acknowledged batches locally, suspends,
// fences and reconnects), the resyncer (copies marked regions during COPY
// and RESYNC) and the checkpointer (syncs the local volume and records the
// position and the bitmap). Close stops all three.
package mirror

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// State is a mirror's pair state.
type State string

// Pair states of a primary's mirror.
const (
	// StateCopy: the initial copy of the volume to the intermediate runs.
	StateCopy State = "COPY"
	// StatePair: every batch is committed at the intermediate before it is
	// acknowledged.
	StatePair State = "PAIR"
	// StateSusp: mirroring is suspended (fence level never); changes are
	// local and marked in the primary bitmap.
	StateSusp State = "SUSP"
	// StateResync: the regions marked during a suspension are being copied.
	StateResync State = "RESYNC"
	// StateFenced: the intermediate refused the primary's epoch (the volume
	// was promoted elsewhere); the volume takes no more changes.
	StateFenced State = "FENCED"
)

func (s State) valid() bool {
	switch s {
	case StateCopy, StatePair, StateSusp, StateResync, StateFenced:
		return true
	}
	return false
}

// copying reports whether a copy of marked regions runs in state s.
func (s State) copying() bool { return s == StateCopy || s == StateResync }

// Fence is the fence level: what the mirror does when a batch cannot be
// committed in time.
type Fence string

// Fence levels.
const (
	// FenceData fails the operation (EIO) and every later one until the
	// intermediate has committed everything pending.
	FenceData Fence = "data"
	// FenceNever suspends mirroring and goes on locally.
	FenceNever Fence = "never"
)

// Errors of a mirror.
var (
	// ErrUnavailable: fence level data, and a batch could not be committed
	// at the intermediate within the timeout; the batch that timed out
	// stays in the pipeline, later batches are refused until everything
	// pending is committed.
	ErrUnavailable = errors.New("intermediate unavailable")
	// ErrFenced: the intermediate refused the primary's epoch; the mirror
	// takes no more changes.
	ErrFenced = errors.New("volume fenced: its epoch is stale (promoted elsewhere)")
	// ErrClosed: the mirror was closed.
	ErrClosed = errors.New("mirror closed")
)

// Defaults of Config.
const (
	DefaultTimeout            = 10 * time.Second
	DefaultMaxPendingBytes    = 64 << 20
	DefaultResyncBatchRegions = 16
	DefaultResyncInFlight     = 8
	DefaultCheckpointInterval = time.Second
	DefaultRetryInterval      = time.Second
)

// Config configures Open.
type Config struct {
	// Name is the volume's name in the group.
	Name string
	// Group is the consistency group, recorded in the state file to catch a
	// changed configuration.
	Group string
	// Local is the primary's local volume. The mirror applies to it; the
	// caller closes it after the mirror.
	Local blockdev.Volume
	// FS and Dir hold the mirror's state file and primary bitmap (the
	// volume's directory); a nil FS means blockdev.OSFS.
	FS  blockdev.FS
	Dir string
	// Client reaches the intermediate.
	Client *client.Client
	// Fence is the fence level; default FenceData.
	Fence Fence
	// Timeout bounds the wait for a batch's commit; default DefaultTimeout.
	Timeout time.Duration
	// RegionSize is the primary bitmap's region size for a new bitmap;
	// default blockdev.DefaultRegionSize.
	RegionSize int
	// MaxPendingBytes bounds the payload of batches not yet committed;
	// Commit waits (up to Timeout) while it is exceeded. Default
	// DefaultMaxPendingBytes.
	MaxPendingBytes int
	// ResyncBatchRegions is the number of regions per copy batch and
	// ResyncInFlight the copy batches in flight; defaults
	// DefaultResyncBatchRegions and DefaultResyncInFlight.
	ResyncBatchRegions int
	ResyncInFlight     int
	// ResyncRate, when positive, bounds the copy of COPY and RESYNC to
	// that many bytes per second (the filesystem's own writes are not
	// limited), to spare the links and disks of a production site; 0
	// copies as fast as the pipeline takes it. The copy window at the
	// intermediate stays open longer, and the group's validated point
	// waits at its start meanwhile.
	ResyncRate int64
	// CheckpointInterval is how often the local volume is synced and the
	// position recorded; default DefaultCheckpointInterval.
	CheckpointInterval time.Duration
	// RetryInterval spaces reconnection attempts; default
	// DefaultRetryInterval.
	RetryInterval time.Duration
	// Logger receives the mirror's logs; default slog.Default().
	Logger *slog.Logger
	// AckBeforeCommit breaks invariant 3 on purpose, for the test of the
	// chaos test only: Commit's ack returns at once, before the
	// intermediate committed the batch, so that a crash of the primary
	// loses writes it acknowledged. Never set it otherwise.
	AckBeforeCommit bool
}

func (cfg Config) withDefaults() (Config, error) {
	switch {
	case cfg.Name == "":
		return cfg, errors.New("mirror config: Name is empty")
	case cfg.Local == nil:
		return cfg, errors.New("mirror config: Local is nil")
	case cfg.Client == nil:
		return cfg, errors.New("mirror config: Client is nil")
	case cfg.Dir == "":
		return cfg, errors.New("mirror config: Dir is empty")
	}
	if cfg.FS == nil {
		cfg.FS = blockdev.OSFS{}
	}
	switch cfg.Fence {
	case "":
		cfg.Fence = FenceData
	case FenceData, FenceNever:
	default:
		return cfg, fmt.Errorf("mirror config: fence level %q: want data or never", cfg.Fence)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.RegionSize == 0 {
		cfg.RegionSize = blockdev.DefaultRegionSize
	}
	if cfg.MaxPendingBytes <= 0 {
		cfg.MaxPendingBytes = DefaultMaxPendingBytes
	}
	if cfg.ResyncBatchRegions <= 0 {
		cfg.ResyncBatchRegions = DefaultResyncBatchRegions
	}
	if cfg.ResyncInFlight <= 0 {
		cfg.ResyncInFlight = DefaultResyncInFlight
	}
	if cfg.ResyncRate < 0 {
		return cfg, fmt.Errorf("mirror config: resync rate %d is negative", cfg.ResyncRate)
	}
	if cfg.CheckpointInterval <= 0 {
		cfg.CheckpointInterval = DefaultCheckpointInterval
	}
	if cfg.RetryInterval <= 0 {
		cfg.RetryInterval = DefaultRetryInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg, nil
}

// Status is a mirror's state for status displays.
type Status struct {
	State State
	Fence Fence
	Epoch uint64
	// DirtyRegions counts the regions marked in the primary bitmap.
	DirtyRegions uint64
	// ResyncDone and ResyncTotal count the regions of the running copy or
	// resync (both 0 otherwise).
	ResyncDone, ResyncTotal uint64
	// CopiedBytes counts the block bytes of committed copy batches (initial
	// copy and resyncs) since Open.
	CopiedBytes uint64
	// PendingBatches are batches sent and not yet committed.
	PendingBatches int
	// AppliedVolumeSeq and AppliedSeq are the last committed batch applied
	// to the local volume.
	AppliedVolumeSeq, AppliedSeq uint64
	// Reason says why the state is not PAIR, or why writes fail.
	Reason string
}

// overlayBlock is a block of a batch not yet applied locally.
type overlayBlock struct {
	data []byte
	vs   uint64 // the batch's volume seq
}

// pend is a batch handed to the Submit pipeline and not yet applied.
type pend struct {
	vs       uint64
	p        *client.Pending
	blocks   []*wire.Block   // what was submitted, kept to resubmit
	batch    *blockdev.Batch // the filesystem's batch; nil for a copy batch
	regions  []uint64        // the regions a copy batch copies
	copying  bool            // submitted with the copying flag (wire.Batch)
	bytes    int
	deadline time.Time
	done     chan struct{} // closed once the outcome is known (signalled)
	err      error
	// signalled is set once done is closed: when the intermediate
	// committed the batch (before the local write) or it failed.
	signalled bool
}

// Mirror is a mirrored volume; see the package documentation. Its methods
// are safe for concurrent use.
type Mirror struct {
	cfg    Config
	log    *slog.Logger
	vol    blockdev.Volume
	blocks uint64
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	kick   chan struct{} // wakes the applier

	mu           sync.Mutex
	cond         *sync.Cond // broadcast when pends complete and on state changes
	st           persisted  // the state; st.State is the pair state
	saved        persisted  // what the state file holds
	durableVS    uint64     // the local volume holds durably every batch up to this volume seq
	durableSeq   uint64     // and its seq; the state file records these, not st's
	stream       *client.Volume
	pends        []*pend
	pendBytes    int
	bitmap       *blockdev.Bitmap
	bitmapDirty  bool   // bitmap differs from the file
	unavailable  error  // fence data: why Commit refuses until pends drain
	suspend      error  // fence never: a suspension was asked for, and why
	failed       error  // the local volume failed: fail-stop
	copyCursor   uint64 // next region the resyncer looks at
	copySent     map[uint64]bool
	copyDone     uint64
	copyTotal    uint64
	copiedBytes  uint64
	copyInflight int // copy batches in pends
	// copyWindow says the volume's copy window at the intermediate may be
	// open: the last batch submitted on the stream (or, before any, the
	// last one committed when it opened) carries the copying flag. Out of
	// COPY and RESYNC, finishCopyLocked then sends a batch that closes it.
	copyWindow bool
	// copyPaceAt is when the resyncer may send its next copy batch under
	// Config.ResyncRate.
	copyPaceAt time.Time
	reported   *wire.PrimaryReport
	closing    bool

	// ovMu guards overlay; writers hold mu too.
	ovMu    sync.RWMutex
	overlay map[uint64]*overlayBlock
}

// Open opens the mirror of cfg.Local. Unless the mirror is suspended or
// fenced, it first reconciles with the intermediate, waiting for it until
// ctx ends: it replays the batches committed after the local volume's
// recorded position, so that the local volume holds everything the
// intermediate committed. A new volume starts its initial copy (COPY);
// marked regions start a resync. Open starts the mirror's goroutines.
func Open(ctx context.Context, cfg Config) (*Mirror, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	m := &Mirror{
		cfg:      cfg,
		log:      cfg.Logger.With("volume", cfg.Name),
		vol:      cfg.Local,
		blocks:   cfg.Local.BlockCount(),
		kick:     make(chan struct{}, 1),
		overlay:  map[uint64]*overlayBlock{},
		copySent: map[uint64]bool{},
	}
	m.cond = sync.NewCond(&m.mu)
	m.ctx, m.cancel = context.WithCancel(context.Background())
	if err := m.load(); err != nil {
		return nil, err
	}
	if err := m.start(ctx); err != nil {
		m.cancel()
		if m.stream != nil {
			m.stream.Close()
		}
		return nil, err
	}
	m.wg.Add(3)
	go m.runApplier()
	go m.runResyncer()
	go m.runCheckpointer()
	return m, nil
}

// load reads the state file and the bitmap.
func (m *Mirror) load() error {
	st, found, err := loadState(m.cfg.FS, m.cfg.Dir)
	if err != nil {
		return err
	}
	if !found {
		st = persisted{Version: stateVersion, Volume: m.cfg.Name, Group: m.cfg.Group, Epoch: 1}
	}
	switch {
	case st.Volume != m.cfg.Name:
		return fmt.Errorf("mirror state in %s is of volume %q, not %q", m.cfg.Dir, st.Volume, m.cfg.Name)
	case st.Group != m.cfg.Group:
		return fmt.Errorf("mirror state in %s is of group %q, not %q", m.cfg.Dir, st.Group, m.cfg.Group)
	}
	m.st, m.saved = st, st
	m.durableVS, m.durableSeq = st.AppliedVolumeSeq, st.AppliedSeq
	if !found {
		m.saved = persisted{}
	}
	path := filepath.Join(m.cfg.Dir, bitmapFile)
	bm, err := blockdev.LoadBitmap(m.cfg.FS, path)
	switch {
	case err == nil:
		if bm.BlockCount() != m.blocks {
			return fmt.Errorf("primary bitmap %s covers %d blocks, the volume has %d: %w", path, bm.BlockCount(), m.blocks, blockdev.ErrCorrupt)
		}
		m.bitmap = bm
	case found && st.State != StatePair:
		return fmt.Errorf("mirror of volume %q is in state %s but its primary bitmap is unreadable: %w", m.cfg.Name, st.State, err)
	default:
		bm, err := blockdev.NewBitmap(m.blocks, m.cfg.RegionSize)
		if err != nil {
			return fmt.Errorf("primary bitmap: %w", err)
		}
		m.bitmap = bm
		m.bitmapDirty = true
	}
	return nil
}

// start brings the mirror to its serving state.
func (m *Mirror) start(ctx context.Context) error {
	if m.st.Detached && m.st.State != StateSusp {
		return fmt.Errorf("mirror state in %s: volume %q is detached in state %s: only a suspended mirror can be", m.cfg.Dir, m.cfg.Name, m.st.State)
	}
	switch m.st.State {
	case StateFenced:
		m.log.Warn("volume is fenced: its epoch was found stale; it takes no changes until it is resynchronised",
			"epoch", m.st.Epoch, "reason", m.st.Reason)
		return nil
	case StateSusp:
		m.log.Warn("mirroring is suspended; changes are marked in the primary bitmap until the intermediate is back",
			"dirty_regions", m.bitmap.Count(), "reason", m.st.Reason)
		m.mu.Lock()
		defer m.mu.Unlock()
		m.st.Clean = false
		return m.persistLocked()
	}
	octx := ctx
	if m.saved.Clean && m.cfg.Fence == FenceNever {
		// A clean shutdown left nothing at the intermediate that the local
		// volume lacks: if the intermediate stays away, go on suspended.
		var cancel context.CancelFunc
		octx, cancel = context.WithTimeout(ctx, m.cfg.Timeout)
		defer cancel()
	}
	v, err := m.open(octx)
	if err != nil {
		if errors.Is(err, wire.ErrStaleEpoch) {
			m.mu.Lock()
			defer m.mu.Unlock()
			return m.fenceLocked(err)
		}
		if ctx.Err() == nil && octx.Err() != nil {
			m.log.Warn("intermediate unreachable at start after a clean shutdown; suspending mirroring", "err", err)
			m.mu.Lock()
			defer m.mu.Unlock()
			m.st.Clean = false
			return m.suspendLocked(fmt.Errorf("intermediate unreachable at start: %w", err))
		}
		return err
	}
	lastVS, lastSeq := v.OpenedAt()
	fresh := m.saved.Version == 0
	switch {
	case fresh && lastVS == 0:
		m.log.Info("new mirror: copying the volume to the intermediate", "blocks", m.blocks)
		m.bitmap.SetAll()
		m.bitmapDirty = true
		m.st.State = StateCopy
		m.st.CopyFromEmpty = true
	case fresh:
		v.Close()
		return fmt.Errorf("the intermediate holds %d batches of volume %q, but %s has no mirror state: this is not the volume the intermediate mirrors (use the volume's own data directory, or another volume name)",
			lastVS, m.cfg.Name, m.cfg.Dir)
	case lastVS < m.st.AppliedVolumeSeq:
		v.Close()
		return fmt.Errorf("the intermediate holds volume %q up to volume seq %d, but the local volume applied up to %d: the intermediate lost committed batches (was its cluster rebuilt?)",
			m.cfg.Name, lastVS, m.st.AppliedVolumeSeq)
	case lastVS > m.st.AppliedVolumeSeq:
		if err := m.replay(ctx, lastVS, lastSeq); err != nil {
			v.Close()
			return err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st.AppliedVolumeSeq, m.st.AppliedSeq = lastVS, lastSeq
	m.durableVS, m.durableSeq = lastVS, lastSeq // replay synced the volume
	m.st.Clean = false
	if m.st.State != StateCopy {
		m.st.State = StatePair
		if m.bitmap.Count() > 0 {
			m.st.State = StateResync
		}
	}
	if err := m.persistLocked(); err != nil {
		v.Close()
		return err
	}
	m.stream = v
	m.copyWindow = v.CopyOpen()
	m.startCopyLocked()
	m.finishCopyLocked() // a copy with nothing (left) to copy ends here; it reports
	m.log.Info("mirror open", "state", m.st.State, "fence", m.cfg.Fence, "epoch", m.st.Epoch,
		"applied_volume_seq", lastVS, "applied_seq", lastSeq, "dirty_regions", m.bitmap.Count())
	return nil
}

// open opens the volume's Submit stream.
func (m *Mirror) open(ctx context.Context) (*client.Volume, error) {
	v, err := m.cfg.Client.OpenVolume(ctx, client.VolumeOptions{Name: m.cfg.Name, Epoch: m.st.Epoch, BlockCount: m.blocks})
	if err != nil {
		return nil, fmt.Errorf("open volume %q at the intermediate: %w", m.cfg.Name, err)
	}
	return v, nil
}

// errReplayed stops the replay's Fetch.
var errReplayed = errors.New("replayed")

// replay applies to the local volume the committed batches after its
// recorded position, up to volume seq lastVS, and syncs it.
func (m *Mirror) replay(ctx context.Context, lastVS, lastSeq uint64) error {
	from := m.st.AppliedVolumeSeq
	m.log.Info("replaying committed batches the local volume lacks", "from_volume_seq", from+1, "to_volume_seq", lastVS)
	next := from + 1
	err := m.cfg.Client.Fetch(ctx, m.cfg.Name, m.st.AppliedSeq, func(resp *wire.FetchResponse) error {
		if resp.GetCompacted() {
			return fmt.Errorf("the intermediate's journal no longer holds the batches after seq %d that the local volume lacks", m.st.AppliedSeq)
		}
		for _, cb := range resp.GetBatches() {
			b := cb.GetBatch()
			vs := b.GetVolumeSeq()
			if vs < next {
				continue
			}
			if vs != next {
				return fmt.Errorf("replay: batch with volume seq %d where %d was due", vs, next)
			}
			if err := m.vol.Apply(ctx, toBatch(b.GetBlocks()), blockdev.ApplyOptions{}); err != nil {
				return fmt.Errorf("replay batch %d to the local volume: %w", vs, err)
			}
			next++
			if vs == lastVS {
				if cb.GetSeq() != lastSeq {
					return fmt.Errorf("replay: batch %d has seq %d, the intermediate said %d", vs, cb.GetSeq(), lastSeq)
				}
				return errReplayed
			}
		}
		return nil
	})
	if !errors.Is(err, errReplayed) {
		return fmt.Errorf("replay volume %q from the intermediate: %w", m.cfg.Name, err)
	}
	if err := m.vol.Sync(ctx); err != nil {
		return fmt.Errorf("sync local volume after replay: %w", err)
	}
	m.log.Info("replayed committed batches", "batches", lastVS-from)
	return nil
}

// toBatch converts wire blocks to a local batch (sharing the data).
func toBatch(blocks []*wire.Block) *blockdev.Batch {
	b := &blockdev.Batch{Writes: make([]blockdev.Write, len(blocks))}
	for i, blk := range blocks {
		b.Writes[i] = blockdev.Write{Index: blk.GetIndex(), Data: blk.GetData()}
	}
	return b
}

// toBlocks converts a local batch to wire blocks (sharing the data).
func toBlocks(b *blockdev.Batch) []*wire.Block {
	blocks := make([]*wire.Block, len(b.Writes))
	for i, w := range b.Writes {
		blocks[i] = &wire.Block{Index: w.Index, Data: w.Data}
	}
	return blocks
}

// persistLocked records the state (and the bitmap first, when it changed),
// with the durable applied position.
func (m *Mirror) persistLocked() error {
	if m.bitmapDirty {
		if err := blockdev.SaveBitmap(m.cfg.FS, filepath.Join(m.cfg.Dir, bitmapFile), m.bitmap); err != nil {
			return err
		}
		m.bitmapDirty = false
	}
	p := m.st
	p.AppliedVolumeSeq, p.AppliedSeq = m.durableVS, m.durableSeq
	if p == m.saved {
		return nil
	}
	if err := saveState(m.cfg.FS, m.cfg.Dir, p); err != nil {
		return err
	}
	m.saved = p
	return nil
}

// syncedLocked records that the local volume was synced after everything
// applied so far.
func (m *Mirror) syncedLocked() {
	m.durableVS, m.durableSeq = m.st.AppliedVolumeSeq, m.st.AppliedSeq
}

// failLocked stops the mirror after a local error: every pend fails, and
// every later Commit.
func (m *Mirror) failLocked(err error) error {
	if m.failed == nil {
		m.failed = fmt.Errorf("mirror of volume %q stopped: %w", m.cfg.Name, err)
		m.log.Error("mirror stopped after a local error", "err", err)
		// Nothing more goes to the intermediate, not even a report: the
		// state in memory may be ahead of what the disk recorded.
		m.dropStreamLocked()
	}
	for _, p := range m.pends {
		m.completeLocked(p, m.failed)
	}
	m.pends, m.pendBytes = nil, 0
	m.cond.Broadcast()
	return m.failed
}

// completeLocked completes p with err (unless its operation was already
// told it committed) and retires it.
func (m *Mirror) completeLocked(p *pend, err error) {
	m.signalLocked(p, err)
	m.retireLocked(p)
}

// signalLocked tells p's waiters the outcome, once.
func (m *Mirror) signalLocked(p *pend, err error) {
	if p.signalled {
		return
	}
	p.signalled = true
	p.err = err
	close(p.done)
}

// retireLocked drops p's overlay blocks (it is in the local volume, or
// will never be) as p leaves the pipeline.
func (m *Mirror) retireLocked(p *pend) {
	if p.batch != nil {
		m.ovMu.Lock()
		for _, w := range p.batch.Writes {
			if o := m.overlay[w.Index]; o != nil && o.vs == p.vs {
				delete(m.overlay, w.Index)
			}
		}
		m.ovMu.Unlock()
	}
	if p.regions != nil {
		m.copyInflight--
	}
}

// markLocked marks the regions b writes and reports whether a region was
// newly marked.
func (m *Mirror) markLocked(b *blockdev.Batch) bool {
	before := m.bitmap.Count()
	for _, w := range b.Writes {
		m.bitmap.SetBlock(w.Index)
	}
	if m.bitmap.Count() != before {
		m.bitmapDirty = true
		return true
	}
	return false
}

// localPendsLocked applies every pend's batch to the local volume, marking
// its regions in the bitmap first (made durable before the local writes),
// and removes them from the pipeline; it returns them.
func (m *Mirror) localPendsLocked() ([]*pend, error) {
	pends := m.pends
	m.pends, m.pendBytes = nil, 0
	for _, p := range pends {
		if p.batch != nil {
			m.markLocked(p.batch)
		}
	}
	if err := m.persistLocked(); err != nil {
		m.pends = pends
		return nil, err
	}
	for _, p := range pends {
		if p.batch == nil {
			continue
		}
		if err := m.vol.Apply(context.WithoutCancel(m.ctx), p.batch, blockdev.ApplyOptions{}); err != nil {
			m.pends = pends
			return nil, fmt.Errorf("apply batch %d to the local volume: %w", p.vs, err)
		}
	}
	if err := m.vol.Sync(context.WithoutCancel(m.ctx)); err != nil {
		return nil, fmt.Errorf("sync local volume: %w", err)
	}
	m.syncedLocked()
	return pends, nil
}

// dropStreamLocked closes the Submit stream, abandoning its pipeline.
func (m *Mirror) dropStreamLocked() {
	if m.stream != nil {
		m.stream.Close()
		m.stream = nil
	}
	m.copySent = map[uint64]bool{}
}

// suspendLocked suspends mirroring (fence level never): pending batches are
// applied locally and marked, and the mirror goes on locally.
func (m *Mirror) suspendLocked(cause error) error {
	m.dropStreamLocked()
	pends, err := m.localPendsLocked()
	if err != nil {
		return m.failLocked(err)
	}
	m.st.State = StateSusp
	m.st.Reason = cause.Error()
	m.suspend = nil
	m.unavailable = nil
	if err := m.persistLocked(); err != nil {
		return m.failLocked(err)
	}
	for _, p := range pends {
		m.completeLocked(p, nil)
	}
	m.copyDone, m.copyTotal = 0, 0
	m.cond.Broadcast()
	m.log.Warn("mirroring suspended: changes are local and marked in the primary bitmap", "cause", cause,
		"dirty_regions", m.bitmap.Count(), "pending_applied_locally", len(pends))
	return nil
}

// fenceLocked fences the mirror after a stale-epoch refusal: pending batches
// are applied locally and marked (they are what failback must copy back),
// and the volume takes no more changes.
func (m *Mirror) fenceLocked(cause error) error {
	m.dropStreamLocked()
	pends, err := m.localPendsLocked()
	if err != nil {
		return m.failLocked(err)
	}
	m.st.State = StateFenced
	m.st.Reason = cause.Error()
	m.unavailable, m.suspend = nil, nil
	if err := m.persistLocked(); err != nil {
		return m.failLocked(err)
	}
	ferr := fmt.Errorf("%w: %w", ErrFenced, cause)
	for _, p := range pends {
		m.completeLocked(p, ferr)
	}
	m.copyDone, m.copyTotal = 0, 0
	m.cond.Broadcast()
	m.log.Error("volume fenced: the intermediate refused this primary's epoch (promoted elsewhere); the mount is read-only from now on",
		"epoch", m.st.Epoch, "cause", cause, "dirty_regions", m.bitmap.Count())
	return nil
}

// connectedLocked takes a newly opened stream into use: after a suspension
// it starts the resync; otherwise it finishes the pends the intermediate
// already committed and resubmits the others.
func (m *Mirror) connectedLocked(v *client.Volume) error {
	lastVS, lastSeq := v.OpenedAt()
	if lastVS < m.st.AppliedVolumeSeq {
		v.Close()
		return m.failLocked(fmt.Errorf("the intermediate holds volume %q up to volume seq %d, but the local volume applied up to %d: the intermediate lost committed batches",
			m.cfg.Name, lastVS, m.st.AppliedVolumeSeq))
	}
	m.copyWindow = v.CopyOpen()
	if m.st.State == StateSusp {
		// Everything the intermediate holds is in the local volume or
		// superseded by marked changes: record that before sending anything,
		// so that a restart replays only what this stream commits.
		if err := m.vol.Sync(context.WithoutCancel(m.ctx)); err != nil {
			v.Close()
			return m.failLocked(fmt.Errorf("sync local volume: %w", err))
		}
		m.st.AppliedVolumeSeq, m.st.AppliedSeq = lastVS, lastSeq
		m.syncedLocked()
		m.st.State = StateResync
		m.st.Reason = ""
		if err := m.persistLocked(); err != nil {
			v.Close()
			return m.failLocked(err)
		}
		m.stream = v
		m.startCopyLocked()
		m.log.Info("intermediate reachable again: resynchronising the marked regions", "dirty_regions", m.bitmap.Count())
		// Nothing marked (a volume promoted without the intermediate that
		// changed nothing since): the resync is done at once.
		m.finishCopyLocked()
		m.cond.Broadcast()
		return nil
	}
	// Pends the intermediate committed (its acks were lost with the old
	// stream) are applied; the others go out again with the same volume
	// seqs.
	var keep []*pend
	for _, p := range m.pends {
		if p.vs > lastVS {
			keep = append(keep, p)
			continue
		}
		if err := m.applyLocked(p, lastSeq); err != nil {
			v.Close()
			return err
		}
	}
	m.st.AppliedVolumeSeq, m.st.AppliedSeq = lastVS, lastSeq
	m.pends = keep
	for _, p := range keep {
		np := submitTo(v, p.blocks, p.copying)
		if np.VolumeSeq() != p.vs {
			v.Close()
			return m.failLocked(fmt.Errorf("resubmitted batch %d got volume seq %d", p.vs, np.VolumeSeq()))
		}
		p.p = np
		m.copyWindow = p.copying
	}
	m.stream = v
	m.startCopyLocked()
	m.finishCopyLocked() // a copy with nothing (left) to copy ends here; it reports
	m.log.Info("submit stream reopened", "resubmitted", len(keep), "last_volume_seq", lastVS)
	m.cond.Broadcast()
	return nil
}

// applyLocked applies a committed pend to the local volume and completes
// it.
func (m *Mirror) applyLocked(p *pend, seq uint64) error {
	if p.batch != nil {
		if err := m.vol.Apply(context.WithoutCancel(m.ctx), p.batch, blockdev.ApplyOptions{}); err != nil {
			return m.failLocked(fmt.Errorf("apply batch %d to the local volume: %w", p.vs, err))
		}
	}
	m.appliedLocked(p, seq)
	return nil
}

// appliedLocked accounts for a committed pend applied to the local volume
// (a copy batch needs no local write) and completes it.
func (m *Mirror) appliedLocked(p *pend, seq uint64) {
	if p.regions != nil {
		m.copiedBytes += uint64(len(p.blocks)) * blockdev.BlockSize
	}
	for _, r := range p.regions {
		if m.copySent[r] {
			delete(m.copySent, r)
			m.bitmap.ClearRegion(r)
			m.bitmapDirty = true
			m.copyDone++
		}
	}
	m.st.AppliedVolumeSeq, m.st.AppliedSeq = p.vs, seq
	m.pendBytes -= p.bytes
	m.completeLocked(p, nil)
}

// Status returns the mirror's state.
func (m *Mirror) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := Status{
		State: m.st.State, Fence: m.cfg.Fence, Epoch: m.st.Epoch, DirtyRegions: m.bitmap.Count(),
		ResyncDone: m.copyDone, ResyncTotal: m.copyTotal, CopiedBytes: m.copiedBytes, PendingBatches: len(m.pends),
		AppliedVolumeSeq: m.st.AppliedVolumeSeq, AppliedSeq: m.st.AppliedSeq, Reason: m.st.Reason,
	}
	switch {
	case m.failed != nil:
		s.Reason = m.failed.Error()
	case m.unavailable != nil:
		s.Reason = m.unavailable.Error()
	}
	return s
}

// reportLocked sends the state to the intermediate when it changed.
func (m *Mirror) reportLocked() {
	if m.stream == nil {
		return
	}
	rep := &wire.PrimaryReport{
		State: string(m.st.State), DirtyRegions: m.bitmap.Count(),
		ResyncDone: m.copyDone, ResyncTotal: m.copyTotal, Reason: m.st.Reason,
		DurableSeq: m.saved.AppliedSeq, // recorded: a restart replays from there
	}
	if m.unavailable != nil {
		rep.Reason = m.unavailable.Error()
	}
	if r := m.reported; r != nil && r.GetState() == rep.GetState() && r.GetDirtyRegions() == rep.GetDirtyRegions() &&
		r.GetResyncDone() == rep.GetResyncDone() && r.GetResyncTotal() == rep.GetResyncTotal() && r.GetReason() == rep.GetReason() &&
		r.GetDurableSeq() == rep.GetDurableSeq() {
		return
	}
	m.reported = rep
	m.stream.Report(rep)
}

// Close waits (up to the timeout) for pending batches to be committed,
// stops the goroutines, closes the Submit stream, syncs the local volume
// and records the state. It does not close the local volume.
func (m *Mirror) Close() error {
	m.mu.Lock()
	if m.closing {
		m.mu.Unlock()
		return nil
	}
	m.closing = true
	var last *pend
	if n := len(m.pends); n > 0 {
		last = m.pends[n-1]
	}
	m.cond.Broadcast()
	m.mu.Unlock()
	if last != nil {
		t := time.NewTimer(m.cfg.Timeout)
		select {
		case <-last.done:
		case <-t.C:
			m.log.Warn("closing with batches not committed at the intermediate", "timeout", m.cfg.Timeout)
		}
		t.Stop()
	}
	m.cancel()
	m.mu.Lock()
	m.cond.Broadcast()
	m.mu.Unlock()
	m.wg.Wait()

	m.mu.Lock()
	defer m.mu.Unlock()
	m.dropStreamLocked()
	for _, p := range m.pends {
		m.completeLocked(p, ErrClosed)
	}
	clean := len(m.pends) == 0 && m.failed == nil
	m.pends, m.pendBytes = nil, 0
	if m.failed != nil {
		return m.failed
	}
	if err := m.vol.Sync(context.Background()); err != nil {
		return fmt.Errorf("close mirror of volume %q: sync local volume: %w", m.cfg.Name, err)
	}
	m.syncedLocked()
	m.st.Clean = clean && m.st.State == StatePair
	if err := m.persistLocked(); err != nil {
		return fmt.Errorf("close mirror of volume %q: %w", m.cfg.Name, err)
	}
	return nil
}
