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
		case m.stream == nil && m.st.Detached:
			m.mu.Unlock()
			select {
			case <-m.kick: // Attach
			case <-m.ctx.Done():
			}
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
		m.mu.Lock()
		if len(m.pends) == 0 || m.pends[0] != head || head.p != hp {
			m.mu.Unlock() // the pipeline changed meanwhile (failed, resubmitted)
			continue
		}
		// Take the run of batches committed so far, in order. Their
		// operations return now: the commit is what they wait for.
		var run []*pend
		var seqs []uint64
		var failure error
		for _, p := range m.pends {
			if !isDone(p.p) {
				break
			}
			ack, err := p.p.Wait(m.ctx)
			if err != nil {
				failure = err
				break
			}
			m.signalLocked(p, nil)
			run = append(run, p)
			seqs = append(seqs, ack.Seq)
		}
		if len(run) == 0 {
			if failure != nil {
				m.streamFailedLocked(failure)
			}
			m.mu.Unlock()
			continue
		}
		m.mu.Unlock()
		// The local write happens outside the lock, as one batch for the
		// whole run, so that commits and reads go on during it (and during
		// a checkpoint of the local volume inside it). Only this goroutine
		// writes the local volume while the mirror is not suspended, and
		// the batches stay in the overlay until they are written, so
		// readers see them throughout.
		merged := &blockdev.Batch{}
		for _, p := range run {
			if p.batch != nil {
				merged.Writes = append(merged.Writes, p.batch.Writes...)
			}
		}
		var aerr error
		if len(merged.Writes) > 0 {
			// Not m.ctx: Close cancels it once the last batch is
			// committed, and a committed batch must reach the local
			// volume; a local write does not wait on anything remote.
			aerr = m.vol.Apply(context.WithoutCancel(m.ctx), merged, blockdev.ApplyOptions{})
		}
		m.mu.Lock()
		switch {
		case aerr != nil:
			m.failLocked(fmt.Errorf("apply batches %d-%d to the local volume: %w", run[0].vs, run[len(run)-1].vs, aerr))
		case m.failed != nil || len(m.pends) < len(run) || m.pends[0] != head:
			// Failed meanwhile: the batches are committed and applied;
			// nothing is left to account for.
		default:
			for i, p := range run {
				m.appliedLocked(p, seqs[i])
			}
			m.pends = m.pends[len(run):]
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

// isDone reports whether p's outcome is known.
func isDone(p *client.Pending) bool {
	select {
	case <-p.Done():
		return true
	default:
		return false
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
