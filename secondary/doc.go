// Package secondary is the secondary site: the follower loop (Secondary:
// a fetcher that stages the committed batches of its volume, a driver that
// steps the Follower core of PREPARE/VALIDATE, an applier that moves the
// replica and its read-only Mount to each validated seq atomically for its
// readers), the durable staging store (Stage), the replica volume
// (Replica) and the initial copy from the intermediate volume
// (ReplicaBuilder). docs/ARCHITECTURE.md ("Secondaries") describes the
// protocol; this documentation the formats.
//
// # Staging store
//
// A Stage holds the committed batches of one volume, fetched ahead of
// VALIDATE, durably: a secondary answers PREPARED(N) only for N <=
// Stage.Durable(), and at VALIDATE(N) applies Stage.Batches up to N. The
// fetcher goroutine appends; the applier reads concurrently; once the volume
// holds the batches the fetcher trims them. Seqs of one volume increase with
// gaps (the other volumes of the group take the rest); the fetched watermark
// (MarkFetched) says how far the volume's batches are complete, gaps
// included.
//
// # On-disk format
//
// A stage directory holds a lock file, stage.lock, and segment files named
// by their number, 20 decimal digits and ".seg" (00000000000000000001.seg,
// ...). Numbers follow each other without a gap; trimming removes the
// oldest. Other names are ignored. Every integer is little-endian; every
// checksum is a CRC-32C (Castagnoli).
//
// A segment starts with a 128-byte header:
//
//	0   magic       "TRICSTG\x00"
//	8   version     uint32, 1
//	12  name length uint32, 1 to 64
//	16  number      uint64, the number of its file name
//	24  base        uint64, the seq of the last batch appended before the
//	                segment was started (Last()); its batches are above it
//	32  watermark   uint64, Fetched() when it was started, >= base
//	40  volume      [64]byte, the volume name, zero-padded
//	104 reserved    [20]byte, zero
//	124 crc32c      uint32 over bytes [0, 124)
//
// The header of a segment is durable (file and directory fsynced) before a
// record is written to it, and the segment before it was fsynced whole. The
// base of a segment equals the last seq of the segments before it, and its
// watermark is at least theirs (it records the watermark when a Sync finds
// the segment before it full); in the first segment they are what the
// dropped segments held, so that Last() and Fetched() survive every trim.
//
// Records follow the header back to back, each a 32-byte header, a payload
// and a checksum:
//
//	0  magic   uint32 0x31525354 ("TSR1")
//	4  kind    uint8: 1 batch, 2 watermark
//	5  zero    [3]byte
//	8  seq     uint64: the batch's seq, or the watermark
//	16 synced  uint64: this many first bytes of the segment were durable
//	           (fsynced) when the record was written; <= the record's offset
//	24 length  uint32: payload bytes, at most wire.DefaultMaxMessage
//	28 hdrcrc  uint32 over bytes [0, 28)
//	32 payload batch: a wire.CommittedBatch in deterministic protobuf,
//	           whose seq is the header's and whose batch CRC must match;
//	           watermark: empty
//	.. crc32c  uint32 over the record header and the payload
//
// Batch seqs increase across all segments and lie above the watermark
// before them; a watermark record is above every seq and watermark before
// it. Append writes batch records with one write per call and segment;
// MarkFetched only raises the watermark in memory, and Sync writes a
// watermark record if the watermark passed what is recorded, then fsyncs.
//
// # Recovery
//
// OpenStage reads every segment in order and checks every header, record
// checksum, batch and ordering rule above. A last segment of no more than a
// header's bytes without an intact header is a segment a crash interrupted
// while it was started: it is removed. Where the records of the last segment
// stop being valid (a short or torn record, a checksum mismatch, zeros),
// recovery looks past that offset for an intact record header claiming
// (synced) that the offset was durable: if there is one, the damage hit
// synced data and OpenStage fails; if not, the rest is the torn tail of
// unsynced appends and is cut off, durably, with a log line. Anything else
// (a damaged record in any other segment, an intact record that breaks a
// rule, a header of another volume, a missing segment in the middle, a bad
// magic or version) is an error wrapping blockdev.ErrCorrupt naming the file
// and the offset: nothing is skipped silently. Lengths read from disk are
// bounded by the file size and wire.DefaultMaxMessage before anything is
// allocated. What remains is fsynced, with the directory, so that records
// written next may claim it: Durable() after OpenStage is the recovered
// watermark (the last watermark record or header, or the last seq if
// higher).
//
// Only a later record can prove that a record was synced: damage to the
// records that no intact record written after a covering fsync vouches for
// (in practice those synced by the last Sync before the stage was closed) is
// taken for a torn tail and cut off, as a crash before that Sync would have
// left them. Recovery then reports a lower Durable() than before; everything
// a later record vouches for is either intact or refused.
//
// # Replica volume
//
// A Replica is the volume a secondary exposes, read-only: a
// blockdev.FileVolume (atomic batches by an intent log; docs/ARCHITECTURE.md)
// of one block more than the volume, in a directory of its own. Its last
// block is the header:
//
//	0    magic       "TRIREPH\x00"
//	8    version     uint32, 1; 2 when redo is set (below)
//	12   flags       uint32: bit 0 "copied" (the blocks are an initial copy
//	                 at applied, which is not a validated point yet: not
//	                 exposed until a round validates it); no other bit set
//	16   blocks      uint64, the volume's block count: the FileVolume's - 1
//	24   applied     uint64, the seq N the replica is at: every batch of the
//	                 volume with seq <= N is in the blocks, none after
//	32   name length uint16, 1 to 64
//	34   volume      the volume name, then zeros up to the crc (version
//	                 1) or up to redo (version 2)
//	4084 redo        uint64, version 2 only: the seq of an in-place round
//	                 from applied that was started and not finished: the
//	                 blocks are torn until it is written again
//	4092 crc32c      uint32 over bytes [0, 4092)
//
// The magic, the version and the crc keep their places in every version,
// so that an intact header of an unknown version (blockdev.ErrVersion) is
// told from a damaged one (blockdev.ErrCorrupt).
//
// At VALIDATE(N) the applier calls ApplyRound(N, Stage.Batches(Applied(),
// N)): the blocks of every staged batch above the replica's N and up to the
// new one, and the header recording the new N, go to the FileVolume as one
// batch, applied with Sync. The intent log makes that batch atomic, so after
// a crash at any instant the replica is at the old N or the new one, whole
// (invariants 4 and 6), and the header never disagrees with the blocks.
// Batches at or below the replica's N are skipped, so a VALIDATE re-sent
// after a restart is harmless; N never goes back. A round is checked whole
// (volume, CRC, block indexes, seq order, size) before anything is written.
//
// A round of ReplicaOptions.InPlaceBytes (4 MiB) or more, which a
// secondary catching up applies in steps of up to 64 MiB, is written in
// place instead, with the stage as its redo log, so that its blocks are
// written once rather than twice (intent log, then checkpoint): a header
// recording the round as started (redo = N) goes through the intent log
// with Sync; the blocks go straight into the data file, which is synced
// (FileVolume.WriteInPlace); then the header recording N, with Sync. A
// crash between the first and the last step leaves a version 2 header:
// the replica opens at the old N with the round interrupted, refuses reads
// and rounds, and the secondary writes the round again from the staged
// batches (Replica.Redo, before anything reads the replica), which the
// stage keeps until the replica applied them. Writing a block again with
// the same data is harmless, so the redo ends with the blocks at N whatever
// the crash left. An in-place round is not atomic for a reader that runs
// during it; the read-only filesystem excludes readers during every round
// (below), and a replica is not read while a round may be interrupted.
//
// CreateReplica builds a replica in a directory beside its own, named
// ".new-" and the replica directory's base name, makes it durable, and
// renames it into place: the replica directory exists only holding a whole
// replica at N = 0 or later.
//
// A single ReadBlock or ReadBlocks call sees each logged round entirely or
// not at all. The read-only filesystem, which reads many blocks of one N,
// must be serialised with ApplyRound by its caller (which also makes
// in-place rounds whole for it).
package secondary
