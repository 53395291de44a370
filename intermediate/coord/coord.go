// Package coord is the pure core of the PREPARE/VALIDATE coordinator that
// runs on the intermediate leader (DESIGN.md §5). It does no I/O, starts no
// goroutine and reads no clock: a driver feeds it events (Step) and carries
// out the actions it returns, in order. Time is the number of Tick events.
//
// # Protocol
//
// The coordinator of a group knows the valid counter V (every batch with
// seq <= V is committed; Valid events raise it) and the validated seq
// recorded in Raft (Recorded). Each secondary s has a prepared point P(s):
// the highest N it reported with PREPARED(N), which it sends only when it
// holds, durably, every batch of its volumes with seq <= N.
//
//  1. Prepare round. When no round is open and V is above the last target,
//     the coordinator opens a round with target T = V and sends
//     PREPARE(T) to every secondary with P(s) < T. A round closes when
//     every P(s) >= T.
//  2. Record. Whenever min P(s) over all secondaries (capped at V) is above
//     the recorded seq and no Record is in flight, it returns Record(N) for
//     that N: the driver proposes validated = N to Raft and reports
//     Recorded(N) once it is applied, or never if leadership is lost. At
//     most one Record is outstanding: a Record(N) stops being outstanding
//     when Recorded reports N or more, which may come from an old leader's
//     entry before this one's is applied. Because secondaries report partial
//     progress (PREPARED(min(D, asked))), the validated point can move
//     before a round closes.
//  3. Validate. After Recorded(N) it sends VALIDATE(N) to every secondary
//     whose reported applied point is below N; a secondary applies its
//     staged batches <= N atomically and answers APPLIED(N).
//
// Rounds pipeline: a new PREPARE may go out while secondaries apply the
// previous VALIDATE. Every message is idempotent and every answer is a fact
// about durable state that never goes back (P(s) and applied only rise), so
// the coordinator keeps the maximum it heard and ignores the rest. On Tick
// it re-sends PREPARE(T) to every secondary with P(s) < T and
// VALIDATE(recorded) to every secondary with applied < recorded, once
// Config.RetransmitTicks ticks passed since the last send to it (at once if
// it never sent to it). A secondary that restarts sends HELLO with its
// applied and durable points; the coordinator takes both as answers and
// re-sends what that secondary still lacks at once.
//
// A new coordinator (a leader change) is created with New from the recorded
// validated seq only: it knows nothing of its predecessor's rounds, never
// validates anything lower, and, not knowing who applied what, sends
// VALIDATE(recorded) to every secondary on its first Tick so that those
// that missed it finish.
//
// # Safety
//
// The invariants are: validated only increases; a validated N was prepared
// by every secondary (each holds, durably, every batch <= N); a secondary
// applies only validated points, in increasing order. The argument:
//
//  1. Record(N) is returned only when every secondary reported PREPARED(N')
//     with N' >= N. A secondary reports N' only when its durable staged
//     watermark D >= N', and D never decreases, so at Record time, and at
//     every time after, every secondary holds everything <= N. Reports
//     from an older incarnation of a secondary or sent to an older
//     coordinator are still true, which is why they need no epoch.
//  2. Record(N) is returned only for N above the recorded seq. A new
//     leader may start before an old leader's Record(N0) is applied and
//     then record a lower N, later in the log; so the state machine must
//     apply validated = max(validated, N), and Recorded carries what it
//     applied. The coordinator also keeps the maximum. So validated only
//     increases, whatever the leader changes.
//  3. VALIDATE(N) is only ever sent for N = the recorded seq at the time:
//     a value that Raft applied, which is final; and only to a secondary
//     that prepared N (confirmed, or unconfirmed with a report >= N: see
//     Membership). A VALIDATE from a stale
//     coordinator therefore still names a validated point, and applying a
//     lower validated point than the one a secondary holds is a no-op
//     (secondaries apply only N above their applied point). So stale
//     VALIDATEs are safe without a leader term, and a stale PREPARE only
//     asks for a report that is true whoever reads it. Messages carry no
//     term.
//
// Liveness needs the usual: a stable leader, secondaries that eventually
// stage up to V, and messages that eventually get through (retransmission
// covers drops; duplicates and reordering are absorbed by taking maxima).
// A Record that the driver could not get into Raft (RecordFailed) is given
// up, and the next Record is for the highest point then prepared.
//
// # Membership
//
// The secondaries of Config.Secondaries are confirmed: the coordinator
// takes every recorded point as prepared by each of them, which holds when
// the group's secondaries never change (a recorded point was prepared by all
// of them, for good). That is what lets New start every secondary at
// prepared = recorded and send VALIDATE(recorded) to all on the first Tick.
//
// A secondary added at run time (Registered) is unconfirmed: a recorded
// point says nothing of it, because the point may have been decided before
// it joined, by this coordinator or by an earlier leader's. It starts at
// prepared 0 and counts only what it reports. Record still needs every
// secondary, so the validated point does not move until a joining
// secondary caught up; and VALIDATE(N) goes to an unconfirmed secondary
// only once it reported PREPARED (or HELLO durable) >= N, at once when its
// report crosses the recorded point. A secondary told VALIDATE(N) for an N
// it does not hold durably must stop (see secondary.Follower), so this
// guard is what makes a join safe. With Config.Dynamic every secondary is
// unconfirmed: a driver whose group changes over time (the intermediate's)
// cannot tell which secondaries a recorded point covered, and learns what
// each one holds from its HELLO when it connects. Removed takes a secondary
// out; the others may then record at once.
//
// # Concurrency
//
// A Coordinator is not safe for concurrent use: one goroutine (the driver)
// calls Step and the accessors.
package coord

import (
	"fmt"
	"slices"
)

// DefaultRetransmitTicks is the number of ticks after which an unanswered
// PREPARE or VALIDATE is sent again when Config.RetransmitTicks is zero.
const DefaultRetransmitTicks = 3

// Config is the static configuration of a Coordinator.
type Config struct {
	// Secondaries names every secondary of the group, without duplicates.
	// Their order is the order of the actions Step returns.
	Secondaries []string
	// RetransmitTicks is how many ticks pass before an unanswered PREPARE
	// or VALIDATE is re-sent to a secondary; 0 means
	// DefaultRetransmitTicks.
	RetransmitTicks int
	// Dynamic makes every secondary, those of Secondaries included,
	// unconfirmed (see Membership in the package documentation): nothing
	// is assumed of what they prepared. Secondaries may then be empty, and
	// the group's secondaries change with Registered and Removed events.
	Dynamic bool
}

// Validate reports what is wrong with c, naming the field.
func (c Config) Validate() error {
	if len(c.Secondaries) == 0 && !c.Dynamic {
		return fmt.Errorf("coord config: Secondaries: empty")
	}
	for i, s := range c.Secondaries {
		if s == "" {
			return fmt.Errorf("coord config: Secondaries[%d]: empty name", i)
		}
		if slices.Contains(c.Secondaries[:i], s) {
			return fmt.Errorf("coord config: Secondaries[%d]: duplicate %q", i, s)
		}
	}
	if c.RetransmitTicks < 0 {
		return fmt.Errorf("coord config: RetransmitTicks: %d is negative", c.RetransmitTicks)
	}
	return nil
}

// Event is an input to Coordinator.Step: Tick, Valid, Prepared, Applied,
// Hello, Recorded, RecordFailed, Registered or Removed.
type Event interface{ isEvent() }

// Tick advances the coordinator's time by one tick; it drives
// retransmission.
type Tick struct{}

// Valid reports the group's valid counter: every batch with seq <= Seq is
// committed. Lower values than already known are ignored.
type Valid struct{ Seq uint64 }

// Prepared is a secondary's PREPARED(N): it holds, durably, every batch of
// its volumes with seq <= N.
type Prepared struct {
	From string
	N    uint64
}

// Applied is a secondary's APPLIED(N): its replica is at validated point N.
type Applied struct {
	From string
	N    uint64
}

// Hello is sent by a secondary when it (re)starts: its replica is at
// Applied and its staging store holds, durably, everything <= Durable.
type Hello struct {
	From    string
	Applied uint64
	Durable uint64
}

// Recorded reports that Raft applied validated = N (N may be lower than
// already recorded, or come from an earlier leader's Record).
type Recorded struct{ N uint64 }

// RecordFailed reports that the driver could not get the validated seq N
// of a Record into Raft (the proposal failed, or leadership was lost while
// it was in flight): the coordinator stops waiting for it and returns a new
// Record, for the highest point prepared then, from this step on. The
// entry may still be applied later (Recorded), which is harmless: the state
// machine keeps the maximum. A RecordFailed for an N other than the Record
// in flight is ignored.
type RecordFailed struct{ N uint64 }

// Registered adds secondary ID to the group at run time, unconfirmed (see
// Membership in the package documentation), and asks it at once to
// prepare the open round's target. A known ID is ignored.
type Registered struct{ ID string }

// Removed takes secondary ID out of the group. An unknown ID is ignored.
type Removed struct{ ID string }

func (Tick) isEvent()         {}
func (Valid) isEvent()        {}
func (Prepared) isEvent()     {}
func (Applied) isEvent()      {}
func (Hello) isEvent()        {}
func (Recorded) isEvent()     {}
func (RecordFailed) isEvent() {}
func (Registered) isEvent()   {}
func (Removed) isEvent()      {}

// Action is an output of Coordinator.Step: SendPrepare, SendValidate or
// Record.
type Action interface{ isAction() }

// SendPrepare asks the driver to send PREPARE(N) to secondary To.
type SendPrepare struct {
	To string
	N  uint64
}

// SendValidate asks the driver to send VALIDATE(N) to secondary To.
type SendValidate struct {
	To string
	N  uint64
}

// Record asks the driver to propose validated = N to Raft and to step
// Recorded{N} once it is applied. Every secondary has prepared N.
type Record struct{ N uint64 }

func (SendPrepare) isAction()  {}
func (SendValidate) isAction() {}
func (Record) isAction()       {}

// never is the send time of a message not sent yet.
const never = -1

type peer struct {
	id string
	// confirmed: every recorded point counts as prepared by this
	// secondary (see Membership).
	confirmed    bool
	prepared     uint64 // highest PREPARED heard (or Hello.Durable)
	applied      uint64 // highest APPLIED heard (or Hello.Applied)
	prepareSent  int    // tick of the last PREPARE, or never
	validateSent int    // tick of the last VALIDATE, or never
}

// Coordinator is the coordinator core of one group. Create it with New.
type Coordinator struct {
	retransmit int
	peers      []*peer
	now        int
	valid      uint64 // valid counter
	recorded   uint64 // validated seq applied by Raft
	target     uint64 // target of the last prepare round opened
	recording  uint64 // N of the Record in flight, 0 if none
}

// New returns the coordinator of a group whose recorded validated seq is
// recorded: a new leader's coordinator. It panics if cfg is invalid.
func New(cfg Config, recorded uint64) *Coordinator {
	if err := cfg.Validate(); err != nil {
		panic(err)
	}
	c := &Coordinator{
		retransmit: cfg.RetransmitTicks,
		valid:      recorded,
		recorded:   recorded,
		target:     recorded,
	}
	if c.retransmit == 0 {
		c.retransmit = DefaultRetransmitTicks
	}
	for _, id := range cfg.Secondaries {
		if cfg.Dynamic {
			c.peers = append(c.peers, newUnconfirmed(id))
			continue
		}
		// A recorded point was prepared by every secondary, for good.
		c.peers = append(c.peers, &peer{id: id, confirmed: true, prepared: recorded, prepareSent: never, validateSent: never})
	}
	return c
}

// newUnconfirmed returns a secondary of which nothing is known.
func newUnconfirmed(id string) *peer {
	return &peer{id: id, prepareSent: never, validateSent: never}
}

// Step feeds one event to the coordinator and returns what the driver must
// do, in order. Events naming an unknown secondary are ignored.
func (c *Coordinator) Step(ev Event) []Action {
	var out []Action
	switch ev := ev.(type) {
	case Tick:
		c.now++
		for _, p := range c.peers {
			if p.prepared < c.target && c.due(p.prepareSent) {
				out = c.sendPrepare(out, p)
			}
			if p.applied < c.recorded && c.mayValidate(p) && c.due(p.validateSent) {
				out = c.sendValidate(out, p)
			}
		}
	case Valid:
		c.valid = max(c.valid, ev.Seq)
	case Prepared:
		if p := c.peer(ev.From); p != nil {
			was := p.prepared
			p.prepared = max(p.prepared, ev.N)
			// An unconfirmed secondary that just reached the recorded
			// point may apply it now.
			if !p.confirmed && was < c.recorded && c.mayValidate(p) && p.applied < c.recorded {
				out = c.sendValidate(out, p)
			}
		}
	case Applied:
		if p := c.peer(ev.From); p != nil {
			p.applied = max(p.applied, ev.N)
		}
	case Hello:
		p := c.peer(ev.From)
		if p == nil {
			break
		}
		p.prepared = max(p.prepared, ev.Durable)
		p.applied = max(p.applied, ev.Applied)
		// A restarted secondary forgot what it was asked: ask again now.
		if p.prepared < c.target {
			out = c.sendPrepare(out, p)
		}
		if p.applied < c.recorded && c.mayValidate(p) {
			out = c.sendValidate(out, p)
		}
	case Recorded:
		if ev.N >= c.recording {
			c.recording = 0
		}
		if ev.N > c.recorded {
			c.recorded = ev.N
			c.target = max(c.target, c.recorded)
			for _, p := range c.peers {
				if p.applied < c.recorded && c.mayValidate(p) {
					out = c.sendValidate(out, p)
				}
			}
		}
	case RecordFailed:
		if ev.N != 0 && ev.N == c.recording {
			c.recording = 0
		}
	case Registered:
		if ev.ID != "" && c.peer(ev.ID) == nil {
			p := newUnconfirmed(ev.ID)
			c.peers = append(c.peers, p)
			if p.prepared < c.target {
				out = c.sendPrepare(out, p)
			}
		}
	case Removed:
		c.peers = slices.DeleteFunc(c.peers, func(p *peer) bool { return p.id == ev.ID })
	default:
		panic(fmt.Sprintf("coord: unknown event %T", ev))
	}
	return c.advance(out)
}

// advance records what every secondary prepared and opens the next round.
func (c *Coordinator) advance(out []Action) []Action {
	if len(c.peers) == 0 {
		return out // nobody to prepare for: nothing is recorded
	}
	if n := min(c.minPrepared(), c.valid); n > c.recorded && c.recording == 0 {
		c.recording = n
		out = append(out, Record{N: n})
	}
	if c.valid > c.target && c.minPrepared() >= c.target {
		c.target = c.valid
		for _, p := range c.peers {
			if p.prepared < c.target {
				out = c.sendPrepare(out, p)
			}
		}
	}
	return out
}

// mayValidate reports whether p prepared the recorded point: VALIDATE of it
// may go to p.
func (c *Coordinator) mayValidate(p *peer) bool {
	return p.confirmed || p.prepared >= c.recorded
}

func (c *Coordinator) due(sent int) bool {
	return sent == never || c.now-sent >= c.retransmit
}

func (c *Coordinator) sendPrepare(out []Action, p *peer) []Action {
	p.prepareSent = c.now
	return append(out, SendPrepare{To: p.id, N: c.target})
}

func (c *Coordinator) sendValidate(out []Action, p *peer) []Action {
	p.validateSent = c.now
	return append(out, SendValidate{To: p.id, N: c.recorded})
}

func (c *Coordinator) peer(id string) *peer {
	for _, p := range c.peers {
		if p.id == id {
			return p
		}
	}
	return nil
}

// minPrepared returns the lowest prepared point; there is at least one
// secondary.
func (c *Coordinator) minPrepared() uint64 {
	m := c.peers[0].prepared
	for _, p := range c.peers[1:] {
		m = min(m, p.prepared)
	}
	return m
}

// Secondaries returns the IDs of the group's secondaries: those of
// Config.Secondaries, in order, then those Registered since, minus those
// Removed.
func (c *Coordinator) Secondaries() []string {
	out := make([]string, len(c.peers))
	for i, p := range c.peers {
		out[i] = p.id
	}
	return out
}

// Recorded returns the validated seq recorded in Raft, as last reported by
// a Recorded event or given to New.
func (c *Coordinator) Recorded() uint64 { return c.recorded }

// Valid returns the highest valid counter reported.
func (c *Coordinator) Valid() uint64 { return c.valid }

// Target returns the target of the last prepare round opened (the recorded
// seq if none was).
func (c *Coordinator) Target() uint64 { return c.target }

// Recording returns the N of the Record in flight, or 0 if none is.
func (c *Coordinator) Recording() uint64 { return c.recording }

// Prepared returns the highest point secondary id reported prepared, and
// false if id is not a secondary of the group.
func (c *Coordinator) Prepared(id string) (uint64, bool) {
	if p := c.peer(id); p != nil {
		return p.prepared, true
	}
	return 0, false
}

// Applied returns the highest point secondary id reported applied, and
// false if id is not a secondary of the group. The journal may drop the
// batches at or below the minimum over all secondaries (MinApplied).
func (c *Coordinator) Applied(id string) (uint64, bool) {
	if p := c.peer(id); p != nil {
		return p.applied, true
	}
	return 0, false
}

// MinApplied returns the lowest applied point reported over all
// secondaries, 0 when there is none.
func (c *Coordinator) MinApplied() uint64 {
	if len(c.peers) == 0 {
		return 0
	}
	m := c.peers[0].applied
	for _, p := range c.peers[1:] {
		m = min(m, p.applied)
	}
	return m
}

// HeldBackBy names the secondary that holds the validated point back: the
// first, in the order of Secondaries, of those with the lowest prepared
// point, if that point is below the valid counter. It returns "" if every
// secondary has prepared the valid counter, or if there is none.
func (c *Coordinator) HeldBackBy() string {
	if len(c.peers) == 0 {
		return ""
	}
	m := c.minPrepared()
	if m >= c.valid {
		return ""
	}
	for _, p := range c.peers {
		if p.prepared == m {
			return p.id
		}
	}
	return ""
}
