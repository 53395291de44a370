package blockdev

import (
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// MemFS is a strict in-memory FS for crash tests, after pebble's
// vfs.NewStrictMem. It tracks, besides the current state, what is durable:
//
//   - the content of a file is durable as of its last File.Sync;
//   - the entries of a directory (files and directories created, renamed or
//     removed in it) are durable as of its last SyncDir.
//
// Crash reverts everything to its durable state; CrashRandom keeps a random
// part of what was not durable, as a kernel writing back its page cache in any
// order might. FailAfter sets a crash point: the operation that would be the
// (n+1)-th mutating one from then fails with ErrCrashed, and so does every
// operation after it until the next crash, so a test can enumerate every
// crash point of a workload.
//
// The root directory "/" always exists. Paths are cleaned and taken as
// absolute. Locks are in memory and released by a crash. Files opened before
// a crash fail every operation with ErrCrashed. MemFS is safe for concurrent
// use.
type MemFS struct {
	mu      sync.Mutex
	root    *memNode
	epoch   uint64 // bumped by every crash; older handles are dead
	ops     int    // mutating operations performed
	budget  int    // mutating operations left before the crash point; <0 means none
	crashed bool   // the crash point was reached
	locks   map[string]bool
}

var _ FS = (*MemFS)(nil)

// memPageSize is the granularity at which CrashRandom keeps or drops the
// unsynced writes of a file.
const memPageSize = 4096

type memNode struct {
	dir bool

	// Files.
	data    []byte     // current content
	synced  []byte     // durable content; never modified in place
	shared  bool       // data may be shared (with synced or a clone): copy before writing
	pending []memWrite // changes since the last Sync, in order
	modTime time.Time

	// Directories.
	children       map[string]*memNode // current entries
	syncedChildren map[string]*memNode // durable entries
	dirPending     []dirOp             // changes since the last SyncDir, in order
}

// memWrite is one unsynced change to a file: a write of data at off, or,
// with truncate set, a truncation to size.
type memWrite struct {
	off      int64
	data     []byte
	truncate bool
	size     int64
}

// dirChange sets name to node in a directory, or removes name if node is nil.
type dirChange struct {
	name string
	node *memNode
}

// dirOp is one directory operation: its changes survive a crash together or
// not at all (a rename within a directory is one dirOp of two changes).
type dirOp []dirChange

func newMemDir() *memNode {
	return &memNode{dir: true, children: map[string]*memNode{}, syncedChildren: map[string]*memNode{}}
}

// NewMemFS returns an empty MemFS holding only the root directory.
func NewMemFS() *MemFS {
	return &MemFS{root: newMemDir(), budget: -1, locks: map[string]bool{}}
}

// MutatingOps returns how many mutating operations (see OpKind.Mutating) the
// FS has performed since it was made, counting the one that reached the crash
// point set by FailAfter, if any.
func (m *MemFS) MutatingOps() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ops
}

// FailAfter sets a crash point: the next n mutating operations proceed, and
// from the one after them every operation fails with ErrCrashed until Crash
// or CrashRandom. A negative n removes the crash point.
func (m *MemFS) FailAfter(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n < 0 {
		n = -1
	}
	m.budget = n
}

// Crashed reports whether the crash point set by FailAfter was reached.
func (m *MemFS) Crashed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.crashed
}

// Crash simulates a power loss followed by a restart: every file reverts to
// its content at its last Sync, every directory to its entries at its last
// SyncDir. It clears the crash point, releases every lock and kills every open
// file.
func (m *MemFS) Crash() { m.crash(nil) }

// CrashRandom is Crash, except that each unsynced change survives or not at
// random, drawn from rng: for files, each page (4 KiB, aligned) of each
// unsynced write and each unsynced truncation independently; for each
// directory, a prefix of its unsynced operations, as a journaling file system
// commits them in order.
func (m *MemFS) CrashRandom(rng *rand.Rand) { m.crash(rng) }

func (m *MemFS) crash(rng *rand.Rand) {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[*memNode]bool{}
	var walk func(n *memNode)
	walk = func(n *memNode) {
		if seen[n] {
			return
		}
		seen[n] = true
		if n.dir {
			children := maps.Clone(n.syncedChildren)
			if rng != nil && len(n.dirPending) > 0 {
				for _, op := range n.dirPending[:rng.IntN(len(n.dirPending)+1)] {
					op.apply(children)
				}
			}
			n.children = children
			n.syncedChildren = maps.Clone(children)
			n.dirPending = nil
			for _, name := range slices.Sorted(maps.Keys(children)) {
				walk(children[name])
			}
			return
		}
		data := n.synced
		if rng != nil && len(n.pending) > 0 {
			data = slices.Clone(data)
			for _, w := range n.pending {
				data = w.applyRandom(data, rng)
			}
		}
		n.data, n.synced, n.shared = data, data, true
		n.pending = nil
	}
	walk(m.root)
	m.epoch++
	m.crashed = false
	m.budget = -1
	m.locks = map[string]bool{}
}

func (op dirOp) apply(children map[string]*memNode) {
	for _, c := range op {
		if c.node == nil {
			delete(children, c.name)
		} else {
			children[c.name] = c.node
		}
	}
}

// applyRandom applies to data the part of w that survives: each page of a
// write, or the whole of a truncation, with probability 1/2.
func (w memWrite) applyRandom(data []byte, rng *rand.Rand) []byte {
	if w.truncate {
		if rng.IntN(2) == 0 {
			return data
		}
		return resize(data, w.size)
	}
	for start := int64(0); start < int64(len(w.data)); {
		end := min((w.off+start)/memPageSize*memPageSize+memPageSize-w.off, int64(len(w.data)))
		if rng.IntN(2) == 1 {
			data = writeAt(data, w.data[start:end], w.off+start)
		}
		start = end
	}
	return data
}

// resize returns data grown with zeros or cut to size.
func resize(data []byte, size int64) []byte {
	if size <= int64(len(data)) {
		return data[:size]
	}
	return append(data, make([]byte, size-int64(len(data)))...)
}

// writeAt copies p into data at off, growing data with zeros as needed.
func writeAt(data, p []byte, off int64) []byte {
	if end := off + int64(len(p)); end > int64(len(data)) {
		data = resize(data, end)
	}
	copy(data[off:], p)
	return data
}

// begin accounts for one operation and reports whether it may proceed. The
// caller holds m.mu.
func (m *MemFS) begin(op Op, mutating bool) error {
	if m.crashed {
		return fmt.Errorf("%s: %w", op, ErrCrashed)
	}
	if mutating {
		m.ops++
		if m.budget == 0 {
			m.crashed = true
			return fmt.Errorf("%s: %w", op, ErrCrashed)
		}
		if m.budget > 0 {
			m.budget--
		}
	}
	return nil
}

// split cleans name into its path components; the root has none.
func split(name string) []string {
	clean := path.Clean("/" + filepath.ToSlash(name))
	if clean == "/" {
		return nil
	}
	return strings.Split(clean[1:], "/")
}

// lookupDir returns the directory at the components parts, or an error.
func (m *MemFS) lookupDir(opname, name string, parts []string) (*memNode, error) {
	n := m.root
	for _, p := range parts {
		c, ok := n.children[p]
		if !ok {
			return nil, &fs.PathError{Op: opname, Path: name, Err: fs.ErrNotExist}
		}
		if !c.dir {
			return nil, &fs.PathError{Op: opname, Path: name, Err: syscall.ENOTDIR}
		}
		n = c
	}
	return n, nil
}

// lookup returns the node name and its parent directory. The node is nil if
// the parent exists but the name does not; the root has no parent.
func (m *MemFS) lookup(opname, name string) (node, parent *memNode, base string, err error) {
	parts := split(name)
	if len(parts) == 0 {
		return m.root, nil, "", nil
	}
	parent, err = m.lookupDir(opname, name, parts[:len(parts)-1])
	if err != nil {
		return nil, nil, "", err
	}
	base = parts[len(parts)-1]
	return parent.children[base], parent, base, nil
}

// change applies op to the current entries of dir and records it as unsynced.
func (dir *memNode) change(op dirOp) {
	op.apply(dir.children)
	dir.dirPending = append(dir.dirPending, op)
}

const memSupportedFlags = os.O_WRONLY | os.O_RDWR | os.O_CREATE | os.O_EXCL | os.O_TRUNC

// OpenFile implements FS.
func (m *MemFS) OpenFile(label, name string, flag int, perm fs.FileMode) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	mutating := flag&(os.O_CREATE|os.O_TRUNC) != 0
	if err := m.begin(Op{OpOpen, label, name}, mutating); err != nil {
		return nil, err
	}
	if flag&^memSupportedFlags != 0 {
		return nil, &fs.PathError{Op: "open", Path: name, Err: fmt.Errorf("unsupported flags %#x", flag&^memSupportedFlags)}
	}
	writable := flag&(os.O_WRONLY|os.O_RDWR) != 0
	n, parent, base, err := m.lookup("open", name)
	if err != nil {
		return nil, err
	}
	switch {
	case n == nil && flag&os.O_CREATE == 0:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrNotExist}
	case n == nil:
		n = &memNode{modTime: time.Now()}
		parent.change(dirOp{{base, n}})
	case flag&(os.O_CREATE|os.O_EXCL) == os.O_CREATE|os.O_EXCL:
		return nil, &fs.PathError{Op: "open", Path: name, Err: fs.ErrExist}
	case n.dir:
		return nil, &fs.PathError{Op: "open", Path: name, Err: syscall.EISDIR}
	case flag&os.O_TRUNC != 0 && writable:
		n.truncate(0)
	}
	return &memFile{
		fs:       m,
		node:     n,
		label:    label,
		name:     name,
		epoch:    m.epoch,
		readable: flag&os.O_WRONLY == 0,
		writable: writable,
	}, nil
}

// mutable prepares n.data to be modified in place.
func (n *memNode) mutable() {
	if n.shared {
		n.data = slices.Clone(n.data)
		n.shared = false
	}
}

func (n *memNode) truncate(size int64) {
	n.mutable()
	n.data = resize(n.data, size)
	n.pending = append(n.pending, memWrite{truncate: true, size: size})
	n.modTime = time.Now()
}

// Stat implements FS.
func (m *MemFS) Stat(label, name string) (fs.FileInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.begin(Op{OpStat, label, name}, false); err != nil {
		return nil, err
	}
	n, _, base, err := m.lookup("stat", name)
	if err != nil {
		return nil, err
	}
	if n == nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: fs.ErrNotExist}
	}
	if base == "" {
		base = "/"
	}
	return memInfo{name: base, size: int64(len(n.data)), dir: n.dir, modTime: n.modTime}, nil
}

// ReadDir implements FS.
func (m *MemFS) ReadDir(label, dir string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.begin(Op{OpReadDir, label, dir}, false); err != nil {
		return nil, err
	}
	n, err := m.lookupDir("readdir", dir, split(dir))
	if err != nil {
		return nil, err
	}
	return slices.Sorted(maps.Keys(n.children)), nil
}

// Rename implements FS. Renaming onto an existing directory is not
// supported.
func (m *MemFS) Rename(label, oldname, newname string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.begin(Op{OpRename, label, oldname}, true); err != nil {
		return err
	}
	n, oldParent, oldBase, err := m.lookup("rename", oldname)
	if err != nil {
		return err
	}
	if n == nil {
		return &fs.PathError{Op: "rename", Path: oldname, Err: fs.ErrNotExist}
	}
	if oldParent == nil {
		return &fs.PathError{Op: "rename", Path: oldname, Err: syscall.EBUSY}
	}
	dst, newParent, newBase, err := m.lookup("rename", newname)
	if err != nil {
		return err
	}
	if newParent == nil || (dst != nil && dst.dir) {
		return &fs.PathError{Op: "rename", Path: newname, Err: syscall.EEXIST}
	}
	if dst == n {
		return nil
	}
	if n.dir && m.isAncestor(n, newParent) {
		return &fs.PathError{Op: "rename", Path: newname, Err: syscall.EINVAL}
	}
	if oldParent == newParent {
		oldParent.change(dirOp{{newBase, n}, {oldBase, nil}})
		return nil
	}
	newParent.change(dirOp{{newBase, n}})
	oldParent.change(dirOp{{oldBase, nil}})
	return nil
}

// isAncestor reports whether dir is d or contains d, in the current tree.
func (m *MemFS) isAncestor(dir, d *memNode) bool {
	if dir == d {
		return true
	}
	for _, c := range dir.children {
		if c.dir && m.isAncestor(c, d) {
			return true
		}
	}
	return false
}

// Remove implements FS.
func (m *MemFS) Remove(label, name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.begin(Op{OpRemove, label, name}, true); err != nil {
		return err
	}
	n, parent, base, err := m.lookup("remove", name)
	if err != nil {
		return err
	}
	switch {
	case n == nil:
		return &fs.PathError{Op: "remove", Path: name, Err: fs.ErrNotExist}
	case parent == nil:
		return &fs.PathError{Op: "remove", Path: name, Err: syscall.EBUSY}
	case n.dir && len(n.children) > 0:
		return &fs.PathError{Op: "remove", Path: name, Err: syscall.ENOTEMPTY}
	}
	parent.change(dirOp{{base, nil}})
	return nil
}

// MkdirAll implements FS.
func (m *MemFS) MkdirAll(label, dir string, _ fs.FileMode) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.begin(Op{OpMkdirAll, label, dir}, true); err != nil {
		return err
	}
	n := m.root
	for _, p := range split(dir) {
		c, ok := n.children[p]
		if !ok {
			c = newMemDir()
			c.modTime = time.Now()
			n.change(dirOp{{p, c}})
		} else if !c.dir {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		n = c
	}
	return nil
}

// SyncDir implements FS.
func (m *MemFS) SyncDir(label, dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.begin(Op{OpSyncDir, label, dir}, true); err != nil {
		return err
	}
	n, err := m.lookupDir("syncdir", dir, split(dir))
	if err != nil {
		return err
	}
	n.syncedChildren = maps.Clone(n.children)
	n.dirPending = nil
	return nil
}

// Lock implements FS. The lock lives in memory only: it creates no file.
func (m *MemFS) Lock(label, name string) (io.Closer, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.begin(Op{OpLock, label, name}, false); err != nil {
		return nil, err
	}
	parts := split(name)
	if len(parts) == 0 {
		return nil, &fs.PathError{Op: "lock", Path: name, Err: syscall.EISDIR}
	}
	if _, err := m.lookupDir("lock", name, parts[:len(parts)-1]); err != nil {
		return nil, err
	}
	key := "/" + strings.Join(parts, "/")
	if m.locks[key] {
		return nil, fmt.Errorf("lock %q: %w", name, ErrInUse)
	}
	m.locks[key] = true
	return &memLock{fs: m, key: key, epoch: m.epoch}, nil
}

type memLock struct {
	fs    *MemFS
	key   string
	epoch uint64
	once  sync.Once
}

func (l *memLock) Close() error {
	l.once.Do(func() {
		l.fs.mu.Lock()
		defer l.fs.mu.Unlock()
		if l.fs.epoch == l.epoch {
			delete(l.fs.locks, l.key)
		}
	})
	return nil
}

type memInfo struct {
	name    string
	size    int64
	dir     bool
	modTime time.Time
}

func (i memInfo) Name() string { return i.name }
func (i memInfo) Size() int64  { return i.size }
func (i memInfo) Mode() fs.FileMode {
	if i.dir {
		return fs.ModeDir | 0o755
	}
	return 0o644
}
func (i memInfo) ModTime() time.Time { return i.modTime }
func (i memInfo) IsDir() bool        { return i.dir }
func (i memInfo) Sys() any           { return nil }

// memFile is an open file of a MemFS.
type memFile struct {
	fs       *MemFS
	node     *memNode
	label    string
	name     string
	epoch    uint64
	readable bool
	writable bool
	closed   bool // guarded by fs.mu
}

var _ File = (*memFile)(nil)

// begin checks the handle and accounts for one operation; the caller holds
// f.fs.mu.
func (f *memFile) begin(kind OpKind, opname string) error {
	op := Op{kind, f.label, f.name}
	if f.closed {
		return &fs.PathError{Op: opname, Path: f.name, Err: fs.ErrClosed}
	}
	if f.epoch != f.fs.epoch {
		return fmt.Errorf("%s: file opened before a crash: %w", op, ErrCrashed)
	}
	if err := f.fs.begin(op, kind.Mutating()); err != nil {
		return err
	}
	if kind == OpRead && !f.readable {
		return &fs.PathError{Op: opname, Path: f.name, Err: syscall.EBADF}
	}
	if (kind == OpWrite || kind == OpTruncate) && !f.writable {
		return &fs.PathError{Op: opname, Path: f.name, Err: syscall.EBADF}
	}
	return nil
}

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.begin(OpRead, "read"); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, &fs.PathError{Op: "read", Path: f.name, Err: syscall.EINVAL}
	}
	if off >= int64(len(f.node.data)) {
		return 0, io.EOF
	}
	n := copy(p, f.node.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.begin(OpWrite, "write"); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, &fs.PathError{Op: "write", Path: f.name, Err: syscall.EINVAL}
	}
	n := f.node
	n.mutable()
	n.data = writeAt(n.data, p, off)
	n.pending = append(n.pending, memWrite{off: off, data: slices.Clone(p)})
	n.modTime = time.Now()
	return len(p), nil
}

func (f *memFile) Sync() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.begin(OpSync, "sync"); err != nil {
		return err
	}
	f.node.synced = f.node.data
	f.node.shared = true
	f.node.pending = nil
	return nil
}

func (f *memFile) Truncate(size int64) error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.begin(OpTruncate, "truncate"); err != nil {
		return err
	}
	if size < 0 {
		return &fs.PathError{Op: "truncate", Path: f.name, Err: syscall.EINVAL}
	}
	f.node.truncate(size)
	return nil
}

func (f *memFile) Size() (int64, error) {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if err := f.begin(OpSize, "stat"); err != nil {
		return 0, err
	}
	return int64(len(f.node.data)), nil
}

// Close never fails on an open handle, even after a crash: closing a file
// touches nothing durable.
func (f *memFile) Close() error {
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return &fs.PathError{Op: "close", Path: f.name, Err: fs.ErrClosed}
	}
	f.closed = true
	return nil
}

// Clone returns an independent copy of the FS: its files and directories,
// with what of them is durable and what is not. The copy has no open file,
// no lock and no crash point; its operation count starts at zero.
func (m *MemFS) Clone() *MemFS {
	m.mu.Lock()
	defer m.mu.Unlock()
	copies := map[*memNode]*memNode{}
	var cp func(n *memNode) *memNode
	cp = func(n *memNode) *memNode {
		if c, ok := copies[n]; ok {
			return c
		}
		c := &memNode{
			dir:        n.dir,
			data:       n.data,
			synced:     n.synced,
			shared:     true,
			pending:    slices.Clone(n.pending), // the writes' data is never modified
			modTime:    n.modTime,
			dirPending: make([]dirOp, len(n.dirPending)),
		}
		copies[n] = c
		n.shared = true
		if !n.dir {
			return c
		}
		c.children = make(map[string]*memNode, len(n.children))
		c.syncedChildren = make(map[string]*memNode, len(n.syncedChildren))
		for name, child := range n.children {
			c.children[name] = cp(child)
		}
		for name, child := range n.syncedChildren {
			c.syncedChildren[name] = cp(child)
		}
		for i, op := range n.dirPending {
			c.dirPending[i] = make(dirOp, len(op))
			for j, ch := range op {
				c.dirPending[i][j] = dirChange{name: ch.name}
				if ch.node != nil {
					c.dirPending[i][j].node = cp(ch.node)
				}
			}
		}
		return c
	}
	return &MemFS{root: cp(m.root), budget: -1, locks: map[string]bool{}}
}
