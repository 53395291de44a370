package client

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// linkRecorder records what a Link's callbacks receive and checks that
// they never run concurrently.
type linkRecorder struct {
	t        testing.TB
	mu       sync.Mutex
	busy     bool
	msgs     []*wire.CoordinateResponse
	conns    []bool
	applied  uint64
	helloGrp string
}

func (r *linkRecorder) enter() {
	r.mu.Lock()
	if r.busy {
		r.t.Error("callbacks called concurrently")
	}
	r.busy = true
	r.mu.Unlock()
}

func (r *linkRecorder) leave() {
	r.mu.Lock()
	r.busy = false
	r.mu.Unlock()
}

func (r *linkRecorder) options() CoordinateOptions {
	return CoordinateOptions{
		Hello: func() *wire.SecondaryHello {
			r.mu.Lock()
			defer r.mu.Unlock()
			return &wire.SecondaryHello{Group: r.helloGrp, Secondary: "s1", Volume: "a", Addr: "127.0.0.1:1", AppliedSeq: r.applied, DurableSeq: r.applied + 1}
		},
		OnMessage: func(m *wire.CoordinateResponse) {
			r.enter()
			defer r.leave()
			r.mu.Lock()
			r.msgs = append(r.msgs, m)
			r.mu.Unlock()
		},
		OnConnected: func(up bool) {
			r.enter()
			defer r.leave()
			r.mu.Lock()
			r.conns = append(r.conns, up)
			r.mu.Unlock()
		},
	}
}

func (r *linkRecorder) messages() []*wire.CoordinateResponse {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*wire.CoordinateResponse(nil), r.msgs...)
}

func (r *linkRecorder) connections() []bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]bool(nil), r.conns...)
}

func coordinate(t *testing.T, c *Client, r *linkRecorder) *Link {
	t.Helper()
	l, err := c.Coordinate(context.Background(), r.options())
	if err != nil {
		t.Fatalf("Coordinate: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestLinkFollowsLeaderAndReconnects: the link finds the leader, delivers
// opened then the leader's messages in order, sends what it is given, and
// after the stream breaks greets again (with the current hello) and sends
// the latest report again.
func TestLinkFollowsLeaderAndReconnects(t *testing.T) {
	cl := newFakeCluster(t, "n1", "n2")
	c := newTestClient(t, Config{Addrs: cl.addrs("n2", "n1")})
	rec := &linkRecorder{t: t, applied: 4}
	l := coordinate(t, c, rec)
	eventually(t, "the link to open", func() bool { return len(rec.messages()) == 1 })
	if m := rec.messages()[0]; m.GetOpened().GetBlockCount() != 3 {
		t.Fatalf("first message %v, want opened", m)
	}
	if got := rec.connections(); len(got) != 1 || !got[0] {
		t.Fatalf("OnConnected calls %v, want [true]", got)
	}
	hellos := get(cl, func() []*wire.SecondaryHello { return cl.coord.hellos })
	if len(hellos) != 1 || hellos[0].GetGroup() != DefaultGroup || hellos[0].GetSecondary() != "s1" || hellos[0].GetAppliedSeq() != 4 {
		t.Fatalf("hellos %v", hellos)
	}
	fs := get(cl, func() *fakeCoordStream { return cl.coord.stream })
	fs.send <- &wire.CoordinateResponse{Msg: &wire.CoordinateResponse_Prepare{Prepare: &wire.PreparedSeq{Seq: 7}}}
	fs.send <- &wire.CoordinateResponse{Msg: &wire.CoordinateResponse_Validate{Validate: &wire.AppliedSeq{Seq: 5}}}
	eventually(t, "prepare and validate", func() bool { return len(rec.messages()) == 3 })
	if ms := rec.messages(); ms[1].GetPrepare().GetSeq() != 7 || ms[2].GetValidate().GetSeq() != 5 {
		t.Fatalf("messages %v", ms)
	}

	l.Send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Report{Report: &wire.SecondaryReport{State: "PAIR", FetchedSeq: 9}}})
	l.Send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Prepared{Prepared: &wire.PreparedSeq{Seq: 7}}})
	l.Send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Applied{Applied: &wire.AppliedSeq{Seq: 5}}})
	l.Send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Hello{Hello: &wire.SecondaryHello{}}}) // ignored
	l.Send(&wire.CoordinateRequest{})                                                                  // ignored
	eventually(t, "three messages at the server", func() bool {
		return len(get(cl, func() []*wire.CoordinateRequest { return cl.coord.received })) == 3
	})
	got := get(cl, func() []*wire.CoordinateRequest { return cl.coord.received })
	if got[0].GetReport().GetFetchedSeq() != 9 || got[1].GetPrepared().GetSeq() != 7 || got[2].GetApplied().GetSeq() != 5 {
		t.Fatalf("received %v", got)
	}

	// The stream breaks: the link greets again with the current state and
	// sends the report again.
	rec.mu.Lock()
	rec.applied = 5
	rec.mu.Unlock()
	fs.end <- status.Error(codes.Unavailable, "fake: connection lost")
	eventually(t, "the second stream", func() bool { return get(cl, func() int { return cl.coord.opens }) == 2 })
	eventually(t, "the report again", func() bool {
		return len(get(cl, func() []*wire.CoordinateRequest { return cl.coord.received })) == 4
	})
	if got := get(cl, func() []*wire.CoordinateRequest { return cl.coord.received }); got[3].GetReport().GetState() != "PAIR" {
		t.Fatalf("after reconnecting: %v", got[3])
	}
	if h := get(cl, func() []*wire.SecondaryHello { return cl.coord.hellos }); h[len(h)-1].GetAppliedSeq() != 5 {
		t.Fatalf("second hello %v", h[len(h)-1])
	}
	eventually(t, "OnConnected true, false, true", func() bool {
		got := rec.connections()
		return len(got) == 3 && got[0] && !got[1] && got[2]
	})
	if n := get(cl, func() int { return cl.notLeaders }); n == 0 {
		t.Error("the follower was never asked: the test did not exercise the redirect")
	}

	// Leadership moves: the new leader is found.
	cl.set(func() { cl.leader = "n2" })
	fs = get(cl, func() *fakeCoordStream { return cl.coord.stream })
	fs.end <- wire.Errorf(wire.ErrorCode_ERROR_CODE_NOT_LEADER, "fake: leadership lost")
	eventually(t, "the stream at the new leader", func() bool { return get(cl, func() int { return cl.coord.opens }) == 3 })
	if err := l.Close(); err != nil || l.Err() != nil {
		t.Fatalf("Close: %v, Err %v", err, l.Err())
	}
	select {
	case <-l.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	if got := rec.connections(); got[len(got)-1] {
		t.Fatalf("OnConnected calls %v: the last is not false", got)
	}
}

// TestLinkRetriesUnknownVolume: a volume not registered yet is waited for;
// NOT_LEADER without a hint and FAILED are retried too.
func TestLinkRetriesUnknownVolume(t *testing.T) {
	cl := newFakeCluster(t, "n1")
	cl.set(func() {
		for range 3 {
			cl.coord.refuse = append(cl.coord.refuse, wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "fake: volume a is not registered"))
		}
		cl.coord.refuse = append(cl.coord.refuse,
			wire.Errorf(wire.ErrorCode_ERROR_CODE_NOT_LEADER, "fake: no leader"),
			wire.Errorf(wire.ErrorCode_ERROR_CODE_FAILED, "fake: failed"))
	})
	c := newTestClient(t, Config{Addrs: cl.addrs("n1")})
	rec := &linkRecorder{t: t}
	l := coordinate(t, c, rec)
	eventually(t, "the link to open", func() bool { return len(rec.messages()) == 1 })
	if n := len(get(cl, func() []*wire.SecondaryHello { return cl.coord.hellos })); n != 6 {
		t.Fatalf("%d hellos, want 6", n)
	}
	select {
	case <-l.Done():
		t.Fatalf("link stopped: %v", l.Err())
	default:
	}
}

// TestLinkPermanentRefusals: WRONG_GROUP, VOLUME_MISMATCH, BAD_REQUEST and
// STALE_SESSION stop the link with the refusal.
func TestLinkPermanentRefusals(t *testing.T) {
	for _, tc := range []struct {
		code wire.ErrorCode
		want error
	}{
		{wire.ErrorCode_ERROR_CODE_VOLUME_MISMATCH, wire.ErrVolumeMismatch},
		{wire.ErrorCode_ERROR_CODE_BAD_REQUEST, wire.ErrBadRequest},
		{wire.ErrorCode_ERROR_CODE_STALE_SESSION, wire.ErrStaleSession},
		{wire.ErrorCode_ERROR_CODE_WRONG_GROUP, wire.ErrWrongGroup},
	} {
		t.Run(tc.code.String(), func(t *testing.T) {
			cl := newFakeCluster(t, "n1")
			cl.set(func() { cl.coord.refuse = []error{wire.Errorf(tc.code, "fake: refused")} })
			c := newTestClient(t, Config{Addrs: cl.addrs("n1")})
			l := coordinate(t, c, &linkRecorder{t: t})
			select {
			case <-l.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the link did not stop")
			}
			if !errors.Is(l.Err(), tc.want) {
				t.Fatalf("Err = %v, want %v", l.Err(), tc.want)
			}
			if n := len(get(cl, func() []*wire.SecondaryHello { return cl.coord.hellos })); n != 1 {
				t.Fatalf("%d hellos, want 1 (no retry)", n)
			}
		})
	}
	// The group of the hello is the Client's unless the hello names one.
	cl := newFakeCluster(t, "n1")
	c := newTestClient(t, Config{Addrs: cl.addrs("n1")})
	l := coordinate(t, c, &linkRecorder{t: t, helloGrp: "other"})
	<-l.Done()
	if !errors.Is(l.Err(), wire.ErrWrongGroup) {
		t.Fatalf("hello of another group: %v", l.Err())
	}
}

// TestLinkStops: the caller's context and Client.Close stop a link, with
// their errors; Coordinate checks its options and refuses on a closed
// Client.
func TestLinkStops(t *testing.T) {
	cl := newFakeCluster(t, "n1")
	c := newTestClient(t, Config{Addrs: cl.addrs("n1")})
	if _, err := c.Coordinate(context.Background(), CoordinateOptions{}); err == nil {
		t.Fatal("Coordinate without callbacks succeeded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	rec := &linkRecorder{t: t}
	l, err := c.Coordinate(ctx, rec.options())
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the link to open", func() bool { return len(rec.messages()) == 1 })
	cancel()
	<-l.Done()
	if !errors.Is(l.Err(), context.Canceled) {
		t.Fatalf("after the context ended: %v", l.Err())
	}

	rec2 := &linkRecorder{t: t}
	l2 := coordinate(t, c, rec2)
	eventually(t, "the second link to open", func() bool { return len(rec2.messages()) == 1 })
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	<-l2.Done()
	if !errors.Is(l2.Err(), ErrClosed) {
		t.Fatalf("after Client.Close: %v", l2.Err())
	}
	if _, err := c.Coordinate(context.Background(), rec.options()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Coordinate on a closed client: %v", err)
	}
}
