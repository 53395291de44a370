package mirror

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// runApplier is the applier goroutine: it applies committed batches to the
// local volume in volume-seq order, carries out suspensions, fences the
// mirror on a stale epoch, and reconnects when there is no stream.
func (m *Mirror) runApplier() {
	defer m.wg.Done()
	for m.ctx.Err() == nil {
		m.mu.Lock()
		switch {
		case m.failed != nil || m.st.State == StateFenced:
			m.mu.Unlock()
			<-m.ctx.Done()
			return
		case m.suspend != nil && m.st.State != StateSusp:
			m.suspendLocked(m.suspend)
			m.mu.Unlock()
			continue
		case m.stream == nil:
			m.mu.Unlock()
			m.reconnect()
			continue
		case len(m.pends) == 0:
			m.mu.Unlock()
			select {
			case <-m.kick:
			case <-m.ctx.Done():
			}
			continue
		}
		head := m.pends[0]
		hp := head.p
		m.mu.Unlock()

		select {
		case <-hp.Done():
		case <-m.kick:
			continue
		case <-m.ctx.Done():
			return
		}
		ack, err := hp.Wait(m.ctx)
		m.mu.Lock()
		if len(m.pends) == 0 || m.pends[0] != head || head.p != hp {
			m.mu.Unlock() // the pipeline changed meanwhile (failed, resubmitted)
			continue
		}
		if err != nil {
			m.streamFailedLocked(err)
			m.mu.Unlock()
			continue
		}
		m.mu.Unlock()
		// The local write happens outside the lock, so that commits and
		// reads go on during it (and during a checkpoint of the local
		// volume inside it). Only this goroutine writes the local volume
		// while the mirror is not suspended, and the batch stays in the
		// overlay until it is written, so readers see it throughout.
		var aerr error
		if head.batch != nil {
			aerr = m.vol.Apply(m.ctx, head.batch, blockdev.ApplyOptions{})
		}
		m.mu.Lock()
		switch {
		case aerr != nil:
			m.failLocked(fmt.Errorf("apply batch %d to the local volume: %w", head.vs, aerr))
		case m.failed != nil || len(m.pends) == 0 || m.pends[0] != head:
			// Failed meanwhile: the batch is committed and applied; nothing
			// is left to account for.
		default:
			m.appliedLocked(head, ack.Seq)
			m.pends = m.pends[1:]
			if len(m.pends) == 0 && m.unavailable != nil {
				m.log.Info("intermediate committed every pending batch; writes are accepted again")
				m.unavailable = nil
				m.reportLocked()
			}
			m.finishCopyLocked()
			m.cond.Broadcast()
		}
		m.mu.Unlock()
	}
}

// streamFailedLocked handles a Submit stream that broke for good (the
// client retries transient failures itself): a stale epoch fences the
// mirror; otherwise fence level never suspends, and fence level data drops
// the stream so that the applier reconnects and resubmits.
func (m *Mirror) streamFailedLocked(err error) {
	if m.closing && errors.Is(err, client.ErrClosed) {
		return
	}
	switch {
	case errors.Is(err, wire.ErrStaleEpoch):
		m.fenceLocked(err)
	case m.cfg.Fence == FenceNever:
		m.suspendLocked(fmt.Errorf("submit stream failed: %w", err))
	default:
		m.log.Error("submit stream failed; reconnecting", "err", err, "pending", len(m.pends))
		if m.unavailable == nil {
			m.unavailable = fmt.Errorf("submit stream failed: %w", err)
		}
		if m.stream != nil {
			m.stream.Close()
			m.stream = nil
		}
	}
	m.cond.Broadcast()
}

// reconnect opens a new Submit stream, retrying until it succeeds, the
// mirror closes, or the volume turns out fenced.
func (m *Mirror) reconnect() {
	for attempt := 0; m.ctx.Err() == nil; attempt++ {
		ctx, cancel := context.WithTimeout(m.ctx, m.cfg.Timeout)
		v, err := m.open(ctx)
		cancel()
		m.mu.Lock()
		switch {
		case err == nil && m.stream == nil && m.st.State != StateFenced && m.failed == nil:
			m.connectedLocked(v)
			m.mu.Unlock()
			return
		case err == nil:
			v.Close()
			m.mu.Unlock()
			return
		case errors.Is(err, wire.ErrStaleEpoch):
			m.fenceLocked(err)
			m.mu.Unlock()
			return
		}
		if m.suspend != nil && m.st.State != StateSusp {
			m.suspendLocked(m.suspend)
		}
		m.mu.Unlock()
		if m.ctx.Err() != nil {
			return
		}
		if attempt%10 == 0 {
			m.log.Warn("intermediate unreachable; retrying", "err", err, "attempt", attempt+1)
		}
		t := time.NewTimer(m.cfg.RetryInterval)
		select {
		case <-t.C:
		case <-m.kick:
			t.Stop()
		case <-m.ctx.Done():
			t.Stop()
		}
	}
}
