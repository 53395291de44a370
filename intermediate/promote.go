package intermediate

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"sort"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// Promotion (DESIGN.md §5 Promote) at the intermediate: a PromoteGroup
// entry raises the epoch of every registered volume of the group by one.
// The state machine checks every batch's epoch when it applies the batch's
// entry, so no batch of an old primary commits after the promotion: the
// group's valid counter at the promotion is final for the old primaries,
// and the secondaries hold the old primaries' whole state once they
// applied it. The promotion's point is that counter, unless a volume's
// copy window is open (its primary was in COPY or RESYNC: wire.Batch
// copying), whose image is torn inside it: the point is then just below
// the window, the last seq at which every volume is a consistent
// filesystem, and the batches after it are after regions, as for a
// promotion recorded late (below). The secondaries stay registered, so that the coordinator
// keeps validating while they drain; whoever promotes removes them
// afterwards (RemoveSecondary). Each promoted volume gets a new
// changed-since-promotion bitmap, for the failback of its old primary
// (failback.go).
//
// A group promoted without the intermediate (it was unreachable) is
// recorded late: its secondaries agreed on a validated point N, rolled
// forward to N and run as primaries at their known epoch + 1. A
// PromoteGroup entry with at_seq N (and from_epoch, the epoch they knew)
// then fences the old primaries and records the promotion at N. The old
// primaries may have committed batches after N; for each volume the
// result marks the regions of those the journal holds (after regions),
// which the new primary's resync overwrites, and says whether the journal
// still holds all of them. The result is computed from the replicated
// state and only returned, never stored: the same entry applied again, or
// the same promotion ID run again, computes it from the journal as it is
// then.

// Limits of a promotion.
const (
	// MaxPromotionID is the length limit of a promotion ID, in bytes.
	MaxPromotionID = 64
	// MaxPromotedBy is the length limit of a promotion's by text (who ran
	// it, where), in bytes.
	MaxPromotedBy = 256
	// MaxPromotions is the number of promotions a volume's history keeps:
	// the latest ones. A promotion ID that dropped out of every history
	// is no longer recognised, and running it again promotes again.
	MaxPromotions = 16
)

// Log attribute keys of promotions.
const (
	fsmKeyPromotion     = "promotion"
	fsmKeyBy            = "by"
	fsmKeyVolumes       = "volumes"
	fsmKeyLastSeq       = "last_seq"
	fsmKeyLastVolumeSeq = "last_volume_seq"
	fsmKeyAlready       = "already"
	fsmKeyAtSeq         = "at_seq"
	fsmKeyFromEpoch     = "from_epoch"
	fsmKeyAfterRegions  = "after_regions"
	fsmKeyComplete      = "journal_complete"
)

// PromotionInfo is one promotion in a volume's history.
type PromotionInfo struct {
	// ID names the promotion (the PromoteGroup entry's promotion ID).
	ID string
	// Epoch is the volume's epoch the promotion raised it to.
	Epoch uint64
	// Seq is the promotion's point: the group's valid counter at the
	// promotion, so that every batch of the volume under an older epoch
	// has a seq <= Seq; or, for a promotion recorded late (at_seq) or
	// made while a copy window was open (FSMStats.ConsistentSeq), the
	// earlier point its secondaries were promoted at, and the old
	// primary's batches up to LastSeq may follow it.
	Seq uint64
	// Time is when the leader proposed the promotion.
	Time time.Time
	// By says who ran the promotion, and where (free text).
	By string
	// LastSeq and LastVolumeSeq are the seq and volume seq of the volume's
	// last committed batch at the promotion (0 when it had none): the new
	// primary resumes after LastVolumeSeq.
	LastSeq, LastVolumeSeq uint64
}

// PromotedVolume is one volume of a promotion's result.
type PromotedVolume struct {
	// Name names the volume.
	Name string
	// Epoch is the volume's new epoch.
	Epoch uint64
	// LastSeq and LastVolumeSeq are the seq and volume seq of the volume's
	// last committed batch under its old epoch (0 when it had none).
	LastSeq, LastVolumeSeq uint64
	// BlockCount is the volume's size in blocks.
	BlockCount uint64
	// AfterRegions marks, in regions of wire.RegionBlocks blocks, the
	// regions written by the volume's batches under its old epochs with a
	// seq above the promotion's Seq (up to LastSeq) that the journal
	// holds: what the intermediate volume holds and a new primary rolled
	// forward to Seq lacks. Nil when there is no such batch (always for a
	// promotion at the valid counter, which no open copy window held
	// back).
	AfterRegions *blockdev.Bitmap
	// JournalComplete is set when the journal holds every such batch, so
	// AfterRegions is exact; when it is not, some were trimmed and every
	// region of the volume must be taken as changed.
	JournalComplete bool
}

// PromoteResult is what Apply returns for a PromoteGroup entry.
type PromoteResult struct {
	// Seq is the promotion's point: the group's consistent seq at the
	// promotion (the valid counter, after which no batch with an epoch
	// older than the promotion's commits, unless an open copy window held
	// it lower), or the entry's at_seq for a promotion recorded late.
	Seq uint64
	// Volumes are the volumes promoted, sorted by name (none when the
	// group had no registered volume).
	Volumes []PromotedVolume
	// Already is set when the promotion ID had been recorded before: the
	// entry changed nothing, and Seq and Volumes are what the promotion
	// recorded (the volumes whose history still holds it).
	Already bool
	// Err is a *wire.Error, and the entry changed nothing: BAD_REQUEST
	// for a malformed promotion ID or by text, an at_seq above the valid
	// counter or below the seq of a volume's last promotion, or when a
	// volume's epoch cannot be raised (it is at the largest epoch);
	// STALE_EPOCH (Epoch is the volume's epoch) when from_epoch is set and
	// a volume is at another epoch.
	Err error
}

// promotionRecord is one promotion in a volume's history.
type promotionRecord struct {
	id                     string
	epoch, seq             uint64
	time                   int64 // Unix ns
	by                     string
	lastSeq, lastVolumeSeq uint64
}

func (p promotionRecord) info() PromotionInfo {
	return PromotionInfo{ID: p.id, Epoch: p.epoch, Seq: p.seq, Time: time.Unix(0, p.time).UTC(), By: p.by,
		LastSeq: p.lastSeq, LastVolumeSeq: p.lastVolumeSeq}
}

// promotion returns the volume's promotion id, or nil when its history
// does not hold it.
func (r *volumeRecord) promotion(id string) *promotionRecord {
	for i := range r.promotions {
		if r.promotions[i].id == id {
			return &r.promotions[i]
		}
	}
	return nil
}

// checkPromotion reports whether id may name a promotion (1 to
// MaxPromotionID bytes of printable UTF-8) and by may describe it (at most
// MaxPromotedBy bytes). The error wraps wire.ErrBadRequest.
func checkPromotion(id, by string) error {
	switch {
	case id == "":
		return fmt.Errorf("%w: empty promotion id", wire.ErrBadRequest)
	case len(id) > MaxPromotionID:
		return fmt.Errorf("%w: promotion id of %d bytes, longer than %d", wire.ErrBadRequest, len(id), MaxPromotionID)
	case !utf8.ValidString(id):
		return fmt.Errorf("%w: promotion id %q is not UTF-8", wire.ErrBadRequest, id)
	case len(by) > MaxPromotedBy:
		return fmt.Errorf("%w: promotion's by text of %d bytes, longer than %d", wire.ErrBadRequest, len(by), MaxPromotedBy)
	}
	for i, r := range id {
		if !unicode.IsPrint(r) {
			return fmt.Errorf("%w: promotion id %q has the unprintable character %q at offset %d", wire.ErrBadRequest, id, r, i)
		}
	}
	return nil
}

// afterRegions returns the regions written by the volume's batches with a
// seq in (seq, lastSeq] that the journal holds, in regions of
// wire.RegionBlocks blocks (nil when there is none), and whether the
// journal holds every batch of the volume in that range. For a promotion
// at seq that found the volume's last batch at lastSeq, these are the
// batches its old primaries committed after the promotion's point (every
// later batch of the volume carries a newer epoch and a seq above
// lastSeq).
func (r *volumeRecord) afterRegions(seq, lastSeq uint64) (*blockdev.Bitmap, bool, error) {
	// The journal drops a volume's batches in seq order: it holds every
	// one after seq unless it dropped one after seq.
	complete := r.trimmedSeq <= seq || lastSeq <= seq
	var b *blockdev.Bitmap
	i := sort.Search(len(r.batches), func(i int) bool { return r.batches[i].GetSeq() > seq })
	for _, cb := range r.batches[i:] {
		if cb.GetSeq() > lastSeq {
			break
		}
		if b == nil {
			var err error
			if b, err = blockdev.NewBitmap(r.blockCount, changedRegionSize); err != nil {
				return nil, false, fmt.Errorf("after-promotion bitmap: %w", err)
			}
		}
		markChanged(b, cb.GetBatch())
	}
	return b, complete, nil
}

// promoteRefusalLocked returns why a new promotion at the point at (0:
// the valid counter) from the epoch from (0: any) is refused, or nil. The
// caller holds mu.
func (f *FSM) promoteRefusalLocked(names []string, at, from uint64) error {
	if at > f.st.seq {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "promote group: at seq %d is above the valid counter %d", at, f.st.seq)
	}
	if c, held := f.consistentLocked(); at > c {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST,
			"promote group: at seq %d is inside the open copy window of volume %q (its image is torn from seq %d on)", at, held, c+1)
	}
	for _, name := range names {
		rec := f.st.volumes[name]
		if from != 0 && rec.epoch != from {
			e := wire.Errorf(wire.ErrorCode_ERROR_CODE_STALE_EPOCH,
				"promote group: volume %q is at epoch %d, the promotion is from epoch %d: the group was promoted meanwhile", name, rec.epoch, from)
			e.Epoch = rec.epoch
			return e
		}
		if n := len(rec.promotions); at != 0 && n > 0 && at < rec.promotions[n-1].seq {
			last := rec.promotions[n-1]
			return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "promote group: at seq %d is below seq %d of promotion %q of volume %q",
				at, last.seq, last.id, name)
		}
		if rec.epoch == math.MaxUint64 {
			return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "promote group: volume %q is at the largest epoch", name)
		}
	}
	return nil
}

// applyPromoteGroup applies a PromoteGroup entry: unless some volume's
// history holds the promotion ID already, it raises the epoch of every
// registered volume by one, records the promotion at its point (at_seq,
// or the valid counter) in each volume's history (the latest
// MaxPromotions kept) and gives each volume a new changed-since-promotion
// bitmap marking the batches of the volume the journal holds. Either way
// each volume's result carries its after regions. Refusals are results,
// never fatal.
func (f *FSM) applyPromoteGroup(index uint64, pg *wire.PromoteGroup) any {
	res := &PromoteResult{}
	id, by, at := pg.GetPromotionId(), pg.GetBy(), pg.GetTimeUnixNano()
	atSeq, from := pg.GetAtSeq(), pg.GetFromEpoch()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.appliedIndex = index
	if err := checkPromotion(id, by); err != nil {
		res.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "promote group: %v", err)
		return res
	}
	names := slices.Sorted(maps.Keys(f.st.volumes))
	for _, name := range names {
		rec := f.st.volumes[name]
		p := rec.promotion(id)
		if p == nil {
			continue
		}
		after, complete, err := rec.afterRegions(p.seq, p.lastSeq)
		if err != nil {
			return &PromoteResult{Err: wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "promote group: volume %q: %v", name, err)}
		}
		res.Already, res.Seq = true, p.seq
		res.Volumes = append(res.Volumes, PromotedVolume{Name: name, Epoch: p.epoch, LastSeq: p.lastSeq,
			LastVolumeSeq: p.lastVolumeSeq, BlockCount: rec.blockCount, AfterRegions: after, JournalComplete: complete})
	}
	if res.Already {
		f.log.Info("promotion already recorded", fsmKeyPromotion, id, fsmKeySeq, res.Seq, fsmKeyVolumes, len(res.Volumes),
			fsmKeyIndex, index, fsmKeyAlready, true)
		return res
	}
	if err := f.promoteRefusalLocked(names, atSeq, from); err != nil {
		res.Err = err
		return res
	}
	// The point: the valid counter, unless a volume's copy window is open
	// (its primary was copying or resynchronising, so its image is torn
	// from the window's first batch on): then just below the window, and
	// every volume's batches after it are after regions, which the new
	// primaries' resyncs overwrite, as for a promotion recorded late.
	res.Seq, _ = f.consistentLocked()
	if atSeq != 0 {
		res.Seq = atSeq
	}
	changed := make(map[string]*blockdev.Bitmap, len(names))
	for _, name := range names {
		rec := f.st.volumes[name]
		b, err := rec.newChanged()
		if err != nil {
			return &PromoteResult{Err: wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "promote group: volume %q: %v", name, err)}
		}
		changed[name] = b
		after, complete, err := rec.afterRegions(res.Seq, rec.lastSeq)
		if err != nil {
			return &PromoteResult{Err: wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "promote group: volume %q: %v", name, err)}
		}
		res.Volumes = append(res.Volumes, PromotedVolume{Name: name, LastSeq: rec.lastSeq, LastVolumeSeq: rec.lastVolumeSeq,
			BlockCount: rec.blockCount, AfterRegions: after, JournalComplete: complete})
	}
	for i, name := range names {
		rec := f.st.volumes[name]
		prev := rec.epoch
		rec.epoch++
		rec.changed = changed[name]
		rec.promotions = append(rec.promotions, promotionRecord{id: id, epoch: rec.epoch, seq: res.Seq, time: at, by: by,
			lastSeq: rec.lastSeq, lastVolumeSeq: rec.lastVolumeSeq})
		if n := len(rec.promotions); n > MaxPromotions {
			// A new array: a snapshot may share the old one.
			rec.promotions = slices.Clone(rec.promotions[n-MaxPromotions:])
		}
		v := &res.Volumes[i]
		v.Epoch = rec.epoch
		var after uint64
		if v.AfterRegions != nil {
			after = v.AfterRegions.Count()
		}
		f.log.Info("promoted volume", fsmKeyPromotion, id, fsmKeyVolume, name, fsmKeyEpoch, rec.epoch, fsmKeyPrevEpoch, prev,
			fsmKeyLastSeq, rec.lastSeq, fsmKeyLastVolumeSeq, rec.lastVolumeSeq, fsmKeyRegions, rec.changed.Count(),
			fsmKeyAfterRegions, after, fsmKeyComplete, v.JournalComplete, fsmKeyIndex, index)
	}
	if len(names) > 0 {
		f.broadcastLocked()
	}
	f.log.Info("promoted group", fsmKeyPromotion, id, fsmKeySeq, res.Seq, fsmKeyAtSeq, atSeq, fsmKeyFromEpoch, from,
		fsmKeyVolumes, len(names), fsmKeyBy, by, fsmKeyIndex, index, fsmKeyAlready, false)
	return res
}

// Promotions returns the promotion history of a volume, oldest first (nil
// for a volume never promoted or not registered).
func (f *FSM) Promotions(volume string) []PromotionInfo {
	f.mu.RLock()
	defer f.mu.RUnlock()
	rec := f.st.volumes[volume]
	if rec == nil || len(rec.promotions) == 0 {
		return nil
	}
	out := make([]PromotionInfo, len(rec.promotions))
	for i, p := range rec.promotions {
		out[i] = p.info()
	}
	return out
}

// Promote fences every primary of the group (a PromoteGroup entry; leader
// only) and answers the promotion's seq and each volume's new epoch and
// after regions; see wire.PromoteRequest. Running the same promotion ID
// again changes nothing and answers what the first run recorded, with
// already set.
func (s *service) Promote(ctx context.Context, req *wire.PromoteRequest) (*wire.PromoteResponse, error) {
	n := s.n
	if err := s.checkGroup(req.GetGroup()); err != nil {
		return nil, err
	}
	id, by := req.GetPromotionId(), req.GetBy()
	if err := checkPromotion(id, by); err != nil {
		return nil, wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "promote: %v", err)
	}
	if err := n.authorize(ctx, "Promote", "an admin grant, or an admin's signature of the promotion", allowAdmin(n.signedByAdmin(req))); err != nil {
		return nil, err
	}
	if err := s.checkFailed(); err != nil {
		return nil, err
	}
	if !n.IsLeader() {
		return nil, n.notLeader("promotion goes to the leader")
	}
	res, err := n.apply(ctx, &wire.Entry{Op: &wire.Entry_PromoteGroup{PromoteGroup: &wire.PromoteGroup{
		PromotionId: id, By: by, TimeUnixNano: time.Now().UnixNano(), AtSeq: req.GetAtSeq(), FromEpoch: req.GetFromEpoch(),
	}}})
	if err != nil {
		return nil, err
	}
	pr, _ := res.(*PromoteResult)
	if pr == nil {
		return nil, fmt.Errorf("promote %q: unexpected state machine response %T", id, res)
	}
	if pr.Err != nil {
		return nil, pr.Err
	}
	resp := &wire.PromoteResponse{Seq: pr.Seq, Already: pr.Already}
	for _, v := range pr.Volumes {
		pv := &wire.PromotedVolume{Name: v.Name, Epoch: v.Epoch, LastSeq: v.LastSeq, LastVolumeSeq: v.LastVolumeSeq,
			BlockCount: v.BlockCount, JournalComplete: v.JournalComplete}
		if v.AfterRegions != nil {
			if pv.AfterRegions, err = v.AfterRegions.MarshalBinary(); err != nil {
				return nil, fmt.Errorf("promote %q: encode the after regions of volume %q: %w", id, v.Name, err)
			}
		}
		resp.Volumes = append(resp.Volumes, pv)
	}
	// The state machine logged the promotion, on every node.
	return resp, nil
}
