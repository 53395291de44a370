package intermediate

import (
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
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
// applied it. The secondaries stay registered, so that the coordinator
// keeps validating while they drain; whoever promotes removes them
// afterwards (RemoveSecondary). Each promoted volume gets a new
// changed-since-promotion bitmap, for the failback of its old primary
// (failback.go).

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
)

// PromotionInfo is one promotion in a volume's history.
type PromotionInfo struct {
	// ID names the promotion (the PromoteGroup entry's promotion ID).
	ID string
	// Epoch is the volume's epoch the promotion raised it to.
	Epoch uint64
	// Seq is the group's valid counter at the promotion: every batch of
	// the volume under an older epoch has a seq <= Seq.
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
}

// PromoteResult is what Apply returns for a PromoteGroup entry.
type PromoteResult struct {
	// Seq is the group's valid counter at the promotion: no batch with an
	// epoch older than the promotion's commits after it.
	Seq uint64
	// Volumes are the volumes promoted, sorted by name (none when the
	// group had no registered volume).
	Volumes []PromotedVolume
	// Already is set when the promotion ID had been recorded before: the
	// entry changed nothing, and Seq and Volumes are what the promotion
	// recorded (the volumes whose history still holds it).
	Already bool
	// Err is a *wire.Error BAD_REQUEST for a malformed promotion ID or by
	// text, or when a volume's epoch cannot be raised (it is at the
	// largest epoch); the entry then changed nothing.
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

// applyPromoteGroup applies a PromoteGroup entry: unless some volume's
// history holds the promotion ID already, it raises the epoch of every
// registered volume by one, records the promotion in each volume's history
// (the latest MaxPromotions kept) and gives each volume a new
// changed-since-promotion bitmap marking the batches of the volume the
// journal holds. Refusals are results, never fatal.
func (f *FSM) applyPromoteGroup(index uint64, pg *wire.PromoteGroup) any {
	res := &PromoteResult{}
	id, by, at := pg.GetPromotionId(), pg.GetBy(), pg.GetTimeUnixNano()
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
		if p := rec.promotion(id); p != nil {
			res.Already, res.Seq = true, p.seq
			res.Volumes = append(res.Volumes, PromotedVolume{Name: name, Epoch: p.epoch, LastSeq: p.lastSeq,
				LastVolumeSeq: p.lastVolumeSeq, BlockCount: rec.blockCount})
		}
	}
	if res.Already {
		f.log.Info("promotion already recorded", fsmKeyPromotion, id, fsmKeySeq, res.Seq, fsmKeyVolumes, len(res.Volumes),
			fsmKeyIndex, index, fsmKeyAlready, true)
		return res
	}
	changed := make(map[string]*blockdev.Bitmap, len(names))
	for _, name := range names {
		rec := f.st.volumes[name]
		if rec.epoch == math.MaxUint64 {
			res.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "promote group: volume %q is at the largest epoch", name)
			return res
		}
		b, err := rec.newChanged()
		if err != nil {
			res.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "promote group: volume %q: %v", name, err)
			return res
		}
		changed[name] = b
	}
	res.Seq = f.st.seq
	for _, name := range names {
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
		res.Volumes = append(res.Volumes, PromotedVolume{Name: name, Epoch: rec.epoch, LastSeq: rec.lastSeq,
			LastVolumeSeq: rec.lastVolumeSeq, BlockCount: rec.blockCount})
		f.log.Info("promoted volume", fsmKeyPromotion, id, fsmKeyVolume, name, fsmKeyEpoch, rec.epoch, fsmKeyPrevEpoch, prev,
			fsmKeyLastSeq, rec.lastSeq, fsmKeyLastVolumeSeq, rec.lastVolumeSeq, fsmKeyRegions, rec.changed.Count(), fsmKeyIndex, index)
	}
	if len(names) > 0 {
		f.broadcastLocked()
	}
	f.log.Info("promoted group", fsmKeyPromotion, id, fsmKeySeq, res.Seq, fsmKeyVolumes, len(names), fsmKeyBy, by,
		fsmKeyIndex, index, fsmKeyAlready, false)
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
// only) and answers the promotion's seq and each volume's new epoch; see
// wire.PromoteRequest. Running the same promotion ID again changes nothing
// and answers what the first run recorded, with already set.
func (s *service) Promote(ctx context.Context, req *wire.PromoteRequest) (*wire.PromoteResponse, error) {
	n := s.n
	if err := s.checkGroup(req.GetGroup()); err != nil {
		return nil, err
	}
	id, by := req.GetPromotionId(), req.GetBy()
	if err := checkPromotion(id, by); err != nil {
		return nil, wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "promote: %v", err)
	}
	if err := s.checkFailed(); err != nil {
		return nil, err
	}
	if !n.IsLeader() {
		return nil, n.notLeader("promotion goes to the leader")
	}
	res, err := n.apply(ctx, &wire.Entry{Op: &wire.Entry_PromoteGroup{PromoteGroup: &wire.PromoteGroup{
		PromotionId: id, By: by, TimeUnixNano: time.Now().UnixNano(),
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
		resp.Volumes = append(resp.Volumes, &wire.PromotedVolume{Name: v.Name, Epoch: v.Epoch, LastSeq: v.LastSeq,
			LastVolumeSeq: v.LastVolumeSeq, BlockCount: v.BlockCount})
	}
	// The state machine logged the promotion, on every node.
	return resp, nil
}
