package intermediate_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate"
)

// faultNet is the test's fault-injecting network for Raft traffic: every
// node dials its peers through it, so the test can cut all links of a node
// (a partition) and heal them. Connections are real TCP on 127.0.0.1.
type faultNet struct {
	mu      sync.Mutex
	owner   map[string]string // raft address -> node id
	cut     map[string]bool   // node id -> partitioned away
	conns   map[net.Conn][2]string
	dialler net.Dialer
}

func newFaultNet() *faultNet {
	return &faultNet{owner: map[string]string{}, cut: map[string]bool{}, conns: map[net.Conn][2]string{}}
}

// dialer returns the Dial function of node from.
func (f *faultNet) dialer(from string) func(ctx context.Context, addr string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		f.mu.Lock()
		to := f.owner[addr]
		blocked := f.cut[from] || f.cut[to]
		f.mu.Unlock()
		if blocked {
			return nil, fmt.Errorf("faultnet: link %s->%s is cut", from, to)
		}
		c, err := f.dialler.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.cut[from] || f.cut[to] {
			c.Close()
			return nil, fmt.Errorf("faultnet: link %s->%s is cut", from, to)
		}
		f.conns[c] = [2]string{from, to}
		return &trackedConn{Conn: c, f: f}, nil
	}
}

// partition cuts every link of node id, closing its open connections.
func (f *faultNet) partition(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.cut[id] = true
	for c, pair := range f.conns {
		if pair[0] == id || pair[1] == id {
			c.Close()
			delete(f.conns, c)
		}
	}
}

// heal restores the links of node id.
func (f *faultNet) heal(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.cut, id)
}

type trackedConn struct {
	net.Conn
	f *faultNet
}

func (c *trackedConn) Close() error {
	c.f.mu.Lock()
	delete(c.f.conns, c.Conn)
	c.f.mu.Unlock()
	return c.Conn.Close()
}

// testNode is one node of a test cluster with fixed addresses, so it can be
// stopped and started again on the same data directory.
type testNode struct {
	id, dir              string
	raftAddr, clientAddr string
	node                 *intermediate.Node
}

// testCluster runs intermediate nodes in this process over real TCP.
type testCluster struct {
	t      testing.TB
	net    *faultNet
	nodes  []*testNode
	cfg    func(*intermediate.Config)
	logger *slog.Logger
}

// reserveAddr returns a free 127.0.0.1 address.
func reserveAddr(t testing.TB) string {
	t.Helper()
	reserved.Lock()
	defer reserved.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		// The kernel may hand a port just closed out again: never give
		// one address twice in a process (a cluster's nodes would share it).
		if !reserved.addrs[addr] {
			reserved.addrs[addr] = true
			return addr
		}
	}
}

// reserved are the addresses reserveAddr gave out.
var reserved = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: map[string]bool{}}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("TRICOPY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(&testWriter{t: t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// testWriter sends log lines to t.Log (shown for failing tests).
type testWriter struct {
	mu sync.Mutex
	t  testing.TB
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// newTestCluster makes (but does not start) n nodes i1..in bootstrapped
// together. cfg, when not nil, adjusts every node's Config.
func newTestCluster(t testing.TB, n int, cfg func(*intermediate.Config)) *testCluster {
	c := &testCluster{t: t, net: newFaultNet(), cfg: cfg, logger: testLogger(t)}
	base := t.TempDir()
	for i := 1; i <= n; i++ {
		tn := &testNode{
			id:         fmt.Sprintf("i%d", i),
			dir:        filepath.Join(base, fmt.Sprintf("i%d", i)),
			raftAddr:   reserveAddr(t),
			clientAddr: reserveAddr(t),
		}
		c.net.owner[tn.raftAddr] = tn.id
		c.nodes = append(c.nodes, tn)
	}
	t.Cleanup(func() {
		for _, tn := range c.nodes {
			if tn.node != nil {
				tn.node.Close()
			}
		}
	})
	return c
}

func (c *testCluster) peers() []intermediate.Peer {
	var ps []intermediate.Peer
	for _, tn := range c.nodes {
		ps = append(ps, intermediate.Peer{ID: tn.id, RaftAddr: tn.raftAddr})
	}
	return ps
}

func (c *testCluster) config(tn *testNode) intermediate.Config {
	cfg := intermediate.Config{
		ID:                 tn.id,
		Dir:                tn.dir,
		Listen:             tn.clientAddr,
		RaftAddr:           tn.raftAddr,
		Dial:               c.net.dialer(tn.id),
		Cluster:            c.peers(),
		HeartbeatTimeout:   500 * time.Millisecond,
		ElectionTimeout:    500 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond,
		Logger:             c.logger,
	}
	if c.cfg != nil {
		c.cfg(&cfg)
	}
	return cfg
}

// start opens node tn, retrying while its old ports are still in use.
func (c *testCluster) start(tn *testNode) {
	c.t.Helper()
	c.startWith(tn, c.config(tn))
}

func (c *testCluster) startWith(tn *testNode, cfg intermediate.Config) {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		n, err := intermediate.Open(ctx, cfg)
		cancel()
		if err == nil {
			tn.node = n
			return
		}
		if time.Now().After(deadline) || !strings.Contains(err.Error(), "address already in use") {
			c.t.Fatalf("start node %s: %v", tn.id, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (c *testCluster) startAll() {
	c.t.Helper()
	for _, tn := range c.nodes {
		c.start(tn)
	}
}

// stop closes node tn (its state stays on disk).
func (c *testCluster) stop(tn *testNode) {
	c.t.Helper()
	if tn.node == nil {
		return
	}
	if err := tn.node.Close(); err != nil {
		c.t.Errorf("close node %s: %v", tn.id, err)
	}
	tn.node = nil
}

func (c *testCluster) addrs() []string {
	var as []string
	for _, tn := range c.nodes {
		as = append(as, tn.clientAddr)
	}
	return as
}

// leader waits for a node that is leader and returns it.
func (c *testCluster) leader(timeout time.Duration) *testNode {
	c.t.Helper()
	var found *testNode
	waitFor(c.t, timeout, "a leader", func() bool {
		for _, tn := range c.nodes {
			if tn.node != nil && tn.node.IsLeader() {
				found = tn
				return true
			}
		}
		return false
	})
	return found
}

// waitConverged waits for a leader, makes it apply everything committed
// (a barrier), and waits until every running node has applied the same
// Raft index and committed seq as the leader.
func (c *testCluster) waitConverged(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var leader *testNode
	for {
		leader = c.leader(time.Until(deadline))
		if err := leader.node.Raft().Barrier(time.Until(deadline)).Error(); err == nil {
			break
		} else if time.Now().After(deadline) {
			c.t.Fatalf("barrier on leader %s: %v", leader.id, err)
		}
	}
	want := leader.node.FSM().Stats()
	waitFor(c.t, time.Until(deadline), "all nodes at the leader's applied state", func() bool {
		for _, tn := range c.nodes {
			if tn.node == nil {
				continue
			}
			st := tn.node.FSM().Stats()
			if st.CommittedSeq != want.CommittedSeq || st.AppliedIndex < want.AppliedIndex {
				return false
			}
		}
		return true
	})
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
