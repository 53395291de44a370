package blockdev

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"sync"
)

// FaultOp is a kind of Volume call that Faulty counts and can fail.
type FaultOp uint8

// Kinds of Volume calls.
const (
	FaultRead FaultOp = iota + 1
	FaultApply
	FaultSync
)

// String returns the name of the call.
func (op FaultOp) String() string {
	switch op {
	case FaultRead:
		return "read"
	case FaultApply:
		return "apply"
	case FaultSync:
		return "sync"
	}
	return fmt.Sprintf("faultop(%d)", uint8(op))
}

// Fault describes calls of a Volume that Faulty fails.
type Fault struct {
	// Op is the kind of call to fail.
	Op FaultOp
	// N is the 1-based number of the call to fail among the calls of kind
	// Op, counted from NewFaulty.
	N int
	// Persist fails every call of kind Op from the N-th on, not only the
	// N-th.
	Persist bool
	// After, for FaultApply and FaultSync, makes the call reach the wrapped
	// volume before the error is returned: the caller cannot tell whether
	// the batch was applied or synced, as after a failed write whose
	// outcome is unknown. Without it the wrapped volume is not called.
	After bool
}

// Faulty wraps a Volume and fails chosen calls with an error wrapping
// ErrInjected, deterministically: calls are counted per kind from NewFaulty.
// It is safe for concurrent use.
type Faulty struct {
	v      Volume
	mu     sync.Mutex
	counts map[FaultOp]int
	faults []Fault
}

var _ Volume = (*Faulty)(nil)

// NewFaulty returns v wrapped, with no fault injected.
func NewFaulty(v Volume) *Faulty { return &Faulty{v: v, counts: map[FaultOp]int{}} }

// Inject adds a fault.
func (f *Faulty) Inject(ft Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, ft)
}

// Count returns how many calls of kind op were made so far.
func (f *Faulty) Count(op FaultOp) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[op]
}

// Unwrap returns the wrapped volume.
func (f *Faulty) Unwrap() Volume { return f.v }

// check counts one call of kind op and returns whether the wrapped volume
// must be called before the injected error, and the error to inject, if any.
func (f *Faulty) check(op FaultOp) (after bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counts[op]++
	n := f.counts[op]
	for _, ft := range f.faults {
		if ft.Op == op && (n == ft.N || ft.Persist && n > ft.N) {
			return ft.After && op != FaultRead, fmt.Errorf("%s call %d: %w", op, n, ErrInjected)
		}
	}
	return false, nil
}

// BlockCount implements Reader.
func (f *Faulty) BlockCount() uint64 { return f.v.BlockCount() }

// ReadBlock implements Reader.
func (f *Faulty) ReadBlock(index uint64, p []byte) error {
	if _, err := f.check(FaultRead); err != nil {
		return fmt.Errorf("read block %d: %w", index, err)
	}
	return f.v.ReadBlock(index, p)
}

// Apply implements Volume.
func (f *Faulty) Apply(ctx context.Context, b *Batch, opts ApplyOptions) error {
	after, err := f.check(FaultApply)
	if err == nil || after {
		if aerr := f.v.Apply(ctx, b, opts); err == nil {
			return aerr
		}
	}
	return fmt.Errorf("apply: %w", err)
}

// Sync implements Volume.
func (f *Faulty) Sync(ctx context.Context) error {
	after, err := f.check(FaultSync)
	if err == nil || after {
		if serr := f.v.Sync(ctx); err == nil {
			return serr
		}
	}
	return fmt.Errorf("sync: %w", err)
}

// Close implements Volume; it closes the wrapped volume.
func (f *Faulty) Close() error { return f.v.Close() }

// FSFault describes operations of an FS that FaultFS fails. Empty fields
// match everything.
type FSFault struct {
	// Kind is the kind of operation to fail; 0 matches every kind.
	Kind OpKind
	// Label is the label of the operations to fail; "" matches every label.
	Label string
	// Path is the path of the operations to fail; "" matches every path.
	Path string
	// N is the 1-based number of the operation to fail among the matching
	// operations counted from Inject.
	N int
	// Persist fails every matching operation from the N-th on.
	Persist bool
}

func (ft *FSFault) matches(op Op) bool {
	return (ft.Kind == 0 || ft.Kind == op.Kind) &&
		(ft.Label == "" || ft.Label == op.Label) &&
		(ft.Path == "" || ft.Path == op.Path)
}

// FaultFS wraps an FS and fails chosen operations with an error wrapping
// ErrInjected, after pebble's errorfs. A failed operation does not reach the
// wrapped FS. FaultFS is safe for concurrent use.
type FaultFS struct {
	fs       FS
	mu       sync.Mutex
	rules    []*fsRule
	counts   map[opCountKey]int
	total    int
	injected []Op
}

type fsRule struct {
	FSFault
	seen int
}

type opCountKey struct {
	kind  OpKind
	label string
}

var _ FS = (*FaultFS)(nil)

// NewFaultFS returns fsys wrapped, with no fault injected.
func NewFaultFS(fsys FS) *FaultFS { return &FaultFS{fs: fsys, counts: map[opCountKey]int{}} }

// Inject adds a fault; its N counts matching operations from now.
func (f *FaultFS) Inject(ft FSFault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, &fsRule{FSFault: ft})
}

// Clear removes every fault.
func (f *FaultFS) Clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = nil
}

// Count returns how many operations of kind with label were attempted
// through f, failed ones included.
func (f *FaultFS) Count(kind OpKind, label string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.counts[opCountKey{kind, label}]
}

// Total returns how many operations were attempted through f, failed ones
// included.
func (f *FaultFS) Total() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.total
}

// Injected returns the operations failed so far, in order.
func (f *FaultFS) Injected() []Op {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Op(nil), f.injected...)
}

// check counts op and returns the error to inject, if any.
func (f *FaultFS) check(op Op) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counts[opCountKey{op.Kind, op.Label}]++
	f.total++
	var fail bool
	for _, r := range f.rules {
		if !r.matches(op) {
			continue
		}
		r.seen++
		if r.seen == r.N || r.Persist && r.seen > r.N {
			fail = true
		}
	}
	if fail {
		f.injected = append(f.injected, op)
		return fmt.Errorf("%s: %w", op, ErrInjected)
	}
	return nil
}

// OpenFile implements FS.
func (f *FaultFS) OpenFile(label, name string, flag int, perm fs.FileMode) (File, error) {
	if err := f.check(Op{OpOpen, label, name}); err != nil {
		return nil, err
	}
	file, err := f.fs.OpenFile(label, name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{f: file, fs: f, label: label, name: name}, nil
}

// Stat implements FS.
func (f *FaultFS) Stat(label, name string) (fs.FileInfo, error) {
	if err := f.check(Op{OpStat, label, name}); err != nil {
		return nil, err
	}
	return f.fs.Stat(label, name)
}

// ReadDir implements FS.
func (f *FaultFS) ReadDir(label, dir string) ([]string, error) {
	if err := f.check(Op{OpReadDir, label, dir}); err != nil {
		return nil, err
	}
	return f.fs.ReadDir(label, dir)
}

// Rename implements FS.
func (f *FaultFS) Rename(label, oldname, newname string) error {
	if err := f.check(Op{OpRename, label, oldname}); err != nil {
		return err
	}
	return f.fs.Rename(label, oldname, newname)
}

// Remove implements FS.
func (f *FaultFS) Remove(label, name string) error {
	if err := f.check(Op{OpRemove, label, name}); err != nil {
		return err
	}
	return f.fs.Remove(label, name)
}

// MkdirAll implements FS.
func (f *FaultFS) MkdirAll(label, dir string, perm fs.FileMode) error {
	if err := f.check(Op{OpMkdirAll, label, dir}); err != nil {
		return err
	}
	return f.fs.MkdirAll(label, dir, perm)
}

// SyncDir implements FS.
func (f *FaultFS) SyncDir(label, dir string) error {
	if err := f.check(Op{OpSyncDir, label, dir}); err != nil {
		return err
	}
	return f.fs.SyncDir(label, dir)
}

// Lock implements FS.
func (f *FaultFS) Lock(label, name string) (io.Closer, error) {
	if err := f.check(Op{OpLock, label, name}); err != nil {
		return nil, err
	}
	return f.fs.Lock(label, name)
}

type faultFile struct {
	f     File
	fs    *FaultFS
	label string
	name  string
}

func (ff *faultFile) ReadAt(p []byte, off int64) (int, error) {
	if err := ff.fs.check(Op{OpRead, ff.label, ff.name}); err != nil {
		return 0, err
	}
	return ff.f.ReadAt(p, off)
}

func (ff *faultFile) WriteAt(p []byte, off int64) (int, error) {
	if err := ff.fs.check(Op{OpWrite, ff.label, ff.name}); err != nil {
		return 0, err
	}
	return ff.f.WriteAt(p, off)
}

func (ff *faultFile) Sync() error {
	if err := ff.fs.check(Op{OpSync, ff.label, ff.name}); err != nil {
		return err
	}
	return ff.f.Sync()
}

func (ff *faultFile) Truncate(size int64) error {
	if err := ff.fs.check(Op{OpTruncate, ff.label, ff.name}); err != nil {
		return err
	}
	return ff.f.Truncate(size)
}

func (ff *faultFile) Size() (int64, error) {
	if err := ff.fs.check(Op{OpSize, ff.label, ff.name}); err != nil {
		return 0, err
	}
	return ff.f.Size()
}

// Close always closes the wrapped file, so that an injected fault leaks no
// descriptor, and then returns the injected error, if any.
func (ff *faultFile) Close() error {
	err := ff.fs.check(Op{OpClose, ff.label, ff.name})
	cerr := ff.f.Close()
	if err != nil {
		return err
	}
	return cerr
}
