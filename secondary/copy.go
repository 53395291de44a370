package secondary

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync/atomic"
	"time"

	"github.com/tricopy/tricopy/blockdev"
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
	progress := func() {
		if cfg.OnCopyProgress != nil {
			cfg.OnCopyProgress(done.Load(), blocks)
		}
	}
	report()
	progress()
	rdir := filepath.Join(cfg.Dir, replicaDirName)
	ropts := cfg.replicaOptions(log)
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
			progress()
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
		progress()
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
	redo, err := redoBatches(ctx, cfg.Intermediate, cfg.Volume, startSeq, endSeq, b, nil)
	if err != nil {
		return nil, err
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

// redoBatches applies to b the volume's journal batches in (after, end],
// in seq order, calling onBatch (if not nil) for each, and returns how many
// it applied. The journal must still hold them.
func redoBatches(ctx context.Context, in Intermediate, volume string, after, end uint64, b *ReplicaBuilder, onBatch func(*wire.CommittedBatch)) (int, error) {
	if end <= after {
		return 0, nil
	}
	redo := 0
	err := in.Fetch(ctx, volume, after, func(resp *wire.FetchResponse) error {
		if resp.GetCompacted() {
			return fmt.Errorf("redo after seq %d: %w", after, ErrCompacted)
		}
		for _, cb := range resp.GetBatches() {
			if cb.GetSeq() > end {
				return errRedoDone
			}
			if err := b.ApplyBatch(ctx, cb); err != nil {
				return err
			}
			if onBatch != nil {
				onBatch(cb)
			}
			redo++
		}
		if resp.GetCompleteSeq() >= end {
			return errRedoDone
		}
		return nil
	})
	if !errors.Is(err, errRedoDone) {
		return redo, err
	}
	return redo, nil
}

// copyBase writes into b the blocks of src that are not all zeros (the
// base a resync or a failback writes its regions over).
func copyBase(ctx context.Context, src blockdev.Reader, blocks uint64, b *ReplicaBuilder) error {
	buf := make([]byte, resyncChunk*blockdev.BlockSize)
	zero := make([]byte, len(buf))
	for first := uint64(0); first < blocks; first += resyncChunk {
		p := buf[:min(resyncChunk, blocks-first)*blockdev.BlockSize]
		if err := readRange(src, first, p); err != nil {
			return err
		}
		if string(p) != string(zero[:len(p)]) {
			if err := b.WriteBlocks(ctx, first, slices.Clone(p)); err != nil {
				return err
			}
		}
	}
	return nil
}

// copyRegions writes into b the regions of the secondary's intermediate
// bitmap (ReadRegions), calling onChunk (if not nil) for each chunk, and
// returns the redo point and the end seq the stream announced.
func copyRegions(ctx context.Context, in Intermediate, id string, blocks uint64, b *ReplicaBuilder, onChunk func(first, n uint64)) (redoAfter, endSeq uint64, err error) {
	err = in.ReadRegions(ctx, id, blocks, func(c *wire.ReadVolumeResponse) error {
		if c.GetStartSeq() != 0 {
			// The first chunk (again, after a leader change: writing the
			// regions again over the base is harmless).
			redoAfter = c.GetRedoAfter()
		}
		if c.GetDone() {
			endSeq = c.GetEndSeq()
			return nil
		}
		data := c.GetData()
		if len(data) == 0 {
			data = make([]byte, int(c.GetBlockCount())*blockdev.BlockSize)
		}
		if onChunk != nil {
			onChunk(c.GetFirstBlock(), uint64(c.GetBlockCount()))
		}
		return b.WriteBlocks(ctx, c.GetFirstBlock(), data)
	})
	return redoAfter, endSeq, err
}

// readRange reads consecutive blocks from r, with one call when r can.
func readRange(r blockdev.Reader, first uint64, p []byte) error {
	if rr, ok := r.(blockdev.RangeReader); ok {
		return rr.ReadBlocks(first, p)
	}
	for i := 0; i*blockdev.BlockSize < len(p); i++ {
		if err := r.ReadBlock(first+uint64(i), p[i*blockdev.BlockSize:(i+1)*blockdev.BlockSize]); err != nil {
			return err
		}
	}
	return nil
}
