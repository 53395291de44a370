package fusefs

import (
	"context"
	"errors"
	"slices"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// node is the go-fuse node of one inode. go-fuse calls its methods from
// many goroutines at once; all state lives in the filesystem engine.
type node struct {
	gofs.Inode
	fs  *filesystem
	ino uint32
	gen uint32
}

// handle is an open file; it keeps an unlinked file alive until released.
type handle struct{ released bool }

var (
	_ gofs.NodeGetattrer      = (*node)(nil)
	_ gofs.NodeSetattrer      = (*node)(nil)
	_ gofs.NodeLookuper       = (*node)(nil)
	_ gofs.NodeReaddirer      = (*node)(nil)
	_ gofs.NodeOpendirHandler = (*node)(nil)
	_ gofs.NodeMkdirer        = (*node)(nil)
	_ gofs.NodeMknoder        = (*node)(nil)
	_ gofs.NodeCreater        = (*node)(nil)
	_ gofs.NodeTmpfiler       = (*node)(nil)
	_ gofs.NodeSymlinker      = (*node)(nil)
	_ gofs.NodeReadlinker     = (*node)(nil)
	_ gofs.NodeLinker         = (*node)(nil)
	_ gofs.NodeUnlinker       = (*node)(nil)
	_ gofs.NodeRmdirer        = (*node)(nil)
	_ gofs.NodeRenamer        = (*node)(nil)
	_ gofs.NodeOpener         = (*node)(nil)
	_ gofs.NodeReader         = (*node)(nil)
	_ gofs.NodeWriter         = (*node)(nil)
	_ gofs.NodeFlusher        = (*node)(nil)
	_ gofs.NodeFsyncer        = (*node)(nil)
	_ gofs.NodeReleaser       = (*node)(nil)
	_ gofs.NodeStatfser       = (*node)(nil)
	_ gofs.NodeGetxattrer     = (*node)(nil)
	_ gofs.NodeSetxattrer     = (*node)(nil)
	_ gofs.NodeRemovexattrer  = (*node)(nil)
	_ gofs.NodeListxattrer    = (*node)(nil)
	_ gofs.NodeAllocater      = (*node)(nil)
	_ gofs.NodeLseeker        = (*node)(nil)
)

// toErrno maps an engine error to the errno the kernel sees. It is the one
// place where that happens; errors that are not errnos (I/O, corruption, an
// unacknowledged batch) become EIO and are logged.
func (n *node) toErrno(op string, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) && !errors.Is(err, errAck) {
		if errno == syscall.ESTALE {
			return syscall.ENOENT
		}
		return errno
	}
	n.fs.log.Error("filesystem operation failed", "op", op, "ino", n.ino, "err", err)
	return syscall.EIO
}

// child makes the go-fuse node of inode ino and fills the entry reply.
func (n *node) child(ctx context.Context, ino uint32, in *inode, out *fuse.EntryOut) *gofs.Inode {
	fillAttr(ino, in, &out.Attr)
	n.fs.setEntryTimeouts(out)
	c := &node{fs: n.fs, ino: ino, gen: in.gen}
	return n.NewInode(ctx, c, gofs.StableAttr{Mode: in.mode & s_IFMT, Ino: uint64(ino), Gen: uint64(in.gen)})
}

func fillAttr(ino uint32, in *inode, a *fuse.Attr) {
	a.Ino = uint64(ino)
	a.Size = in.size
	a.Blocks = in.blocks * (bs / 512)
	a.Atime, a.Atimensec = uint64(in.atime/1e9), uint32(in.atime%1e9)
	a.Mtime, a.Mtimensec = uint64(in.mtime/1e9), uint32(in.mtime%1e9)
	a.Ctime, a.Ctimensec = uint64(in.ctime/1e9), uint32(in.ctime%1e9)
	a.Mode = in.mode
	a.Nlink = in.nlink
	a.Uid, a.Gid = in.uid, in.gid
	a.Rdev = in.rdev
	a.Blksize = bs
}

func caller(ctx context.Context) (uid, gid uint32) {
	if c, ok := fuse.FromContext(ctx); ok {
		return c.Uid, c.Gid
	}
	return 0, 0
}

// Getattr implements gofs.NodeGetattrer.
func (n *node) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	in, err := n.fs.getattr(n.ino)
	if err != nil {
		return n.toErrno("getattr", err)
	}
	fillAttr(n.ino, &in, &out.Attr)
	n.fs.setAttrTimeout(out)
	return 0
}

// Setattr implements gofs.NodeSetattrer.
func (n *node) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	var a setattrIn
	if m, ok := in.GetMode(); ok {
		a.mode = &m
	}
	if u, ok := in.GetUID(); ok {
		a.uid = &u
	}
	if g, ok := in.GetGID(); ok {
		a.gid = &g
	}
	if s, ok := in.GetSize(); ok {
		a.size = &s
	}
	if in.Valid&fuse.FATTR_ATIME != 0 {
		t := int64(timeNow)
		if in.Valid&fuse.FATTR_ATIME_NOW == 0 {
			t = int64(in.Atime)*1e9 + int64(in.Atimensec)
		}
		a.atime = &t
	}
	if in.Valid&fuse.FATTR_MTIME != 0 {
		t := int64(timeNow)
		if in.Valid&fuse.FATTR_MTIME_NOW == 0 {
			t = int64(in.Mtime)*1e9 + int64(in.Mtimensec)
		}
		a.mtime = &t
	}
	res, err := n.fs.setattr(ctx, n.ino, a)
	if err != nil {
		return n.toErrno("setattr", err)
	}
	fillAttr(n.ino, &res, &out.Attr)
	return 0
}

// Lookup implements gofs.NodeLookuper.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if ch := n.lookupMeta(ctx, name, out); ch != nil {
		return ch, 0
	}
	ino, in, err := n.fs.lookupName(n.ino, name)
	if err != nil {
		return nil, n.toErrno("lookup", err)
	}
	return n.child(ctx, ino, &in, out), 0
}

// OpendirHandle implements gofs.NodeOpendirHandler: an open directory
// keeps a removed directory alive (fstat works) until it is closed.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if err := n.fs.open(ctx, n.ino, false); err != nil {
		return nil, 0, n.toErrno("opendir", err)
	}
	return &dirHandle{n: n}, 0, 0
}

// Readdir implements gofs.NodeReaddirer (used by go-fuse internally; the
// kernel reads through dirHandle).
func (n *node) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	list, errno := n.listing()
	if errno != 0 {
		return nil, errno
	}
	return gofs.NewListDirStream(list), 0
}

// listing returns the entries of the directory with "." and "..".
func (n *node) listing() ([]fuse.DirEntry, syscall.Errno) {
	n.fs.mu.RLock()
	ents, err := n.fs.readdir(n.ino)
	n.fs.mu.RUnlock()
	if errors.Is(err, errStale) {
		return nil, 0 // removed while open: empty
	}
	if err != nil {
		return nil, n.toErrno("readdir", err)
	}
	list := make([]fuse.DirEntry, 0, len(ents)+2)
	list = append(list, fuse.DirEntry{Name: ".", Mode: s_IFDIR, Ino: uint64(n.ino)}, fuse.DirEntry{Name: "..", Mode: s_IFDIR})
	for _, d := range ents {
		list = append(list, fuse.DirEntry{Name: d.name, Mode: uint32(d.typ) << 12, Ino: uint64(d.ino)})
	}
	return list, 0
}

// dirHandle is an open directory. The listing is a snapshot taken at the
// first read (and again at rewinddir): names added or removed later may not
// be seen, every other name is returned exactly once, and offsets within
// the snapshot are stable for seekdir. go-fuse serialises calls on one
// handle.
type dirHandle struct {
	n        *node
	ents     []fuse.DirEntry
	loaded   bool
	idx      int
	released bool
}

var (
	_ gofs.FileReaddirenter = (*dirHandle)(nil)
	_ gofs.FileSeekdirer    = (*dirHandle)(nil)
	_ gofs.FileReleasedirer = (*dirHandle)(nil)
	_ gofs.FileFsyncdirer   = (*dirHandle)(nil)
)

// Readdirent implements gofs.FileReaddirenter.
func (h *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if !h.loaded {
		ents, errno := h.n.listing()
		if errno != 0 {
			return nil, errno
		}
		h.ents, h.loaded = ents, true
	}
	if h.idx >= len(h.ents) {
		return nil, 0
	}
	e := h.ents[h.idx]
	h.idx++
	e.Off = uint64(h.idx)
	return &e, 0
}

// Seekdir implements gofs.FileSeekdirer. Offset 0 (rewinddir) takes a
// fresh snapshot.
func (h *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off == 0 {
		h.loaded, h.ents = false, nil
	} else if off > uint64(len(h.ents)) {
		return syscall.EINVAL
	}
	h.idx = int(off)
	return 0
}

// Releasedir implements gofs.FileReleasedirer.
func (h *dirHandle) Releasedir(ctx context.Context, flags uint32) {
	if h.released {
		return
	}
	h.released = true
	if err := h.n.fs.release(context.Background(), h.n.ino); err != nil {
		h.n.toErrno("releasedir", err)
	}
}

// Fsyncdir implements gofs.FileFsyncdirer.
func (h *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	return h.n.toErrno("fsyncdir", h.n.fs.sync(ctx))
}

// Mkdir implements gofs.NodeMkdirer.
func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	uid, gid := caller(ctx)
	ino, in, err := n.fs.mknod(ctx, n.ino, name, s_IFDIR|mode&0o7777, 0, uid, gid)
	if err != nil {
		return nil, n.toErrno("mkdir", err)
	}
	return n.child(ctx, ino, &in, out), 0
}

// Mknod implements gofs.NodeMknoder.
func (n *node) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	switch mode & s_IFMT {
	case s_IFREG, s_IFIFO, s_IFCHR, s_IFBLK, s_IFSOCK:
	default:
		return nil, syscall.EINVAL
	}
	uid, gid := caller(ctx)
	ino, in, err := n.fs.mknod(ctx, n.ino, name, mode, dev, uid, gid)
	if err != nil {
		return nil, n.toErrno("mknod", err)
	}
	return n.child(ctx, ino, &in, out), 0
}

// Create implements gofs.NodeCreater.
func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	uid, gid := caller(ctx)
	ino, in, err := n.fs.mknod(ctx, n.ino, name, s_IFREG|mode&0o7777, 0, uid, gid)
	if errors.Is(err, syscall.EEXIST) && flags&syscall.O_EXCL == 0 {
		// Created by someone else since the kernel looked: open it. The
		// kernel checked only that the caller may create in the
		// directory, so check the caller may open the file.
		if ino, in, err = n.fs.lookupName(n.ino, name); err == nil && !in.isReg() {
			err = syscall.EISDIR
		}
		if err == nil && !mayOpen(&in, uid, gid, openAccess(flags)) {
			err = syscall.EACCES
		}
		if err == nil {
			err = n.fs.open(ctx, ino, flags&syscall.O_TRUNC != 0)
		}
		if err == nil {
			in, err = n.fs.getattr(ino)
		}
		if err != nil {
			return nil, nil, 0, n.toErrno("create", err)
		}
		return n.child(ctx, ino, &in, out), &handle{}, 0, 0
	}
	if err != nil {
		return nil, nil, 0, n.toErrno("create", err)
	}
	if err := n.fs.open(ctx, ino, false); err != nil {
		return nil, nil, 0, n.toErrno("create", err)
	}
	return n.child(ctx, ino, &in, out), &handle{}, 0, 0
}

// Tmpfile implements gofs.NodeTmpfiler.
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	uid, gid := caller(ctx)
	ino, in, err := n.fs.tmpfile(ctx, n.ino, s_IFREG|mode&0o7777, uid, gid)
	if err != nil {
		return nil, nil, 0, n.toErrno("tmpfile", err)
	}
	fillAttr(ino, &in, &out.Attr)
	n.fs.setEntryTimeouts(out)
	c := &node{fs: n.fs, ino: ino, gen: in.gen}
	child := n.NewInode(ctx, c, gofs.StableAttr{Mode: s_IFREG, Ino: uint64(ino), Gen: uint64(in.gen)})
	return child, &handle{}, 0, 0
}

// Symlink implements gofs.NodeSymlinker.
func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	uid, gid := caller(ctx)
	ino, in, err := n.fs.symlink(ctx, n.ino, name, target, uid, gid)
	if err != nil {
		return nil, n.toErrno("symlink", err)
	}
	return n.child(ctx, ino, &in, out), 0
}

// Readlink implements gofs.NodeReadlinker.
func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	p, err := n.fs.readlink(n.ino)
	return p, n.toErrno("readlink", err)
}

// Link implements gofs.NodeLinker.
func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	t, ok := target.(*node)
	if !ok {
		return nil, syscall.EXDEV
	}
	in, err := n.fs.link(ctx, t.ino, n.ino, name)
	if err != nil {
		return nil, n.toErrno("link", err)
	}
	return n.child(ctx, t.ino, &in, out), 0
}

// Unlink implements gofs.NodeUnlinker.
func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	return n.toErrno("unlink", n.fs.unlink(ctx, n.ino, name))
}

// Rmdir implements gofs.NodeRmdirer.
func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	return n.toErrno("rmdir", n.fs.rmdir(ctx, n.ino, name))
}

// Rename implements gofs.NodeRenamer.
func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	p, ok := newParent.(*node)
	if !ok {
		return syscall.EXDEV
	}
	return n.toErrno("rename", n.fs.rename(ctx, n.ino, name, p.ino, newName, flags))
}

// Open implements gofs.NodeOpener.
func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if err := n.fs.open(ctx, n.ino, flags&syscall.O_TRUNC != 0); err != nil {
		return nil, 0, n.toErrno("open", err)
	}
	return &handle{}, 0, 0
}

// Release implements gofs.NodeReleaser.
func (n *node) Release(ctx context.Context, f gofs.FileHandle) syscall.Errno {
	h, ok := f.(*handle)
	if !ok || h.released {
		return 0
	}
	h.released = true
	// The kernel does not wait for RELEASE; use a context of our own.
	return n.toErrno("release", n.fs.release(context.WithoutCancel(ctx), n.ino))
}

// Read implements gofs.NodeReader.
func (n *node) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	k, err := n.fs.read(n.ino, dest, off)
	if err != nil {
		return nil, n.toErrno("read", err)
	}
	// A vector result goes to the kernel with one writev. go-fuse first
	// tries a splice for a plain data result, which costs a pipe and
	// three system calls before it falls back to the same writev.
	return fuse.ReadResultVector([][]byte{dest[:k]}), 0
}

// Write implements gofs.NodeWriter.
func (n *node) Write(ctx context.Context, f gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	k, err := n.fs.write(ctx, n.ino, data, off)
	if err != nil {
		return 0, n.toErrno("write", err)
	}
	return uint32(k), 0
}

// Flush implements gofs.NodeFlusher. Writes are committed when they return,
// so there is nothing to flush.
func (n *node) Flush(ctx context.Context, f gofs.FileHandle) syscall.Errno { return 0 }

// Fsync implements gofs.NodeFsyncer.
func (n *node) Fsync(ctx context.Context, f gofs.FileHandle, flags uint32) syscall.Errno {
	return n.toErrno("fsync", n.fs.sync(ctx))
}

// Statfs implements gofs.NodeStatfser.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	s := n.fs.statfs()
	out.Blocks, out.Bfree, out.Bavail = s.blocks, s.freeBlocks, s.freeBlocks
	out.Files, out.Ffree = s.inodes, s.freeInodes
	out.Bsize, out.Frsize, out.NameLen = bs, bs, maxNameLen
	return 0
}

// Getxattr implements gofs.NodeGetxattrer.
func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	v, err := n.fs.getxattr(n.ino, attr)
	if err != nil {
		return 0, n.toErrno("getxattr", err)
	}
	if len(dest) == 0 {
		return uint32(len(v)), 0
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

// Setxattr implements gofs.NodeSetxattrer.
func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if data == nil {
		data = []byte{}
	}
	return n.toErrno("setxattr", n.fs.setxattr(ctx, n.ino, attr, data, flags))
}

// Removexattr implements gofs.NodeRemovexattrer.
func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return n.toErrno("removexattr", n.fs.setxattr(ctx, n.ino, attr, nil, 0))
}

// Listxattr implements gofs.NodeListxattrer.
func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	names, err := n.fs.listxattr(n.ino)
	if err != nil {
		return 0, n.toErrno("listxattr", err)
	}
	if uid, _ := caller(ctx); uid != 0 {
		// As Linux: trusted.* names are listed only to a privileged caller.
		names = slices.DeleteFunc(names, func(s string) bool { return strings.HasPrefix(s, "trusted.") })
	}
	size := 0
	for _, s := range names {
		size += len(s) + 1
	}
	if len(dest) == 0 {
		return uint32(size), 0
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	off := 0
	for _, s := range names {
		off += copy(dest[off:], s)
		dest[off] = 0
		off++
	}
	return uint32(size), 0
}

// Allocate implements gofs.NodeAllocater.
func (n *node) Allocate(ctx context.Context, f gofs.FileHandle, off uint64, size uint64, mode uint32) syscall.Errno {
	return n.toErrno("fallocate", n.fs.allocate(ctx, n.ino, off, size, mode))
}

// Lseek implements gofs.NodeLseeker (SEEK_DATA and SEEK_HOLE; the kernel
// handles the other whences).
func (n *node) Lseek(ctx context.Context, f gofs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	if whence != seekData && whence != seekHole {
		return 0, syscall.EINVAL
	}
	o, err := n.fs.lseek(n.ino, off, whence)
	return o, n.toErrno("lseek", err)
}

// attrTimeout is how long the kernel may cache attributes and entries. The
// filesystem is the only writer of a primary volume, so the kernel's view
// can only go stale through our own operations, which it sees.
const attrTimeout = time.Second
