package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// unknownVolumeLogPeriod spaces out the log line of a link waiting for its
// volume to be registered.
const unknownVolumeLogPeriod = time.Minute

// errLinkClosed is the cause of a link stopped by Link.Close.
var errLinkClosed = errors.New("link closed")

// CoordinateOptions configure a secondary's Coordinate link.
type CoordinateOptions struct {
	// Hello returns the hello to send on every (re)connection: it must
	// carry the current applied and durable points. An empty Group is set
	// to the Client's. It is called from the link's sender goroutine.
	Hello func() *wire.SecondaryHello
	// OnMessage receives every CoordinateResponse (opened, prepare,
	// validate) in order, from one goroutine at a time (the receiver
	// goroutine of the current stream; never two calls at once, and every
	// call of one stream returns before the next stream opens). It must
	// not block for long: the stream is not read meanwhile.
	OnMessage func(*wire.CoordinateResponse)
	// OnConnected, if set, is called with true after each opened (before
	// OnMessage gets it) and false when a stream that opened ends, from
	// the same goroutine as OnMessage.
	OnConnected func(bool)
}

// Link is a secondary's PREPARE/VALIDATE link with the leader of the
// intermediate cluster, kept open across failures and leader changes. Its
// methods are safe for concurrent use.
//
// Goroutines: the sender goroutine (run), started by Client.Coordinate,
// owns the connection: it opens a Coordinate stream, sends the hello and
// then what Send queued, and after the stream ends reconnects (following
// NOT_LEADER hints, cycling through Config.Addrs with backoff). For each
// stream it starts a receiver goroutine, which calls the callbacks, and
// waits for it before reconnecting. Link.Close and Client.Close stop both.
type Link struct {
	c      *Client
	opts   CoordinateOptions
	log    *slog.Logger
	ctx    context.Context // cancelled by Close, Client.Close, the caller's context, or a permanent refusal
	cancel context.CancelCauseFunc
	stop   func() bool // releases the caller's context
	done   chan struct{}
	err    error // why the link stopped; set before done is closed
	wake   chan struct{}

	mu        sync.Mutex
	accepting bool   // a stream is being opened or is open: prepared and applied are queued
	prepared  uint64 // pending PREPARED, 0 if none
	applied   uint64 // pending APPLIED, 0 if none
	appliedOK bool   // applied is pending (APPLIED(0) is a valid answer)
	report    *wire.SecondaryReport
	reported  bool // report went out on the current stream
}

// Coordinate opens a secondary's PREPARE/VALIDATE link to the group's
// leader and keeps it open, reconnecting (following leader hints, backoff,
// any node) until Close or a permanent refusal. It returns at once, before
// the first stream opens (OnConnected says when it does); ctx bounds the
// link's life: when it ends the link stops with ctx's error. NOT_LEADER,
// FAILED, UNKNOWN_VOLUME (the volume's primary has not registered it yet)
// and transport failures are retried; any other refusal stops the link:
// WRONG_GROUP, VOLUME_MISMATCH (the ID is registered for another volume),
// BAD_REQUEST, TOO_LARGE, and STALE_SESSION (another process opened a
// stream with the same secondary ID: two secondaries must not share one).
func (c *Client) Coordinate(ctx context.Context, opts CoordinateOptions) (*Link, error) {
	if opts.Hello == nil || opts.OnMessage == nil {
		return nil, errors.New("coordinate: Hello and OnMessage are required")
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	lctx, cancel := context.WithCancelCause(c.ctx)
	l := &Link{
		c:      c,
		opts:   opts,
		log:    c.log,
		ctx:    lctx,
		cancel: cancel,
		done:   make(chan struct{}),
		wake:   make(chan struct{}, 1),
	}
	l.stop = context.AfterFunc(ctx, func() { cancel(ctx.Err()) })
	c.wg.Add(1)
	c.mu.Unlock()
	go l.run()
	return l, nil
}

// Send queues a message for the current stream without blocking;
// prepared and applied are best effort (dropped while disconnected: the
// next hello carries the state; of several pending, the highest goes);
// the latest report is kept and resent after a reconnection. A hello or an
// empty message is ignored.
func (l *Link) Send(m *wire.CoordinateRequest) {
	l.mu.Lock()
	switch msg := m.GetMsg().(type) {
	case *wire.CoordinateRequest_Prepared:
		if l.accepting {
			l.prepared = max(l.prepared, msg.Prepared.GetSeq())
		}
	case *wire.CoordinateRequest_Applied:
		if l.accepting {
			l.applied = max(l.applied, msg.Applied.GetSeq())
			l.appliedOK = true
		}
	case *wire.CoordinateRequest_Report:
		l.report, l.reported = proto.CloneOf(msg.Report), false
	default:
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	l.kick()
}

// Done is closed when the link stops for good; Err says why.
func (l *Link) Done() <-chan struct{} { return l.done }

// Err returns why the link stopped: nil after Close (or while it runs),
// ErrClosed after Client.Close, the caller's context error, or the
// permanent refusal (a *wire.Error matching its sentinel, e.g.
// wire.ErrVolumeMismatch).
func (l *Link) Err() error {
	select {
	case <-l.done:
		return l.err
	default:
		return nil
	}
}

// Close stops the link and waits for its goroutines. It is idempotent.
func (l *Link) Close() error {
	l.cancel(errLinkClosed)
	<-l.done
	return nil
}

func (l *Link) kick() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// run is the sender goroutine.
func (l *Link) run() {
	defer l.c.wg.Done()
	defer close(l.done)
	defer l.stop()
	r := l.c.newRetrier(true)
	var logged time.Time // when waiting for the volume was last logged
	for {
		opened, err := l.serve(r.addr)
		if opened {
			r.opened()
			r.progress()
		}
		if l.ctx.Err() != nil {
			l.finish(context.Cause(l.ctx))
			return
		}
		if !linkRetryable(err) {
			err = fmt.Errorf("coordinate at %s: %w", r.addr, err)
			l.log.Error("coordinate link stopped", "addr", r.addr, "err", err)
			l.finish(err)
			return
		}
		switch {
		case errors.Is(err, wire.ErrUnknownVolume):
			if time.Since(logged) >= unknownVolumeLogPeriod {
				logged = time.Now()
				l.log.Info("waiting for the volume's primary to register it", "addr", r.addr, "err", err)
			}
		case errors.Is(err, wire.ErrNotLeader):
			l.log.Info("coordinate stream: not the leader; reconnecting", "addr", r.addr, "err", err)
		default:
			l.log.Warn("coordinate stream ended; reconnecting", "addr", r.addr, "err", err)
		}
		if err := r.failed(l.ctx, err); err != nil {
			l.finish(context.Cause(l.ctx))
			return
		}
	}
}

// finish records why the link stopped (nil after Close) and cancels it.
func (l *Link) finish(cause error) {
	l.cancel(cause)
	if errors.Is(cause, errLinkClosed) {
		cause = nil
	}
	l.err = cause
}

// linkRetryable reports whether a link should reconnect after err.
func linkRetryable(err error) bool {
	var we *wire.Error
	if errors.As(err, &we) {
		switch we.Code {
		case wire.ErrorCode_ERROR_CODE_NOT_LEADER, wire.ErrorCode_ERROR_CODE_FAILED, wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME:
			return true
		}
		return false
	}
	return retryable(err)
}

// serve runs one stream at addr: the sender loop here, a receiver
// goroutine beside it. It returns whether the stream opened and why it
// ended.
func (l *Link) serve(addr string) (opened bool, err error) {
	cl, err := l.c.rpc(addr)
	if err != nil {
		return false, err
	}
	sctx, cancel := context.WithCancelCause(l.ctx)
	defer cancel(errAborted)
	stream, err := cl.Coordinate(sctx)
	if err != nil {
		if sctx.Err() != nil {
			return false, context.Cause(sctx)
		}
		return false, remoteErr(err)
	}
	l.mu.Lock()
	l.accepting, l.reported = true, false
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.accepting, l.prepared, l.applied, l.appliedOK = false, 0, 0, false
		l.mu.Unlock()
	}()
	hello := l.opts.Hello()
	if hello == nil {
		return false, fmt.Errorf("%w: Hello returned nil", errProtocol)
	}
	hello = proto.CloneOf(hello)
	if hello.Group == "" {
		hello.Group = l.c.cfg.Group
	}
	openedCh := make(chan struct{})
	recvDone := make(chan struct{})
	l.c.wg.Add(1)
	go func() {
		defer l.c.wg.Done()
		defer close(recvDone)
		l.receive(sctx, cancel, stream, openedCh)
	}()
	timer := time.AfterFunc(handshakeTimeout, func() { cancel(errHandshakeTimeout) })
	if err := stream.Send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Hello{Hello: hello}}); err != nil && !errors.Is(err, io.EOF) {
		cancel(remoteErr(err))
	}
	select {
	case <-openedCh:
		timer.Stop()
		err := l.send(sctx, stream)
		if err != nil {
			cancel(err)
		}
	case <-sctx.Done():
		timer.Stop()
	}
	<-recvDone
	select {
	case <-openedCh:
		opened = true
	default:
	}
	return opened, context.Cause(sctx)
}

// send drains the queue onto the stream until the stream ends.
func (l *Link) send(sctx context.Context, stream wire.Intermediate_CoordinateClient) error {
	for {
		if sctx.Err() != nil {
			return nil
		}
		m := l.take()
		if m == nil {
			select {
			case <-l.wake:
			case <-sctx.Done():
				return nil
			}
			continue
		}
		if err := stream.Send(m); err != nil {
			if errors.Is(err, io.EOF) {
				return nil // the receiver learns why
			}
			return remoteErr(err)
		}
	}
}

// take returns the next message to send, or nil.
func (l *Link) take() *wire.CoordinateRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.report != nil && !l.reported:
		l.reported = true
		return &wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Report{Report: l.report}}
	case l.prepared != 0:
		m := &wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Prepared{Prepared: &wire.PreparedSeq{Seq: l.prepared}}}
		l.prepared = 0
		return m
	case l.appliedOK:
		m := &wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Applied{Applied: &wire.AppliedSeq{Seq: l.applied}}}
		l.applied, l.appliedOK = 0, false
		return m
	}
	return nil
}

// receive is the receiver goroutine of one stream: it waits for opened,
// then hands every message to OnMessage, until the stream fails; then it
// cancels the stream with the reason.
func (l *Link) receive(sctx context.Context, cancel context.CancelCauseFunc, stream wire.Intermediate_CoordinateClient, openedCh chan struct{}) {
	resp, err := stream.Recv()
	if err != nil {
		cancel(remoteErr(err))
		return
	}
	if resp.GetOpened() == nil {
		cancel(fmt.Errorf("%w: coordinate stream answered hello with %T", errProtocol, resp.GetMsg()))
		return
	}
	if sctx.Err() != nil {
		return
	}
	close(openedCh)
	if l.opts.OnConnected != nil {
		l.opts.OnConnected(true)
		defer l.opts.OnConnected(false)
	}
	for {
		if resp.GetMsg() == nil {
			cancel(fmt.Errorf("%w: coordinate message without content", errProtocol))
			return
		}
		l.opts.OnMessage(resp)
		resp, err = stream.Recv()
		if err != nil {
			cancel(remoteErr(err))
			return
		}
		if resp.GetOpened() != nil {
			cancel(fmt.Errorf("%w: a second opened on the coordinate stream", errProtocol))
			return
		}
	}
}
