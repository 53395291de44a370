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

// Promote records the request at the leader and answers its at_seq as
// the promotion's seq, with one volume.
func (n *fakeNode) Promote(_ context.Context, req *wire.PromoteRequest) (*wire.PromoteResponse, error) {
	cl := n.cl
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if err := cl.leaderErrLocked(n.id); err != nil {
		return nil, err
	}
	if len(cl.promoteTo) > 0 {
		err := cl.promoteTo[0]
		cl.promoteTo = cl.promoteTo[1:]
		return nil, err
	}
	cl.promotes = append(cl.promotes, proto.CloneOf(req))
	return &wire.PromoteResponse{Seq: req.GetAtSeq(), Volumes: []*wire.PromotedVolume{{Name: "a", Epoch: req.GetFromEpoch() + 1,
		AfterRegions: []byte("after"), JournalComplete: true}}}, nil
}

// TestPromoteAt: Promote and PromoteAt go to the leader through a
// follower, carry the promotion's ID, by text, point and epoch as they
// are (Promote with neither), retry a failed node, and return a refusal
// at once.
func TestPromoteAt(t *testing.T) {
	cl := newFakeCluster(t, "n1", "n2")
	cl.set(func() {
		cl.leader = "n2"
		cl.promoteTo = []error{wire.Errorf(wire.ErrorCode_ERROR_CODE_FAILED, "fake: stopped")}
	})
	c := newTestClient(t, Config{Addrs: cl.addrs("n1")})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.PromoteAt(ctx, "late-1", "host", 7, 3)
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetSeq() != 7 || len(resp.GetVolumes()) != 1 || resp.GetVolumes()[0].GetEpoch() != 4 ||
		string(resp.GetVolumes()[0].GetAfterRegions()) != "after" || !resp.GetVolumes()[0].GetJournalComplete() {
		t.Fatalf("response %v", resp)
	}
	if _, err := c.Promote(ctx, "now-1", "host"); err != nil {
		t.Fatal(err)
	}
	cl.mu.Lock()
	got := cl.promotes
	cl.mu.Unlock()
	want := []*wire.PromoteRequest{
		{Group: DefaultGroup, PromotionId: "late-1", By: "host", AtSeq: 7, FromEpoch: 3},
		{Group: DefaultGroup, PromotionId: "now-1", By: "host"},
	}
	if len(got) != len(want) || !proto.Equal(got[0], want[0]) || !proto.Equal(got[1], want[1]) {
		t.Fatalf("requests at the leader: %v, want %v", got, want)
	}

	cl.set(func() {
		e := wire.Errorf(wire.ErrorCode_ERROR_CODE_STALE_EPOCH, `fake: volume "a" is at epoch 4, the promotion is from epoch 3`)
		e.Epoch = 4
		cl.promoteTo = []error{e}
	})
	_, err = c.PromoteAt(ctx, "late-2", "host", 7, 3)
	var we *wire.Error
	if !errors.Is(err, wire.ErrStaleEpoch) || !errors.As(err, &we) || we.Epoch != 4 || !strings.Contains(err.Error(), "from epoch 3") {
		t.Fatalf("refused promotion: %v, want STALE_EPOCH at epoch 4", err)
	}
	cl.mu.Lock()
	n := len(cl.promotes)
	cl.mu.Unlock()
	if n != 2 {
		t.Fatalf("a refusal was retried: %d requests served", n)
	}
}
