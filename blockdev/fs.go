package blockdev

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sort"
)

// FS is the seam between volumes and the operating system: every disk touch
// of this package goes through it, so tests can run on MemFS (crashable) or
// FaultFS (fault injection) instead of OSFS.
//
// Every call carries a label naming what the caller is touching (one of the
// Label constants for volume files); a File inherits the label it was opened
// with, so a test can single out, say, the third Sync of the intent log.
// Implementations must be safe for concurrent use.
type FS interface {
	// OpenFile opens name like os.OpenFile. Flags other than O_RDONLY,
	// O_WRONLY, O_RDWR, O_CREATE, O_EXCL and O_TRUNC need not be supported.
	OpenFile(label, name string, flag int, perm fs.FileMode) (File, error)
	// Stat describes name like os.Stat.
	Stat(label, name string) (fs.FileInfo, error)
	// ReadDir returns the names of the entries of dir, sorted.
	ReadDir(label, dir string) ([]string, error)
	// Rename renames oldname to newname, replacing newname atomically.
	Rename(label, oldname, newname string) error
	// Remove removes a file or an empty directory.
	Remove(label, name string) error
	// MkdirAll creates dir and any missing parents like os.MkdirAll.
	MkdirAll(label, dir string, perm fs.FileMode) error
	// SyncDir makes the entries of dir (creations, renames and removals
	// in it) durable.
	SyncDir(label, dir string) error
	// Lock takes an exclusive, advisory, non-blocking lock on the file name,
	// creating it if needed, and returns what releases the lock. It fails
	// with an error wrapping ErrInUse if the lock is held elsewhere.
	Lock(label, name string) (io.Closer, error)
}

// File is an open file of an FS. Its methods may be called concurrently.
type File interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes the content and size of the file durable (fsync). It does
	// not make the file's directory entry durable: see FS.SyncDir.
	Sync() error
	// Truncate changes the size of the file.
	Truncate(size int64) error
	// Size returns the current size of the file.
	Size() (int64, error)
	// Close closes the file.
	Close() error
}

// Labels that FileVolume passes to its FS, one per file of a volume
// directory. Bitmap persistence uses LabelBitmap.
const (
	// LabelDir labels operations on a volume directory itself.
	LabelDir = "volume dir"
	// LabelMeta labels operations on a volume's metadata file.
	LabelMeta = "volume meta"
	// LabelData labels operations on a volume's data file.
	LabelData = "volume data"
	// LabelLog labels operations on a volume's intent log, including the
	// construction of its next generation.
	LabelLog = "intent log"
	// LabelLock labels the lock of a volume directory.
	LabelLock = "volume lock"
	// LabelBitmap labels operations of SaveBitmap and LoadBitmap.
	LabelBitmap = "bitmap"
)

// OpKind is the kind of an FS or File operation.
type OpKind uint8

// Operation kinds. OpKind(0) matches every kind in an FSFault.
const (
	OpOpen OpKind = iota + 1
	OpStat
	OpReadDir
	OpRename
	OpRemove
	OpMkdirAll
	OpSyncDir
	OpLock
	OpRead
	OpWrite
	OpSync
	OpTruncate
	OpSize
	OpClose
)

var opKindNames = [...]string{
	OpOpen:     "open",
	OpStat:     "stat",
	OpReadDir:  "readdir",
	OpRename:   "rename",
	OpRemove:   "remove",
	OpMkdirAll: "mkdirall",
	OpSyncDir:  "syncdir",
	OpLock:     "lock",
	OpRead:     "read",
	OpWrite:    "write",
	OpSync:     "sync",
	OpTruncate: "truncate",
	OpSize:     "size",
	OpClose:    "close",
}

// String returns the lowercase name of the kind.
func (k OpKind) String() string {
	if int(k) < len(opKindNames) && opKindNames[k] != "" {
		return opKindNames[k]
	}
	return fmt.Sprintf("opkind(%d)", uint8(k))
}

// Mutating reports whether operations of this kind can change what is on
// disk or what is durable: these are the operations MemFS counts as crash
// points. OpOpen is mutating only with O_CREATE or O_TRUNC.
func (k OpKind) Mutating() bool {
	switch k {
	case OpRename, OpRemove, OpMkdirAll, OpSyncDir, OpWrite, OpSync, OpTruncate:
		return true
	}
	return false
}

// Op describes one FS or File operation.
type Op struct {
	// Kind is what the operation does.
	Kind OpKind
	// Label is the label the caller passed (for a File, the label it was
	// opened with).
	Label string
	// Path is the file or directory operated on (for OpRename, the old name).
	Path string
}

// String formats the operation as "kind label path".
func (o Op) String() string { return fmt.Sprintf("%s %s %q", o.Kind, o.Label, o.Path) }

// OSFS is the FS of the operating system.
type OSFS struct{}

var _ FS = OSFS{}

// OpenFile implements FS.
func (OSFS) OpenFile(_, name string, flag int, perm fs.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return osFile{f}, nil
}

// Stat implements FS.
func (OSFS) Stat(_, name string) (fs.FileInfo, error) { return os.Stat(name) }

// ReadDir implements FS.
func (OSFS) ReadDir(_, dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = e.Name()
	}
	sort.Strings(names)
	return names, nil
}

// Rename implements FS.
func (OSFS) Rename(_, oldname, newname string) error { return os.Rename(oldname, newname) }

// Remove implements FS.
func (OSFS) Remove(_, name string) error { return os.Remove(name) }

// MkdirAll implements FS.
func (OSFS) MkdirAll(_, dir string, perm fs.FileMode) error { return os.MkdirAll(dir, perm) }

// SyncDir implements FS.
func (OSFS) SyncDir(_, dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	if err := d.Sync(); err != nil {
		d.Close()
		return &fs.PathError{Op: "fsync", Path: dir, Err: err}
	}
	return d.Close()
}

// Lock implements FS with flock(2) on Unix systems.
func (OSFS) Lock(_, name string) (io.Closer, error) {
	f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := lockFile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %q: %w", name, err)
	}
	return f, nil
}

type osFile struct{ *os.File }

func (f osFile) Size() (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// readFull reads exactly len(p) bytes at off, turning a short read into
// io.ErrUnexpectedEOF.
func readFull(f io.ReaderAt, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
