package mirror

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/tricopy/tricopy/blockdev"
)

// Files of a mirror in its directory, beside the local volume.
const (
	stateFile  = "mirror.state"
	bitmapFile = "primary.bitmap"
)

// Labels of the mirror's file operations, for fault injection.
const (
	labelState = "mirror state"
)

// stateMagic starts a state file; stateVersion is the format it has.
const (
	stateMagic   = "tricopy mirror state\n"
	stateVersion = 1
	maxStateFile = 64 << 10
)

// persisted is the mirror's state on disk. It is written atomically
// (blockdev.WriteFileAtomic) whenever it changes, and at most once per
// checkpoint interval while only the applied position moves.
type persisted struct {
	Version int    `json:"version"`
	Volume  string `json:"volume"`
	Group   string `json:"group"`
	Epoch   uint64 `json:"epoch"`
	State   State  `json:"state"`
	// AppliedVolumeSeq and AppliedSeq bound from below what the local
	// volume holds durably: every batch of the volume committed at the
	// intermediate with volume seq <= AppliedVolumeSeq is in it (or
	// superseded by later local changes marked in the bitmap). Replaying the
	// batches after it is harmless: they are absolute block writes in order.
	AppliedVolumeSeq uint64 `json:"applied_volume_seq"`
	AppliedSeq       uint64 `json:"applied_seq"`
	// CopyFromEmpty is set while the initial copy runs against an
	// intermediate volume that started empty: regions of zeros need not be
	// sent.
	CopyFromEmpty bool `json:"copy_from_empty"`
	// Clean is set by Close when nothing was in flight and the local volume
	// was synced: the intermediate then holds nothing the local volume
	// lacks.
	Clean  bool   `json:"clean"`
	Reason string `json:"reason,omitempty"`
	// Detached is set on a volume promoted while the intermediate was
	// unreachable (Adopt with Suspended): it stays suspended and does not
	// contact the intermediate until Attach.
	Detached bool `json:"detached,omitempty"`
}

// errBadState marks a state file that cannot be decoded.
var errBadState = errors.New("bad mirror state file")

// encodeState returns the file form of p (blockdev.EncodeStateFile).
func encodeState(p persisted) []byte { return blockdev.EncodeStateFile(stateMagic, p) }

// decodeState decodes a state file, checking its checksum and every field.
func decodeState(data []byte) (persisted, error) {
	var p persisted
	if err := blockdev.DecodeStateFile(stateMagic, data, &p); err != nil {
		return p, fmt.Errorf("%w: %w", errBadState, err)
	}
	switch {
	case p.Version != stateVersion:
		return p, fmt.Errorf("%w: version %d, want %d: %w", errBadState, p.Version, stateVersion, blockdev.ErrVersion)
	case p.Volume == "":
		return p, fmt.Errorf("%w: no volume name", errBadState)
	case p.Epoch == 0:
		return p, fmt.Errorf("%w: epoch 0", errBadState)
	case !p.State.valid():
		return p, fmt.Errorf("%w: unknown state %q", errBadState, p.State)
	case p.AppliedSeq < p.AppliedVolumeSeq:
		return p, fmt.Errorf("%w: applied seq %d below applied volume seq %d", errBadState, p.AppliedSeq, p.AppliedVolumeSeq)
	}
	return p, nil
}

// loadState reads the state file in dir; found is false when there is none.
func loadState(fsys blockdev.FS, dir string) (p persisted, found bool, err error) {
	name := filepath.Join(dir, stateFile)
	data, err := blockdev.ReadFileLimit(fsys, labelState, name, maxStateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return p, false, nil
	}
	if err != nil {
		return p, false, fmt.Errorf("read mirror state: %w", err)
	}
	p, err = decodeState(data)
	if err != nil {
		return p, false, fmt.Errorf("mirror state %q: %w", name, err)
	}
	return p, true, nil
}

// saveState writes p to the state file in dir, durably.
func saveState(fsys blockdev.FS, dir string, p persisted) error {
	name := filepath.Join(dir, stateFile)
	if err := blockdev.WriteFileAtomic(fsys, labelState, name, encodeState(p)); err != nil {
		return fmt.Errorf("save mirror state %q: %w", name, err)
	}
	return nil
}
