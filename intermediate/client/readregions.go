package client

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// ReadRegions streams the regions marked in the intermediate bitmap of
// secondary (whose volume has blockCount blocks) from the leader: the
// resync of a suspended secondary. It calls fn with every chunk on the
// caller's goroutine. Chunks are sparse, in increasing block order; the
// first one carries StartSeq and RedoAfter, and the last one has Done set
// (FirstBlock == blockCount, no blocks) and carries StartSeq, EndSeq,
// RedoAfter and MarkedSeq (see wire.ReadVolumeResponse for what they
// promise). Every chunk is checked first (wire.CheckChunk: range, length,
// CRC, and increasing order); a bad one ends ReadRegions with an error
// wrapping wire.ErrBadCRC or wire.ErrBadRequest, without a retry. After a
// transport failure or a leader change (and while the leader does not see
// the secondary's Coordinate stream yet) ReadRegions starts over at the
// leader, from the first chunk: fn then sees a chunk at or below a block it
// has already seen, or a Done chunk first, and must start its resync over.
// An error from fn ends ReadRegions with that error.
func (c *Client) ReadRegions(ctx context.Context, secondary string, blockCount uint64, fn func(*wire.ReadVolumeResponse) error) error {
	var stop error
	what := fmt.Sprintf("read regions of secondary %s", secondary)
	err := c.leaderCall(ctx, what, func(ctx context.Context, cl wire.IntermediateClient) error {
		stream, err := cl.ReadRegions(ctx, &wire.ReadRegionsRequest{Group: c.cfg.Group, Secondary: secondary})
		if err != nil {
			return err
		}
		next := uint64(0)
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%w: the resync ended before its last chunk", errStreamEnded)
			}
			if err != nil {
				return err
			}
			if err := wire.CheckChunk(resp, blockCount); err != nil {
				stop = fmt.Errorf("%s: %w", what, err)
				return fmt.Errorf("%w: %w", errCallerStop, stop)
			}
			if resp.GetFirstBlock() < next || (resp.GetDone() && (resp.GetFirstBlock() != blockCount || resp.GetBlockCount() != 0)) {
				stop = fmt.Errorf("%s: %w: chunk of %d blocks at block %d (done %t), expected one at or after block %d",
					what, wire.ErrBadRequest, resp.GetBlockCount(), resp.GetFirstBlock(), resp.GetDone(), next)
				return fmt.Errorf("%w: %w", errCallerStop, stop)
			}
			if err := fn(resp); err != nil {
				stop = err
				return fmt.Errorf("%w: %w", errCallerStop, err)
			}
			if resp.GetDone() {
				return nil
			}
			next = resp.GetFirstBlock() + uint64(resp.GetBlockCount())
		}
	})
	if stop != nil {
		return stop
	}
	return err
}
