package blockdev

import (
	"context"
	"fmt"
)

// WriteInPlace writes writes straight into the data file, not through the
// intent log, and fsyncs the data file: once it returns nil they are
// durable. Unlike Apply it is not atomic: a crash or an error inside it
// may leave any subset of the writes in place, and a reader that runs
// during it may see some of them, so the caller must be able to write them
// again (a secondary's replica redoes such a round from its staged
// batches) and keep readers out meanwhile. When two writes name one block,
// the later one wins.
//
// It first waits for a running checkpoint, checkpoints the intent log if
// its records hold a block of writes, and syncs the volume's directory, so
// that no log a recovery replays holds one of them: otherwise it would
// replay their older data over these writes (a checkpoint removes its
// frozen log without syncing the directory, which a recovery that finds
// the log again replays harmlessly, unless blocks were written in place
// since). Blocks written later by Apply go through the log as usual. An
// I/O error fails the volume.
func (v *FileVolume) WriteInPlace(ctx context.Context, writes []Write) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("write in place to volume %q: %w", v.dir, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.usable(); err != nil {
		return fmt.Errorf("write in place to volume %q: %w", v.dir, err)
	}
	if err := (&Batch{Writes: writes}).Validate(v.blocks); err != nil {
		return fmt.Errorf("write in place to volume %q: %w", v.dir, err)
	}
	if len(writes) == 0 {
		return nil
	}
	// No checkpoint runs from here on (they start under mu): the data file
	// and the scratch buffer are this call's.
	if err := v.reapLocked(true); err != nil {
		return fmt.Errorf("write in place to volume %q: %w", v.dir, v.fail(err))
	}
	blocks := make(map[uint64][]byte, len(writes))
	logged := false
	for _, w := range writes {
		blocks[w.Index] = w.Data
		if _, ok := v.overlay[w.Index]; ok {
			logged = true
		}
	}
	if logged {
		if err := v.checkpointLocked(true); err != nil {
			return fmt.Errorf("write in place to volume %q: %w", v.dir, v.fail(err))
		}
	}
	if err := v.fsys.SyncDir(LabelDir, v.dir); err != nil {
		return fmt.Errorf("write in place to volume %q: sync directory: %w", v.dir, v.fail(err))
	}
	if err := v.writeBlocks(ctx, blocks); err != nil {
		return fmt.Errorf("write in place to volume %q: %w", v.dir, v.fail(err))
	}
	if err := v.data.Sync(); err != nil {
		return fmt.Errorf("write in place to volume %q: sync data file %q: %w", v.dir, v.path(dataName), v.fail(err))
	}
	return nil
}
