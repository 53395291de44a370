package secondary

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"time"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// StateResync is the state a secondary reports while it resynchronises
// from the intermediate volume after the journal dropped batches it lacked.
const StateResync = "RESYNC"

// resyncChunk is the number of blocks a resync copies from the replica
// per batch.
const resyncChunk = 256

// pendingResync is a resync staged aside, waiting for a validated point at
// or above its seq.
type pendingResync struct {
	at      uint64              // the aside replica is the volume at this seq
	dir     string              // the sealed aside replica
	changed map[uint64]struct{} // blocks the resync wrote over the replica's
}

// resync builds, aside, the replica as the volume is at some seq E: a copy
// of the current replica, the regions of the secondary's intermediate
// bitmap written over it (ReadRegions), and the volume's batches from the
// journal applied on top up to E (see wire.ReadVolumeResponse.redo_after
// for why that is exact). The current replica keeps serving its applied
// point meanwhile; the applier installs the aside one, in one atomic step
// for readers, at the first validated point at or above E. It holds
// applyMu throughout, so the replica it copies does not move.
func (s *Secondary) resync(ctx context.Context) (uint64, error) {
	s.setState(StateResync, "the journal dropped batches this secondary lacks: copying the regions of its intermediate bitmap")
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	start := time.Now()
	cur := s.rep()
	blocks := cur.BlockCount()
	rdir := filepath.Join(s.cfg.Dir, replicaDirName)
	b, err := BuildReplica(rdir, s.cfg.Volume, blocks, s.cfg.replicaOptions(s.log))
	if err != nil {
		return 0, err
	}
	defer func() {
		if b != nil {
			if err := b.Abort(); err != nil {
				s.log.Warn("drop the unfinished resync", "err", err)
			}
		}
	}()
	// The replica as it is: the base the regions are written over.
	if err := copyBase(ctx, cur, blocks, b); err != nil {
		return 0, err
	}
	changed := map[uint64]struct{}{}
	var regionsBlocks uint64
	redoAfter, endSeq, err := copyRegions(ctx, s.cfg.Intermediate, s.cfg.ID, blocks, b, func(first, n uint64) {
		for i := range n {
			changed[first+i] = struct{}{}
		}
		regionsBlocks += n
	})
	if err != nil {
		return 0, err
	}
	redo, err := redoBatches(ctx, s.cfg.Intermediate, s.cfg.Volume, redoAfter, endSeq, b, func(cb *wire.CommittedBatch) {
		for _, blk := range cb.GetBatch().GetBlocks() {
			changed[blk.GetIndex()] = struct{}{}
		}
	})
	if err != nil {
		return 0, err
	}
	dir, err := b.Seal(ctx, endSeq)
	b = nil
	if err != nil {
		return 0, err
	}
	// The stage need not hold what the aside replica holds.
	err = s.stage.MarkFetched(endSeq)
	if err == nil {
		err = s.stage.Sync()
	}
	if err != nil {
		return 0, err
	}
	s.pending = &pendingResync{at: endSeq, dir: dir, changed: changed}
	s.log.Info("resync staged: installed at the first validated point from its seq on",
		"applied_seq", cur.Applied(), "resync_seq", endSeq, "region_blocks", regionsBlocks, "redo_after", redoAfter,
		"redo_batches", redo, "took", time.Since(start).Round(time.Millisecond))
	return endSeq, nil
}

// installResync moves the replica and the view to validated point n (at or
// above the pending resync's seq): it applies the staged batches after the
// resync's seq to the aside replica, then, in one step for readers,
// replaces the replica by it. The caller holds applyMu.
func (s *Secondary) installResync(ctx context.Context, n uint64, view View) error {
	p := s.pending
	ropts := s.cfg.replicaOptions(s.log)
	aside, err := OpenReplica(p.dir, ropts)
	if err != nil {
		return err
	}
	redone, err := redoInterrupted(ctx, s.log, aside, s.stage)
	if err != nil {
		aside.Close()
		return err
	}
	changed := maps.Clone(p.changed)
	for _, i := range redone {
		changed[i] = struct{}{}
	}
	steps := s.stage.Steps(aside.Applied(), n, s.cfg.RoundStep)
	if len(steps) == 0 {
		steps = []uint64{n} // only the header: n is the resync's seq
	}
	for _, step := range steps {
		c, err := aside.ApplyRound(ctx, step, s.stage.Batches(aside.Applied(), step))
		if err != nil {
			aside.Close()
			return err
		}
		for _, i := range c {
			changed[i] = struct{}{}
		}
	}
	if err := aside.Close(); err != nil {
		return err
	}
	rdir := filepath.Join(s.cfg.Dir, replicaDirName)
	apply := func(ctx context.Context) (uint64, []uint64, error) {
		old := s.rep()
		if err := old.Close(); err != nil {
			return old.Applied(), nil, err
		}
		r, err := InstallReplica(rdir, p.dir, ropts)
		if err != nil {
			return old.Applied(), nil, err
		}
		s.replicaP.Store(r)
		if sw, ok := view.(interface{ SetReplica(*Replica) }); ok {
			sw.SetReplica(r)
		}
		return r.Applied(), slices.Collect(maps.Keys(changed)), nil
	}
	if view != nil {
		err = view.Advance(ctx, apply)
	} else {
		_, _, err = apply(ctx)
	}
	if err != nil {
		return fmt.Errorf("install the resync at validated point %d: %w", n, err)
	}
	s.pending = nil
	s.setState(StatePair, "")
	s.log.Info("resync installed", "applied_seq", n, "blocks_changed", len(changed))
	return nil
}

// setState sets the state the secondary reports, unless it failed.
func (s *Secondary) setState(state, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state != StateFailed {
		s.state, s.reason = state, reason
	}
}

// setStateFrom sets the state the secondary reports if it is from (any
// state but FAILED and PROMOTED when from is empty).
func (s *Secondary) setStateFrom(from, state, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.state == from || from == "" && s.state != StateFailed && s.state != StatePromoted {
		s.state, s.reason = state, reason
	}
}
