package intermediate_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// fakeSecondary is a secondary's protocol side over a real client.Link,
// with the rules of secondary.Follower: it answers PREPARE(N) with
// PREPARED(min(durable, highest asked)), applies VALIDATE(N) at once when
// it holds N durably, and reports every violation: a VALIDATE above its
// durable point, or one the leader's state machine has not recorded.
type fakeSecondary struct {
	t          testing.TB
	id, volume string
	recorded   func() uint64 // the highest validated seq any node's state machine applied
	mu         sync.Mutex
	durable    uint64
	applied    uint64
	asked      uint64
	reported   uint64
	validates  []uint64
	connects   int
	connected  bool
	opened     *wire.CoordinateOpened
	violations []string
	link       *client.Link
	client     *client.Client
}

func newFakeSecondary(t testing.TB, id, volume string, recorded func() uint64) *fakeSecondary {
	return &fakeSecondary{t: t, id: id, volume: volume, recorded: recorded}
}

// connect opens the secondary's link through a new client of addrs.
func (s *fakeSecondary) connect(addrs []string) {
	s.t.Helper()
	c, err := client.New(client.Config{Addrs: addrs, Backoff: 10 * time.Millisecond, Logger: testLogger(s.t)})
	if err != nil {
		s.t.Fatal(err)
	}
	l, err := c.Coordinate(context.Background(), client.CoordinateOptions{
		Hello: func() *wire.SecondaryHello {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.asked, s.reported = 0, 0 // a restart forgets what it was asked
			return &wire.SecondaryHello{Secondary: s.id, Volume: s.volume, Addr: "127.0.0.1:7" + s.id,
				AppliedSeq: s.applied, DurableSeq: s.durable}
		},
		OnMessage: s.onMessage,
		OnConnected: func(up bool) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.connected = up
			if up {
				s.connects++
			}
		},
	})
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	s.link, s.client = l, c
	s.mu.Unlock()
	s.t.Cleanup(s.disconnect)
}

// disconnect closes the secondary's link.
func (s *fakeSecondary) disconnect() {
	s.mu.Lock()
	l, c := s.link, s.client
	s.link, s.client = nil, nil
	s.mu.Unlock()
	if l != nil {
		l.Close()
		c.Close()
	}
}

// sendLocked sends m on the link, if connected; s.mu is held.
func (s *fakeSecondary) sendLocked(m *wire.CoordinateRequest) {
	if s.link != nil {
		s.link.Send(m)
	}
}

// report sends a report.
func (s *fakeSecondary) report(rep *wire.SecondaryReport) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sendLocked(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Report{Report: rep}})
}

// currentLink returns the secondary's link.
func (s *fakeSecondary) currentLink() *client.Link {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.link
}

func (s *fakeSecondary) onMessage(m *wire.CoordinateResponse) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case m.GetOpened() != nil:
		s.opened = m.GetOpened()
	case m.GetPrepare() != nil:
		s.asked = max(s.asked, m.GetPrepare().GetSeq())
		if p := min(s.durable, s.asked); p > 0 {
			s.reported = max(s.reported, p)
			s.sendLocked(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Prepared{Prepared: &wire.PreparedSeq{Seq: p}}})
		}
	case m.GetValidate() != nil:
		n := m.GetValidate().GetSeq()
		s.validates = append(s.validates, n)
		if r := s.recorded(); n > r {
			s.violations = append(s.violations, fmt.Sprintf("VALIDATE(%d) before it was recorded (recorded %d)", n, r))
		}
		switch {
		case n <= s.applied:
		case n > s.durable:
			s.violations = append(s.violations, fmt.Sprintf("VALIDATE(%d) above the durable point %d", n, s.durable))
			return
		default:
			s.applied = n
		}
		s.sendLocked(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Applied{Applied: &wire.AppliedSeq{Seq: s.applied}}})
	}
}

// stage makes everything up to d durable, and reports it if it was asked.
func (s *fakeSecondary) stage(d uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.durable = max(s.durable, d)
	if p := min(s.durable, s.asked); p > s.reported {
		s.reported = p
		s.sendLocked(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Prepared{Prepared: &wire.PreparedSeq{Seq: p}}})
	}
}

func (s *fakeSecondary) state() (applied uint64, connects int, connected bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied, s.connects, s.connected
}

func (s *fakeSecondary) check() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, v := range s.violations {
		s.t.Errorf("secondary %s: %s", s.id, v)
	}
}

// coordCluster returns a cluster of n nodes with a fast coordinator.
func coordCluster(t *testing.T, n int, cfg func(*intermediate.Config)) *testCluster {
	c := newTestCluster(t, n, func(c *intermediate.Config) {
		c.CoordinatorTick = 20 * time.Millisecond
		c.CoordinatorRetransmitTicks = 3
		if cfg != nil {
			cfg(c)
		}
	})
	c.startAll()
	return c
}

// maxValidated returns the highest validated seq of any running node.
func (c *testCluster) maxValidated() uint64 {
	var v uint64
	for _, tn := range c.nodes {
		if n := tn.node; n != nil {
			v = max(v, n.FSM().Validated())
		}
	}
	return v
}

// submitN submits n one-block batches to vol and returns the last seq.
func submitN(t *testing.T, vol *client.Volume, n int) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var last uint64
	for i := range n {
		data := make([]byte, wire.BlockSize)
		copy(data, fmt.Sprintf("%s %d", vol.Name(), i))
		ack, err := vol.Submit(ctx, []*wire.Block{{Index: uint64(i % 16), Data: data}})
		if err != nil {
			t.Fatalf("submit to %s: %v", vol.Name(), err)
		}
		last = ack.Seq
	}
	return last
}

func openTestVolume(t *testing.T, c *client.Client, name string) *client.Volume {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := c.OpenVolume(ctx, client.VolumeOptions{Name: name, Epoch: 1, BlockCount: 16})
	if err != nil {
		t.Fatalf("open volume %s: %v", name, err)
	}
	return v
}

func newTestClient(t *testing.T, addrs []string) *client.Client {
	t.Helper()
	c, err := client.New(client.Config{Addrs: addrs, Backoff: 10 * time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func statusOf(t *testing.T, n *intermediate.Node) *wire.StatusResponse {
	t.Helper()
	st, err := n.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func secondaryStatus(st *wire.StatusResponse, id string) *wire.SecondaryStatus {
	for _, s := range st.GetSecondaries() {
		if s.GetId() == id {
			return s
		}
	}
	return nil
}

// TestCoordinateValidatesOnlyWhatAllPrepared: the validated point moves
// only once every registered secondary answered PREPARED; VALIDATE(N)
// reaches the secondaries only after RecordValidated(N) was applied; a
// disconnected secondary holds the validated point and status names it;
// its reconnection with HELLO resumes; status shows every secondary.
func TestCoordinateValidatesOnlyWhatAllPrepared(t *testing.T) {
	c := coordCluster(t, 1, nil)
	tn := c.leader(15 * time.Second)
	fsm := tn.node.FSM()
	pc := newTestClient(t, c.addrs())
	va, vb := openTestVolume(t, pc, "a"), openTestVolume(t, pc, "b")

	s1 := newFakeSecondary(t, "s1", "a", c.maxValidated)
	s2 := newFakeSecondary(t, "s2", "b", c.maxValidated)
	defer s1.check()
	defer s2.check()
	s1.connect(c.addrs())
	s2.connect(c.addrs())
	waitFor(t, 10*time.Second, "both secondaries registered and connected", func() bool {
		_, n1, up1 := s1.state()
		_, n2, up2 := s2.state()
		return len(fsm.Secondaries()) == 2 && up1 && up2 && n1 == 1 && n2 == 1
	})

	submitN(t, va, 5)
	last := submitN(t, vb, 5)
	s1.stage(last)
	// s2 stages nothing: nothing is validated, and status says who holds
	// the point back.
	time.Sleep(300 * time.Millisecond)
	if v := fsm.Validated(); v != 0 {
		t.Fatalf("validated %d while s2 prepared nothing", v)
	}
	st := statusOf(t, tn.node)
	if st.GetHeldBy() != "s2" || st.GetValidatedSeq() != 0 {
		t.Fatalf("status: held by %q, validated %d; want s2, 0", st.GetHeldBy(), st.GetValidatedSeq())
	}
	// s1 answered the open round's PREPARE (its target: the valid counter
	// when the round opened) with that target.
	if ss := secondaryStatus(st, "s1"); ss == nil || ss.GetPreparedSeq() == 0 || !ss.GetConnected() || ss.GetVolume() != "a" || ss.GetAddr() != "127.0.0.1:7s1" {
		t.Fatalf("status of s1: %v", ss)
	}
	// Partial progress moves the point to what both hold.
	s2.stage(last - 2)
	waitFor(t, 10*time.Second, "validated at s2's partial point", func() bool { return fsm.Validated() == last-2 })
	s2.stage(last)
	waitFor(t, 10*time.Second, "validated at the last batch", func() bool { return fsm.Validated() == last })
	waitFor(t, 10*time.Second, "both applied", func() bool {
		a1, _, _ := s1.state()
		a2, _, _ := s2.state()
		return a1 == last && a2 == last
	})
	waitFor(t, 10*time.Second, "status with applied points", func() bool {
		st := statusOf(t, tn.node)
		ss := secondaryStatus(st, "s2")
		return st.GetHeldBy() == "" && ss.GetAppliedSeq() == last && ss.GetLagBatches() == 0
	})

	// s2 goes away: it holds the validated point, and status says so.
	s2.disconnect()
	waitFor(t, 10*time.Second, "s2 disconnected in status", func() bool {
		return !secondaryStatus(statusOf(t, tn.node), "s2").GetConnected()
	})
	lastA := submitN(t, va, 3)
	lastB := submitN(t, vb, 2)
	s1.stage(lastB)
	time.Sleep(300 * time.Millisecond)
	if v := fsm.Validated(); v != last {
		t.Fatalf("validated %d while s2 is away, want %d", v, last)
	}
	st = statusOf(t, tn.node)
	ss := secondaryStatus(st, "s2")
	if st.GetHeldBy() != "s2" || ss.GetConnected() || ss.GetAppliedSeq() != last || ss.GetLagBatches() != 2 ||
		ss.GetLagBytes() != 2*wire.BlockSize || ss.GetLagSeconds() <= 0 {
		t.Fatalf("status while s2 is away: held by %q, s2 %v", st.GetHeldBy(), ss)
	}
	if ss := secondaryStatus(st, "s1"); ss.GetLagBatches() != 3 || ss.GetPreparedSeq() <= last || ss.GetAppliedSeq() != last {
		t.Fatalf("status of s1 (volume a committed up to %d): %v", lastA, ss)
	}

	// It comes back having staged everything: its HELLO is its answer.
	s2.stage(lastB)
	s2.connect(c.addrs())
	waitFor(t, 10*time.Second, "validated after s2 came back", func() bool { return fsm.Validated() == lastB })
	waitFor(t, 10*time.Second, "both applied the new point", func() bool {
		a1, _, _ := s1.state()
		a2, n2, _ := s2.state()
		return a1 == lastB && a2 == lastB && n2 == 2
	})
	s2.report(&wire.SecondaryReport{State: "PAIR", FetchedSeq: lastB, ResyncDone: 1, ResyncTotal: 2})
	waitFor(t, 10*time.Second, "s2's report in status", func() bool {
		ss := secondaryStatus(statusOf(t, tn.node), "s2")
		return ss.GetState() == "PAIR" && ss.GetFetchedSeq() == lastB && ss.GetResyncTotal() == 2 && ss.GetConnected()
	})
	if st := statusOf(t, tn.node); st.GetValidatedSeq() != lastB || len(st.GetSecondaries()) != 2 {
		t.Fatalf("final status %v", st)
	}
}

// TestCoordinateJoiningSecondaryNotValidatedEarly: a secondary registered
// after points were validated is sent VALIDATE only for a point it holds,
// and holds the next points back until it caught up.
func TestCoordinateJoiningSecondaryNotValidatedEarly(t *testing.T) {
	c := coordCluster(t, 1, nil)
	tn := c.leader(15 * time.Second)
	fsm := tn.node.FSM()
	pc := newTestClient(t, c.addrs())
	va := openTestVolume(t, pc, "a")
	s1 := newFakeSecondary(t, "s1", "a", c.maxValidated)
	defer s1.check()
	s1.connect(c.addrs())
	last := submitN(t, va, 6)
	s1.stage(last)
	waitFor(t, 10*time.Second, "validated", func() bool { return fsm.Validated() == last })

	j := newFakeSecondary(t, "j", "a", c.maxValidated)
	defer j.check()
	j.stage(2) // an initial copy in progress
	j.connect(c.addrs())
	more := submitN(t, va, 2)
	s1.stage(more)
	time.Sleep(300 * time.Millisecond)
	if v := fsm.Validated(); v != last {
		t.Fatalf("validated %d while j holds 2, want %d", v, last)
	}
	if a, _, _ := j.state(); a != 0 {
		t.Fatalf("j applied %d before holding the validated point", a)
	}
	if st := statusOf(t, tn.node); st.GetHeldBy() != "j" {
		t.Fatalf("held by %q, want j", st.GetHeldBy())
	}
	j.stage(more)
	waitFor(t, 10*time.Second, "j caught up", func() bool {
		a, _, _ := j.state()
		return fsm.Validated() == more && a == more
	})
}

// TestCoordinateRefusals: malformed or misdirected Coordinate streams are
// refused with an error naming the problem.
func TestCoordinateRefusals(t *testing.T) {
	c := coordCluster(t, 1, nil)
	tn := c.leader(15 * time.Second)
	pc := newTestClient(t, c.addrs())
	openTestVolume(t, pc, "a")
	openTestVolume(t, pc, "b")
	raw := rawClient(t, tn.clientAddr, 1<<20)
	hello := func(h *wire.SecondaryHello) *wire.CoordinateRequest {
		return &wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Hello{Hello: h}}
	}
	// first sends msgs on a new stream and returns the messages received
	// and the error ending it.
	first := func(msgs ...*wire.CoordinateRequest) ([]*wire.CoordinateResponse, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := raw.Coordinate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if err := s.Send(m); err != nil {
				break
			}
		}
		var got []*wire.CoordinateResponse
		for {
			m, err := s.Recv()
			if err != nil {
				return got, wire.FromStatus(err)
			}
			got = append(got, m)
		}
	}
	good := &wire.SecondaryHello{Secondary: "s1", Volume: "a"}
	for _, tc := range []struct {
		name string
		msgs []*wire.CoordinateRequest
		want error
		text string
	}{
		{"no hello", []*wire.CoordinateRequest{{Msg: &wire.CoordinateRequest_Prepared{Prepared: &wire.PreparedSeq{Seq: 1}}}}, wire.ErrBadRequest, "must be hello"},
		{"empty message", []*wire.CoordinateRequest{{}}, wire.ErrBadRequest, "must be hello"},
		{"wrong group", []*wire.CoordinateRequest{hello(&wire.SecondaryHello{Group: "other", Secondary: "s1", Volume: "a"})}, wire.ErrWrongGroup, "other"},
		{"no id", []*wire.CoordinateRequest{hello(&wire.SecondaryHello{Volume: "a"})}, wire.ErrBadRequest, "hello.secondary"},
		{"bad id", []*wire.CoordinateRequest{hello(&wire.SecondaryHello{Secondary: "a/b", Volume: "a"})}, wire.ErrBadRequest, "hello.secondary"},
		{"no volume", []*wire.CoordinateRequest{hello(&wire.SecondaryHello{Secondary: "s1"})}, wire.ErrBadRequest, "hello.volume"},
		{"long address", []*wire.CoordinateRequest{hello(&wire.SecondaryHello{Secondary: "s1", Volume: "a", Addr: strings.Repeat("x", 300)})}, wire.ErrBadRequest, "hello.addr"},
		{"too large", []*wire.CoordinateRequest{hello(&wire.SecondaryHello{Secondary: "s1", Volume: "a", Addr: strings.Repeat("x", 5000)})}, wire.ErrTooLarge, "over the limit"},
		{"unknown volume", []*wire.CoordinateRequest{hello(&wire.SecondaryHello{Secondary: "s1", Volume: "zz"})}, wire.ErrUnknownVolume, `"zz"`},
		{"second hello", []*wire.CoordinateRequest{hello(good), hello(good)}, wire.ErrBadRequest, "hello after the first message"},
		{"empty later message", []*wire.CoordinateRequest{hello(good), {}}, wire.ErrBadRequest, "without content"},
		{"large report", []*wire.CoordinateRequest{hello(good), {Msg: &wire.CoordinateRequest_Report{Report: &wire.SecondaryReport{Reason: strings.Repeat("r", 5000)}}}}, wire.ErrTooLarge, "over the limit"},
		{"registered for another volume", []*wire.CoordinateRequest{hello(&wire.SecondaryHello{Secondary: "s1", Volume: "b"})}, wire.ErrVolumeMismatch, `registered for volume "a"`},
	} {
		_, err := first(tc.msgs...)
		if !errors.Is(err, tc.want) || !strings.Contains(fmt.Sprint(err), tc.text) {
			t.Errorf("%s: %v, want %v naming %q", tc.name, err, tc.want, tc.text)
		}
	}
	if got := tn.node.FSM().Secondaries(); len(got) != 1 || got[0].ID != "s1" || got[0].Volume != "a" {
		t.Fatalf("registered %+v, want s1 of a only", got)
	}

	// A newer stream of the same secondary replaces the older, which ends
	// with STALE_SESSION; a client link stops on it for good.
	s := newFakeSecondary(t, "s1", "a", c.maxValidated)
	s.connect(c.addrs())
	waitFor(t, 10*time.Second, "the link", func() bool { _, _, up := s.state(); return up })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rs, err := raw.Coordinate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := rs.Send(hello(good)); err != nil {
		t.Fatal(err)
	}
	if m, err := rs.Recv(); err != nil || m.GetOpened() == nil {
		t.Fatalf("the newer stream: %v, %v", m, wire.FromStatus(err))
	}
	l := s.currentLink()
	select {
	case <-l.Done():
		if !errors.Is(l.Err(), wire.ErrStaleSession) {
			t.Fatalf("replaced link stopped with %v, want STALE_SESSION", l.Err())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the replaced link did not stop")
	}
	waitFor(t, 10*time.Second, "s1 connected through the newer stream", func() bool {
		return secondaryStatus(statusOf(t, tn.node), "s1").GetConnected()
	})
	cancel()
	waitFor(t, 10*time.Second, "s1 disconnected", func() bool {
		return !secondaryStatus(statusOf(t, tn.node), "s1").GetConnected()
	})
}

// TestCoordinateFollowerRedirects: a follower answers Coordinate with the
// leader's address, and Status on a follower lists the registered
// secondaries and the validated seq without the leader's view.
func TestCoordinateFollowerRedirects(t *testing.T) {
	c := coordCluster(t, 3, nil)
	leader := c.leader(15 * time.Second)
	waitFor(t, 10*time.Second, "the leader's address in the log", func() bool {
		for _, tn := range c.nodes {
			if tn.node.FSM().NodeAddr(leader.id) != leader.clientAddr {
				return false
			}
		}
		return true
	})
	pc := newTestClient(t, c.addrs())
	openTestVolume(t, pc, "a")
	for _, tn := range c.nodes {
		if tn == leader {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := rawClient(t, tn.clientAddr, 1<<20).Coordinate(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Hello{Hello: &wire.SecondaryHello{Secondary: "s1", Volume: "a"}}}); err != nil {
			t.Fatal(err)
		}
		_, err = s.Recv()
		cancel()
		var we *wire.Error
		if !errors.As(wire.FromStatus(err), &we) || we.Code != wire.ErrorCode_ERROR_CODE_NOT_LEADER || we.LeaderAddr != leader.clientAddr {
			t.Errorf("follower %s answered %v, want NOT_LEADER naming %s", tn.id, wire.FromStatus(err), leader.clientAddr)
		}
	}
	s := newFakeSecondary(t, "s1", "a", c.maxValidated)
	defer s.check()
	s.connect(c.addrs())
	waitFor(t, 10*time.Second, "the link", func() bool { _, _, up := s.state(); return up })
	c.waitConverged(10 * time.Second)
	for _, tn := range c.nodes {
		if tn == leader {
			continue
		}
		st := statusOf(t, tn.node)
		ss := secondaryStatus(st, "s1")
		if ss == nil || ss.GetVolume() != "a" || ss.GetAddr() != "127.0.0.1:7s1" || ss.GetConnected() || st.GetHeldBy() != "" {
			t.Errorf("follower %s: status %v", tn.id, st)
		}
	}
}

// TestCoordinateLeaderChange: after the leader is stopped, the secondaries'
// streams move to the new leader, which resumes from the recorded point
// and validates what both prepared since; nothing above a secondary's
// durable point or unrecorded is ever validated.
func TestCoordinateLeaderChange(t *testing.T) {
	c := coordCluster(t, 3, nil)
	c.leader(15 * time.Second)
	pc := newTestClient(t, c.addrs())
	va, vb := openTestVolume(t, pc, "a"), openTestVolume(t, pc, "b")
	s1 := newFakeSecondary(t, "s1", "a", c.maxValidated)
	s2 := newFakeSecondary(t, "s2", "b", c.maxValidated)
	defer s1.check()
	defer s2.check()
	s1.connect(c.addrs())
	s2.connect(c.addrs())
	submitN(t, va, 4)
	last := submitN(t, vb, 4)
	s1.stage(last)
	s2.stage(last)
	waitFor(t, 15*time.Second, "validated and applied", func() bool {
		a1, _, _ := s1.state()
		a2, _, _ := s2.state()
		return c.maxValidated() == last && a1 == last && a2 == last
	})

	old := c.leader(time.Second)
	c.stop(old)
	next := c.leader(15 * time.Second)
	t.Logf("leader %s stopped, %s leads", old.id, next.id)
	waitFor(t, 15*time.Second, "the streams at the new leader", func() bool {
		_, n1, up1 := s1.state()
		_, n2, up2 := s2.state()
		if !up1 || !up2 || n1 < 2 || n2 < 2 {
			return false
		}
		st := statusOf(t, next.node)
		return secondaryStatus(st, "s1").GetConnected() && secondaryStatus(st, "s2").GetConnected()
	})
	if v := next.node.FSM().Validated(); v < last {
		t.Fatalf("the new leader's validated seq %d is below the recorded %d", v, last)
	}
	submitN(t, va, 3)
	more := submitN(t, vb, 3)
	s1.stage(more)
	s2.stage(more - 1)
	waitFor(t, 15*time.Second, "validated at what both hold", func() bool { return next.node.FSM().Validated() == more-1 })
	s2.stage(more)
	waitFor(t, 15*time.Second, "validated and applied on the new leader", func() bool {
		a1, _, _ := s1.state()
		a2, _, _ := s2.state()
		return next.node.FSM().Validated() == more && a1 == more && a2 == more
	})
	if st := statusOf(t, next.node); st.GetHeldBy() != "" || st.GetValidatedSeq() != more {
		t.Fatalf("status on the new leader: held by %q, validated %d", st.GetHeldBy(), st.GetValidatedSeq())
	}
	// The old leader comes back as a follower and catches up.
	c.start(old)
	c.waitConverged(15 * time.Second)
	if v := old.node.FSM().Validated(); v != more {
		t.Fatalf("restarted node: validated %d, want %d", v, more)
	}
}

// TestCoordinateTrimsOnlyWhatSecondariesApplied: with secondaries
// registered, the journal keeps their volumes' batches after their applied
// points; a secondary the leader has not heard from holds the journal.
func TestCoordinateTrimsOnlyWhatSecondariesApplied(t *testing.T) {
	c := coordCluster(t, 1, func(cfg *intermediate.Config) { cfg.TrimInterval = 50 * time.Millisecond })
	tn := c.leader(15 * time.Second)
	fsm := tn.node.FSM()
	pc := newTestClient(t, c.addrs())
	va := openTestVolume(t, pc, "a")
	s1 := newFakeSecondary(t, "s1", "a", c.maxValidated)
	defer s1.check()
	s1.connect(c.addrs())
	first := submitN(t, va, 5)
	// The primary holds everything durably: only s1 bounds the trim.
	va.Report(&wire.PrimaryReport{State: "PAIR", DurableSeq: first})
	time.Sleep(300 * time.Millisecond)
	if st := fsm.Stats(); st.JournalStart != 1 {
		t.Fatalf("journal trimmed to %d before s1 applied anything", st.JournalStart-1)
	}
	s1.stage(3)
	waitFor(t, 10*time.Second, "the journal trimmed to s1's applied point", func() bool {
		return fsm.Stats().JournalStart == 4
	})
	s1.stage(first)
	waitFor(t, 10*time.Second, "the journal trimmed to the end", func() bool {
		return fsm.Stats().JournalStart == first+1
	})
	// s1 goes away and comes back after a leader... restart of the node:
	// the new term has not heard from s1, which holds the journal.
	more := submitN(t, va, 3)
	va.Report(&wire.PrimaryReport{State: "PAIR", DurableSeq: more})
	s1.disconnect()
	c.stop(tn)
	c.start(tn)
	tn = c.leader(15 * time.Second)
	fsm = tn.node.FSM()
	time.Sleep(300 * time.Millisecond)
	if st := fsm.Stats(); st.JournalStart != first+1 {
		t.Fatalf("journal trimmed to %d while s1 was not heard from", st.JournalStart-1)
	}
	s1.stage(more)
	s1.connect(c.addrs())
	waitFor(t, 15*time.Second, "the journal trimmed after s1's hello", func() bool {
		return fsm.Stats().JournalStart == more+1
	})
}

// TestFetchCompleteSeq: a Fetch stream says up to which seq its volume is
// complete, including when only other volumes moved, and never claims a
// batch of the volume it has not delivered.
func TestFetchCompleteSeq(t *testing.T) {
	c := coordCluster(t, 1, nil)
	c.leader(15 * time.Second)
	pc := newTestClient(t, c.addrs())
	va, vb := openTestVolume(t, pc, "a"), openTestVolume(t, pc, "b")
	var mu sync.Mutex
	var ofA []uint64 // seqs of a's batches, as acknowledged
	submit := func(v *client.Volume) {
		seq := submitN(t, v, 1)
		if v == va {
			mu.Lock()
			ofA = append(ofA, seq)
			mu.Unlock()
		}
	}
	submit(va)
	submit(vb)
	submit(va)
	submit(vb)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type got struct {
		seqs     []uint64
		complete uint64
	}
	resps := make(chan got, 100)
	fc := newTestClient(t, c.addrs())
	done := make(chan error, 1)
	go func() {
		done <- fc.Fetch(ctx, "a", 0, func(r *wire.FetchResponse) error {
			var g got
			for _, cb := range r.GetBatches() {
				g.seqs = append(g.seqs, cb.GetSeq())
			}
			g.complete = r.GetCompleteSeq()
			resps <- g
			return nil
		})
	}()
	var delivered []uint64
	// next reads responses until the volume is complete up to want.
	next := func(want uint64) {
		t.Helper()
		for {
			select {
			case g := <-resps:
				delivered = append(delivered, g.seqs...)
				mu.Lock()
				for _, s := range ofA {
					if s <= g.complete && !slices.Contains(delivered, s) {
						t.Fatalf("complete_seq %d claims batch %d, not delivered (delivered %v)", g.complete, s, delivered)
					}
				}
				mu.Unlock()
				if g.complete >= want {
					return
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("no complete_seq %d (delivered %v)", want, delivered)
			}
		}
	}
	next(4)
	if !slices.Equal(delivered, []uint64{1, 3}) {
		t.Fatalf("delivered %v, want [1 3]", delivered)
	}
	submit(vb) // only b moves: a is complete up to 5
	next(5)
	submit(va)
	next(6)
	if !slices.Equal(delivered, []uint64{1, 3, 6}) {
		t.Fatalf("delivered %v, want [1 3 6]", delivered)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("fetch ended with %v", err)
	}
}
