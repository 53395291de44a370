package secondary

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// StateFailback is the state a secondary reports while it builds its
// replica from an old primary's volume (Config.Failback).
const StateFailback = "FAILBACK"

// FailbackSource is the volume of an old primary, fenced by a promotion,
// that becomes a secondary of the new primary (tricopy failback).
type FailbackSource struct {
	// Volume is the old primary's local volume; it is only read.
	Volume blockdev.Reader
	// Bitmap is the old primary's primary bitmap (blockdev.Bitmap
	// MarshalBinary): the regions it changed that the intermediate never
	// committed. Nil when it has none.
	Bitmap []byte
}

// Failbacker is what a failback needs of the intermediate besides
// Intermediate; *client.Client implements it.
type Failbacker interface {
	Failback(ctx context.Context, secondary, volume string, bitmap []byte) (*wire.FailbackResponse, error)
}

// FailbackStats are the figures of a failback copy.
type FailbackStats struct {
	// Regions is the number of regions the intermediate marked to copy
	// (what the new primary changed since the promotion, what the old one
	// may lack from before, and what it changed alone).
	Regions uint64 `json:"regions"`
	// CopiedBytes is the block bytes read from the intermediate.
	CopiedBytes uint64 `json:"copied_bytes"`
	// RedoBatches is the journal batches applied on top.
	RedoBatches int `json:"redo_batches"`
	// EndSeq is the seq the replica is at, shown at the first validated
	// point from it on.
	EndSeq uint64 `json:"end_seq"`
	// Took is how long it took.
	Took time.Duration `json:"took_ns"`
}

// failbackCopy builds the secondary's replica from an old primary's volume:
// a local copy of its blocks, with the regions the intermediate marks for
// this secondary written over them from the intermediate volume
// (ReadRegions), and the volume's batches in (redo_after, end] applied on
// top, exactly as a resync does. The secondary registers first (a
// Coordinate link saying it applied nothing), so the journal keeps every
// batch it has not applied; then Failback sets its intermediate bitmap to
// the regions that may differ. The replica is at the copy's end seq and
// not exposable until that is validated; the stage is marked fetched up to
// it.
func failbackCopy(ctx context.Context, cfg Config, log *slog.Logger, src *FailbackSource, stage *Stage) (*Replica, FailbackStats, error) {
	var stats FailbackStats
	if st, ok := volumeStatus(ctx, cfg); ok && st.GetBlockCount() != src.Volume.BlockCount() {
		return nil, stats, fmt.Errorf("failback: the old primary's volume has %d blocks, volume %q at the intermediate %d", src.Volume.BlockCount(), cfg.Volume, st.GetBlockCount())
	}
	start := time.Now()
	fb, ok := cfg.Intermediate.(Failbacker)
	if !ok {
		return nil, stats, errors.New("failback: the intermediate client cannot fail back")
	}
	blocks := src.Volume.BlockCount()
	var (
		copied    atomic.Uint64
		connected = make(chan struct{})
		once      atomic.Bool
	)
	link, err := cfg.Intermediate.Coordinate(ctx, client.CoordinateOptions{
		Hello: func() *wire.SecondaryHello {
			return &wire.SecondaryHello{Group: cfg.Group, Secondary: cfg.ID, Volume: cfg.Volume, Addr: cfg.Addr}
		},
		OnMessage: func(*wire.CoordinateResponse) {},
		OnConnected: func(up bool) {
			if up && once.CompareAndSwap(false, true) {
				close(connected)
			}
		},
	})
	if err != nil {
		return nil, stats, err
	}
	defer link.Close()
	select {
	case <-connected:
	case <-link.Done():
		return nil, stats, fmt.Errorf("register at the leader: %w", link.Err())
	case <-ctx.Done():
		return nil, stats, fmt.Errorf("register at the leader: %w", ctx.Err())
	}
	resp, err := fb.Failback(ctx, cfg.ID, cfg.Volume, src.Bitmap)
	if err != nil {
		return nil, stats, err
	}
	stats.Regions = resp.GetRegions()
	link.Send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Report{Report: &wire.SecondaryReport{
		State: StateFailback, Reason: fmt.Sprintf("failback: copying %d regions from the intermediate over the old primary's volume", stats.Regions),
	}}})
	log.Info("failback: building the replica from the old primary's volume", "blocks", blocks, "regions", stats.Regions,
		"promotion_seq", resp.GetPromotionSeq(), "epoch", resp.GetEpoch())
	rdir := filepath.Join(cfg.Dir, replicaDirName)
	b, err := BuildReplica(rdir, cfg.Volume, blocks, cfg.replicaOptions(log))
	if err != nil {
		return nil, stats, err
	}
	defer func() {
		if b != nil {
			if err := b.Abort(); err != nil {
				log.Warn("drop the unfinished failback copy", "err", err)
			}
		}
	}()
	if err := copyBase(ctx, src.Volume, blocks, b); err != nil {
		return nil, stats, fmt.Errorf("copy the old primary's volume: %w", err)
	}
	redoAfter, endSeq, err := copyRegions(ctx, cfg.Intermediate, cfg.ID, blocks, b, func(_, n uint64) {
		copied.Add(n * blockdev.BlockSize)
	})
	if err != nil {
		return nil, stats, err
	}
	if stats.RedoBatches, err = redoBatches(ctx, cfg.Intermediate, cfg.Volume, redoAfter, endSeq, b, nil); err != nil {
		return nil, stats, err
	}
	r, err := b.Finish(ctx, endSeq)
	b = nil
	if err != nil {
		return nil, stats, err
	}
	err = stage.MarkFetched(endSeq)
	if err == nil {
		err = stage.Sync()
	}
	if err != nil {
		r.Close()
		return nil, stats, err
	}
	stats.CopiedBytes, stats.EndSeq, stats.Took = copied.Load(), endSeq, time.Since(start)
	log.Info("failback copy done: the replica is shown at the first validated point from its seq on",
		"regions", stats.Regions, "copied_bytes", stats.CopiedBytes, "redo_batches", stats.RedoBatches,
		"end_seq", endSeq, "took", stats.Took.Round(time.Millisecond))
	return r, stats, nil
}

// failbackReplica builds the replica of a new secondary from
// cfg.Failback (failbackCopy), with a staging store of its own that it
// closes again (Open reopens it).
func failbackReplica(ctx context.Context, cfg Config, log *slog.Logger) (*Replica, FailbackStats, error) {
	stage, err := OpenStage(filepath.Join(cfg.Dir, stageDirName), StageOptions{
		FS: cfg.FS, Volume: cfg.Volume, BlockCount: cfg.Failback.Volume.BlockCount(), Logger: log,
	})
	if err != nil {
		return nil, FailbackStats{}, err
	}
	if f := stage.Fetched(); f != 0 {
		stage.Close()
		return nil, FailbackStats{}, fmt.Errorf("failback: %s holds a staging store fetched up to %d but no replica: use an empty data directory", cfg.Dir, f)
	}
	r, st, err := failbackCopy(ctx, cfg, log, cfg.Failback, stage)
	if cerr := stage.Close(); err == nil && cerr != nil {
		r.Close()
		err = cerr
	}
	if err != nil {
		return nil, st, fmt.Errorf("failback: %w", err)
	}
	return r, st, nil
}

// HasReplica reports whether the secondary data directory dir holds a
// replica (a failback there is done, or it is a secondary already).
func HasReplica(fsys blockdev.FS, dir string) (bool, error) {
	return blockdev.Exists(filepath.Join(dir, replicaDirName), fsys)
}
