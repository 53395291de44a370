package mirror

import (
	"fmt"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// startCopyLocked starts counting a copy of the marked regions (COPY or
// RESYNC) on a new stream; the resyncer does the copying.
func (m *Mirror) startCopyLocked() {
	m.copySent = map[uint64]bool{}
	m.copyCursor = 0
	if !m.st.State.copying() {
		m.copyDone, m.copyTotal = 0, 0
		return
	}
	m.copyDone, m.copyTotal = 0, m.bitmap.Count()
	m.cond.Broadcast()
}

// finishCopyLocked ends a copy once every marked region is copied and
// committed. Out of a copy, it closes the volume's copy window at the
// intermediate if it may be open.
func (m *Mirror) finishCopyLocked() {
	if !m.st.State.copying() {
		if m.st.State == StatePair && m.copyWindow {
			m.closeCopyWindowLocked()
		}
		m.reportLocked()
		return
	}
	if m.bitmap.Count() > 0 || len(m.copySent) > 0 {
		m.reportLocked()
		return
	}
	was := m.st.State
	m.st.State = StatePair
	m.st.CopyFromEmpty = false
	m.st.Reason = ""
	if err := m.persistLocked(); err != nil {
		m.failLocked(err)
		return
	}
	m.log.Info("copy complete: volume in PAIR", "was", was, "regions", m.copyTotal)
	m.copyDone, m.copyTotal = 0, 0
	if m.copyWindow {
		m.closeCopyWindowLocked()
	}
	m.reportLocked()
}

// closeCopyWindowLocked sends the batch that closes the volume's copy
// window at the intermediate (wire.Batch copying): block 0 as the
// filesystem sees it, which after every batch before it is what the
// intermediate's image holds there, so the write changes nothing but
// tells the intermediate that the image is a consistent filesystem again
// from this batch on, where validated points may land. A write the
// filesystem makes first closes the window as well; without one, this
// batch does. It is a pend like any other: resubmitted on a new stream,
// and if the stream is broken the next one, opened with the window still
// open (client.Volume.CopyOpen), sends it again.
func (m *Mirror) closeCopyWindowLocked() {
	if m.stream == nil {
		return
	}
	data := make([]byte, blockdev.BlockSize)
	if err := m.ReadBlock(0, data); err != nil {
		m.failLocked(fmt.Errorf("close the copy window: %w", err))
		return
	}
	blocks := []*wire.Block{{Index: 0, Data: data}}
	np := m.submitLocked(blocks, false)
	if np.VolumeSeq() == 0 {
		m.kickApplier() // a broken stream: the applier reconnects
		return
	}
	m.pends = append(m.pends, &pend{vs: np.VolumeSeq(), p: np, blocks: blocks,
		deadline: time.Now().Add(m.cfg.Timeout), done: make(chan struct{})})
	m.log.Info("closing the copy window at the intermediate", "volume_seq", np.VolumeSeq())
	m.kickApplier()
}

// submitLocked submits blocks on the stream, with the copying flag when
// copying, and keeps copyWindow up to date.
func (m *Mirror) submitLocked(blocks []*wire.Block, copying bool) *client.Pending {
	np := submitTo(m.stream, blocks, copying)
	if np.VolumeSeq() != 0 {
		m.copyWindow = copying
	}
	return np
}

// submitTo submits blocks on v, with the copying flag when copying.
func submitTo(v *client.Volume, blocks []*wire.Block, copying bool) *client.Pending {
	if copying {
		return v.SubmitCopyingAsync(blocks)
	}
	return v.SubmitAsync(blocks)
}

// runResyncer is the resyncer goroutine: during COPY and RESYNC it reads
// marked regions from the local volume (as the filesystem sees them) and
// submits them, a few batches in flight, in the order of the stream, so
// that a write after a region's copy reaches the intermediate after it.
// Regions are cleared when their batch is committed.
func (m *Mirror) runResyncer() {
	defer m.wg.Done()
	m.mu.Lock()
	defer m.mu.Unlock()
	for {
		for m.ctx.Err() == nil && !m.copyReadyLocked() {
			m.cond.Wait()
		}
		if m.ctx.Err() != nil {
			return
		}
		if wait := time.Until(m.copyPaceAt); wait > 0 {
			m.mu.Unlock()
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-m.ctx.Done():
				t.Stop()
			}
			m.mu.Lock()
			continue
		}
		m.copyNextLocked()
	}
}

// copyReadyLocked reports whether the resyncer has work it may do now.
func (m *Mirror) copyReadyLocked() bool {
	if !m.st.State.copying() || m.stream == nil || m.failed != nil || m.closing ||
		m.unavailable != nil || m.suspend != nil {
		return false
	}
	return m.copyInflight < m.cfg.ResyncInFlight && m.bitmap.Count() > uint64(len(m.copySent))
}

// copyNextLocked submits the next copy batch: up to ResyncBatchRegions
// marked regions not yet sent. Regions of zeros are skipped when the
// intermediate volume started empty.
func (m *Mirror) copyNextLocked() {
	var regions []uint64
	var blocks []*wire.Block
	skipped := false
	m.bitmap.Iterate(func(r uint64) bool {
		if r < m.copyCursor || m.copySent[r] {
			return true
		}
		m.copyCursor = r + 1
		first, n := m.bitmap.RegionBlocks(r)
		data := make([]byte, n*blockdev.BlockSize)
		if err := m.ReadBlocks(first, data); err != nil {
			m.failLocked(err)
			return false
		}
		if m.st.CopyFromEmpty && allZero(data) {
			m.bitmap.ClearRegion(r)
			m.bitmapDirty = true
			m.copyDone++
			skipped = true
			return len(regions) < m.cfg.ResyncBatchRegions
		}
		for i := uint64(0); i < n; i++ {
			blocks = append(blocks, &wire.Block{Index: first + i, Data: data[i*blockdev.BlockSize : (i+1)*blockdev.BlockSize]})
		}
		regions = append(regions, r)
		return len(regions) < m.cfg.ResyncBatchRegions
	})
	if m.failed != nil {
		return
	}
	if len(regions) == 0 {
		if m.bitmap.Count() > uint64(len(m.copySent)) {
			m.copyCursor = 0 // wrap: regions marked behind the cursor
		}
		if skipped {
			m.finishCopyLocked()
		}
		return
	}
	np := m.submitLocked(blocks, true)
	p := &pend{vs: np.VolumeSeq(), p: np, blocks: blocks, regions: regions, copying: true,
		deadline: time.Now().Add(m.cfg.Timeout), done: make(chan struct{})}
	if p.vs == 0 {
		// Refused before getting a volume seq: the stream is broken; the
		// applier reconnects or suspends.
		m.kickApplier()
		m.cond.Wait()
		return
	}
	for _, r := range regions {
		m.copySent[r] = true
	}
	if rate := m.cfg.ResyncRate; rate > 0 {
		bytes := int64(len(blocks)) * blockdev.BlockSize
		m.copyPaceAt = maxTime(m.copyPaceAt, time.Now()).Add(time.Duration(float64(bytes) / float64(rate) * float64(time.Second)))
	}
	m.pends = append(m.pends, p)
	m.copyInflight++
	m.kickApplier()
}

// maxTime returns the later of a and b.
func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func allZero(p []byte) bool {
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}

// runCheckpointer is the checkpointer goroutine: every CheckpointInterval it
// syncs the local volume and records the applied position and the bitmap,
// so that a restart replays little.
func (m *Mirror) runCheckpointer() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-m.ctx.Done():
			return
		}
		m.checkpoint()
	}
}

// checkpoint syncs the local volume, then records the position applied
// before the sync.
func (m *Mirror) checkpoint() {
	m.mu.Lock()
	vs, seq := m.st.AppliedVolumeSeq, m.st.AppliedSeq
	synced := vs == m.durableVS
	m.reportLocked()
	m.mu.Unlock()
	if !synced {
		if err := m.vol.Sync(m.ctx); err != nil {
			if m.ctx.Err() == nil {
				m.mu.Lock()
				m.failLocked(err)
				m.mu.Unlock()
			}
			return
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failed != nil {
		return
	}
	if vs > m.durableVS {
		m.durableVS, m.durableSeq = vs, seq
	}
	if err := m.persistLocked(); err != nil {
		m.failLocked(err)
		return
	}
	m.reportLocked() // the durable seq lets the intermediate trim its journal
}
