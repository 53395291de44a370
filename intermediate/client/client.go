package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// Defaults of Config.
const (
	// DefaultGroup is the consistency group used when Config.Group is empty.
	DefaultGroup = "default"
	// DefaultMaxInFlight is the default bound on the bytes of batches sent
	// and not yet acknowledged, per volume.
	DefaultMaxInFlight = 64 << 20
	// DefaultBackoff is the default first retry delay.
	DefaultBackoff = 50 * time.Millisecond
	// MaxBackoff is where the doubling retry delay stops (unless
	// Config.Backoff is larger).
	MaxBackoff = 2 * time.Second
)

// messageSlack is added to MaxMessage for the gRPC per-call size limits, so
// that framing the client does not budget for never trips them.
const messageSlack = 1 << 20

// minMaxMessage is the smallest MaxMessage accepted: one batch of one block
// must fit.
const minMaxMessage = 2 * wire.BlockSize

// handshakeTimeout bounds the open exchange of a Submit stream, so that a
// node that accepts the stream but never answers does not hold a Volume.
const handshakeTimeout = 10 * time.Second

// Sentinel errors of the package.
var (
	// ErrClosed is returned by every call on a closed Client or Volume, and
	// by the waits of submits still pending when it was closed (whether
	// those batches were committed is unknown).
	ErrClosed = errors.New("client closed")
	// ErrBroken is returned by the submits of a Volume that met a permanent
	// refusal (stale epoch, journal full, volume mismatch, wrong group, bad
	// request, bad checksum, too large, unknown volume, gap) or an
	// inconsistency it cannot repair (acknowledged batches missing at the
	// intermediate, acks out of order). The error also wraps the cause, so
	// errors.Is(err, wire.ErrStaleEpoch) and the like work. Whether a batch
	// failed this way was committed is unknown. A broken Volume stays
	// broken; the caller must close it and resynchronise.
	ErrBroken = errors.New("volume broken")
)

var (
	// errProtocol marks an answer that breaks the protocol; it is permanent.
	errProtocol = errors.New("protocol violation")
	// errBadAddress marks an address grpc.NewClient refuses; it is permanent.
	errBadAddress = errors.New("bad address")
	// errStreamEnded is a stream the server ended without a status error.
	errStreamEnded = errors.New("stream ended by server")
	// errHandshakeTimeout is a Submit open left unanswered.
	errHandshakeTimeout = errors.New("submit open timed out")
	// errAborted cancels a stream whose open raced with a cancellation.
	errAborted = errors.New("stream aborted")
	// errCallerStop marks an error of a caller's callback, which ends a
	// call without a retry.
	errCallerStop = errors.New("stopped by the caller")
)

// Config configures a Client. Zero fields take the defaults named on them.
type Config struct {
	// Addrs are client addresses of intermediate nodes, any members; at
	// least one.
	Addrs []string
	// Group is the consistency group; default DefaultGroup.
	Group string
	// MaxMessage is the largest gRPC message the client sends; it must not
	// exceed the intermediate's limit. Default wire.DefaultMaxMessage.
	MaxMessage int
	// MaxInFlight bounds the bytes of batches sent and not yet acknowledged,
	// per volume; default DefaultMaxInFlight. One batch is always allowed.
	MaxInFlight int
	// TLS, when set, is the TLS configuration of every connection to the
	// intermediate (auth.Material.ClientConfig(auth.RoleIntermediate));
	// nil: plain TCP.
	TLS *tls.Config
	// DialOptions are appended to the client's own (transport credentials
	// and message size limits), so a transport-credentials option here
	// replaces the client's.
	DialOptions []grpc.DialOption
	// Backoff is the first retry delay, doubling up to MaxBackoff; default
	// DefaultBackoff.
	Backoff time.Duration
	// Logger receives the client's logs; default slog.Default().
	Logger *slog.Logger
}

// withDefaults checks cfg and fills in its defaults.
func (cfg Config) withDefaults() (Config, error) {
	if len(cfg.Addrs) == 0 {
		return cfg, errors.New("client config: Addrs: at least one address is required")
	}
	for i, a := range cfg.Addrs {
		if a == "" {
			return cfg, fmt.Errorf("client config: Addrs[%d]: empty address", i)
		}
	}
	cfg.Addrs = append([]string(nil), cfg.Addrs...)
	if cfg.Group == "" {
		cfg.Group = DefaultGroup
	}
	switch {
	case cfg.MaxMessage == 0:
		cfg.MaxMessage = wire.DefaultMaxMessage
	case cfg.MaxMessage < minMaxMessage:
		return cfg, fmt.Errorf("client config: MaxMessage: %d bytes, want at least %d", cfg.MaxMessage, minMaxMessage)
	}
	switch {
	case cfg.MaxInFlight == 0:
		cfg.MaxInFlight = DefaultMaxInFlight
	case cfg.MaxInFlight < 0:
		return cfg, fmt.Errorf("client config: MaxInFlight: negative (%d)", cfg.MaxInFlight)
	}
	switch {
	case cfg.Backoff == 0:
		cfg.Backoff = DefaultBackoff
	case cfg.Backoff < 0:
		return cfg, fmt.Errorf("client config: Backoff: negative (%s)", cfg.Backoff)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return cfg, nil
}

// Client talks to the nodes of one intermediate cluster. Its methods are safe
// for concurrent use.
type Client struct {
	cfg    Config
	log    *slog.Logger
	ctx    context.Context // cancelled by Close
	cancel context.CancelCauseFunc
	wg     sync.WaitGroup // every goroutine the Client started, and running Fetch calls

	mu      sync.Mutex
	closed  bool
	conns   map[string]*grpc.ClientConn // by address
	leader  string                      // address of the last node known to lead, or ""
	volumes map[string]*Volume          // open volumes by name
}

// New checks cfg and returns a Client. It does no I/O: connections are made
// on first use.
func New(cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	return &Client{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "client", "group", cfg.Group),
		ctx:     ctx,
		cancel:  cancel,
		conns:   make(map[string]*grpc.ClientConn),
		volumes: make(map[string]*Volume),
	}, nil
}

// Close cancels every stream of the Client, waits for the goroutines it
// started and for running Fetch calls to return, fails every pending submit
// with ErrClosed and closes the connections. Later calls return ErrClosed.
// Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	vols := make([]*Volume, 0, len(c.volumes))
	for _, v := range c.volumes {
		vols = append(vols, v)
	}
	c.mu.Unlock()

	c.cancel(ErrClosed)
	c.wg.Wait()
	for _, v := range vols {
		v.finish()
	}

	c.mu.Lock()
	conns := c.conns
	c.conns = nil
	c.volumes = nil
	c.mu.Unlock()
	var errs []error
	for addr, cc := range conns {
		if err := cc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close connection to %s: %w", addr, err))
		}
	}
	return errors.Join(errs...)
}

// rpc returns a client stub on the cached connection to addr, making the
// connection on first use.
func (c *Client) rpc(addr string) (wire.IntermediateClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	cc := c.conns[addr]
	if cc == nil {
		limit := c.cfg.MaxMessage + messageSlack
		creds := insecure.NewCredentials()
		if c.cfg.TLS != nil {
			creds = credentials.NewTLS(c.cfg.TLS)
		}
		opts := append([]grpc.DialOption{
			grpc.WithTransportCredentials(creds),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(limit), grpc.MaxCallSendMsgSize(limit)),
		}, c.cfg.DialOptions...)
		var err error
		cc, err = grpc.NewClient(addr, opts...)
		if err != nil {
			return nil, fmt.Errorf("%w %q: %w", errBadAddress, addr, err)
		}
		c.conns[addr] = cc
	}
	return wire.NewIntermediateClient(cc), nil
}

// leaderHint returns the address of the node last known to lead, or "".
func (c *Client) leaderHint() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.leader
}

// setLeader records addr as the leader's address.
func (c *Client) setLeader(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.leader = addr
}

// forgetLeader drops the leader hint if it is addr.
func (c *Client) forgetLeader(addr string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.leader == addr {
		c.leader = ""
	}
}

// callCtx derives from parent a context that Close also cancels.
func (c *Client) callCtx(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(parent)
	stop := context.AfterFunc(c.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// doneErr is the error of a call whose context (made by callCtx) is done:
// ErrClosed when the Client was closed, else the caller's context error.
func (c *Client) doneErr(ctx context.Context) error {
	if c.ctx.Err() != nil {
		return ErrClosed
	}
	return ctx.Err()
}

// remoteErr turns an error of a gRPC call into the error the package
// reports: an *wire.Error when the status carries an ErrorDetail, io.EOF as
// errStreamEnded, and a size refusal by gRPC itself as wire.ErrTooLarge.
func remoteErr(err error) error {
	if errors.Is(err, io.EOF) {
		return errStreamEnded
	}
	err = wire.FromStatus(err)
	var we *wire.Error
	if errors.As(err, &we) {
		return err
	}
	if st, ok := status.FromError(err); ok && st.Code() == codes.ResourceExhausted {
		return fmt.Errorf("%w: %w", wire.ErrTooLarge, err)
	}
	return err
}

// retryable reports whether err is worth another attempt, at the same or
// another node: a node that is not the leader or has failed, a transport
// failure, a stream the server ended. Refusals with any other code, protocol
// violations and closed clients are permanent.
func retryable(err error) bool {
	if err == nil {
		return false
	}
	var we *wire.Error
	if errors.As(err, &we) {
		return we.Code == wire.ErrorCode_ERROR_CODE_NOT_LEADER || we.Code == wire.ErrorCode_ERROR_CODE_FAILED
	}
	for _, permanent := range []error{errProtocol, errBadAddress, ErrClosed, ErrBroken, wire.ErrTooLarge, errCallerStop} {
		if errors.Is(err, permanent) {
			return false
		}
	}
	st, ok := status.FromError(err)
	if !ok {
		return true
	}
	switch st.Code() {
	case codes.Unavailable, codes.Aborted, codes.DeadlineExceeded, codes.Canceled, codes.Internal, codes.Unknown:
		return true
	}
	return false
}

// retrier chooses the node of each attempt of one operation and spaces the
// attempts. It is used by one goroutine at a time.
type retrier struct {
	c          *Client
	leader     bool   // the operation needs the leader: use and maintain the leader hint
	addr       string // the node of the current attempt
	next       int    // index in Addrs of the next round-robin pick
	failures   int    // attempts failed since the last progress
	redirected bool   // the current attempt follows a NOT_LEADER redirect
}

// newRetrier returns a retrier whose first attempt goes to the leader hint
// (when leader is set and a leader is known) or to the first address.
func (c *Client) newRetrier(leader bool) *retrier {
	r := &retrier{c: c, leader: leader}
	r.addr = r.pick("")
	return r
}

// pick returns the node of the next attempt, avoiding exclude when there is
// a choice.
func (r *retrier) pick(exclude string) string {
	if r.leader {
		if h := r.c.leaderHint(); h != "" && h != exclude {
			return h
		}
	}
	addrs := r.c.cfg.Addrs
	a := addrs[r.next%len(addrs)]
	r.next++
	if a == exclude && len(addrs) > 1 {
		a = addrs[r.next%len(addrs)]
		r.next++
	}
	return a
}

// failed records that the attempt at r.addr failed with err and moves to
// the next node: at once to the leader a NOT_LEADER answer names (unless the
// failed attempt was itself such a redirect), else after the backoff delay.
// It returns an error only when ctx ends during the delay.
func (r *retrier) failed(ctx context.Context, err error) error {
	var we *wire.Error
	if errors.As(err, &we) && we.Code == wire.ErrorCode_ERROR_CODE_NOT_LEADER &&
		we.LeaderAddr != "" && we.LeaderAddr != r.addr {
		if r.leader {
			r.c.setLeader(we.LeaderAddr)
		}
		if !r.redirected {
			r.redirected = true
			r.addr = we.LeaderAddr
			return nil
		}
	} else if r.leader {
		r.c.forgetLeader(r.addr)
	}
	r.redirected = false
	d := r.delay()
	r.failures++
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return ctx.Err()
	}
	r.addr = r.pick(r.addr)
	return nil
}

// delay is the wait before the next attempt: Backoff doubled per failure
// since the last progress, up to MaxBackoff (or Backoff, if larger).
func (r *retrier) delay() time.Duration {
	d, ceiling := r.c.cfg.Backoff, max(MaxBackoff, r.c.cfg.Backoff)
	for i := 0; i < r.failures && d < ceiling; i++ {
		d *= 2
	}
	return min(d, ceiling)
}

// opened records that a stream opened at r.addr.
func (r *retrier) opened() {
	r.redirected = false
	if r.leader {
		r.c.setLeader(r.addr)
	}
}

// progress records that the operation moved forward: the backoff restarts.
func (r *retrier) progress() {
	r.failures = 0
	r.redirected = false
}

// ctxErr is the error of an operation whose context ended, keeping the last
// failure seen as the reason it had not completed.
func ctxErr(what string, err, last error) error {
	if last == nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	return fmt.Errorf("%s: %w (last error: %w)", what, err, last)
}

// lastErr returns the failure to report if the context ends: err, unless it
// is only the context ending as seen by gRPC (a Canceled or DeadlineExceeded
// status) and an earlier failure says more.
func lastErr(last, err error) error {
	if last != nil {
		if st, ok := status.FromError(err); ok && (st.Code() == codes.DeadlineExceeded || st.Code() == codes.Canceled) {
			return last
		}
	}
	return err
}

// NodeStatus is one node's answer to Status, or the error asking it.
type NodeStatus struct {
	Addr   string
	Status *wire.StatusResponse
	Err    error
}

// status asks the node at addr for its status.
func (c *Client) status(ctx context.Context, addr string) (*wire.StatusResponse, error) {
	cl, err := c.rpc(addr)
	if err != nil {
		return nil, fmt.Errorf("status of %s: %w", addr, err)
	}
	st, err := cl.Status(ctx, &wire.StatusRequest{})
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("status of %s: %w", addr, c.doneErr(ctx))
		}
		return nil, fmt.Errorf("status of %s: %w", addr, remoteErr(err))
	}
	return st, nil
}

// Status asks the nodes in turn (the last known leader first) until one
// answers. When the answer names a leader with an address, Status returns the
// leader's own answer, or the first answer if the leader does not answer.
func (c *Client) Status(ctx context.Context) (*wire.StatusResponse, error) {
	ctx, done := c.callCtx(ctx)
	defer done()
	addrs := c.cfg.Addrs
	if h := c.leaderHint(); h != "" {
		addrs = append([]string{h}, addrs...)
	}
	var errs []error
	tried := make(map[string]bool)
	for _, addr := range addrs {
		if tried[addr] {
			continue
		}
		tried[addr] = true
		st, err := c.status(ctx, addr)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("status: %w", c.doneErr(ctx))
			}
			errs = append(errs, err)
			continue
		}
		la := st.GetLeaderAddr()
		if st.GetRaftState() == "Leader" || la == "" || la == addr {
			return st, nil
		}
		lst, err := c.status(ctx, la)
		if err != nil {
			if ctx.Err() != nil {
				return nil, fmt.Errorf("status: %w", c.doneErr(ctx))
			}
			c.log.Warn("leader does not answer status; returning a follower's view",
				"addr", addr, "leader_addr", la, "err", err)
			return st, nil
		}
		return lst, nil
	}
	return nil, fmt.Errorf("status: no node answered: %w", errors.Join(errs...))
}

// StatusAll asks every address of Config.Addrs at once and returns each
// answer or error, in the order of Addrs. Its error is non-nil only when ctx
// ended or the Client is closed.
func (c *Client) StatusAll(ctx context.Context) ([]NodeStatus, error) {
	ctx, done := c.callCtx(ctx)
	defer done()
	out := make([]NodeStatus, len(c.cfg.Addrs))
	var wg sync.WaitGroup
	for i, addr := range c.cfg.Addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := c.status(ctx, addr)
			out[i] = NodeStatus{Addr: addr, Status: st, Err: err}
		}()
	}
	wg.Wait()
	if ctx.Err() != nil {
		return out, fmt.Errorf("status: %w", c.doneErr(ctx))
	}
	return out, nil
}

// Join asks the leader to add node id, reachable for Raft at raftAddr, as a
// voter. It follows NOT_LEADER redirects and retries transient failures
// until ctx ends.
func (c *Client) Join(ctx context.Context, id, raftAddr string) error {
	return c.leaderCall(ctx, fmt.Sprintf("join %s", id), func(ctx context.Context, cl wire.IntermediateClient) error {
		_, err := cl.Join(ctx, &wire.JoinRequest{Id: id, RaftAddr: raftAddr})
		return err
	})
}

// Remove asks the leader to take node id out of the cluster. It follows
// NOT_LEADER redirects and retries transient failures until ctx ends.
func (c *Client) Remove(ctx context.Context, id string) error {
	return c.leaderCall(ctx, fmt.Sprintf("remove %s", id), func(ctx context.Context, cl wire.IntermediateClient) error {
		_, err := cl.Remove(ctx, &wire.RemoveRequest{Id: id})
		return err
	})
}

// leaderCall runs a unary call at the leader, following redirects and
// retrying transient failures until ctx ends.
func (c *Client) leaderCall(ctx context.Context, what string, call func(context.Context, wire.IntermediateClient) error) error {
	ctx, done := c.callCtx(ctx)
	defer done()
	r := c.newRetrier(true)
	var last error
	for {
		cl, err := c.rpc(r.addr)
		if err == nil {
			err = call(ctx, cl)
			if err == nil {
				r.opened()
				return nil
			}
			err = remoteErr(err)
		}
		if ctx.Err() != nil {
			return ctxErr(what, c.doneErr(ctx), last)
		}
		if !retryable(err) {
			return fmt.Errorf("%s at %s: %w", what, r.addr, err)
		}
		last = lastErr(last, fmt.Errorf("%s: %w", r.addr, err))
		c.log.Debug("leader call failed; retrying", "op", what, "addr", r.addr, "err", err)
		if err := r.failed(ctx, err); err != nil {
			return ctxErr(what, c.doneErr(ctx), last)
		}
	}
}
