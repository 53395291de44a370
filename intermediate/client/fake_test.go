package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// fakeCluster is the state the fake intermediate nodes share: an in-memory
// sequencer with a per-volume record of committed batches, deduplication by
// volume seq, and counters the tests check.
type fakeCluster struct {
	t     testing.TB
	group string

	mu         sync.Mutex
	nodes      map[string]*fakeNode
	leader     string // id of the leading node; "" for none
	hideLeader bool   // NOT_LEADER answers name no leader
	flipAt     uint64 // when seq reaches flipAt, leadership moves to flipTo
	flipTo     string
	seq        uint64
	vols       map[string]*fakeVol
	changed    chan struct{} // closed and replaced on every commit
	msgSizes   []int         // batches per SubmitBatches message
	received   int           // batches received by Submit streams
	dups       int           // batches acknowledged as duplicates
	dupDiffer  int           // duplicates whose checksum differs from the original's
	notLeaders int           // NOT_LEADER refusals
	opens      map[string]int
	fetchAfter []uint64 // after_seq of every Fetch call
	joins      []string
	removes    []string
	coord      fakeCoord
	regions    map[string][]*wire.ReadVolumeResponse // ReadRegions answers, by secondary
	regionsCut int                                   // the next ReadRegions streams end with Unavailable after one chunk, this many times
	regionsN   int                                   // ReadRegions calls
	failbacks  []*wire.FailbackRequest               // Failback requests the leader served
	failbackTo []error                               // the next Failback calls at the leader are refused with these, in order
	promotes   []*wire.PromoteRequest                // Promote requests the leader served
	promoteTo  []error                               // the next Promote calls at the leader are refused with these, in order
}

// fakeCoord is the state of the fake Coordinate streams: what the
// secondaries sent, the refusals to answer hellos with, and the open
// stream the test drives.
type fakeCoord struct {
	hellos   []*wire.SecondaryHello    // every hello received, by any node
	received []*wire.CoordinateRequest // every message after a hello
	refuse   []error                   // the next hellos are refused with these, in order
	stream   *fakeCoordStream          // the latest stream opened
	opens    int
}

// fakeCoordStream is one open Coordinate stream of a fake node.
type fakeCoordStream struct {
	send chan *wire.CoordinateResponse // sent to the secondary
	end  chan error                    // ends the stream with this error
}

// fakeVol is a registered volume.
type fakeVol struct {
	epoch      uint64
	blockCount uint64
	commits    []fakeCommit // commits[i] holds volume seq i+1
}

// fakeCommit is a committed batch.
type fakeCommit struct {
	seq   uint64
	batch *wire.Batch
}

// fakeNode is one fake intermediate node serving wire.Intermediate on a
// 127.0.0.1 listener, with fault knobs.
type fakeNode struct {
	wire.UnimplementedIntermediateServer
	id   string
	addr string
	cl   *fakeCluster

	mu          sync.Mutex
	msgs        int           // batches messages received
	ackDelay    time.Duration // wait before sending acks
	hold        chan struct{} // when non-nil, acks wait until it is closed
	dropEvery   int           // every dropEvery-th batches message is committed, not acked, and ends its stream ...
	dropAcks    int           // ... this many times
	closeAfter  int           // a stream ends with Unavailable once it received closeAfter batches ...
	closeTimes  int           // ... this many times
	refuse      error         // the next batches message is refused with this, uncommitted
	skewAck     uint64        // added to the volume seq of every ack
	fetchMax    int           // batches per Fetch response (default 100)
	fetchEvery  int           // a Fetch stream ends with Unavailable after this many responses ...
	fetchCloses int           // ... this many times
	fetchReplay uint64        // a Fetch stream starts this many seqs before after_seq (a server bug)
	corruptSeq  uint64        // the batch with this seq is sent corrupted
}

// newFakeCluster starts one fake node per id; the first one leads.
func newFakeCluster(t testing.TB, ids ...string) *fakeCluster {
	t.Helper()
	cl := &fakeCluster{
		t:       t,
		group:   DefaultGroup,
		nodes:   make(map[string]*fakeNode),
		vols:    make(map[string]*fakeVol),
		changed: make(chan struct{}),
		opens:   make(map[string]int),
		leader:  ids[0],
	}
	for _, id := range ids {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		n := &fakeNode{id: id, addr: lis.Addr().String(), cl: cl}
		srv := grpc.NewServer(grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20))
		wire.RegisterIntermediateServer(srv, n)
		served := make(chan struct{})
		go func() {
			defer close(served)
			_ = srv.Serve(lis)
		}()
		t.Cleanup(func() {
			srv.Stop()
			<-served
		})
		cl.nodes[id] = n
	}
	return cl
}

// node returns the node with id.
func (cl *fakeCluster) node(id string) *fakeNode { return cl.nodes[id] }

// addrs returns the addresses of the nodes with ids.
func (cl *fakeCluster) addrs(ids ...string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = cl.nodes[id].addr
	}
	return out
}

// set runs f with the cluster locked.
func (cl *fakeCluster) set(f func()) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	f()
}

// get returns f's result with the cluster locked.
func get[T any](cl *fakeCluster, f func() T) T {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return f()
}

// leaderErr returns a NOT_LEADER refusal when node id does not lead.
func (cl *fakeCluster) leaderErr(id string) error {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.leaderErrLocked(id)
}

func (cl *fakeCluster) leaderErrLocked(id string) error {
	if cl.leader == id {
		return nil
	}
	cl.notLeaders++
	e := wire.Errorf(wire.ErrorCode_ERROR_CODE_NOT_LEADER, "fake: %s is not the leader", id)
	if l := cl.nodes[cl.leader]; l != nil && !cl.hideLeader {
		e.LeaderID, e.LeaderAddr = l.id, l.addr
	}
	return e
}

// open registers or checks a volume and answers SubmitOpen.
func (cl *fakeCluster) open(id string, o *wire.SubmitOpen) (*wire.SubmitOpened, error) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	if o.GetGroup() != cl.group {
		return nil, wire.Errorf(wire.ErrorCode_ERROR_CODE_WRONG_GROUP, "fake: group %q, this is %q", o.GetGroup(), cl.group)
	}
	v := cl.vols[o.GetVolume()]
	if v == nil {
		v = &fakeVol{epoch: 1, blockCount: o.GetBlockCount()}
		cl.vols[o.GetVolume()] = v
	}
	if v.blockCount != o.GetBlockCount() {
		return nil, wire.Errorf(wire.ErrorCode_ERROR_CODE_VOLUME_MISMATCH, "fake: %d blocks, registered %d", o.GetBlockCount(), v.blockCount)
	}
	if v.epoch != o.GetEpoch() {
		e := wire.Errorf(wire.ErrorCode_ERROR_CODE_STALE_EPOCH, "fake: epoch %d", o.GetEpoch())
		e.Epoch = v.epoch
		return nil, e
	}
	cl.opens[id]++
	var lastSeq uint64
	if n := len(v.commits); n > 0 {
		lastSeq = v.commits[n-1].seq
	}
	return &wire.SubmitOpened{Epoch: v.epoch, LastVolumeSeq: uint64(len(v.commits)), LastSeq: lastSeq, BlockCount: v.blockCount}, nil
}

// commit commits the batches of one message in order, deduplicating by
// volume seq. It returns the acks of the batches it took, whether the
// message moved leadership away, and the refusal that stopped it.
func (cl *fakeCluster) commit(volume string, batches []*wire.Batch) ([]*wire.SubmitAck, bool, error) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	cl.msgSizes = append(cl.msgSizes, len(batches))
	cl.received += len(batches)
	v := cl.vols[volume]
	var acks []*wire.SubmitAck
	flipped := false
	for _, b := range batches {
		if err := wire.CheckBatch(b, v.blockCount); err != nil {
			code := wire.ErrorCode_ERROR_CODE_BAD_REQUEST
			if errors.Is(err, wire.ErrBadCRC) {
				code = wire.ErrorCode_ERROR_CODE_BAD_CRC
			}
			return acks, flipped, wire.Errorf(code, "fake: %v", err)
		}
		if b.GetVolume() != volume {
			return acks, flipped, wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "fake: batch of %q on stream of %q", b.GetVolume(), volume)
		}
		if b.GetEpoch() != v.epoch {
			e := wire.Errorf(wire.ErrorCode_ERROR_CODE_STALE_EPOCH, "fake: epoch %d", b.GetEpoch())
			e.Epoch = v.epoch
			return acks, flipped, e
		}
		last := uint64(len(v.commits))
		switch vs := b.GetVolumeSeq(); {
		case vs >= 1 && vs <= last:
			orig := v.commits[vs-1]
			cl.dups++
			if orig.batch.GetCrc() != b.GetCrc() {
				cl.dupDiffer++
			}
			acks = append(acks, &wire.SubmitAck{VolumeSeq: vs, Seq: orig.seq, Duplicate: true})
		case vs == last+1:
			cl.seq++
			v.commits = append(v.commits, fakeCommit{seq: cl.seq, batch: b})
			acks = append(acks, &wire.SubmitAck{VolumeSeq: vs, Seq: cl.seq})
			if cl.flipAt != 0 && cl.seq >= cl.flipAt {
				cl.leader, cl.flipAt, flipped = cl.flipTo, 0, true
			}
		default:
			e := wire.Errorf(wire.ErrorCode_ERROR_CODE_GAP, "fake: volume seq %d after %d", vs, last)
			e.ResumeVolumeSeq = last + 1
			return acks, flipped, e
		}
	}
	close(cl.changed)
	cl.changed = make(chan struct{})
	return acks, flipped, nil
}

// inject commits n batches of volume directly, registering it if needed,
// and returns their seqs.
func (cl *fakeCluster) inject(volume string, n int) []uint64 {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	v := cl.vols[volume]
	if v == nil {
		v = &fakeVol{epoch: 1, blockCount: 1024}
		cl.vols[volume] = v
	}
	var seqs []uint64
	for range n {
		vs := uint64(len(v.commits)) + 1
		b := wire.Seal(&wire.Batch{Volume: volume, Epoch: v.epoch, VolumeSeq: vs, Blocks: testBlocks(volume, vs)})
		cl.seq++
		v.commits = append(v.commits, fakeCommit{seq: cl.seq, batch: b})
		seqs = append(seqs, cl.seq)
	}
	close(cl.changed)
	cl.changed = make(chan struct{})
	return seqs
}

// truncate makes the cluster forget the batches of volume after volume seq
// keep, as a broken intermediate would.
func (cl *fakeCluster) truncate(volume string, keep int) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	v := cl.vols[volume]
	v.commits = v.commits[:keep]
}

// committed returns the committed batches of volume with seq > after, at
// most limit of them, the cluster's seq, and a channel closed on the next
// commit.
func (cl *fakeCluster) committed(volume string, after uint64, limit int) ([]*wire.CommittedBatch, uint64, chan struct{}) {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	var out []*wire.CommittedBatch
	if v := cl.vols[volume]; v != nil {
		for _, c := range v.commits {
			if c.seq > after && len(out) < limit {
				out = append(out, &wire.CommittedBatch{Seq: c.seq, Batch: c.batch})
			}
		}
	}
	return out, cl.seq, cl.changed
}

// volumeCommits returns the committed (volume seq, seq) pairs of volume.
func (cl *fakeCluster) volumeCommits(volume string) []fakeCommit {
	cl.mu.Lock()
	defer cl.mu.Unlock()
	v := cl.vols[volume]
	if v == nil {
		return nil
	}
	return append([]fakeCommit(nil), v.commits...)
}

// set runs f with the node locked.
func (n *fakeNode) set(f func()) {
	n.mu.Lock()
	defer n.mu.Unlock()
	f()
}

// msgKnobs are the faults applied to one batches message.
type msgKnobs struct {
	refuse error
	drop   bool
	delay  time.Duration
	hold   chan struct{}
	skew   uint64
}

// knobs consumes the faults of the next batches message.
func (n *fakeNode) knobs() msgKnobs {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.msgs++
	k := msgKnobs{refuse: n.refuse, delay: n.ackDelay, hold: n.hold, skew: n.skewAck}
	n.refuse = nil
	if n.dropEvery > 0 && n.dropAcks > 0 && n.msgs%n.dropEvery == 0 {
		n.dropAcks--
		k.drop = true
	}
	return k
}

// closeNow reports whether a stream that received received batches should
// end now.
func (n *fakeNode) closeNow(received int) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closeAfter > 0 && n.closeTimes > 0 && received >= n.closeAfter {
		n.closeTimes--
		return true
	}
	return false
}

// Submit implements wire.IntermediateServer.
func (n *fakeNode) Submit(stream grpc.BidiStreamingServer[wire.SubmitRequest, wire.SubmitResponse]) error {
	ctx := stream.Context()
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	o := req.GetOpen()
	if o == nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "fake: first message is not open")
	}
	if err := n.cl.leaderErr(n.id); err != nil {
		return err
	}
	opened, err := n.cl.open(n.id, o)
	if err != nil {
		return err
	}
	if err := stream.Send(&wire.SubmitResponse{Msg: &wire.SubmitResponse_Opened{Opened: opened}}); err != nil {
		return err
	}
	received := 0
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		bs := req.GetBatches()
		if bs == nil {
			return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "fake: open twice")
		}
		if err := n.cl.leaderErr(n.id); err != nil {
			return err
		}
		k := n.knobs()
		if k.refuse != nil {
			n.cl.set(func() { n.cl.received += len(bs.GetBatches()) })
			return k.refuse
		}
		acks, flipped, cerr := n.cl.commit(o.GetVolume(), bs.GetBatches())
		received += len(bs.GetBatches())
		if flipped {
			return n.cl.leaderErr(n.id)
		}
		if k.drop {
			return status.Error(codes.Unavailable, "fake: acks dropped")
		}
		if k.hold != nil {
			select {
			case <-k.hold:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if k.delay > 0 {
			t := time.NewTimer(k.delay)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return ctx.Err()
			}
		}
		for _, a := range acks {
			a.VolumeSeq += k.skew
		}
		if len(acks) > 0 {
			if err := stream.Send(&wire.SubmitResponse{Msg: &wire.SubmitResponse_Acks{Acks: &wire.SubmitAcks{Acks: acks}}}); err != nil {
				return err
			}
		}
		if cerr != nil {
			return cerr
		}
		if n.closeNow(received) {
			return status.Error(codes.Unavailable, "fake: stream closed")
		}
	}
}

// Fetch implements wire.IntermediateServer.
func (n *fakeNode) Fetch(req *wire.FetchRequest, stream grpc.ServerStreamingServer[wire.FetchResponse]) error {
	ctx := stream.Context()
	n.cl.set(func() { n.cl.fetchAfter = append(n.cl.fetchAfter, req.GetAfterSeq()) })
	n.mu.Lock()
	limit, every, replay, corrupt := n.fetchMax, n.fetchEvery, n.fetchReplay, n.corruptSeq
	n.mu.Unlock()
	if limit == 0 {
		limit = 100
	}
	after := req.GetAfterSeq() - min(replay, req.GetAfterSeq())
	for sent := 0; ; {
		batches, seq, changed := n.cl.committed(req.GetVolume(), after, limit)
		if len(batches) == 0 {
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		for i, cb := range batches {
			if cb.GetSeq() == corrupt {
				b := proto.Clone(cb.GetBatch()).(*wire.Batch)
				b.Blocks[0].Data[0] ^= 0xff
				batches[i] = &wire.CommittedBatch{Seq: cb.GetSeq(), Batch: b}
			}
		}
		if err := stream.Send(&wire.FetchResponse{Batches: batches, CommittedSeq: seq}); err != nil {
			return err
		}
		after = batches[len(batches)-1].GetSeq()
		sent++
		closeNow := false
		n.set(func() {
			if every > 0 && sent >= every && n.fetchCloses > 0 {
				n.fetchCloses--
				closeNow = true
			}
		})
		if closeNow {
			return status.Error(codes.Unavailable, "fake: fetch stream closed")
		}
	}
}

// Coordinate implements wire.IntermediateServer: it checks the leader and
// the group, records the hello (refusing it with the next of coord.refuse),
// answers opened, records every later message, and sends what the test
// queues on the stream until the test ends it.
func (n *fakeNode) Coordinate(stream grpc.BidiStreamingServer[wire.CoordinateRequest, wire.CoordinateResponse]) error {
	cl := n.cl
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	if err := cl.leaderErr(n.id); err != nil {
		return err
	}
	hello := req.GetHello()
	if hello == nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "fake: first message is not hello")
	}
	fs := &fakeCoordStream{send: make(chan *wire.CoordinateResponse, 64), end: make(chan error, 1)}
	var refuse error
	cl.set(func() {
		cl.coord.hellos = append(cl.coord.hellos, proto.CloneOf(hello))
		if len(cl.coord.refuse) > 0 {
			refuse, cl.coord.refuse = cl.coord.refuse[0], cl.coord.refuse[1:]
		}
		if hello.GetGroup() != cl.group {
			refuse = wire.Errorf(wire.ErrorCode_ERROR_CODE_WRONG_GROUP, "fake: group %q, this is %q", hello.GetGroup(), cl.group)
		}
		if refuse == nil {
			cl.coord.stream = fs
			cl.coord.opens++
		}
	})
	if refuse != nil {
		return refuse
	}
	if err := stream.Send(&wire.CoordinateResponse{Msg: &wire.CoordinateResponse_Opened{Opened: &wire.CoordinateOpened{ValidatedSeq: 1, CommittedSeq: 2, BlockCount: 3}}}); err != nil {
		return err
	}
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			cl.set(func() { cl.coord.received = append(cl.coord.received, proto.CloneOf(req)) })
		}
	}()
	for {
		select {
		case m := <-fs.send:
			if err := stream.Send(m); err != nil {
				return err
			}
		case err := <-fs.end:
			return err
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

// Status implements wire.IntermediateServer.
func (n *fakeNode) Status(context.Context, *wire.StatusRequest) (*wire.StatusResponse, error) {
	cl := n.cl
	cl.mu.Lock()
	defer cl.mu.Unlock()
	st := &wire.StatusResponse{Group: cl.group, Node: n.id, RaftState: "Follower", Leader: cl.leader, CommittedSeq: cl.seq}
	if cl.leader == n.id {
		st.RaftState = "Leader"
	}
	if l := cl.nodes[cl.leader]; l != nil && !cl.hideLeader {
		st.LeaderAddr = l.addr
	}
	return st, nil
}

// Join implements wire.IntermediateServer.
func (n *fakeNode) Join(_ context.Context, req *wire.JoinRequest) (*wire.JoinResponse, error) {
	n.cl.mu.Lock()
	defer n.cl.mu.Unlock()
	if err := n.cl.leaderErrLocked(n.id); err != nil {
		return nil, err
	}
	n.cl.joins = append(n.cl.joins, req.GetId()+"="+req.GetRaftAddr())
	return &wire.JoinResponse{}, nil
}

// Remove implements wire.IntermediateServer.
func (n *fakeNode) Remove(_ context.Context, req *wire.RemoveRequest) (*wire.RemoveResponse, error) {
	n.cl.mu.Lock()
	defer n.cl.mu.Unlock()
	if err := n.cl.leaderErrLocked(n.id); err != nil {
		return nil, err
	}
	n.cl.removes = append(n.cl.removes, req.GetId())
	return &wire.RemoveResponse{}, nil
}

// testBlocks returns the blocks of batch volumeSeq of volume: one to three
// blocks of recognisable data.
func testBlocks(volume string, volumeSeq uint64) []*wire.Block {
	blocks := make([]*wire.Block, 1+volumeSeq%3)
	for i := range blocks {
		data := make([]byte, wire.BlockSize)
		copy(data, fmt.Sprintf("%s/%d/%d", volume, volumeSeq, i))
		blocks[i] = &wire.Block{Index: (volumeSeq*3 + uint64(i)) % 1024, Data: data}
	}
	return blocks
}

// testWriter sends log lines to t.Log.
type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// testLogger returns a logger writing to t.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

// leakChecked holds the tests whose cleanup checks for client goroutines.
var leakChecked sync.Map

// newTestClient returns a Client with fast retries that logs to t; cleanup
// closes it and, once every client of the test is closed, checks that none
// of their goroutines is left.
func newTestClient(t testing.TB, cfg Config) *Client {
	t.Helper()
	if _, loaded := leakChecked.LoadOrStore(t, true); !loaded {
		t.Cleanup(func() {
			leakChecked.Delete(t)
			checkNoClientGoroutines(t)
		})
	}
	if cfg.Backoff == 0 {
		cfg.Backoff = 2 * time.Millisecond
	}
	cfg.Logger = testLogger(t)
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return c
}

// openVolume opens a volume of 1024 blocks at epoch 1.
func openVolume(t testing.TB, c *Client, name string) *Volume {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := c.OpenVolume(ctx, VolumeOptions{Name: name, Epoch: 1, BlockCount: 1024})
	if err != nil {
		t.Fatalf("OpenVolume %s: %v", name, err)
	}
	return v
}

// clientGoroutineMarkers are stack frames only the client's goroutines and
// gRPC client connections run.
var clientGoroutineMarkers = []string{
	"intermediate/client.(*Volume)",
	"intermediate/client.(*Link)",
	"intermediate/client.(*Client)",
	"transport.(*http2Client)",
	"grpc.(*addrConn)",
}

// clientGoroutines returns the stacks of the goroutines running client code.
func clientGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, m := range clientGoroutineMarkers {
			if strings.Contains(g, m) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// checkNoClientGoroutines fails t unless the client goroutines are gone
// within a few seconds.
func checkNoClientGoroutines(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := clientGoroutines()
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%d client goroutines left after Close:\n%s", len(left), strings.Join(left, "\n\n"))
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// eventually polls cond until it holds, failing t after a deadline.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
