package intermediate

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// readVolumeChunk is the number of blocks of one ReadVolume response.
const readVolumeChunk = wire.MaxChunkBlocks

// readVolumeBarrier bounds ReadVolume's wait for the leader to apply what
// was committed before its term.
const readVolumeBarrier = 10 * time.Second

// ReadVolumeBlocks reads len(p)/BlockSize consecutive blocks of the
// intermediate volume of volume, from block first, into p. It returns the
// group's committed seq as of the call: the blocks hold every batch of the
// volume with a seq at or below it (the read waits for the applier goroutine
// to have written them); they may hold later ones too.
func (f *FSM) ReadVolumeBlocks(ctx context.Context, volume string, first uint64, p []byte) (uint64, error) {
	f.mu.RLock()
	rec, iv, jobs, seq := f.st.volumes[volume], f.vols[volume], f.jobs, f.st.seq
	f.mu.RUnlock()
	if rec == nil || iv == nil {
		return 0, wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "read volume %q: not registered", volume)
	}
	n := uint64(len(p) / blockdev.BlockSize)
	if len(p)%blockdev.BlockSize != 0 || first > rec.blockCount || n > rec.blockCount-first {
		return 0, fmt.Errorf("read %d bytes at block %d of intermediate volume %q of %d blocks: %w", len(p), first, volume, rec.blockCount, blockdev.ErrOutOfRange)
	}
	if err := f.ap.wait(ctx, jobs); err != nil {
		return 0, fmt.Errorf("read intermediate volume %q: %w", volume, err)
	}
	if err := iv.vol.ReadBlocks(first, p); err != nil {
		return 0, fmt.Errorf("read intermediate volume %q: %w", volume, err)
	}
	return seq, nil
}

// ReadVolume streams the whole intermediate volume of a volume to a new
// secondary, in chunks of consecutive blocks (an all-zero chunk goes
// without its data). Only the leader serves it: a leader has applied every
// entry committed before its term, so no block of its volumes holds a batch
// its state machine has not applied (a follower just restored from a
// snapshot may hold some; ReadVolume first waits, with a Raft barrier, until
// the leader applied everything before its term), and end_seq, the committed seq after the last
// read, bounds every batch the copy holds.
func (s *service) ReadVolume(req *wire.ReadVolumeRequest, stream wire.Intermediate_ReadVolumeServer) error {
	n := s.n
	if err := s.checkGroup(req.GetGroup()); err != nil {
		return err
	}
	if err := wire.CheckVolumeName(req.GetVolume()); err != nil {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "volume: %v", err)
	}
	if err := n.authorize(stream.Context(), "ReadVolume", needVolume(req.GetVolume(), auth.RolePrimary, auth.RoleSecondary),
		allowVolume(req.GetVolume(), auth.RolePrimary, auth.RoleSecondary)); err != nil {
		return err
	}
	if err := s.checkFailed(); err != nil {
		return err
	}
	if !n.IsLeader() {
		return n.notLeader("volume copies are served by the leader")
	}
	// A new leader may not have applied everything committed before its
	// term yet: wait until it has.
	if err := n.raft.Barrier(readVolumeBarrier).Error(); err != nil {
		return n.raftError(err)
	}
	vol, ok := n.fsm.Volume(req.GetVolume())
	if !ok {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "read volume %q: not registered", req.GetVolume())
	}
	ctx := stream.Context()
	buf := make([]byte, readVolumeChunk*blockdev.BlockSize)
	zero := make([]byte, len(buf))
	var start uint64
	for first := uint64(0); first < vol.BlockCount; first += readVolumeChunk {
		cnt := min(readVolumeChunk, vol.BlockCount-first)
		p := buf[:cnt*blockdev.BlockSize]
		seq, err := n.fsm.ReadVolumeBlocks(ctx, vol.Name, first, p)
		if err != nil {
			return err
		}
		resp := &wire.ReadVolumeResponse{FirstBlock: first, BlockCount: uint32(cnt)}
		if first == 0 {
			start = seq
			resp.StartSeq = start
		}
		if !bytes.Equal(p, zero[:len(p)]) {
			resp.Data = p
		}
		resp.Crc = wire.ChunkCRC(resp)
		if err := stream.Send(resp); err != nil {
			return err
		}
		if !n.IsLeader() {
			return n.notLeader("leadership moved during the copy")
		}
	}
	end := n.fsm.Stats().CommittedSeq
	done := &wire.ReadVolumeResponse{FirstBlock: vol.BlockCount, StartSeq: start, EndSeq: end, Done: true}
	done.Crc = wire.ChunkCRC(done)
	n.log.Info("served a volume copy", "volume", vol.Name, "blocks", vol.BlockCount, "start_seq", start, "end_seq", end)
	return stream.Send(done)
}

// RemoveSecondary takes a secondary out of the group (a RemoveSecondary
// entry): from then on the coordinator and journal trimming stop waiting
// for it. A secondary that connects again registers again.
func (s *service) RemoveSecondary(ctx context.Context, req *wire.RemoveSecondaryRequest) (*wire.RemoveSecondaryResponse, error) {
	n := s.n
	if err := n.authorize(ctx, "RemoveSecondary", "an admin grant", allowAdmin(nil)); err != nil {
		return nil, err
	}
	if err := s.checkGroup(req.GetGroup()); err != nil {
		return nil, err
	}
	if req.GetId() == "" {
		return nil, wire.Errorf(wire.ErrorCode_ERROR_CODE_BAD_REQUEST, "remove secondary: id: empty")
	}
	if err := s.checkFailed(); err != nil {
		return nil, err
	}
	if !n.IsLeader() {
		return nil, n.notLeader("removing a secondary goes to the leader")
	}
	res, err := n.apply(ctx, &wire.Entry{Op: &wire.Entry_RemoveSecondary{RemoveSecondary: &wire.RemoveSecondary{Id: req.GetId()}}})
	if err != nil {
		return nil, err
	}
	sr, _ := res.(*SecondaryResult)
	if sr == nil {
		return nil, fmt.Errorf("remove secondary %q: unexpected state machine response %T", req.GetId(), res)
	}
	if sr.Err != nil {
		return nil, sr.Err
	}
	if sr.Removed {
		n.log.Info("removed secondary", "secondary", req.GetId(), "volume", sr.Secondary.Volume)
	}
	return &wire.RemoveSecondaryResponse{Removed: sr.Removed, Volume: sr.Secondary.Volume}, nil
}
