package intermediate

// Suspension of a lagging secondary and its intermediate bitmap.
//
// A registered secondary holds journal trimming at its applied point (see
// secondaryTrimPoint). When the journal would outgrow its budget because a
// secondary lags or is down, the leader's trimmer suspends it (a
// SuspendSecondary entry recording applied_seq, a lower bound of what the
// secondary applied): from then on it bounds neither trimming nor the
// validated point, and every batch of its volume that a TrimJournal entry
// drops with a seq above that applied_seq marks the regions of its blocks
// (wire.RegionBlocks blocks each) in the secondary's intermediate bitmap.
// Marking a batch the secondary did apply costs a few regions copied for
// nothing; missing one would lose data, so the trimmer errs low.
//
// The secondary's next HELLO re-registers it (a RegisterSecondary entry),
// which ends the suspension; the bitmap stays. The secondary learns from
// CoordinateOpened.resync that it must resynchronise: ReadRegions streams
// the marked regions from the intermediate volume, and the journal holds
// every batch after the volume's trimmed seq (redo_after), because the
// resumed secondary holds trimming at its applied point again. Once it
// applied a point at or above the bitmap's marked seq, the coordinator
// clears the bitmap (ClearSecondaryBitmap).
//
// A failback (failback.go) sets the bitmap too, for a secondary that starts
// from an old primary's volume instead of a replica; ReadRegions and the
// clearing work the same way.
//
// Everything here is replicated state, changed only by Apply (so on every
// node alike) and carried by snapshots from version 4 on (the failback seq
// from version 6 on).

import (
	"fmt"
	"maps"
	"math/bits"
	"slices"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// RegionRange is a run of consecutive regions of a secondary's
// intermediate bitmap: regions First to First+Count-1. Region r holds the
// blocks r*wire.RegionBlocks to (r+1)*wire.RegionBlocks-1 (the last region
// of a volume may be shorter).
type RegionRange struct {
	First, Count uint64
}

// regionSet is a sparse bitmap of region indices: 64 regions per word,
// only the words with a region set are kept (a volume may have 2^36
// regions).
type regionSet struct {
	words map[uint64]uint64
	count uint64 // regions set
}

// mark sets region r.
func (s *regionSet) mark(r uint64) {
	if s.words == nil {
		s.words = map[uint64]uint64{}
	}
	w, bit := r/64, uint64(1)<<(r%64)
	if s.words[w]&bit == 0 {
		s.words[w] |= bit
		s.count++
	}
}

// has reports whether region r is set.
func (s *regionSet) has(r uint64) bool {
	return s.words[r/64]&(uint64(1)<<(r%64)) != 0
}

// clear empties the set.
func (s *regionSet) clear() { *s = regionSet{} }

// ranges returns the set's regions as runs of consecutive regions, in
// increasing order, each as long as possible.
func (s *regionSet) ranges() []RegionRange {
	var out []RegionRange
	for _, w := range slices.Sorted(maps.Keys(s.words)) {
		word := s.words[w]
		for word != 0 {
			lo := uint64(bits.TrailingZeros64(word))
			n := uint64(bits.TrailingZeros64(^(word >> lo)))
			first := w*64 + lo
			if k := len(out); k > 0 && out[k-1].First+out[k-1].Count == first {
				out[k-1].Count += n
			} else {
				out = append(out, RegionRange{First: first, Count: n})
			}
			if lo+n == 64 {
				break
			}
			word &^= (uint64(1)<<n - 1) << lo
		}
	}
	return out
}

// regionSetOf builds a set from runs of regions that do not overlap.
func regionSetOf(rs []RegionRange) regionSet {
	var s regionSet
	for _, r := range rs {
		for first, end := r.First, r.First+r.Count; first < end; {
			w, lo := first/64, first%64
			n := min(64-lo, end-first)
			bitsOf := ^uint64(0)
			if n < 64 {
				bitsOf = (uint64(1)<<n - 1) << lo
			}
			if s.words == nil {
				s.words = map[uint64]uint64{}
			}
			s.count += uint64(bits.OnesCount64(bitsOf &^ s.words[w]))
			s.words[w] |= bitsOf
			first += n
		}
	}
	return s
}

// regionCount returns the number of regions of a volume of blocks blocks.
func regionCount(blocks uint64) uint64 {
	return (blocks + wire.RegionBlocks - 1) / wire.RegionBlocks
}

// secondaryRecord is the replicated state of one registered secondary.
type secondaryRecord struct {
	id, volume, addr string
	// coveredFrom is the volume's trimmed seq when the secondary
	// registered: the journal had dropped the batches up to it already, so
	// neither the journal nor the bitmap covers them for this secondary.
	coveredFrom uint64
	// suspended: it bounds neither trimming nor the validated point, and
	// the batches of its volume dropped with seq > resumeFrom mark regions.
	suspended  bool
	resumeFrom uint64
	// regions is the intermediate bitmap; markedSeq the highest seq of a
	// batch that marked it, or the failback seq if higher (0 when the
	// bitmap is empty and no failback set it): the secondary needs the
	// bitmap until it applied a point at or above markedSeq.
	regions   regionSet
	markedSeq uint64
	// failbackSeq is set by a FailbackSecondary entry (the committed seq
	// then, at least 1) and cleared with the bitmap: the secondary starts
	// from an old primary's volume, which differs from the intermediate
	// volume at failbackSeq only in the bitmap's regions.
	failbackSeq uint64
}

func (s *secondaryRecord) info() SecondaryInfo {
	return SecondaryInfo{ID: s.id, Volume: s.volume, Addr: s.addr, CoveredFrom: s.coveredFrom, Suspended: s.suspended,
		ResumeFrom: s.resumeFrom, MarkedSeq: s.markedSeq, DirtyRegions: s.regions.count, FailbackSeq: s.failbackSeq}
}

// SuspendResult is what Apply returns for a SuspendSecondary or a
// ClearSecondaryBitmap entry.
type SuspendResult struct {
	// Secondary is the secondary's record after the entry (zero when it
	// is not registered).
	Secondary SecondaryInfo
	// Suspended is set when a SuspendSecondary suspended a secondary that
	// was not suspended; Cleared when a ClearSecondaryBitmap emptied a
	// bitmap.
	Suspended, Cleared bool
	// Err is a *wire.Error UNKNOWN_VOLUME when the secondary is not
	// registered.
	Err error
}

// applySuspendSecondary suspends a secondary. Suspending a suspended one
// keeps the lower resume point (a lower one only marks more). Refusals are
// results, never fatal.
func (f *FSM) applySuspendSecondary(index uint64, ss *wire.SuspendSecondary) any {
	res := &SuspendResult{}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.appliedIndex = index
	s := f.st.secondaries[ss.GetId()]
	if s == nil {
		res.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "suspend secondary %q: not registered", ss.GetId())
		return res
	}
	switch {
	case !s.suspended:
		// A secondary cannot have applied above the counter; a claim that
		// it did is no reason to mark less.
		s.suspended, s.resumeFrom = true, min(ss.GetAppliedSeq(), f.st.seq)
		res.Suspended = true
		f.log.Warn("suspended secondary", fsmKeySecondary, s.id, fsmKeyVolume, s.volume, fsmKeyAppliedSeq, s.resumeFrom, fsmKeyIndex, index)
		f.broadcastLocked()
	case ss.GetAppliedSeq() < s.resumeFrom:
		s.resumeFrom = ss.GetAppliedSeq()
		f.broadcastLocked()
	}
	res.Secondary = s.info()
	return res
}

// applyClearSecondaryBitmap empties a secondary's bitmap (and ends its
// failback) if its marked seq is at most up_to_seq.
func (f *FSM) applyClearSecondaryBitmap(index uint64, cb *wire.ClearSecondaryBitmap) any {
	res := &SuspendResult{}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.st.appliedIndex = index
	s := f.st.secondaries[cb.GetId()]
	if s == nil {
		res.Err = wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "clear the bitmap of secondary %q: not registered", cb.GetId())
		return res
	}
	if s.markedSeq != 0 && s.markedSeq <= cb.GetUpToSeq() {
		f.log.Info("cleared the intermediate bitmap of a secondary", fsmKeySecondary, s.id, fsmKeyRegions, s.regions.count,
			fsmKeyMarkedSeq, s.markedSeq, fsmKeyFailbackSeq, s.failbackSeq, fsmKeyIndex, index)
		s.regions.clear()
		s.markedSeq, s.failbackSeq = 0, 0
		res.Cleared = true
		f.broadcastLocked()
	}
	res.Secondary = s.info()
	return res
}

// suspendedOfLocked returns the suspended secondaries by volume, or nil when
// there is none. The caller holds mu.
func (f *FSM) suspendedOfLocked() map[string][]*secondaryRecord {
	var out map[string][]*secondaryRecord
	for _, id := range slices.Sorted(maps.Keys(f.st.secondaries)) {
		if s := f.st.secondaries[id]; s.suspended {
			if out == nil {
				out = map[string][]*secondaryRecord{}
			}
			out[s.volume] = append(out[s.volume], s)
		}
	}
	return out
}

// markDropped marks the regions of a batch the journal drops in the
// bitmaps of the suspended secondaries of its volume that may lack it. The
// caller holds mu.
func markDropped(cb *wire.CommittedBatch, suspended []*secondaryRecord) {
	for _, s := range suspended {
		if cb.GetSeq() <= s.resumeFrom {
			continue
		}
		for _, b := range cb.GetBatch().GetBlocks() {
			s.regions.mark(b.GetIndex() / wire.RegionBlocks)
		}
		s.markedSeq = max(s.markedSeq, cb.GetSeq())
	}
}

// SecondaryBitmap returns the intermediate bitmap of secondary id as runs
// of regions in increasing order, and its marked seq (see
// SecondaryInfo.MarkedSeq); ok is false when id is not registered.
func (f *FSM) SecondaryBitmap(id string) (ranges []RegionRange, markedSeq uint64, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.st.secondaries[id]
	if s == nil {
		return nil, 0, false
	}
	return s.regions.ranges(), s.markedSeq, true
}

// regionsRead is what ReadRegions reads under the state machine's lock.
type regionsRead struct {
	info       SecondaryInfo
	blockCount uint64
	ranges     []RegionRange
	markedSeq  uint64
	trimmedSeq uint64 // the volume's: redo_after
	committed  uint64 // the group's committed seq: start_seq
}

// regionsToRead takes, at one instant of the state, a secondary's bitmap
// with the volume's trimmed seq and the committed seq: every batch of the
// volume at or below the trimmed seq that the secondary lacks (if it
// applied at least CoveredFrom, or a failback set the bitmap) touched only
// the regions of the bitmap.
func (f *FSM) regionsToRead(id string) (regionsRead, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.st.secondaries[id]
	if s == nil {
		return regionsRead{}, wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "read regions: secondary %q is not registered", id)
	}
	rec := f.st.volumes[s.volume]
	if rec == nil {
		return regionsRead{}, fmt.Errorf("read regions: secondary %q follows volume %q, which is not registered", id, s.volume)
	}
	return regionsRead{info: s.info(), blockCount: rec.blockCount, ranges: s.regions.ranges(), markedSeq: s.markedSeq,
		trimmedSeq: rec.trimmedSeq, committed: f.st.seq}, nil
}
