package configs

import (
	"strings"
	"time"
)

// Defaults of the intermediate commands. They match the defaults of package
// intermediate; configs does not import it (only cmd sees both).
const (
	// DefaultJournalBudget bounds the journal's payload bytes.
	DefaultJournalBudget = 512 * MiB
	// DefaultMaxMessage bounds one gRPC message and one Raft entry.
	DefaultMaxMessage = 32 * MiB
	// DefaultSnapshotThreshold is the number of Raft entries between snapshots.
	DefaultSnapshotThreshold = 8192
	// DefaultTrailingLogs is the number of entries kept after a snapshot.
	DefaultTrailingLogs = 4096
	// DefaultTrimInterval is how often the leader trims the journal.
	DefaultTrimInterval = time.Second
	// DefaultSnapshotInterval is how often Raft checks whether to snapshot.
	DefaultSnapshotInterval = 2 * time.Minute
	// DefaultTimeout bounds one client request of status and remove.
	DefaultTimeout = 10 * time.Second
)

// Intermediate is the configuration of `tricopy intermediate`.
type Intermediate struct {
	// Node is the node's ID in the cluster.
	Node string `key:"node" meta:"ID" help:"this node's ID in the cluster (like i1); required"`
	// Data holds the Raft log, snapshots and intermediate volumes.
	Data string `key:"data" meta:"DIR" help:"directory holding the Raft log, snapshots and intermediate volumes (created if missing); required"`
	// Listen is the client (gRPC) address.
	Listen string `key:"listen" meta:"ADDR" help:"host:port for primaries, secondaries and tricopy status; required"`
	// Raft is the Raft transport address, bound and advertised.
	Raft string `key:"raft" meta:"ADDR" help:"host:port of the Raft transport between intermediate nodes, as the peers reach it; required"`
	// Cluster is the initial membership: ID=RAFTADDR entries.
	Cluster []string `key:"cluster" meta:"ID=ADDR,..." help:"initial cluster as comma-separated ID=RAFTADDR entries including this node; the same list on every node bootstraps the cluster; without --cluster and --join, a single-node cluster of this node (ignored once the node has state)"`
	// Join lists client addresses of a running cluster.
	Join []string `key:"join" meta:"ADDRS" help:"comma-separated client addresses of a running cluster to join (instead of --cluster; ignored once the node has state)"`
	// Group is the consistency group the cluster serves.
	Group string `key:"group" meta:"G" help:"consistency group this cluster serves"`
	// JournalBudget bounds the journal.
	JournalBudget Size `key:"journal-budget" meta:"SIZE" help:"most bytes of batches the journal holds; Submit is refused (journal full) beyond it"`
	// SuspendThreshold is the journal use at which a lagging secondary is
	// suspended; 0 means half of JournalBudget.
	SuspendThreshold Size `key:"suspend-threshold" meta:"SIZE" help:"journal bytes past which the secondary that holds the journal back (down or lagging) is suspended: its intermediate bitmap records what the journal then drops for it, and it resynchronises those regions when it returns (0: half of --journal-budget)"`
	// TrimInterval is how often the leader trims the journal.
	TrimInterval time.Duration `key:"trim-interval" meta:"DURATION" help:"how often the leader drops the journal's batches every reader has (and checks whether a secondary must be suspended)"`
	// MaxMessage bounds messages and Raft entries.
	MaxMessage Size `key:"max-message" meta:"SIZE" help:"largest gRPC message and Raft entry; larger ones are refused"`
	// SnapshotThreshold is the number of entries between snapshots.
	SnapshotThreshold uint64 `key:"snapshot-threshold" meta:"N" help:"Raft entries between snapshots (each snapshot streams the intermediate volumes)"`
	// SnapshotInterval is how often Raft checks the threshold.
	SnapshotInterval time.Duration `key:"snapshot-interval" meta:"DURATION" help:"how often to check whether a snapshot is due"`
	// TrailingLogs is the number of entries kept after a snapshot.
	TrailingLogs uint64 `key:"trailing-logs" meta:"N" help:"Raft entries kept after a snapshot, so a briefly absent node catches up without one"`
	// Metrics is the address of the Prometheus metrics server; empty: none.
	Metrics string `key:"metrics" meta:"ADDR" help:"serve Prometheus metrics (tricopy_*) at http://ADDR/metrics; empty: none"`
	// TLS holds the TLS keys (all or none).
	TLS
	// Common holds the keys every command has.
	Common
}

// DefaultIntermediate returns the defaults of `tricopy intermediate`.
func DefaultIntermediate() Intermediate {
	return Intermediate{
		Common:            DefaultCommon(),
		Group:             DefaultGroup,
		JournalBudget:     DefaultJournalBudget,
		MaxMessage:        DefaultMaxMessage,
		SnapshotThreshold: DefaultSnapshotThreshold,
		SnapshotInterval:  DefaultSnapshotInterval,
		TrailingLogs:      DefaultTrailingLogs,
		TrimInterval:      DefaultTrimInterval,
	}
}

// Validate implements Config.
func (c *Intermediate) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if c.Node == "" {
		return Required("node")
	}
	if err := validateName("node", c.Node); err != nil {
		return err
	}
	if c.Data == "" {
		return Required("data")
	}
	if c.Listen == "" {
		return Required("listen")
	}
	if err := validateAddr("listen", c.Listen); err != nil {
		return err
	}
	if c.Raft == "" {
		return Required("raft")
	}
	if err := validateAddr("raft", c.Raft); err != nil {
		return err
	}
	if c.TrimInterval < 10*time.Millisecond {
		return Invalid("trim-interval", "%v is below the minimum of 10ms", c.TrimInterval)
	}
	if c.SuspendThreshold != 0 && c.SuspendThreshold >= c.JournalBudget {
		return Invalid("suspend-threshold", "%s is not below --journal-budget %s", c.SuspendThreshold, c.JournalBudget)
	}
	if len(c.Cluster) > 0 && len(c.Join) > 0 {
		return Invalid("join", "--join and --cluster exclude each other: --cluster bootstraps a new cluster, --join adds this node to a running one")
	}
	peers, err := c.Peers()
	if err != nil {
		return err
	}
	found := false
	for _, p := range peers {
		if p[0] == c.Node {
			found = true
			if p[1] != c.Raft {
				return Invalid("cluster", "this node %s is listed at %s but --raft is %s", c.Node, p[1], c.Raft)
			}
		}
	}
	if len(peers) > 0 && !found {
		return Invalid("cluster", "this node %q is not in the list", c.Node)
	}
	for _, a := range c.Join {
		if err := validateAddr("join", a); err != nil {
			return err
		}
	}
	if err := validateName("group", c.Group); err != nil {
		return err
	}
	if c.MaxMessage < 1*MiB || c.MaxMessage > 1024*MiB {
		return Invalid("max-message", "%s is outside 1MiB..1GiB", c.MaxMessage)
	}
	if c.JournalBudget < c.MaxMessage {
		return Invalid("journal-budget", "%s is below max-message %s", c.JournalBudget, c.MaxMessage)
	}
	if c.SnapshotThreshold == 0 {
		return Invalid("snapshot-threshold", "must be at least 1")
	}
	if c.SnapshotInterval <= 0 {
		return Invalid("snapshot-interval", "must be positive")
	}
	return validateMetrics(c.Metrics, map[string]string{"listen": c.Listen, "raft": c.Raft})
}

// Peers parses Cluster into [ID, RAFTADDR] pairs. Without Cluster and
// Join it is the embedded default: a single-node cluster of this node.
func (c *Intermediate) Peers() ([][2]string, error) {
	if len(c.Cluster) == 0 && len(c.Join) == 0 {
		return [][2]string{{c.Node, c.Raft}}, nil
	}
	var out [][2]string
	seen := map[string]bool{}
	for _, e := range c.Cluster {
		id, addr, ok := strings.Cut(e, "=")
		if !ok {
			return nil, Invalid("cluster", "entry %q: want ID=RAFTADDR", e)
		}
		if err := validateName("cluster", id); err != nil {
			return nil, err
		}
		if err := validateAddr("cluster", addr); err != nil {
			return nil, err
		}
		if seen[id] {
			return nil, Invalid("cluster", "node %q listed twice", id)
		}
		seen[id] = true
		out = append(out, [2]string{id, addr})
	}
	return out, nil
}

// IntermediateRemove is the configuration of `tricopy intermediate remove`.
type IntermediateRemove struct {
	// Intermediate lists client addresses of the cluster.
	Intermediate []string `key:"intermediate" meta:"ADDRS" help:"comma-separated client addresses of intermediate nodes (any member will do); required"`
	// Node is the ID of the node to remove.
	Node string `key:"node" meta:"ID" help:"ID of the node to take out of the cluster; required"`
	// Timeout bounds the request.
	Timeout time.Duration `key:"timeout" meta:"DURATION" help:"give up after this long"`
	// TLS holds the TLS keys (all or none).
	TLS
	// Common holds the keys every command has.
	Common
}

// DefaultIntermediateRemove returns the defaults of `tricopy intermediate remove`.
func DefaultIntermediateRemove() IntermediateRemove {
	return IntermediateRemove{Common: DefaultCommon(), Timeout: DefaultTimeout}
}

// Validate implements Config.
func (c *IntermediateRemove) Validate() error {
	if err := validateAddrs("intermediate", c.Intermediate); err != nil {
		return err
	}
	if c.Node == "" {
		return Required("node")
	}
	return validateName("node", c.Node)
}

// Status is the configuration of `tricopy status`.
type Status struct {
	// Intermediate lists client addresses of the cluster.
	Intermediate []string `key:"intermediate" meta:"ADDRS" help:"comma-separated client addresses of intermediate nodes (any member will do); required"`
	// Group is the consistency group to show.
	Group string `key:"group" meta:"G" help:"consistency group to show"`
	// JSON prints one JSON object.
	JSON bool `key:"json" help:"print the status as one JSON object (a stable schema, see docs/STATUS.md)"`
	// Timeout bounds the queries.
	Timeout time.Duration `key:"timeout" meta:"DURATION" help:"give up on a node after this long"`
	// MaxLag is the lag above which a secondary makes the group unhealthy.
	MaxLag time.Duration `key:"max-lag" meta:"DURATION" help:"a secondary whose lag (the age of the oldest batch it has not applied) exceeds this makes the group unhealthy (exit 1); 0: no limit"`
	// Watch refreshes the status every interval until interrupted.
	Watch time.Duration `key:"watch" meta:"DURATION" help:"refresh every DURATION until interrupted (on a terminal the screen is redrawn; with --json one object per line); 0: once"`
	// TLS holds the TLS keys (all or none).
	TLS
	// Common holds the keys every command has.
	Common
}

// DefaultStatus returns the defaults of `tricopy status`.
func DefaultStatus() Status {
	return Status{Common: DefaultCommon(), Group: DefaultGroup, Timeout: 5 * time.Second}
}

// Validate implements Config.
func (c *Status) Validate() error {
	if err := validateAddrs("intermediate", c.Intermediate); err != nil {
		return err
	}
	switch {
	case c.MaxLag < 0:
		return Invalid("max-lag", "%v is negative", c.MaxLag)
	case c.Watch != 0 && c.Watch < 100*time.Millisecond:
		return Invalid("watch", "%v is below the minimum of 100ms", c.Watch)
	}
	return validateName("group", c.Group)
}

// validateAddrs checks a required, non-empty list of host:port addresses.
func validateAddrs(key string, addrs []string) error {
	if len(addrs) == 0 {
		return Required(key)
	}
	for _, a := range addrs {
		if err := validateAddr(key, a); err != nil {
			return err
		}
	}
	return nil
}

var (
	_ Config = (*Intermediate)(nil)
	_ Config = (*IntermediateRemove)(nil)
	_ Config = (*Status)(nil)
)
