package replbench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"

	"github.com/tricopy/tricopy/intermediate"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// Volumes of our side.
const (
	// submitVolumes is the number of volumes the writers are spread over.
	submitVolumes = 4
	// volumeBlocks is the size in blocks of each volume (256 MiB); writes
	// cycle through it.
	volumeBlocks = 1 << 16
	// journalBudget is the journal budget of the benchmark's nodes. No
	// secondary consumes the journal here, so it only grows; the budget is
	// set far above what a run writes so that it never refuses a Submit.
	journalBudget = 1 << 40
)

// Intermediate is a cluster of intermediate nodes in this process, each
// with its own directory, talking Raft and gRPC over TCP on 127.0.0.1. Other
// benchmarks (the mirrored mount's) use it too.
type Intermediate struct {
	nodes  []*intermediate.Node
	leader *intermediate.Node
	addrs  []string // client addresses, the leader's first
}

// StartIntermediate starts a cluster of nodes members under dir with the
// benchmark's journal budget, and waits for its leader. Options' Logger and
// ElectionTimeout apply.
func StartIntermediate(ctx context.Context, dir string, nodes int, opts Options) (_ *Intermediate, err error) {
	c := &Intermediate{}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.Close())
		}
	}()
	log := quiet(opts.Logger)
	ids := make([]string, nodes)
	raftLis := make([]net.Listener, nodes)
	clientLis := make([]net.Listener, nodes)
	// closeListeners closes the listeners of nodes from on, which no
	// node owns yet.
	closeListeners := func(from int) {
		for i := from; i < nodes; i++ {
			for _, l := range []net.Listener{raftLis[i], clientLis[i]} {
				if l != nil {
					l.Close()
				}
			}
		}
	}
	var peers []intermediate.Peer
	for i := range nodes {
		ids[i] = fmt.Sprintf("n%d", i+1)
		if raftLis[i], err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			closeListeners(0)
			return nil, fmt.Errorf("node %s: listen for raft: %w", ids[i], err)
		}
		if clientLis[i], err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			closeListeners(0)
			return nil, fmt.Errorf("node %s: listen for clients: %w", ids[i], err)
		}
		peers = append(peers, intermediate.Peer{ID: ids[i], RaftAddr: raftLis[i].Addr().String()})
	}
	for i := range nodes {
		cfg := intermediate.Config{
			ID:             ids[i],
			Dir:            filepath.Join(dir, ids[i]),
			ClientListener: clientLis[i],
			RaftListener:   raftLis[i],
			Cluster:        peers,
			JournalBudget:  journalBudget,
			Logger:         log,
		}
		if d := opts.ElectionTimeout; d != 0 {
			cfg.HeartbeatTimeout, cfg.ElectionTimeout, cfg.LeaderLeaseTimeout = d, d, d/2
		}
		n, err := intermediate.Open(ctx, cfg)
		if err != nil {
			closeListeners(i) // Open closes node i's own on most errors; closing twice is harmless
			return nil, fmt.Errorf("open node %s: %w", ids[i], err)
		}
		c.nodes = append(c.nodes, n)
		c.addrs = append(c.addrs, n.ClientAddr())
	}
	i, err := waitLeader(ctx, len(c.nodes), func(i int) bool { return c.nodes[i].IsLeader() })
	if err != nil {
		return nil, err
	}
	c.leader = c.nodes[i]
	// The leader first: clients try the addresses in order.
	c.addrs[0], c.addrs[i] = c.addrs[i], c.addrs[0]
	return c, nil
}

// LeaderStats returns the leader's write-path counters.
func (c *Intermediate) LeaderStats() intermediate.NodeStats { return c.leader.Stats() }

// Addrs returns the nodes' client addresses, the leader's first.
func (c *Intermediate) Addrs() []string { return c.addrs }

// Close closes the nodes, the leader first so that it does not replicate to
// closed followers.
func (c *Intermediate) Close() error {
	var errs []error
	for _, n := range leaderFirst(c.nodes, c.leader) {
		if err := n.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close node %s: %w", n.ID(), err))
		}
	}
	c.nodes = nil
	return errors.Join(errs...)
}

// submitCluster is our side: an Intermediate and one client with a Volume
// per volume; writers share the volumes, writer w writing volume w mod the
// volume count.
type submitCluster struct {
	inter   *Intermediate
	client  *client.Client
	vols    []*client.Volume
	names   []string
	blocks  int // blocks per write
	writers int
	payload []byte
}

// startSubmit starts a submitCluster of sc.Nodes members under dir, waits
// for its leader, and opens the volumes for sc's writers.
func startSubmit(ctx context.Context, dir string, sc Scenario, opts Options) (_ *submitCluster, err error) {
	c := &submitCluster{blocks: sc.Blocks, writers: sc.Writers, payload: payload(blockSize)}
	defer func() {
		if err != nil {
			err = errors.Join(err, c.close())
		}
	}()
	if c.inter, err = StartIntermediate(ctx, dir, sc.Nodes, opts); err != nil {
		return nil, err
	}
	c.client, err = client.New(client.Config{Addrs: c.inter.Addrs(), Logger: quiet(opts.Logger)})
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	for v := range min(sc.Writers, submitVolumes) {
		name := fmt.Sprintf("bench-%d", v)
		vol, err := c.client.OpenVolume(ctx, client.VolumeOptions{Name: name, Epoch: 1, BlockCount: volumeBlocks})
		if err != nil {
			return nil, fmt.Errorf("open volume %s: %w", name, err)
		}
		c.vols = append(c.vols, vol)
		c.names = append(c.names, name)
	}
	return c, nil
}

// write implements system: one Submit of one batch of c.blocks blocks.
// Writer w's writes cycle through the volume in steps of the writer
// count, so that concurrent writes of a volume's writers touch different
// blocks.
func (c *submitCluster) write(ctx context.Context, w int, seq uint64) error {
	v := w % len(c.vols)
	slots := uint64(volumeBlocks / c.blocks)
	first := (uint64(w) + seq*uint64(c.writers)) % slots * uint64(c.blocks)
	blocks := make([]*wire.Block, c.blocks)
	for i := range blocks {
		blocks[i] = &wire.Block{Index: first + uint64(i), Data: c.payload}
	}
	if _, err := c.vols[v].Submit(ctx, blocks); err != nil {
		return fmt.Errorf("submit to volume %s: %w", c.names[v], err)
	}
	return nil
}

// counters implements system.
func (c *submitCluster) counters() counters {
	s := c.inter.leader.Stats()
	return counters{logWrites: s.LogWrites, logEntries: s.LogEntries, submitEntries: s.SubmitEntries, submitBatches: s.SubmitBatches}
}

// close implements system: it closes the volumes, the client and the
// nodes.
func (c *submitCluster) close() error {
	var errs []error
	for i, v := range c.vols {
		if err := v.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close volume %s: %w", c.names[i], err))
		}
	}
	if c.client != nil {
		if err := c.client.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close client: %w", err))
		}
	}
	if c.inter != nil {
		errs = append(errs, c.inter.Close())
	}
	return errors.Join(errs...)
}

var _ system = (*submitCluster)(nil)
