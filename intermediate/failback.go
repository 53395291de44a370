package intermediate

// Failback at the intermediate: an old primary, fenced by its volume's last
// promotion, becomes a secondary of the new primary without copying the
// whole volume.
//
// Each promoted volume has a changed-since-promotion bitmap (volumeRecord.
// changed, regions of wire.RegionBlocks blocks, the secondaries' region
// size). The PromoteGroup entry creates it, replacing the previous one, with
// the regions of every batch of the volume the journal holds at that entry
// marked; from then on every batch of the volume committed marks its
// regions. Let P be the committed seq at the PromoteGroup entry (at or
// above the promotion's seq, which is below it for a promotion recorded
// late) and F the committed seq at a FailbackSecondary entry. The old
// primary's volume then differs from the intermediate volume at F only in
// regions
//
//  1. written by batches of the volume committed after P: marked as they
//     commit;
//  2. written by batches committed at or before P that the old primary may
//     not have applied locally: the leader never trims the journal past
//     the durable seq its primary reported, so those batches were in the
//     journal at the promotion, and are marked;
//  3. that the old primary changed locally without committing them (its
//     writes after it was fenced, or those that never reached the
//     intermediate): its primary bitmap, which the caller uploads.
//
// Every other block holds the same data on both (the old primary applied
// every batch of the volume the journal had dropped by P).
//
// FailbackSecondary sets the secondary's intermediate bitmap to the union,
// with its marked seq and failback seq at F (at least 1, so that the
// coordinator, which clears a bitmap once the secondary applied its marked
// seq, never clears it for a secondary that applied nothing). The
// secondary registered first (its hello, applied 0), so the journal keeps
// every batch of the volume from then on, and at F the volume's trimmed seq
// T is at most F. ReadRegions then streams the union's regions from the
// intermediate volume (fuzzy, read at or after F) with redo_after = T, and
// the caller applies the journal's batches of the volume in (T, end]:
// those at or below F are in the union (each was in the journal at P, or
// came after P), those after F are redone whole, so the old primary's
// volume becomes exactly the intermediate volume at end. ReadRegions
// accepts the secondary as if it had applied F (see readregions.go).
//
// Only the latest promotion's old primary can fail back this way: an
// earlier one may lack batches that a later promotion's bitmap does not
// mark (a failback cannot tell which promotion fenced the caller).
//
// Like the rest of the state machine, all of it is replicated state,
// deterministic, and in snapshots from version 6 on.

import (
	"context"
	"fmt"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// Log attribute keys of failbacks.
const (
	fsmKeyFailbackSeq = "failback_seq"
	fsmKeyUploaded    = "uploaded_regions"
	fsmKeyResumed     = "resumed"
	fsmKeyPromoSeq    = "promotion_seq"
)

// changedRegionSize is the region size, in bytes, of the
// changed-since-promotion bitmaps: the secondaries' regions.
const changedRegionSize = wire.RegionBlocks * blockdev.BlockSize

// FailbackResult is what Apply returns for a FailbackSecondary entry.
type FailbackResult struct {
	// Secondary is the secondary's record after the entry (zero when it
	// was refused).
	Secondary SecondaryInfo
	// Regions is the number of regions of the secondary's intermediate
	// bitmap after the entry.
	Regions uint64
	// PromotionSeq and Epoch are the seq and epoch of the volume's last
	// promotion.
	PromotionSeq, Epoch uint64
	// Resumed is set when the secondary was suspended.
	Resumed bool
	// Err is a *wire.Error, and the entry changed nothing: BAD_REQUEST for
	// a malformed ID or volume name, a bitmap that does not decode or
	// covers another block count, or a volume never promoted;
	// UNKNOWN_VOLUME for a volume or a secondary not registered;
	// VOLUME_MISMATCH for a secondary registered for another volume.
	Err error
}

// newChanged returns a new changed-since-promotion bitmap of the volume,
// with the regions of the volume's batches in the journal marked.
func (r *volumeRecord) newChanged() (*blockdev.Bitmap, error) {
	b, err := blockdev.NewBitmap(r.blockCount, changedRegionSize)
	if err != nil {
		return nil, fmt.Errorf("changed-since-promotion bitmap: %w", err)
	}
	for _, cb := range r.batches {
		markChanged(b, cb.GetBatch())
	}
	return b, nil
}

// markChanged marks the regions of a checked batch's blocks in a
// changed-since-promotion bitmap.
func markChanged(b *blockdev.Bitmap, batch *wire.Batch) {
	for _, blk := range batch.GetBlocks() {
		b.SetBlock(blk.GetIndex())
	}
}

// bitmapRuns returns the regions set in b as runs of consecutive regions,
// in increasing order, each as long as possible.
func bitmapRuns(b *blockdev.Bitmap) []RegionRange {
	var out []RegionRange
	for r := range b.Iterate {
		if k := len(out); k > 0 && out[k-1].First+out[k-1].Count == r {
			out[k-1].Count++
		} else {
			out = append(out, RegionRange{First: r, Count: 1})
		}
	}
	return out
}

// decodeFailbackBitmap decodes the primary bitmap a failback uploads for a
// volume of blocks blocks and returns it in regions of wire.RegionBlocks
// blocks: a region of the result is set when one of its blocks is in a set
// region of the upload. Empty bytes give nil (nothing uploaded). The error
// wraps wire.ErrBadRequest and names the field.
func decodeFailbackBitmap(p []byte, blocks uint64) (*blockdev.Bitmap, error) {
	if len(p) == 0 {
		return nil, nil
	}
	up := new(blockdev.Bitmap)
	if err := up.UnmarshalBinary(p); err != nil {
		return nil, fmt.Errorf("%w: bitmap: %w", wire.ErrBadRequest, err)
	}
	if up.BlockCount() != blocks {
		return nil, fmt.Errorf("%w: bitmap: it covers %d blocks, the volume has %d", wire.ErrBadRequest, up.BlockCount(), blocks)
	}
	if up.RegionSize() == changedRegionSize {
		return up, nil
	}
	out, err := blockdev.NewBitmap(blocks, changedRegionSize)
	if err != nil {
		return nil, fmt.Errorf("%w: bitmap: %w", wire.ErrBadRequest, err)
	}
	for _, run := range bitmapRuns(up) {
		first, _ := up.RegionBlocks(run.First)
		last, n := up.RegionBlocks(run.First + run.Count - 1)
		out.SetRange(first, last+n-first)
	}
	return out, nil
}

// failbackRefusalLocked returns why a failback of secondary id for volume
// is refused before its bitmap is looked at, or nil. The caller holds mu.
func (f *FSM) failbackRefusalLocked(id, volume string) error {
	if err := checkSecondaryID(id); err != nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "failback: secondary: %v", err)
	}
	if err := wire.CheckVolumeName(volume); err != nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "failback of secondary %q: volume: %v", id, err)
	}
	rec, s := f.st.volumes[volume], f.st.secondaries[id]
	switch {
	case rec == nil:
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "failback of secondary %q: volume %q is not registered", id, volume)
	case s == nil:
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME,
			"failback: secondary %q is not registered: register the secondary first (say HELLO on its Coordinate stream, applied 0)", id)
	case s.volume != volume:
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_VOLUME_MISMATCH, "failback: secondary %q is registered for volume %q, not %q", id, s.volume, volume)
	case rec.changed == nil:
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "failback of secondary %q: volume %q never promoted: nothing to fail back", id, volume)
	}
	return nil
}

// checkFailback returns why a failback of secondary id for volume would be
// refused now, before its bitmap is looked at, or nil.
func (f *FSM) checkFailback(id, volume string) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.failbackRefusalLocked(id, volume)
}

// applyFailbackSecondary sets a registered secondary's intermediate bitmap
// to its volume's changed-since-promotion bitmap united with the uploaded
// one, replacing what it held, with its marked seq and failback seq at the
// committed seq (at least 1), and resumes it if it was suspended.
// Refusals are results, never fatal.
func (f *FSM) applyFailbackSecondary(index uint64, fe *wire.FailbackSecondary) any {
	res := &FailbackResult{}
	id, volume := fe.GetId(), fe.GetVolume()
	// Decide and build the bitmap under the read lock: only this goroutine
	// changes the state, and readers go on meanwhile.
	f.mu.RLock()
	err := f.failbackRefusalLocked(id, volume)
	var regions regionSet
	var uploaded uint64
	if err == nil {
		rec := f.st.volumes[volume]
		up, derr := decodeFailbackBitmap(fe.GetBitmap(), rec.blockCount)
		if derr != nil {
			err = wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "failback of secondary %q: %v", id, derr)
		} else {
			union := rec.changed.Clone()
			if up != nil {
				uploaded = up.Count()
				if oerr := union.Or(up); oerr != nil {
					err = wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "failback of secondary %q: bitmap: %v", id, oerr)
				}
			}
			regions = regionSetOf(bitmapRuns(union))
		}
	}
	f.mu.RUnlock()

	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.appliedIndex = index
	if err != nil {
		res.Err = err
		return res
	}
	rec, s := f.st.volumes[volume], f.st.secondaries[id]
	last := rec.promotions[len(rec.promotions)-1]
	res.Resumed = s.suspended
	s.suspended = false
	s.regions = regions
	s.failbackSeq = max(f.st.seq, 1)
	s.markedSeq = s.failbackSeq
	res.Secondary, res.Regions, res.PromotionSeq, res.Epoch = s.info(), s.regions.count, last.seq, last.epoch
	f.broadcastLocked()
	f.log.Info("failback: set the intermediate bitmap of a secondary", fsmKeySecondary, id, fsmKeyVolume, volume,
		fsmKeyRegions, s.regions.count, fsmKeyUploaded, uploaded, fsmKeyFailbackSeq, s.failbackSeq,
		fsmKeyPromotion, last.id, fsmKeyPromoSeq, last.seq, fsmKeyResumed, res.Resumed, fsmKeyIndex, index)
	return res
}

// ChangedSincePromotion returns the changed-since-promotion bitmap of a
// volume as runs of regions (of wire.RegionBlocks blocks) in increasing
// order; ok is false when the volume is not registered or was never
// promoted.
func (f *FSM) ChangedSincePromotion(volume string) (ranges []RegionRange, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	rec := f.st.volumes[volume]
	if rec == nil || rec.changed == nil {
		return nil, false
	}
	return bitmapRuns(rec.changed), true
}

// Failback sets the intermediate bitmap of a registered secondary that
// starts from the volume of an old primary (a FailbackSecondary entry;
// leader only); see wire.FailbackRequest. The uploaded bitmap is checked
// and converted to the intermediate's regions before it goes into the log.
func (s *service) Failback(ctx context.Context, req *wire.FailbackRequest) (*wire.FailbackResponse, error) {
	n := s.n
	if err := s.checkGroup(req.GetGroup()); err != nil {
		return nil, err
	}
	id, volume := req.GetSecondary(), req.GetVolume()
	if err := checkSecondaryID(id); err != nil {
		return nil, wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "failback: secondary: %v", err)
	}
	if err := wire.CheckVolumeName(volume); err != nil {
		return nil, wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "failback of secondary %q: volume: %v", id, err)
	}
	if err := n.authorize(ctx, "Failback", "an admin grant or "+needVolume(volume, auth.RoleSecondary),
		allowAdmin(allowVolume(volume, auth.RoleSecondary))); err != nil {
		return nil, err
	}
	if err := s.checkFailed(); err != nil {
		return nil, err
	}
	if !n.IsLeader() {
		return nil, n.notLeader("failback goes to the leader")
	}
	// Refuse what the state machine would refuse without logging the
	// bitmap; it decides again when it applies the entry.
	if err := n.fsm.checkFailback(id, volume); err != nil {
		return nil, err
	}
	vol, _ := n.fsm.Volume(volume)
	bitmap := req.GetBitmap()
	if len(bitmap) > 0 {
		up, err := decodeFailbackBitmap(bitmap, vol.BlockCount)
		if err != nil {
			return nil, wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "failback of secondary %q: %v", id, err)
		}
		if bitmap, err = up.MarshalBinary(); err != nil {
			return nil, fmt.Errorf("failback of secondary %q: encode the bitmap: %w", id, err)
		}
	}
	res, err := n.apply(ctx, &wire.Entry{Op: &wire.Entry_FailbackSecondary{FailbackSecondary: &wire.FailbackSecondary{
		Id: id, Volume: volume, Bitmap: bitmap,
	}}})
	if err != nil {
		return nil, err
	}
	fr, _ := res.(*FailbackResult)
	if fr == nil {
		return nil, fmt.Errorf("failback of secondary %q: unexpected state machine response %T", id, res)
	}
	if fr.Err != nil {
		return nil, fr.Err
	}
	// The state machine logged the failback, on every node.
	return &wire.FailbackResponse{Regions: fr.Regions, PromotionSeq: fr.PromotionSeq, Epoch: fr.Epoch}, nil
}
