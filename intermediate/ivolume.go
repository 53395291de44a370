package intermediate

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// An intermediate volume is the intermediate's full copy of one primary
// volume: a blockdev.FileVolume in the directory Dir/<name> with one block
// more than the primary volume. The extra, last block is the header, which
// says which batches the volume holds:
//
//	offset  size  field
//	0       8     magic "TRIVOLH\x00"
//	8       4     version (1)
//	12      4     flags (bit 0: restoring)
//	16      8     block count of the primary volume
//	24      8     applied seq: every batch of the volume with seq <= this is in the blocks
//	32      2     length of the volume name
//	34      n     volume name
//	4092    4     CRC-32C of bytes 0..4091
//
// Every batch is written together with the header that records its seq, in
// one atomic blockdev Apply, so the header never disagrees with the blocks.
// A batch whose seq is not above the applied seq is already in the volume
// and is skipped: replaying the Raft log over a volume is harmless.
//
// The directory Dir/<name> only ever holds a complete volume with a valid
// header: a new or restored volume is built in a directory whose name starts
// with '.' (which no volume name does) and renamed into place once it is
// durable; a volume being removed is first renamed away. NewFSM removes the
// leftovers a crash may leave.

// Prefixes of the temporary directories in the volumes directory.
const (
	newDirPrefix     = ".new-"
	restoreDirPrefix = ".restore-"
	oldDirPrefix     = ".old-"
)

// labelVolumes labels the operations on the volumes directory itself (the
// volumes' own files carry blockdev's labels).
const labelVolumes = "intermediate volumes"

// maxBlockCount bounds the block count of a registered volume (16 TiB of
// 4 KiB blocks): every Linux filesystem an intermediate
// volume's file may live on holds a sparse file that large (ext4's limit),
// so registering one never fails on the file's size, which would stop
// every node (the entry is committed and replayed).
const maxBlockCount = 1 << 32

// volumeCheckpointBytes is the intent log size at which an intermediate
// volume checkpoints (blockdev.Options.CheckpointBytes), in the applier
// goroutine: the checkpoint writes the blocks held since the last one to the
// data file and fsyncs it. The applier keeps it off the Submit path, but not
// off the disk: a checkpoint's data fsync slows the Raft log's fsyncs while
// it runs. With blockdev's default of 64 MiB, `tricopy bench submit` (one
// node, 64 writers of 4 KiB) measured a Submit p99 of 20-25 ms, against
// 10-14 ms with 256 MiB, which makes checkpoints four times rarer. The
// cost:
//
//   - Memory: a FileVolume holds the blocks written since its last
//     checkpoint, up to this size per volume. They are the journal's own
//     block slices, so they cost nothing more while the journal holds the
//     batches (bounded by the journal budget); once the journal is trimmed,
//     a volume may keep up to 256 MiB of trimmed blocks alive.
//   - Restart: opening a volume replays its intent log, up to this size.
//   - Disk: the intent log of each volume grows to this size.
const volumeCheckpointBytes = 256 << 20

// restoreCheckpointBytes is the intent log size at which a volume being
// restored from a snapshot checkpoints: it bounds the memory that the
// blocks written since the last checkpoint take.
const restoreCheckpointBytes = 8 << 20

// Layout of the header block.
const (
	ivolMagic         = "TRIVOLH\x00"
	ivolVersion       = 1
	ivolFlagRestoring = 1
	ivolNameOff       = 34
	ivolCRCOff        = blockdev.BlockSize - 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errBadHeader is wrapped by the errors of decodeHeader.
var errBadHeader = errors.New("bad intermediate volume header")

// ivolHeader is the decoded header block of an intermediate volume.
type ivolHeader struct {
	name      string
	blocks    uint64
	applied   uint64
	restoring bool
}

// encode returns the header block.
func (h ivolHeader) encode() []byte {
	p := make([]byte, blockdev.BlockSize)
	copy(p, ivolMagic)
	binary.LittleEndian.PutUint32(p[8:], ivolVersion)
	var flags uint32
	if h.restoring {
		flags |= ivolFlagRestoring
	}
	binary.LittleEndian.PutUint32(p[12:], flags)
	binary.LittleEndian.PutUint64(p[16:], h.blocks)
	binary.LittleEndian.PutUint64(p[24:], h.applied)
	binary.LittleEndian.PutUint16(p[32:], uint16(len(h.name)))
	copy(p[ivolNameOff:], h.name)
	binary.LittleEndian.PutUint32(p[ivolCRCOff:], crc32.Checksum(p[:ivolCRCOff], castagnoli))
	return p
}

// decodeHeader decodes and checks a header block.
func decodeHeader(p []byte) (ivolHeader, error) {
	var h ivolHeader
	if len(p) != blockdev.BlockSize {
		return h, fmt.Errorf("%w: %d bytes", errBadHeader, len(p))
	}
	if got, want := crc32.Checksum(p[:ivolCRCOff], castagnoli), binary.LittleEndian.Uint32(p[ivolCRCOff:]); got != want {
		return h, fmt.Errorf("%w: crc %08x, computed %08x", errBadHeader, want, got)
	}
	if string(p[:8]) != ivolMagic {
		return h, fmt.Errorf("%w: magic %q", errBadHeader, p[:8])
	}
	if v := binary.LittleEndian.Uint32(p[8:]); v != ivolVersion {
		return h, fmt.Errorf("%w: version %d, want %d", errBadHeader, v, ivolVersion)
	}
	flags := binary.LittleEndian.Uint32(p[12:])
	if flags&^ivolFlagRestoring != 0 {
		return h, fmt.Errorf("%w: unknown flags %#x", errBadHeader, flags)
	}
	n := int(binary.LittleEndian.Uint16(p[32:]))
	if n > wire.MaxVolumeName {
		return h, fmt.Errorf("%w: name of %d bytes", errBadHeader, n)
	}
	h.name = string(p[ivolNameOff : ivolNameOff+n])
	h.blocks = binary.LittleEndian.Uint64(p[16:])
	h.applied = binary.LittleEndian.Uint64(p[24:])
	h.restoring = flags&ivolFlagRestoring != 0
	return h, nil
}

// ivolume is an open intermediate volume.
//
// The apply goroutine (Apply, Restore) owns hdr. The applier goroutine
// writes the batches of Submit entries (write); the apply goroutine writes
// the volume itself (writeHeader, building, closing) only once the
// applier's queue is drained, so the two never write concurrently. Persist
// and ReadVolumeBlock read it concurrently through the FileVolume, which
// allows that.
type ivolume struct {
	name   string
	vol    *blockdev.FileVolume
	blocks uint64 // blocks of the primary volume; the header is block blocks

	// hdr is the header as of the FSM's state: the header last read or
	// written, or queued to the applier (which may not have written it
	// yet).
	hdr ivolHeader
}

// volumeOptions returns the blockdev options of the volumes of f.
func (f *FSM) volumeOptions() blockdev.Options {
	return blockdev.Options{FS: f.fsys, Logger: f.log, CheckpointBytes: volumeCheckpointBytes}
}

// openIvolume opens the intermediate volume in dir and checks its header,
// which must name the volume and agree with its size.
func openIvolume(dir, name string, opts blockdev.Options) (*ivolume, error) {
	vol, err := blockdev.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("open intermediate volume %q: %w", name, err)
	}
	iv := &ivolume{name: name, vol: vol}
	if err := iv.check(); err != nil {
		vol.Close()
		return nil, fmt.Errorf("open intermediate volume %q: %w", name, err)
	}
	return iv, nil
}

// check reads the header of a freshly opened volume into iv.hdr.
func (iv *ivolume) check() error {
	n := iv.vol.BlockCount()
	if n < 2 {
		return fmt.Errorf("%d blocks, too few for data and a header: %w", n, blockdev.ErrCorrupt)
	}
	iv.blocks = n - 1
	h, err := iv.readHeader()
	if err != nil {
		return err
	}
	iv.hdr = h
	return nil
}

// readHeader reads the header block from the volume and checks it.
func (iv *ivolume) readHeader() (ivolHeader, error) {
	p := make([]byte, blockdev.BlockSize)
	if err := iv.vol.ReadBlock(iv.blocks, p); err != nil {
		return ivolHeader{}, fmt.Errorf("read header: %w", err)
	}
	h, err := decodeHeader(p)
	if err != nil {
		return h, fmt.Errorf("%w: %w", err, blockdev.ErrCorrupt)
	}
	if h.name != iv.name || h.blocks != iv.blocks {
		return h, fmt.Errorf("%w: header names volume %q of %d blocks, want %q of %d: %w",
			errBadHeader, h.name, h.blocks, iv.name, iv.blocks, blockdev.ErrCorrupt)
	}
	return h, nil
}

// write writes the blocks of batches together with hdr, which records the
// seq of the last of them as applied, in one atomic Apply without sync. The
// applier goroutine calls it; it leaves iv.hdr, which the apply goroutine
// set when it queued the write, alone.
func (iv *ivolume) write(writes []blockdev.Write, hdr ivolHeader) error {
	writes = append(writes, blockdev.Write{Index: iv.blocks, Data: hdr.encode()})
	if err := iv.vol.Apply(context.Background(), &blockdev.Batch{Writes: writes}, blockdev.ApplyOptions{}); err != nil {
		return fmt.Errorf("apply up to seq %d to intermediate volume %q: %w", hdr.applied, iv.name, err)
	}
	return nil
}

// writeHeader writes h as the header, durably when sync is set.
func (iv *ivolume) writeHeader(h ivolHeader, sync bool) error {
	b := &blockdev.Batch{Writes: []blockdev.Write{{Index: iv.blocks, Data: h.encode()}}}
	if err := iv.vol.Apply(context.Background(), b, blockdev.ApplyOptions{Sync: sync}); err != nil {
		return fmt.Errorf("write header of intermediate volume %q: %w", iv.name, err)
	}
	iv.hdr = h
	return nil
}

// close closes the volume without syncing it.
func (iv *ivolume) close() error {
	if err := iv.vol.Close(); err != nil {
		return fmt.Errorf("close intermediate volume %q: %w", iv.name, err)
	}
	return nil
}

// buildIvolume creates a volume of blocks data blocks in the temporary
// directory tmp (removing what a crash may have left there) with header h,
// written durably.
func (f *FSM) buildIvolume(tmp, name string, blocks uint64, h ivolHeader, opts blockdev.Options) (*ivolume, error) {
	if err := blockdev.RemoveAll(f.fsys, labelVolumes, tmp); err != nil {
		return nil, fmt.Errorf("build intermediate volume %q: %w", name, err)
	}
	vol, err := blockdev.Create(tmp, blocks+1, opts)
	if err != nil {
		return nil, fmt.Errorf("build intermediate volume %q: %w", name, err)
	}
	iv := &ivolume{name: name, vol: vol, blocks: blocks}
	if err := iv.writeHeader(h, true); err != nil {
		vol.Close()
		return nil, err
	}
	return iv, nil
}

// createIvolume creates the intermediate volume of a newly registered
// volume: it builds it in a temporary directory and renames it into place.
func (f *FSM) createIvolume(name string, blocks uint64) (*ivolume, error) {
	tmp := filepath.Join(f.cfg.Dir, newDirPrefix+name)
	iv, err := f.buildIvolume(tmp, name, blocks, ivolHeader{name: name, blocks: blocks}, f.volumeOptions())
	if err != nil {
		return nil, err
	}
	if err := iv.close(); err != nil {
		return nil, err
	}
	return f.install(tmp, name)
}

// install replaces the volume directory of name (if any) with tmp, makes
// the change durable and opens the volume.
func (f *FSM) install(tmp, name string) (*ivolume, error) {
	dir := filepath.Join(f.cfg.Dir, name)
	if err := f.discard(name); err != nil {
		return nil, err
	}
	if err := f.fsys.Rename(labelVolumes, tmp, dir); err != nil {
		return nil, fmt.Errorf("install intermediate volume %q: %w", name, err)
	}
	if err := f.fsys.SyncDir(labelVolumes, f.cfg.Dir); err != nil {
		return nil, fmt.Errorf("install intermediate volume %q: sync directory %q: %w", name, f.cfg.Dir, err)
	}
	return openIvolume(dir, name, f.volumeOptions())
}

// discard removes the volume directory of name, if there is one: it renames
// it away first, so that a crash never leaves a partial volume under the
// name. The volume must be closed.
func (f *FSM) discard(name string) error {
	dir := filepath.Join(f.cfg.Dir, name)
	old := filepath.Join(f.cfg.Dir, oldDirPrefix+name)
	switch _, err := f.fsys.Stat(labelVolumes, dir); {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("remove intermediate volume %q: %w", name, err)
	}
	if err := blockdev.RemoveAll(f.fsys, labelVolumes, old); err != nil {
		return fmt.Errorf("remove intermediate volume %q: %w", name, err)
	}
	if err := f.fsys.Rename(labelVolumes, dir, old); err != nil {
		return fmt.Errorf("remove intermediate volume %q: %w", name, err)
	}
	if err := f.fsys.SyncDir(labelVolumes, f.cfg.Dir); err != nil {
		return fmt.Errorf("remove intermediate volume %q: sync directory %q: %w", name, f.cfg.Dir, err)
	}
	if err := blockdev.RemoveAll(f.fsys, labelVolumes, old); err != nil {
		return fmt.Errorf("remove intermediate volume %q: %w", name, err)
	}
	return nil
}

// openVolumes opens every intermediate volume in the volumes directory and
// removes the temporary directories a crash may have left. Anything else
// in the directory is an error.
func (f *FSM) openVolumes() (map[string]*ivolume, error) {
	vols := map[string]*ivolume{}
	closeAll := func() {
		for _, iv := range vols {
			iv.close()
		}
	}
	names, err := f.fsys.ReadDir(labelVolumes, f.cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("list intermediate volumes in %q: %w", f.cfg.Dir, err)
	}
	for _, n := range names {
		path := filepath.Join(f.cfg.Dir, n)
		if strings.HasPrefix(n, ".") {
			f.log.Info("removing leftover of an interrupted volume operation", fsmKeyPath, path)
			if err := blockdev.RemoveAll(f.fsys, labelVolumes, path); err != nil {
				closeAll()
				return nil, fmt.Errorf("remove leftover %q: %w", path, err)
			}
			continue
		}
		if err := wire.CheckVolumeName(n); err != nil {
			closeAll()
			return nil, fmt.Errorf("unexpected entry %q in the volumes directory %q", n, f.cfg.Dir)
		}
		iv, err := openIvolume(path, n, f.volumeOptions())
		if err != nil {
			closeAll()
			return nil, err
		}
		vols[n] = iv
		f.log.Info("opened intermediate volume", fsmKeyVolume, n, fsmKeyBlocks, iv.blocks,
			fsmKeyAppliedSeq, iv.hdr.applied, fsmKeyRestoring, iv.hdr.restoring)
	}
	return vols, nil
}
