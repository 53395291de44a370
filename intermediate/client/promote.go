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
	return c.PromoteAt(ctx, promotionID, by, 0, 0)
}

// PromoteAt is Promote for a promotion that happened without the
// intermediate (it was unreachable): the secondaries agreed on the
// validated point atSeq, rolled forward to it and run as primaries at
// fromEpoch + 1. The intermediate records the promotion at atSeq (at most
// its valid counter, and not below a volume's last promotion: otherwise
// the call fails wrapping wire.ErrBadRequest), which fences the old
// primaries from then on. Each volume of the answer carries its
// after_regions, the regions of the intermediate volume written by the old
// primaries' batches after atSeq, which the new primary's resync must
// overwrite, unless journal_complete is false: the journal no longer held
// all of them, and every region must be taken as changed. fromEpoch, when
// not 0, is the epoch the secondaries knew: if a volume is at another
// epoch (the group was promoted meanwhile), the call fails wrapping
// wire.ErrStaleEpoch and nothing changes. atSeq 0 is Promote (the
// promotion's point is the valid counter). Running it again with the same
// promotionID changes nothing and answers what the first run recorded,
// with the after regions computed again from the journal then.
func (c *Client) PromoteAt(ctx context.Context, promotionID, by string, atSeq, fromEpoch uint64) (*wire.PromoteResponse, error) {
	return c.PromoteAtFor(ctx, promotionID, by, atSeq, fromEpoch, nil)
}

// PromoteAtFor is PromoteAt on behalf of an admin: admin is the admin's
// signature of the promotion (wire.PromotionStatement), which a node with
// TLS requires from a caller that holds no admin grant itself.
func (c *Client) PromoteAtFor(ctx context.Context, promotionID, by string, atSeq, fromEpoch uint64, admin *wire.AdminProof) (*wire.PromoteResponse, error) {
	var resp *wire.PromoteResponse
	err := c.leaderCall(ctx, fmt.Sprintf("promote %s", promotionID), func(ctx context.Context, cl wire.IntermediateClient) error {
		r, err := cl.Promote(ctx, &wire.PromoteRequest{Group: c.cfg.Group, PromotionId: promotionID, By: by, AtSeq: atSeq,
			FromEpoch: fromEpoch, Admin: admin})
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
