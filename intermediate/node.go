package intermediate

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/bbolt"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// Defaults of Config.
const (
	DefaultGroup             = "default"
	DefaultJournalBudget     = 512 << 20
	DefaultSnapshotThreshold = 8192
	DefaultTrailingLogs      = 4096
	DefaultSnapshotInterval  = 2 * time.Minute
	DefaultApplyTimeout      = 10 * time.Second
	DefaultPipelineDepth     = 4
	DefaultTrimInterval      = time.Second
)

// Sentinel errors of package intermediate.
var (
	// ErrNotInCluster: the node's ID is not in the --cluster list.
	ErrNotInCluster = errors.New("node not in cluster list")
	// ErrClosed: the node has been closed.
	ErrClosed = errors.New("node closed")
)

// Peer is one member of the initial cluster: a node ID and its Raft address.
type Peer struct {
	ID       string
	RaftAddr string
}

// Config configures one intermediate node.
type Config struct {
	// ID is the node's Raft server ID.
	ID string
	// Dir holds the Raft log (raft.db), snapshots and the intermediate
	// volumes. One process at a time.
	Dir string
	// Group is the consistency group the cluster serves.
	Group string
	// Listen is the client (gRPC) address; ignored when ClientListener is set.
	Listen string
	// ClientListener, when set, is used instead of listening on Listen.
	ClientListener net.Listener
	// RaftAddr is the Raft transport's bind and advertised address; ignored
	// when RaftListener is set (its address is advertised).
	RaftAddr string
	// RaftListener, when set, carries the Raft transport.
	RaftListener net.Listener
	// Dial, when set, makes the Raft transport's outgoing connections (tests
	// inject faults here; TLS plugs in here later).
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Cluster is the initial configuration. A node without state bootstraps
	// it when its own ID is listed; every node given the same list forms the
	// same cluster. Empty with Join set: join a running cluster.
	Cluster []Peer
	// Join lists client addresses of a running cluster to ask for
	// membership when the node has no state.
	Join []string
	// JournalBudget bounds the journal's payload bytes; the leader refuses
	// Submit with wire.ErrJournalFull beyond it.
	JournalBudget uint64
	// SuspendThreshold is the journal's payload bytes above which the
	// leader's trimmer suspends the registered secondary that holds
	// trimming back the most (one per trim pass), rather than let the
	// journal fill up: see SuspendSecondary. 0 means half of JournalBudget;
	// it may not exceed JournalBudget.
	SuspendThreshold uint64
	// MaxMessage bounds gRPC messages and Raft entries.
	MaxMessage int
	// SnapshotThreshold, SnapshotInterval and TrailingLogs tune Raft's
	// snapshots (see hashicorp/raft Config).
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
	// HeartbeatTimeout, ElectionTimeout and LeaderLeaseTimeout override
	// Raft's defaults when not zero (tests shorten them).
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	// ApplyTimeout bounds one proposal's wait to enter the Raft log.
	ApplyTimeout time.Duration
	// PipelineDepth is how many Submit entries may be in the Raft pipeline
	// at once; batches arriving meanwhile are grouped into the next entry.
	PipelineDepth int
	// TrimInterval is how often the leader trims the journal of the batches
	// no reader needs any more; default DefaultTrimInterval.
	TrimInterval time.Duration
	// CoordinatorTick is the PREPARE/VALIDATE coordinator's unit of time
	// (it runs on the leader); default DefaultCoordinatorTick.
	CoordinatorTick time.Duration
	// CoordinatorRetransmitTicks is how many ticks pass before the
	// coordinator sends an unanswered PREPARE or VALIDATE again; default
	// DefaultCoordinatorRetransmitTicks.
	CoordinatorRetransmitTicks int
	// Logger receives the node's logs and Raft's.
	Logger *slog.Logger
	// Metrics, when set, receives the node's Prometheus metrics
	// (tricopy_intermediate_*): Open registers them on it, and fails when
	// that fails (another node's metrics on the same registerer, say);
	// Close unregisters them. Nil: the node keeps no metrics.
	Metrics prometheus.Registerer
	// TLS, when set, puts TLS 1.3 with client certificates on every link
	// of the node (its gRPC server, Raft in both directions, Join calls)
	// and authorizes each call by the caller's grants (see authz.go). Its
	// certificate must hold intermediate/ID. Nil: plain TCP, no checks.
	TLS *auth.Material
	// GRPCOptions are extra server options.
	GRPCOptions []grpc.ServerOption
	// DialOptions are extra client options for Join calls.
	DialOptions []grpc.DialOption
}

func (c Config) withDefaults() (Config, error) {
	if c.ID == "" {
		return c, errors.New("node id is empty")
	}
	if c.Dir == "" {
		return c, errors.New("data directory is empty")
	}
	if c.TLS != nil && !c.TLS.Identity().Has(auth.RoleIntermediate, c.ID) {
		return c, fmt.Errorf("TLS certificate %s does not make this process node %s: it needs the URI SAN %s; it holds %s",
			c.TLS.Files().Cert, c.ID, auth.Grant{Role: auth.RoleIntermediate, Name: c.ID}.URI(), c.TLS.Identity())
	}
	if c.Group == "" {
		c.Group = DefaultGroup
	}
	if c.JournalBudget == 0 {
		c.JournalBudget = DefaultJournalBudget
	}
	if c.SuspendThreshold == 0 {
		c.SuspendThreshold = c.JournalBudget / 2
	}
	if c.SuspendThreshold > c.JournalBudget {
		return c, fmt.Errorf("suspend threshold %d is above the journal budget %d: secondaries would never be suspended before the journal is full",
			c.SuspendThreshold, c.JournalBudget)
	}
	if c.MaxMessage == 0 {
		c.MaxMessage = wire.DefaultMaxMessage
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = DefaultSnapshotThreshold
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = DefaultSnapshotInterval
	}
	if c.TrimInterval <= 0 {
		c.TrimInterval = DefaultTrimInterval
	}
	switch {
	case c.CoordinatorTick == 0:
		c.CoordinatorTick = DefaultCoordinatorTick
	case c.CoordinatorTick < 0:
		return c, fmt.Errorf("coordinator tick %s is negative", c.CoordinatorTick)
	}
	switch {
	case c.CoordinatorRetransmitTicks == 0:
		c.CoordinatorRetransmitTicks = DefaultCoordinatorRetransmitTicks
	case c.CoordinatorRetransmitTicks < 0:
		return c, fmt.Errorf("coordinator retransmit ticks %d is negative", c.CoordinatorRetransmitTicks)
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = DefaultTrailingLogs
	}
	if c.ApplyTimeout == 0 {
		c.ApplyTimeout = DefaultApplyTimeout
	}
	if c.PipelineDepth == 0 {
		c.PipelineDepth = DefaultPipelineDepth
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.ClientListener == nil && c.Listen == "" {
		return c, errors.New("client listen address is empty")
	}
	if c.RaftListener == nil && c.RaftAddr == "" {
		return c, errors.New("raft address is empty")
	}
	if len(c.Cluster) > 0 && len(c.Join) > 0 {
		return c, errors.New("cluster and join are exclusive: bootstrap with cluster, or join a running one")
	}
	seen := map[string]bool{}
	for _, p := range c.Cluster {
		if p.ID == "" || p.RaftAddr == "" {
			return c, fmt.Errorf("cluster member %q=%q: id and address are required", p.ID, p.RaftAddr)
		}
		if seen[p.ID] {
			return c, fmt.Errorf("cluster member %q listed twice", p.ID)
		}
		seen[p.ID] = true
	}
	if len(c.Cluster) > 0 && !seen[c.ID] {
		return c, fmt.Errorf("node %q: %w", c.ID, ErrNotInCluster)
	}
	return c, nil
}

// Node is one running intermediate node: the Raft member with its state
// machine, the proposer that groups Submit batches into Raft entries, the
// PREPARE/VALIDATE coordinator (on the leader) and the gRPC server.
//
// Goroutines: Raft's own; the proposer (proposer.run) and its completer;
// the leader watcher (watchLeader), which starts and stops the coordinator
// as leadership comes and goes and records this node's client address in
// the log when it becomes leader; the coordinator's driver and its Record
// proposals (see coordinator), while this node leads; the journal trimmer;
// the gRPC server (serve) and one goroutine per stream. Close stops all of
// them. With Config.Metrics, a scrape reads the node's state on the
// scraper's goroutine (see nodeMetrics); Close unregisters the metrics
// first.
type Node struct {
	cfg       Config
	log       *slog.Logger
	fsm       *FSM
	raft      *raft.Raft
	store     *raftboltdb.BoltStore
	transport *raft.NetworkTransport
	grpc      *grpc.Server
	clientLis net.Listener
	prop      *proposer
	reports   *primaryReports
	coord     *coordinator
	notify    chan bool
	logCount  *CountingLogStore
	metrics   *nodeMetrics // nil without Config.Metrics
	// metricsReg is Config.Metrics once metrics are registered on it: Close
	// unregisters only what Open registered (a collector is unregistered
	// by its descriptions, which another node's share).
	metricsReg prometheus.Registerer

	ctx    context.Context
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup

	fatalOnce sync.Once
	fatal     chan struct{}
	fatalErr  error

	closeOnce sync.Once
	closeErr  error
}

// Open starts a node: it opens (or creates) the Raft state in cfg.Dir,
// bootstraps or joins the cluster as configured, and serves clients.
func Open(ctx context.Context, cfg Config) (_ *Node, err error) {
	cfg, err = cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("intermediate config: %w", err)
	}
	log := cfg.Logger.With(logKeyNode, cfg.ID)
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory %q: %w", cfg.Dir, err)
	}
	n := &Node{cfg: cfg, log: log, fatal: make(chan struct{}), notify: make(chan bool, 16)}
	n.ctx, n.cancel = context.WithCancelCause(context.Background())
	defer func() {
		if err != nil {
			n.Close()
		}
	}()
	var onBatch func(volume string, blockBytes int)
	if cfg.Metrics != nil {
		n.metrics = newNodeMetrics(n)
		onBatch = n.metrics.applied
	}

	n.fsm, err = NewFSM(FSMConfig{
		Group:          cfg.Group,
		Dir:            filepath.Join(cfg.Dir, "volumes"),
		Logger:         log,
		OnFatal:        n.setFatal,
		OnBatchApplied: onBatch,
	})
	if err != nil {
		return nil, err
	}
	n.store, err = raftboltdb.New(raftboltdb.Options{
		Path:        filepath.Join(cfg.Dir, "raft.db"),
		BoltOptions: &bbolt.Options{Timeout: time.Second},
		NoSync:      false, // the log is the durability point of every Submit
	})
	if err != nil {
		return nil, fmt.Errorf("open raft log %q: %w", filepath.Join(cfg.Dir, "raft.db"), err)
	}
	n.logCount = &CountingLogStore{LogStore: n.store}
	logs, err := raft.NewLogCache(1024, n.logCount)
	if err != nil {
		return nil, fmt.Errorf("raft log cache: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(cfg.Dir, 2, newHclog(log, "raft-snapshot"))
	if err != nil {
		return nil, fmt.Errorf("open snapshots in %q: %w", cfg.Dir, err)
	}
	raftLis := cfg.RaftListener
	if raftLis == nil {
		raftLis, err = net.Listen("tcp", cfg.RaftAddr)
		if err != nil {
			return nil, fmt.Errorf("listen for raft on %q: %w", cfg.RaftAddr, err)
		}
	}
	var stream raft.StreamLayer = &streamLayer{Listener: raftLis, dial: cfg.Dial}
	if cfg.TLS != nil {
		stream = &tlsStreamLayer{inner: stream.(*streamLayer), server: cfg.TLS.ServerConfig(auth.RoleIntermediate),
			client: cfg.TLS.ClientConfig(auth.RoleIntermediate), refused: n.handshakeRefused(methodRaftHandshake)}
	}
	n.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  stream,
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  newHclog(log, "raft-net"),
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.ID)
	rc.Logger = newHclog(log, "raft")
	rc.NotifyCh = n.notify
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.MaxAppendEntries = 256
	if cfg.HeartbeatTimeout != 0 {
		rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	}
	if cfg.ElectionTimeout != 0 {
		rc.ElectionTimeout = cfg.ElectionTimeout
	}
	if cfg.LeaderLeaseTimeout != 0 {
		rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	}
	if err := raft.ValidateConfig(rc); err != nil {
		return nil, fmt.Errorf("raft config: %w", err)
	}

	existing, err := raft.HasExistingState(logs, n.store, snaps)
	if err != nil {
		return nil, fmt.Errorf("read raft state in %q: %w", cfg.Dir, err)
	}
	if !existing && len(cfg.Cluster) > 0 {
		var servers []raft.Server
		for _, p := range cfg.Cluster {
			servers = append(servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(p.ID), Address: raft.ServerAddress(p.RaftAddr)})
		}
		if err := raft.BootstrapCluster(rc, logs, n.store, snaps, n.transport, raft.Configuration{Servers: servers}); err != nil {
			return nil, fmt.Errorf("bootstrap cluster: %w", err)
		}
		log.Info("bootstrapped cluster", "members", len(servers))
	}
	n.raft, err = raft.NewRaft(rc, n.fsm, logs, n.store, snaps, n.transport)
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}
	n.prop = newProposer(n)
	n.reports = newPrimaryReports()
	n.coord = newCoordinator(n)
	if n.metrics != nil {
		if err := n.metrics.register(cfg.Metrics); err != nil {
			return nil, err
		}
		n.metricsReg = cfg.Metrics
	}

	n.clientLis = cfg.ClientListener
	if n.clientLis == nil {
		n.clientLis, err = net.Listen("tcp", cfg.Listen)
		if err != nil {
			return nil, fmt.Errorf("listen for clients on %q: %w", cfg.Listen, err)
		}
	}
	opts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(cfg.MaxMessage + 64<<10),
		grpc.MaxSendMsgSize(cfg.MaxMessage + 64<<10),
	}
	if cfg.TLS != nil {
		opts = append(opts, grpc.Creds(loggedCreds{TransportCredentials: credentials.NewTLS(cfg.TLS.ServerConfig()),
			refused: n.handshakeRefused(methodTLSHandshake)}))
	}
	opts = append(opts, cfg.GRPCOptions...)
	n.grpc = grpc.NewServer(opts...)
	wire.RegisterIntermediateServer(n.grpc, &service{n: n})

	n.wg.Add(3)
	go n.serve()
	go n.watchLeader()
	go n.trimmer()
	n.prop.start()

	if !existing && len(cfg.Join) > 0 {
		if err := n.join(ctx); err != nil {
			return nil, err
		}
	}
	log.Info("intermediate node started", logKeyAddr, n.ClientAddr(), "raft", raftLis.Addr().String(), "existing_state", existing)
	return n, nil
}

// handshakeRefused returns the logger and counter of connections of kind
// (methodTLSHandshake, methodRaftHandshake) refused at the TLS handshake.
func (n *Node) handshakeRefused(kind string) func(addr string, err error) {
	return func(addr string, err error) {
		n.metrics.authRefused(kind)
		n.log.Warn("refused a connection at its TLS handshake", logKeyMethod, kind, logKeyPeer, addr, logKeyErr, err)
	}
}

// serve runs the gRPC server until Close.
func (n *Node) serve() {
	defer n.wg.Done()
	if err := n.grpc.Serve(n.clientLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		n.log.Error("grpc server stopped", logKeyErr, err)
	}
}

// watchLeader starts the coordinator each time this node becomes leader
// and stops it when it loses leadership, and records this node's client
// address in the log when it becomes leader, so followers can send clients
// to it.
func (n *Node) watchLeader() {
	defer n.wg.Done()
	for {
		select {
		case <-n.ctx.Done():
			return
		case leader := <-n.notify:
			if !leader {
				n.log.Info("lost leadership")
				n.coord.stop()
				continue
			}
			n.log.Info("became leader")
			n.coord.start()
			if n.fsm.NodeAddr(n.cfg.ID) == n.ClientAddr() {
				continue
			}
			entry := &wire.Entry{Op: &wire.Entry_NodeAddr{NodeAddr: &wire.NodeAddr{Id: n.cfg.ID, ClientAddr: n.ClientAddr()}}}
			if _, err := n.apply(n.ctx, entry); err != nil {
				n.log.Warn("record leader address", logKeyErr, err)
			}
		}
	}
}

// trimmer is the journal trimmer goroutine: every TrimInterval, on the
// leader, it records a TrimJournal entry up to the highest seq no reader
// needs. The readers are the primaries, which replay after a restart the
// batches of their volume past their reported durable seq, and the
// registered secondaries that are not suspended, which need the batches of
// their volume past their applied point as the coordinator knows it (a
// secondary this leader has not heard from holds the journal). When the
// journal holds more than SuspendThreshold bytes and a secondary holds
// trimming below what the primaries allow, the trimmer first suspends that
// secondary (see suspend.go).
func (n *Node) trimmer() {
	defer n.wg.Done()
	t := time.NewTicker(n.cfg.TrimInterval)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		if !n.IsLeader() || n.FatalErr() != nil {
			continue
		}
		n.trimOnce()
	}
}

// trimOnce is one pass of the trimmer.
func (n *Node) trimOnce() {
	st := n.fsm.Stats()
	vols := n.fsm.Volumes()
	upTo := n.reports.trimPoint(vols, st.CommittedSeq, st.JournalStart)
	view := n.coord.view()
	applied := func(id string) uint64 { return view.secondaries[id].applied }
	if st.JournalBytes > n.cfg.SuspendThreshold {
		if !n.suspendLagging(vols, view, upTo, st) {
			return
		}
		st = n.fsm.Stats()
	}
	upTo = min(upTo, secondaryTrimPoint(vols, n.fsm.Secondaries(), applied, st.CommittedSeq, st.JournalStart))
	if upTo < st.JournalStart {
		return
	}
	entry := &wire.Entry{Op: &wire.Entry_TrimJournal{TrimJournal: &wire.TrimJournal{UpToSeq: upTo}}}
	if _, err := n.apply(n.ctx, entry); err != nil {
		n.log.Warn("trim journal", "up_to_seq", upTo, logKeyErr, err)
		return
	}
	n.log.Debug("trimmed journal", "up_to_seq", upTo, "batches_left", n.fsm.Stats().JournalBatches)
}

// suspendLagging suspends the registered, non-suspended secondary that
// holds trimming the lowest, if it holds it below primaryBound (what the
// primaries allow). A secondary that is down holds the validated point, so
// the others cannot apply past it either: among those at the lowest bound,
// the one suspended is the first of those not connected, then of those
// with the lowest prepared point (the one holding the validated point
// back), then by ID. The SuspendSecondary entry records the applied point
// the coordinator knows (0 if it has not heard from the secondary): a lower
// bound of what the secondary applied, so every batch it lacks is marked
// when the journal drops it. It reports false when the proposal failed
// (the pass stops).
func (n *Node) suspendLagging(vols []VolumeInfo, view coordView, primaryBound uint64, st FSMStats) bool {
	secs := n.fsm.Secondaries()
	applied := func(id string) uint64 { return view.secondaries[id].applied }
	_, bound, ok := laggingSecondary(vols, secs, applied, st.CommittedSeq, st.JournalStart)
	if !ok || bound >= primaryBound {
		return true
	}
	var id string
	var best secondaryView
	for _, s := range secs {
		if s.Suspended || applied(s.ID) != bound {
			continue
		}
		sv := view.secondaries[s.ID]
		if id == "" || (best.connected && !sv.connected) || (best.connected == sv.connected && sv.prepared < best.prepared) {
			id, best = s.ID, sv
		}
	}
	n.log.Warn("journal over its suspend threshold: suspending the secondary that holds it back",
		logKeySecondary, id, logKeyApplied, bound, "connected", best.connected, "prepared_seq", best.prepared,
		"journal_bytes", st.JournalBytes, "suspend_threshold", n.cfg.SuspendThreshold, "journal_budget", n.cfg.JournalBudget)
	entry := &wire.Entry{Op: &wire.Entry_SuspendSecondary{SuspendSecondary: &wire.SuspendSecondary{Id: id, AppliedSeq: bound}}}
	res, err := n.apply(n.ctx, entry)
	if err != nil {
		n.log.Warn("suspend secondary", logKeySecondary, id, logKeyErr, err)
		return false
	}
	if sr, _ := res.(*SuspendResult); sr != nil && sr.Err != nil {
		n.log.Warn("suspend secondary", logKeySecondary, id, logKeyErr, sr.Err)
		return false
	}
	return true
}

// join asks the cluster at cfg.Join to add this node, following leader
// redirects, until ctx ends.
func (n *Node) join(ctx context.Context) error {
	addrs := append([]string(nil), n.cfg.Join...)
	backoff := 100 * time.Millisecond
	var lastErr error
	for i := 0; ; i++ {
		addr := addrs[i%len(addrs)]
		err := n.joinOnce(ctx, addr)
		if err == nil {
			n.log.Info("joined cluster", logKeyAddr, addr)
			return nil
		}
		lastErr = err
		var we *wire.Error
		if errors.As(err, &we) && we.Code == wire.ErrorCode_ERROR_CODE_NOT_LEADER && we.LeaderAddr != "" {
			addrs = append(addrs, we.LeaderAddr)
			i = len(addrs) - 2 // next turn tries the leader
			continue
		}
		n.log.Warn("join cluster", logKeyAddr, addr, logKeyErr, err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("join cluster via %v: %w (last error: %v)", n.cfg.Join, ctx.Err(), lastErr)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

func (n *Node) joinOnce(ctx context.Context, addr string) error {
	creds := insecure.NewCredentials()
	if n.cfg.TLS != nil {
		creds = credentials.NewTLS(n.cfg.TLS.ClientConfig(auth.RoleIntermediate))
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, n.cfg.DialOptions...)
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return fmt.Errorf("dial %q: %w", addr, err)
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err = wire.NewIntermediateClient(conn).Join(cctx, &wire.JoinRequest{Id: n.cfg.ID, RaftAddr: string(n.transport.LocalAddr())})
	return wire.FromStatus(err)
}

// apply is the one path for synchronous Raft writes: encode, check the
// size, Apply, wait, and turn an error response into an error.
func (n *Node) apply(ctx context.Context, e *wire.Entry) (any, error) {
	data, err := wire.EncodeEntry(e)
	if err != nil {
		return nil, err
	}
	if len(data) > n.cfg.MaxMessage {
		return nil, wire.Errorf(wire.ErrorCode_ERROR_CODE_TOO_LARGE, "raft entry of %d bytes over the limit of %d", len(data), n.cfg.MaxMessage)
	}
	f := n.raft.Apply(data, n.cfg.ApplyTimeout)
	if err := waitFuture(ctx, f); err != nil {
		if ctx.Err() != nil {
			return nil, err
		}
		return nil, n.raftError(err)
	}
	resp := f.Response()
	if err, ok := resp.(error); ok {
		return nil, err
	}
	return resp, nil
}

// raftError maps an error of the Raft library to the protocol's errors: a
// node that is not (or no longer) leader answers NOT_LEADER with the
// leader's address when it knows it.
func (n *Node) raftError(err error) error {
	switch {
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost),
		errors.Is(err, raft.ErrLeadershipTransferInProgress), errors.Is(err, raft.ErrAbortedByRestore):
		return n.notLeader(err.Error())
	case errors.Is(err, raft.ErrRaftShutdown):
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_NOT_LEADER, "node %s is shutting down", n.cfg.ID)
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return n.notLeader("raft enqueue timeout: " + err.Error())
	default:
		return fmt.Errorf("raft apply: %w", err)
	}
}

// notLeader returns a NOT_LEADER error naming the leader if known.
func (n *Node) notLeader(reason string) *wire.Error {
	_, id := n.raft.LeaderWithID()
	e := wire.Errorf(wire.ErrorCode_ERROR_CODE_NOT_LEADER, "node %s is not the leader: %s", n.cfg.ID, reason)
	if id != "" && string(id) != n.cfg.ID {
		e.LeaderID = string(id)
		e.LeaderAddr = n.fsm.NodeAddr(string(id))
	}
	return e
}

// setFatal is the FSM's OnFatal: the node stops serving writes; the
// process is expected to exit (Fatal reports it).
func (n *Node) setFatal(err error) {
	n.fatalOnce.Do(func() {
		n.fatalErr = err
		n.log.Error("state machine stopped: node must be restarted after the cause is fixed", logKeyErr, err)
		close(n.fatal)
	})
}

// Fatal returns a channel closed when the state machine stopped on a fatal
// error (an undecodable entry, a checksum mismatch); FatalErr says why.
func (n *Node) Fatal() <-chan struct{} { return n.fatal }

// FatalErr returns the fatal error, or nil.
func (n *Node) FatalErr() error {
	select {
	case <-n.fatal:
		return n.fatalErr
	default:
		return nil
	}
}

// ID returns the node's ID.
func (n *Node) ID() string { return n.cfg.ID }

// ClientAddr returns the address clients reach this node at.
func (n *Node) ClientAddr() string {
	if n.clientLis == nil {
		return n.cfg.Listen
	}
	return n.clientLis.Addr().String()
}

// RaftAddr returns the node's Raft transport address.
func (n *Node) RaftAddr() string { return string(n.transport.LocalAddr()) }

// FSM returns the node's state machine (read side).
func (n *Node) FSM() *FSM { return n.fsm }

// Raft returns the node's Raft instance.
func (n *Node) Raft() *raft.Raft { return n.raft }

// IsLeader reports whether the node is the leader now.
func (n *Node) IsLeader() bool { return n.raft != nil && n.raft.State() == raft.Leader }

// Close stops serving, shuts Raft down and closes the stores. It does not
// leave the cluster (use Remove for that): a closed node rejoins with its
// state when opened again.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		if n.metricsReg != nil {
			n.metrics.unregister(n.metricsReg)
		}
		n.cancel(ErrClosed)
		if n.grpc != nil {
			n.grpc.Stop()
		} else if n.clientLis != nil {
			n.clientLis.Close()
		}
		if n.coord != nil {
			n.coord.close()
		}
		if n.prop != nil {
			n.prop.stop()
		}
		var errs []error
		if n.raft != nil {
			// Raft's shutdown waits for its goroutines, which may be in the
			// middle of an RPC; closing the transport (and every connection
			// of its stream layer) ends those at once.
			f := n.raft.Shutdown()
			if n.transport != nil {
				n.transport.Close()
			}
			if err := f.Error(); err != nil {
				errs = append(errs, fmt.Errorf("shut down raft: %w", err))
			}
		}
		if n.prop != nil {
			n.prop.raftStopped()
			n.prop.wait()
		}
		n.wg.Wait()
		if n.transport != nil {
			n.transport.Close()
		}
		if n.store != nil {
			if err := n.store.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close raft log: %w", err))
			}
		}
		if n.fsm != nil {
			if err := n.fsm.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		n.closeErr = errors.Join(errs...)
	})
	return n.closeErr
}

// streamLayer is the Raft transport's connection layer: a listener and a
// dialer (replaceable for fault injection; tlsStreamLayer puts TLS over
// it). It keeps the connections it made or accepted, and Close closes
// them with the listener: hashicorp/raft's shutdown waits for its
// replication goroutines, and one sending a snapshot over a slow or cut
// link may otherwise wait for the transport's timeout, which raft scales
// by the snapshot's size (10 s per 256 KiB: hours for a large volume).
type streamLayer struct {
	net.Listener
	dial func(ctx context.Context, addr string) (net.Conn, error)

	mu     sync.Mutex
	conns  map[*layerConn]struct{}
	closed bool
}

// layerConn is a connection of a streamLayer; closing it forgets it.
type layerConn struct {
	net.Conn
	s    *streamLayer
	once sync.Once
}

// Close implements net.Conn.
func (c *layerConn) Close() error {
	c.once.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
	return c.Conn.Close()
}

// track records c, or closes it when the layer is closed.
func (s *streamLayer) track(c net.Conn) (net.Conn, error) {
	lc := &layerConn{Conn: c, s: s}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		c.Close()
		return nil, net.ErrClosed
	}
	if s.conns == nil {
		s.conns = map[*layerConn]struct{}{}
	}
	s.conns[lc] = struct{}{}
	return lc, nil
}

// Accept implements raft.StreamLayer.
func (s *streamLayer) Accept() (net.Conn, error) {
	c, err := s.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return s.track(c)
}

// Dial implements raft.StreamLayer.
func (s *streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var (
		c   net.Conn
		err error
	)
	if s.dial != nil {
		c, err = s.dial(ctx, string(addr))
	} else {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", string(addr))
	}
	if err != nil {
		return nil, err
	}
	return s.track(c)
}

// Close implements raft.StreamLayer: it closes the listener and every
// connection made or accepted.
func (s *streamLayer) Close() error {
	s.mu.Lock()
	s.closed = true
	conns := s.conns
	s.conns = nil
	s.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
	return s.Listener.Close()
}

// NodeStats counts the work of a node's write path.
type NodeStats struct {
	// LogWrites is the number of Raft log writes (one fsync each).
	LogWrites uint64
	// LogEntries is the number of entries those writes stored.
	LogEntries uint64
	// SubmitEntries is the number of Submit entries this node proposed as
	// leader, and SubmitBatches the batches they carried (group commit).
	SubmitEntries uint64
	SubmitBatches uint64
	// SubmitCommitTime is the total time Submit entries spent from Raft
	// Apply to their result (log write, replication, state machine).
	SubmitCommitTime time.Duration
}

// Stats returns the node's write-path counters.
func (n *Node) Stats() NodeStats {
	return NodeStats{
		LogWrites:        n.logCount.Writes(),
		LogEntries:       n.logCount.Entries(),
		SubmitEntries:    n.prop.entries.Load(),
		SubmitBatches:    n.prop.batches.Load(),
		SubmitCommitTime: time.Duration(n.prop.commitNs.Load()),
	}
}

// CountingLogStore wraps a Raft log store and counts its writes:
// raft-boltdb commits (and fsyncs) once per StoreLog or StoreLogs call, so
// Entries/Writes is the number of Raft entries per fsync.
type CountingLogStore struct {
	raft.LogStore
	writes, entries atomic.Uint64
}

// StoreLog implements raft.LogStore.
func (c *CountingLogStore) StoreLog(l *raft.Log) error {
	c.writes.Add(1)
	c.entries.Add(1)
	return c.LogStore.StoreLog(l)
}

// StoreLogs implements raft.LogStore.
func (c *CountingLogStore) StoreLogs(logs []*raft.Log) error {
	c.writes.Add(1)
	c.entries.Add(uint64(len(logs)))
	return c.LogStore.StoreLogs(logs)
}

// Writes returns the number of log writes so far.
func (c *CountingLogStore) Writes() uint64 { return c.writes.Load() }

// Entries returns the number of entries those writes stored.
func (c *CountingLogStore) Entries() uint64 { return c.entries.Load() }
