package intermediate_test

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// stallConn is a connection whose writes block, whatever their deadline,
// while its stall flag is set, until it is closed: a link into a black
// hole that also ignores timeouts (as a snapshot send does, whose deadline
// hashicorp/raft scales by the snapshot's size).
type stallConn struct {
	net.Conn
	stall  *atomic.Bool
	closed chan struct{}
	once   sync.Once
}

func (c *stallConn) Write(b []byte) (int, error) {
	if c.stall.Load() {
		<-c.closed
		return 0, net.ErrClosed
	}
	return c.Conn.Write(b)
}

func (c *stallConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestCloseWithStalledRaftLink closes a leader whose Raft connection to a
// follower is stalled in a write: Close must not wait for it (a chaos run
// saw a leader take more than 30 s to exit after SIGTERM).
func TestCloseWithStalledRaftLink(t *testing.T) {
	stalled := map[string]*atomic.Bool{} // by raft address of the target
	c := newTestCluster(t, 3, nil)
	for _, tn := range c.nodes {
		stalled[tn.raftAddr] = new(atomic.Bool)
	}
	for _, tn := range c.nodes {
		cfg := c.config(tn)
		base := cfg.Dial
		cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
			conn, err := base(ctx, addr)
			if err != nil {
				return nil, err
			}
			return &stallConn{Conn: conn, stall: stalled[addr], closed: make(chan struct{})}, nil
		}
		c.startWith(tn, cfg)
	}
	leader := c.leader(20 * time.Second)
	var follower *testNode
	for _, tn := range c.nodes {
		if tn != leader {
			follower = tn
			break
		}
	}
	stalled[follower.raftAddr].Store(true)

	cl, err := client.New(client.Config{Addrs: []string{leader.clientAddr}, Logger: c.logger})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := cl.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 1, BlockCount: 16})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := v.Submit(ctx, []*wire.Block{{Index: uint64(i), Data: blockData("a", 0, i)}}); err != nil {
			t.Fatal(err)
		}
	}
	v.Close()
	time.Sleep(300 * time.Millisecond) // heartbeats and appends to the follower are now stuck

	done := make(chan error, 1)
	start := time.Now()
	go func() {
		n := leader.node
		leader.node = nil
		done <- n.Close()
	}()
	select {
	case err := <-done:
		t.Logf("leader closed in %v with a stalled raft link (err %v)", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(10 * time.Second):
		t.Fatal("the leader's Close waits for a stalled raft connection")
	}
}
