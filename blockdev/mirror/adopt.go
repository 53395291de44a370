package mirror

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/tricopy/tricopy/blockdev"
)

// AdoptOptions describe a volume that becomes a mirrored primary without
// having been one here: a promoted secondary's replica.
type AdoptOptions struct {
	// FS and Dir are where the mirror will keep its state (Config.FS and
	// Config.Dir); a nil FS means blockdev.OSFS.
	FS  blockdev.FS
	Dir string
	// Volume and Group name the volume (Config.Name and Config.Group).
	Volume, Group string
	// BlockCount is the volume's size, for the primary bitmap.
	BlockCount uint64
	// Epoch is the volume's new epoch, raised by the promotion.
	Epoch uint64
	// AppliedVolumeSeq and AppliedSeq are the volume's last batch at the
	// intermediate that the volume holds: the mirror resumes after it.
	AppliedVolumeSeq, AppliedSeq uint64
	// Suspended starts the mirror suspended and detached (state SUSP,
	// every change marked in the primary bitmap, the intermediate not
	// contacted until Attach): the intermediate was unreachable at the
	// promotion. Reason says why.
	Suspended bool
	Reason    string
}

// Adopt records the mirror state of a volume promoted to primary, before
// the first Open of its mirror: in PAIR at opts.Epoch, resuming after
// AppliedVolumeSeq, or suspended with an empty primary bitmap. It is
// idempotent: if Dir already holds a mirror state of the same volume at
// opts.Epoch, Adopt leaves it (the mirror may have run since); a state at
// another epoch or of another volume is an error.
func Adopt(opts AdoptOptions) error {
	if opts.FS == nil {
		opts.FS = blockdev.OSFS{}
	}
	switch {
	case opts.Volume == "" || opts.Dir == "":
		return errors.New("adopt mirror: volume name or directory empty")
	case opts.Epoch == 0:
		return fmt.Errorf("adopt mirror of volume %q: epoch 0", opts.Volume)
	case opts.AppliedSeq < opts.AppliedVolumeSeq:
		return fmt.Errorf("adopt mirror of volume %q: applied seq %d below applied volume seq %d", opts.Volume, opts.AppliedSeq, opts.AppliedVolumeSeq)
	}
	st, found, err := loadState(opts.FS, opts.Dir)
	if err != nil {
		return err
	}
	if found {
		if st.Volume != opts.Volume || st.Epoch != opts.Epoch {
			return fmt.Errorf("adopt mirror in %s: it holds the mirror of volume %q at epoch %d, not %q at epoch %d",
				opts.Dir, st.Volume, st.Epoch, opts.Volume, opts.Epoch)
		}
		return nil
	}
	if err := opts.FS.MkdirAll(labelState, opts.Dir, 0o755); err != nil {
		return fmt.Errorf("adopt mirror: create %s: %w", opts.Dir, err)
	}
	bm, err := blockdev.NewBitmap(opts.BlockCount, blockdev.DefaultRegionSize)
	if err != nil {
		return fmt.Errorf("adopt mirror of volume %q: %w", opts.Volume, err)
	}
	if err := blockdev.SaveBitmap(opts.FS, filepath.Join(opts.Dir, bitmapFile), bm); err != nil {
		return fmt.Errorf("adopt mirror of volume %q: %w", opts.Volume, err)
	}
	st = persisted{Version: stateVersion, Volume: opts.Volume, Group: opts.Group, Epoch: opts.Epoch, State: StatePair,
		AppliedVolumeSeq: opts.AppliedVolumeSeq, AppliedSeq: opts.AppliedSeq}
	if opts.Suspended {
		st.State, st.Reason, st.Detached = StateSusp, opts.Reason, true
	}
	return saveState(opts.FS, opts.Dir, st)
}

// Recorded is what a mirror's directory records of it (Inspect).
type Recorded struct {
	Volume, Group string
	Epoch         uint64
	State         State
	Reason        string
	// AppliedVolumeSeq and AppliedSeq: the local volume holds durably every
	// batch of the volume committed at the intermediate up to them.
	AppliedVolumeSeq, AppliedSeq uint64
	// Bitmap is the primary bitmap file's content (blockdev.Bitmap
	// MarshalBinary), nil when there is none.
	Bitmap []byte
	// DirtyRegions counts its set regions.
	DirtyRegions uint64
}

// Inspect reads the mirror state and primary bitmap in dir without opening
// the mirror (tricopy failback turns a fenced primary into a secondary
// with them). found is false when dir holds no mirror state.
func Inspect(fsys blockdev.FS, dir string) (rec Recorded, found bool, err error) {
	if fsys == nil {
		fsys = blockdev.OSFS{}
	}
	st, found, err := loadState(fsys, dir)
	if err != nil || !found {
		return rec, found, err
	}
	rec = Recorded{Volume: st.Volume, Group: st.Group, Epoch: st.Epoch, State: st.State, Reason: st.Reason,
		AppliedVolumeSeq: st.AppliedVolumeSeq, AppliedSeq: st.AppliedSeq}
	path := filepath.Join(dir, bitmapFile)
	bm, err := blockdev.LoadBitmap(fsys, path)
	switch {
	case err == nil:
		rec.DirtyRegions = bm.Count()
		if rec.Bitmap, err = bm.MarshalBinary(); err != nil {
			return rec, true, fmt.Errorf("primary bitmap %s: %w", path, err)
		}
	case st.State != StatePair:
		return rec, true, fmt.Errorf("mirror of volume %q is in state %s but its primary bitmap is unreadable: %w", st.Volume, st.State, err)
	}
	return rec, true, nil
}

// Attachment is what the intermediate said when it learned of a promotion
// made without it (Mirror.Attach).
type Attachment struct {
	// Epoch is the volume's epoch there, which must be the mirror's.
	Epoch uint64
	// Regions is a blockdev.Bitmap (MarshalBinary) of the volume's block
	// count marking the regions of the intermediate volume that hold
	// batches this volume lacks (the old primaries' batches after the
	// promote point); AllRegions says every region may (the journal no
	// longer held them all).
	Regions    []byte
	AllRegions bool
}

// Detached reports whether the mirror is detached from the intermediate
// (a volume promoted without it, not attached yet).
func (m *Mirror) Detached() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.st.Detached
}

// Attach ends the detachment of a volume promoted without the
// intermediate, once the intermediate learned the promotion (its epoch is
// the mirror's): the regions it holds that this volume lacks are marked in
// the primary bitmap, so the resync that follows the reconnection
// overwrites them with this volume's blocks, together with every change
// made while detached. Attach records this durably, then lets the mirror
// reconnect. On a mirror not detached it does nothing.
func (m *Mirror) Attach(a Attachment) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.st.Detached {
		return nil
	}
	if a.Epoch != m.st.Epoch {
		return fmt.Errorf("attach volume %q: the intermediate has it at epoch %d, this primary at %d", m.cfg.Name, a.Epoch, m.st.Epoch)
	}
	marked := m.bitmap.Count()
	switch {
	case a.AllRegions:
		m.bitmap.SetAll()
	case len(a.Regions) > 0:
		var b blockdev.Bitmap
		if err := b.UnmarshalBinary(a.Regions); err != nil {
			return fmt.Errorf("attach volume %q: regions: %w", m.cfg.Name, err)
		}
		if b.BlockCount() != m.blocks {
			return fmt.Errorf("attach volume %q: regions of %d blocks, the volume has %d", m.cfg.Name, b.BlockCount(), m.blocks)
		}
		for r := range b.Iterate {
			first, n := b.RegionBlocks(r)
			m.bitmap.SetRange(first, n)
		}
	}
	m.bitmapDirty = true
	m.st.Detached = false
	m.st.Reason = "attached to the intermediate: resynchronising"
	if err := m.persistLocked(); err != nil {
		return m.failLocked(err)
	}
	m.log.Warn("attached to the intermediate after a promotion without it: reconnecting and resynchronising",
		"dirty_regions", m.bitmap.Count(), "newly_marked_regions", m.bitmap.Count()-marked, "epoch", m.st.Epoch)
	m.kickApplier()
	return nil
}
