package mirror

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/client"
)

// BlockCount returns the number of blocks of the volume.
func (m *Mirror) BlockCount() uint64 { return m.blocks }

// ReadBlock reads block index as the filesystem last wrote it: from a batch
// not yet committed when there is one, else from the local volume.
func (m *Mirror) ReadBlock(index uint64, p []byte) error {
	if len(p) != blockdev.BlockSize {
		return fmt.Errorf("read block %d: buffer of %d bytes: %w", index, len(p), blockdev.ErrBadBlock)
	}
	m.ovMu.RLock()
	if o := m.overlay[index]; o != nil {
		copy(p, o.data)
		m.ovMu.RUnlock()
		return nil
	}
	m.ovMu.RUnlock()
	return m.vol.ReadBlock(index, p)
}

// ReadBlocks reads consecutive blocks, as ReadBlock does each.
func (m *Mirror) ReadBlocks(first uint64, p []byte) error {
	if len(p)%blockdev.BlockSize != 0 {
		return fmt.Errorf("read blocks from %d: buffer of %d bytes: %w", first, len(p), blockdev.ErrBadBlock)
	}
	if rr, ok := m.vol.(blockdev.RangeReader); ok {
		if err := rr.ReadBlocks(first, p); err != nil {
			return err
		}
	} else {
		for i := 0; i < len(p); i += blockdev.BlockSize {
			if err := m.vol.ReadBlock(first+uint64(i/blockdev.BlockSize), p[i:i+blockdev.BlockSize]); err != nil {
				return err
			}
		}
	}
	// The overlay is read after the volume: a block applied and dropped
	// from the overlay in between is read from neither, so look again.
	m.ovMu.RLock()
	defer m.ovMu.RUnlock()
	if len(m.overlay) == 0 {
		return nil
	}
	for i := 0; i < len(p); i += blockdev.BlockSize {
		if o := m.overlay[first+uint64(i/blockdev.BlockSize)]; o != nil {
			copy(p[i:], o.data)
		}
	}
	return nil
}

// Commit hands b to the mirror, after every batch before it; it takes
// ownership of b's data. In PAIR, COPY and RESYNC the batch goes to the
// intermediate and the returned ack waits for its commit (see Ack); when
// mirroring is suspended it is applied locally, its regions marked, and the
// ack is nil. Commit refuses, applying nothing, with an error wrapping
// ErrUnavailable (fence level data, while earlier batches are overdue) or
// ErrFenced; any other error means the mirror stopped.
func (m *Mirror) Commit(ctx context.Context, b *blockdev.Batch) (func(context.Context) error, error) {
	if err := b.Validate(m.blocks); err != nil {
		return nil, fmt.Errorf("commit to mirror of volume %q: %w", m.cfg.Name, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		switch {
		case m.failed != nil:
			return nil, m.failed
		case m.closing:
			return nil, ErrClosed
		case m.st.State == StateFenced:
			return nil, fmt.Errorf("%w (%s)", ErrFenced, m.st.Reason)
		case m.st.State == StateSusp:
			return nil, m.commitLocalLocked(ctx, b)
		case m.suspend != nil:
			// A suspension was asked for: wait for the applier to carry it
			// out rather than send this batch down a pipeline being
			// abandoned.
			m.kickApplier()
			m.cond.Wait()
			continue
		case m.unavailable != nil:
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, m.unavailable)
		case m.stream == nil:
			return nil, fmt.Errorf("%w: reconnecting to the intermediate", ErrUnavailable)
		}
		if m.pendBytes == 0 || m.pendBytes+b.Bytes() <= m.cfg.MaxPendingBytes {
			break
		}
		if err := m.waitRoomLocked(b.Bytes()); err != nil {
			return nil, err
		}
	}
	blocks := toBlocks(b)
	// During COPY and RESYNC the intermediate's image is torn until the
	// copy ends: every batch says so.
	copying := m.st.State.copying()
	np := m.submitLocked(blocks, copying)
	select {
	case <-np.Done():
		if _, err := np.Wait(ctx); err != nil && np.VolumeSeq() == 0 {
			// Refused before getting a volume seq: the stream broke or
			// the batch is malformed. The applier sees a broken stream.
			if errors.Is(err, client.ErrBroken) || errors.Is(err, client.ErrClosed) {
				m.kickApplier()
				return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
			}
			return nil, m.failLocked(fmt.Errorf("submit batch: %w", err))
		}
	default:
	}
	p := &pend{vs: np.VolumeSeq(), p: np, blocks: blocks, batch: b, bytes: b.Bytes(), copying: copying,
		deadline: time.Now().Add(m.cfg.Timeout), done: make(chan struct{})}
	m.ovMu.Lock()
	for _, w := range b.Writes {
		m.overlay[w.Index] = &overlayBlock{data: w.Data, vs: p.vs}
	}
	m.ovMu.Unlock()
	m.pends = append(m.pends, p)
	m.pendBytes += p.bytes
	m.kickApplier()
	if m.cfg.AckBeforeCommit {
		return func(context.Context) error { return nil }, nil
	}
	return func(ctx context.Context) error { return m.waitCommit(ctx, p, np) }, nil
}

// waitRoomLocked waits until the pending bytes leave room for n more, up to
// the timeout.
func (m *Mirror) waitRoomLocked(n int) error {
	deadline := time.Now().Add(m.cfg.Timeout)
	t := time.AfterFunc(m.cfg.Timeout, func() {
		m.mu.Lock()
		m.cond.Broadcast()
		m.mu.Unlock()
	})
	defer t.Stop()
	for m.pendBytes > 0 && m.pendBytes+n > m.cfg.MaxPendingBytes && m.failed == nil && !m.closing &&
		m.st.State != StateSusp && m.st.State != StateFenced && m.stream != nil {
		if time.Now().After(deadline) {
			err := fmt.Errorf("%d bytes of batches not committed within %s", m.pendBytes, m.cfg.Timeout)
			m.timedOutLocked(err)
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		m.cond.Wait()
	}
	return nil
}

// commitLocalLocked applies b locally while mirroring is suspended: its
// regions are marked (durably, when newly marked) before the local write.
func (m *Mirror) commitLocalLocked(ctx context.Context, b *blockdev.Batch) error {
	if m.markLocked(b) {
		if err := m.persistLocked(); err != nil {
			return m.failLocked(err)
		}
	}
	if err := m.vol.Apply(ctx, b, blockdev.ApplyOptions{}); err != nil {
		return m.failLocked(fmt.Errorf("apply batch to the local volume: %w", err))
	}
	return nil
}

// timedOutLocked handles a batch not committed in time: with fence level
// data, Commit refuses until everything pending is committed; with fence
// level never, mirroring is suspended.
func (m *Mirror) timedOutLocked(cause error) {
	switch m.cfg.Fence {
	case FenceNever:
		if m.suspend == nil && m.st.State != StateSusp && m.st.State != StateFenced {
			m.suspend = cause
			m.kickApplier()
		}
	default:
		if m.unavailable == nil {
			m.unavailable = cause
			m.log.Error("intermediate did not commit in time: writes fail with EIO until it has committed every pending batch",
				"timeout", m.cfg.Timeout, "pending", len(m.pends), "err", cause)
			m.reportLocked()
		}
	}
}

// waitCommit is the ack of pend p: it returns once the intermediate committed p.
// When p is not committed within the timeout, with fence level data it
// returns an error wrapping ErrUnavailable (p stays in the pipeline); with
// fence level never it suspends mirroring and returns nil once p is applied
// locally.
//
// It also watches np, the batch's first submission: its ack ends the wait at
// once, without the hop through the applier (which signals p.done only
// after taking the ack itself). If np fails (the stream broke), the wait
// goes on for p.done: the applier resubmits or suspends.
func (m *Mirror) waitCommit(ctx context.Context, p *pend, np *client.Pending) error {
	select {
	case <-p.done:
		return p.err
	default:
	}
	var acked <-chan struct{}
	if np != nil {
		acked = np.Done()
	}
	t := time.NewTimer(time.Until(p.deadline))
	defer t.Stop()
wait:
	for {
		select {
		case <-p.done:
			return p.err
		case <-acked:
			if _, err := np.Wait(ctx); err == nil {
				return nil
			}
			acked = nil
		case <-ctx.Done():
			return ctx.Err()
		case <-m.ctx.Done():
			return ErrClosed
		case <-t.C:
			break wait
		}
	}
	err := fmt.Errorf("batch %d not committed at the intermediate within %s", p.vs, m.cfg.Timeout)
	m.mu.Lock()
	m.timedOutLocked(err)
	m.mu.Unlock()
	if m.cfg.Fence == FenceData {
		select {
		case <-p.done:
			return p.err
		default:
			return fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
	}
	select {
	case <-p.done:
		return p.err
	case <-ctx.Done():
		return ctx.Err()
	case <-m.ctx.Done():
		return ErrClosed
	}
}

// Sync makes every operation that returned before the call durable. While
// the intermediate mirrors (PAIR, COPY, RESYNC) there is nothing to wait
// for: an operation returns only once its batch is committed there, so Sync
// only reports a mirror that refuses writes (fence level data, with batches
// overdue) or stopped. While suspended or fenced the local volume is the
// copy that matters and Sync syncs it.
func (m *Mirror) Sync(ctx context.Context) error {
	m.mu.Lock()
	failed, unavailable, state := m.failed, m.unavailable, m.st.State
	m.mu.Unlock()
	switch {
	case failed != nil:
		return failed
	case state == StateSusp || state == StateFenced:
		if err := m.vol.Sync(ctx); err != nil {
			return fmt.Errorf("sync local volume of %q: %w", m.cfg.Name, err)
		}
		return nil
	case unavailable != nil:
		return fmt.Errorf("%w: %w", ErrUnavailable, unavailable)
	}
	return nil
}

func (m *Mirror) kickApplier() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}
