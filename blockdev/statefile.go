package blockdev

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"strconv"
)

// Small state files (a mirror's state, a secondary's peers and promotion)
// share one format: a magic line naming the file's kind and version, the
// JSON object on one line, and its CRC-32C in hex on a line of its own.
// SaveStateFile writes them atomically (WriteFileAtomic).

// MaxStateFile bounds the size of a state file LoadStateFile reads.
const MaxStateFile = 1 << 20

// ErrBadStateFile marks a state file that cannot be decoded (wrong magic
// line, bad checksum, which also wraps ErrCorrupt, or bad JSON).
var ErrBadStateFile = errors.New("bad state file")

// EncodeStateFile returns the file form of v under magic (a line ending in
// a newline).
func EncodeStateFile(magic string, v any) []byte {
	body, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encode %q: %v", magic, err)) // plain fields cannot fail
	}
	var b bytes.Buffer
	b.WriteString(magic)
	b.Write(body)
	fmt.Fprintf(&b, "\n%08x\n", crc32.Checksum(body, castagnoli))
	return b.Bytes()
}

// DecodeStateFile decodes data written by EncodeStateFile under magic into
// v, checking the checksum; unknown fields are errors.
func DecodeStateFile(magic string, data []byte, v any) error {
	rest, ok := bytes.CutPrefix(data, []byte(magic))
	if !ok {
		return fmt.Errorf("%w: no magic line %q", ErrBadStateFile, magic)
	}
	body, sum, ok := bytes.Cut(rest, []byte("\n"))
	if !ok || len(sum) != 9 || sum[8] != '\n' {
		return fmt.Errorf("%w: no checksum line", ErrBadStateFile)
	}
	want, err := strconv.ParseUint(string(sum[:8]), 16, 32)
	if err != nil {
		return fmt.Errorf("%w: checksum %q", ErrBadStateFile, sum[:8])
	}
	if got := crc32.Checksum(body, castagnoli); uint64(got) != want {
		return fmt.Errorf("%w: checksum %08x, want %08x: %w", ErrBadStateFile, got, want, ErrCorrupt)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrBadStateFile, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: data after the object", ErrBadStateFile)
	}
	return nil
}

// LoadStateFile reads the state file path, written under magic, into v;
// found is false when there is none. label labels the file operations.
func LoadStateFile(fsys FS, label, path, magic string, v any) (found bool, err error) {
	data, err := ReadFileLimit(fsys, label, path, MaxStateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	if err := DecodeStateFile(magic, data, v); err != nil {
		return false, fmt.Errorf("%s: %w", path, err)
	}
	return true, nil
}

// SaveStateFile writes v to the state file path under magic, atomically and
// durably.
func SaveStateFile(fsys FS, label, path, magic string, v any) error {
	data := EncodeStateFile(magic, v)
	if len(data) > MaxStateFile {
		// LoadStateFile would refuse it at the next start.
		return fmt.Errorf("save %s: %d bytes, more than the %d a state file may hold", path, len(data), MaxStateFile)
	}
	if err := WriteFileAtomic(fsys, label, path, data); err != nil {
		return fmt.Errorf("save %s: %w", path, err)
	}
	return nil
}
