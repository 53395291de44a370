package mirror

import (
	"time"

	"github.com/tricopy/tricopy/blockdev"
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
// committed.
func (m *Mirror) finishCopyLocked() {
	if !m.st.State.copying() || m.bitmap.Count() > 0 || len(m.copySent) > 0 {
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
	m.reportLocked()
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
	np := m.stream.SubmitAsync(blocks)
	p := &pend{vs: np.VolumeSeq(), p: np, blocks: blocks, regions: regions,
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
	m.pends = append(m.pends, p)
	m.copyInflight++
	m.kickApplier()
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
