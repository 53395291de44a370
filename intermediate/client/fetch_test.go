package client

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate/wire"
)

var errDone = errors.New("done")

func TestFetchResumesWithoutDuplicates(t *testing.T) {
	cl := newFakeCluster(t, "a", "b")
	for _, id := range []string{"a", "b"} {
		n := cl.node(id)
		n.set(func() {
			n.fetchMax = 3
			n.fetchEvery, n.fetchCloses = 2, 3
			n.fetchReplay = 2 // resend batches the client has: it must drop them
		})
	}
	var want []uint64
	for range 5 {
		want = append(want, cl.inject("f", 2)...)
		cl.inject("g", 1)
	}
	c := newTestClient(t, Config{Addrs: cl.addrs("a", "b")})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var got []uint64
	err := c.Fetch(ctx, "f", 0, func(resp *wire.FetchResponse) error {
		for _, cb := range resp.GetBatches() {
			got = append(got, cb.GetSeq())
		}
		if len(got) == 10 {
			// More commits while the stream waits for them.
			want = append(want, cl.inject("f", 10)...)
		}
		if len(got) >= 20 {
			return errDone
		}
		return nil
	})
	if err != errDone {
		t.Fatalf("Fetch: err %v, want fn's error unchanged", err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("delivered seqs %v, want %v", got, want)
	}
	afters := get(cl, func() []uint64 { return slices.Clone(cl.fetchAfter) })
	if len(afters) < 4 {
		t.Fatalf("Fetch streams asked after %v; want at least 3 reconnects", afters)
	}
	for _, a := range afters[1:] {
		if !slices.Contains(got, a) {
			t.Errorf("a reconnect resumed after seq %d, not a delivered seq (afters %v)", a, afters)
		}
	}
	if !slices.IsSorted(afters) {
		t.Errorf("resume points %v go backwards", afters)
	}
}

func TestFetchRefusesCorruptBatch(t *testing.T) {
	cl := newFakeCluster(t, "a")
	seqs := cl.inject("f", 10)
	n := cl.node("a")
	n.set(func() { n.fetchMax, n.corruptSeq = 4, seqs[5] })
	c := newTestClient(t, Config{Addrs: cl.addrs("a")})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []uint64
	err := c.Fetch(ctx, "f", 0, func(resp *wire.FetchResponse) error {
		for _, cb := range resp.GetBatches() {
			got = append(got, cb.GetSeq())
		}
		return nil
	})
	if !errors.Is(err, wire.ErrBadCRC) {
		t.Fatalf("Fetch: err %v, want %v", err, wire.ErrBadCRC)
	}
	if !slices.Equal(got, seqs[:4]) {
		t.Errorf("delivered %v, want only %v (nothing of the corrupt response)", got, seqs[:4])
	}
	if calls := get(cl, func() int { return len(cl.fetchAfter) }); calls != 1 {
		t.Errorf("%d Fetch calls, want 1: a corrupt batch is not retried", calls)
	}
}

func TestFetchStopsWithContext(t *testing.T) {
	cl := newFakeCluster(t, "a")
	cl.inject("f", 2)
	c := newTestClient(t, Config{Addrs: cl.addrs("a")})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	delivered := make(chan struct{}, 10)
	go func() {
		errc <- c.Fetch(ctx, "f", 0, func(*wire.FetchResponse) error {
			delivered <- struct{}{}
			return nil
		})
	}()
	select {
	case <-delivered:
	case <-time.After(10 * time.Second):
		t.Fatal("nothing delivered")
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Fetch: err %v, want %v", err, context.Canceled)
	}
}

func TestCheckFetchedRefusesBadBatches(t *testing.T) {
	good := func() *wire.CommittedBatch {
		return &wire.CommittedBatch{Seq: 7, Batch: wire.Seal(&wire.Batch{Volume: "f", Epoch: 1, VolumeSeq: 3, Blocks: testBlocks("f", 3)})}
	}
	if err := checkFetched("f", &wire.FetchResponse{Batches: []*wire.CommittedBatch{good()}}); err != nil {
		t.Fatalf("good batch refused: %v", err)
	}
	for _, tc := range []struct {
		name     string
		mutate   func(*wire.CommittedBatch)
		sentinel error
	}{
		{"no batch", func(cb *wire.CommittedBatch) { cb.Batch = nil }, wire.ErrBadRequest},
		{"no seq", func(cb *wire.CommittedBatch) { cb.Seq = 0 }, wire.ErrBadRequest},
		{"other volume", func(cb *wire.CommittedBatch) { cb.Batch.Volume = "g"; wire.Seal(cb.Batch) }, wire.ErrBadRequest},
		{"short block", func(cb *wire.CommittedBatch) { cb.Batch.Blocks[0].Data = cb.Batch.Blocks[0].Data[:10] }, wire.ErrBadRequest},
		{"flipped bit", func(cb *wire.CommittedBatch) { cb.Batch.Blocks[0].Data[100] ^= 1 }, wire.ErrBadCRC},
		{"changed volume seq", func(cb *wire.CommittedBatch) { cb.Batch.VolumeSeq++ }, wire.ErrBadCRC},
	} {
		cb := good()
		tc.mutate(cb)
		err := checkFetched("f", &wire.FetchResponse{Batches: []*wire.CommittedBatch{good(), cb}})
		if !errors.Is(err, tc.sentinel) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.sentinel)
		}
	}
}
