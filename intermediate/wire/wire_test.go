package wire

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// testBatch returns a sealed batch of n blocks filled from seed.
func testBatch(volume string, epoch, volumeSeq uint64, n int, seed byte) *Batch {
	b := &Batch{Volume: volume, Epoch: epoch, VolumeSeq: volumeSeq}
	for i := range n {
		b.Blocks = append(b.Blocks, &Block{Index: uint64(i * 3), Data: bytes.Repeat([]byte{seed + byte(i)}, BlockSize)})
	}
	return Seal(b)
}

func TestWireEncodeDecodeEntry(t *testing.T) {
	for _, e := range []*Entry{
		{Op: &Entry_Submit{Submit: &SubmitEntry{Batches: []*Batch{testBatch("a", 1, 1, 2, 7), testBatch("b", 3, 9, 1, 1)}}}},
		{Op: &Entry_RegisterVolume{RegisterVolume: &RegisterVolume{Volume: "a", BlockCount: 1 << 20, Epoch: 1}}},
		{Op: &Entry_SetEpoch{SetEpoch: &SetEpoch{Volume: "a", Epoch: 2}}},
		{Op: &Entry_NodeAddr{NodeAddr: &NodeAddr{Id: "n1", ClientAddr: "127.0.0.1:7000"}}},
	} {
		p, err := EncodeEntry(e)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeEntry(p)
		if err != nil {
			t.Fatalf("decode %T: %v", e.GetOp(), err)
		}
		if !proto.Equal(got, e) {
			t.Fatalf("decoded %v, want %v", got, e)
		}
		for i := range p {
			q := bytes.Clone(p)
			q[i] ^= 0x10
			if _, err := DecodeEntry(q); !errors.Is(err, ErrBadEntry) {
				t.Fatalf("%T with byte %d flipped: %v, want ErrBadEntry", e.GetOp(), i, err)
			}
		}
		for n := range len(p) {
			if _, err := DecodeEntry(p[:n]); !errors.Is(err, ErrBadEntry) {
				t.Fatalf("%T truncated to %d bytes: %v, want ErrBadEntry", e.GetOp(), n, err)
			}
		}
	}
	p, err := EncodeEntry(&Entry{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DecodeEntry(p); !errors.Is(err, ErrBadEntry) || !strings.Contains(err.Error(), "no operation") {
		t.Fatalf("entry without an operation: %v", err)
	}
}

// FuzzDecodeEntry decodes arbitrary bytes: never a panic, and what decodes
// encodes back to an entry that decodes to the same.
func FuzzDecodeEntry(f *testing.F) {
	for _, e := range []*Entry{
		{Op: &Entry_Submit{Submit: &SubmitEntry{Batches: []*Batch{testBatch("a", 1, 1, 1, 0)}}}},
		{Op: &Entry_RegisterVolume{RegisterVolume: &RegisterVolume{Volume: "vol", BlockCount: 64, Epoch: 1}}},
		{Op: &Entry_NodeAddr{NodeAddr: &NodeAddr{Id: "n", ClientAddr: "a"}}},
	} {
		p, err := EncodeEntry(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(p)
	}
	f.Add([]byte{})
	f.Add([]byte{entryVersion, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, p []byte) {
		e, err := DecodeEntry(p)
		if err != nil {
			if !errors.Is(err, ErrBadEntry) {
				t.Fatalf("error %v does not wrap ErrBadEntry", err)
			}
			return
		}
		q, err := EncodeEntry(e)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		e2, err := DecodeEntry(q)
		if err != nil || !proto.Equal(e, e2) {
			t.Fatalf("re-encoded entry decodes to %v, %v; want %v", e2, err, e)
		}
	})
}

func TestWireCheckBatch(t *testing.T) {
	good := testBatch("a", 1, 5, 3, 9)
	if err := CheckBatch(good, 7); err != nil {
		t.Fatalf("good batch: %v", err)
	}
	if err := CheckBatch(good, 0); err != nil {
		t.Fatalf("good batch, unknown size: %v", err)
	}
	for _, tc := range []struct {
		name   string
		mutate func(b *Batch)
		blocks uint64
		want   error
	}{
		{"nil", nil, 0, ErrBadRequest},
		{"no volume", func(b *Batch) { b.Volume = ""; Seal(b) }, 0, ErrBadRequest},
		{"no blocks", func(b *Batch) { b.Blocks = nil; Seal(b) }, 0, ErrBadRequest},
		{"short block", func(b *Batch) { b.Blocks[1].Data = b.Blocks[1].Data[:10]; Seal(b) }, 0, ErrBadRequest},
		{"index outside", func(b *Batch) {}, 6, ErrBadRequest},
		{"crc", func(b *Batch) { b.Crc++ }, 0, ErrBadCRC},
		{"data changed", func(b *Batch) { b.Blocks[2].Data[100]++ }, 0, ErrBadCRC},
		{"index changed", func(b *Batch) { b.Blocks[0].Index++ }, 0, ErrBadCRC},
		{"epoch changed", func(b *Batch) { b.Epoch++ }, 0, ErrBadCRC},
		{"volume seq changed", func(b *Batch) { b.VolumeSeq++ }, 0, ErrBadCRC},
		{"volume changed", func(b *Batch) { b.Volume = "b" }, 0, ErrBadCRC},
		{"blocks swapped", func(b *Batch) { b.Blocks[0], b.Blocks[1] = b.Blocks[1], b.Blocks[0] }, 0, ErrBadCRC},
	} {
		var b *Batch
		if tc.mutate != nil {
			b = proto.Clone(good).(*Batch)
			tc.mutate(b)
		}
		if err := CheckBatch(b, tc.blocks); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// FuzzBatchCRC builds a batch from arbitrary bytes: once sealed it passes
// CheckBatch, survives a protobuf round trip, and any single flipped bit
// of its content fails the CRC.
func FuzzBatchCRC(f *testing.F) {
	f.Add("a", uint64(1), uint64(1), uint64(0), []byte("data"), uint16(0))
	f.Add("volume-2", uint64(9), uint64(1<<40), uint64(77), []byte{}, uint16(4095))
	f.Fuzz(func(t *testing.T, volume string, epoch, volumeSeq, index uint64, fill []byte, flip uint16) {
		if volume == "" {
			return
		}
		data := make([]byte, BlockSize)
		for i := range data {
			if len(fill) > 0 {
				data[i] = fill[i%len(fill)]
			}
		}
		b := Seal(&Batch{Volume: volume, Epoch: epoch, VolumeSeq: volumeSeq, Blocks: []*Block{{Index: index, Data: data}}})
		if err := CheckBatch(b, 0); err != nil {
			t.Fatalf("sealed batch: %v", err)
		}
		if !utf8.ValidString(volume) {
			// A protobuf string must be UTF-8: such a batch never travels.
			return
		}
		p, err := proto.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		b2 := new(Batch)
		if err := proto.Unmarshal(p, b2); err != nil {
			t.Fatal(err)
		}
		if err := CheckBatch(b2, 0); err != nil || BatchCRC(b2) != b.GetCrc() {
			t.Fatalf("batch after a protobuf round trip: %v", err)
		}
		b2.Blocks[0].Data[int(flip)%BlockSize] ^= 1 << (flip % 8)
		if err := CheckBatch(b2, 0); !errors.Is(err, ErrBadCRC) {
			t.Fatalf("flipped bit %d of byte %d: %v, want ErrBadCRC", flip%8, int(flip)%BlockSize, err)
		}
		if BatchBytes(b) != BlockSize {
			t.Fatalf("BatchBytes = %d", BatchBytes(b))
		}
	})
}

func TestWireErrorStatusRoundTrip(t *testing.T) {
	for code := range codeSentinels {
		e := &Error{Code: code, Msg: fmt.Sprintf("refused with %s", code), LeaderID: "n2", LeaderAddr: "127.0.0.1:9",
			ResumeVolumeSeq: 17, Epoch: 4}
		if !errors.Is(e, codeSentinels[code]) {
			t.Fatalf("%s does not match its sentinel", code)
		}
		st := e.GRPCStatus()
		if st.Code() != codeGRPC[code] {
			t.Errorf("%s travels as gRPC %s, want %s", code, st.Code(), codeGRPC[code])
		}
		got := FromStatus(st.Err())
		var we *Error
		if !errors.As(got, &we) {
			t.Fatalf("%s: FromStatus gave %T", code, got)
		}
		if we.Code != code || we.LeaderID != e.LeaderID || we.LeaderAddr != e.LeaderAddr ||
			we.ResumeVolumeSeq != e.ResumeVolumeSeq || we.Epoch != e.Epoch {
			t.Fatalf("%s: decoded %+v, want %+v", code, we, e)
		}
		if we.Error() != e.Error() {
			t.Errorf("%s: decoded message %q, want %q", code, we.Error(), e.Error())
		}
		if !errors.Is(got, codeSentinels[code]) {
			t.Errorf("decoded %s does not match its sentinel", code)
		}
		for other, sentinel := range codeSentinels {
			if other != code && errors.Is(got, sentinel) {
				t.Errorf("decoded %s matches the sentinel of %s", code, other)
			}
		}
	}

	gap := Errorf(ErrorCode_ERROR_CODE_GAP, "batch 9 of %q", "a")
	gap.ResumeVolumeSeq = 5
	if got := FromStatus(gap.GRPCStatus().Err()).Error(); !strings.Contains(got, "resume at volume seq 5") {
		t.Errorf("gap message %q does not say where to resume", got)
	}
	plain := status.Error(codes.Unavailable, "no detail")
	if got := FromStatus(plain); got != plain {
		t.Errorf("a status without detail changed: %v", got)
	}
	other := errors.New("not a status")
	if got := FromStatus(other); got != other {
		t.Errorf("a plain error changed: %v", got)
	}
	if FromStatus(nil) != nil {
		t.Error("FromStatus(nil) is not nil")
	}
}

func TestWireCheckVolumeName(t *testing.T) {
	for _, name := range []string{"a", "A-z_0.9", "vol.1", "x..y", strings.Repeat("v", MaxVolumeName)} {
		if err := CheckVolumeName(name); err != nil {
			t.Errorf("%q: %v", name, err)
		}
	}
	for _, name := range []string{"", ".", "..", ".hidden", "a/b", "a b", "é", "a\x00", "a:b", strings.Repeat("v", MaxVolumeName+1)} {
		err := CheckVolumeName(name)
		if !errors.Is(err, ErrBadRequest) {
			t.Errorf("%q: %v, want ErrBadRequest", name, err)
		}
	}
}

// TestCheckChunk: sealed chunks pass; a flipped byte, a wrong length or a
// range outside the volume is refused.
func TestCheckChunk(t *testing.T) {
	data := make([]byte, 2*BlockSize)
	data[5] = 7
	c := &ReadVolumeResponse{FirstBlock: 6, BlockCount: 2, Data: data}
	c.Crc = ChunkCRC(c)
	if err := CheckChunk(c, 8); err != nil {
		t.Fatal(err)
	}
	zero := &ReadVolumeResponse{FirstBlock: 0, BlockCount: 4}
	zero.Crc = ChunkCRC(zero)
	if err := CheckChunk(zero, 8); err != nil {
		t.Fatalf("zero chunk: %v", err)
	}
	if err := CheckChunk(c, 7); !errors.Is(err, ErrBadRequest) {
		t.Errorf("chunk past the end: %v", err)
	}
	c.Data[100] ^= 1
	if err := CheckChunk(c, 8); !errors.Is(err, ErrBadCRC) {
		t.Errorf("flipped byte: %v", err)
	}
	short := &ReadVolumeResponse{FirstBlock: 0, BlockCount: 2, Data: make([]byte, BlockSize)}
	short.Crc = ChunkCRC(short)
	if err := CheckChunk(short, 8); !errors.Is(err, ErrBadRequest) {
		t.Errorf("short data: %v", err)
	}
	// An all-zero chunk's blocks are allocated by the reader: bounded.
	huge := &ReadVolumeResponse{FirstBlock: 0, BlockCount: MaxChunkBlocks + 1}
	huge.Crc = ChunkCRC(huge)
	if err := CheckChunk(huge, 1<<30); !errors.Is(err, ErrBadRequest) {
		t.Errorf("zero chunk of %d blocks: %v", huge.BlockCount, err)
	}
}

// FuzzCheckChunk: any bytes decoded as a chunk are checked without a
// panic, and a chunk that passes lies inside the volume.
func FuzzCheckChunk(f *testing.F) {
	c := &ReadVolumeResponse{FirstBlock: 1, BlockCount: 1, Data: make([]byte, BlockSize), StartSeq: 3}
	c.Crc = ChunkCRC(c)
	p, err := proto.Marshal(c)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(p, uint64(4))
	f.Add([]byte{}, uint64(0))
	f.Fuzz(func(t *testing.T, p []byte, blocks uint64) {
		var r ReadVolumeResponse
		if proto.Unmarshal(p, &r) != nil {
			return
		}
		if CheckChunk(&r, blocks) == nil && r.GetFirstBlock()+uint64(r.GetBlockCount()) > blocks {
			t.Fatalf("chunk %d+%d passes for a volume of %d blocks", r.GetFirstBlock(), r.GetBlockCount(), blocks)
		}
	})
}
