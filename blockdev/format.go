package blockdev

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math"
)

// On-disk formats of a volume directory. Every integer is little-endian.
// docs/ARCHITECTURE.md describes them in prose.

// castagnoli is the CRC-32C table used by every checksum of this package.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// formatVersion is the version of the meta, intent log and bitmap formats.
const formatVersion = 1

// MaxBlocks is the largest block count of a FileVolume: its data file must
// fit in an int64 offset.
const MaxBlocks = math.MaxInt64 / BlockSize

// Meta file: 64 bytes.
//
//	0  magic      [8]byte "TRICVOL\x00"
//	8  version    uint32 (1)
//	12 block size uint32 (4096)
//	16 blocks     uint64
//	24 uuid       [16]byte
//	40 reserved   [20]byte, zero
//	60 crc32c     uint32 over bytes [0, 60)
const (
	metaMagic = "TRICVOL\x00"
	metaSize  = 64
)

// volumeMeta is the content of a volume's meta file.
type volumeMeta struct {
	blocks uint64
	uuid   [16]byte
}

func (m volumeMeta) encode() []byte {
	b := make([]byte, metaSize)
	copy(b, metaMagic)
	binary.LittleEndian.PutUint32(b[8:], formatVersion)
	binary.LittleEndian.PutUint32(b[12:], BlockSize)
	binary.LittleEndian.PutUint64(b[16:], m.blocks)
	copy(b[24:40], m.uuid[:])
	binary.LittleEndian.PutUint32(b[60:], crc32.Checksum(b[:60], castagnoli))
	return b
}

func decodeMeta(b []byte) (volumeMeta, error) {
	var m volumeMeta
	if len(b) < 12 || string(b[:8]) != metaMagic {
		return m, fmt.Errorf("bad magic: %w", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != formatVersion {
		return m, fmt.Errorf("version %d: %w", v, ErrVersion)
	}
	if len(b) != metaSize {
		return m, fmt.Errorf("%d bytes, want %d: %w", len(b), metaSize, ErrCorrupt)
	}
	if got, want := crc32.Checksum(b[:60], castagnoli), binary.LittleEndian.Uint32(b[60:]); got != want {
		return m, fmt.Errorf("checksum %#08x, want %#08x: %w", got, want, ErrCorrupt)
	}
	if bs := binary.LittleEndian.Uint32(b[12:]); bs != BlockSize {
		return m, fmt.Errorf("block size %d, want %d: %w", bs, BlockSize, ErrCorrupt)
	}
	m.blocks = binary.LittleEndian.Uint64(b[16:])
	if m.blocks == 0 || m.blocks > MaxBlocks {
		return m, fmt.Errorf("block count %d: %w", m.blocks, ErrCorrupt)
	}
	copy(m.uuid[:], b[24:40])
	if !allZero(b[40:60]) {
		return m, fmt.Errorf("reserved bytes set: %w", ErrCorrupt)
	}
	return m, nil
}

// Intent log header: 64 bytes at offset 0 of the log file.
//
//	0  magic     [8]byte "TRICLOG\x00"
//	8  version   uint32 (1)
//	12 reserved  uint32, zero
//	16 uuid      [16]byte, the volume's
//	32 gen       uint64, generation of this log file
//	40 start seq uint64, seq of the first record
//	48 reserved  [12]byte, zero
//	60 crc32c    uint32 over bytes [0, 60)
const (
	logMagic      = "TRICLOG\x00"
	logHeaderSize = 64
)

type logHeader struct {
	uuid     [16]byte
	gen      uint64
	startSeq uint64
}

func (h logHeader) encode() []byte {
	b := make([]byte, logHeaderSize)
	copy(b, logMagic)
	binary.LittleEndian.PutUint32(b[8:], formatVersion)
	copy(b[16:32], h.uuid[:])
	binary.LittleEndian.PutUint64(b[32:], h.gen)
	binary.LittleEndian.PutUint64(b[40:], h.startSeq)
	binary.LittleEndian.PutUint32(b[60:], crc32.Checksum(b[:60], castagnoli))
	return b
}

func decodeLogHeader(b []byte) (logHeader, error) {
	var h logHeader
	if len(b) < logHeaderSize {
		return h, fmt.Errorf("header of %d bytes: %w", len(b), ErrCorrupt)
	}
	if string(b[:8]) != logMagic {
		return h, fmt.Errorf("header: bad magic: %w", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[8:]); v != formatVersion {
		return h, fmt.Errorf("header: version %d: %w", v, ErrVersion)
	}
	if got, want := crc32.Checksum(b[:60], castagnoli), binary.LittleEndian.Uint32(b[60:]); got != want {
		return h, fmt.Errorf("header: checksum %#08x, want %#08x: %w", got, want, ErrCorrupt)
	}
	if !allZero(b[12:16]) || !allZero(b[48:60]) {
		return h, fmt.Errorf("header: reserved bytes set: %w", ErrCorrupt)
	}
	copy(h.uuid[:], b[16:32])
	h.gen = binary.LittleEndian.Uint64(b[32:])
	h.startSeq = binary.LittleEndian.Uint64(b[40:])
	if h.gen == 0 || h.startSeq == 0 {
		return h, fmt.Errorf("header: generation %d, start seq %d: %w", h.gen, h.startSeq, ErrCorrupt)
	}
	return h, nil
}

// Intent log record: one per batch, appended after the header.
//
//	0  magic   uint32 recordMagic
//	4  count   uint32, number of writes, > 0
//	8  gen     uint64, the log header's gen
//	16 seq     uint64, start seq + position of the record in the log
//	24 synced  uint64, every record with seq <= synced was durable (fsynced)
//	           when this one was written; < seq
//	32 indexes [count]uint64
//	.. data    [count][BlockSize]byte
//	.. crc32c  uint32 over every byte of the record before it
const (
	recordMagic      = 0x31524354 // "TCR1"
	recordHeaderSize = 32
	recordPerBlock   = 8 + BlockSize
)

// recordSize returns the encoded size of a record of count writes.
func recordSize(count int) int { return recordHeaderSize + count*recordPerBlock + 4 }

// appendRecord encodes the record of b into buf[:0], growing it as needed,
// and returns it.
func appendRecord(buf []byte, gen, seq, synced uint64, b *Batch) []byte {
	size := recordSize(len(b.Writes))
	if cap(buf) < size {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	binary.LittleEndian.PutUint32(buf[0:], recordMagic)
	binary.LittleEndian.PutUint32(buf[4:], uint32(len(b.Writes)))
	binary.LittleEndian.PutUint64(buf[8:], gen)
	binary.LittleEndian.PutUint64(buf[16:], seq)
	binary.LittleEndian.PutUint64(buf[24:], synced)
	idx := buf[recordHeaderSize:]
	data := buf[recordHeaderSize+8*len(b.Writes):]
	for i, w := range b.Writes {
		binary.LittleEndian.PutUint64(idx[8*i:], w.Index)
		copy(data[i*BlockSize:(i+1)*BlockSize], w.Data)
	}
	binary.LittleEndian.PutUint32(buf[size-4:], crc32.Checksum(buf[:size-4], castagnoli))
	return buf
}

// vectorWriterAt is a File that writes several buffers at an offset with
// one call (osFile on Linux, with pwritev).
type vectorWriterAt interface {
	WriteAtv(bufs [][]byte, off int64) (int, error)
}

// recordWriter writes intent log records, reusing its buffers.
type recordWriter struct {
	buf  []byte
	bufs [][]byte
}

// write writes at off in f the record of writes that appendRecord would
// encode, and returns its size: from the blocks themselves with one
// vectored write where f can (consecutive blocks that follow each other in
// memory go as one buffer), else encoded into a buffer with one write.
func (rw *recordWriter) write(f File, off int64, gen, seq, synced uint64, writes []Write) (int, error) {
	size := recordSize(len(writes))
	vw, ok := f.(vectorWriterAt)
	if !ok {
		rw.buf = appendRecord(rw.buf, gen, seq, synced, &Batch{Writes: writes})
		n, err := f.WriteAt(rw.buf, off)
		if cap(rw.buf) > maxKeptBuffer {
			rw.buf = nil
		}
		if err == nil && n != size {
			err = io.ErrShortWrite
		}
		return size, err
	}
	head := recordHeaderSize + 8*len(writes)
	if cap(rw.buf) < head+4 {
		rw.buf = make([]byte, head+4)
	}
	b := rw.buf[:head+4]
	binary.LittleEndian.PutUint32(b[0:], recordMagic)
	binary.LittleEndian.PutUint32(b[4:], uint32(len(writes)))
	binary.LittleEndian.PutUint64(b[8:], gen)
	binary.LittleEndian.PutUint64(b[16:], seq)
	binary.LittleEndian.PutUint64(b[24:], synced)
	for i, w := range writes {
		binary.LittleEndian.PutUint64(b[recordHeaderSize+8*i:], w.Index)
	}
	sum := crc32.Update(0, castagnoli, b[:head])
	bufs := append(rw.bufs[:0], b[:head])
	for i, w := range writes {
		sum = crc32.Update(sum, castagnoli, w.Data)
		last := bufs[len(bufs)-1]
		if i > 0 && cap(last) >= len(last)+BlockSize && &last[:len(last)+1][len(last)] == &w.Data[0] {
			bufs[len(bufs)-1] = last[:len(last)+BlockSize]
			continue
		}
		bufs = append(bufs, w.Data[:BlockSize])
	}
	binary.LittleEndian.PutUint32(b[head:], sum)
	bufs = append(bufs, b[head:head+4])
	n, err := vw.WriteAtv(bufs, off)
	clear(bufs)
	rw.bufs = bufs[:0]
	if err == nil && n != size {
		err = io.ErrShortWrite
	}
	return size, err
}

// logRecord is a decoded intent log record. Its slices alias the reader's
// buffer and are valid until the next call to next.
type logRecord struct {
	seq     uint64
	synced  uint64
	offset  int64
	indexes []byte // count little-endian uint64s
	data    []byte // count blocks
}

func (r *logRecord) count() int { return len(r.indexes) / 8 }

func (r *logRecord) index(i int) uint64 { return binary.LittleEndian.Uint64(r.indexes[8*i:]) }

func (r *logRecord) block(i int) []byte { return r.data[i*BlockSize : (i+1)*BlockSize] }

// logReader reads the records of an intent log in order.
type logReader struct {
	r      *bufio.Reader
	off    int64 // offset of the next record
	size   int64 // size of the log file
	gen    uint64
	seq    uint64 // seq of the next record
	blocks uint64
	buf    []byte
}

func newLogReader(f io.ReaderAt, size int64, h logHeader, blocks uint64) *logReader {
	bufSize := int(min(size-logHeaderSize, 1<<20))
	return &logReader{
		r:      bufio.NewReaderSize(io.NewSectionReader(f, logHeaderSize, size-logHeaderSize), bufSize),
		off:    logHeaderSize,
		size:   size,
		gen:    h.gen,
		seq:    h.startSeq,
		blocks: blocks,
	}
}

// errEndOfLog is what next returns after the last record of a log that ends
// cleanly.
var errEndOfLog = errors.New("end of log")

// tailError is what next returns where the valid records end before the end
// of the file: the rest is a torn or stale tail, to discard.
type tailError struct{ reason string }

func (e *tailError) Error() string { return e.reason }

// next returns the next valid record. It returns errEndOfLog at the end of
// the file, a *tailError where the records stop being valid, an error
// wrapping ErrCorrupt for a record that is intact but impossible, and any
// other error for a failed read.
func (lr *logReader) next() (*logRecord, error) {
	rest := lr.size - lr.off
	if rest == 0 {
		return nil, errEndOfLog
	}
	if rest < int64(recordSize(1)) {
		return nil, &tailError{"torn record"}
	}
	var hdr [recordHeaderSize]byte
	if _, err := io.ReadFull(lr.r, hdr[:]); err != nil {
		return nil, lr.readError(err)
	}
	if binary.LittleEndian.Uint32(hdr[0:]) != recordMagic {
		return nil, &tailError{"bad record magic"}
	}
	count := int64(binary.LittleEndian.Uint32(hdr[4:]))
	if count == 0 {
		return nil, &tailError{"empty record"}
	}
	if gen := binary.LittleEndian.Uint64(hdr[8:]); gen != lr.gen {
		return nil, &tailError{fmt.Sprintf("record of generation %d in log of generation %d", gen, lr.gen)}
	}
	if seq := binary.LittleEndian.Uint64(hdr[16:]); seq != lr.seq {
		return nil, &tailError{fmt.Sprintf("record seq %d, want %d", seq, lr.seq)}
	}
	if count > (rest-recordHeaderSize-4)/recordPerBlock {
		return nil, &tailError{"torn record"}
	}
	size := recordSize(int(count))
	if cap(lr.buf) < size {
		lr.buf = make([]byte, size)
	}
	buf := lr.buf[:size]
	copy(buf, hdr[:])
	if _, err := io.ReadFull(lr.r, buf[recordHeaderSize:]); err != nil {
		return nil, lr.readError(err)
	}
	if got, want := crc32.Checksum(buf[:size-4], castagnoli), binary.LittleEndian.Uint32(buf[size-4:]); got != want {
		return nil, &tailError{fmt.Sprintf("record checksum %#08x, want %#08x", got, want)}
	}
	rec := &logRecord{
		seq:     lr.seq,
		synced:  binary.LittleEndian.Uint64(buf[24:]),
		offset:  lr.off,
		indexes: buf[recordHeaderSize : recordHeaderSize+8*count],
		data:    buf[recordHeaderSize+8*count : size-4],
	}
	if rec.synced >= rec.seq {
		return nil, fmt.Errorf("record seq %d claims records up to seq %d synced: %w", rec.seq, rec.synced, ErrCorrupt)
	}
	for i := range rec.count() {
		if idx := rec.index(i); idx >= lr.blocks {
			return nil, fmt.Errorf("record seq %d write %d: block %d of %d: %w", rec.seq, i, idx, lr.blocks, ErrCorrupt)
		}
	}
	lr.off += int64(size)
	lr.seq++
	return rec, nil
}

// syncClaim looks, past the record at lr.off where the valid records stop,
// for an intact record of the same generation that says the stopping record
// was durable when it was written. Such a record proves that the stopping
// record was damaged after it was synced, not torn by a crash. The walk
// follows the record lengths of the headers from lr.off and gives up where
// a header is implausible. It returns the seq of the claiming record, or 0.
func (lr *logReader) syncClaim(f io.ReaderAt) (uint64, error) {
	var hdr [recordHeaderSize]byte
	var buf []byte
	for off := lr.off; lr.size-off >= int64(recordSize(1)); {
		if err := readFull(f, hdr[:], off); err != nil {
			return 0, err
		}
		count := int64(binary.LittleEndian.Uint32(hdr[4:]))
		if binary.LittleEndian.Uint32(hdr[0:]) != recordMagic || count == 0 ||
			count > (lr.size-off-recordHeaderSize-4)/recordPerBlock {
			return 0, nil
		}
		size := recordSize(int(count))
		gen := binary.LittleEndian.Uint64(hdr[8:])
		seq := binary.LittleEndian.Uint64(hdr[16:])
		synced := binary.LittleEndian.Uint64(hdr[24:])
		if gen == lr.gen && seq > lr.seq && synced >= lr.seq && synced < seq {
			if cap(buf) < size {
				buf = make([]byte, size)
			}
			buf = buf[:size]
			if err := readFull(f, buf, off); err != nil {
				return 0, err
			}
			if crc32.Checksum(buf[:size-4], castagnoli) == binary.LittleEndian.Uint32(buf[size-4:]) {
				return seq, nil
			}
		}
		off += int64(size)
	}
	return 0, nil
}

// readError turns a short read inside the file's known size (the file
// shrank under us) into a tail, and passes other read errors on.
func (lr *logReader) readError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &tailError{"log shorter than its size"}
	}
	return err
}

// newUUID returns a random RFC 4122 version 4 UUID.
func newUUID() ([16]byte, error) {
	var u [16]byte
	if _, err := rand.Read(u[:]); err != nil {
		return u, fmt.Errorf("generate uuid: %w", err)
	}
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u, nil
}

// formatUUID formats u in the usual 8-4-4-4-12 form.
func formatUUID(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
