package secondary

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"

	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// The export of the batches a promotion kept aside (ExportUnapplied) is a
// stream: the magic line unappliedMagic, then one record per batch in seq
// order: the length of the batch's protobuf encoding (wire.CommittedBatch)
// as a little-endian uint32, the encoding, and its CRC-32C (little-endian
// uint32); then a trailer: length 0 and the number of batches in place of
// the CRC. A stream without its trailer was cut.
const unappliedMagic = "tricopy unapplied batches v1\n"

// maxUnappliedRecord bounds one record of the export.
const maxUnappliedRecord = 64 << 20

// ErrBadExport means an export of unapplied batches is damaged or cut.
var ErrBadExport = errors.New("bad export of unapplied batches")

// ExportUnapplied writes to w the staged batches after the promotion's
// point N, which the promotion kept aside, and returns how many it wrote.
// It fails on a secondary that was not promoted.
func (s *Secondary) ExportUnapplied(w io.Writer) (int, error) {
	p := s.Promotion()
	if p == nil || !p.Done {
		return 0, fmt.Errorf("export unapplied batches of secondary %q: not promoted", s.cfg.ID)
	}
	uw := &unappliedWriter{w: bufio.NewWriter(w)}
	uw.start()
	for cb, err := range s.stage.Batches(p.N, s.stage.Last()) {
		if err != nil {
			return uw.n, fmt.Errorf("export unapplied batches of secondary %q: %w", s.cfg.ID, err)
		}
		if err := uw.write(cb); err != nil {
			return uw.n, fmt.Errorf("export unapplied batches of secondary %q: %w", s.cfg.ID, err)
		}
	}
	if err := uw.finish(); err != nil {
		return uw.n, fmt.Errorf("export unapplied batches of secondary %q: %w", s.cfg.ID, err)
	}
	return uw.n, nil
}

// unappliedWriter writes the export format; the first write error sticks.
type unappliedWriter struct {
	w   io.Writer
	n   int
	err error
}

func (u *unappliedWriter) put(p []byte) {
	if u.err == nil {
		_, u.err = u.w.Write(p)
	}
}

func (u *unappliedWriter) putU32(v uint32) {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	u.put(b[:])
}

func (u *unappliedWriter) start() { u.put([]byte(unappliedMagic)) }

func (u *unappliedWriter) write(cb *wire.CommittedBatch) error {
	b, err := proto.Marshal(cb)
	if err != nil {
		return fmt.Errorf("encode batch %d: %w", cb.GetSeq(), err)
	}
	u.putU32(uint32(len(b)))
	u.put(b)
	u.putU32(crc32.Checksum(b, castagnoli))
	u.n++
	return u.err
}

func (u *unappliedWriter) finish() error {
	u.putU32(0)
	u.putU32(uint32(u.n))
	if f, ok := u.w.(interface{ Flush() error }); ok && u.err == nil {
		u.err = f.Flush()
	}
	return u.err
}

// ReadUnapplied decodes an export written by ExportUnapplied, calling fn
// for each batch in order, and returns the number of batches. Every record
// is checked (CRC, batch CRC, increasing seqs, the trailer's count); a
// damaged or cut export is an error wrapping ErrBadExport.
func ReadUnapplied(r io.Reader, fn func(*wire.CommittedBatch) error) (int, error) {
	br := bufio.NewReader(r)
	magic := make([]byte, len(unappliedMagic))
	if _, err := io.ReadFull(br, magic); err != nil || string(magic) != unappliedMagic {
		return 0, fmt.Errorf("%w: no magic line", ErrBadExport)
	}
	var n int
	var last uint64
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return n, fmt.Errorf("%w: cut after %d batches", ErrBadExport, n)
		}
		size := binary.LittleEndian.Uint32(hdr[:])
		if size == 0 {
			if _, err := io.ReadFull(br, hdr[:]); err != nil {
				return n, fmt.Errorf("%w: cut trailer", ErrBadExport)
			}
			if c := binary.LittleEndian.Uint32(hdr[:]); int(c) != n {
				return n, fmt.Errorf("%w: trailer counts %d batches, the export holds %d", ErrBadExport, c, n)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				return n, fmt.Errorf("%w: data after the trailer", ErrBadExport)
			}
			return n, nil
		}
		if size > maxUnappliedRecord {
			return n, fmt.Errorf("%w: record %d of %d bytes", ErrBadExport, n, size)
		}
		b := make([]byte, size+4)
		if _, err := io.ReadFull(br, b); err != nil {
			return n, fmt.Errorf("%w: record %d cut", ErrBadExport, n)
		}
		if got, want := crc32.Checksum(b[:size], castagnoli), binary.LittleEndian.Uint32(b[size:]); got != want {
			return n, fmt.Errorf("%w: record %d: checksum %08x, want %08x", ErrBadExport, n, got, want)
		}
		cb := &wire.CommittedBatch{}
		if err := proto.Unmarshal(b[:size], cb); err != nil {
			return n, fmt.Errorf("%w: record %d: %v", ErrBadExport, n, err)
		}
		if err := wire.CheckBatch(cb.GetBatch(), 0); err != nil {
			return n, fmt.Errorf("%w: record %d: %w", ErrBadExport, n, err)
		}
		if cb.GetSeq() <= last {
			return n, fmt.Errorf("%w: record %d: seq %d after %d", ErrBadExport, n, cb.GetSeq(), last)
		}
		last = cb.GetSeq()
		if err := fn(cb); err != nil {
			return n, err
		}
		n++
	}
}
