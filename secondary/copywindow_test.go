package secondary_test

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
	"github.com/tricopy/tricopy/secondary"
)

// submitCopying submits n random batches with the copying flag, as a
// primary in COPY or RESYNC sends them.
func submitCopying(t *testing.T, v *client.Volume, rng *rand.Rand, n int) []sentBatch {
	t.Helper()
	var out []sentBatch
	for range n {
		data := make([]byte, wire.BlockSize)
		for i := range data {
			data[i] = byte(rng.Uint32())
		}
		blocks := []*wire.Block{{Index: uint64(rng.IntN(int(v.BlockCount()))), Data: data}}
		ack, err := v.SubmitCopyingAsync(blocks).Wait(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, sentBatch{seq: ack.Seq, blocks: blocks})
	}
	return out
}

// servedSecondary is a secondary with its admin API served on its
// registered address, which records its promotions.
type servedSecondary struct {
	*secondary.Secondary
	addr     string
	mu       sync.Mutex
	promoted []secondary.Promotion
}

func openServedSecondary(t *testing.T, cl *client.Client, addr, volume string) *servedSecondary {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ss := &servedSecondary{addr: ln.Addr().String()}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := secondary.Open(ctx, secondary.Config{
		Volume: volume, Dir: t.TempDir(), Addr: ss.addr, Intermediate: cl, IntermediateAddrs: []string{addr},
		ReportInterval: 20 * time.Millisecond, PeerInterval: 50 * time.Millisecond,
		Logger: testLog(t).With("component", "secondary", "volume", volume),
		OnPromote: func(_ context.Context, p secondary.Promotion) error {
			ss.mu.Lock()
			defer ss.mu.Unlock()
			ss.promoted = append(ss.promoted, p)
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ss.Secondary = s
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() {
		srv.Close()
		s.Close()
	})
	if err := s.Start(nil); err != nil {
		t.Fatal(err)
	}
	return ss
}

// sameReplica fails unless the replica of s is the volume after the
// batches sent with seq <= n.
func sameReplica(t *testing.T, what string, s *servedSecondary, sent []sentBatch, n uint64) {
	t.Helper()
	if !bytes.Equal(replicaImage(t, s.Secondary), imageAt(sent, testBlocks, n)) {
		t.Fatalf("%s: the replica of %s is not its volume at seq %d", what, s.Status().Volume, n)
	}
}

// TestCopyWindowHoldsGroupPoint: while a primary copies or resynchronises
// (its batches carry the copying flag) its volume's image is torn, so the
// group's validated point stays just below the copy window on every
// secondary, although the other volumes' batches keep coming and are
// staged; it moves on when the window closes; and a promotion during an
// open window lands below it, every volume's later batches left for the
// new primaries' resyncs.
func TestCopyWindowHoldsGroupPoint(t *testing.T) {
	node, addr := startNode(t)
	cl := newClient(t, addr)
	rng := rand.New(rand.NewPCG(11, 12))
	va, vb := openVolume(t, cl, "a"), openVolume(t, cl, "b")
	sentA := submitLogged(t, va, rng, 5)
	sentB := submitLogged(t, vb, rng, 5)
	sa := openServedSecondary(t, cl, addr, "a")
	sb := openServedSecondary(t, cl, addr, "b")
	waitApplied(t, sa.Secondary, sentB[len(sentB)-1].seq)
	waitApplied(t, sb.Secondary, sentB[len(sentB)-1].seq)

	// held checks that the group's point sits at n, just below a window
	// opened at n+1 by volume a, once both secondaries staged up to
	// staged.
	held := func(what string, n, staged uint64) {
		t.Helper()
		waitUntil(t, 10*time.Second, "both secondaries to stage every batch", func() bool {
			return sa.Status().DurableSeq >= staged && sb.Status().DurableSeq >= staged
		})
		waitApplied(t, sa.Secondary, n)
		waitApplied(t, sb.Secondary, n)
		time.Sleep(300 * time.Millisecond) // many coordinator rounds
		st := node.FSM().Stats()
		if v, _ := node.FSM().Volume("a"); v.CopySince != n+1 || st.ConsistentSeq != n || st.CopyHeldBy != "a" || st.ValidatedSeq != n {
			t.Fatalf("%s: window from %d, consistent seq %d held by %q, validated %d; want the point held at %d by a",
				what, v.CopySince, st.ConsistentSeq, st.CopyHeldBy, st.ValidatedSeq, n)
		}
		for _, s := range []*servedSecondary{sa, sb} {
			if got := s.Status().AppliedSeq; got != n {
				t.Fatalf("%s: secondary of %s applied %d, inside the copy window from %d", what, s.Status().Volume, got, n+1)
			}
		}
		sameReplica(t, what, sa, sentA, n)
		sameReplica(t, what, sb, sentB, n)
	}

	// a's primary resynchronises while b's writes go on.
	win := submitCopying(t, va, rng, 4)
	sentA = append(sentA, win...)
	sentB = append(sentB, submitLogged(t, vb, rng, 6)...)
	held("first window", win[0].seq-1, sentB[len(sentB)-1].seq)

	// The window closes: the point moves on to everything committed.
	sentA = append(sentA, submitLogged(t, va, rng, 1)...)
	end := sentA[len(sentA)-1].seq
	waitApplied(t, sa.Secondary, end)
	waitApplied(t, sb.Secondary, end)
	sameReplica(t, "window closed", sa, sentA, end)
	sameReplica(t, "window closed", sb, sentB, end)

	// A second window, and a promotion during it: its point is below
	// the window, and each volume's batches after it are left to the
	// new primaries (they start detached and resynchronise).
	win = submitCopying(t, va, rng, 3)
	sentA = append(sentA, win...)
	sentB = append(sentB, submitLogged(t, vb, rng, 2)...)
	n := win[0].seq - 1
	held("second window", n, sentB[len(sentB)-1].seq)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := secondary.PromoteGroup(ctx, secondary.GroupOptions{Secondary: sa.addr, By: "test", Logger: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	if res.N != n || !res.Drained {
		t.Fatalf("promotion at seq %d (drained %v), want %d, below the open window", res.N, res.Drained, n)
	}
	for _, c := range []struct {
		s    *servedSecondary
		sent []sentBatch
	}{{sa, sentA}, {sb, sentB}} {
		c.s.mu.Lock()
		ps := c.s.promoted
		c.s.mu.Unlock()
		last := c.sent[len(c.sent)-1].seq
		if len(ps) != 1 || ps[0].N != n || !ps[0].Drained || ps[0].Seq != last {
			t.Fatalf("promotions of %s: %+v, want one drained to %d with the volume's last batch %d", c.s.Status().Volume, ps, n, last)
		}
		sameReplica(t, "promoted", c.s, c.sent, n)
	}
	if ps := node.FSM().Promotions("a"); len(ps) != 1 || ps[0].Seq != n {
		t.Fatalf("the intermediate's promotion history of a: %+v", ps)
	}
}
