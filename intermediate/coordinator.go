package intermediate

import (
	"context"
	"errors"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/intermediate/coord"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// Defaults of the coordinator's Config fields.
const (
	// DefaultCoordinatorTick is the coordinator's tick: its unit of time
	// for retransmissions.
	DefaultCoordinatorTick = 100 * time.Millisecond
	// DefaultCoordinatorRetransmitTicks is the number of ticks after which
	// an unanswered PREPARE or VALIDATE is sent again.
	DefaultCoordinatorRetransmitTicks = 5
)

// Log attribute keys of the coordinator.
const (
	logKeySecondary = "secondary"
	logKeyTarget    = "target"
	logKeyValidated = "validated_seq"
	logKeyValid     = "valid_seq"
	logKeyMembers   = "secondaries"
	logKeyApplied   = "applied_seq"
	logKeyDurable   = "durable_seq"
)

// coordinatorStartWait bounds how long a Coordinate stream opened on the
// leader waits for the coordinator of its term to start (the leader watcher
// starts it when Raft reports the leadership).
const coordinatorStartWait = 2 * time.Second

// coordInbox is the capacity of the queue of secondaries' messages to the
// coordinator's driver; a full queue holds the streams' receivers back.
const coordInbox = 256

// Internal reasons a Coordinate stream is detached; the handler turns them
// into the refusal the secondary sees.
var (
	// errCoordinationLost: this node stopped leading.
	errCoordinationLost = errors.New("coordination moved: leadership lost")
	// errStreamReplaced: a newer stream of the same secondary was opened.
	errStreamReplaced = errors.New("a newer coordinate stream of the secondary was opened")
	// errSuspended: the secondary was suspended; its next hello resumes it.
	errSuspended = errors.New("secondary suspended: the journal dropped batches it had not applied; reconnect to resume and resynchronise")
)

// coordinator runs the PREPARE/VALIDATE coordinator on the leader (the
// driver of a coord.Coordinator, which holds the protocol's rules) and
// connects it to the secondaries' Coordinate streams.
//
// Goroutines: for each term this node leads, start (called by the leader
// watcher when Raft reports the leadership) begins a coordRun, whose driver
// goroutine (coordRun.loop) owns the coord.Coordinator: it steps it with
// ticks, the state machine's changes (valid counter, recorded validated
// seq, registered secondaries) and the secondaries' messages, and carries
// out its actions. Each Record runs on a goroutine of its own that proposes
// the RecordValidated entry, and so does each ClearSecondaryBitmap
// proposal (coordRun.clearBitmap), so the driver never waits for Raft. stop
// (leadership lost) and close (Node.Close) cancel the run, detach every
// stream and wait for the run's goroutines. Stream handlers run on gRPC's
// goroutines; they attach to the current run and hand it messages through
// its inbox; the driver hands them PREPARE and VALIDATE through each
// stream's outbox, never blocking.
type coordinator struct {
	n   *Node
	log *slog.Logger

	mu      sync.Mutex
	run     *coordRun     // the running term's coordination, nil when not leading
	started chan struct{} // closed when a run starts; replaced when it stops
	closed  bool
}

func newCoordinator(n *Node) *coordinator {
	return &coordinator{n: n, log: n.log.With(logKeyComponent, "coordinator"), started: make(chan struct{})}
}

// start begins coordinating for a term this node leads, unless it already
// does or the node is closing.
func (c *coordinator) start() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.run != nil {
		return
	}
	r := &coordRun{
		c:          c,
		log:        c.log,
		inbox:      make(chan coord.Event, coordInbox),
		recordDone: make(chan recordResult, 1),
		clearDone:  make(chan string, 1),
		links:      map[string]*coordLink{},
		reports:    map[string]*wire.SecondaryReport{},
	}
	r.ctx, r.cancel = context.WithCancelCause(context.Background())
	c.run = r
	close(c.started)
	r.wg.Add(1)
	go r.loop()
}

// stop ends the current term's coordination: every stream ends with
// NOT_LEADER and the run's goroutines are waited for.
func (c *coordinator) stop() {
	c.mu.Lock()
	r := c.run
	if r != nil {
		c.run = nil
		c.started = make(chan struct{})
	}
	c.mu.Unlock()
	if r != nil {
		r.stop(errCoordinationLost)
	}
}

// close stops coordinating for good (Node.Close).
func (c *coordinator) close() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.stop()
}

// current returns the running coordination, waiting up to
// coordinatorStartWait for it while this node is the leader (Raft reports a
// new leadership to the watcher a moment after the state changed). It
// returns nil when there is none.
func (c *coordinator) current(ctx context.Context) *coordRun {
	c.mu.Lock()
	r, started := c.run, c.started
	c.mu.Unlock()
	if r != nil || !c.n.IsLeader() {
		return r
	}
	t := time.NewTimer(coordinatorStartWait)
	defer t.Stop()
	select {
	case <-started:
	case <-t.C:
	case <-ctx.Done():
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.run
}

// secondaryView is what the leader's coordination knows of one secondary.
type secondaryView struct {
	connected         bool
	prepared, applied uint64
	report            *wire.SecondaryReport // the latest this term, nil if none
}

// coordView is a copy of the coordination's state for Status and the
// journal trimmer.
type coordView struct {
	leading     bool // a run exists
	heldBy      string
	secondaries map[string]secondaryView
}

// view returns the current coordination's state; leading is false when
// this node does not coordinate.
func (c *coordinator) view() coordView {
	c.mu.Lock()
	r := c.run
	c.mu.Unlock()
	if r == nil {
		return coordView{}
	}
	return r.snapshot()
}

// recordResult is the outcome of one RecordValidated proposal.
type recordResult struct {
	n   uint64
	err error
}

// coordRun is the coordination of one term.
type coordRun struct {
	c          *coordinator
	log        *slog.Logger
	ctx        context.Context
	cancel     context.CancelCauseFunc
	wg         sync.WaitGroup
	inbox      chan coord.Event
	recordDone chan recordResult
	clearDone  chan string // the secondary of a ClearSecondaryBitmap proposal that ended

	// mu guards the fields below; the driver publishes its state into them
	// after every step.
	mu       sync.Mutex
	stopped  bool
	links    map[string]*coordLink // the attached streams, by secondary ID
	reports  map[string]*wire.SecondaryReport
	heldBy   string
	prepared map[string]uint64
	applied  map[string]uint64
}

// stop cancels the run, detaches every stream with reason and waits for
// the run's goroutines.
func (r *coordRun) stop(reason error) {
	r.cancel(reason)
	r.halt(reason)
	r.wg.Wait()
	r.log.Info("stopped coordinating", logKeyErr, reason)
}

// halt detaches every stream with reason and refuses new ones; the run's
// goroutines stop with stop.
func (r *coordRun) halt(reason error) {
	r.mu.Lock()
	r.stopped = true
	links := r.links
	r.links = map[string]*coordLink{}
	r.mu.Unlock()
	for _, l := range links {
		l.detach(reason)
	}
}

// attach makes l the stream of its secondary, replacing (and ending) an
// older one. It returns false when the run has stopped.
func (r *coordRun) attach(l *coordLink) bool {
	r.mu.Lock()
	if r.stopped {
		r.mu.Unlock()
		return false
	}
	old := r.links[l.id]
	r.links[l.id] = l
	r.mu.Unlock()
	if old != nil {
		old.detach(errStreamReplaced)
		r.log.Info("secondary stream replaced by a newer one", logKeySecondary, l.id)
	} else {
		r.log.Info("secondary connected", logKeySecondary, l.id)
	}
	return true
}

// detach removes l if it is still its secondary's stream.
func (r *coordRun) detach(l *coordLink) {
	r.mu.Lock()
	current := r.links[l.id] == l
	if current {
		delete(r.links, l.id)
	}
	r.mu.Unlock()
	if current {
		r.log.Info("secondary disconnected", logKeySecondary, l.id)
	}
}

// deliver hands a secondary's message to the driver. It gives up when the
// stream is detached or ctx ends.
func (r *coordRun) deliver(ctx context.Context, l *coordLink, ev coord.Event) {
	select {
	case r.inbox <- ev:
	case <-l.done:
	case <-r.ctx.Done():
	case <-ctx.Done():
	}
}

// report records a secondary's latest report.
func (r *coordRun) report(id string, rep *wire.SecondaryReport) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reports[id] = proto.CloneOf(rep)
}

func (r *coordRun) snapshot() coordView {
	r.mu.Lock()
	defer r.mu.Unlock()
	v := coordView{leading: true, heldBy: r.heldBy, secondaries: map[string]secondaryView{}}
	get := func(id string) secondaryView { return v.secondaries[id] }
	for id, p := range r.prepared {
		sv := get(id)
		sv.prepared = p
		v.secondaries[id] = sv
	}
	for id, a := range r.applied {
		sv := get(id)
		sv.applied = a
		v.secondaries[id] = sv
	}
	for id := range r.links {
		sv := get(id)
		sv.connected = true
		v.secondaries[id] = sv
	}
	for id, rep := range r.reports {
		sv := get(id)
		sv.report = rep
		v.secondaries[id] = sv
	}
	return v
}

// link returns the attached stream of secondary id, or nil.
func (r *coordRun) link(id string) *coordLink {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.links[id]
}

// driver is the state of the driver goroutine.
type driver struct {
	r        *coordRun
	co       *coord.Coordinator
	members  map[string]bool // the secondaries the coordinator knows
	recorded uint64          // the validated seq last stepped
	failed   uint64          // a Record whose proposal failed, retried at the next tick
	clearing map[string]bool // secondaries with a ClearSecondaryBitmap proposal in flight
}

// loop is the driver goroutine of a term.
func (r *coordRun) loop() {
	defer r.wg.Done()
	n := r.c.n
	// Apply everything committed before this term first, so that the
	// registered secondaries and the validated seq are the group's.
	for {
		err := waitFuture(r.ctx, n.raft.Barrier(n.cfg.ApplyTimeout))
		if err == nil {
			break
		}
		if r.ctx.Err() != nil {
			return
		}
		if errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrRaftShutdown) {
			r.log.Info("not leading any more; coordination waits for the leader watcher", logKeyErr, err)
			<-r.ctx.Done()
			return
		}
		r.log.Warn("raft barrier before coordinating", logKeyErr, err)
		if !sleepCtx(r.ctx, n.cfg.CoordinatorTick) {
			return
		}
	}
	fsm := n.fsm
	d := &driver{r: r, members: map[string]bool{}, recorded: fsm.Validated(), clearing: map[string]bool{}}
	var ids []string
	for _, s := range fsm.Secondaries() {
		if s.Suspended {
			continue // not a member until its hello resumes it
		}
		ids = append(ids, s.ID)
		d.members[s.ID] = true
	}
	// Dynamic: what a secondary holds is learnt from its HELLO, never
	// assumed from the recorded point (see coord's Membership).
	d.co = coord.New(coord.Config{Secondaries: ids, RetransmitTicks: n.cfg.CoordinatorRetransmitTicks, Dynamic: true}, d.recorded)
	r.log.Info("took over coordination", logKeyValidated, d.recorded, logKeyValid, fsm.Stats().ValidSeq, logKeyMembers, ids)

	tick := time.NewTicker(n.cfg.CoordinatorTick)
	defer tick.Stop()
	for {
		changed := fsm.Changed()
		d.sync()
		d.publish()
		select {
		case <-r.ctx.Done():
			return
		case <-n.Fatal():
			r.log.Warn("state machine stopped: coordination stops", logKeyErr, n.FatalErr())
			r.halt(wire.Errorf(wire.ErrorCode_ERROR_CODE_FAILED, "node %s stopped: %v", n.cfg.ID, n.FatalErr()))
			return
		case <-tick.C:
			if d.failed != 0 {
				d.step(coord.RecordFailed{N: d.failed})
				d.failed = 0
			}
			d.step(coord.Tick{})
			d.clearBitmaps()
		case <-changed:
		case ev := <-r.inbox:
			_, hello := ev.(coord.Hello)
			if hello {
				// Its registration was applied before it greeted.
				d.sync()
			}
			d.step(ev)
			if _, applied := ev.(coord.Applied); applied || hello {
				d.clearBitmaps()
			}
		case id := <-r.clearDone:
			delete(d.clearing, id)
		case res := <-r.recordDone:
			if res.err != nil {
				r.log.Warn("record validated seq", logKeySeq, res.n, logKeyErr, res.err)
				d.failed = res.n
			}
		}
	}
}

// sync steps what changed in the state machine: the registered
// secondaries (a suspended one is not a member: it leaves, and its stream,
// if attached, is ended so that it reconnects, which resumes it), the valid
// counter and the recorded validated seq.
func (d *driver) sync() {
	fsm := d.r.c.n.fsm
	secs := fsm.Secondaries()
	now := make(map[string]bool, len(secs))
	for _, s := range secs {
		if s.Suspended {
			if l := d.r.link(s.ID); l != nil {
				d.r.log.Warn("ending the stream of a suspended secondary", logKeySecondary, s.ID)
				l.detach(errSuspended)
			}
			continue
		}
		now[s.ID] = true
		if !d.members[s.ID] {
			d.members[s.ID] = true
			d.r.log.Info("secondary joins the group", logKeySecondary, s.ID, logKeyVolume, s.Volume)
			d.step(coord.Registered{ID: s.ID})
		}
	}
	for _, id := range slices.Sorted(maps.Keys(d.members)) {
		if !now[id] {
			delete(d.members, id)
			d.r.log.Info("secondary left the group (removed or suspended)", logKeySecondary, id)
			d.step(coord.Removed{ID: id})
		}
	}
	// Points are prepared up to the consistent seq, never inside a
	// primary's open copy window (its volume is torn there).
	d.step(coord.Valid{Seq: fsm.Stats().ConsistentSeq})
	if v := fsm.Validated(); v > d.recorded {
		d.recorded = v
		d.r.log.Debug("validated seq recorded", logKeyValidated, v)
		d.step(coord.Recorded{N: v})
	}
}

// step feeds ev to the coordinator and carries out its actions.
func (d *driver) step(ev coord.Event) {
	r := d.r
	for _, a := range d.co.Step(ev) {
		switch a := a.(type) {
		case coord.SendPrepare:
			r.log.Debug("prepare", logKeySecondary, a.To, logKeyTarget, a.N)
			if l := r.link(a.To); l != nil {
				l.queue(a.N, 0)
			}
		case coord.SendValidate:
			r.log.Debug("validate", logKeySecondary, a.To, logKeyValidated, a.N)
			if l := r.link(a.To); l != nil {
				l.queue(0, a.N)
			}
		case coord.Record:
			r.log.Debug("recording validated seq", logKeyValidated, a.N)
			r.wg.Add(1)
			go r.record(a.N)
		}
	}
}

// clearBitmaps proposes ClearSecondaryBitmap for every member whose
// intermediate bitmap is not empty and which applied a point at or above
// the bitmap's marked seq: its replica holds every batch that marked it (it
// got there through a resync covering the regions, or staged those batches
// before the journal dropped them). A failed proposal is retried at the
// next tick.
func (d *driver) clearBitmaps() {
	for _, s := range d.r.c.n.fsm.Secondaries() {
		if s.Suspended || s.MarkedSeq == 0 || d.clearing[s.ID] {
			continue
		}
		if applied, ok := d.co.Applied(s.ID); ok && applied >= s.MarkedSeq {
			d.clearing[s.ID] = true
			d.r.wg.Add(1)
			go d.r.clearBitmap(s.ID, applied)
		}
	}
}

// clearBitmap proposes ClearSecondaryBitmap{id, upTo} and tells the
// driver when the proposal ended.
func (r *coordRun) clearBitmap(id string, upTo uint64) {
	defer r.wg.Done()
	entry := &wire.Entry{Op: &wire.Entry_ClearSecondaryBitmap{ClearSecondaryBitmap: &wire.ClearSecondaryBitmap{Id: id, UpToSeq: upTo}}}
	if _, err := r.c.n.apply(r.ctx, entry); err != nil {
		r.log.Warn("clear the intermediate bitmap of a secondary", logKeySecondary, id, logKeyApplied, upTo, logKeyErr, err)
	}
	select {
	case r.clearDone <- id:
	case <-r.ctx.Done():
	}
}

// record proposes validated = n and reports the outcome to the driver.
func (r *coordRun) record(n uint64) {
	defer r.wg.Done()
	_, err := r.c.n.apply(r.ctx, &wire.Entry{Op: &wire.Entry_RecordValidated{RecordValidated: &wire.RecordValidated{Seq: n}}})
	select {
	case r.recordDone <- recordResult{n: n, err: err}:
	case <-r.ctx.Done():
	}
}

// publish copies the coordinator's state for readers.
func (d *driver) publish() {
	r := d.r
	prepared := make(map[string]uint64, len(d.members))
	applied := make(map[string]uint64, len(d.members))
	for _, id := range d.co.Secondaries() {
		prepared[id], _ = d.co.Prepared(id)
		applied[id], _ = d.co.Applied(id)
	}
	held := d.co.HeldBackBy()
	r.mu.Lock()
	r.prepared, r.applied, r.heldBy = prepared, applied, held
	r.mu.Unlock()
}

// coordLink is one secondary's Coordinate stream attached to a run: its
// outbox keeps the highest PREPARE and the highest VALIDATE not sent yet,
// which the stream's handler sends.
type coordLink struct {
	id string
	// helloApplied is the applied point of the secondary's hello.
	helloApplied uint64
	wake         chan struct{} // a message was queued
	done         chan struct{} // closed when the run detached the stream
	once         sync.Once
	err          error // why it was detached; set before done is closed

	mu                sync.Mutex
	prepare, validate uint64 // pending, 0 when none
}

func newCoordLink(id string, helloApplied uint64) *coordLink {
	return &coordLink{id: id, helloApplied: helloApplied, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// queue adds a PREPARE(prepare) and a VALIDATE(validate) (0: none) to the
// outbox without blocking; a pending lower one is superseded.
func (l *coordLink) queue(prepare, validate uint64) {
	l.mu.Lock()
	l.prepare = max(l.prepare, prepare)
	l.validate = max(l.validate, validate)
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// take empties the outbox.
func (l *coordLink) take() (prepare, validate uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	prepare, validate = l.prepare, l.validate
	l.prepare, l.validate = 0, 0
	return prepare, validate
}

// detach ends the stream's attachment with reason (the first one stays).
func (l *coordLink) detach(reason error) {
	l.once.Do(func() {
		l.err = reason
		close(l.done)
	})
}

// sleepCtx waits for d or ctx; it reports whether d passed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}
