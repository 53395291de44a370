package client

import (
	"context"
	"errors"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// scriptedFetch is a node whose Fetch streams send scripted responses: the
// i-th stream sends streams[i], then ends with Unavailable (the last one
// waits for the client instead).
type scriptedFetch struct {
	wire.UnimplementedIntermediateServer
	addr    string
	streams [][]*wire.FetchResponse

	mu     sync.Mutex
	afters []uint64 // after_seq of every Fetch call
}

func startScriptedFetch(t testing.TB, streams ...[]*wire.FetchResponse) *scriptedFetch {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &scriptedFetch{addr: lis.Addr().String(), streams: streams}
	srv := grpc.NewServer()
	wire.RegisterIntermediateServer(srv, s)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return s
}

func (s *scriptedFetch) Fetch(req *wire.FetchRequest, stream grpc.ServerStreamingServer[wire.FetchResponse]) error {
	s.mu.Lock()
	i := len(s.afters)
	s.afters = append(s.afters, req.GetAfterSeq())
	s.mu.Unlock()
	if i < len(s.streams) {
		for _, r := range s.streams[i] {
			if err := stream.Send(r); err != nil {
				return err
			}
		}
	}
	if i+1 < len(s.streams) {
		return status.Error(codes.Unavailable, "scripted: stream ends")
	}
	<-stream.Context().Done()
	return stream.Context().Err()
}

func (s *scriptedFetch) calls() []uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.afters)
}

// committed returns a committed batch of volume f with seq and volume seq
// seq.
func committed(seq uint64) *wire.CommittedBatch {
	return &wire.CommittedBatch{Seq: seq, Batch: wire.Seal(&wire.Batch{Volume: "f", Epoch: 1, VolumeSeq: seq, Blocks: testBlocks("f", seq)})}
}

func response(seqs ...uint64) *wire.FetchResponse {
	r := &wire.FetchResponse{}
	for _, s := range seqs {
		r.Batches = append(r.Batches, committed(s))
		r.CommittedSeq, r.CompleteSeq = s, s
	}
	return r
}

// TestFetchRefusesSeqsOutOfOrder: on one stream, a batch whose seq repeats
// or goes backwards, in a later response or within one, ends Fetch with an
// error naming the seqs and wrapping wire.ErrBadCRC and wire.ErrBadRequest;
// nothing of that response reaches fn and Fetch does not retry. A stream
// that resumes with batches fn has is still fine: they are dropped.
func TestFetchRefusesSeqsOutOfOrder(t *testing.T) {
	for _, tc := range []struct {
		name    string
		streams [][]*wire.FetchResponse
		want    []uint64 // delivered
		refusal string   // "" for none: fn's errDone after want
	}{
		{"repeat in a later response", [][]*wire.FetchResponse{{response(1, 2), response(2, 3)}}, []uint64{1, 2}, "seq 2 after seq 2"},
		{"backwards in a later response", [][]*wire.FetchResponse{{response(4, 5), response(3)}}, []uint64{4, 5}, "seq 3 after seq 5"},
		{"backwards within a response", [][]*wire.FetchResponse{{response(1), response(3, 2)}}, []uint64{1}, "seq 2 after seq 3"},
		{"repeat within a response", [][]*wire.FetchResponse{{response(6, 6)}}, nil, "seq 6 after seq 6"},
		{"resumed stream backwards", [][]*wire.FetchResponse{{response(1, 2)}, {response(2, 1)}}, []uint64{1, 2}, "seq 1 after seq 2"},
		{"resumed stream replays", [][]*wire.FetchResponse{{response(1, 2)}, {response(1, 2, 3), response(4)}}, []uint64{1, 2, 3, 4}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startScriptedFetch(t, tc.streams...)
			c := newTestClient(t, Config{Addrs: []string{srv.addr}, Backoff: 10 * time.Millisecond})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var got []uint64
			err := c.Fetch(ctx, "f", 0, func(resp *wire.FetchResponse) error {
				for _, cb := range resp.GetBatches() {
					got = append(got, cb.GetSeq())
				}
				if tc.refusal == "" && len(got) >= len(tc.want) {
					return errDone
				}
				return nil
			})
			if !slices.Equal(got, tc.want) {
				t.Errorf("delivered %v, want %v", got, tc.want)
			}
			if tc.refusal == "" {
				if err != errDone {
					t.Fatalf("Fetch: %v, want fn's error", err)
				}
				return
			}
			if !errors.Is(err, wire.ErrBadCRC) || !errors.Is(err, wire.ErrBadRequest) || !strings.Contains(err.Error(), tc.refusal) ||
				!strings.Contains(err.Error(), `volume "f"`) {
				t.Fatalf("Fetch: %v, want a refusal saying %q of volume \"f\"", err, tc.refusal)
			}
			if calls := srv.calls(); len(calls) != len(tc.streams) {
				t.Errorf("Fetch calls after %v, want %d: a refusal is not retried", calls, len(tc.streams))
			}
		})
	}
}
