package secondary_test

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate/coord"
	"github.com/tricopy/tricopy/secondary"
)

// TestSimulation runs the coordinator core and 2 to 4 follower cores under
// seeded random schedules: the valid counter grows, staging advances at
// random speeds, messages are delayed, dropped, duplicated and reordered,
// followers and the coordinator crash and restart. After every step it
// checks the safety invariants (see sim.check), then stops the faults and
// checks that every follower ends at the final valid counter.
//
// TRICOPY_SEED=N replays one schedule; TRICOPY_LONG=1 runs many more.
func TestSimulation(t *testing.T) {
	if s := os.Getenv("TRICOPY_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TRICOPY_SEED=%q: %v", s, err)
		}
		res := runSim(seed, simFaultSteps, true)
		if res.err != nil {
			t.Fatal(res.report())
		}
		t.Log(strings.Join(res.tail, "\n"))
		return
	}
	seeds := 2000
	if os.Getenv("TRICOPY_LONG") != "" {
		seeds = 100000
	}
	if testing.Short() {
		seeds = 200
	}
	start := time.Now()
	var records, applies, crashes, msgs int
	for seed := range uint64(seeds) {
		res := runSim(seed, simFaultSteps, false)
		if res.err != nil {
			t.Fatal(res.report())
		}
		records += res.records
		applies += res.applies
		crashes += res.crashes
		msgs += res.msgs
	}
	t.Logf("%d schedules in %v: %d records, %d applies, %d crashes, %d messages",
		seeds, time.Since(start).Round(time.Millisecond), records, applies, crashes, msgs)
}

const (
	simFaultSteps = 400   // steps with faults
	simQuiesce    = 20000 // bound on the steps without faults
	simTail       = 60    // log lines printed on failure
)

type simMsg struct {
	at   int    // deliverable from this step on
	to   string // "" is the coordinator
	from string
	ev   any // a coord.Event for the coordinator, a secondary.FollowerEvent for a follower
}

// simRecord is a Record entry proposed to Raft, applied from step at on.
type simRecord struct {
	n  uint64
	at int
}

type simFollower struct {
	id        string
	speed     float64 // chance that a staging step advances
	core      *secondary.Follower
	applied   uint64 // persisted A
	durable   uint64 // persisted D
	apply     uint64 // apply in flight, 0 if none
	applyAt   int
	downUntil int // while core is nil
}

type simResult struct {
	seed                            uint64
	err                             error
	tail                            []string
	records, applies, crashes, msgs int
}

func (r simResult) report() string {
	return fmt.Sprintf("seed %d: %v\nreplay: TRICOPY_SEED=%d go test -run 'TestSimulation$' ./secondary/\nlast steps:\n%s",
		r.seed, r.err, r.seed, strings.Join(r.tail, "\n"))
}

type sim struct {
	rng     *rand.Rand
	faults  bool
	verbose bool
	now     int
	// commitsStop is the step from which the valid counter stays put.
	commitsStop int
	cfg         coord.Config

	valid    uint64          // the valid counter in Raft
	recorded uint64          // validated in Raft: the max applied
	ever     map[uint64]bool // every validated N Raft applied
	co       *coord.Coordinator
	coUpAt   int         // when co is nil: when a new leader starts
	records  []simRecord // Records of the current coordinator in flight
	late     []simRecord // old leaders' Records, applied after a new leader started

	fs  []*simFollower
	net []simMsg

	prevRecorded uint64   // what check saw last
	prevApplied  []uint64 // per follower

	log  []simLine // ring of the last simTail lines
	logN int
	err  error
	res  simResult
}

func runSim(seed uint64, faultSteps int, verbose bool) simResult {
	rng := rand.New(rand.NewPCG(seed, seed^0x7472696370)) //nolint:gosec // a simulation
	s := &sim{rng: rng, faults: true, verbose: verbose, ever: map[uint64]bool{0: true}}
	s.res.seed = seed
	n := 2 + rng.IntN(3)
	for i := range n {
		id := fmt.Sprintf("s%d", i)
		s.cfg.Secondaries = append(s.cfg.Secondaries, id)
		f := &simFollower{id: id, speed: 0.1 + 0.9*rng.Float64()}
		s.fs = append(s.fs, f)
		s.prevApplied = append(s.prevApplied, 0)
		s.startFollower(f)
	}
	s.cfg.RetransmitTicks = 1 + rng.IntN(5)
	// Commits stop at a random point, while the faults go on: the last
	// rounds must finish through crashes alone, with no later round to
	// cover a lost VALIDATE.
	s.commitsStop = faultSteps/4 + rng.IntN(faultSteps)
	s.startCoordinator()
	for step := 0; step < faultSteps && s.err == nil; step++ {
		s.step()
		s.check()
	}
	// Liveness: no more faults, no more commits; everything must settle.
	s.faults = false
	s.logf("faults stop: valid %d recorded %d", s.valid, s.recorded)
	for step := 0; s.err == nil && !s.settled(); step++ {
		if step == simQuiesce {
			s.fail("not settled after %d fault-free steps: %s", simQuiesce, s.state())
			break
		}
		s.step()
		s.check()
	}
	s.res.err = s.err
	s.res.tail = s.tail()
	return s.res
}

func (s *sim) settled() bool {
	if s.co == nil || s.recorded != s.valid {
		return false
	}
	for _, f := range s.fs {
		if f.core == nil || f.applied != s.valid || f.apply != 0 {
			return false
		}
	}
	return true
}

// step runs one random event.
func (s *sim) step() {
	s.now++
	switch r := s.rng.IntN(100); {
	case r < 8:
		if s.faults && s.now < s.commitsStop {
			s.valid += 1 + uint64(s.rng.IntN(4))
			s.logf("valid %d", s.valid)
			if s.co != nil {
				s.coordStep(coord.Valid{Seq: s.valid})
			}
		}
	case r < 28:
		f := s.fs[s.rng.IntN(len(s.fs))]
		if f.core != nil && f.durable < s.valid && s.rng.Float64() < f.speed {
			f.durable += 1 + uint64(s.rng.IntN(int(s.valid-f.durable)))
			s.logf("%s staged %d", f.id, f.durable)
			s.followerStep(f, secondary.Staged{Durable: f.durable})
		}
	case r < 60:
		s.deliver()
	case r < 75:
		if s.co != nil {
			s.coordStep(coord.Tick{})
		}
	case r < 85:
		f := s.fs[s.rng.IntN(len(s.fs))]
		if f.core != nil && f.apply != 0 && s.now >= f.applyAt {
			f.applied, f.apply = f.apply, 0
			s.logf("%s applied %d", f.id, f.applied)
			s.followerStep(f, secondary.ApplyDone{N: f.applied})
		}
	case r < 92:
		// Raft applies entries in log order: the old leaders' first.
		if len(s.late) > 0 && s.now >= s.late[0].at {
			s.logf("late record %d", s.late[0].n)
			s.raftApply(s.late[0].n)
			s.late = s.late[1:]
			if s.co != nil {
				s.coordStep(coord.Recorded{N: s.recorded})
			}
		} else if len(s.late) == 0 && len(s.records) > 0 && s.now >= s.records[0].at {
			s.raftApply(s.records[0].n)
			s.records = s.records[1:]
			s.coordStep(coord.Recorded{N: s.recorded})
		}
	case r < 96:
		f := s.fs[s.rng.IntN(len(s.fs))]
		switch {
		case f.core == nil && s.now >= f.downUntil:
			s.startFollower(f)
		case f.core != nil && s.faults && s.rng.IntN(4) == 0:
			s.crashFollower(f)
		}
	default:
		switch {
		case s.co == nil && s.now >= s.coUpAt:
			s.startCoordinator()
		case s.co != nil && s.faults && s.rng.IntN(3) == 0:
			s.crashCoordinator()
		}
	}
	if !s.faults {
		// Heal: restart whatever is down.
		for _, f := range s.fs {
			if f.core == nil {
				s.startFollower(f)
			}
		}
		if s.co == nil {
			s.startCoordinator()
		}
	}
}

func (s *sim) raftApply(n uint64) {
	s.ever[n] = true
	s.recorded = max(s.recorded, n)
	s.logf("raft applied validated %d: recorded %d", n, s.recorded)
}

func (s *sim) startFollower(f *simFollower) {
	f.core = secondary.NewFollower(f.id, f.applied, f.durable)
	s.logf("%s starts at A=%d D=%d", f.id, f.applied, f.durable)
	s.followerStep(f, secondary.Restarted{})
}

func (s *sim) crashFollower(f *simFollower) {
	s.res.crashes++
	if f.apply != 0 && s.rng.IntN(2) == 0 {
		f.applied = f.apply // the atomic round made it
	}
	s.logf("%s crashes (apply %d lost or done): A=%d", f.id, f.apply, f.applied)
	f.apply, f.core = 0, nil
	f.downUntil = s.now + s.rng.IntN(30)
	s.net = filterMsgs(s.net, func(m simMsg) bool { return m.to != f.id })
}

func (s *sim) startCoordinator() {
	s.co = coord.New(s.cfg, s.recorded)
	s.logf("coordinator starts from recorded %d", s.recorded)
	s.coordStep(coord.Valid{Seq: s.valid})
}

func (s *sim) crashCoordinator() {
	s.res.crashes++
	s.logf("coordinator crashes")
	for _, r := range s.records {
		switch s.rng.IntN(3) {
		case 0:
			s.logf("its record %d is lost", r.n)
		case 1:
			s.logf("its record %d is applied", r.n)
			s.raftApply(r.n)
		default:
			s.logf("its record %d will be applied late", r.n)
			r.at = s.now + s.rng.IntN(60)
			s.late = append(s.late, r)
		}
	}
	s.co, s.records = nil, nil
	s.coUpAt = s.now + s.rng.IntN(30)
	s.net = filterMsgs(s.net, func(m simMsg) bool { return m.to != "" })
}

func filterMsgs(ms []simMsg, keep func(simMsg) bool) []simMsg {
	out := ms[:0]
	for _, m := range ms {
		if keep(m) {
			out = append(out, m)
		}
	}
	return out
}

// send puts a message on the network, perhaps dropping or duplicating it.
func (s *sim) send(m simMsg) {
	s.res.msgs++
	copies := 1
	if s.faults {
		switch r := s.rng.IntN(10); {
		case r == 0:
			copies = 0
		case r == 1:
			copies = 2
		}
	}
	for range copies {
		m.at = s.now + 1 + s.rng.IntN(12)
		s.net = append(s.net, m)
	}
}

// deliver hands one random deliverable message to its recipient.
func (s *sim) deliver() {
	var due []int
	for i, m := range s.net {
		if m.at <= s.now {
			due = append(due, i)
		}
	}
	if len(due) == 0 {
		return
	}
	i := due[s.rng.IntN(len(due))]
	m := s.net[i]
	s.net = append(s.net[:i], s.net[i+1:]...)
	if m.to == "" {
		if s.co != nil {
			s.logf("coordinator <- %s %T%+v", m.from, m.ev, m.ev)
			s.coordStep(m.ev.(coord.Event))
		}
		return
	}
	for _, f := range s.fs {
		if f.id == m.to && f.core != nil {
			s.logf("%s <- %T%+v", f.id, m.ev, m.ev)
			s.followerStep(f, m.ev.(secondary.FollowerEvent))
		}
	}
}

func (s *sim) coordStep(ev coord.Event) {
	for _, a := range s.co.Step(ev) {
		switch a := a.(type) {
		case coord.SendPrepare:
			s.send(simMsg{to: a.To, ev: secondary.PrepareMsg{N: a.N}})
		case coord.SendValidate:
			s.send(simMsg{to: a.To, ev: secondary.ValidateMsg{N: a.N}})
		case coord.Record:
			s.logf("coordinator records %d", a.N)
			s.res.records++
			// Invariant 2: only prepared points are recorded.
			for _, f := range s.fs {
				if f.durable < a.N {
					s.fail("Record(%d) while %s has durably staged only %d", a.N, f.id, f.durable)
				}
			}
			if a.N > s.valid {
				s.fail("Record(%d) above the valid counter %d", a.N, s.valid)
			}
			// At most one Record above the recorded point in flight.
			for _, r := range s.records {
				if r.n > s.recorded {
					s.fail("Record(%d) while Record(%d) is in flight", a.N, r.n)
				}
			}
			s.records = append(s.records, simRecord{n: a.N, at: s.now + s.rng.IntN(8)})
		default:
			s.fail("unknown coordinator action %T", a)
		}
	}
}

func (s *sim) followerStep(f *simFollower, ev secondary.FollowerEvent) {
	for _, a := range f.core.Step(ev) {
		switch a := a.(type) {
		case secondary.SendPrepared:
			s.send(simMsg{from: f.id, ev: coord.Prepared{From: f.id, N: a.N}})
		case secondary.SendApplied:
			s.send(simMsg{from: f.id, ev: coord.Applied{From: f.id, N: a.N}})
		case secondary.SendHello:
			s.send(simMsg{from: f.id, ev: coord.Hello{From: f.id, Applied: a.Applied, Durable: a.Durable}})
		case secondary.StartApply:
			if !s.ever[a.N] {
				s.fail("%s starts applying %d, never recorded", f.id, a.N)
			}
			if f.apply != 0 {
				s.fail("%s starts applying %d while applying %d", f.id, a.N, f.apply)
			}
			s.res.applies++
			f.apply, f.applyAt = a.N, s.now+s.rng.IntN(10)
		case secondary.Violation:
			s.fail("%s: violation: %v", f.id, a.Err)
		default:
			s.fail("unknown follower action %T", a)
		}
	}
}

// check verifies the safety invariants after a step.
func (s *sim) check() {
	// (1) validated only increases; the coordinator never runs ahead of Raft.
	if s.co != nil && s.co.Recorded() > s.recorded {
		s.fail("coordinator says recorded %d, Raft holds %d", s.co.Recorded(), s.recorded)
	}
	if s.recorded < s.prevRecorded {
		s.fail("recorded went back from %d to %d", s.prevRecorded, s.recorded)
	}
	s.prevRecorded = s.recorded
	for i, f := range s.fs {
		// (3) A only increases and only takes recorded values.
		if f.applied < s.prevApplied[i] {
			s.fail("%s applied went back from %d to %d", f.id, s.prevApplied[i], f.applied)
		}
		s.prevApplied[i] = f.applied
		if !s.ever[f.applied] {
			s.fail("%s applied %d, never recorded", f.id, f.applied)
		}
		// (4) A <= D.
		if f.applied > f.durable {
			s.fail("%s applied %d above durable %d", f.id, f.applied, f.durable)
		}
		if f.core != nil && (f.core.Applied() != f.applied || f.core.Durable() != f.durable) {
			s.fail("%s core at A=%d D=%d, disk at A=%d D=%d", f.id, f.core.Applied(), f.core.Durable(), f.applied, f.durable)
		}
	}
}

func (s *sim) fail(format string, args ...any) {
	if s.err == nil {
		s.err = fmt.Errorf("step %d: "+format, append([]any{s.now}, args...)...)
	}
}

// logf keeps a log line, formatted only if it is printed.
func (s *sim) logf(format string, args ...any) {
	line := simLine{step: s.now, format: format, args: args}
	if len(s.log) < simTail {
		s.log = append(s.log, line)
	} else {
		s.log[s.logN%simTail] = line
	}
	s.logN++
}

type simLine struct {
	step   int
	format string
	args   []any
}

func (s *sim) tail() []string {
	i := 0
	if len(s.log) == simTail {
		i = s.logN % simTail
	}
	var out []string
	for _, l := range append(s.log[i:len(s.log):len(s.log)], s.log[:i]...) {
		out = append(out, fmt.Sprintf("%5d ", l.step)+fmt.Sprintf(l.format, l.args...))
	}
	return out
}

func (s *sim) state() string {
	var b strings.Builder
	fmt.Fprintf(&b, "valid %d recorded %d", s.valid, s.recorded)
	if s.co != nil {
		fmt.Fprintf(&b, " coordinator(recorded %d target %d recording %d held back by %q)",
			s.co.Recorded(), s.co.Target(), s.co.Recording(), s.co.HeldBackBy())
	}
	for _, f := range s.fs {
		fmt.Fprintf(&b, "; %s A=%d D=%d apply=%d up=%v", f.id, f.applied, f.durable, f.apply, f.core != nil)
	}
	return b.String()
}
