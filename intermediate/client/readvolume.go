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
	var stop error
	err := c.leaderCall(ctx, fmt.Sprintf("read volume %s", volume), func(ctx context.Context, cl wire.IntermediateClient) error {
		stream, err := cl.ReadVolume(ctx, &wire.ReadVolumeRequest{Group: c.cfg.Group, Volume: volume})
		if err != nil {
			return err
		}
		next := uint64(0)
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%w: the copy ended before its last chunk", errStreamEnded)
			}
			if err != nil {
				return err
			}
			if err := wire.CheckChunk(resp, blockCount); err != nil {
				stop = fmt.Errorf("read volume %s: %w", volume, err)
				return fmt.Errorf("%w: %w", errCallerStop, stop)
			}
			if resp.GetFirstBlock() != next || (resp.GetDone() && next != blockCount) {
				stop = fmt.Errorf("read volume %s: %w: chunk at block %d, expected %d", volume, wire.ErrBadRequest, resp.GetFirstBlock(), next)
				return fmt.Errorf("%w: %w", errCallerStop, stop)
			}
			if err := fn(resp); err != nil {
				stop = err
				return fmt.Errorf("%w: %w", errCallerStop, err)
			}
			if resp.GetDone() {
				return nil
			}
			next += uint64(resp.GetBlockCount())
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
