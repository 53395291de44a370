package secondary_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
	"github.com/tricopy/tricopy/secondary"
)

// sentBatch is a batch a test submitted, with the seq it got.
type sentBatch struct {
	seq    uint64
	blocks []*wire.Block
}

// submitLogged submits n random batches and returns them with their seqs.
func submitLogged(t *testing.T, v *client.Volume, rng *rand.Rand, n int) []sentBatch {
	t.Helper()
	var out []sentBatch
	for range n {
		var blocks []*wire.Block
		for range 1 + rng.IntN(3) {
			data := make([]byte, wire.BlockSize)
			for i := range data {
				data[i] = byte(rng.Uint32())
			}
			blocks = append(blocks, &wire.Block{Index: uint64(rng.IntN(int(v.BlockCount()))), Data: data})
		}
		ack, err := v.Submit(context.Background(), blocks)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, sentBatch{seq: ack.Seq, blocks: blocks})
	}
	return out
}

// imageAt returns the volume image after the batches with seq <= n.
func imageAt(sent []sentBatch, blocks, n uint64) []byte {
	img := make([]byte, blocks*wire.BlockSize)
	for _, b := range sent {
		if b.seq > n {
			continue
		}
		for _, blk := range b.blocks {
			copy(img[blk.GetIndex()*wire.BlockSize:], blk.GetData())
		}
	}
	return img
}

// replicaImage reads the whole replica of s.
func replicaImage(t *testing.T, s *secondary.Secondary) []byte {
	t.Helper()
	r := s.Replica()
	img := make([]byte, r.BlockCount()*wire.BlockSize)
	if err := r.ReadBlocks(0, img); err != nil {
		t.Fatal(err)
	}
	return img
}

// TestPromote promotes a secondary whose staging store holds batches past
// the promote point (the group's validated point is held back by a down
// secondary): the replica is rolled forward to exactly N, the later batches
// are kept aside and exported, the record survives a restart, a repeated
// promotion is harmless and another one is refused.
func TestPromote(t *testing.T) {
	_, addr := startNode(t)
	cl := newClient(t, addr)
	rng := rand.New(rand.NewPCG(3, 4))
	va, vb := openVolume(t, cl, "a"), openVolume(t, cl, "b")
	dirA, dirB := t.TempDir(), t.TempDir()
	sent := submitLogged(t, va, rng, 10)
	submitLogged(t, vb, rng, 2)
	sb := openSecondary(t, cl, dirB, "b")
	var promoted []secondary.Promotion
	open := func(fail bool) *secondary.Secondary {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := secondary.Open(ctx, secondary.Config{
			Volume: "a", Dir: dirA, Addr: "127.0.0.1:1", Intermediate: cl, ReportInterval: 20 * time.Millisecond,
			PeerInterval: 50 * time.Millisecond, IntermediateAddrs: []string{addr}, Logger: testLog(t).With("component", "secondary"),
			OnPromote: func(_ context.Context, p secondary.Promotion) error {
				if fail {
					return errors.New("injected failure to become primary")
				}
				promoted = append(promoted, p)
				return nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Start(nil); err != nil {
			t.Fatal(err)
		}
		return s
	}
	sa := open(true)
	waitApplied(t, sa, sent[len(sent)-1].seq)
	waitApplied(t, sb, sent[len(sent)-1].seq)
	waitUntil(t, 10*time.Second, "a to learn its group", func() bool { return len(sa.Group().Peers) == 2 && sa.Group().Epoch == 1 })

	// b goes down: a stages the next batches but cannot apply them.
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	applied := sa.Status().AppliedSeq
	more := submitLogged(t, va, rng, 12)
	sent = append(sent, more...)
	last := more[len(more)-1].seq
	waitUntil(t, 10*time.Second, "a to stage every batch", func() bool { return sa.Status().DurableSeq >= last })
	if got := sa.Status().AppliedSeq; got != applied {
		t.Fatalf("a applied %d while b was down (at %d before)", got, applied)
	}
	n := more[4].seq
	ctx := context.Background()

	// Points it cannot reach are refused.
	if _, err := sa.Promote(ctx, secondary.PromoteRequest{ID: "p0", N: last + 100, Epoch: 2}); err == nil {
		t.Fatal("promote beyond what is staged: no error")
	}
	if sa.Promotion() != nil {
		t.Fatal("a refused promotion left a record")
	}
	// The first attempt fails to become primary: the record stays, not done.
	req := secondary.PromoteRequest{ID: "p1", N: n, Epoch: 2, By: "test"}
	if _, err := sa.Promote(ctx, req); err == nil {
		t.Fatal("promote with a failing OnPromote: no error")
	}
	if p := sa.Promotion(); p == nil || p.Done || p.N != n {
		t.Fatalf("record after a failed promotion: %+v", p)
	}
	if !bytes.Equal(replicaImage(t, sa), imageAt(sent, testBlocks, n)) {
		t.Fatal("the replica is not the volume at N after the roll forward")
	}
	if err := sa.Close(); err != nil {
		t.Fatal(err)
	}

	// Restarted, it does not follow, and a promote finishes the recorded one.
	sa = open(false)
	defer func() { sa.Close() }()
	if st := sa.Status(); st.State != secondary.StatePromoted || st.Role != secondary.RoleSecondary {
		t.Fatalf("status after restart mid-promotion: %+v", st)
	}
	p, err := sa.Promote(ctx, secondary.PromoteRequest{ID: "p1", N: n, Epoch: 2})
	if err != nil {
		t.Fatal(err)
	}
	wantUnapplied := 0
	for _, b := range more {
		if b.seq > n {
			wantUnapplied++
		}
	}
	if !p.Done || p.N != n || p.Epoch != 2 || p.Unapplied != wantUnapplied || p.UnappliedBytes == 0 || p.By != "test" {
		t.Fatalf("promotion %+v, want done at %d with %d batches aside", p, n, wantUnapplied)
	}
	if len(promoted) != 1 || promoted[0].ID != "p1" {
		t.Fatalf("OnPromote calls: %+v", promoted)
	}
	st := sa.Status()
	if st.State != secondary.StatePromoted || st.Role != secondary.RolePrimary || st.Epoch != 2 || st.AppliedSeq != n || len(st.Peers) != 2 {
		t.Fatalf("status after promotion: %+v", st)
	}
	if !bytes.Equal(replicaImage(t, sa), imageAt(sent, testBlocks, n)) {
		t.Fatal("the promoted replica is not the volume at N")
	}

	// Again: harmless. Another promotion: refused.
	if again, err := sa.Promote(ctx, req); err != nil || again.N != n || !again.Done {
		t.Fatalf("promote again: %+v, %v", again, err)
	}
	if _, err := sa.Promote(ctx, secondary.PromoteRequest{ID: "p2", N: last, Epoch: 3}); !errors.Is(err, secondary.ErrPromoted) {
		t.Fatalf("another promotion: %v, want ErrPromoted", err)
	}
	if len(promoted) != 1 {
		t.Fatalf("OnPromote ran again: %+v", promoted)
	}

	// The batches after N are exported in order, checked.
	var buf bytes.Buffer
	if k, err := sa.ExportUnapplied(&buf); err != nil || k != wantUnapplied {
		t.Fatalf("export: %d batches, %v", k, err)
	}
	var seqs []uint64
	if _, err := secondary.ReadUnapplied(&buf, func(cb *wire.CommittedBatch) error {
		seqs = append(seqs, cb.GetSeq())
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for i, b := range more[5:] {
		if seqs[i] != b.seq {
			t.Fatalf("exported seqs %v, want those of the batches after %d", seqs, n)
		}
	}

	// The promoted volume takes writes below its header.
	vol := sa.Replica().PrimaryVolume()
	data := bytes.Repeat([]byte{7}, blockdev.BlockSize)
	if err := vol.Apply(ctx, &blockdev.Batch{Writes: []blockdev.Write{{Index: testBlocks - 1, Data: data}}}, blockdev.ApplyOptions{Sync: true}); err != nil {
		t.Fatal(err)
	}
	if err := vol.Apply(ctx, &blockdev.Batch{Writes: []blockdev.Write{{Index: testBlocks, Data: data}}}, blockdev.ApplyOptions{}); !errors.Is(err, blockdev.ErrOutOfRange) {
		t.Fatalf("write over the header: %v, want ErrOutOfRange", err)
	}
	if err := sa.Close(); err != nil {
		t.Fatal(err)
	}
	sa = open(false)
	if p := sa.Promotion(); p == nil || !p.Done || sa.Status().Role != secondary.RolePrimary {
		t.Fatalf("after a restart: %+v", p)
	}
}

// TestPromoteGroupRefusesPart: a group with a volume no known secondary
// follows is not promoted in part.
func TestPromoteGroupRefusesPart(t *testing.T) {
	_, addr := startNode(t)
	cl := newClient(t, addr)
	rng := rand.New(rand.NewPCG(7, 8))
	va, vb := openVolume(t, cl, "a"), openVolume(t, cl, "b")
	submitLogged(t, va, rng, 3)
	submitLogged(t, vb, rng, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := secondary.Open(ctx, secondary.Config{Volume: "a", Dir: t.TempDir(), Addr: "127.0.0.1:1", Intermediate: cl,
		PeerInterval: 50 * time.Millisecond, Logger: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Start(nil); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 10*time.Second, "a to learn its group", func() bool {
		st := s.Status()
		return len(st.Peers) == 1 && len(st.GroupVolumes) == 2
	})
	srv := httptest.NewServer(s.Handler())
	defer srv.Close()
	_, err = secondary.PromoteGroup(ctx, secondary.GroupOptions{Secondary: strings.TrimPrefix(srv.URL, "http://"), Logger: testLog(t)})
	if err == nil || !strings.Contains(err.Error(), "volume(s) b") {
		t.Fatalf("promote of a group whose volume b has no secondary: %v, want a refusal naming b", err)
	}
	if s.Promotion() != nil {
		t.Fatal("a refused group promotion promoted a")
	}
}
