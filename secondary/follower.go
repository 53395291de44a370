package secondary

import "fmt"

// Follower is the pure core of a secondary's side of PREPARE/VALIDATE (the
// coordinator's side is package intermediate/coord, whose doc states the
// protocol and the safety argument). It does no I/O, starts no goroutine
// and reads no clock: the follower loop steps it with events and carries out
// the actions it returns, in order. It is not safe for concurrent use.
//
// Its state is the replica's applied point A (Replica.Applied), the staging
// store's durable watermark D (Stage.Durable), both durable, and, lost at a
// restart, the highest N a PREPARE asked for, the apply in flight and the
// VALIDATE waiting for it.
//
// PREPARE(N) is answered with PREPARED(min(D, highest N asked)) when that
// is above zero, at once (even if sent before: the answer may have been
// lost); and whenever D rises, the point is sent again if it grew. So a
// secondary reports partial progress, which shows in status and lets the
// validated point move before a round closes, and never reports above what
// it holds durably or above what a coordinator asked (so above the valid
// counter).
//
// VALIDATE(N) for N at or below A is answered with APPLIED(A). For N above
// A the follower keeps the highest such N and returns StartApply(N) once no
// apply is in flight and N <= D. A validated N is final (Raft recorded it),
// so waiting for D to reach it is safe: that happens when a secondary joins
// a group whose validated point is above what it staged (it fetches the
// batches from the journal first), or after a damaged staging store
// recovered a lower D. ApplyDone(N) sets A = N, answers APPLIED(N), and
// starts the highest waiting N if it is staged.
type Follower struct {
	id       string
	applied  uint64 // A
	durable  uint64 // D
	asked    uint64 // highest PREPARE received since the start
	reported uint64 // highest PREPARED sent since the start
	applying uint64 // N of the apply in flight, 0 if none
	next     uint64 // highest VALIDATE above A received since the start
	floor    uint64 // a resync staged the volume at floor: nothing below it can be applied
}

// FollowerEvent is an input to Follower.Step: Staged, PrepareMsg,
// ValidateMsg, ApplyDone or Restarted.
type FollowerEvent interface{ isFollowerEvent() }

// Staged reports the staging store's durable watermark (Stage.Durable after
// a Sync). Lower values than already known are ignored.
type Staged struct{ Durable uint64 }

// PrepareMsg is a PREPARE(N) received from a coordinator.
type PrepareMsg struct{ N uint64 }

// ValidateMsg is a VALIDATE(N) received from a coordinator.
type ValidateMsg struct{ N uint64 }

// ApplyDone reports that the apply StartApply(N) asked for completed: the
// replica is durably at N.
type ApplyDone struct{ N uint64 }

// Resynced reports that a resync staged, durably and aside, the volume as
// it is at seq At (a copy of the regions the journal dropped, with the
// batches after them): the secondary holds everything up to At, but as one
// state, not as batches, so it can move its replica to At or beyond, never
// to a point between its applied point and At. The follower then reports
// PREPARED up to At and applies only validated points at or above At.
type Resynced struct{ At uint64 }

// Restarted is stepped once when the follower loop starts (after a restart
// or the first time): the follower greets the coordinator.
type Restarted struct{}

func (Staged) isFollowerEvent()      {}
func (PrepareMsg) isFollowerEvent()  {}
func (ValidateMsg) isFollowerEvent() {}
func (ApplyDone) isFollowerEvent()   {}
func (Resynced) isFollowerEvent()    {}
func (Restarted) isFollowerEvent()   {}

// FollowerAction is an output of Follower.Step: SendPrepared, SendApplied,
// SendHello, StartApply or Violation.
type FollowerAction interface{ isFollowerAction() }

// SendPrepared asks the driver to send PREPARED(N) to the coordinator.
type SendPrepared struct{ N uint64 }

// SendApplied asks the driver to send APPLIED(N) to the coordinator.
type SendApplied struct{ N uint64 }

// SendHello asks the driver to send HELLO to the coordinator.
type SendHello struct{ Applied, Durable uint64 }

// StartApply asks the driver to apply the staged batches up to N to the
// replica as one atomic round (Replica.ApplyRound) and to step ApplyDone{N}
// when it is durable. At most one is in flight.
type StartApply struct{ N uint64 }

// Violation reports an event that breaks the protocol, such as an
// ApplyDone for an apply that is not in flight. The driver must stop
// following (fail-stop) and report Err.
type Violation struct{ Err error }

func (SendPrepared) isFollowerAction() {}
func (SendApplied) isFollowerAction()  {}
func (SendHello) isFollowerAction()    {}
func (StartApply) isFollowerAction()   {}
func (Violation) isFollowerAction()    {}

// NewFollower returns the core of secondary id whose replica is at applied
// and whose staging store holds durably everything <= durable, as read from
// disk at start. Step Restarted next to greet the coordinator.
func NewFollower(id string, applied, durable uint64) *Follower {
	return &Follower{id: id, applied: applied, durable: max(durable, applied)}
}

// Step feeds one event to the follower and returns what the driver must do,
// in order.
func (f *Follower) Step(ev FollowerEvent) []FollowerAction {
	switch ev := ev.(type) {
	case Restarted:
		return []FollowerAction{SendHello{Applied: f.applied, Durable: f.durable}}
	case Staged:
		f.durable = max(f.durable, ev.Durable)
		var out []FollowerAction
		if p := f.prepared(); p > f.reported {
			f.reported = p
			out = append(out, SendPrepared{N: p})
		}
		return f.maybeApply(out)
	case Resynced:
		f.durable = max(f.durable, ev.At)
		f.floor = max(f.floor, ev.At)
		var out []FollowerAction
		if p := f.prepared(); p > f.reported {
			f.reported = p
			out = append(out, SendPrepared{N: p})
		}
		return f.maybeApply(out)
	case PrepareMsg:
		f.asked = max(f.asked, ev.N)
		if p := f.prepared(); p > 0 {
			f.reported = max(f.reported, p)
			return []FollowerAction{SendPrepared{N: p}}
		}
	case ValidateMsg:
		if ev.N <= f.applied {
			return []FollowerAction{SendApplied{N: f.applied}}
		}
		f.next = max(f.next, ev.N)
		return f.maybeApply(nil)
	case ApplyDone:
		if ev.N != f.applying || f.applying == 0 {
			return []FollowerAction{Violation{Err: fmt.Errorf("secondary %s: apply %d done, %d in flight", f.id, ev.N, f.applying)}}
		}
		f.applied, f.applying = ev.N, 0
		return f.maybeApply([]FollowerAction{SendApplied{N: f.applied}})
	default:
		panic(fmt.Sprintf("secondary: unknown follower event %T", ev))
	}
	return nil
}

// maybeApply starts the highest validated point received if it is above
// A, durably staged, not below a resync's floor, and no apply is in
// flight.
func (f *Follower) maybeApply(out []FollowerAction) []FollowerAction {
	if f.applying == 0 && f.next > f.applied && f.next <= f.durable && f.next >= f.floor {
		f.applying = f.next
		out = append(out, StartApply{N: f.applying})
	}
	return out
}

// Waiting returns the highest validated point received that is above the
// applied point, 0 if none: being applied, or waiting for the staging store.
func (f *Follower) Waiting() uint64 {
	if f.next > f.applied {
		return f.next
	}
	return 0
}

// prepared is the point to report: min(D, asked).
func (f *Follower) prepared() uint64 { return min(f.durable, f.asked) }

// ID returns the secondary's name.
func (f *Follower) ID() string { return f.id }

// Applied returns the replica's applied point as last reported by
// ApplyDone or given to NewFollower.
func (f *Follower) Applied() uint64 { return f.applied }

// Durable returns the durable staged watermark.
func (f *Follower) Durable() uint64 { return f.durable }

// Applying returns the N of the apply in flight, or 0 if none is.
func (f *Follower) Applying() uint64 { return f.applying }
