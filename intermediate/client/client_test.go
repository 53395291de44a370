package client

import (
	"context"
	"errors"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate/wire"
)

func TestNewChecksConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no addrs", Config{}},
		{"empty addr", Config{Addrs: []string{"a:1", ""}}},
		{"tiny message", Config{Addrs: []string{"a:1"}, MaxMessage: 100}},
		{"negative in flight", Config{Addrs: []string{"a:1"}, MaxInFlight: -1}},
		{"negative backoff", Config{Addrs: []string{"a:1"}, Backoff: -time.Second}},
	} {
		if _, err := New(tc.cfg); err == nil {
			t.Errorf("%s: New accepted %+v", tc.name, tc.cfg)
		}
	}
	c, err := New(Config{Addrs: []string{"a:1"}})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer c.Close()
	want := Config{Addrs: []string{"a:1"}, Group: DefaultGroup, MaxMessage: wire.DefaultMaxMessage,
		MaxInFlight: DefaultMaxInFlight, Backoff: DefaultBackoff}
	got := c.cfg
	got.Logger = nil
	if !slices.Equal(got.Addrs, want.Addrs) || got.Group != want.Group || got.MaxMessage != want.MaxMessage ||
		got.MaxInFlight != want.MaxInFlight || got.Backoff != want.Backoff || c.cfg.Logger == nil {
		t.Errorf("defaults: got %+v, want %+v", got, want)
	}
}

func TestRetrierBackoffDoublesToMax(t *testing.T) {
	c, err := New(Config{Addrs: []string{"a:1"}, Backoff: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := c.newRetrier(false)
	var got []time.Duration
	for i := range 7 {
		r.failures = i
		got = append(got, r.delay())
	}
	want := []time.Duration{100, 200, 400, 800, 1600, 2000, 2000}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if !slices.Equal(got, want) {
		t.Errorf("delays %v, want %v", got, want)
	}
}

// deadAddr returns an address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}

func TestStatusFollowsLeader(t *testing.T) {
	cl := newFakeCluster(t, "a", "b")
	dead := deadAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c := newTestClient(t, Config{Addrs: append([]string{dead}, cl.addrs("b")...)})
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if st.GetNode() != "a" || st.GetRaftState() != "Leader" {
		t.Errorf("Status answered by %s (%s), want the leader a", st.GetNode(), st.GetRaftState())
	}

	c = newTestClient(t, Config{Addrs: append(cl.addrs("a", "b"), dead)})
	all, err := c.StatusAll(ctx)
	if err != nil {
		t.Fatalf("StatusAll: %v", err)
	}
	if len(all) != 3 {
		t.Fatalf("StatusAll: %d answers, want 3", len(all))
	}
	for i, want := range []string{"a", "b"} {
		if all[i].Err != nil || all[i].Status.GetNode() != want || all[i].Addr != cl.addrs(want)[0] {
			t.Errorf("StatusAll[%d]: %+v, want node %s", i, all[i], want)
		}
	}
	if all[2].Err == nil || all[2].Addr != dead {
		t.Errorf("StatusAll[2]: %+v, want an error from %s", all[2], dead)
	}

	c = newTestClient(t, Config{Addrs: []string{dead}})
	if _, err := c.Status(ctx); err == nil {
		t.Error("Status with no live node succeeded")
	}
}

func TestJoinRemoveFollowRedirect(t *testing.T) {
	cl := newFakeCluster(t, "a", "b")
	c := newTestClient(t, Config{Addrs: cl.addrs("b")})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Join(ctx, "n3", "127.0.0.1:7003"); err != nil {
		t.Fatalf("Join: %v", err)
	}
	if err := c.Remove(ctx, "n3"); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	joins, removes := get(cl, func() []string { return slices.Clone(cl.joins) }), get(cl, func() []string { return slices.Clone(cl.removes) })
	if !slices.Equal(joins, []string{"n3=127.0.0.1:7003"}) || !slices.Equal(removes, []string{"n3"}) {
		t.Errorf("leader saw joins %v, removes %v", joins, removes)
	}

	cl.set(func() { cl.leader = "" })
	sctx, scancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer scancel()
	err := c.Join(sctx, "n4", "127.0.0.1:7004")
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, wire.ErrNotLeader) {
		t.Fatalf("Join without a leader: err %v, want deadline exceeded after not-leader refusals", err)
	}
}
