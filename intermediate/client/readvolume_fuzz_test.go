package client

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// chunkServer is a leader whose ReadVolume and ReadRegions streams send a
// script of chunks, then end with UNKNOWN_VOLUME (a permanent refusal: no
// retry).
type chunkServer struct {
	wire.UnimplementedIntermediateServer
	mu     sync.Mutex
	script []*wire.ReadVolumeResponse
}

func (s *chunkServer) ReadVolume(_ *wire.ReadVolumeRequest, stream grpc.ServerStreamingServer[wire.ReadVolumeResponse]) error {
	return s.send(stream)
}

func (s *chunkServer) ReadRegions(_ *wire.ReadRegionsRequest, stream grpc.ServerStreamingServer[wire.ReadVolumeResponse]) error {
	return s.send(stream)
}

func (s *chunkServer) send(stream grpc.ServerStreamingServer[wire.ReadVolumeResponse]) error {
	s.mu.Lock()
	script := s.script
	s.mu.Unlock()
	for _, c := range script {
		if err := stream.Send(c); err != nil {
			return err
		}
	}
	return wire.Errorf(wire.ErrorCode_ERROR_CODE_UNKNOWN_VOLUME, "chunk server: end of the script")
}

// Flags of a chunk in a FuzzReadVolumeChunks script.
const (
	fzChunkData    = 1 << iota // the chunk carries its blocks (else a zero chunk)
	fzChunkDone                // the last chunk
	fzChunkBadCRC              // its CRC does not match
	fzChunkShort               // its data is one byte short
	fzChunkBigData             // data for one block more than it says
)

// FuzzReadVolumeChunks serves a script of chunks built from the input (for
// each chunk: a signed step from where the previous one ended, a block
// count and flags) for a volume of 1 to 64 blocks, and copies the volume
// with the client's ReadVolume, or its marked regions with ReadRegions
// (the input's first byte picks). The client must pass fn the chunks of a
// valid script (in increasing order from block 0, contiguous for
// ReadVolume, each inside the volume, with its blocks or none and a
// matching CRC, then Done at the volume's end) and return nil;
// for any other script it must pass fn only a valid prefix and return an
// error wrapping wire.ErrBadCRC or wire.ErrBadRequest (or, for a script
// without Done, the server's refusal at its end).
func FuzzReadVolumeChunks(f *testing.F) {
	srv := &chunkServer{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	gs := grpc.NewServer()
	wire.RegisterIntermediateServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	f.Cleanup(gs.Stop)
	c := newTestClient(f, Config{Addrs: []string{lis.Addr().String()}})

	f.Add(byte(8), []byte{0, 4, fzChunkData, 0, 4, 0, 0, 0, fzChunkDone})
	f.Add(byte(8), []byte{0, 8, 0, 0, 0, fzChunkDone})
	f.Add(byte(8), []byte{0, 4, 0, 1, 4, 0, 0, 0, fzChunkDone})    // a gap
	f.Add(byte(8), []byte{0, 4, 0, 0xfe, 4, 0, 0, 0, fzChunkDone}) // an overlap
	f.Add(byte(8), []byte{0, 4, fzChunkData | fzChunkBadCRC, 0, 0, fzChunkDone})
	f.Add(byte(8), []byte{0, 4, fzChunkData | fzChunkShort})
	f.Add(byte(8), []byte{0, 200, 0, 0, 0, fzChunkDone})                  // past the end
	f.Add(byte(8), []byte{0, 0, 0, 0, 8, 0, 0, 0, fzChunkDone})           // an empty chunk
	f.Add(byte(8), []byte{0, 8, 0, 0, 1, fzChunkDone})                    // done with blocks
	f.Add(byte(8), []byte{0, 4, fzChunkData | fzChunkBigData, 0, 4, 0})   // more data than blocks
	f.Add(byte(1), []byte{0, 1, fzChunkData, 0, 0, fzChunkDone, 0, 1, 0}) // more after done
	f.Add(byte(0x80|8), []byte{2, 2, fzChunkData, 3, 1, 0, 1, 0, fzChunkDone})
	f.Add(byte(0x80|8), []byte{0, 0, fzChunkDone})
	f.Add(byte(0x80|8), []byte{4, 2, 0, 0xfd, 1, 0, 0, 0, fzChunkDone}) // backwards
	f.Fuzz(func(t *testing.T, blocksByte byte, script []byte) {
		blocks, regions := uint64(blocksByte%64)+1, blocksByte&0x80 != 0
		var (
			chunks []*wire.ReadVolumeResponse
			next   uint64
		)
		for i := 0; i+2 < len(script) && len(chunks) < 32; i += 3 {
			step, n, flags := int8(script[i]), uint64(script[i+1]), script[i+2]
			first := next
			if step >= 0 {
				first += uint64(step)
			} else {
				first -= min(first, uint64(-int64(step)))
			}
			c := &wire.ReadVolumeResponse{FirstBlock: first, BlockCount: uint32(n), Done: flags&fzChunkDone != 0}
			if flags&fzChunkData != 0 {
				size := int(n) * wire.BlockSize
				switch {
				case flags&fzChunkShort != 0 && size > 0:
					size--
				case flags&fzChunkBigData != 0:
					size += wire.BlockSize
				}
				c.Data = make([]byte, size)
				for j := range c.Data {
					c.Data[j] = byte(first) + byte(j/wire.BlockSize)
				}
			}
			c.Crc = wire.ChunkCRC(c)
			if flags&fzChunkBadCRC != 0 {
				c.Crc ^= 1
			}
			chunks = append(chunks, c)
			next = first + n
		}
		srv.mu.Lock()
		srv.script = chunks
		srv.mu.Unlock()

		// The script is valid up to its first Done when each chunk is.
		valid, want := false, uint64(0)
		for _, ch := range chunks {
			n := uint64(ch.GetBlockCount())
			dataOK := len(ch.GetData()) == 0 || uint64(len(ch.GetData())) == n*wire.BlockSize
			if ch.GetCrc() != wire.ChunkCRC(ch) || !dataOK {
				break
			}
			if ch.GetDone() {
				valid = ch.GetFirstBlock() == blocks && n == 0 && (want == blocks || regions)
				break
			}
			first := ch.GetFirstBlock()
			if first < want || (first != want && !regions) || n == 0 || first > blocks || n > blocks-first {
				break
			}
			want = first + n
		}

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var seen uint64
		done := false
		read := c.ReadVolume
		if regions {
			read = c.ReadRegions
		}
		err := read(ctx, "v", blocks, func(ch *wire.ReadVolumeResponse) error {
			if done {
				t.Fatalf("chunk at %d after the last", ch.GetFirstBlock())
			}
			if err := wire.CheckChunk(ch, blocks); err != nil {
				t.Fatalf("fn got a bad chunk: %v", err)
			}
			if ch.GetDone() {
				if (seen != blocks && !regions) || ch.GetFirstBlock() != blocks {
					t.Fatalf("done at block %d after %d of %d blocks", ch.GetFirstBlock(), seen, blocks)
				}
				done = true
				return nil
			}
			if ch.GetFirstBlock() < seen || (ch.GetFirstBlock() != seen && !regions) {
				t.Fatalf("chunk at block %d after block %d", ch.GetFirstBlock(), seen)
			}
			seen = ch.GetFirstBlock() + uint64(ch.GetBlockCount())
			return nil
		})
		switch {
		case valid && (err != nil || !done):
			t.Fatalf("a valid script of %d chunks: err %v, done %t", len(chunks), err, done)
		case !valid && err == nil:
			t.Fatalf("an invalid script of %d chunks was accepted (done %t)", len(chunks), done)
		case !valid && !errors.Is(err, wire.ErrBadCRC) && !errors.Is(err, wire.ErrBadRequest) && !errors.Is(err, wire.ErrUnknownVolume):
			t.Fatalf("an invalid script: %v, want a refusal", err)
		}
	})
}
