package client

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// ReadVolume streams the intermediate volume of volume, of blockCount
// blocks, from the leader and calls fn with every chunk, in block order,
// on the caller's goroutine; the last chunk has Done set and carries the
// copy's end seq (see wire.ReadVolumeResponse for what a fuzzy copy
// holds). Every chunk is checked first (wire.CheckChunk: range, length,
// CRC); a bad one ends ReadVolume with an error wrapping wire.ErrBadCRC or
// wire.ErrBadRequest, without a retry. After a transport failure or a
// leader change ReadVolume starts over at another node (the leader), from
// block 0: fn then sees a chunk with FirstBlock 0 again and must start its
// copy over. An error from fn ends ReadVolume with that error.
func (c *Client) ReadVolume(ctx context.Context, volume string, blockCount uint64, fn func(*wire.ReadVolumeResponse) error) error {
	return c.readChunks(ctx, fmt.Sprintf("read volume %s", volume), blockCount, true,
		func(ctx context.Context, cl wire.IntermediateClient) (chunkStream, error) {
			return cl.ReadVolume(ctx, &wire.ReadVolumeRequest{Group: c.cfg.Group, Volume: volume})
		}, fn)
}

// chunkStream is a stream of volume chunks (ReadVolume, ReadRegions).
type chunkStream interface {
	Recv() (*wire.ReadVolumeResponse, error)
}

// readChunks runs a chunk stream at the leader, started by open, and calls
// fn with every chunk once checked: wire.CheckChunk, then the order (each
// chunk right after the one before when contiguous, else at or after its
// end) and the last one (Done, at blockCount, without blocks, after the
// whole volume when contiguous). A bad chunk or an error from fn ends it
// without a retry; a transport failure or a leader change starts it over.
func (c *Client) readChunks(ctx context.Context, what string, blockCount uint64, contiguous bool,
	open func(context.Context, wire.IntermediateClient) (chunkStream, error), fn func(*wire.ReadVolumeResponse) error) error {
	var stop error
	err := c.leaderCall(ctx, what, func(ctx context.Context, cl wire.IntermediateClient) error {
		stream, err := open(ctx, cl)
		if err != nil {
			return err
		}
		next := uint64(0)
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%w: the stream ended before its last chunk", errStreamEnded)
			}
			if err != nil {
				return err
			}
			if err := wire.CheckChunk(resp, blockCount); err != nil {
				stop = fmt.Errorf("%s: %w", what, err)
				return fmt.Errorf("%w: %w", errCallerStop, stop)
			}
			first, done := resp.GetFirstBlock(), resp.GetDone()
			if first < next || (contiguous && !done && first != next) ||
				(done && (first != blockCount || resp.GetBlockCount() != 0 || (contiguous && next != blockCount))) {
				where := "at or after"
				if contiguous {
					where = "at"
				}
				stop = fmt.Errorf("%s: %w: chunk of %d blocks at block %d (done %t), expected one %s block %d",
					what, wire.ErrBadRequest, resp.GetBlockCount(), first, done, where, next)
				return fmt.Errorf("%w: %w", errCallerStop, stop)
			}
			if err := fn(resp); err != nil {
				stop = err
				return fmt.Errorf("%w: %w", errCallerStop, err)
			}
			if done {
				return nil
			}
			next = first + uint64(resp.GetBlockCount())
		}
	})
	if stop != nil {
		return stop
	}
	return err
}

// RemoveSecondary asks the leader to take secondary id out of the group;
// removed is false when no such secondary was registered. It follows
// NOT_LEADER redirects and retries transient failures until ctx ends.
func (c *Client) RemoveSecondary(ctx context.Context, id string) (removed bool, volume string, err error) {
	err = c.leaderCall(ctx, fmt.Sprintf("remove secondary %s", id), func(ctx context.Context, cl wire.IntermediateClient) error {
		resp, err := cl.RemoveSecondary(ctx, &wire.RemoveSecondaryRequest{Group: c.cfg.Group, Id: id})
		if err != nil {
			return err
		}
		removed, volume = resp.GetRemoved(), resp.GetVolume()
		return nil
	})
	return removed, volume, err
}
