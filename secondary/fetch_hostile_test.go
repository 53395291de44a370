package secondary_test

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
	"github.com/tricopy/tricopy/secondary"
)

// The tests of this file play a hostile (or broken) intermediate: a proxy
// forwards a real node's Fetch streams to the secondary and, once armed,
// replaces the response holding the first batch above a seq with crafted
// ones. The secondary must refuse the batch, report it (FAILED, naming the
// volume, the seq and what was wrong), stop following (nothing staged or
// applied after it) and leave its replica as it was.

// tamperFunc returns what the proxy sends instead of resp, whose batch i
// is the first above the armed seq; prev is the last batch the stream sent
// before resp. It also returns the seq the secondary's refusal must name.
type tamperFunc func(prev *wire.CommittedBatch, resp *wire.FetchResponse, i int) ([]*wire.FetchResponse, uint64)

// fetchProxy serves Fetch by forwarding the streams of a real node.
type fetchProxy struct {
	wire.UnimplementedIntermediateServer
	addr string
	up   wire.IntermediateClient

	mu       sync.Mutex
	after    uint64     // tamper with the first batch above after ...
	tamper   tamperFunc // ... with this, once; nil: forward as is
	named    uint64     // the seq the refusal must name, once tampered
	streams  int        // Fetch streams served
	tampered chan struct{}
}

// startFetchProxy starts a proxy of the node at nodeAddr on 127.0.0.1.
func startFetchProxy(t *testing.T, nodeAddr string) *fetchProxy {
	t.Helper()
	conn, err := grpc.NewClient(nodeAddr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &fetchProxy{addr: lis.Addr().String(), up: wire.NewIntermediateClient(conn), tampered: make(chan struct{})}
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20))
	wire.RegisterIntermediateServer(srv, p)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return p
}

// arm makes the proxy tamper with the first batch above after.
func (p *fetchProxy) arm(after uint64, tamper tamperFunc) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.after, p.tamper = after, tamper
}

func (p *fetchProxy) state() (named uint64, streams int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.named, p.streams
}

// Fetch implements wire.IntermediateServer.
func (p *fetchProxy) Fetch(req *wire.FetchRequest, stream grpc.ServerStreamingServer[wire.FetchResponse]) error {
	p.mu.Lock()
	p.streams++
	p.mu.Unlock()
	up, err := p.up.Fetch(stream.Context(), req)
	if err != nil {
		return err
	}
	var prev *wire.CommittedBatch // the last batch this stream sent
	for {
		resp, err := up.Recv()
		if err != nil {
			return err
		}
		out := []*wire.FetchResponse{resp}
		p.mu.Lock()
		if p.tamper != nil {
			for i, cb := range resp.GetBatches() {
				if cb.GetSeq() > p.after {
					out, p.named = p.tamper(prev, proto.CloneOf(resp), i)
					p.tamper = nil
					close(p.tampered)
					break
				}
			}
		}
		p.mu.Unlock()
		for _, r := range out {
			if err := stream.Send(r); err != nil {
				return err
			}
			if bs := r.GetBatches(); len(bs) > 0 {
				prev = bs[len(bs)-1]
			}
		}
	}
}

// proxiedFetch is the intermediate of a secondary whose Fetch streams go
// through a proxy; everything else goes to the node.
type proxiedFetch struct {
	*client.Client
	fetch *client.Client
}

func (i proxiedFetch) Fetch(ctx context.Context, volume string, afterSeq uint64, fn func(*wire.FetchResponse) error) error {
	return i.fetch.Fetch(ctx, volume, afterSeq, fn)
}

// The hostile batches.
var (
	// tamperCRC flips a byte of the batch's first block; its CRC stays.
	tamperCRC tamperFunc = func(_ *wire.CommittedBatch, resp *wire.FetchResponse, i int) ([]*wire.FetchResponse, uint64) {
		resp.Batches[i].Batch.Blocks[0].Data[17] ^= 0x40
		return []*wire.FetchResponse{resp}, resp.Batches[i].GetSeq()
	}
	// tamperRepeat sends the stream's previous batch again first.
	tamperRepeat tamperFunc = func(prev *wire.CommittedBatch, resp *wire.FetchResponse, _ int) ([]*wire.FetchResponse, uint64) {
		again := &wire.FetchResponse{Batches: []*wire.CommittedBatch{prev}, CommittedSeq: resp.GetCommittedSeq(), CompleteSeq: prev.GetSeq()}
		return []*wire.FetchResponse{again, resp}, prev.GetSeq()
	}
	// tamperBackwards gives the batch a seq below the stream's previous
	// one (the CRC does not cover the seq: it still matches).
	tamperBackwards tamperFunc = func(prev *wire.CommittedBatch, resp *wire.FetchResponse, i int) ([]*wire.FetchResponse, uint64) {
		resp.Batches[i].Seq = prev.GetSeq() - 1
		return []*wire.FetchResponse{resp}, prev.GetSeq() - 1
	}
	// tamperSkip gives the batch the volume seq after its own, with a
	// matching CRC: as if the intermediate left a batch out of the stream.
	tamperSkip tamperFunc = func(_ *wire.CommittedBatch, resp *wire.FetchResponse, i int) ([]*wire.FetchResponse, uint64) {
		b := resp.Batches[i].Batch
		b.VolumeSeq++
		wire.Seal(b)
		return []*wire.FetchResponse{resp}, resp.Batches[i].GetSeq()
	}
	// tamperOutside moves the batch's first block past the volume's end,
	// with a matching CRC.
	tamperOutside tamperFunc = func(_ *wire.CommittedBatch, resp *wire.FetchResponse, i int) ([]*wire.FetchResponse, uint64) {
		b := resp.Batches[i].Batch
		b.Blocks[0].Index = testBlocks + 7
		wire.Seal(b)
		return []*wire.FetchResponse{resp}, resp.Batches[i].GetSeq()
	}
)

// TestHostileBatchFailStop: a batch whose CRC does not match its blocks,
// one whose seq repeats or goes backwards, one whose volume seq skips one
// (a batch left out), and one with a block outside the volume are each
// refused: the secondary reports FAILED naming the
// volume, the seq and the fault (to the leader too), stages and applies
// nothing more, holds the group's validated point, and its replica keeps
// its bytes. Restarted against the honest node, it catches up.
func TestHostileBatchFailStop(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper tamperFunc
		what   string // in the reason
	}{
		{"bad crc", tamperCRC, "computed"},
		{"seq repeats", tamperRepeat, "seqs must increase"},
		{"seq goes backwards", tamperBackwards, "seqs must increase"},
		{"a batch left out", tamperSkip, "a batch of the volume is missing"},
		{"block outside the volume", tamperOutside, fmt.Sprintf("block index %d outside volume of %d blocks", testBlocks+7, testBlocks)},
	} {
		t.Run(tc.name, func(t *testing.T) { testHostileBatch(t, tc.tamper, tc.what) })
	}
}

func testHostileBatch(t *testing.T, tamper tamperFunc, what string) {
	n, addr := startNode(t)
	cl := newClient(t, addr)
	proxy := startFetchProxy(t, addr)
	v := openVolume(t, cl, "a")
	rng := rand.New(rand.NewPCG(11, 12))
	dir := t.TempDir()
	s := openVia(t, proxiedFetch{Client: cl, fetch: newClient(t, proxy.addr)}, dir, "a")
	defer func() { s.Close() }()
	last := submitRandom(t, v, rng, 5)
	waitApplied(t, s, last)
	before := s.Status()
	image := replicaImage(t, s)

	proxy.arm(last, tamper)
	submitRandom(t, v, rng, 3)
	select {
	case <-proxy.tampered:
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy sent no batch above the armed seq")
	}
	waitUntil(t, 10*time.Second, "the secondary to fail", func() bool { return s.Status().State == secondary.StateFailed })
	named, _ := proxy.state()
	st := s.Status()
	t.Logf("reason: %s", st.Reason)
	for _, want := range []string{`"a"`, fmt.Sprintf("seq %d", named), what} {
		if !strings.Contains(st.Reason, want) {
			t.Errorf("reason %q does not say %q", st.Reason, want)
		}
	}
	// The leader learns it from the secondary's report.
	waitUntil(t, 10*time.Second, "the leader to see the secondary failed", func() bool {
		ist, err := cl.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, sec := range ist.GetSecondaries() {
			if sec.GetId() == "a" && sec.GetState() == secondary.StateFailed && strings.Contains(sec.GetReason(), what) {
				return true
			}
		}
		return false
	})
	last = submitRandom(t, v, rng, 3)

	// The pair stopped: no new Fetch stream (no retry), nothing staged or
	// applied past the refused batch, the group held at what the
	// secondary prepared, the replica's bytes as they were.
	after := s.Status()
	if after.AppliedSeq != before.AppliedSeq || after.DurableSeq != before.DurableSeq || after.FetchedSeq != before.FetchedSeq {
		t.Errorf("after the refusal: applied %d durable %d fetched %d, before it %d %d %d",
			after.AppliedSeq, after.DurableSeq, after.FetchedSeq, before.AppliedSeq, before.DurableSeq, before.FetchedSeq)
	}
	if val := n.FSM().Validated(); val > before.DurableSeq {
		t.Errorf("the group validated %d, past what the failed secondary staged (%d)", val, before.DurableSeq)
	}
	if _, streams := proxy.state(); streams != 1 {
		t.Errorf("%d Fetch streams, want 1: a refused batch is not fetched again", streams)
	}
	if !bytes.Equal(replicaImage(t, s), image) {
		t.Error("the replica's bytes changed after the refused batch")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// The refused batch left no trace: against the honest node, the same
	// data directory follows again and ends equal to the intermediate.
	s = openSecondary(t, cl, dir, "a")
	waitApplied(t, s, last)
	sameAsIntermediate(t, n, s)
}

// TestLongFailureReasonReachesLeader: a failure whose error is longer than
// a Coordinate message may be (it names a long data directory) still
// reaches the leader, cut short; the link stays up.
func TestLongFailureReasonReachesLeader(t *testing.T) {
	_, addr := startNode(t)
	cl := newClient(t, addr)
	proxy := startFetchProxy(t, addr)
	volume := strings.Repeat("v", wire.MaxVolumeName)
	v := openVolume(t, cl, volume)
	dir := t.TempDir()
	for len(dir) < 3900 {
		dir = filepath.Join(dir, strings.Repeat("d", min(200, 3900-len(dir))))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	s := openVia(t, proxiedFetch{Client: cl, fetch: newClient(t, proxy.addr)}, dir, volume)
	defer s.Close()
	rng := rand.New(rand.NewPCG(13, 14))
	last := submitRandom(t, v, rng, 2)
	waitApplied(t, s, last)
	proxy.arm(last, tamperOutside)
	submitRandom(t, v, rng, 1)
	waitUntil(t, 10*time.Second, "the secondary to fail", func() bool { return s.Status().State == secondary.StateFailed })
	if r := s.Status().Reason; len(r) <= 4<<10 {
		t.Fatalf("reason of %d bytes: the test needs one over the 4 KiB of a Coordinate message", len(r))
	}
	waitUntil(t, 10*time.Second, "the leader to see the secondary failed", func() bool {
		ist, err := cl.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, sec := range ist.GetSecondaries() {
			if sec.GetId() == volume && sec.GetState() == secondary.StateFailed {
				if !strings.Contains(sec.GetReason(), "stage batches of volume") || len(sec.GetReason()) > 1<<10 {
					t.Fatalf("reason at the leader (%d bytes): %q", len(sec.GetReason()), sec.GetReason())
				}
				return true
			}
		}
		return false
	})
	if !s.Status().Connected {
		t.Error("the secondary's Coordinate link went down")
	}
}

// openVia opens and starts a secondary of volume in dir with in as its
// intermediate.
func openVia(t *testing.T, in secondary.Intermediate, dir, volume string) *secondary.Secondary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := secondary.Open(ctx, secondary.Config{
		Volume: volume, Dir: dir, Addr: "127.0.0.1:1", Intermediate: in,
		ReportInterval: 20 * time.Millisecond, Logger: testLog(t).With("component", "secondary"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(nil); err != nil {
		t.Fatal(err)
	}
	return s
}
