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
	// Suspended starts the mirror suspended (state SUSP, every change
	// marked in the primary bitmap): the intermediate was unreachable at
	// the promotion. Reason says why.
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
		st.State, st.Reason = StateSusp, opts.Reason
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
