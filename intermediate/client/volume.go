package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// requestOverhead bounds the bytes a SubmitRequest adds around its
// SubmitBatches payload: a one-byte field tag and a length of at most ten.
const requestOverhead = 1 + 10

// VolumeOptions names the volume a Volume writes.
type VolumeOptions struct {
	// Name is the volume's ID in the group.
	Name string
	// Epoch is the primary's fencing token; 0 means 1, the epoch a volume
	// is registered with.
	Epoch uint64
	// BlockCount is the volume's size in blocks; the intermediate refuses a
	// count that differs from the registered one.
	BlockCount uint64
}

// Ack says a batch is committed at the intermediate.
type Ack struct {
	// VolumeSeq is the batch's volume seq.
	VolumeSeq uint64
	// Seq is the global sequence number the batch was committed at.
	Seq uint64
	// Duplicate is set when the batch had been committed before the attempt
	// that was acknowledged (a resend after a reconnect); Seq is then the
	// original seq.
	Duplicate bool
}

// Pending is a submitted batch whose ack may not have arrived yet. Its
// methods are safe for concurrent use.
type Pending struct {
	volumeSeq uint64
	batch     *wire.Batch
	size      int // bytes the batch takes in a SubmitBatches message
	done      chan struct{}
	ack       Ack
	err       error
}

// failed returns a Pending that completed with err before getting a volume
// seq.
func failed(err error) *Pending {
	p := &Pending{done: make(chan struct{}), err: err}
	close(p.done)
	return p
}

// complete sets the outcome and wakes the waiters. Each Pending is completed
// once, by whoever removed it from its Volume's queue.
func (p *Pending) complete(ack Ack, err error) {
	p.ack, p.err = ack, err
	close(p.done)
}

// VolumeSeq returns the volume seq given to the batch, or 0 if it was
// refused before getting one.
func (p *Pending) VolumeSeq() uint64 { return p.volumeSeq }

// Done returns a channel closed when the outcome is known.
func (p *Pending) Done() <-chan struct{} { return p.done }

// Wait waits for the batch's ack or failure, or for ctx. When ctx ends first
// it returns ctx.Err(); that abandons the wait, not the batch: the batch
// stays in the pipeline, because the batches after it depend on it.
func (p *Pending) Wait(ctx context.Context) (Ack, error) {
	select {
	case <-p.done:
		return p.ack, p.err
	default:
	}
	select {
	case <-p.done:
		return p.ack, p.err
	case <-ctx.Done():
		return Ack{}, ctx.Err()
	}
}

// Volume is an open Submit pipeline for one volume. Its methods are safe for
// concurrent use; a Client allows one open Volume per name.
type Volume struct {
	c          *Client
	name       string
	epoch      uint64
	blockCount uint64
	log        *slog.Logger
	ctx        context.Context // cancelled by Close (and Client.Close)
	cancel     context.CancelCauseFunc
	done       chan struct{} // closed when the sender goroutine has exited
	wake       chan struct{} // kicks the sender: a batch was queued or in-flight bytes freed

	mu                         sync.Mutex
	next                       uint64     // volume seq of the next Submit
	queue                      []*Pending // unacknowledged batches in volume-seq order
	sent                       int        // queue[:sent] went out on the current stream
	inflight                   int        // bytes of queue[:sent]
	lastSeq                    uint64     // seq of the last ack
	broken                     error      // wraps ErrBroken and the cause
	closed                     bool
	openedVolumeSeq, openedSeq uint64              // the volume's position when OpenVolume opened it
	openedCopyOpen             bool                // the volume's copy window was open then (CopyOpen)
	report                     *wire.PrimaryReport // the latest Report, sent again on every stream
	reported                   bool                // report went out on the current stream
}

// session is one Submit stream of a Volume.
type session struct {
	addr   string
	stream grpc.BidiStreamingClient[wire.SubmitRequest, wire.SubmitResponse]
	opened *wire.SubmitOpened
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// OpenVolume finds the leader, opens a Submit stream for the volume (which
// the intermediate registers on first contact) and learns the volume's last
// committed volume seq; the next Submit gets the one after it. It retries
// transient failures until ctx ends and returns permanent refusals (stale
// epoch, size mismatch, wrong group) at once. It starts the Volume's sender
// goroutine, which Volume.Close and Client.Close stop.
func (c *Client) OpenVolume(ctx context.Context, opts VolumeOptions) (*Volume, error) {
	if opts.Name == "" {
		return nil, fmt.Errorf("open volume: %w: empty name", wire.ErrBadRequest)
	}
	if opts.BlockCount == 0 {
		return nil, fmt.Errorf("open volume %q: %w: zero block count", opts.Name, wire.ErrBadRequest)
	}
	if opts.Epoch == 0 {
		opts.Epoch = 1
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, ErrClosed
	}
	if _, ok := c.volumes[opts.Name]; ok {
		c.mu.Unlock()
		return nil, fmt.Errorf("open volume %q: already open in this client", opts.Name)
	}
	vctx, vcancel := context.WithCancelCause(c.ctx)
	v := &Volume{
		c:          c,
		name:       opts.Name,
		epoch:      opts.Epoch,
		blockCount: opts.BlockCount,
		log:        c.log.With("volume", opts.Name, "epoch", opts.Epoch),
		ctx:        vctx,
		cancel:     vcancel,
		done:       make(chan struct{}),
		wake:       make(chan struct{}, 1),
	}
	c.volumes[opts.Name] = v
	c.mu.Unlock()

	r := c.newRetrier(true)
	s, err := v.connect(ctx, r)
	if err != nil {
		vcancel(err)
		c.forget(v)
		return nil, fmt.Errorf("open volume %q: %w", opts.Name, err)
	}
	v.next = s.opened.GetLastVolumeSeq() + 1
	v.openedVolumeSeq, v.openedSeq = s.opened.GetLastVolumeSeq(), s.opened.GetLastSeq()
	v.openedCopyOpen = s.opened.GetCopyOpen()

	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		s.cancel(ErrClosed)
		vcancel(ErrClosed)
		return nil, ErrClosed
	}
	c.wg.Add(1)
	c.mu.Unlock()
	go v.run(s, r)
	v.log.Info("volume open", "addr", s.addr, "last_volume_seq", s.opened.GetLastVolumeSeq(),
		"last_seq", s.opened.GetLastSeq())
	return v, nil
}

// forget drops v from the open volumes.
func (c *Client) forget(v *Volume) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.volumes[v.name] == v {
		delete(c.volumes, v.name)
	}
}

// Name returns the volume's name.
func (v *Volume) Name() string { return v.name }

// BlockCount returns the volume's size in blocks.
func (v *Volume) BlockCount() uint64 { return v.blockCount }

// OpenedAt returns the volume seq and the seq of the volume's last committed
// batch when OpenVolume opened it: the intermediate held nothing of the
// volume after them then.
func (v *Volume) OpenedAt() (volumeSeq, seq uint64) {
	return v.openedVolumeSeq, v.openedSeq
}

// CopyOpen reports whether, when OpenVolume opened it, the volume's last
// committed batch carried the copying flag: the intermediate counts the
// volume's copy window open until a batch without it.
func (v *Volume) CopyOpen() bool { return v.openedCopyOpen }

// NextVolumeSeq returns the volume seq the next Submit will get.
func (v *Volume) NextVolumeSeq() uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.next
}

// Submit submits one batch of block writes and waits for its ack: see
// SubmitAsync. When ctx ends first it returns ctx.Err(), and the batch stays
// in the pipeline (cancelling abandons the wait, not the batch, because the
// batches after it depend on it). A ctx already done submits nothing.
func (v *Volume) Submit(ctx context.Context, blocks []*wire.Block) (Ack, error) {
	if err := ctx.Err(); err != nil {
		return Ack{}, err
	}
	return v.SubmitAsync(blocks).Wait(ctx)
}

// SubmitAsync gives a batch of block writes the next volume seq and queues
// it for the sender goroutine; it returns at once. Batches go out in the
// order of the calls. The blocks must not be modified until the Pending
// completes. A malformed batch (no block, a block not wire.BlockSize bytes,
// an index outside the volume) fails with wire.ErrBadRequest and a batch too
// large for one message with wire.ErrTooLarge, both without taking a volume
// seq; a broken Volume fails with ErrBroken, a closed one with ErrClosed.
func (v *Volume) SubmitAsync(blocks []*wire.Block) *Pending {
	return v.submitAsync(blocks, false)
}

// SubmitCopyingAsync is SubmitAsync of a batch with the copying flag set
// (wire.Batch): a primary sends its batches so while its volume is in COPY
// or RESYNC, when the intermediate's image of the volume is not a
// consistent filesystem.
func (v *Volume) SubmitCopyingAsync(blocks []*wire.Block) *Pending {
	return v.submitAsync(blocks, true)
}

func (v *Volume) submitAsync(blocks []*wire.Block, copying bool) *Pending {
	if err := v.checkBlocks(blocks); err != nil {
		return failed(fmt.Errorf("submit to volume %q: %w", v.name, err))
	}
	b := &wire.Batch{Volume: v.name, Epoch: v.epoch, VolumeSeq: math.MaxUint64, Blocks: blocks, Crc: math.MaxUint32, Copying: copying}
	size := batchSize(b)
	if size+requestOverhead > v.c.cfg.MaxMessage {
		return failed(fmt.Errorf("submit to volume %q: %w: batch of %d blocks takes %d bytes, limit %d",
			v.name, wire.ErrTooLarge, len(blocks), size+requestOverhead, v.c.cfg.MaxMessage))
	}
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return failed(ErrClosed)
	}
	if v.broken != nil {
		err := v.broken
		v.mu.Unlock()
		return failed(err)
	}
	b.VolumeSeq = v.next
	v.next++
	wire.Seal(b)
	p := &Pending{volumeSeq: b.VolumeSeq, batch: b, size: size, done: make(chan struct{})}
	v.queue = append(v.queue, p)
	v.mu.Unlock()
	v.kick()
	return p
}

// Report tells the intermediate the state of the primary's mirror (shown by
// its Status). It returns at once: the sender goroutine sends the report
// ahead of the batches not yet sent, and again on every reopened stream;
// only the latest report is kept.
func (v *Volume) Report(rep *wire.PrimaryReport) {
	rep = proto.CloneOf(rep)
	v.mu.Lock()
	v.report, v.reported = rep, false
	v.mu.Unlock()
	v.kick()
}

// checkBlocks refuses what the intermediate would refuse as malformed.
func (v *Volume) checkBlocks(blocks []*wire.Block) error {
	if len(blocks) == 0 {
		return fmt.Errorf("%w: batch has no blocks", wire.ErrBadRequest)
	}
	for i, blk := range blocks {
		switch {
		case blk == nil:
			return fmt.Errorf("%w: block %d is nil", wire.ErrBadRequest, i)
		case len(blk.GetData()) != wire.BlockSize:
			return fmt.Errorf("%w: block %d has %d bytes, want %d", wire.ErrBadRequest, i, len(blk.GetData()), wire.BlockSize)
		case blk.GetIndex() >= v.blockCount:
			return fmt.Errorf("%w: block %d: index %d outside volume of %d blocks", wire.ErrBadRequest, i, blk.GetIndex(), v.blockCount)
		}
	}
	return nil
}

// batchSize returns the bytes b takes as an element of SubmitBatches.
func batchSize(b *wire.Batch) int {
	n := proto.Size(b)
	return protowire.SizeTag(1) + protowire.SizeBytes(n)
}

// kick wakes the sender goroutine without blocking.
func (v *Volume) kick() {
	select {
	case v.wake <- struct{}{}:
	default:
	}
}

// Close stops the Volume's goroutines and fails its pending submits with
// ErrClosed; wait for the submits first if their acks matter (batches already
// sent may still be committed). The volume's name is free again for
// OpenVolume, which resumes after the last committed volume seq. Close is
// idempotent and may be called from any goroutine.
func (v *Volume) Close() error {
	v.cancel(ErrClosed)
	<-v.done
	v.finish()
	v.c.forget(v)
	return nil
}

// finish marks the Volume closed and fails its pending submits with
// ErrClosed.
func (v *Volume) finish() {
	v.mu.Lock()
	if v.closed {
		v.mu.Unlock()
		return
	}
	v.closed = true
	pending := v.takeQueue()
	v.mu.Unlock()
	for _, p := range pending {
		p.complete(Ack{}, ErrClosed)
	}
}

// fail breaks the Volume with cause: every pending submit and every later
// one fails with an error wrapping ErrBroken and cause.
func (v *Volume) fail(cause error) {
	v.mu.Lock()
	if v.broken != nil || v.closed {
		v.mu.Unlock()
		return
	}
	v.broken = fmt.Errorf("%w: %s: %w", ErrBroken, v.name, cause)
	err := v.broken
	pending := v.takeQueue()
	next := v.next
	v.mu.Unlock()
	v.log.Error("volume broken; failing pending submits", "err", cause, "pending", len(pending), "next_volume_seq", next)
	for _, p := range pending {
		p.complete(Ack{}, err)
	}
}

// takeQueue empties the queue and returns what it held. v.mu is held.
func (v *Volume) takeQueue() []*Pending {
	q := v.queue
	v.queue, v.sent, v.inflight = nil, 0, 0
	return q
}

// isBroken reports whether the Volume is broken.
func (v *Volume) isBroken() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.broken != nil
}

// connect opens a Submit stream, retrying transient failures until ctx ends.
func (v *Volume) connect(ctx context.Context, r *retrier) (*session, error) {
	var last error
	for {
		s, err := v.open(ctx, r.addr)
		if err == nil {
			r.opened()
			return s, nil
		}
		if v.ctx.Err() != nil {
			return nil, context.Cause(v.ctx)
		}
		if ctx.Err() != nil {
			return nil, ctxErr("open submit stream", ctx.Err(), last)
		}
		if !retryable(err) {
			return nil, fmt.Errorf("open submit stream at %s: %w", r.addr, err)
		}
		last = lastErr(last, fmt.Errorf("%s: %w", r.addr, err))
		v.log.Warn("open submit stream failed; retrying", "addr", r.addr, "err", err)
		if err := r.failed(ctx, err); err != nil {
			return nil, ctxErr("open submit stream", err, last)
		}
	}
}

// open opens a Submit stream at addr and exchanges open and opened. The
// stream lives until the Volume is closed or the session cancelled; ctx only
// bounds the exchange.
func (v *Volume) open(ctx context.Context, addr string) (*session, error) {
	cl, err := v.c.rpc(addr)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancelCause(v.ctx)
	stopCtx := context.AfterFunc(ctx, func() { cancel(ctx.Err()) })
	timer := time.AfterFunc(handshakeTimeout, func() { cancel(errHandshakeTimeout) })
	stream, opened, err := v.handshake(sctx, cl)
	ctxStopped, timerStopped := stopCtx(), timer.Stop()
	if err == nil && (!ctxStopped || !timerStopped) {
		cancel(errAborted)
		err = context.Cause(sctx)
	}
	if err != nil {
		cancel(err)
		return nil, err
	}
	return &session{addr: addr, stream: stream, opened: opened, ctx: sctx, cancel: cancel}, nil
}

// handshake sends SubmitOpen on a new stream and reads SubmitOpened.
func (v *Volume) handshake(sctx context.Context, cl wire.IntermediateClient) (grpc.BidiStreamingClient[wire.SubmitRequest, wire.SubmitResponse], *wire.SubmitOpened, error) {
	streamErr := func(err error) error {
		if sctx.Err() != nil {
			return context.Cause(sctx)
		}
		return remoteErr(err)
	}
	stream, err := cl.Submit(sctx)
	if err != nil {
		return nil, nil, streamErr(err)
	}
	open := &wire.SubmitOpen{Group: v.c.cfg.Group, Volume: v.name, Epoch: v.epoch, BlockCount: v.blockCount}
	if err := stream.Send(&wire.SubmitRequest{Msg: &wire.SubmitRequest_Open{Open: open}}); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, streamErr(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return nil, nil, streamErr(err)
	}
	opened := resp.GetOpened()
	switch {
	case opened == nil:
		return nil, nil, fmt.Errorf("%w: submit stream answered open with %T", errProtocol, resp.GetMsg())
	case opened.GetEpoch() != 0 && opened.GetEpoch() != v.epoch:
		return nil, nil, fmt.Errorf("%w: opened at epoch %d, this primary has epoch %d", wire.ErrStaleEpoch, opened.GetEpoch(), v.epoch)
	case opened.GetBlockCount() != 0 && opened.GetBlockCount() != v.blockCount:
		return nil, nil, fmt.Errorf("%w: registered with %d blocks, this primary has %d", wire.ErrVolumeMismatch, opened.GetBlockCount(), v.blockCount)
	}
	return stream, opened, nil
}

// run is the sender goroutine. It serves session s, and after every failure
// reconnects and resumes, until the Volume is closed or broken.
func (v *Volume) run(s *session, r *retrier) {
	defer v.c.wg.Done()
	defer close(v.done)
	for {
		progressed, err := v.serve(s)
		if progressed {
			r.progress()
		}
		if v.ctx.Err() != nil {
			v.finish()
			return
		}
		if v.isBroken() {
			return
		}
		if !retryable(err) {
			v.fail(fmt.Errorf("submit at %s: %w", s.addr, err))
			return
		}
		v.log.Warn("submit stream ended; reconnecting", "addr", s.addr, "err", err, "pending", v.pending())
		if err := r.failed(v.ctx, err); err != nil {
			v.finish()
			return
		}
		s, err = v.connect(v.ctx, r)
		if err != nil {
			if v.ctx.Err() != nil {
				v.finish()
				return
			}
			v.fail(err)
			return
		}
		if err := v.resume(s); err != nil {
			s.cancel(err)
			v.fail(err)
			return
		}
		v.log.Info("submit stream reopened", "addr", s.addr, "last_volume_seq", s.opened.GetLastVolumeSeq(),
			"pending", v.pending())
	}
}

// pending returns the number of unacknowledged batches.
func (v *Volume) pending() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.queue)
}

// resume checks a reopened stream against what the Volume knows and makes
// every unacknowledged batch go out again. The intermediate must hold every
// acknowledged batch and none this client did not assign; otherwise the
// Volume cannot go on.
func (v *Volume) resume(s *session) error {
	last := s.opened.GetLastVolumeSeq()
	v.mu.Lock()
	defer v.mu.Unlock()
	first := v.next
	if len(v.queue) > 0 {
		first = v.queue[0].volumeSeq
	}
	switch {
	case last+1 < first:
		return fmt.Errorf("intermediate at %s reports last volume seq %d, but volume seqs up to %d were acknowledged: acknowledged batches are missing",
			s.addr, last, first-1)
	case last >= v.next:
		return fmt.Errorf("intermediate at %s reports last volume seq %d, but this client assigned only up to %d: another writer?",
			s.addr, last, v.next-1)
	}
	v.sent, v.inflight = 0, 0
	v.reported = false
	return nil
}

// serve runs the sender loop on s in the calling goroutine and a receiver
// goroutine beside it, until the stream fails. It returns why, and whether
// any ack arrived.
func (v *Volume) serve(s *session) (progressed bool, err error) {
	recvDone := make(chan bool, 1)
	v.c.wg.Add(1)
	go func() {
		defer v.c.wg.Done()
		recvDone <- v.receive(s)
	}()
	if err := v.send(s); err != nil {
		s.cancel(err)
	}
	progressed = <-recvDone
	s.cancel(errAborted)
	return progressed, context.Cause(s.ctx)
}

// send drains the queue onto the stream until the session ends. It returns
// a send error, or nil when the stream ended (the receiver then learns why).
func (v *Volume) send(s *session) error {
	for {
		if s.ctx.Err() != nil {
			return nil
		}
		msg := v.take()
		if msg == nil {
			select {
			case <-v.wake:
			case <-s.ctx.Done():
				return nil
			}
			continue
		}
		if err := s.stream.Send(msg); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return remoteErr(err)
		}
	}
}

// take moves the batches that fit in one message and in the in-flight
// bound from queued to sent, and returns the message, or nil.
func (v *Volume) take() *wire.SubmitRequest {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.report != nil && !v.reported {
		v.reported = true
		return &wire.SubmitRequest{Msg: &wire.SubmitRequest_Report{Report: v.report}}
	}
	limit := v.c.cfg.MaxMessage - requestOverhead
	var batches []*wire.Batch
	size := 0
	for v.sent < len(v.queue) {
		p := v.queue[v.sent]
		if len(batches) > 0 && size+p.size > limit {
			break
		}
		if v.inflight > 0 && v.inflight+p.size > v.c.cfg.MaxInFlight {
			break
		}
		batches = append(batches, p.batch)
		size += p.size
		v.sent++
		v.inflight += p.size
	}
	if len(batches) == 0 {
		return nil
	}
	return &wire.SubmitRequest{Msg: &wire.SubmitRequest_Batches{Batches: &wire.SubmitBatches{Batches: batches}}}
}

// receive is the receiver goroutine of one session: it completes waiters
// from acks until the stream fails, then cancels the session with the
// reason. It reports whether any ack arrived.
func (v *Volume) receive(s *session) (progressed bool) {
	for {
		resp, err := s.stream.Recv()
		if err != nil {
			s.cancel(remoteErr(err)) // a no-op when the session ended first
			return progressed
		}
		acks := resp.GetAcks()
		if acks == nil {
			err = fmt.Errorf("%w: unexpected %T on submit stream from %s", errProtocol, resp.GetMsg(), s.addr)
		} else {
			err = v.complete(acks.GetAcks())
		}
		if err != nil {
			v.fail(err)
			s.cancel(err)
			return progressed
		}
		progressed = true
	}
}

// complete matches acks against the oldest batches in flight and completes
// their waiters. An ack that is not for the oldest batch in flight, or whose
// seq does not rise, is a protocol violation.
func (v *Volume) complete(acks []*wire.SubmitAck) error {
	var err error
	done := make([]*Pending, 0, len(acks))
	v.mu.Lock()
	for _, a := range acks {
		if v.sent == 0 {
			err = fmt.Errorf("%w: ack for volume seq %d with no batch in flight", errProtocol, a.GetVolumeSeq())
			break
		}
		p := v.queue[0]
		if a.GetVolumeSeq() != p.volumeSeq {
			err = fmt.Errorf("%w: ack for volume seq %d, expected %d", errProtocol, a.GetVolumeSeq(), p.volumeSeq)
			break
		}
		if a.GetSeq() <= v.lastSeq {
			err = fmt.Errorf("%w: ack for volume seq %d has seq %d, not above the previous ack's %d",
				errProtocol, a.GetVolumeSeq(), a.GetSeq(), v.lastSeq)
			break
		}
		v.queue[0] = nil
		v.queue = v.queue[1:]
		v.sent--
		v.inflight -= p.size
		v.lastSeq = a.GetSeq()
		p.ack = Ack{VolumeSeq: a.GetVolumeSeq(), Seq: a.GetSeq(), Duplicate: a.GetDuplicate()}
		done = append(done, p)
	}
	v.mu.Unlock()
	for _, p := range done {
		p.complete(p.ack, nil)
	}
	if len(done) > 0 {
		v.kick()
	}
	return err
}
