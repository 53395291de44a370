package replbench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/tricopy/tricopy/intermediate"
)

// Raft tuning shared by the yardstick with intermediate.Open, so that both
// sides run the same Raft with the same log store, cache and batching.
const (
	// raftMaxAppendEntries is intermediate.Open's MaxAppendEntries.
	raftMaxAppendEntries = 256
	// raftLogCache is the capacity of intermediate.Open's raft.LogCache.
	raftLogCache = 1024
	// raftMaxPool and raftTimeout are intermediate.Open's transport
	// settings.
	raftMaxPool = 3
	raftTimeout = 10 * time.Second
	// raftRetainSnapshots is the snapshots kept on disk.
	raftRetainSnapshots = 2
)

// raftCluster is the yardstick: hashicorp/raft nodes in this process, each
// with its own raft-boltdb log in its own directory, talking over TCP on
// 127.0.0.1, with an FSM that only counts bytes. Writers Apply on the
// leader.
type raftCluster struct {
	nodes   []*raftNode
	leader  *raftNode
	payload []byte
	// stopAbort unregisters the shutdown on context cancellation.
	stopAbort func() bool
}

// raftNode is one member of a raftCluster.
type raftNode struct {
	id        string
	raft      *raft.Raft
	store     *raftboltdb.BoltStore
	count     *intermediate.CountingLogStore
	transport *raft.NetworkTransport
}

// startRaft starts a raftCluster of nodes members under dir and waits for
// its leader. Writes carry writeBytes of payload. When ctx is cancelled the
// cluster is shut down, which fails the writes waiting on it; close stops
// it in any case.
func startRaft(ctx context.Context, dir string, nodes, writeBytes int, opts Options) (_ *raftCluster, err error) {
	c := &raftCluster{payload: payload(writeBytes)}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.close())
		}
	}()
	hlog := newHclog(quiet(opts.Logger), "raft")
	var servers []raft.Server
	for i := range nodes {
		n := &raftNode{id: fmt.Sprintf("raft%d", i+1)}
		c.nodes = append(c.nodes, n)
		ndir := filepath.Join(dir, n.id)
		if err := os.MkdirAll(ndir, 0o700); err != nil {
			return nil, fmt.Errorf("node %s: create dir: %w", n.id, err)
		}
		path := filepath.Join(ndir, "raft.db")
		n.store, err = raftboltdb.New(raftboltdb.Options{
			Path:        path,
			BoltOptions: &bbolt.Options{Timeout: time.Second},
			NoSync:      false, // every log write is fsynced, as in intermediate.Open
		})
		if err != nil {
			return nil, fmt.Errorf("node %s: open raft log %s: %w", n.id, path, err)
		}
		n.count = &intermediate.CountingLogStore{LogStore: n.store}
		n.transport, err = raft.NewTCPTransportWithLogger("127.0.0.1:0", nil, raftMaxPool, raftTimeout, hlog.Named(n.id))
		if err != nil {
			return nil, fmt.Errorf("node %s: raft transport: %w", n.id, err)
		}
		servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(n.id), Address: n.transport.LocalAddr()})
	}
	for _, n := range c.nodes {
		logs, err := raft.NewLogCache(raftLogCache, n.count)
		if err != nil {
			return nil, fmt.Errorf("node %s: raft log cache: %w", n.id, err)
		}
		ndir := filepath.Join(dir, n.id)
		snaps, err := raft.NewFileSnapshotStoreWithLogger(ndir, raftRetainSnapshots, hlog.Named(n.id))
		if err != nil {
			return nil, fmt.Errorf("node %s: snapshot store in %s: %w", n.id, ndir, err)
		}
		rc := raftConfig(n.id, opts, hlog.Named(n.id))
		if err := raft.BootstrapCluster(rc, logs, n.store, snaps, n.transport, raft.Configuration{Servers: servers}); err != nil {
			return nil, fmt.Errorf("node %s: bootstrap cluster: %w", n.id, err)
		}
		n.raft, err = raft.NewRaft(rc, &countFSM{}, logs, n.store, snaps, n.transport)
		if err != nil {
			return nil, fmt.Errorf("node %s: start raft: %w", n.id, err)
		}
	}
	c.stopAbort = context.AfterFunc(ctx, c.shutdown)
	i, err := waitLeader(ctx, len(c.nodes), func(i int) bool { return c.nodes[i].raft.State() == raft.Leader })
	if err != nil {
		return nil, err
	}
	c.leader = c.nodes[i]
	return c, nil
}

// raftConfig returns the Raft configuration of a yardstick node: Raft's
// defaults with intermediate.Open's adjustments.
func raftConfig(id string, opts Options, logger hclog.Logger) *raft.Config {
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(id)
	rc.Logger = logger
	rc.SnapshotThreshold = intermediate.DefaultSnapshotThreshold
	rc.SnapshotInterval = intermediate.DefaultSnapshotInterval
	rc.TrailingLogs = intermediate.DefaultTrailingLogs
	rc.MaxAppendEntries = raftMaxAppendEntries
	if d := opts.ElectionTimeout; d != 0 {
		rc.HeartbeatTimeout, rc.ElectionTimeout, rc.LeaderLeaseTimeout = d, d, d/2
	}
	return rc
}

// write implements system: one Apply on the leader, waiting for its
// future's Error and Response.
func (c *raftCluster) write(_ context.Context, _ int, _ uint64) error {
	f := c.leader.raft.Apply(c.payload, intermediate.DefaultApplyTimeout)
	if err := f.Error(); err != nil {
		return fmt.Errorf("raft apply on %s: %w", c.leader.id, err)
	}
	if err, ok := f.Response().(error); ok {
		return fmt.Errorf("raft apply on %s: fsm: %w", c.leader.id, err)
	}
	return nil
}

// counters implements system.
func (c *raftCluster) counters() counters {
	return counters{logWrites: c.leader.count.Writes(), logEntries: c.leader.count.Entries()}
}

// shutdown shuts every node's Raft down without waiting; pending futures
// fail with raft.ErrRaftShutdown.
func (c *raftCluster) shutdown() {
	for _, n := range c.nodes {
		if n.raft != nil {
			n.raft.Shutdown()
		}
	}
}

// close implements system: it shuts Raft down, the leader first so that
// it does not replicate to closed followers, and closes the transports and
// the stores.
func (c *raftCluster) close() error {
	if c.stopAbort != nil {
		c.stopAbort()
	}
	var errs []error
	for _, n := range leaderFirst(c.nodes, c.leader) {
		if n.raft != nil {
			if err := n.raft.Shutdown().Error(); err != nil {
				errs = append(errs, fmt.Errorf("node %s: shut down raft: %w", n.id, err))
			}
		}
		if n.transport != nil {
			if err := n.transport.Close(); err != nil {
				errs = append(errs, fmt.Errorf("node %s: close raft transport: %w", n.id, err))
			}
		}
		if n.store != nil {
			if err := n.store.Close(); err != nil {
				errs = append(errs, fmt.Errorf("node %s: close raft log: %w", n.id, err))
			}
		}
	}
	return errors.Join(errs...)
}

// countFSM is the yardstick's state machine: it counts the bytes applied.
// Raft calls Apply, Snapshot and Restore from its FSM goroutine, one at a
// time; Persist runs on the snapshot goroutine concurrently with Apply.
type countFSM struct {
	bytes atomic.Uint64
}

// Apply implements raft.FSM; the response is the byte count so far.
func (f *countFSM) Apply(l *raft.Log) any {
	return f.bytes.Add(uint64(len(l.Data)))
}

// Snapshot implements raft.FSM.
func (f *countFSM) Snapshot() (raft.FSMSnapshot, error) {
	return countSnapshot(f.bytes.Load()), nil
}

// Restore implements raft.FSM.
func (f *countFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var b [8]byte
	if _, err := io.ReadFull(rc, b[:]); err != nil {
		return fmt.Errorf("read snapshot: %w", err)
	}
	f.bytes.Store(binary.LittleEndian.Uint64(b[:]))
	return nil
}

// countSnapshot is a countFSM snapshot: the byte count.
type countSnapshot uint64

// Persist implements raft.FSMSnapshot.
func (s countSnapshot) Persist(sink raft.SnapshotSink) error {
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(s))
	if _, err := sink.Write(b[:]); err != nil {
		return errors.Join(fmt.Errorf("write snapshot: %w", err), sink.Cancel())
	}
	return sink.Close()
}

// Release implements raft.FSMSnapshot.
func (countSnapshot) Release() {}

var (
	_ raft.FSM         = (*countFSM)(nil)
	_ raft.FSMSnapshot = countSnapshot(0)
	_ system           = (*raftCluster)(nil)
)

// leaderFirst returns nodes with leader moved to the front (when it is
// one of them).
func leaderFirst[N comparable](nodes []N, leader N) []N {
	out := make([]N, 0, len(nodes))
	for _, n := range nodes {
		if n == leader {
			out = append(out, n)
		}
	}
	for _, n := range nodes {
		if n != leader {
			out = append(out, n)
		}
	}
	return out
}

// waitLeader polls isLeader for each of n nodes until one is leader, and
// returns its index; it gives up after leaderTimeout or when ctx ends.
func waitLeader(ctx context.Context, n int, isLeader func(i int) bool) (int, error) {
	deadline := time.Now().Add(leaderTimeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		for i := range n {
			if isLeader(i) {
				return i, nil
			}
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("no leader elected within %v", leaderTimeout)
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("wait for a leader: %w", context.Cause(ctx))
		case <-tick.C:
		}
	}
}

// leaderTimeout bounds the wait for a fresh cluster's first leader.
const leaderTimeout = 30 * time.Second

// payload returns n bytes of pseudo-random data, shared read-only by all
// writes of a run.
func payload(n int) []byte {
	p := make([]byte, n)
	x := uint64(0x9e3779b97f4a7c15)
	for i := 0; i+8 <= n; i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		binary.LittleEndian.PutUint64(p[i:], x)
	}
	return p
}

// quiet returns a logger for the clusters under test: log's handler with
// records below Warn dropped, unless log is enabled for Debug. The nodes'
// and Raft's informational lines (started, elected, registered) would
// otherwise bury the benchmark's progress.
func quiet(log *slog.Logger) *slog.Logger {
	if log.Enabled(context.Background(), slog.LevelDebug) {
		return log
	}
	return slog.New(&minLevelHandler{Handler: log.Handler(), min: slog.LevelWarn})
}

// minLevelHandler drops the records below min.
type minLevelHandler struct {
	slog.Handler
	min slog.Level
}

// Enabled implements slog.Handler.
func (h *minLevelHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

// WithAttrs implements slog.Handler.
func (h *minLevelHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &minLevelHandler{Handler: h.Handler.WithAttrs(attrs), min: h.min}
}

// WithGroup implements slog.Handler.
func (h *minLevelHandler) WithGroup(name string) slog.Handler {
	return &minLevelHandler{Handler: h.Handler.WithGroup(name), min: h.min}
}
