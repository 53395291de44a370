package client

import (
	"context"
	"errors"
	"fmt"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// Fetch streams the committed batches of volume with seq > afterSeq, from any
// node, and calls fn with each response, on the caller's goroutine, in seq
// order. It blocks waiting for new batches and returns only when ctx ends
// (ctx.Err()), the Client is closed (ErrClosed), fn returns an error (that
// error, unchanged), a node refuses permanently (an error wrapping the
// refusal, e.g. wire.ErrUnknownVolume), or a received batch fails
// wire.CheckBatch or is not of volume: then the error wraps wire.ErrBadCRC
// (and wire.ErrBadRequest for a malformed batch), nothing of that response
// reaches fn, and Fetch does not retry (fail-stop).
//
// The seqs of one stream must increase, across its responses and within
// each: a batch whose seq is at or below one the stream sent before (a seq
// that repeats or goes backwards) is refused like a corrupt batch, and
// nothing of its response reaches fn (fail-stop). After a transport
// failure Fetch reconnects to the next node, with backoff, and resumes
// after the last seq it delivered; batches at or below it that a new
// stream starts with are dropped, so fn never sees one twice. A response
// with Compacted set is passed to fn like any other: the journal no longer
// holds what was asked for, and fn usually returns an error to stop and
// resynchronise. Responses without batches (carrying only CommittedSeq and
// CompleteSeq: the volume is complete up to a seq other volumes' batches
// moved) are passed on too.
func (c *Client) Fetch(ctx context.Context, volume string, afterSeq uint64, fn func(*wire.FetchResponse) error) error {
	if volume == "" {
		return fmt.Errorf("fetch: %w: empty volume name", wire.ErrBadRequest)
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.wg.Add(1)
	c.mu.Unlock()
	defer c.wg.Done()

	ctx, done := c.callCtx(ctx)
	defer done()
	log := c.log.With("volume", volume)
	r := c.newRetrier(false)
	last := afterSeq
	for {
		progressed, stop, err := c.fetchFrom(ctx, r.addr, volume, &last, fn)
		if stop != nil {
			return stop
		}
		if ctx.Err() != nil {
			return c.doneErr(ctx)
		}
		if !retryable(err) {
			return fmt.Errorf("fetch volume %q from %s: %w", volume, r.addr, err)
		}
		if progressed {
			r.progress()
		}
		log.Warn("fetch stream ended; reconnecting", "addr", r.addr, "after_seq", last, "err", err)
		if err := r.failed(ctx, err); err != nil {
			return c.doneErr(ctx)
		}
	}
}

// fetchFrom runs one Fetch stream at addr, advancing *last past every batch
// delivered to fn. stop is an error Fetch returns as is (fn's, or a bad
// batch); err is why the stream ended otherwise.
func (c *Client) fetchFrom(ctx context.Context, addr, volume string, last *uint64, fn func(*wire.FetchResponse) error) (progressed bool, stop, err error) {
	cl, err := c.rpc(addr)
	if err != nil {
		return false, nil, err
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := cl.Fetch(sctx, &wire.FetchRequest{Group: c.cfg.Group, Volume: volume, AfterSeq: *last})
	if err != nil {
		return false, nil, remoteErr(err)
	}
	var sent uint64 // the highest seq this stream sent
	for {
		resp, err := stream.Recv()
		if err != nil {
			return progressed, nil, remoteErr(err)
		}
		deliver, err := acceptFetched(volume, resp, &sent, last)
		if err != nil {
			return progressed, fmt.Errorf("fetch volume %q from %s: %w", volume, addr, err), nil
		}
		if !deliver {
			continue // only batches delivered before (a resumed stream)
		}
		if err := fn(resp); err != nil {
			return progressed, err, nil
		}
		progressed = true
	}
}

// acceptFetched checks a response of a Fetch stream of volume (see
// checkFetched), and that its seqs are above *sent, the highest seq the
// stream sent before, and increase. It then drops the batches at or below
// *last, the last seq delivered to fn (those a resumed stream starts
// with), and advances *sent and *last. deliver is false when the response
// held only such batches and says nothing new. A refusal wraps
// wire.ErrBadCRC, names the seq, and leaves *sent and *last as they were.
func acceptFetched(volume string, resp *wire.FetchResponse, sent, last *uint64) (deliver bool, err error) {
	if err := checkFetched(volume, resp); err != nil {
		if !errors.Is(err, wire.ErrBadCRC) {
			err = fmt.Errorf("%w: %w", wire.ErrBadCRC, err)
		}
		return false, err
	}
	prev := *sent
	for _, cb := range resp.GetBatches() {
		if cb.GetSeq() <= prev {
			return false, fmt.Errorf("%w: %w: seq %d after seq %d on the stream: seqs must increase",
				wire.ErrBadCRC, wire.ErrBadRequest, cb.GetSeq(), prev)
		}
		prev = cb.GetSeq()
	}
	*sent = prev
	had := len(resp.GetBatches())
	fresh := resp.Batches[:0]
	for _, cb := range resp.GetBatches() {
		if cb.GetSeq() <= *last {
			continue
		}
		fresh = append(fresh, cb)
		*last = cb.GetSeq()
	}
	resp.Batches = fresh
	return had == 0 || len(fresh) > 0 || resp.GetCompacted() || resp.GetCompleteSeq() > *last, nil
}

// checkFetched checks every batch of a Fetch response: present, of the
// volume asked for, with a seq, well formed and matching its checksum.
func checkFetched(volume string, resp *wire.FetchResponse) error {
	for _, cb := range resp.GetBatches() {
		b := cb.GetBatch()
		switch {
		case b == nil:
			return fmt.Errorf("%w: seq %d without a batch", wire.ErrBadRequest, cb.GetSeq())
		case cb.GetSeq() == 0:
			return fmt.Errorf("%w: batch %d without a seq", wire.ErrBadRequest, b.GetVolumeSeq())
		case b.GetVolume() != volume:
			return fmt.Errorf("%w: seq %d is a batch of volume %q", wire.ErrBadRequest, cb.GetSeq(), b.GetVolume())
		}
		if err := wire.CheckBatch(b, 0); err != nil {
			return fmt.Errorf("seq %d: %w", cb.GetSeq(), err)
		}
	}
	return nil
}
