package intermediate

import (
	"bytes"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// needsResync reports whether secondary id, whose hello said it applied
// applied, must resynchronise before it can prepare anything above its
// position (CoordinateOpened.resync): its intermediate bitmap marks
// something it has not applied (a point below the bitmap's marked seq: a
// suspension's bitmap, or a failback's), or the journal no longer holds
// the batches of its volume after applied. A secondary that applied the
// marked seq holds what the bitmap marks (the coordinator is about to
// clear it).
func (n *Node) needsResync(id string, applied uint64) bool {
	info, ok := n.fsm.Secondary(id)
	if !ok {
		return false
	}
	vol, ok := n.fsm.Volume(info.Volume)
	return info.MarkedSeq > applied || (ok && applied < vol.TrimmedSeq)
}

// ReadRegions streams the regions marked in a secondary's intermediate
// bitmap from its volume's intermediate volume: the resync of a secondary
// that was suspended, or the copy of a failback (failback.go), whose
// secondary is registered and not suspended like a resumed one. Only the
// leader serves it, after a Raft barrier (see
// ReadVolume), and only to a secondary whose Coordinate stream is attached
// to this leader (it said HELLO first); until then it answers Unavailable,
// which the client retries.
//
// Why the redo the response promises is in the journal: the bitmap, the
// volume's trimmed seq (redo_after) and the committed seq (start_seq) are
// taken together under the state machine's lock, after the secondary's
// hello re-registered it (a hello of a suspended secondary resumes it). A
// registered secondary that is not suspended holds journal trimming at its
// applied point as this leader knows it (0 until the coordinator heard its
// hello), which is at most what it applied, and what it applied is at most
// max(redo_after, the applied point of its hello) when the read starts. So
// while the read runs and until the secondary applies more, the journal
// keeps every batch of the volume after redo_after (or after its applied
// point, if that is higher): the secondary's redo (Fetch) finds them. Only
// a new suspension (the journal filled up again meanwhile) can drop them;
// the secondary's Fetch then says compacted and it starts over, with the
// new regions marked.
//
// A failback's secondary applied nothing (its hello said 0), but it holds
// the old primary's volume, which the bitmap makes the intermediate volume
// at the failback seq: it counts as having applied that seq, which is at
// least the volume's trimmed seq when it registered (CoveredFrom), so the
// journal or the bitmap covers everything after it.
func (s *service) ReadRegions(req *wire.ReadRegionsRequest, stream wire.Intermediate_ReadRegionsServer) error {
	n := s.n
	id := req.GetSecondary()
	if err := s.checkGroup(req.GetGroup()); err != nil {
		return err
	}
	if id == "" {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "read regions: secondary: empty")
	}
	if err := checkSecondaryID(id); err != nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "read regions: secondary: %v", err)
	}
	// Authorized before any Raft work, and without telling a caller that
	// may not read it whether the secondary exists.
	volume := ""
	if info, ok := n.fsm.Secondary(id); ok {
		volume = info.Volume
	}
	if err := n.authorize(stream.Context(), "ReadRegions", "an admin grant or the grant secondary/VOLUME of secondary "+id+"'s volume",
		allowAdmin(func(who auth.Identity) bool { return volume != "" && who.Has(auth.RoleSecondary, volume) })); err != nil {
		return err
	}
	if err := s.checkFailed(); err != nil {
		return err
	}
	if !n.IsLeader() {
		return n.notLeader("resyncs are served by the leader")
	}
	if err := n.raft.Barrier(readVolumeBarrier).Error(); err != nil {
		return n.raftError(err)
	}
	if _, ok := n.fsm.Secondary(id); !ok {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "read regions: secondary %q is not registered", id)
	}
	ctx := stream.Context()
	run := n.coord.current(ctx)
	if run == nil {
		return n.notLeader("not coordinating")
	}
	l := run.link(id)
	if l == nil {
		return status.Errorf(codes.Unavailable, "read regions: secondary %q has no coordinate stream open with this leader: say hello first", id)
	}
	rd, err := n.fsm.regionsToRead(id)
	if err != nil {
		return err
	}
	if rd.info.Suspended {
		return status.Errorf(codes.Unavailable, "read regions: secondary %q is suspended: its next hello resumes it", id)
	}
	applied := max(l.helloApplied, run.snapshot().secondaries[id].applied, rd.info.FailbackSeq)
	if applied < rd.trimmedSeq && (applied == 0 || applied < rd.info.CoveredFrom) {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST,
			"read regions: secondary %q applied %d, and the journal dropped batches of volume %q up to %d that its bitmap does not cover (registered when the volume was trimmed to %d): it needs a full copy (ReadVolume)",
			id, applied, rd.info.Volume, rd.trimmedSeq, rd.info.CoveredFrom)
	}

	buf := make([]byte, readVolumeChunk*blockdev.BlockSize)
	zero := make([]byte, len(buf))
	first := true
	chunks, blocks := 0, uint64(0)
	for _, r := range rd.ranges {
		start := r.First * wire.RegionBlocks
		end := min((r.First+r.Count)*wire.RegionBlocks, rd.blockCount)
		for b := start; b < end; {
			cnt := min(readVolumeChunk, end-b)
			p := buf[:cnt*blockdev.BlockSize]
			if _, err := n.fsm.ReadVolumeBlocks(ctx, rd.info.Volume, b, p); err != nil {
				return fmt.Errorf("read regions of secondary %q: %w", id, err)
			}
			resp := &wire.ReadVolumeResponse{FirstBlock: b, BlockCount: uint32(cnt)}
			if first {
				resp.StartSeq, resp.RedoAfter = rd.committed, rd.trimmedSeq
				first = false
			}
			if !bytes.Equal(p, zero[:len(p)]) {
				resp.Data = p
			}
			resp.Crc = wire.ChunkCRC(resp)
			if err := stream.Send(resp); err != nil {
				return err
			}
			if !n.IsLeader() {
				return n.notLeader("leadership moved during the resync")
			}
			b += cnt
			chunks++
			blocks += cnt
		}
	}
	end := n.fsm.Stats().CommittedSeq
	if len(rd.ranges) == 0 {
		end = rd.committed
	}
	done := &wire.ReadVolumeResponse{FirstBlock: rd.blockCount, StartSeq: rd.committed, EndSeq: end, Done: true,
		RedoAfter: rd.trimmedSeq, MarkedSeq: rd.markedSeq}
	done.Crc = wire.ChunkCRC(done)
	n.log.Info("served a resync", logKeySecondary, id, logKeyVolume, rd.info.Volume, "regions", rd.info.DirtyRegions,
		"chunks", chunks, "blocks", blocks, "start_seq", rd.committed, "end_seq", end, "redo_after", rd.trimmedSeq, "marked_seq", rd.markedSeq)
	return stream.Send(done)
}
