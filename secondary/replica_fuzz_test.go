package secondary

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// FuzzReplicaHeader decodes arbitrary bytes as a replica header block, as
// they are and made a block with a matching CRC (so that the checks past
// the CRC get explored). Decoding never panics, refuses with ErrCorrupt or
// ErrVersion only, and a header it accepts encodes back to the same bytes.
func FuzzReplicaHeader(f *testing.F) {
	f.Add(replicaHeader{volume: testVolume, blocks: testBlocks, applied: 5}.encode())
	f.Add(replicaHeader{volume: "v", blocks: 1}.encode())
	f.Add(replicaHeader{volume: string(bytes.Repeat([]byte{'x'}, wire.MaxVolumeName)), blocks: blockdev.MaxBlocks - 1, applied: 1<<64 - 1}.encode())
	f.Add(replicaHeader{volume: testVolume, blocks: testBlocks, applied: 5}.encode()[:replicaCRCOff])
	f.Add([]byte(replicaMagic))
	f.Add(make([]byte, blockdev.BlockSize))
	f.Fuzz(func(t *testing.T, data []byte) {
		checkHeaderDecode(t, data)
		if len(data) <= replicaCRCOff {
			p := make([]byte, blockdev.BlockSize)
			copy(p, data)
			binary.LittleEndian.PutUint32(p[replicaCRCOff:], crc32.Checksum(p[:replicaCRCOff], castagnoli))
			checkHeaderDecode(t, p)
		}
	})
}

func checkHeaderDecode(t *testing.T, p []byte) {
	h, err := decodeReplicaHeader(p)
	if err != nil {
		if !errors.Is(err, blockdev.ErrCorrupt) && !errors.Is(err, blockdev.ErrVersion) {
			t.Fatalf("decode: %v, neither ErrCorrupt nor ErrVersion", err)
		}
		return
	}
	if got := h.encode(); !bytes.Equal(got, p) {
		t.Fatalf("header %+v accepted from bytes it does not encode to", h)
	}
	if err := wire.CheckVolumeName(h.volume); err != nil || h.blocks == 0 {
		t.Fatalf("header %+v accepted: %v", h, err)
	}
}
