package secondary

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// StateCopy is the state a secondary reports while it copies the
// intermediate volume (its initial copy).
const StateCopy = "COPY"

// copyProgressEvery is how often the initial copy logs and reports its
// progress.
const copyProgressEvery = 5 * time.Second

// errRedoDone ends the redo fetch of an initial copy.
var errRedoDone = errors.New("redo done")

// initialCopy replaces replica (a new one, at seq 0) by a copy of the
// intermediate volume, and returns the new replica, at the copy's end seq
// E and not exposable until E is validated (ReplicaBuilder). The stage,
// empty, is marked fetched up to E.
//
// The copy is fuzzy: the intermediate volume takes batches while it is
// read. The intermediate says which: every block read holds the volume's
// batches up to the copy's start seq S and none past E; so the copy is
// exact at E once the batches in (S, E] are applied on top of it, in
// order, which initialCopy fetches from the journal. The journal holds
// them because the secondary registers (a Coordinate link saying it
// applied nothing) before the copy starts: from then on the leader trims
// nothing the secondary has not applied.
func initialCopy(ctx context.Context, cfg Config, log *slog.Logger, replica *Replica, stage *Stage) (*Replica, error) {
	blocks := replica.BlockCount()
	// The replica at seq 0 holds nothing worth keeping: the copy replaces
	// its directory.
	if err := replica.Close(); err != nil {
		return nil, err
	}
	var (
		done      atomic.Uint64 // blocks copied
		connected = make(chan struct{})
		once      atomic.Bool
	)
	link, err := cfg.Intermediate.Coordinate(ctx, client.CoordinateOptions{
		Hello: func() *wire.SecondaryHello {
			return &wire.SecondaryHello{Group: cfg.Group, Secondary: cfg.ID, Volume: cfg.Volume, Addr: cfg.Addr}
		},
		OnMessage: func(*wire.CoordinateResponse) {}, // nothing to prepare or apply yet
		OnConnected: func(up bool) {
			if up && once.CompareAndSwap(false, true) {
				close(connected)
			}
		},
	})
	if err != nil {
		return nil, err
	}
	defer link.Close()
	select {
	case <-connected:
	case <-link.Done():
		return nil, fmt.Errorf("register at the leader: %w", link.Err())
	case <-ctx.Done():
		return nil, fmt.Errorf("register at the leader: %w", ctx.Err())
	}
	report := func() {
		link.Send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Report{Report: &wire.SecondaryReport{
			State: StateCopy, Reason: "initial copy of the intermediate volume", ResyncDone: done.Load(), ResyncTotal: blocks,
		}}})
	}
	report()
	rdir := filepath.Join(cfg.Dir, replicaDirName)
	ropts := ReplicaOptions{FS: cfg.FS, Logger: log}
	var b *ReplicaBuilder
	defer func() {
		if b != nil {
			if err := b.Abort(); err != nil {
				log.Warn("drop the unfinished copy", "err", err)
			}
		}
	}()
	start := time.Now()
	lastLog := start
	var startSeq, endSeq uint64
	log.Info("initial copy of the intermediate volume", "blocks", blocks)
	err = cfg.Intermediate.ReadVolume(ctx, cfg.Volume, blocks, func(c *wire.ReadVolumeResponse) error {
		if c.GetFirstBlock() == 0 && !c.GetDone() {
			// The first chunk, or a new start after a leader change.
			if b != nil {
				if err := b.Abort(); err != nil {
					return err
				}
			}
			var err error
			if b, err = BuildReplica(rdir, cfg.Volume, blocks, ropts); err != nil {
				return err
			}
			startSeq = c.GetStartSeq()
			done.Store(0)
		}
		if c.GetDone() {
			endSeq = c.GetEndSeq()
			return nil
		}
		if len(c.GetData()) > 0 {
			if err := b.WriteBlocks(ctx, c.GetFirstBlock(), c.GetData()); err != nil {
				return err
			}
		}
		done.Store(c.GetFirstBlock() + uint64(c.GetBlockCount()))
		if time.Since(lastLog) >= copyProgressEvery {
			lastLog = time.Now()
			log.Info("copy progress", "blocks_done", done.Load(), "blocks_total", blocks,
				"percent", fmt.Sprintf("%.1f", 100*float64(done.Load())/float64(blocks)))
			report()
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if endSeq < startSeq {
		return nil, fmt.Errorf("%w: copy ends at seq %d, before its start %d", wire.ErrBadRequest, endSeq, startSeq)
	}
	// Redo: the volume's batches in (start, end], in order.
	redo := 0
	if endSeq > startSeq {
		err = cfg.Intermediate.Fetch(ctx, cfg.Volume, startSeq, func(resp *wire.FetchResponse) error {
			if resp.GetCompacted() {
				return fmt.Errorf("redo after seq %d: %w", startSeq, ErrCompacted)
			}
			for _, cb := range resp.GetBatches() {
				if cb.GetSeq() > endSeq {
					return errRedoDone
				}
				if err := b.ApplyBatch(ctx, cb); err != nil {
					return err
				}
				redo++
			}
			if resp.GetCompleteSeq() >= endSeq {
				return errRedoDone
			}
			return nil
		})
		if !errors.Is(err, errRedoDone) {
			return nil, err
		}
	}
	r, err := b.Finish(ctx, endSeq)
	b = nil
	if err != nil {
		return nil, err
	}
	err = stage.MarkFetched(endSeq)
	if err == nil {
		err = stage.Sync()
	}
	if err != nil {
		r.Close()
		return nil, err
	}
	log.Info("initial copy done", "blocks", blocks, "start_seq", startSeq, "end_seq", endSeq, "redo_batches", redo,
		"took", time.Since(start).Round(time.Millisecond))
	return r, nil
}
