package client

import (
	"context"
	"fmt"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// Promote asks the leader to promote the group (DESIGN.md §5 Promote): it
// raises the epoch of every volume of the group, which fences every
// primary, and answers the promotion's seq (every batch any old primary
// had acknowledged has a seq at or below it, and none of theirs commits
// later) and each volume's new epoch and last volume seq. It is idempotent
// per promotion ID: running it again with the same promotionID changes
// nothing and answers what the first run recorded, with Already set, so a
// caller that lost the answer runs it again. by says who runs it and
// where (free text, at most 256 bytes); promotionID is 1 to 64 printable
// bytes (a malformed one is refused, wrapping wire.ErrBadRequest). It
// follows NOT_LEADER redirects and retries transient failures until ctx
// ends.
func (c *Client) Promote(ctx context.Context, promotionID, by string) (*wire.PromoteResponse, error) {
	var resp *wire.PromoteResponse
	err := c.leaderCall(ctx, fmt.Sprintf("promote %s", promotionID), func(ctx context.Context, cl wire.IntermediateClient) error {
		r, err := cl.Promote(ctx, &wire.PromoteRequest{Group: c.cfg.Group, PromotionId: promotionID, By: by})
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
