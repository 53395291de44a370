package secondary

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// States a secondary reports (Status.State and SecondaryReport.state).
const (
	// StatePair: the secondary follows the group's validated points.
	StatePair = "PAIR"
	// StateFailed: the secondary stopped following after an error
	// (fail-stop); its mount keeps showing the last applied point.
	StateFailed = "FAILED"
	// StateStalled: the staging area's filesystem is full (ErrStageFull):
	// fetching is paused and retried with a growing delay (up to
	// stallRetryMax); it resumes by itself once there is space. The
	// secondary holds the group's validated point meanwhile.
	StateStalled = "STALLED"
)

// Retry delays of a fetcher whose stage is full.
const (
	stallRetryMin = 500 * time.Millisecond
	stallRetryMax = 30 * time.Second
)

// Names of the directories a secondary keeps in its data directory.
const (
	replicaDirName = "replica"
	stageDirName   = "stage"
)

// DefaultRoundStep bounds the staged bytes one atomic step of a round
// applies (and holds in memory) when Config.RoundStep is zero; see
// Secondary.applyRound.
const DefaultRoundStep = 64 << 20

// DefaultReportInterval is how often, at most, a secondary sends its report
// to the leader when Config.ReportInterval is zero.
const DefaultReportInterval = 250 * time.Millisecond

// ErrCompacted means the intermediate's journal no longer holds batches
// the secondary needs: it must be resynchronised from the intermediate
// volume.
var ErrCompacted = errors.New("journal compacted past the secondary's position")

// Intermediate is what a Secondary needs of the intermediate cluster;
// *client.Client implements it.
type Intermediate interface {
	Status(ctx context.Context) (*wire.StatusResponse, error)
	Fetch(ctx context.Context, volume string, afterSeq uint64, fn func(*wire.FetchResponse) error) error
	Coordinate(ctx context.Context, opts client.CoordinateOptions) (*client.Link, error)
	ReadVolume(ctx context.Context, volume string, blockCount uint64, fn func(*wire.ReadVolumeResponse) error) error
	ReadRegions(ctx context.Context, secondary string, blockCount uint64, fn func(*wire.ReadVolumeResponse) error) error
}

// View is what moves with the replica at each round: the read-only mount
// (fusefs.Server.Advance). Advance must call apply once and make what it
// changed visible atomically to its readers.
type View interface {
	Advance(ctx context.Context, apply func(ctx context.Context) (applied uint64, changed []uint64, err error)) error
}

// Config configures a Secondary.
type Config struct {
	// ID names the secondary in its group; default the volume name.
	ID string
	// Volume is the volume it follows.
	Volume string
	// Group is the consistency group; default client.DefaultGroup.
	Group string
	// Dir is the secondary's data directory: it holds the replica and the
	// staging store.
	Dir string
	// Addr is the secondary's admin address, reported to the leader.
	Addr string
	// Intermediate is the intermediate cluster.
	Intermediate Intermediate
	// ReportInterval bounds how often the secondary reports its state to
	// the leader; default DefaultReportInterval.
	ReportInterval time.Duration
	// RoundStep bounds the staged bytes of one atomic step of a round
	// (a long round is applied in steps); default DefaultRoundStep, at most
	// DefaultMaxRoundBytes.
	RoundStep int64
	// InPlaceBytes is the replica's ReplicaOptions.InPlaceBytes: rounds
	// (or steps of a round) of that many block bytes or more are written
	// in place; 0 means DefaultInPlaceBytes, negative never.
	InPlaceBytes int64
	// FS is the file system of Dir; default blockdev.OSFS.
	FS blockdev.FS
	// Logger receives the secondary's logs; default slog.Default().
	Logger *slog.Logger
	// PeerInterval is how often the secondary asks the intermediate for the
	// group's secondaries (GroupView); default DefaultPeerInterval.
	PeerInterval time.Duration
	// IntermediateAddrs are the intermediate's addresses, shown in Status
	// (for tricopy promote); informational.
	IntermediateAddrs []string
	// Failback, when set and Dir holds no replica yet, builds the replica
	// from an old primary's volume (tricopy failback) instead of an empty
	// one or a copy of the intermediate volume; Intermediate must then
	// implement Failbacker.
	Failback *FailbackSource
	// OnPromote turns the volume into a primary once Promote rolled the
	// replica forward (see Promote); nil does nothing.
	OnPromote func(ctx context.Context, p Promotion) error
	// IndependentApply is a test-only switch that turns off the consistent
	// cut: the secondary does not take part in PREPARE/VALIDATE and applies
	// whatever it staged, IndependentApplyDelay after staging it. It exists
	// so that the cross-host consistency test can prove it detects a torn
	// cut; never use it in production.
	IndependentApply bool
	// IndependentApplyDelay is the delay of IndependentApply.
	IndependentApplyDelay time.Duration
	// OnCopyProgress, when set, is told the progress of an initial copy of
	// the intermediate volume, in blocks: with 0 and the volume's block
	// count when the copy starts (again after a leader change restarts it),
	// then after each chunk written. Open calls it on its own goroutine;
	// it must return quickly.
	OnCopyProgress func(doneBlocks, totalBlocks uint64)
	// HoldApply is a test-only switch: while it returns true the applier
	// applies no validated point (the secondary still stages and
	// prepares), so that a benchmark can build a backlog of staged batches
	// for promote to roll forward. Never set it in production.
	HoldApply func() bool
}

// replicaOptions returns the options of the secondary's replicas.
func (c Config) replicaOptions(log *slog.Logger) ReplicaOptions {
	return ReplicaOptions{FS: c.FS, Logger: log, InPlaceBytes: c.InPlaceBytes}
}

func (c Config) withDefaults() (Config, error) {
	if err := wire.CheckVolumeName(c.Volume); err != nil {
		return c, fmt.Errorf("secondary config: Volume: %w", err)
	}
	if c.ID == "" {
		c.ID = c.Volume
	}
	if c.Group == "" {
		c.Group = client.DefaultGroup
	}
	if c.Dir == "" {
		return c, errors.New("secondary config: Dir: empty")
	}
	if c.Intermediate == nil {
		return c, errors.New("secondary config: Intermediate: nil")
	}
	switch {
	case c.ReportInterval == 0:
		c.ReportInterval = DefaultReportInterval
	case c.ReportInterval < 0:
		return c, fmt.Errorf("secondary config: ReportInterval: negative (%s)", c.ReportInterval)
	}
	switch {
	case c.RoundStep == 0:
		c.RoundStep = DefaultRoundStep
	case c.RoundStep < 0 || c.RoundStep > DefaultMaxRoundBytes:
		return c, fmt.Errorf("secondary config: RoundStep: %d is not between 1 and %d", c.RoundStep, DefaultMaxRoundBytes)
	}
	switch {
	case c.PeerInterval == 0:
		c.PeerInterval = DefaultPeerInterval
	case c.PeerInterval < 0:
		return c, fmt.Errorf("secondary config: PeerInterval: negative (%s)", c.PeerInterval)
	}
	if c.IndependentApplyDelay < 0 {
		return c, fmt.Errorf("secondary config: IndependentApplyDelay: negative (%s)", c.IndependentApplyDelay)
	}
	if c.FS == nil {
		c.FS = blockdev.OSFS{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// Status is a secondary's view of itself.
type Status struct {
	ID     string `json:"id"`
	Volume string `json:"volume"`
	Group  string `json:"group"`
	// State is StatePair, StateResync or StateFailed (StateCopy is only
	// reported to the leader, while Open copies).
	State string `json:"state"`
	// Reason says why State is not PAIR.
	Reason string `json:"reason,omitempty"`
	// Connected says whether the Coordinate link to the leader is open.
	Connected bool `json:"connected"`
	// AppliedSeq is the validated point the replica (and its mount) is at.
	AppliedSeq uint64 `json:"applied_seq"`
	// DurableSeq: every batch of the volume up to it is durably staged.
	DurableSeq uint64 `json:"durable_seq"`
	// FetchedSeq: every batch of the volume up to it was fetched.
	FetchedSeq uint64 `json:"fetched_seq"`
	// ValidatedSeq is the highest validated point heard, 0 if none above
	// AppliedSeq is pending.
	ValidatedSeq uint64 `json:"validated_seq"`
	// BlockCount is the volume's size in blocks.
	BlockCount uint64 `json:"block_count"`
	// Epoch is the volume's epoch: as last learned from the intermediate,
	// or the new one once promoted.
	Epoch uint64 `json:"epoch"`
	// Role is "secondary", or "primary" once promoted.
	Role string `json:"role"`
	// Peers are the group's secondaries, as last learned from the
	// intermediate (kept on disk, so known when it is gone).
	Peers []Peer `json:"peers"`
	// GroupVolumes are the group's volumes at the intermediate, as last
	// learned.
	GroupVolumes []string `json:"group_volumes"`
	// Intermediate lists the intermediate's addresses it uses.
	Intermediate []string `json:"intermediate"`
	// Promotion is its promotion record, absent if never promoted.
	Promotion *Promotion `json:"promotion,omitempty"`
	// Failback is the failback copy this process made (tricopy failback),
	// absent if none.
	Failback *FailbackStats `json:"failback,omitempty"`
}

// Roles of Status.Role.
const (
	RoleSecondary = "secondary"
	RolePrimary   = "primary"
)

// Secondary follows one volume of a group: it fetches the volume's committed
// batches into a staging store, answers the coordinator's PREPARE and
// VALIDATE, and applies validated points to its replica and view.
//
// Goroutines (started by Start, stopped by Close): the fetcher (Fetch
// stream → Stage), the driver (owns the Follower core; steps it with
// events), the applier (ApplyRound through the view, then Stage.Trim), the
// reporter, and the client's Coordinate link.
type Secondary struct {
	cfg      Config
	log      *slog.Logger
	replicaP atomic.Pointer[Replica] // replaced by a resync, under applyMu
	stage    *Stage

	events chan any      // to the driver
	apply  chan applyReq // driver → applier

	// fetchedVS is the volume seq of the last batch the fetcher staged
	// since this Open or its last resync (0: not known): every batch it
	// stages next must have the next volume seq, since the intermediate
	// commits a volume's batches without a gap. Only the fetcher uses it.
	fetchedVS uint64

	// applyMu is held by the applier for each round, by Check (a check
	// sees one applied point) and by a resync (the replica it copies does
	// not move); it guards pending.
	applyMu sync.Mutex
	pending *pendingResync // a resync staged aside, nil if none

	// promoteMu serialises Promote calls.
	promoteMu sync.Mutex

	// authRefused counts admin API requests refused for their certificate.
	authRefused atomic.Uint64

	mu        sync.Mutex
	group     GroupView      // what it learned of its group
	promotion *Promotion     // its promotion record, nil if none
	failback  *FailbackStats // the failback copy this Open made, nil if none
	state     string
	reason    string
	connected bool
	validated uint64
	link      *client.Link
	view      View
	applied   chan struct{} // closed and replaced at each applied point

	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed bool
}

// Open opens the secondary's replica and staging store in cfg.Dir, creating
// them if they do not exist: the volume's size is then asked of the
// intermediate, waiting (until ctx ends) for the volume to be registered
// there. Call Start to follow the group.
func Open(ctx context.Context, cfg Config) (*Secondary, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger.With("volume", cfg.Volume, "secondary", cfg.ID)
	ropts := cfg.replicaOptions(log)
	rdir := filepath.Join(cfg.Dir, replicaDirName)
	if err := RecoverReplica(rdir, ropts); err != nil {
		return nil, fmt.Errorf("secondary %q: %w", cfg.ID, err)
	}
	replica, err := OpenReplica(rdir, ropts)
	var fbStats *FailbackStats
	if errors.Is(err, fs.ErrNotExist) && cfg.Failback != nil {
		var st FailbackStats
		replica, st, err = failbackReplica(ctx, cfg, log)
		fbStats = &st
	} else if errors.Is(err, fs.ErrNotExist) {
		var blocks uint64
		blocks, err = waitVolume(ctx, cfg, log)
		if err != nil {
			return nil, err
		}
		replica, err = CreateReplica(rdir, cfg.Volume, blocks, ropts)
		if err == nil {
			log.Info("created replica", "dir", rdir, "blocks", blocks)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("secondary %q: %w", cfg.ID, err)
	}
	if replica.Volume() != cfg.Volume {
		replica.Close()
		return nil, fmt.Errorf("secondary %q: replica %q holds volume %q, not %q", cfg.ID, rdir, replica.Volume(), cfg.Volume)
	}
	stage, err := OpenStage(filepath.Join(cfg.Dir, stageDirName), StageOptions{
		FS: cfg.FS, Volume: cfg.Volume, BlockCount: replica.BlockCount(), Logger: log,
	})
	if err != nil {
		replica.Close()
		return nil, fmt.Errorf("secondary %q: %w", cfg.ID, err)
	}
	if _, err := redoInterrupted(ctx, log, replica, stage); err != nil {
		replica.Close()
		stage.Close()
		return nil, fmt.Errorf("secondary %q: %w", cfg.ID, err)
	}
	if replica.Applied() == 0 && stage.Fetched() == 0 {
		// A new secondary of a volume whose journal no longer holds its
		// first batches starts with a copy of the intermediate volume.
		if vol, ok := volumeStatus(ctx, cfg); ok && vol.GetTrimmedSeq() > 0 {
			replica, err = initialCopy(ctx, cfg, log, replica, stage)
			if err != nil {
				stage.Close()
				return nil, fmt.Errorf("secondary %q: initial copy: %w", cfg.ID, err)
			}
		}
	}
	s := &Secondary{
		cfg:     cfg,
		log:     log,
		stage:   stage,
		events:  make(chan any, 256),
		apply:   make(chan applyReq, 2),
		state:   StatePair,
		applied: make(chan struct{}),
	}
	s.replicaP.Store(replica)
	s.failback = fbStats
	if s.group, err = loadGroupView(cfg.FS, cfg.Dir); err != nil {
		s.closeStores()
		return nil, fmt.Errorf("secondary %q: %w", cfg.ID, err)
	}
	if s.promotion, err = loadPromotion(cfg.FS, cfg.Dir); err != nil {
		s.closeStores()
		return nil, fmt.Errorf("secondary %q: %w", cfg.ID, err)
	}
	if p := s.promotion; p != nil {
		s.state, s.reason = StatePromoted, fmt.Sprintf("promoted at seq %d to epoch %d (promotion %s)", p.N, p.Epoch, p.ID)
		if !p.Done {
			s.reason = fmt.Sprintf("promotion %s to seq %d did not finish: run tricopy promote again", p.ID, p.N)
		}
	}
	// Batches at or below the applied point are in the replica: the stage
	// need not hold them (it may have lost them in a crash that cut its
	// unsynced tail, after the replica applied them).
	if a := replica.Applied(); stage.Fetched() < a {
		err := stage.MarkFetched(a)
		if err == nil {
			err = stage.Sync()
		}
		if err != nil {
			s.closeStores()
			return nil, fmt.Errorf("secondary %q: %w", cfg.ID, err)
		}
	}
	log.Info("opened secondary", "applied_seq", replica.Applied(), "durable_seq", stage.Durable(), "blocks", replica.BlockCount())
	return s, nil
}

// redoInterrupted writes the replica's interrupted in-place round again
// from the staged batches, which the stage keeps until the replica applied
// them (Replica.Redo), so that the replica's blocks are whole before
// anything reads them. It returns the blocks the round wrote.
func redoInterrupted(ctx context.Context, log *slog.Logger, r *Replica, stage *Stage) ([]uint64, error) {
	from, to, ok := r.InterruptedRound()
	if !ok {
		return nil, nil
	}
	log.Warn("the replica's last round was interrupted while written in place: redoing it from the staged batches",
		"applied_seq", from, "round", to)
	changed, err := r.Redo(ctx, stage.Batches(from, to))
	if err != nil {
		return nil, fmt.Errorf("redo the interrupted round of replica %q from seq %d to %d: %w", r.dir, from, to, err)
	}
	return changed, nil
}

// volumeStatus asks the intermediate for the volume's record; ok is false
// when it cannot say (unreachable, not registered).
func volumeStatus(ctx context.Context, cfg Config) (*wire.VolumeStatus, bool) {
	st, err := cfg.Intermediate.Status(ctx)
	if err != nil {
		return nil, false
	}
	for _, v := range st.GetVolumes() {
		if v.GetName() == cfg.Volume {
			return v, true
		}
	}
	return nil, false
}

// waitVolume waits until the intermediate knows the volume and returns its
// block count.
func waitVolume(ctx context.Context, cfg Config, log *slog.Logger) (uint64, error) {
	var lastLog time.Time
	for {
		st, err := cfg.Intermediate.Status(ctx)
		if err == nil {
			for _, v := range st.GetVolumes() {
				if v.GetName() == cfg.Volume && v.GetBlockCount() > 0 {
					return v.GetBlockCount(), nil
				}
			}
		}
		if time.Since(lastLog) > 10*time.Second {
			lastLog = time.Now()
			if err != nil {
				log.Info("waiting for the intermediate to learn the volume's size", "err", err)
			} else {
				log.Info("waiting for the volume's primary to register it at the intermediate")
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("secondary %q: wait for volume %q at the intermediate: %w", cfg.ID, cfg.Volume, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Replica returns the secondary's replica, for the read-only mount.
func (s *Secondary) Replica() *Replica { return s.rep() }

// rep returns the current replica (a resync replaces it).
func (s *Secondary) rep() *Replica { return s.replicaP.Load() }

// Start starts following the group. Every validated point is applied
// through view (nil: applied to the replica directly). Start returns once
// the goroutines run; Close stops them.
func (s *Secondary) Start(view View) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return fmt.Errorf("start secondary %q: closed", s.cfg.ID)
	}
	if s.cancel != nil {
		return fmt.Errorf("start secondary %q: already started", s.cfg.ID)
	}
	s.view = view
	if s.promotion != nil {
		// A promoted volume follows no more; Promote finishes an
		// unfinished promotion.
		s.cancel = func() {}
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	if !s.cfg.IndependentApply {
		link, err := s.cfg.Intermediate.Coordinate(ctx, client.CoordinateOptions{
			Hello:       s.hello,
			OnMessage:   s.onMessage,
			OnConnected: s.onConnected,
		})
		if err != nil {
			cancel()
			return fmt.Errorf("start secondary %q: %w", s.cfg.ID, err)
		}
		s.link = link
	}
	s.wg.Add(4)
	go s.fetcher(ctx)
	go s.applier(ctx)
	go s.peerWatcher(ctx)
	if s.cfg.IndependentApply {
		s.log.Warn("independent apply (test-only): the consistent cut is off", "delay", s.cfg.IndependentApplyDelay)
		go s.independent(ctx)
	} else {
		go s.driver(ctx)
		s.wg.Add(1)
		go s.reporter(ctx)
	}
	return nil
}

// hello is the link's hello, taken at every (re)connection.
func (s *Secondary) hello() *wire.SecondaryHello {
	return &wire.SecondaryHello{
		Group:      s.cfg.Group,
		Secondary:  s.cfg.ID,
		Volume:     s.cfg.Volume,
		Addr:       s.cfg.Addr,
		AppliedSeq: s.exposedSeq(),
		DurableSeq: max(s.stage.Durable(), s.rep().Applied()),
	}
}

// exposedSeq is the validated point the replica shows: its applied seq, or
// 0 for an initial copy not validated yet (its seq is no validated point,
// and saying it applied it would keep the leader from sending the VALIDATE
// that shows it).
func (s *Secondary) exposedSeq() uint64 {
	if r := s.rep(); r.Exposable() {
		return r.Applied()
	}
	return 0
}

// onMessage hands a coordinator message to the driver.
func (s *Secondary) onMessage(m *wire.CoordinateResponse) { s.post(m) }

func (s *Secondary) onConnected(up bool) {
	s.mu.Lock()
	s.connected = up
	s.mu.Unlock()
	if up {
		s.post(connected{})
	}
}

// connected tells the driver the link (re)opened: the follower greets.
type connected struct{}

// failure tells the driver a goroutine stopped on an error.
type failure struct{ err error }

// post queues an event for the driver. The queue is large; the driver only
// steps a pure core, so it never falls far behind.
func (s *Secondary) post(ev any) { s.events <- ev }

// fetcher stages the volume's batches as the intermediate commits them.
func (s *Secondary) fetcher(ctx context.Context) {
	defer s.wg.Done()
	stall := time.Duration(0) // the current retry delay while the stage is full
	for {
		after := s.stage.Fetched()
		err := s.cfg.Intermediate.Fetch(ctx, s.cfg.Volume, after, func(resp *wire.FetchResponse) error {
			if resp.GetCompacted() {
				return fmt.Errorf("fetch after seq %d: %w", s.stage.Fetched(), ErrCompacted)
			}
			if err := s.stageFetched(resp); err != nil {
				return fmt.Errorf("stage batches of volume %q: %w", s.cfg.Volume, err)
			}
			if stall != 0 {
				stall = 0
				s.log.Info("the staging area has space again: fetching resumed", "fetched_seq", s.stage.Fetched())
				s.setStateFrom(StateStalled, StatePair, "")
			}
			s.post(Staged{Durable: s.stage.Durable()})
			return nil
		})
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrStageFull) {
			// Not fail-stop: the stage is as it was (or holds a prefix
			// of the batches), and space may be freed.
			stall = min(max(2*stall, stallRetryMin), stallRetryMax)
			s.log.Warn("the staging area is full: fetching paused; it is retried and resumes by itself once there is space",
				"dir", s.stage.dir, "retry_in", stall, "err", err)
			s.setStateFrom("", StateStalled, fmt.Sprintf("staging area %s is full: fetching paused, retried every %s (%v)", s.stage.dir, stall, err))
			select {
			case <-ctx.Done():
				return
			case <-time.After(stall):
			}
			continue
		}
		if !errors.Is(err, ErrCompacted) || s.cfg.IndependentApply {
			s.post(failure{fmt.Errorf("fetch: %w", err)})
			return
		}
		// The journal dropped batches this secondary lacks (it was
		// suspended while it lagged): resynchronise from the intermediate
		// volume, then follow the journal from where the resync ends.
		s.log.Warn("the journal no longer holds this secondary's next batches: resynchronising", "fetched_seq", after)
		s.fetchedVS = 0 // the resync covers the batches the journal dropped
		at, err := s.resync(ctx)
		if err != nil {
			if ctx.Err() == nil {
				s.post(failure{fmt.Errorf("resync: %w", err)})
			}
			return
		}
		s.post(Resynced{At: at})
	}
}

// stageFetched stages the batches of a Fetch response and the point it says
// the volume is complete up to, durably. A batch at or below the fetched
// point is refused: Fetch asked for the batches after it, so the stream's
// seq went back (the stage would skip it as a re-fetch). So is a batch
// whose volume seq does not follow the previous one's: a batch of the
// volume is missing (or repeated), which the complete point claimed sent.
func (s *Secondary) stageFetched(resp *wire.FetchResponse) error {
	bs := resp.GetBatches()
	if len(bs) > 0 {
		if fetched := s.stage.Fetched(); bs[0].GetSeq() <= fetched {
			return fmt.Errorf("%w: batch seq %d at or below the fetched point %d: seqs must increase",
				wire.ErrBadRequest, bs[0].GetSeq(), fetched)
		}
	}
	vs := s.fetchedVS
	for _, cb := range bs {
		got := cb.GetBatch().GetVolumeSeq()
		if vs != 0 && got != vs+1 {
			return fmt.Errorf("%w: batch seq %d has volume seq %d after volume seq %d: a batch of the volume is missing or repeated",
				wire.ErrBadRequest, cb.GetSeq(), got, vs)
		}
		vs = got
	}
	if err := s.stage.Append(bs); err != nil {
		// A full stage may have taken a prefix of the batches.
		for _, cb := range bs {
			if cb.GetSeq() <= s.stage.Last() {
				s.fetchedVS = cb.GetBatch().GetVolumeSeq()
			}
		}
		return err
	}
	s.fetchedVS = vs
	if err := s.stage.MarkFetched(resp.GetCompleteSeq()); err != nil {
		return err
	}
	return s.stage.Sync()
}

// applier applies the rounds the driver starts, one at a time.
func (s *Secondary) applier(ctx context.Context) {
	defer s.wg.Done()
	for {
		select {
		case <-ctx.Done():
			return
		case req := <-s.apply:
			for s.cfg.HoldApply != nil && s.cfg.HoldApply() {
				select {
				case <-ctx.Done():
					return
				case <-time.After(20 * time.Millisecond):
				}
			}
			if err := s.applyRound(ctx, req.n); err != nil {
				if ctx.Err() == nil {
					s.post(failure{err})
				}
				return
			}
			s.post(ApplyDone{N: req.n})
		}
	}
}

// applyReq asks the applier to apply validated point n (the Follower's
// StartApply).
type applyReq struct{ n uint64 }

// applyRound moves the replica and the view to n, then trims the stage.
//
// A round holding more than Config.RoundStep bytes of staged batches (a
// secondary catching up after an outage) is applied in steps that end at
// seqs below n, each atomic like a round: every such point is a prefix of
// the global order, so a consistent cut, and every secondary prepared it
// (it is below the validated n), so the replicas can all reach it; the
// secondary reports APPLIED only for n.
func (s *Secondary) applyRound(ctx context.Context, n uint64) error {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	start := time.Now()
	s.mu.Lock()
	view := s.view
	s.mu.Unlock()
	if s.pending != nil && n >= s.pending.at {
		if err := s.installResync(ctx, n, view); err != nil {
			return err
		}
		return s.trimAndSignal(n, start)
	}
	if err := s.applySteps(ctx, n, view); err != nil {
		return err
	}
	return s.trimAndSignal(n, start)
}

// applySteps moves the replica and the view to n from the staged batches,
// in atomic steps of at most Config.RoundStep bytes; the caller holds
// applyMu.
func (s *Secondary) applySteps(ctx context.Context, n uint64, view View) error {
	steps := s.stage.Steps(s.rep().Applied(), n, s.cfg.RoundStep)
	if len(steps) == 0 && !s.rep().Exposable() {
		steps = []uint64{n} // a copy at a point now validated: only the header changes
	}
	for _, step := range steps {
		apply := func(ctx context.Context) (uint64, []uint64, error) {
			changed, err := s.rep().ApplyRound(ctx, step, s.stage.Batches(s.rep().Applied(), step))
			return s.rep().Applied(), changed, err
		}
		var err error
		if view != nil {
			err = view.Advance(ctx, apply)
		} else {
			_, _, err = apply(ctx)
		}
		if err != nil {
			return fmt.Errorf("apply point %d (step to %d): %w", n, step, err)
		}
	}
	return nil
}

// trimAndSignal trims the stage after a round to n and wakes WaitApplied.
func (s *Secondary) trimAndSignal(n uint64, start time.Time) error {
	if err := s.stage.Trim(n); err != nil {
		return fmt.Errorf("trim the staging store after %d: %w", n, err)
	}
	s.mu.Lock()
	close(s.applied)
	s.applied = make(chan struct{})
	s.mu.Unlock()
	s.log.Debug("applied validated point", "applied_seq", n, "took", time.Since(start))
	return nil
}

// driver owns the Follower core: it steps it with the events of the
// fetcher, the link and the applier, and carries out its actions.
func (s *Secondary) driver(ctx context.Context) {
	defer s.wg.Done()
	f := NewFollower(s.cfg.ID, s.exposedSeq(), s.stage.Durable())
	if r := s.rep(); !r.Exposable() {
		// An initial copy holds the volume at its seq as one state, like a
		// resync: it is applied (shown) at the first validated point from
		// its seq on, never at one between.
		f.Step(Resynced{At: r.Applied()})
	}
	failed := false
	for {
		var ev any
		select {
		case <-ctx.Done():
			return
		case ev = <-s.events:
		}
		if failed {
			continue
		}
		var acts []FollowerAction
		switch ev := ev.(type) {
		case connected:
			// The link sent the hello itself; the core's hello is moot.
			continue
		case failure:
			s.fail(ev.err)
			failed = true
			continue
		case *wire.CoordinateResponse:
			switch {
			case ev.GetOpened() != nil:
				o := ev.GetOpened()
				if b := o.GetBlockCount(); b != 0 && b != s.rep().BlockCount() {
					s.fail(fmt.Errorf("the intermediate's volume has %d blocks, the replica %d", b, s.rep().BlockCount()))
					failed = true
					continue
				}
				// A secondary restarted between the phases learns the
				// last validated point here and finishes it.
				s.noteValidated(o.GetValidatedSeq())
				acts = f.Step(ValidateMsg{N: o.GetValidatedSeq()})
			case ev.GetPrepare() != nil:
				acts = f.Step(PrepareMsg{N: ev.GetPrepare().GetSeq()})
			case ev.GetValidate() != nil:
				s.noteValidated(ev.GetValidate().GetSeq())
				acts = f.Step(ValidateMsg{N: ev.GetValidate().GetSeq()})
			}
		case Staged:
			acts = f.Step(ev)
		case Resynced:
			acts = f.Step(ev)
		case ApplyDone:
			acts = f.Step(ev)
		}
		for _, a := range acts {
			switch a := a.(type) {
			case SendPrepared:
				s.send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Prepared{Prepared: &wire.PreparedSeq{Seq: a.N}}})
			case SendApplied:
				s.send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Applied{Applied: &wire.AppliedSeq{Seq: a.N}}})
			case SendHello:
			case StartApply:
				s.apply <- applyReq{n: a.N} // at most one in flight: never blocks
			case Violation:
				s.fail(a.Err)
				failed = true
			}
		}
	}
}

// independent is the test-only driver of Config.IndependentApply: it
// applies what is staged, IndependentApplyDelay after staging it.
func (s *Secondary) independent(ctx context.Context) {
	defer s.wg.Done()
	type point struct {
		n  uint64
		at time.Time
	}
	var (
		pending  []point
		applying bool
		tick     = time.NewTicker(10 * time.Millisecond)
	)
	defer tick.Stop()
	if !s.rep().Exposable() {
		// An initial copy: no validated point will ever come; show it.
		applying = true
		s.apply <- applyReq{n: s.rep().Applied()}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev := <-s.events:
			switch ev := ev.(type) {
			case Staged:
				pending = append(pending, point{ev.Durable, time.Now()})
			case ApplyDone:
				applying = false
			case failure:
				s.fail(ev.err)
				return
			}
		case <-tick.C:
		}
		if applying {
			continue
		}
		var n uint64
		for len(pending) > 0 && time.Since(pending[0].at) >= s.cfg.IndependentApplyDelay {
			n, pending = pending[0].n, pending[1:]
		}
		if n > s.rep().Applied() {
			applying = true
			s.apply <- applyReq{n: n}
		}
	}
}

// reporter sends the secondary's report to the leader when it changed.
func (s *Secondary) reporter(ctx context.Context) {
	defer s.wg.Done()
	tick := time.NewTicker(s.cfg.ReportInterval)
	defer tick.Stop()
	var last *wire.SecondaryReport
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		st := s.Status()
		rep := &wire.SecondaryReport{State: st.State, Reason: reportReason(st.Reason), FetchedSeq: st.FetchedSeq}
		if last != nil && last.GetState() == rep.GetState() && last.GetReason() == rep.GetReason() && last.GetFetchedSeq() == rep.GetFetchedSeq() {
			continue
		}
		last = rep
		s.send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Report{Report: rep}})
	}
}

// maxReportReason bounds the reason a secondary reports to the leader: the
// leader ends a Coordinate stream on a message over 4 KiB (for good: the
// link does not reconnect), and a failure's error may name long paths.
const maxReportReason = 1 << 10

// reportReason returns reason fit for a report: valid UTF-8 (a protobuf
// string must be) and at most maxReportReason bytes, cut with an ellipsis.
func reportReason(reason string) string {
	reason = strings.ToValidUTF8(reason, "\uFFFD")
	if len(reason) <= maxReportReason {
		return reason
	}
	const ellipsis = "…"
	cut := maxReportReason - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(reason[cut]) {
		cut--
	}
	return reason[:cut] + ellipsis
}

func (s *Secondary) send(m *wire.CoordinateRequest) {
	if s.link != nil {
		s.link.Send(m)
	}
}

func (s *Secondary) noteValidated(n uint64) {
	s.mu.Lock()
	s.validated = max(s.validated, n)
	s.mu.Unlock()
}

// fail stops following (fail-stop): the replica and its mount stay at the
// last applied point; the state says why.
func (s *Secondary) fail(err error) {
	s.mu.Lock()
	if s.state == StateFailed {
		s.mu.Unlock()
		return
	}
	s.state, s.reason = StateFailed, err.Error()
	s.mu.Unlock()
	s.log.Error("secondary stopped following (fail-stop); the replica stays at its applied point",
		"applied_seq", s.rep().Applied(), "err", err)
}

// Status returns the secondary's state.
func (s *Secondary) Status() Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Status{
		ID:         s.cfg.ID,
		Volume:     s.cfg.Volume,
		Group:      s.cfg.Group,
		State:      s.state,
		Reason:     s.reason,
		Connected:  s.connected,
		AppliedSeq: s.rep().Applied(),
		DurableSeq: s.stage.Durable(),
		FetchedSeq: s.stage.Fetched(),
		BlockCount: s.rep().BlockCount(),
	}
	if s.validated > st.AppliedSeq {
		st.ValidatedSeq = s.validated
	}
	st.Epoch, st.Role = s.group.Epoch, RoleSecondary
	st.Peers = append([]Peer{}, s.group.Peers...)
	st.GroupVolumes = append([]string{}, s.group.Volumes...)
	st.Intermediate = append([]string{}, s.cfg.IntermediateAddrs...)
	st.Failback = s.failback
	if p := s.promotion; p != nil {
		pc := *p
		st.Promotion = &pc
		st.Epoch = p.Epoch
		if p.Done {
			st.Role = RolePrimary
		}
	}
	return st
}

// WaitApplied waits until the replica is at n or beyond, ctx ends, or the
// secondary failed.
func (s *Secondary) WaitApplied(ctx context.Context, n uint64) error {
	for {
		s.mu.Lock()
		ch, state, reason := s.applied, s.state, s.reason
		s.mu.Unlock()
		if s.rep().Applied() >= n {
			return nil
		}
		if state == StateFailed {
			return fmt.Errorf("secondary %q failed: %s", s.cfg.ID, reason)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for secondary %q to apply %d (at %d): %w", s.cfg.ID, n, s.rep().Applied(), ctx.Err())
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Close stops following and closes the staging store and the replica. The
// view (the mount) must be unmounted before.
func (s *Secondary) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	return errors.Join(s.stopFollowing(), s.closeStores())
}

// stopFollowing stops the goroutines and the link; the stores stay open.
// It may be called more than once.
func (s *Secondary) stopFollowing() error {
	s.mu.Lock()
	cancel, link := s.cancel, s.link
	s.mu.Unlock()
	var err error
	if link != nil {
		err = link.Close()
	}
	if cancel != nil {
		cancel()
	}
	// The driver may be blocked posting to itself; drain while waiting.
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	for waiting := true; waiting; {
		select {
		case <-done:
			waiting = false
		case <-s.events:
		}
	}
	return err
}

func (s *Secondary) closeStores() error {
	return errors.Join(s.stage.Close(), s.rep().Close())
}
