// Package wire holds the protobuf messages and the gRPC service of the
// intermediate (generated from wire.proto), and the helpers every side of the
// protocol shares: the batch checksum, batch validation, the framing of Raft
// log entries, and the errors that travel as gRPC status details.
//
// Everything decoded here comes from a network peer or a disk and is treated
// as hostile: decoders check sizes and checksums and return errors; they
// never panic.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"google.golang.org/protobuf/proto"
)

// BlockSize is the size of one block: every Block.Data is exactly this long.
const BlockSize = 4096

// DefaultMaxMessage is the default limit on the size of one gRPC message and
// of one Raft entry. A message over the limit is refused with ErrTooLarge.
const DefaultMaxMessage = 32 << 20

// entryVersion is the version byte of an encoded Raft entry.
const entryVersion = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// BatchCRC returns the CRC-32C of a batch: over the volume name, the epoch,
// the volume seq, the block count and each block's index and data, then,
// when the copying flag is set, one more byte (copyingMark): a batch without
// the flag has the CRC it had before the flag existed. The crc field itself
// is not covered.
func BatchCRC(b *Batch) uint32 {
	var hdr [8]byte
	h := crc32.Checksum(nil, castagnoli)
	update := func(p []byte) { h = crc32.Update(h, castagnoli, p) }
	binary.LittleEndian.PutUint64(hdr[:], uint64(len(b.GetVolume())))
	update(hdr[:])
	update([]byte(b.GetVolume()))
	binary.LittleEndian.PutUint64(hdr[:], b.GetEpoch())
	update(hdr[:])
	binary.LittleEndian.PutUint64(hdr[:], b.GetVolumeSeq())
	update(hdr[:])
	binary.LittleEndian.PutUint64(hdr[:], uint64(len(b.GetBlocks())))
	update(hdr[:])
	for _, blk := range b.GetBlocks() {
		binary.LittleEndian.PutUint64(hdr[:], blk.GetIndex())
		update(hdr[:])
		binary.LittleEndian.PutUint64(hdr[:], uint64(len(blk.GetData())))
		update(hdr[:])
		update(blk.GetData())
	}
	if b.GetCopying() {
		update([]byte{copyingMark})
	}
	return h
}

// copyingMark is the byte BatchCRC adds for the copying flag.
const copyingMark = 0xC0

// Seal sets b.Crc to BatchCRC(b) and returns b.
func Seal(b *Batch) *Batch {
	b.Crc = BatchCRC(b)
	return b
}

// CheckBatch validates a batch received from a peer: a volume name, at least
// one block, every block exactly BlockSize bytes with an index below
// blockCount (when blockCount is not 0), and a matching CRC. Errors wrap
// ErrBadRequest or ErrBadCRC and name the batch.
func CheckBatch(b *Batch, blockCount uint64) error {
	if b == nil {
		return fmt.Errorf("%w: missing batch", ErrBadRequest)
	}
	if b.GetVolume() == "" {
		return fmt.Errorf("%w: batch %d has no volume name", ErrBadRequest, b.GetVolumeSeq())
	}
	if len(b.GetBlocks()) == 0 {
		return fmt.Errorf("%w: batch %d of volume %q has no blocks", ErrBadRequest, b.GetVolumeSeq(), b.GetVolume())
	}
	for i, blk := range b.GetBlocks() {
		if len(blk.GetData()) != BlockSize {
			return fmt.Errorf("%w: batch %d of volume %q: block %d has %d bytes, want %d",
				ErrBadRequest, b.GetVolumeSeq(), b.GetVolume(), i, len(blk.GetData()), BlockSize)
		}
		if blockCount != 0 && blk.GetIndex() >= blockCount {
			return fmt.Errorf("%w: batch %d of volume %q: block index %d outside volume of %d blocks",
				ErrBadRequest, b.GetVolumeSeq(), b.GetVolume(), blk.GetIndex(), blockCount)
		}
	}
	if got := BatchCRC(b); got != b.GetCrc() {
		return fmt.Errorf("%w: batch %d of volume %q: crc %08x, computed %08x",
			ErrBadCRC, b.GetVolumeSeq(), b.GetVolume(), b.GetCrc(), got)
	}
	return nil
}

// BatchBytes returns the payload size of a batch (blocks times BlockSize).
func BatchBytes(b *Batch) int { return len(b.GetBlocks()) * BlockSize }

// EncodeEntry frames a Raft log entry: a version byte, the protobuf encoding
// of e, and a CRC-32C of both.
func EncodeEntry(e *Entry) ([]byte, error) {
	body, err := proto.MarshalOptions{Deterministic: true}.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("encode entry: %w", err)
	}
	out := make([]byte, 0, 1+len(body)+4)
	out = append(out, entryVersion)
	out = append(out, body...)
	return binary.LittleEndian.AppendUint32(out, crc32.Checksum(out, castagnoli)), nil
}

// ErrBadEntry is returned by DecodeEntry for bytes that are not a valid
// entry: too short, an unknown version, a checksum mismatch, an undecodable
// body, or no operation.
var ErrBadEntry = errors.New("bad raft entry")

// DecodeEntry decodes bytes framed by EncodeEntry.
func DecodeEntry(p []byte) (*Entry, error) {
	if len(p) < 1+4 {
		return nil, fmt.Errorf("%w: %d bytes", ErrBadEntry, len(p))
	}
	if p[0] != entryVersion {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrBadEntry, p[0], entryVersion)
	}
	n := len(p) - 4
	if got, want := crc32.Checksum(p[:n], castagnoli), binary.LittleEndian.Uint32(p[n:]); got != want {
		return nil, fmt.Errorf("%w: crc %08x, computed %08x", ErrBadEntry, want, got)
	}
	e := new(Entry)
	if err := proto.Unmarshal(p[1:n], e); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEntry, err)
	}
	if e.GetOp() == nil {
		return nil, fmt.Errorf("%w: no operation", ErrBadEntry)
	}
	return e, nil
}

// ChunkCRC is the CRC-32C of a ReadVolumeResponse: its first block and
// block count (little-endian uint64 and uint32), then its data.
func ChunkCRC(r *ReadVolumeResponse) uint32 {
	var hdr [12]byte
	binary.LittleEndian.PutUint64(hdr[:], r.GetFirstBlock())
	binary.LittleEndian.PutUint32(hdr[8:], r.GetBlockCount())
	h := crc32.Update(0, castagnoli, hdr[:])
	return crc32.Update(h, castagnoli, r.GetData())
}

// MaxChunkBlocks is the most blocks one ReadVolume or ReadRegions chunk
// may hold (1 MiB); the nodes send at most this many.
const MaxChunkBlocks = 256

// CheckChunk checks a ReadVolumeResponse of a volume of blockCount blocks:
// its range, its data length and its CRC.
func CheckChunk(r *ReadVolumeResponse, blockCount uint64) error {
	n := uint64(r.GetBlockCount())
	switch {
	case n == 0 && !r.GetDone():
		return fmt.Errorf("%w: chunk at block %d holds no block", ErrBadRequest, r.GetFirstBlock())
	case n > MaxChunkBlocks:
		// An all-zero chunk carries no data: the reader allocates its
		// blocks, so their number is bounded here.
		return fmt.Errorf("%w: chunk of %d blocks at block %d, more than %d", ErrBadRequest, n, r.GetFirstBlock(), MaxChunkBlocks)
	case r.GetFirstBlock() > blockCount || n > blockCount-r.GetFirstBlock():
		return fmt.Errorf("%w: chunk of %d blocks at block %d, outside the volume of %d blocks", ErrBadRequest, n, r.GetFirstBlock(), blockCount)
	case len(r.GetData()) != 0 && uint64(len(r.GetData())) != n*BlockSize:
		return fmt.Errorf("%w: chunk of %d blocks at block %d carries %d bytes", ErrBadRequest, n, r.GetFirstBlock(), len(r.GetData()))
	case ChunkCRC(r) != r.GetCrc():
		return fmt.Errorf("%w: chunk at block %d", ErrBadCRC, r.GetFirstBlock())
	}
	return nil
}

// RegionBlocks is the number of blocks of one region of a secondary's
// intermediate bitmap (64 KiB): ReadRegions sends whole regions.
const RegionBlocks = 16
