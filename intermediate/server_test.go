package intermediate_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tricopy/tricopy/intermediate"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// rawClient dials node tn with a plain gRPC client, so tests can send what
// the client library never would.
func rawClient(t *testing.T, addr string, maxSend int) wire.IntermediateClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(maxSend), grpc.MaxCallRecvMsgSize(maxSend)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return wire.NewIntermediateClient(conn)
}

// openStream opens a Submit stream for volume "a" of 16 blocks and returns
// it after the opened answer.
func openStream(t *testing.T, ctx context.Context, c wire.IntermediateClient) wire.Intermediate_SubmitClient {
	t.Helper()
	s, err := c.Submit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&wire.SubmitRequest{Msg: &wire.SubmitRequest_Open{Open: &wire.SubmitOpen{Volume: "a", Epoch: 1, BlockCount: 16}}}); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil {
		t.Fatalf("open: %v", wire.FromStatus(err))
	}
	if resp.GetOpened() == nil {
		t.Fatalf("open answered %v", resp)
	}
	return s
}

func batch(vseq uint64, index uint64) *wire.Batch {
	return wire.Seal(&wire.Batch{Volume: "a", Epoch: 1, VolumeSeq: vseq, Blocks: []*wire.Block{{Index: index, Data: make([]byte, wire.BlockSize)}}})
}

// refusal sends msg on a fresh stream and returns the error that ends it.
func refusal(t *testing.T, c wire.IntermediateClient, msgs ...*wire.SubmitRequest) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := openStream(t, ctx, c)
	for _, m := range msgs {
		if err := s.Send(m); err != nil {
			break
		}
	}
	for {
		_, err := s.Recv()
		if err != nil {
			return wire.FromStatus(err)
		}
	}
}

// TestServerRefusesHostileSubmits: every malformed or hostile Submit is
// refused with an error naming the problem, and nothing is committed.
func TestServerRefusesHostileSubmits(t *testing.T) {
	c := newTestCluster(t, 1, func(cfg *intermediate.Config) { cfg.MaxMessage = 1 << 20 })
	c.startAll()
	tn := c.leader(15 * time.Second)
	cl := rawClient(t, tn.clientAddr, 8<<20)

	bad := batch(1, 0)
	bad.Blocks[0].Data[7] ^= 1
	other := batch(1, 0)
	other.Volume = "b"
	other = wire.Seal(other)
	outside := batch(1, 16)
	short := batch(1, 0)
	short.Blocks[0].Data = short.Blocks[0].Data[:100]
	short = wire.Seal(short)
	gap := batch(5, 0)
	stale := batch(1, 0)
	stale.Epoch = 7
	stale = wire.Seal(stale)
	send := func(b *wire.Batch) *wire.SubmitRequest {
		return &wire.SubmitRequest{Msg: &wire.SubmitRequest_Batches{Batches: &wire.SubmitBatches{Batches: []*wire.Batch{b}}}}
	}
	for _, tc := range []struct {
		name string
		msg  *wire.SubmitRequest
		want error
	}{
		{"bad crc", send(bad), wire.ErrBadCRC},
		{"other volume", send(other), wire.ErrBadRequest},
		{"block outside the volume", send(outside), wire.ErrBadRequest},
		{"short block", send(short), wire.ErrBadRequest},
		{"second open", &wire.SubmitRequest{Msg: &wire.SubmitRequest_Open{Open: &wire.SubmitOpen{Volume: "a"}}}, wire.ErrBadRequest},
		{"empty batches", &wire.SubmitRequest{Msg: &wire.SubmitRequest_Batches{Batches: &wire.SubmitBatches{}}}, wire.ErrBadRequest},
		{"gap", send(gap), wire.ErrGap},
		{"stale epoch", send(stale), wire.ErrStaleEpoch},
	} {
		err := refusal(t, cl, tc.msg)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if tc.want == wire.ErrGap {
			var we *wire.Error
			if !errors.As(err, &we) || we.ResumeVolumeSeq != 1 {
				t.Errorf("gap refusal %v does not say to resume at 1", err)
			}
		}
	}

	// A message over the limit is refused by the transport.
	big := &wire.Batch{Volume: "a", Epoch: 1, VolumeSeq: 1}
	for i := 0; i < 300; i++ {
		big.Blocks = append(big.Blocks, &wire.Block{Index: uint64(i % 16), Data: make([]byte, wire.BlockSize)})
	}
	err := refusal(t, cl, send(wire.Seal(big)))
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("oversized message: %v, want ResourceExhausted", err)
	}

	// Opening with a wrong group, a bad name or another size.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct {
		open *wire.SubmitOpen
		want error
	}{
		{&wire.SubmitOpen{Group: "other", Volume: "a", Epoch: 1, BlockCount: 16}, wire.ErrWrongGroup},
		{&wire.SubmitOpen{Volume: "../etc", Epoch: 1, BlockCount: 16}, wire.ErrBadRequest},
		{&wire.SubmitOpen{Volume: "a", Epoch: 1, BlockCount: 17}, wire.ErrVolumeMismatch},
		{&wire.SubmitOpen{Volume: "a", Epoch: 2, BlockCount: 16}, wire.ErrStaleEpoch},
		{&wire.SubmitOpen{Volume: "a", BlockCount: 16}, wire.ErrBadRequest}, // no epoch: no fencing token
		// Larger than a file may be on ext4: creating it would stop every
		// node, at every replay of the committed entry.
		{&wire.SubmitOpen{Volume: "huge", Epoch: 1, BlockCount: 1 << 35}, wire.ErrBadRequest},
		{&wire.SubmitOpen{Volume: "empty", Epoch: 1}, wire.ErrBadRequest},
	} {
		s, err := cl.Submit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&wire.SubmitRequest{Msg: &wire.SubmitRequest_Open{Open: tc.open}}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); !errors.Is(wire.FromStatus(err), tc.want) {
			t.Errorf("open %v: %v, want %v", tc.open, wire.FromStatus(err), tc.want)
		}
	}

	if st := tn.node.FSM().Stats(); st.CommittedSeq != 0 {
		t.Fatalf("refused submits committed %d batches", st.CommittedSeq)
	}
	if err := tn.node.FatalErr(); err != nil {
		t.Fatalf("the node stopped: %v", err)
	}
	// The node still works.
	s := openStream(t, ctx, cl)
	if err := s.Send(send(batch(1, 3))); err != nil {
		t.Fatal(err)
	}
	resp, err := s.Recv()
	if err != nil || len(resp.GetAcks().GetAcks()) != 1 || resp.GetAcks().GetAcks()[0].GetSeq() != 1 {
		t.Fatalf("valid batch after refusals: %v %v", resp, wire.FromStatus(err))
	}
}

// TestServerFollowerRedirects: a follower answers Submit with the leader's
// address.
func TestServerFollowerRedirects(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.startAll()
	leader := c.leader(15 * time.Second)
	// The leader records its client address when elected; wait for it.
	waitFor(t, 10*time.Second, "the leader's address in the log", func() bool {
		for _, tn := range c.nodes {
			if tn.node.FSM().NodeAddr(leader.id) != leader.clientAddr {
				return false
			}
		}
		return true
	})
	for _, tn := range c.nodes {
		if tn == leader {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		s, err := rawClient(t, tn.clientAddr, 1<<20).Submit(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&wire.SubmitRequest{Msg: &wire.SubmitRequest_Open{Open: &wire.SubmitOpen{Volume: "a", Epoch: 1, BlockCount: 16}}}); err != nil {
			t.Fatal(err)
		}
		_, err = s.Recv()
		cancel()
		var we *wire.Error
		if !errors.As(wire.FromStatus(err), &we) || we.Code != wire.ErrorCode_ERROR_CODE_NOT_LEADER || we.LeaderAddr != leader.clientAddr || we.LeaderID != leader.id {
			t.Errorf("follower %s answered %v, want NOT_LEADER naming %s at %s", tn.id, wire.FromStatus(err), leader.id, leader.clientAddr)
		}
	}
}

// TestNodeStopsOnCorruptEntry: an entry that cannot be decoded stops every
// node's state machine (fail-stop): Fatal fires, status says Failed, and
// Submit is refused.
func TestNodeStopsOnCorruptEntry(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	c.startAll()
	leader := c.leader(15 * time.Second)
	if err := leader.node.Raft().Apply([]byte("not an entry"), 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	for _, tn := range c.nodes {
		select {
		case <-tn.node.Fatal():
		case <-time.After(15 * time.Second):
			t.Fatalf("node %s did not stop on the corrupt entry", tn.id)
		}
		if !errors.Is(tn.node.FatalErr(), wire.ErrBadEntry) {
			t.Errorf("node %s stopped with %v, want a bad entry error", tn.id, tn.node.FatalErr())
		}
		st, err := tn.node.Status(context.Background())
		if err != nil || st.GetRaftState() != "Failed" {
			t.Errorf("node %s status %q (%v), want Failed", tn.id, st.GetRaftState(), err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := rawClient(t, leader.clientAddr, 1<<20).Submit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&wire.SubmitRequest{Msg: &wire.SubmitRequest_Open{Open: &wire.SubmitOpen{Volume: "a", Epoch: 1, BlockCount: 16}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); !errors.Is(wire.FromStatus(err), wire.ErrFailed) {
		t.Errorf("submit to a failed node: %v, want FAILED", wire.FromStatus(err))
	}
}

// TestServerJournalFull: past the journal budget, Submit is refused with
// JOURNAL_FULL naming the budget; what was acknowledged stays committed.
func TestServerJournalFull(t *testing.T) {
	c := newTestCluster(t, 1, func(cfg *intermediate.Config) { cfg.JournalBudget = 10 * wire.BlockSize })
	c.startAll()
	tn := c.leader(15 * time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s := openStream(t, ctx, rawClient(t, tn.clientAddr, 1<<20))
	var acked uint64
	var refused error
	for vseq := uint64(1); vseq <= 20 && refused == nil; vseq++ {
		if err := s.Send(&wire.SubmitRequest{Msg: &wire.SubmitRequest_Batches{Batches: &wire.SubmitBatches{Batches: []*wire.Batch{batch(vseq, vseq%16)}}}}); err != nil {
			break
		}
		resp, err := s.Recv()
		if err != nil {
			refused = wire.FromStatus(err)
			break
		}
		acked += uint64(len(resp.GetAcks().GetAcks()))
	}
	if !errors.Is(refused, wire.ErrJournalFull) {
		t.Fatalf("after %d acks: %v, want JOURNAL_FULL", acked, refused)
	}
	t.Logf("refusal: %v", refused)
	if acked != 10 {
		t.Errorf("%d batches acknowledged under a budget of 10 blocks, want 10", acked)
	}
	if st := tn.node.FSM().Stats(); st.CommittedSeq != acked || st.JournalBytes != acked*wire.BlockSize {
		t.Errorf("committed %d, journal %d bytes; want %d and %d", st.CommittedSeq, st.JournalBytes, acked, acked*wire.BlockSize)
	}
}
