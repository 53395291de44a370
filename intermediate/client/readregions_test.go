package client

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// ReadRegions serves the scripted chunks of cl.regions for the secondary.
func (n *fakeNode) ReadRegions(req *wire.ReadRegionsRequest, stream grpc.ServerStreamingServer[wire.ReadVolumeResponse]) error {
	cl := n.cl
	cl.mu.Lock()
	cl.regionsN++
	if err := cl.leaderErrLocked(n.id); err != nil {
		cl.mu.Unlock()
		return err
	}
	chunks, ok := cl.regions[req.GetSecondary()]
	cut := cl.regionsCut > 0
	if cut {
		cl.regionsCut--
	}
	cl.mu.Unlock()
	if !ok {
		return wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "fake: secondary %q is not registered", req.GetSecondary())
	}
	for i, c := range chunks {
		if cut && i == 1 {
			return status.Error(codes.Unavailable, "fake: cut")
		}
		if err := stream.Send(c); err != nil {
			return err
		}
	}
	return nil
}

// regionChunk returns a checked chunk of n blocks at first, all zero when
// fill is 0.
func regionChunk(first uint64, n uint32, fill byte) *wire.ReadVolumeResponse {
	r := &wire.ReadVolumeResponse{FirstBlock: first, BlockCount: n}
	if fill != 0 {
		r.Data = []byte(strings.Repeat(string([]byte{fill}), int(n)*wire.BlockSize))
	}
	r.Crc = wire.ChunkCRC(r)
	return r
}

func regionDone(blocks, start, end, redo, marked uint64) *wire.ReadVolumeResponse {
	r := &wire.ReadVolumeResponse{FirstBlock: blocks, StartSeq: start, EndSeq: end, Done: true, RedoAfter: redo, MarkedSeq: marked}
	r.Crc = wire.ChunkCRC(r)
	return r
}

// TestReadRegions: ReadRegions follows the leader, hands every sparse
// chunk over in order, starts over from the first chunk after a transport
// failure, and refuses chunks out of order, corrupt or a done chunk
// elsewhere than at the end of the volume.
func TestReadRegions(t *testing.T) {
	cl := newFakeCluster(t, "n1", "n2")
	first := regionChunk(16, 32, 7)
	first.StartSeq, first.RedoAfter = 9, 5
	first.Crc = wire.ChunkCRC(first)
	good := []*wire.ReadVolumeResponse{first, regionChunk(64, 16, 0), regionChunk(1008, 16, 9), regionDone(1024, 9, 12, 5, 8)}
	cl.set(func() {
		cl.leader = "n2"
		cl.regions = map[string][]*wire.ReadVolumeResponse{"s1": good}
		cl.regionsCut = 1
	})
	c := newTestClient(t, Config{Addrs: cl.addrs("n1")})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []uint64
	err := c.ReadRegions(ctx, "s1", 1024, func(r *wire.ReadVolumeResponse) error {
		got = append(got, r.GetFirstBlock())
		if r.GetDone() && (r.GetEndSeq() != 12 || r.GetMarkedSeq() != 8 || r.GetRedoAfter() != 5) {
			t.Errorf("done chunk %v", r)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The first attempt was cut after its first chunk: it starts over.
	if want := []uint64{16, 16, 64, 1008, 1024}; !slices.Equal(got, want) {
		t.Fatalf("chunks at %v, want %v", got, want)
	}

	for _, tc := range []struct {
		name   string
		chunks []*wire.ReadVolumeResponse
		want   error
		text   string
	}{
		{"out of order", []*wire.ReadVolumeResponse{regionChunk(64, 16, 1), regionChunk(32, 16, 1), regionDone(1024, 1, 1, 0, 1)}, wire.ErrBadRequest, "expected one at or after block 80"},
		{"overlap", []*wire.ReadVolumeResponse{regionChunk(64, 16, 1), regionChunk(79, 16, 1), regionDone(1024, 1, 1, 0, 1)}, wire.ErrBadRequest, "at block 79"},
		{"done early", []*wire.ReadVolumeResponse{regionChunk(64, 16, 1), regionDone(512, 1, 1, 0, 1)}, wire.ErrBadRequest, "done true"},
		{"outside", []*wire.ReadVolumeResponse{regionChunk(1020, 16, 1)}, wire.ErrBadRequest, "outside the volume"},
		{"corrupt", []*wire.ReadVolumeResponse{func() *wire.ReadVolumeResponse { r := regionChunk(0, 16, 1); r.Crc++; return r }()}, wire.ErrBadCRC, "chunk at block 0"},
	} {
		cl.set(func() { cl.regions = map[string][]*wire.ReadVolumeResponse{"s1": tc.chunks} })
		err := c.ReadRegions(ctx, "s1", 1024, func(*wire.ReadVolumeResponse) error { return nil })
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: %v, want %v naming %q", tc.name, err, tc.want, tc.text)
		}
	}
	// A refusal is final; an error of fn is returned as it is.
	if err := c.ReadRegions(ctx, "nope", 1024, func(*wire.ReadVolumeResponse) error { return nil }); !errors.Is(err, wire.ErrUnknownVolume) {
		t.Fatalf("unknown secondary: %v", err)
	}
	cl.set(func() { cl.regions = map[string][]*wire.ReadVolumeResponse{"s1": good} })
	stop := errors.New("stop")
	if err := c.ReadRegions(ctx, "s1", 1024, func(*wire.ReadVolumeResponse) error { return stop }); err != stop {
		t.Fatalf("fn's error: %v", err)
	}
}
