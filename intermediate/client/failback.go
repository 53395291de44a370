package client

import (
	"context"
	"fmt"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// Failback asks the leader to set the intermediate bitmap of secondary, a
// secondary of volume that starts from the volume of the old primary the
// volume's last promotion fenced: to the regions the volume's batches
// changed since that promotion, those of the batches the journal held at
// the promotion (the old primary may not have applied them), and those set
// in bitmap, the old primary's primary bitmap (blockdev.Bitmap.
// MarshalBinary, any region size, covering the volume's block count; nil
// when it changed nothing locally). The secondary must be registered for
// volume first: open its Coordinate link with a hello saying it applied
// nothing and wait until it is connected, so that the journal keeps every
// batch it lacks. The answer gives the number of regions marked and the
// last promotion's seq and epoch; the secondary then copies the regions
// over its copy of the old volume with ReadRegions and applies the
// volume's batches after redo_after up to the copy's end seq. Running it
// again sets the bitmap again, with what changed meanwhile.
//
// Refusals are permanent: an unregistered secondary or volume
// (wire.ErrUnknownVolume), a secondary of another volume
// (wire.ErrVolumeMismatch), a volume never promoted, a malformed ID or
// name, or a bitmap that does not decode or covers another block count
// (wire.ErrBadRequest). It follows NOT_LEADER redirects and retries
// transient failures until ctx ends.
func (c *Client) Failback(ctx context.Context, secondary, volume string, bitmap []byte) (*wire.FailbackResponse, error) {
	var resp *wire.FailbackResponse
	err := c.leaderCall(ctx, fmt.Sprintf("failback of secondary %s", secondary), func(ctx context.Context, cl wire.IntermediateClient) error {
		r, err := cl.Failback(ctx, &wire.FailbackRequest{Group: c.cfg.Group, Secondary: secondary, Volume: volume, Bitmap: bitmap})
		if err != nil {
			return err
		}
		resp = r
		return nil
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}
