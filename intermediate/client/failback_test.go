package client

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// Failback records the request at the leader and answers with the
// regions the bitmap's length stands for.
func (n *fakeNode) Failback(_ context.Context, req *wire.FailbackRequest) (*wire.FailbackResponse, error) {
	cl := n.cl
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if err := cl.leaderErrLocked(n.id); err != nil {
		return nil, err
	}
	if len(cl.failbackTo) > 0 {
		err := cl.failbackTo[0]
		cl.failbackTo = cl.failbackTo[1:]
		return nil, err
	}
	cl.failbacks = append(cl.failbacks, proto.CloneOf(req))
	return &wire.FailbackResponse{Regions: uint64(len(req.GetBitmap())), PromotionSeq: 7, Epoch: 2}, nil
}

// TestFailback: Failback goes to the leader through a follower, carries
// the secondary, the volume, the group and the bitmap as they are,
// retries a failed node, and returns a refusal at once.
func TestFailback(t *testing.T) {
	cl := newFakeCluster(t, "n1", "n2")
	cl.set(func() {
		cl.leader = "n2"
		cl.failbackTo = []error{wire.Errorf(wire.ErrorCode_ERROR_CODE_FAILED, "fake: stopped")}
	})
	c := newTestClient(t, Config{Addrs: cl.addrs("n1")})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	bitmap := []byte("bitmap bytes")
	resp, err := c.Failback(ctx, "s1", "a", bitmap)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetRegions() != uint64(len(bitmap)) || resp.GetPromotionSeq() != 7 || resp.GetEpoch() != 2 {
		t.Fatalf("response %v", resp)
	}
	cl.mu.Lock()
	got := cl.failbacks
	cl.mu.Unlock()
	want := &wire.FailbackRequest{Group: DefaultGroup, Secondary: "s1", Volume: "a", Bitmap: bitmap}
	if len(got) != 1 || !proto.Equal(got[0], want) {
		t.Fatalf("requests at the leader: %v, want one %v", got, want)
	}

	cl.set(func() {
		cl.failbackTo = []error{wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "fake: volume never promoted: nothing to fail back")}
	})
	_, err = c.Failback(ctx, "s1", "a", nil)
	if !errors.Is(err, wire.ErrBadRequest) || !strings.Contains(err.Error(), "never promoted") {
		t.Fatalf("refused failback: %v, want BAD_REQUEST", err)
	}
	cl.mu.Lock()
	n := len(cl.failbacks)
	cl.mu.Unlock()
	if n != 1 {
		t.Fatalf("a refusal was retried: %d requests served", n)
	}
}
