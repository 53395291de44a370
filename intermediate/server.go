package intermediate

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/coord"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// Limits of the Submit and Fetch handlers.
const (
	// maxStreamInFlight bounds the payload bytes one Submit stream may have
	// queued or in flight before the server stops reading from it (flow
	// control; the client sees back-pressure, not an error).
	maxStreamInFlight = 64 << 20
	// defaultFetchBatches is the number of batches per Fetch response when
	// the request does not say.
	defaultFetchBatches = 256
	// maxCoordinateMessage bounds one message of a Coordinate stream from
	// a secondary (a hello or a report with its strings: a few hundred
	// bytes); a larger one ends the stream with TOO_LARGE.
	maxCoordinateMessage = 4 << 10
)

// service implements wire.IntermediateServer on a Node.
type service struct {
	wire.UnimplementedIntermediateServer
	n *Node
}

// checkGroup refuses a request for another consistency group.
func (s *service) checkGroup(g string) error {
	if g != "" && g != s.n.cfg.Group {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_WRONG_GROUP, "node %s serves group %q, not %q", s.n.cfg.ID, s.n.cfg.Group, g)
	}
	return nil
}

func (s *service) checkFailed() error {
	if err := s.n.FatalErr(); err != nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_FAILED, "node %s stopped: %v", s.n.cfg.ID, err)
	}
	return nil
}

// Submit implements the primaries' write stream; see wire.proto. A stream
// it ends with a protocol error counts in the refusals metric.
func (s *service) Submit(stream wire.Intermediate_SubmitServer) error {
	err := s.submit(stream)
	s.n.metrics.refusal(err)
	return err
}

// submit is Submit without the refusal count.
func (s *service) submit(stream wire.Intermediate_SubmitServer) error {
	n := s.n
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	open := req.GetOpen()
	if open == nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "first message of a submit stream must be open")
	}
	if err := s.checkFailed(); err != nil {
		return err
	}
	if err := s.checkGroup(open.GetGroup()); err != nil {
		return err
	}
	if err := wire.CheckVolumeName(open.GetVolume()); err != nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "%v", err)
	}
	if err := n.authorize(stream.Context(), "Submit", needVolume(open.GetVolume(), auth.RolePrimary),
		allowVolume(open.GetVolume(), auth.RolePrimary)); err != nil {
		return err
	}
	if b := open.GetBlockCount(); b == 0 || b >= maxBlockCount {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "open volume %q: block count %d not in [1, %d)", open.GetVolume(), b, uint64(maxBlockCount))
	}
	if open.GetEpoch() == 0 {
		// An epoch is the primary's fencing token: an open without one
		// could write after a promotion.
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "open volume %q: epoch 0: a primary must give its epoch (1 for a new volume)", open.GetVolume())
	}
	if !n.IsLeader() {
		return n.notLeader("submit goes to the leader")
	}
	// Every open records a RegisterVolume entry (which registers the volume
	// on first contact): its application starts a new session of the volume
	// and gives the volume's exact position, and the state machine refuses
	// any batch of an older stream that would still reach the log after it.
	// An open at another epoch than the volume's (a primary fenced by a
	// promotion) is refused by the state machine without starting a
	// session, so it cannot end the current primary's stream.
	res, err := n.apply(stream.Context(), &wire.Entry{Op: &wire.Entry_RegisterVolume{RegisterVolume: &wire.RegisterVolume{
		Volume: open.GetVolume(), BlockCount: open.GetBlockCount(), Epoch: open.GetEpoch(),
	}}})
	if err != nil {
		return err
	}
	rr, _ := res.(*RegisterResult)
	if rr == nil {
		return fmt.Errorf("register volume %q: unexpected state machine response %T", open.GetVolume(), res)
	}
	if rr.Err != nil {
		if errors.Is(rr.Err, wire.ErrStaleEpoch) {
			peerAddr := ""
			if p, ok := peer.FromContext(stream.Context()); ok {
				peerAddr = p.Addr.String()
			}
			n.reports.staleOpen(open.GetVolume(), open.GetEpoch(), peerAddr)
			n.log.Warn("refused a primary at a stale epoch (fenced by a promotion)", logKeyVolume, open.GetVolume(),
				logKeyEpoch, open.GetEpoch(), logKeyPeer, peerAddr)
		}
		return rr.Err
	}
	info := rr.Volume
	if info.BlockCount != open.GetBlockCount() {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_VOLUME_MISMATCH, "volume %q has %d blocks at the intermediate, the primary says %d",
			info.Name, info.BlockCount, open.GetBlockCount())
	}
	if open.GetEpoch() != info.Epoch {
		e := wire.Errorf(wire.ErrorCode_ERROR_CODE_STALE_EPOCH, "volume %q is at epoch %d, the primary says %d", info.Name, info.Epoch, open.GetEpoch())
		e.Epoch = info.Epoch
		return e
	}
	if err := stream.Send(&wire.SubmitResponse{Msg: &wire.SubmitResponse_Opened{Opened: &wire.SubmitOpened{
		Epoch: info.Epoch, LastVolumeSeq: info.LastVolumeSeq, LastSeq: info.LastSeq, BlockCount: info.BlockCount,
		CopyOpen: info.CopySince != 0,
	}}}); err != nil {
		return err
	}
	ss := &submitStream{s: s, stream: stream, volume: info.Name, blocks: info.BlockCount, session: info.Session, wake: make(chan struct{}, 1)}
	ss.cond = sync.NewCond(&ss.mu)
	n.reports.connect(info.Name, info.Session)
	defer n.reports.disconnect(info.Name, info.Session)
	return ss.run()
}

// submitStream is the state of one Submit stream after open: a receiver
// goroutine reads batches and hands them to the proposer; the handler
// goroutine sends acks in order as results come back.
type submitStream struct {
	s       *service
	stream  wire.Intermediate_SubmitServer
	volume  string
	blocks  uint64
	session uint64

	mu          sync.Mutex
	cond        *sync.Cond // signalled when inFlight drops
	results     []proposalResults
	resultErr   error
	outstanding int   // proposals submitted and not completed
	inFlight    int   // their payload bytes
	recvErr     error // why the receiver stopped (io.EOF: the client closed)
	recvDone    bool
	wake        chan struct{}
}

// proposalResults are the results of one proposal of a Submit stream.
type proposalResults struct {
	results []BatchResult
	arrived time.Time // when its batches came in on the stream
}

func (ss *submitStream) signal() {
	select {
	case ss.wake <- struct{}{}:
	default:
	}
}

func (ss *submitStream) run() error {
	ctx, cancel := context.WithCancel(ss.stream.Context())
	// The receiver cannot be waited for here: it may sit in stream.Recv,
	// which returns only once this handler has returned and gRPC has ended
	// the stream. Cancelling ctx releases it from flow control; the end of
	// the stream releases it from Recv.
	go ss.receive(ctx)
	defer func() {
		cancel()
		ss.mu.Lock()
		ss.cond.Broadcast()
		ss.mu.Unlock()
	}()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ss.wake:
		}
		ss.mu.Lock()
		results, resErr := ss.results, ss.resultErr
		ss.results = nil
		recvDone, recvErr, outstanding := ss.recvDone, ss.recvErr, ss.outstanding
		ss.mu.Unlock()

		var acks []*wire.SubmitAck
		var arrivals []time.Time // of the acked batches, when metrics are on
		timed := ss.s.n.metrics != nil
		var refusal error
	collect:
		for _, pr := range results {
			for _, r := range pr.results {
				if r.Err != nil {
					refusal = r.Err
					break collect
				}
				acks = append(acks, &wire.SubmitAck{VolumeSeq: r.VolumeSeq, Seq: r.Seq, Duplicate: r.Duplicate})
				if timed {
					arrivals = append(arrivals, pr.arrived)
				}
			}
		}
		if len(acks) > 0 {
			if err := ss.stream.Send(&wire.SubmitResponse{Msg: &wire.SubmitResponse_Acks{Acks: &wire.SubmitAcks{Acks: acks}}}); err != nil {
				return err
			}
			ss.s.n.metrics.submitted(arrivals, time.Now())
		}
		switch {
		case refusal != nil:
			return refusal
		case resErr != nil:
			return resErr
		case recvDone && recvErr != nil && !errors.Is(recvErr, io.EOF):
			return recvErr
		case recvDone && outstanding == 0:
			return nil
		}
	}
}

// receive reads batch messages until the stream ends or a batch is refused.
func (ss *submitStream) receive(ctx context.Context) {
	err := ss.receiveLoop(ctx)
	ss.mu.Lock()
	ss.recvDone, ss.recvErr = true, err
	ss.mu.Unlock()
	ss.signal()
}

func (ss *submitStream) receiveLoop(ctx context.Context) error {
	n := ss.s.n
	for {
		req, err := ss.stream.Recv()
		if err != nil {
			return err
		}
		arrived := time.Now()
		if rep := req.GetReport(); rep != nil {
			n.reports.report(ss.volume, ss.session, rep)
			continue
		}
		msg := req.GetBatches()
		if msg == nil || len(msg.GetBatches()) == 0 {
			return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "submit stream of volume %q: expected batches", ss.volume)
		}
		bytes := 0
		for _, b := range msg.GetBatches() {
			if b.GetVolume() != ss.volume {
				return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "submit stream of volume %q got a batch of volume %q", ss.volume, b.GetVolume())
			}
			if err := wire.CheckBatch(b, ss.blocks); err != nil {
				code := wire.ErrorCode_ERROR_CODE_BAD_REQUEST
				if errors.Is(err, wire.ErrBadCRC) {
					code = wire.ErrorCode_ERROR_CODE_BAD_CRC
				}
				n.log.Warn("refused batch", logKeyVolume, ss.volume, logKeyErr, err)
				return wire.Errorf(code, "%v", err)
			}
			bytes += wire.BatchBytes(b)
		}
		if err := ss.s.checkFailed(); err != nil {
			return err
		}
		if used := n.fsm.Stats().JournalBytes + n.prop.pendingBytes(); used+uint64(bytes) > n.cfg.JournalBudget {
			return wire.Errorf(wire.ErrorCode_ERROR_CODE_JOURNAL_FULL,
				"journal holds %d bytes (with batches in flight) of its budget of %d; refusing %d more bytes of volume %q",
				used, n.cfg.JournalBudget, bytes, ss.volume)
		}
		// Flow control: wait while this stream has too much in flight.
		ss.mu.Lock()
		for ss.inFlight > 0 && ss.inFlight+bytes > maxStreamInFlight && ctx.Err() == nil {
			ss.cond.Wait()
		}
		if ctx.Err() != nil {
			ss.mu.Unlock()
			return ctx.Err()
		}
		ss.outstanding++
		ss.inFlight += bytes
		ss.mu.Unlock()
		pr := &proposal{batches: msg.GetBatches(), session: ss.session, bytes: bytes}
		pr.done = func(results []BatchResult, err error) {
			ss.mu.Lock()
			ss.outstanding--
			ss.inFlight -= pr.bytes
			if err != nil && ss.resultErr == nil {
				ss.resultErr = err
			}
			if err == nil {
				ss.results = append(ss.results, proposalResults{results: results, arrived: arrived})
			}
			ss.cond.Broadcast()
			ss.mu.Unlock()
			ss.signal()
		}
		if err := n.prop.submit(pr); err != nil {
			pr.done(nil, err)
			return err
		}
	}
}

// Fetch implements the secondaries' stream of committed batches.
func (s *service) Fetch(req *wire.FetchRequest, stream wire.Intermediate_FetchServer) error {
	if err := s.checkGroup(req.GetGroup()); err != nil {
		return err
	}
	if err := wire.CheckVolumeName(req.GetVolume()); err != nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "%v", err)
	}
	if err := s.n.authorize(stream.Context(), "Fetch", needVolume(req.GetVolume(), auth.RolePrimary, auth.RoleSecondary),
		allowVolume(req.GetVolume(), auth.RolePrimary, auth.RoleSecondary)); err != nil {
		return err
	}
	limit := int(req.GetMaxBatches())
	if limit <= 0 || limit > defaultFetchBatches {
		limit = defaultFetchBatches
	}
	// A batch is at most MaxMessage bytes; keep responses under the limit.
	budget := s.n.cfg.MaxMessage / 2
	after := req.GetAfterSeq()
	// complete is the complete_seq told so far: the request says the
	// secondary holds the volume's batches up to after_seq.
	complete := after
	ctx := stream.Context()
	for {
		if err := s.checkFailed(); err != nil {
			return err
		}
		changed := s.n.fsm.Changed()
		// Read before Fetch: the Fetch below then sees every batch of the
		// volume with seq <= committed (the state only moves forward).
		committed := s.n.fsm.Stats().CommittedSeq
		batches, compacted, err := s.n.fsm.Fetch(req.GetVolume(), after, limit)
		known := true
		if err != nil {
			if errors.Is(err, wire.ErrUnknownVolume) {
				// A secondary may start before its primary: wait for the
				// volume to appear.
				batches, compacted, known = nil, false, false
			} else {
				return err
			}
		}
		if compacted {
			return stream.Send(&wire.FetchResponse{Compacted: true, CommittedSeq: s.n.fsm.Stats().CommittedSeq})
		}
		if len(batches) == 0 {
			if known && committed > complete {
				// Only other volumes moved: the volume is complete up to
				// the committed seq.
				if err := stream.Send(&wire.FetchResponse{CommittedSeq: committed, CompleteSeq: committed}); err != nil {
					return err
				}
				complete = committed
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-s.n.ctx.Done():
				return wire.Errorf(wire.ErrorCode_ERROR_CODE_NOT_LEADER, "node %s is shutting down", s.n.cfg.ID)
			case <-changed:
			}
			continue
		}
		// Fewer than limit batches: they are all the volume had after
		// after_seq, so the last response completes the volume up to the
		// committed seq read before.
		all := len(batches) < limit
		for len(batches) > 0 {
			size, i := 0, 0
			for i < len(batches) && (i == 0 || size+wire.BatchBytes(batches[i].GetBatch()) <= budget) {
				size += wire.BatchBytes(batches[i].GetBatch())
				i++
			}
			chunk := batches[:i]
			batches = batches[i:]
			after = chunk[i-1].GetSeq()
			complete = after
			if all && len(batches) == 0 {
				complete = max(after, committed)
			}
			if err := stream.Send(&wire.FetchResponse{Batches: chunk, CommittedSeq: s.n.fsm.Stats().CommittedSeq, CompleteSeq: complete}); err != nil {
				return err
			}
		}
	}
}

// Coordinate implements a secondary's PREPARE/VALIDATE stream with the
// leader; see wire.proto. The handler checks and registers the secondary,
// answers CoordinateOpened, attaches the stream to the coordinator of the
// leader's term, and then sends what the coordinator queues for the
// secondary while a receiver goroutine hands the secondary's messages to
// the coordinator. The stream ends when the secondary ends it, on a
// malformed message, when a newer stream of the same secondary replaces it
// (STALE_SESSION), and with NOT_LEADER when this node stops leading.
func (s *service) Coordinate(stream wire.Intermediate_CoordinateServer) error {
	n := s.n
	ctx := stream.Context()
	req, err := stream.Recv()
	if err != nil {
		return err
	}
	if err := checkCoordinateSize(req); err != nil {
		return err
	}
	hello := req.GetHello()
	if hello == nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "first message of a coordinate stream must be hello, not %T", req.GetMsg())
	}
	if err := s.checkGroup(hello.GetGroup()); err != nil {
		return err
	}
	id, volume, addr := hello.GetSecondary(), hello.GetVolume(), hello.GetAddr()
	if err := checkSecondaryID(id); err != nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "hello.secondary: %v", err)
	}
	if err := wire.CheckVolumeName(volume); err != nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "hello.volume: %v", err)
	}
	if err := checkSecondaryAddr(addr); err != nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "hello.addr: %v", err)
	}
	if err := n.authorize(ctx, "Coordinate", needVolume(volume, auth.RoleSecondary), allowVolume(volume, auth.RoleSecondary)); err != nil {
		return err
	}
	if err := s.checkFailed(); err != nil {
		return err
	}
	if !n.IsLeader() {
		return n.notLeader("coordination is the leader's")
	}
	vol, ok := n.fsm.Volume(volume)
	if !ok {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "secondary %q follows volume %q, which is not registered yet", id, volume)
	}
	info, registered := n.fsm.Secondary(id)
	if registered && info.Volume != volume {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_VOLUME_MISMATCH, "secondary %q is registered for volume %q, not %q", id, info.Volume, volume)
	}
	// A suspended secondary's hello resumes it: the registration ends the
	// suspension (its bitmap stays).
	if !registered || info.Addr != addr || info.Suspended {
		res, err := n.apply(ctx, &wire.Entry{Op: &wire.Entry_RegisterSecondary{RegisterSecondary: &wire.RegisterSecondary{Id: id, Volume: volume, Addr: addr}}})
		if err != nil {
			return err
		}
		sr, _ := res.(*SecondaryResult)
		if sr == nil {
			return fmt.Errorf("register secondary %q: unexpected state machine response %T", id, res)
		}
		if sr.Err != nil {
			return sr.Err
		}
	}

	run := n.coord.current(ctx)
	if run == nil {
		return n.notLeader("not coordinating")
	}
	l := newCoordLink(id, hello.GetAppliedSeq())
	if !run.attach(l) {
		return n.notLeader("coordination stopped")
	}
	defer run.detach(l)
	if err := stream.Send(&wire.CoordinateResponse{Msg: &wire.CoordinateResponse_Opened{Opened: &wire.CoordinateOpened{
		ValidatedSeq: n.fsm.Validated(), CommittedSeq: n.fsm.Stats().CommittedSeq, BlockCount: vol.BlockCount,
		Resync: n.needsResync(id, hello.GetAppliedSeq()),
	}}}); err != nil {
		return err
	}
	run.deliver(ctx, l, coord.Hello{From: id, Applied: hello.GetAppliedSeq(), Durable: hello.GetDurableSeq()})

	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	recvErr := make(chan error, 1)
	// The receiver cannot be waited for here: it may sit in stream.Recv,
	// which returns only once this handler has returned.
	go func() { recvErr <- s.receiveCoordinate(rctx, stream, run, l) }()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		case <-l.done:
			switch l.err {
			case errCoordinationLost:
				return n.notLeader(l.err.Error())
			case errStreamReplaced:
				return wire.Errorf(wire.ErrorCode_ERROR_CODE_STALE_SESSION, "secondary %q: %v", id, l.err)
			case errSuspended:
				// Retryable: the secondary's link reconnects, and its
				// hello resumes it.
				return status.Errorf(codes.Aborted, "secondary %q: %v", id, l.err)
			}
			return l.err
		case <-l.wake:
		}
		prepare, validate := l.take()
		if validate != 0 {
			if err := stream.Send(&wire.CoordinateResponse{Msg: &wire.CoordinateResponse_Validate{Validate: &wire.AppliedSeq{Seq: validate}}}); err != nil {
				return err
			}
		}
		if prepare != 0 {
			if err := stream.Send(&wire.CoordinateResponse{Msg: &wire.CoordinateResponse_Prepare{Prepare: &wire.PreparedSeq{Seq: prepare}}}); err != nil {
				return err
			}
		}
	}
}

// receiveCoordinate reads a secondary's messages after its hello and hands
// them to the coordinator, until the stream ends or a message is malformed.
func (s *service) receiveCoordinate(ctx context.Context, stream wire.Intermediate_CoordinateServer, run *coordRun, l *coordLink) error {
	for {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		if err := checkCoordinateSize(req); err != nil {
			return err
		}
		switch m := req.GetMsg().(type) {
		case *wire.CoordinateRequest_Prepared:
			run.deliver(ctx, l, coord.Prepared{From: l.id, N: m.Prepared.GetSeq()})
		case *wire.CoordinateRequest_Applied:
			run.deliver(ctx, l, coord.Applied{From: l.id, N: m.Applied.GetSeq()})
		case *wire.CoordinateRequest_Report:
			run.report(l.id, m.Report)
		case *wire.CoordinateRequest_Hello:
			return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "coordinate stream of secondary %q: hello after the first message", l.id)
		default:
			return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "coordinate stream of secondary %q: message without content", l.id)
		}
	}
}

// checkCoordinateSize refuses a Coordinate message over
// maxCoordinateMessage bytes.
func checkCoordinateSize(req *wire.CoordinateRequest) error {
	if size := proto.Size(req); size > maxCoordinateMessage {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_TOO_LARGE, "coordinate message of %d bytes over the limit of %d", size, maxCoordinateMessage)
	}
	return nil
}

// Status implements the group status query.
func (s *service) Status(ctx context.Context, _ *wire.StatusRequest) (*wire.StatusResponse, error) {
	return s.n.Status(ctx)
}

// Status returns this node's view of the group.
func (n *Node) Status(ctx context.Context) (*wire.StatusResponse, error) {
	resp, _ := n.status()
	return resp, ctx.Err()
}

// status builds the answer of Status, which the metrics collector reads
// too; leading reports whether this node coordinates, so that the
// secondaries' figures and the primaries' reports are the leader's view
// (elsewhere they are left out or zero).
func (n *Node) status() (resp *wire.StatusResponse, leading bool) {
	st := n.fsm.Stats()
	_, id := n.raft.LeaderWithID()
	resp = &wire.StatusResponse{
		Group:          n.cfg.Group,
		Node:           n.cfg.ID,
		RaftState:      n.raft.State().String(),
		Leader:         string(id),
		CommittedSeq:   st.CommittedSeq,
		ValidSeq:       st.ValidSeq,
		JournalBatches: st.JournalBatches,
		JournalBytes:   st.JournalBytes,
		JournalBudget:  n.cfg.JournalBudget,
		AppliedIndex:   st.AppliedIndex,
		ValidatedSeq:   st.ValidatedSeq,
		ConsistentSeq:  st.ConsistentSeq,
	}
	if id != "" {
		resp.LeaderAddr = n.fsm.NodeAddr(string(id))
	}
	view := n.coord.view()
	resp.HeldBy = view.heldBy
	now := time.Now()
	for _, sec := range n.fsm.Secondaries() {
		ss := &wire.SecondaryStatus{Id: sec.ID, Volume: sec.Volume, Addr: sec.Addr, Suspended: sec.Suspended, DirtyRegions: sec.DirtyRegions}
		if view.leading {
			sv := view.secondaries[sec.ID]
			ss.Connected, ss.PreparedSeq, ss.AppliedSeq = sv.connected, sv.prepared, sv.applied
			if sec.Suspended {
				// Not a member of the coordination: what it applied is
				// known from its suspension.
				ss.AppliedSeq = max(ss.AppliedSeq, sec.ResumeFrom)
			}
			if rep := sv.report; rep != nil {
				ss.State, ss.Reason, ss.FetchedSeq, ss.ResyncDone, ss.ResyncTotal =
					rep.GetState(), rep.GetReason(), rep.GetFetchedSeq(), rep.GetResyncDone(), rep.GetResyncTotal()
			}
			var oldest time.Time
			ss.LagBatches, ss.LagBytes, oldest = n.fsm.JournalLag(sec.Volume, sv.applied)
			if ss.LagBatches > 0 {
				ss.LagSeconds = max(now.Sub(oldest).Seconds(), 0)
			}
		}
		resp.Secondaries = append(resp.Secondaries, ss)
	}
	for _, v := range n.fsm.Volumes() {
		vs := &wire.VolumeStatus{
			Name: v.Name, Epoch: v.Epoch, CommittedSeq: v.LastSeq, VolumeSeq: v.LastVolumeSeq, BlockCount: v.BlockCount,
			TrimmedSeq: v.TrimmedSeq, ChangedSincePromotion: v.ChangedSincePromotion, CopySinceSeq: v.CopySince,
		}
		for _, p := range n.fsm.Promotions(v.Name) {
			vs.Promotions = append(vs.Promotions, &wire.Promotion{PromotionId: p.ID, Epoch: p.Epoch, Seq: p.Seq,
				TimeUnixNano: p.Time.UnixNano(), By: p.By})
		}
		n.reports.fill(vs)
		resp.Volumes = append(resp.Volumes, vs)
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err == nil {
		for _, srv := range cf.Configuration().Servers {
			resp.Servers = append(resp.Servers, &wire.ServerStatus{
				Id: string(srv.ID), RaftAddr: string(srv.Address), ClientAddr: n.fsm.NodeAddr(string(srv.ID)), Suffrage: srv.Suffrage.String(),
			})
		}
	}
	if n.FatalErr() != nil {
		resp.RaftState = "Failed"
	}
	return resp, view.leading
}

// Join implements adding a node (leader only).
func (s *service) Join(ctx context.Context, req *wire.JoinRequest) (*wire.JoinResponse, error) {
	n := s.n
	if err := n.authorize(ctx, "Join", "an admin grant or "+auth.Grant{Role: auth.RoleIntermediate, Name: req.GetId()}.URI().String(),
		allowAdmin(func(id auth.Identity) bool { return id.Has(auth.RoleIntermediate, req.GetId()) })); err != nil {
		return nil, err
	}
	if req.GetId() == "" || req.GetRaftAddr() == "" {
		return nil, wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "join needs a node id and a raft address")
	}
	if !n.IsLeader() {
		return nil, n.notLeader("join goes to the leader")
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, n.raftError(err)
	}
	for _, srv := range cf.Configuration().Servers {
		if string(srv.ID) == req.GetId() && string(srv.Address) == req.GetRaftAddr() {
			return &wire.JoinResponse{}, nil // already a member: joining twice is harmless
		}
	}
	if err := waitFuture(ctx, n.raft.AddVoter(raft.ServerID(req.GetId()), raft.ServerAddress(req.GetRaftAddr()), 0, n.cfg.ApplyTimeout)); err != nil {
		return nil, n.raftError(err)
	}
	n.log.Info("added node", "member", req.GetId(), logKeyAddr, req.GetRaftAddr())
	return &wire.JoinResponse{}, nil
}

// Remove implements taking a node out (leader only).
func (s *service) Remove(ctx context.Context, req *wire.RemoveRequest) (*wire.RemoveResponse, error) {
	n := s.n
	if err := n.authorize(ctx, "Remove", "an admin grant", allowAdmin(nil)); err != nil {
		return nil, err
	}
	if req.GetId() == "" {
		return nil, wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "remove needs a node id")
	}
	if !n.IsLeader() {
		return nil, n.notLeader("remove goes to the leader")
	}
	cf := n.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		return nil, n.raftError(err)
	}
	found := false
	for _, srv := range cf.Configuration().Servers {
		found = found || string(srv.ID) == req.GetId()
	}
	if !found {
		return &wire.RemoveResponse{}, nil // not a member: removing twice is harmless
	}
	if err := waitFuture(ctx, n.raft.RemoveServer(raft.ServerID(req.GetId()), 0, n.cfg.ApplyTimeout)); err != nil {
		return nil, n.raftError(err)
	}
	n.log.Info("removed node", "member", req.GetId())
	return &wire.RemoveResponse{}, nil
}

// waitFuture waits for a Raft future or ctx.
func waitFuture(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
