package client

import (
	"context"
	"fmt"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// ReadRegions streams the regions marked in the intermediate bitmap of
// secondary (whose volume has blockCount blocks) from the leader: the
// resync of a suspended secondary, or the copy of a failback (see
// Failback). It calls fn with every chunk on the
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
	return c.readChunks(ctx, fmt.Sprintf("read regions of secondary %s", secondary), blockCount, false,
		func(ctx context.Context, cl wire.IntermediateClient) (chunkStream, error) {
			return cl.ReadRegions(ctx, &wire.ReadRegionsRequest{Group: c.cfg.Group, Secondary: secondary})
		}, fn)
}
