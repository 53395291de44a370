package client

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// runWriters starts writers goroutines at once, writer i submitting
// perWriter batches to vols[i%len(vols)] one after the other, and returns
// every ack by volume name. Each writer checks that its own volume seqs rise
// (volume seqs follow call order).
func runWriters(t *testing.T, vols []*Volume, writers, perWriter int) map[string][]Ack {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var (
		mu   sync.Mutex
		acks = make(map[string][]Ack)
		wg   sync.WaitGroup
	)
	start := make(chan struct{})
	errs := make(chan error, writers)
	for i := range writers {
		v := vols[i%len(vols)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			var prev uint64
			for j := range perWriter {
				ack, err := v.Submit(ctx, testBlocks(v.Name(), uint64(i*perWriter+j)))
				if err != nil {
					errs <- fmt.Errorf("writer %d, submit %d to %s: %w", i, j, v.Name(), err)
					return
				}
				if ack.VolumeSeq <= prev {
					errs <- fmt.Errorf("writer %d: volume seq %d after %d", i, ack.VolumeSeq, prev)
					return
				}
				prev = ack.VolumeSeq
				mu.Lock()
				acks[v.Name()] = append(acks[v.Name()], ack)
				mu.Unlock()
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	return acks
}

// checkExactlyOnce checks that every volume has perVolume acks with gapless
// volume seqs, that the fake committed each volume seq exactly once, in
// order, at the seq the client was told, and that no seq was given twice.
func checkExactlyOnce(t *testing.T, cl *fakeCluster, acks map[string][]Ack, perVolume int) {
	t.Helper()
	owner := make(map[uint64]string)
	for name, as := range acks {
		as = slices.Clone(as)
		sort.Slice(as, func(i, j int) bool { return as[i].VolumeSeq < as[j].VolumeSeq })
		if len(as) != perVolume {
			t.Errorf("volume %s: %d acks, want %d", name, len(as), perVolume)
		}
		commits := cl.volumeCommits(name)
		if len(commits) != perVolume {
			t.Errorf("volume %s: fake committed %d batches, want %d", name, len(commits), perVolume)
		}
		for i, a := range as {
			if a.VolumeSeq != uint64(i+1) {
				t.Fatalf("volume %s: ack %d has volume seq %d: gap or duplicate", name, i, a.VolumeSeq)
			}
			if i >= len(commits) {
				continue
			}
			c := commits[i]
			if c.batch.GetVolumeSeq() != a.VolumeSeq || c.seq != a.Seq {
				t.Errorf("volume %s: volume seq %d acked at seq %d, fake committed volume seq %d at seq %d",
					name, a.VolumeSeq, a.Seq, c.batch.GetVolumeSeq(), c.seq)
			}
			if i > 0 && c.seq <= commits[i-1].seq {
				t.Errorf("volume %s: volume seq %d committed at seq %d, not after %d", name, a.VolumeSeq, c.seq, commits[i-1].seq)
			}
			if other, ok := owner[a.Seq]; ok {
				t.Errorf("seq %d given to %s and %s", a.Seq, other, name)
			}
			owner[a.Seq] = name
		}
	}
}

func TestSubmitConcurrentGroupCommit(t *testing.T) {
	cl := newFakeCluster(t, "n1")
	cl.node("n1").set(func() { cl.node("n1").ackDelay = 500 * time.Microsecond })
	c := newTestClient(t, Config{Addrs: cl.addrs("n1")})
	var vols []*Volume
	for i := range 4 {
		vols = append(vols, openVolume(t, c, fmt.Sprintf("v%d", i)))
	}
	const writers, perWriter = 64, 25
	acks := runWriters(t, vols, writers, perWriter)
	checkExactlyOnce(t, cl, acks, writers/len(vols)*perWriter)

	sizes := get(cl, func() []int { return slices.Clone(cl.msgSizes) })
	total := 0
	for _, n := range sizes {
		total += n
	}
	if total != writers*perWriter {
		t.Errorf("fake received %d batches, want %d", total, writers*perWriter)
	}
	if m := slices.Max(sizes); m < 2 || len(sizes) >= total {
		t.Errorf("no group commit: %d messages for %d batches, at most %d batches per message", len(sizes), total, m)
	}
	t.Logf("%d batches in %d messages, at most %d per message", total, len(sizes), slices.Max(sizes))
	for _, v := range vols {
		if got, want := v.NextVolumeSeq(), uint64(writers/len(vols)*perWriter+1); got != want {
			t.Errorf("volume %s: NextVolumeSeq %d, want %d", v.Name(), got, want)
		}
	}
}

func TestSubmitExactlyOnceAcrossFailures(t *testing.T) {
	const writers, perWriter, nvols = 32, 20, 4
	cl := newFakeCluster(t, "a", "b")
	a, b := cl.node("a"), cl.node("b")
	a.set(func() {
		a.ackDelay = 200 * time.Microsecond
		a.dropEvery, a.dropAcks = 7, 4
		a.closeAfter, a.closeTimes = 25, 3
	})
	b.set(func() {
		b.ackDelay = 200 * time.Microsecond
		b.dropEvery, b.dropAcks = 5, 3
		b.closeAfter, b.closeTimes = 30, 2
	})
	cl.set(func() { cl.flipAt, cl.flipTo = writers*perWriter/2, "b" })
	// b comes first, so opening follows a NOT_LEADER redirect to a.
	c := newTestClient(t, Config{Addrs: cl.addrs("b", "a")})
	var vols []*Volume
	for i := range nvols {
		vols = append(vols, openVolume(t, c, fmt.Sprintf("v%d", i)))
	}
	acks := runWriters(t, vols, writers, perWriter)
	checkExactlyOnce(t, cl, acks, writers/nvols*perWriter)

	duplicates := 0
	for _, as := range acks {
		for _, a := range as {
			if a.Duplicate {
				duplicates++
			}
		}
	}
	type counts struct{ dups, dupDiffer, notLeaders, opensA, opensB int }
	got := get(cl, func() counts {
		return counts{cl.dups, cl.dupDiffer, cl.notLeaders, cl.opens["a"], cl.opens["b"]}
	})
	t.Logf("fake: %+v; client saw %d duplicate acks", got, duplicates)
	if got.dups == 0 || duplicates == 0 {
		t.Errorf("no batch was resent after its ack was lost (fake dups %d, duplicate acks %d)", got.dups, duplicates)
	}
	if got.dupDiffer != 0 {
		t.Errorf("%d resent batches differ from the original", got.dupDiffer)
	}
	if got.notLeaders == 0 || got.opensA == 0 || got.opensB == 0 {
		t.Errorf("leadership did not move from a to b under the client: %+v", got)
	}
}

func TestSubmitPermanentErrorBreaksVolume(t *testing.T) {
	for _, tc := range []struct {
		name     string
		refusal  *wire.Error
		sentinel error
	}{
		{"stale epoch", &wire.Error{Code: wire.ErrorCode_ERROR_CODE_STALE_EPOCH, Epoch: 2}, wire.ErrStaleEpoch},
		{"journal full", &wire.Error{Code: wire.ErrorCode_ERROR_CODE_JOURNAL_FULL}, wire.ErrJournalFull},
		{"gap", &wire.Error{Code: wire.ErrorCode_ERROR_CODE_GAP, ResumeVolumeSeq: 7}, wire.ErrGap},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl := newFakeCluster(t, "n1")
			n := cl.node("n1")
			c := newTestClient(t, Config{Addrs: cl.addrs("n1")})
			v := openVolume(t, c, "v")
			n.set(func() { n.refuse = tc.refusal })

			var pending []*Pending
			for i := range 10 {
				pending = append(pending, v.SubmitAsync(testBlocks("v", uint64(i))))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for _, p := range pending {
				_, err := p.Wait(ctx)
				if !errors.Is(err, tc.sentinel) || !errors.Is(err, ErrBroken) {
					t.Fatalf("batch %d: err %v, want %v and %v", p.VolumeSeq(), err, tc.sentinel, ErrBroken)
				}
			}
			_, err := v.Submit(ctx, testBlocks("v", 11))
			if !errors.Is(err, ErrBroken) || !errors.Is(err, tc.sentinel) {
				t.Fatalf("submit after break: err %v, want %v wrapping %v", err, ErrBroken, tc.sentinel)
			}
			if got := len(cl.volumeCommits("v")); got != 0 {
				t.Errorf("fake committed %d batches, want 0", got)
			}
			if err := v.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
}

func TestOpenVolumeRefused(t *testing.T) {
	cl := newFakeCluster(t, "n1")
	cl.inject("v", 3)
	cl.set(func() { cl.vols["v"].epoch = 2 })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name     string
		cfg      Config
		opts     VolumeOptions
		sentinel error
	}{
		{"stale epoch", Config{}, VolumeOptions{Name: "v", Epoch: 1, BlockCount: 1024}, wire.ErrStaleEpoch},
		{"size mismatch", Config{}, VolumeOptions{Name: "v", Epoch: 2, BlockCount: 10}, wire.ErrVolumeMismatch},
		{"wrong group", Config{Group: "other"}, VolumeOptions{Name: "v", Epoch: 2, BlockCount: 1024}, wire.ErrWrongGroup},
		{"empty name", Config{}, VolumeOptions{BlockCount: 1024}, wire.ErrBadRequest},
		{"no blocks", Config{}, VolumeOptions{Name: "v"}, wire.ErrBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Addrs = cl.addrs("n1")
			c := newTestClient(t, tc.cfg)
			_, err := c.OpenVolume(ctx, tc.opts)
			if !errors.Is(err, tc.sentinel) {
				t.Fatalf("OpenVolume: err %v, want %v", err, tc.sentinel)
			}
		})
	}
	t.Run("right epoch", func(t *testing.T) {
		c := newTestClient(t, Config{Addrs: cl.addrs("n1")})
		v, err := c.OpenVolume(ctx, VolumeOptions{Name: "v", Epoch: 2, BlockCount: 1024})
		if err != nil {
			t.Fatalf("OpenVolume: %v", err)
		}
		if got := v.NextVolumeSeq(); got != 4 {
			t.Errorf("NextVolumeSeq %d, want 4", got)
		}
	})
}

func TestOpenVolumeFindsLeaderWithoutHint(t *testing.T) {
	cl := newFakeCluster(t, "a", "b", "c")
	cl.set(func() { cl.leader, cl.hideLeader = "c", true })
	c := newTestClient(t, Config{Addrs: cl.addrs("a", "b", "c")})
	v := openVolume(t, c, "v")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := v.Submit(ctx, testBlocks("v", 1))
	if err != nil || ack.VolumeSeq != 1 || ack.Seq != 1 {
		t.Fatalf("Submit: %+v, %v; want volume seq 1 at seq 1", ack, err)
	}
	if got := get(cl, func() int { return cl.opens["c"] }); got != 1 {
		t.Errorf("leader answered %d opens, want 1", got)
	}
}

func TestOpenVolumeTimesOutWithoutLeader(t *testing.T) {
	cl := newFakeCluster(t, "a", "b")
	cl.set(func() { cl.leader = "" })
	c := newTestClient(t, Config{Addrs: cl.addrs("a", "b")})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := c.OpenVolume(ctx, VolumeOptions{Name: "v", BlockCount: 1024})
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, wire.ErrNotLeader) {
		t.Fatalf("OpenVolume: err %v, want deadline exceeded after not-leader refusals", err)
	}
	// The name is free again.
	cl.set(func() { cl.leader = "b" })
	openVolume(t, c, "v")
}

func TestSubmitAckMismatchBreaksVolume(t *testing.T) {
	cl := newFakeCluster(t, "n1")
	n := cl.node("n1")
	n.set(func() { n.skewAck = 1 })
	c := newTestClient(t, Config{Addrs: cl.addrs("n1")})
	v := openVolume(t, c, "v")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := v.Submit(ctx, testBlocks("v", 1))
	if !errors.Is(err, ErrBroken) || !errors.Is(err, errProtocol) {
		t.Fatalf("Submit: err %v, want %v for an ack out of order", err, ErrBroken)
	}
}

func TestSubmitLostAcknowledgedBatchesBreaks(t *testing.T) {
	cl := newFakeCluster(t, "n1")
	n := cl.node("n1")
	c := newTestClient(t, Config{Addrs: cl.addrs("n1")})
	v := openVolume(t, c, "v")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 5 {
		if _, err := v.Submit(ctx, testBlocks("v", uint64(i))); err != nil {
			t.Fatalf("Submit %d: %v", i, err)
		}
	}
	// The intermediate forgets acknowledged batches 3 to 5, then drops
	// the stream: the client must not resend 6 on top of 2.
	cl.truncate("v", 2)
	n.set(func() { n.refuse = status.Error(codes.Unavailable, "fake: restarting") })
	_, err := v.Submit(ctx, testBlocks("v", 6))
	if !errors.Is(err, ErrBroken) {
		t.Fatalf("Submit after the intermediate lost acknowledged batches: err %v, want %v", err, ErrBroken)
	}
	if got := len(cl.volumeCommits("v")); got != 2 {
		t.Errorf("fake holds %d batches, want 2 (nothing resent)", got)
	}
}

func TestSubmitLocalRefusals(t *testing.T) {
	cl := newFakeCluster(t, "n1")
	c := newTestClient(t, Config{Addrs: cl.addrs("n1"), MaxMessage: 64 << 10})
	v := openVolume(t, c, "v")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	big := make([]*wire.Block, 16)
	for i := range big {
		big[i] = &wire.Block{Index: uint64(i), Data: make([]byte, wire.BlockSize)}
	}
	for _, tc := range []struct {
		name     string
		blocks   []*wire.Block
		sentinel error
	}{
		{"too large", big, wire.ErrTooLarge},
		{"no blocks", nil, wire.ErrBadRequest},
		{"short block", []*wire.Block{{Index: 1, Data: make([]byte, 10)}}, wire.ErrBadRequest},
		{"index outside volume", []*wire.Block{{Index: 1024, Data: make([]byte, wire.BlockSize)}}, wire.ErrBadRequest},
		{"nil block", []*wire.Block{nil}, wire.ErrBadRequest},
	} {
		if _, err := v.Submit(ctx, tc.blocks); !errors.Is(err, tc.sentinel) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.sentinel)
		}
	}
	if got := v.NextVolumeSeq(); got != 1 {
		t.Errorf("refused batches took volume seqs: next %d, want 1", got)
	}
	ack, err := v.Submit(ctx, big[:15])
	if err != nil || ack.VolumeSeq != 1 {
		t.Fatalf("Submit of a batch that fits: %+v, %v", ack, err)
	}
}

func TestSubmitCancelAbandonsWaitNotBatch(t *testing.T) {
	cl := newFakeCluster(t, "n1")
	n := cl.node("n1")
	hold := make(chan struct{})
	n.set(func() { n.hold = hold })
	c := newTestClient(t, Config{Addrs: cl.addrs("n1")})
	v := openVolume(t, c, "v")

	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := v.Submit(ctx, testBlocks("v", 1))
		errc <- err
	}()
	eventually(t, "the fake to receive the batch", func() bool { return get(cl, func() int { return cl.received }) >= 1 })
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Submit with cancelled ctx: err %v, want %v", err, context.Canceled)
	}
	if _, err := v.Submit(ctx, testBlocks("v", 2)); !errors.Is(err, context.Canceled) {
		t.Fatalf("Submit with a ctx already done: err %v", err)
	}
	close(hold)

	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	ack, err := v.Submit(wctx, testBlocks("v", 3))
	if err != nil || ack.VolumeSeq != 2 {
		t.Fatalf("Submit after cancel: %+v, %v; want volume seq 2", ack, err)
	}
	if got := len(cl.volumeCommits("v")); got != 2 {
		t.Errorf("fake committed %d batches, want 2 (the abandoned one stays)", got)
	}
}

func TestMaxInFlightBoundsUnacknowledged(t *testing.T) {
	cl := newFakeCluster(t, "n1")
	n := cl.node("n1")
	hold := make(chan struct{})
	n.set(func() { n.hold = hold })
	one := []*wire.Block{{Index: 0, Data: make([]byte, wire.BlockSize)}}
	// What SubmitAsync budgets for a batch, whatever its volume seq and crc.
	size := batchSize(&wire.Batch{Volume: "v", Epoch: 1, VolumeSeq: math.MaxUint64, Blocks: one, Crc: math.MaxUint32})
	c := newTestClient(t, Config{Addrs: cl.addrs("n1"), MaxInFlight: 3 * size})
	v := openVolume(t, c, "v")
	var pending []*Pending
	for range 10 {
		pending = append(pending, v.SubmitAsync(one))
	}
	state := func() (sent, inflight int) {
		v.mu.Lock()
		defer v.mu.Unlock()
		return v.sent, v.inflight
	}
	eventually(t, "three batches in flight", func() bool { s, _ := state(); return s == 3 })
	// Nothing frees room while acks are held: the sender must stay at three.
	for range 20 {
		if s, in := state(); s != 3 || in > 3*size {
			t.Fatalf("%d batches, %d bytes in flight; bound is 3 batches, %d bytes", s, in, 3*size)
		}
		time.Sleep(time.Millisecond)
	}
	close(hold)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, p := range pending {
		if ack, err := p.Wait(ctx); err != nil || ack.VolumeSeq != uint64(i+1) {
			t.Fatalf("batch %d: %+v, %v", i+1, ack, err)
		}
	}
}

func TestVolumeClose(t *testing.T) {
	cl := newFakeCluster(t, "n1")
	c := newTestClient(t, Config{Addrs: cl.addrs("n1")})
	v := openVolume(t, c, "v")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.OpenVolume(ctx, VolumeOptions{Name: "v", BlockCount: 1024}); err == nil {
		t.Fatal("second OpenVolume of an open volume succeeded")
	}
	if _, err := v.Submit(ctx, testBlocks("v", 1)); err != nil {
		t.Fatalf("Submit: %v", err)
	}
	if err := v.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := v.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := v.Submit(ctx, testBlocks("v", 2)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Submit after Close: err %v, want %v", err, ErrClosed)
	}
	v = openVolume(t, c, "v")
	if got := v.NextVolumeSeq(); got != 2 {
		t.Fatalf("reopened NextVolumeSeq %d, want 2", got)
	}
}

func TestCloseFailsPendingAndLeaksNothing(t *testing.T) {
	cl := newFakeCluster(t, "n1")
	n := cl.node("n1")
	hold := make(chan struct{})
	defer close(hold)
	n.set(func() { n.hold = hold })
	before := runtime.NumGoroutine()

	c, err := New(Config{Addrs: cl.addrs("n1"), Backoff: time.Millisecond, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	v := openVolume(t, c, "v")
	var pending []*Pending
	for i := range 20 {
		pending = append(pending, v.SubmitAsync(testBlocks("v", uint64(i))))
	}
	eventually(t, "the fake to receive a batch", func() bool { return get(cl, func() int { return cl.received }) >= 1 })
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	for _, p := range pending {
		if _, err := p.Wait(context.Background()); !errors.Is(err, ErrClosed) {
			t.Fatalf("pending batch %d: err %v, want %v", p.VolumeSeq(), err, ErrClosed)
		}
	}
	ctx := context.Background()
	if _, err := v.Submit(ctx, testBlocks("v", 21)); !errors.Is(err, ErrClosed) {
		t.Errorf("Submit after Close: err %v", err)
	}
	if _, err := c.OpenVolume(ctx, VolumeOptions{Name: "w", BlockCount: 1}); !errors.Is(err, ErrClosed) {
		t.Errorf("OpenVolume after Close: err %v", err)
	}
	if err := c.Fetch(ctx, "v", 0, func(*wire.FetchResponse) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("Fetch after Close: err %v", err)
	}
	if _, err := c.Status(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Status after Close: err %v", err)
	}
	if err := v.Close(); err != nil {
		t.Errorf("Volume.Close after Client.Close: %v", err)
	}
	checkNoClientGoroutines(t)
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Close, %d before the client", runtime.NumGoroutine(), before)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
