package fusefs

// Live read-only replica mounts.
//
// A secondary serves its replica volume with MountReplica while the
// volume's blocks change underneath in rounds (one per VALIDATE). Readers
// must see exactly one applied point N, never part of a round, and must see
// a new point within one round. Three caches stand between a reader and the
// blocks, and each is handled at every round by Advance:
//
//   - the engine's own state (metadata block cache, directory indexes,
//     bitmaps, superblock) is changed only under fs.mu held for writing,
//     together with the blocks, so an operation, which holds fs.mu for
//     reading from its first block read to its last, sees one point;
//   - the kernel's attribute, page and dentry caches are invalidated with
//     go-fuse's notify calls after fs.mu is released (the kernel may wait
//     on requests that need fs.mu), and only then is the round settled;
//   - .tricopy/applied, the reader's witness, reports the point read under
//     fs.mu but returns only once that point is settled.
//
// Kernel node IDs are our inode numbers (go-fuse ExternalNodeID), so a
// notification needs no go-fuse Inode: the kernel answers ENOENT for a node
// it does not hold. Dentries are found by recording every lookup answer
// (positive or negative) under fs.mu; a dentry the kernel caches was made
// from such an answer and lives at most the entry timeout before the kernel
// asks again, so records older than dentryRecordTTL are dropped. One
// exception to the normal kernel caching: attributes returned with a lookup
// have timeout 0. A lookup answered just before a round may reach the kernel
// after that round's notifications, and when it makes a new kernel inode
// there is nothing to invalidate; with timeout 0 the kernel asks GETATTR
// before using those attributes. GETATTR answers keep attrTimeout; the
// kernel's attr_version check discards a GETATTR answer that raced with an
// invalidation.
//
// Server.Promote (promote.go) turns a replica mount into a read-write one
// in place; from then on the replica-only paths above are off.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/tricopy/tricopy/blockdev"
)

// ErrNotReplica is returned (wrapped) by Advance and Promote on a Server
// from Mount.
var ErrNotReplica = errors.New("not a replica mount")

// The virtual .tricopy directory of a replica mount. Its inode numbers lie
// above every real one (inode numbers are uint32). It is found by lookup
// only, not listed in the root, and shadows a real root entry of the same
// name, which a replica mount cannot reach (readdir still lists it).
const (
	metaDirName = ".tricopy"
	appliedName = "applied"
	metaDirIno  = 1<<32 + 1
	appliedIno  = 1<<32 + 2
)

// dentryRecordTTL is how long a lookup answer is remembered: the kernel
// keeps a dentry at most attrTimeout (entry and negative timeout) after
// receiving the answer, which may come a little after we recorded it.
const dentryRecordTTL = attrTimeout + 30*time.Second

// replica is the state of a replica mount. It stays attached to the
// filesystem after Promote (promote.go), which turns it off: see
// liveReplica.
type replica struct {
	// advanceMu serialises Advance and Promote.
	advanceMu sync.Mutex

	// promoted is set by Promote while it holds advanceMu and fs.mu for
	// writing, and never cleared. It is atomic so that the paths that
	// hold neither (the nodes' timeouts, lookupMeta) may read it too.
	promoted atomic.Bool

	// Guarded by fs.mu.
	applied   uint64    // the applied point the mount shows
	round     uint64    // number of Advance calls so far
	appliedAt time.Time // when applied last changed

	// settled is the last round whose kernel invalidation finished;
	// settledCh is closed and replaced whenever it moves.
	settleMu  sync.Mutex
	settled   uint64
	settledCh chan struct{}

	// mu guards what the kernel may know. Lookups take it under fs.mu
	// held for reading, Advance under fs.mu held for writing.
	mu      sync.Mutex
	known   *bitset                            // inodes ever returned by a lookup (the kernel may hold them)
	names   map[uint32]map[string]dentryRecord // directory → recent lookup answers
	nrec    int
	pruneAt int

	// Guarded by fs.dirMu, like fs.dirs: the blocks each loaded directory
	// index was built from, and the reverse.
	dirSrc map[uint32][]uint32
	dirsOf map[uint32]map[uint32]struct{}
}

// dentryRecord is one lookup answer: ino 0 is a negative answer.
type dentryRecord struct {
	ino, gen uint32
	at       time.Time
}

func newReplica(fs *filesystem, applied uint64) *replica {
	r := &replica{
		applied:   applied,
		appliedAt: time.Now(),
		settledCh: make(chan struct{}),
		known:     newBitset(fs.sb.inodes),
		names:     make(map[uint32]map[string]dentryRecord),
		pruneAt:   1024,
		dirSrc:    make(map[uint32][]uint32),
		dirsOf:    make(map[uint32]map[uint32]struct{}),
	}
	r.known.set(rootIno, true)
	return r
}

// replicaDevice serves a replica's blocks to the engine. The engine never
// commits on a replica (it is read-only), so Commit refuses.
type replicaDevice struct{ blockdev.Reader }

var _ Device = replicaDevice{}

// ReadBlocks reads consecutive blocks with one call when the reader can.
func (d replicaDevice) ReadBlocks(first uint64, p []byte) error {
	return readBlocks(d.Reader, first, p)
}

func (d replicaDevice) Commit(context.Context, *blockdev.Batch) (Ack, error) {
	return nil, fmt.Errorf("commit to a replica: %w", ErrDeviceReadOnly)
}

func (d replicaDevice) Sync(context.Context) error { return nil }

// MountReplica mounts the filesystem on r read-only as a live replica that
// shows applied point `applied` (opts.ReadOnly is implied). The blocks of r
// may change only inside Server.Advance. The root holds a virtual directory
// .tricopy (found by lookup, not listed) whose file applied reads as the
// decimal applied point and a newline.
func MountReplica(ctx context.Context, r blockdev.Reader, opts MountOptions, applied uint64) (*Server, error) {
	opts.ReadOnly = true
	f, err := openFS(ctx, replicaDevice{r}, engineOptions{readOnly: true, log: opts.Logger})
	if err != nil {
		return nil, fmt.Errorf("open filesystem: %w", err)
	}
	f.rep = newReplica(f, applied)
	root := &node{fs: f, ino: rootIno, gen: 1}
	o := MountArgs(opts.Name, true, opts.AllowOther, opts.Debug)
	o.RootStableAttr = &gofs.StableAttr{Ino: rootIno, Gen: 1}
	o.ExternalNodeID = true
	// The nodes set their timeouts themselves (replicaEntryTimeouts,
	// replicaAttrTimeout): go-fuse would replace a timeout of 0 by these.
	o.EntryTimeout, o.AttrTimeout = nil, nil
	srv, err := gofs.Mount(opts.Mountpoint, root, o)
	if err != nil {
		return nil, fmt.Errorf("mount %q: %w", opts.Mountpoint, err)
	}
	f.log.Info("mounted replica", "mountpoint", opts.Mountpoint, "volume", opts.Name, "applied", applied)
	return &Server{srv: srv, fs: f, opts: opts}, nil
}

// Applied returns the applied point the replica mount shows (0 on a
// Server from Mount). After Promote it returns the last point applied
// before the promotion, which the promoted filesystem started from.
func (s *Server) Applied() uint64 {
	r := s.fs.rep
	if r == nil {
		return 0
	}
	s.fs.mu.RLock()
	defer s.fs.mu.RUnlock()
	return r.applied
}

// Advance moves a replica mount to a new applied point. It holds the
// filesystem's lock for writing while it calls apply (so no FUSE operation
// runs, and none sees part of the change), apply changes the underlying
// blocks and returns the new point and the indices of every block it wrote;
// then, still under the lock, Advance drops what the engine cached of those
// blocks (metadata block cache, directory indexes built from them, superblock/bitmaps
// if touched) and records the new point; then, after releasing the lock, it
// invalidates the kernel's caches (go-fuse notify: NotifyContent for every
// inode whose inode-table block changed that the kernel knows, NotifyEntry
// for directory entries that disappeared or now name another inode), and
// only then marks the point settled. If apply returns an error, Advance drops
// every cache (the blocks may or may not have changed), invalidates
// everything the kernel knows, and returns the error wrapped.
// Advance on a Server from Mount (not MountReplica) returns an error
// wrapping ErrNotReplica, and after Promote one wrapping ErrPromoted.
//
// Advance calls are serialised; apply runs on the caller's goroutine, while
// no FUSE operation of this mount runs, and must not use the mount.
func (s *Server) Advance(ctx context.Context, apply func(ctx context.Context) (applied uint64, changed []uint64, err error)) error {
	fs, r := s.fs, s.fs.rep
	if r == nil {
		return fmt.Errorf("advance: %w", ErrNotReplica)
	}
	r.advanceMu.Lock()
	defer r.advanceMu.Unlock()
	if r.promoted.Load() {
		return fmt.Errorf("advance: %w", ErrPromoted)
	}

	fs.mu.Lock()
	applied, changed, applyErr := apply(ctx)
	var inv invalidation
	var refreshErr error
	if applyErr != nil {
		inv, refreshErr = fs.dropAll()
	} else {
		inv, refreshErr = fs.dropChanged(changed)
		r.applied, r.appliedAt = applied, time.Now()
	}
	r.round++
	round, point := r.round, r.applied
	fs.mu.Unlock()

	s.invalidate(inv)
	r.settle(round)
	switch {
	case applyErr != nil:
		return fmt.Errorf("apply round (every cache dropped, still at applied %d): %w", point, errors.Join(applyErr, refreshErr))
	case refreshErr != nil:
		return fmt.Errorf("reload metadata at applied %d: %w", point, refreshErr)
	}
	fs.log.Debug("replica advanced", "applied", point, "blocks", len(changed),
		"inodes", len(inv.inodes), "entries", len(inv.entries))
	return nil
}

// invalidation is what the kernel must forget after a round.
type invalidation struct {
	inodes  []uint32
	entries []dentryName
}

type dentryName struct {
	dir  uint32
	name string
}

// invalidate sends the kernel notifications. It must not run under fs.mu:
// the kernel may wait, before answering, for requests that need it.
func (s *Server) invalidate(inv invalidation) {
	for _, ino := range inv.inodes {
		s.notifyStatus("inode", ino, s.srv.InodeNotify(uint64(ino), 0, 0))
	}
	for _, e := range inv.entries {
		s.notifyStatus("entry", e.dir, s.srv.EntryNotify(uint64(e.dir), e.name))
	}
}

// notifyStatus logs a notification the kernel refused for a reason other
// than not knowing the node.
func (s *Server) notifyStatus(kind string, ino uint32, st fuse.Status) {
	if st == fuse.OK || st == fuse.ENOENT {
		return
	}
	s.fs.log.Warn("kernel cache notification failed", "kind", kind, "ino", ino, "status", st.String())
}

func (r *replica) settle(round uint64) {
	r.settleMu.Lock()
	defer r.settleMu.Unlock()
	r.settled = round
	close(r.settledCh)
	r.settledCh = make(chan struct{})
}

// waitSettled waits until round is settled or ctx is done.
func (r *replica) waitSettled(ctx context.Context, round uint64) error {
	for {
		r.settleMu.Lock()
		settled, ch := r.settled, r.settledCh
		r.settleMu.Unlock()
		if settled >= round {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// point returns the applied point and the round that installed it.
func (fs *filesystem) point() (applied, round uint64, at time.Time) {
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	return fs.rep.applied, fs.rep.round, fs.rep.appliedAt
}

// dropChanged makes the engine forget what it cached of the changed blocks
// and returns what the kernel must forget. The caller holds fs.mu for
// writing; the blocks already hold the new point.
func (fs *filesystem) dropChanged(changed []uint64) (invalidation, error) {
	set := make(map[uint32]struct{}, len(changed))
	for _, b := range changed {
		if b >= fs.sb.blocks {
			inv, err := fs.dropAll()
			return inv, errors.Join(fmt.Errorf("changed block %d beyond the filesystem's %d", b, fs.sb.blocks), err)
		}
		set[uint32(b)] = struct{}{}
	}
	sb := fs.sb
	var errs []error
	for b := range set {
		fs.cache.drop(b)
	}
	if _, ok := set[0]; ok {
		errs = append(errs, fs.checkSuper())
	}
	for b := range set {
		switch blk := uint64(b); {
		case blk >= sb.bbmStart && blk < sb.bbmStart+sb.bbmBlocks:
			errs = append(errs, fs.loadBitmapBlock(fs.bmap, sb.bbmStart, blk-sb.bbmStart))
		case blk >= sb.ibmStart && blk < sb.ibmStart+sb.ibmBlocks:
			errs = append(errs, fs.loadBitmapBlock(fs.imap, sb.ibmStart, blk-sb.ibmStart))
		}
	}
	r := fs.rep
	// Directory indexes built from a changed block (their inode's table
	// block included).
	dropped := make(map[uint32]bool)
	fs.dirMu.Lock()
	for b := range set {
		for dir := range r.dirsOf[b] {
			dropped[dir] = true
		}
	}
	for dir := range dropped {
		fs.dropDirLocked(dir)
	}
	fs.dirMu.Unlock()

	r.mu.Lock()
	defer r.mu.Unlock()
	var inv invalidation
	check := dropped // and below, directories whose inode changed: their recorded entries may be stale
	for b := range set {
		blk := uint64(b)
		if blk < sb.itabStart || blk >= sb.itabStart+sb.itabBlocks {
			continue
		}
		for i := uint64(0); i < inodesPerBlock; i++ {
			ino := (blk-sb.itabStart)*inodesPerBlock + i
			if ino >= sb.inodes || !r.known.get(ino) {
				continue
			}
			inv.inodes = append(inv.inodes, uint32(ino))
			if r.names[uint32(ino)] != nil {
				check[uint32(ino)] = true
			}
		}
	}
	now := time.Now()
	for dir := range check {
		for name, rec := range r.names[dir] {
			ino, in, err := fs.resolveName(dir, name)
			if err != nil {
				ino = 0 // a directory gone or unreadable: forget every name
			}
			if now.Sub(rec.at) >= dentryRecordTTL || ino == rec.ino && (ino == 0 || in.gen == rec.gen) {
				continue // expired (pruned below) or still true
			}
			inv.entries = append(inv.entries, dentryName{dir, name})
			r.forget(dir, name)
		}
	}
	r.prune(now)
	return inv, errors.Join(errs...)
}

// dropAll makes the engine forget every cached block and reload its
// superblock and bitmaps, and returns everything the kernel may know. The
// caller holds fs.mu for writing.
func (fs *filesystem) dropAll() (invalidation, error) {
	r := fs.rep
	fs.cache = newBlockCache(fs.cache.max)
	fs.dirMu.Lock()
	clear(fs.dirs)
	clear(r.dirSrc)
	clear(r.dirsOf)
	fs.dirMu.Unlock()
	var errs []error
	errs = append(errs, fs.checkSuper())
	if b, err := fs.loadBitmap(fs.sb.bbmStart, fs.sb.bbmBlocks, fs.sb.blocks); err != nil {
		errs = append(errs, fmt.Errorf("block bitmap: %w", err))
	} else {
		fs.bmap = b
	}
	if b, err := fs.loadBitmap(fs.sb.ibmStart, fs.sb.ibmBlocks, fs.sb.inodes); err != nil {
		errs = append(errs, fmt.Errorf("inode bitmap: %w", err))
	} else {
		fs.imap = b
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var inv invalidation
	for ino := uint64(0); ino < r.known.n; ino++ {
		if r.known.get(ino) {
			inv.inodes = append(inv.inodes, uint32(ino))
		}
	}
	for dir, m := range r.names {
		for name := range m {
			inv.entries = append(inv.entries, dentryName{dir, name})
		}
	}
	clear(r.names)
	r.nrec = 0
	return inv, errors.Join(errs...)
}

// checkSuper rereads the superblock and checks that the layout did not
// change (a replica cannot follow a reformat).
func (fs *filesystem) checkSuper() error {
	p := make([]byte, bs)
	if err := fs.dev.ReadBlock(0, p); err != nil {
		return fmt.Errorf("read superblock: %w", err)
	}
	sb, err := decodeSuper(p, fs.dev.BlockCount())
	if err != nil {
		return err
	}
	if sb != fs.sb {
		return corruptf("superblock changed under the replica mount")
	}
	return nil
}

// dropDirLocked forgets the index of directory dir; the caller holds
// fs.dirMu.
func (fs *filesystem) dropDirLocked(dir uint32) {
	delete(fs.dirs, dir)
	r := fs.rep
	for _, b := range r.dirSrc[dir] {
		if m := r.dirsOf[b]; m != nil {
			delete(m, dir)
			if len(m) == 0 {
				delete(r.dirsOf, b)
			}
		}
	}
	delete(r.dirSrc, dir)
}

// blockRecorder reads metadata blocks through the engine and remembers
// which.
type blockRecorder struct {
	fs     *filesystem
	blocks []uint32
}

func (b *blockRecorder) readMeta(blk uint32, check func([]byte) error) ([]byte, error) {
	b.blocks = append(b.blocks, blk)
	return b.fs.readMeta(blk, check)
}

// liveReplica reports whether fs serves a replica mount that has not been
// promoted: whether the replica-only paths (lookup records, directory
// sources, .tricopy, attribute timeout 0) are on. It is stable while fs.mu
// is held; without fs.mu it may turn false at any moment.
func (fs *filesystem) liveReplica() bool {
	return fs.rep != nil && !fs.rep.promoted.Load()
}

// dirSource returns what a directory index is built through: the engine,
// or on a live replica mount a blockRecorder, so that Advance can drop the
// index when a block it came from changes. The caller holds fs.mu.
func (fs *filesystem) dirSource() metaReader {
	if !fs.liveReplica() {
		return fs
	}
	return &blockRecorder{fs: fs}
}

// dirLoaded records, on a live replica mount, the blocks the index of
// directory ino was built from (src from dirSource): its map and directory
// blocks and its inode's table block. The caller holds fs.dirMu.
func (fs *filesystem) dirLoaded(ino uint32, src metaReader) {
	rec, ok := src.(*blockRecorder)
	if !ok {
		return
	}
	itab, _ := fs.inodeLoc(ino)
	blocks := append(rec.blocks, itab)
	r := fs.rep
	r.dirSrc[ino] = blocks
	for _, b := range blocks {
		m := r.dirsOf[b]
		if m == nil {
			m = make(map[uint32]struct{})
			r.dirsOf[b] = m
		}
		m[ino] = struct{}{}
	}
}

// noteLookup records, on a replica mount, the answer to a lookup of name in
// dir (ino 0 or err: negative), so Advance can invalidate the dentry the
// kernel makes of it. The caller holds fs.mu for reading.
func (fs *filesystem) noteLookup(dir uint32, name string, ino, gen uint32, err error) {
	if !fs.liveReplica() {
		return
	}
	r := fs.rep
	if err != nil {
		ino, gen = 0, 0
	}
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if ino != 0 && uint64(ino) < r.known.n {
		r.known.set(uint64(ino), true)
	}
	m := r.names[dir]
	if m == nil {
		m = make(map[string]dentryRecord)
		r.names[dir] = m
	}
	if _, ok := m[name]; !ok {
		r.nrec++
	}
	m[name] = dentryRecord{ino: ino, gen: gen, at: now}
	if r.nrec >= r.pruneAt {
		r.prune(now)
		r.pruneAt = max(2*r.nrec, 1024)
	}
}

// forget drops one lookup record; the caller holds r.mu.
func (r *replica) forget(dir uint32, name string) {
	m := r.names[dir]
	if _, ok := m[name]; !ok {
		return
	}
	delete(m, name)
	r.nrec--
	if len(m) == 0 {
		delete(r.names, dir)
	}
}

// prune drops lookup records the kernel can no longer use without asking
// again; the caller holds r.mu.
func (r *replica) prune(now time.Time) {
	for dir, m := range r.names {
		for name, rec := range m {
			if now.Sub(rec.at) >= dentryRecordTTL {
				r.forget(dir, name)
			}
		}
	}
}

// setEntryTimeouts sets the timeouts of an entry answer (lookup, create,
// mkdir, ...): entry timeout attrTimeout, and attribute timeout
// attrTimeout except on a live replica mount, where it is 0 (see the top
// of this file). The nodes set them on every mount: a replica mount has no
// default timeouts in its go-fuse options, and keeps those options when
// promoted; on a Server from Mount they equal go-fuse's defaults.
func (fs *filesystem) setEntryTimeouts(out *fuse.EntryOut) {
	out.SetEntryTimeout(attrTimeout)
	if !fs.liveReplica() {
		out.SetAttrTimeout(attrTimeout)
	}
}

// setAttrTimeout sets the attribute timeout of a GETATTR answer, on every
// mount (see setEntryTimeouts).
func (fs *filesystem) setAttrTimeout(out *fuse.AttrOut) {
	out.SetTimeout(attrTimeout)
}

// lookupMeta returns the virtual .tricopy directory when n is the root of a
// live replica mount and name is .tricopy, else nil.
func (n *node) lookupMeta(ctx context.Context, name string, out *fuse.EntryOut) *gofs.Inode {
	if !n.fs.liveReplica() || n.ino != rootIno || name != metaDirName {
		return nil
	}
	d := &metaDir{fs: n.fs}
	d.fillAttr(&out.Attr)
	out.SetEntryTimeout(attrTimeout)
	out.SetAttrTimeout(attrTimeout)
	return n.NewInode(ctx, d, gofs.StableAttr{Mode: s_IFDIR, Ino: metaDirIno, Gen: 1})
}

// metaDir is the virtual directory .tricopy of a replica mount.
type metaDir struct {
	gofs.Inode
	fs *filesystem
}

var (
	_ gofs.NodeLookuper  = (*metaDir)(nil)
	_ gofs.NodeGetattrer = (*metaDir)(nil)
	_ gofs.NodeReaddirer = (*metaDir)(nil)
)

func (d *metaDir) fillAttr(a *fuse.Attr) {
	a.Ino = metaDirIno
	a.Mode = s_IFDIR | 0o555
	a.Nlink = 2
	a.Size = bs
	a.Blksize = bs
}

// Getattr implements gofs.NodeGetattrer.
func (d *metaDir) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.fillAttr(&out.Attr)
	out.SetTimeout(attrTimeout)
	return 0
}

// Lookup implements gofs.NodeLookuper.
func (d *metaDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if name != appliedName {
		return nil, syscall.ENOENT
	}
	f := &appliedFile{fs: d.fs}
	f.fillAttr(&out.Attr)
	out.SetEntryTimeout(attrTimeout) // attribute timeout 0: never cached
	return d.NewInode(ctx, f, gofs.StableAttr{Mode: s_IFREG, Ino: appliedIno, Gen: 1}), 0
}

// Readdir implements gofs.NodeReaddirer.
func (d *metaDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	return gofs.NewListDirStream([]fuse.DirEntry{{Name: appliedName, Mode: s_IFREG, Ino: appliedIno}}), 0
}

// appliedFile is .tricopy/applied: the applied point in decimal and a
// newline. A read waits until the point it returns is settled (the kernel
// forgot everything older), so a reader that reads the same N before and
// after other reads knows every read in between saw exactly point N. It is
// served with direct I/O and attribute timeout 0: the kernel never caches
// it.
type appliedFile struct {
	gofs.Inode
	fs *filesystem
}

var (
	_ gofs.NodeGetattrer = (*appliedFile)(nil)
	_ gofs.NodeOpener    = (*appliedFile)(nil)
	_ gofs.NodeReader    = (*appliedFile)(nil)
)

func appliedContent(applied uint64) []byte {
	return strconv.AppendUint(nil, applied, 10)
}

// fillAttr reports the current content's size, so that a reader trusting
// the size reads it all.
func (f *appliedFile) fillAttr(a *fuse.Attr) {
	applied, _, at := f.fs.point()
	a.Ino = appliedIno
	a.Mode = s_IFREG | 0o444
	a.Nlink = 1
	a.Size = uint64(len(appliedContent(applied))) + 1
	a.Blksize = bs
	ns := at.UnixNano()
	a.Mtime, a.Mtimensec = uint64(ns/1e9), uint32(ns%1e9)
	a.Ctime, a.Ctimensec = a.Mtime, a.Mtimensec
	a.Atime, a.Atimensec = a.Mtime, a.Mtimensec
}

// Getattr implements gofs.NodeGetattrer.
func (f *appliedFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	f.fillAttr(&out.Attr) // timeout left 0: never cached
	return 0
}

// appliedHandle is an open .tricopy/applied. The content is taken at a
// read at offset 0 and kept for reads further on, so a reader reading in
// pieces gets one point.
type appliedHandle struct {
	mu      sync.Mutex
	content []byte
}

// Open implements gofs.NodeOpener.
func (f *appliedFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EROFS
	}
	return &appliedHandle{}, fuse.FOPEN_DIRECT_IO, 0
}

// Read implements gofs.NodeReader.
func (f *appliedFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := fh.(*appliedHandle)
	if !ok {
		return nil, syscall.EBADF
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if off == 0 || h.content == nil {
		applied, round, _ := f.fs.point()
		if err := f.fs.rep.waitSettled(ctx, round); err != nil {
			return nil, syscall.EINTR
		}
		h.content = append(appliedContent(applied), '\n')
	}
	if off >= int64(len(h.content)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(h.content[off:min(int64(len(h.content)), off+int64(len(dest)))]), 0
}
