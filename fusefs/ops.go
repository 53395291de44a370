package fusefs

import (
	"context"
	"fmt"
	"strconv"
	"syscall"

	"github.com/tricopy/tricopy/blockdev"
)

// maxLinks is the largest link count a file may have.
const maxLinks = 65000

// Attribute changes for setattr; nil fields are left alone.
type setattrIn struct {
	mode  *uint32
	uid   *uint32
	gid   *uint32
	size  *uint64
	atime *int64 // nanoseconds; timeNow means the current time
	mtime *int64
}

// timeNow in setattrIn asks for the current time.
const timeNow = -1 << 63

func typeOf(mode uint32) uint8 { return uint8((mode & s_IFMT) >> 12) }

func checkName(name string) error {
	if len(name) > maxNameLen {
		return syscall.ENAMETOOLONG
	}
	if !validName(name) {
		return syscall.EINVAL
	}
	return nil
}

// getattr returns inode ino.
func (fs *filesystem) getattr(ino uint32) (inode, error) {
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	return fs.loadInode(ino)
}

// lookupName resolves name in directory dir.
func (fs *filesystem) lookupName(dir uint32, name string) (uint32, inode, error) {
	if len(name) > maxNameLen {
		return 0, inode{}, syscall.ENAMETOOLONG
	}
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	ino, in, err := fs.resolveName(dir, name)
	fs.noteLookup(dir, name, ino, in.gen, err)
	return ino, in, err
}

// resolveName resolves name in directory dir; the caller holds fs.mu.
func (fs *filesystem) resolveName(dir uint32, name string) (uint32, inode, error) {
	di, err := fs.dir(dir)
	if err != nil {
		return 0, inode{}, err
	}
	s, ok := di.ents[name]
	if !ok {
		return 0, inode{}, syscall.ENOENT
	}
	in, err := fs.loadInode(s.ino)
	return s.ino, in, err
}

// parentDir loads directory dir in the tx for a change to its entries.
func (t *tx) parentDir(dir uint32) (*inode, error) {
	din, err := t.inode(dir)
	if err != nil {
		return nil, err
	}
	if !din.isDir() {
		return nil, syscall.ENOTDIR
	}
	if din.nlink == 0 {
		return nil, syscall.ENOENT // removed directory
	}
	return din, nil
}

// newInode allocates and initialises an inode.
func (t *tx) newInode(mode, uid, gid, rdev uint32) (uint32, *inode, error) {
	ino, err := t.allocInode()
	if err != nil {
		return 0, nil, err
	}
	t.fs.gen++
	in := &inode{mode: mode, uid: uid, gid: gid, nlink: 1, gen: t.fs.gen, rdev: rdev,
		atime: t.now, mtime: t.now, ctime: t.now}
	t.inodes[ino] = in
	return ino, in, nil
}

// mknod creates a file, device, fifo, socket or directory named name in dir.
func (fs *filesystem) mknod(ctx context.Context, dir uint32, name string, mode, rdev, uid, gid uint32) (ino uint32, out inode, err error) {
	if err := checkName(name); err != nil {
		return 0, inode{}, err
	}
	err = fs.update(ctx, func(t *tx) error {
		din, err := t.parentDir(dir)
		if err != nil {
			return err
		}
		if _, ok, err := t.lookup(dir, name); err != nil {
			return err
		} else if ok {
			return syscall.EEXIST
		}
		mode, gid := initOwner(din, mode, gid)
		var in *inode
		ino, in, err = t.newInode(mode, uid, gid, rdev)
		if err != nil {
			return err
		}
		if in.isDir() {
			in.nlink = 2
			in.parent = dir
			din.nlink++
		}
		if err := t.addEntry(dir, din, name, ino, typeOf(mode)); err != nil {
			return err
		}
		din.mtime, din.ctime = t.now, t.now
		out = *in
		return nil
	})
	return ino, out, err
}

// symlink creates a symbolic link name in dir pointing at target.
func (fs *filesystem) symlink(ctx context.Context, dir uint32, name, target string, uid, gid uint32) (ino uint32, out inode, err error) {
	if err := checkName(name); err != nil {
		return 0, inode{}, err
	}
	if len(target) == 0 || len(target) > maxSymlinkLen {
		return 0, inode{}, syscall.ENAMETOOLONG
	}
	err = fs.update(ctx, func(t *tx) error {
		din, err := t.parentDir(dir)
		if err != nil {
			return err
		}
		if _, ok, err := t.lookup(dir, name); err != nil {
			return err
		} else if ok {
			return syscall.EEXIST
		}
		mode, gid := initOwner(din, s_IFLNK|0o777, gid)
		var in *inode
		ino, in, err = t.newInode(mode, uid, gid, 0)
		if err != nil {
			return err
		}
		if _, err := t.writeAt(in, ino, []byte(target), 0); err != nil {
			return err
		}
		if err := t.addEntry(dir, din, name, ino, typeOf(in.mode)); err != nil {
			return err
		}
		din.mtime, din.ctime = t.now, t.now
		out = *in
		return nil
	})
	return ino, out, err
}

// readlink returns the target of symlink ino.
func (fs *filesystem) readlink(ino uint32) ([]byte, error) {
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	in, err := fs.loadInode(ino)
	if err != nil {
		return nil, err
	}
	if !in.isLink() {
		return nil, syscall.EINVAL
	}
	p := make([]byte, in.size)
	if _, err := fs.readAt(&in, ino, p, 0); err != nil {
		return nil, err
	}
	return p, nil
}

// tmpfile creates an unnamed regular file (O_TMPFILE), kept in the orphan
// directory until it is linked or closed.
func (fs *filesystem) tmpfile(ctx context.Context, dir uint32, mode, uid, gid uint32) (ino uint32, out inode, err error) {
	err = fs.update(ctx, func(t *tx) error {
		din, err := t.parentDir(dir)
		if err != nil {
			return err
		}
		mode, gid := initOwner(din, mode, gid)
		var in *inode
		ino, in, err = t.newInode(mode, uid, gid, 0)
		if err != nil {
			return err
		}
		in.nlink = 0
		if err := t.orphan(ino, in); err != nil {
			return err
		}
		out = *in
		newIno := ino
		// The caller holds the new file open (see open); counted under
		// fs.mu once the batch is committed.
		t.after = append(t.after, func() { t.fs.opens[newIno]++ })
		return nil
	})
	return ino, out, err
}

// link adds name in dir as a new link to ino.
func (fs *filesystem) link(ctx context.Context, ino, dir uint32, name string) (out inode, err error) {
	if err := checkName(name); err != nil {
		return inode{}, err
	}
	err = fs.update(ctx, func(t *tx) error {
		in, err := t.inode(ino)
		if err != nil {
			return err
		}
		din, err := t.parentDir(dir)
		if err != nil {
			return err
		}
		// Linux checks the new name before the file's type.
		if _, ok, err := t.lookup(dir, name); err != nil {
			return err
		} else if ok {
			return syscall.EEXIST
		}
		if in.isDir() {
			return syscall.EPERM
		}
		if in.nlink >= maxLinks {
			return syscall.EMLINK
		}
		if in.nlink == 0 {
			od, err := t.orphanDir()
			if err != nil {
				return err
			}
			if err := t.removeEntry(orphanIno, od, orphanName(ino)); err != nil {
				return err
			}
		}
		if err := t.addEntry(dir, din, name, ino, typeOf(in.mode)); err != nil {
			return err
		}
		in.nlink++
		in.ctime = t.now
		din.mtime, din.ctime = t.now, t.now
		out = *in
		return nil
	})
	return out, err
}

// orphanDir returns the orphan directory for a change to its entries.
func (t *tx) orphanDir() (*inode, error) { return t.inode(orphanIno) }

func orphanName(ino uint32) string { return strconv.FormatUint(uint64(ino), 10) }

// orphan puts ino (nlink 0, still open) in the orphan directory.
func (t *tx) orphan(ino uint32, in *inode) error {
	od, err := t.orphanDir()
	if err != nil {
		return err
	}
	if in.isDir() {
		in.parent = orphanIno
	}
	return t.addEntry(orphanIno, od, orphanName(ino), ino, typeOf(in.mode))
}

// dropLink handles an inode that lost a link: free it if it has none left
// and nobody holds it open; otherwise move it to the orphan directory.
func (t *tx) dropLink(ino uint32, in *inode) error {
	if in.nlink > 0 {
		return nil
	}
	if t.fs.opens[ino] > 0 {
		return t.orphan(ino, in)
	}
	return t.freeAll(ino, in)
}

// freeAll frees inode ino with its blocks and xattrs.
func (t *tx) freeAll(ino uint32, in *inode) error {
	if err := t.truncateBlocks(in, ino, 0); err != nil {
		return err
	}
	if err := t.freeXattrs(in); err != nil {
		return err
	}
	wasDir := in.isDir()
	*in = inode{}
	t.freeInode(ino)
	fs := t.fs
	t.after = append(t.after, func() {
		if wasDir {
			fs.dirMu.Lock()
			delete(fs.dirs, ino)
			fs.dirMu.Unlock()
		}
	})
	return nil
}

// reap frees an orphaned inode (nlink 0) and its orphan directory entry.
func (t *tx) reap(ino uint32) error {
	in, err := t.inode(ino)
	if err != nil {
		return err
	}
	if in.nlink != 0 {
		return corruptf("orphan inode %d has %d links", ino, in.nlink)
	}
	od, err := t.orphanDir()
	if err != nil {
		return err
	}
	if err := t.removeEntry(orphanIno, od, orphanName(ino)); err != nil {
		return err
	}
	return t.freeAll(ino, in)
}

// entry returns directory dir (for a change to its entries) and its entry
// name, or ENOENT.
func (t *tx) entry(dir uint32, name string) (*inode, dslot, error) {
	din, err := t.parentDir(dir)
	if err != nil {
		return nil, dslot{}, err
	}
	s, ok, err := t.lookup(dir, name)
	if err != nil {
		return nil, dslot{}, err
	}
	if !ok {
		return nil, dslot{}, syscall.ENOENT
	}
	return din, s, nil
}

// unlink removes the non-directory name from dir.
func (fs *filesystem) unlink(ctx context.Context, dir uint32, name string) error {
	return fs.update(ctx, func(t *tx) error {
		din, s, err := t.entry(dir, name)
		if err != nil {
			return err
		}
		if s.typ == typeOf(s_IFDIR) {
			return syscall.EISDIR
		}
		if err := t.removeEntry(dir, din, name); err != nil {
			return err
		}
		in, err := t.inode(s.ino)
		if err != nil {
			return err
		}
		in.nlink--
		in.ctime = t.now
		din.mtime, din.ctime = t.now, t.now
		return t.dropLink(s.ino, in)
	})
}

// rmdir removes the empty directory name from dir.
func (fs *filesystem) rmdir(ctx context.Context, dir uint32, name string) error {
	return fs.update(ctx, func(t *tx) error {
		din, s, err := t.entry(dir, name)
		if err != nil {
			return err
		}
		if s.typ != typeOf(s_IFDIR) {
			return syscall.ENOTDIR
		}
		if empty, err := t.isEmptyDir(s.ino); err != nil {
			return err
		} else if !empty {
			return syscall.ENOTEMPTY
		}
		if err := t.removeEntry(dir, din, name); err != nil {
			return err
		}
		in, err := t.inode(s.ino)
		if err != nil {
			return err
		}
		din.nlink--
		din.mtime, din.ctime = t.now, t.now
		in.nlink = 0
		in.ctime = t.now
		return t.dropLink(s.ino, in)
	})
}

// isAncestor reports whether directory a is dir or one of its ancestors.
func (t *tx) isAncestor(a, dir uint32) (bool, error) {
	for steps := 0; ; steps++ {
		if dir == a {
			return true, nil
		}
		if dir == rootIno {
			return false, nil
		}
		if uint64(steps) > t.fs.sb.inodes {
			return false, corruptf("directory %d: parent chain has a cycle", dir)
		}
		in, err := t.peek(dir)
		if err != nil {
			return false, err
		}
		dir = in.parent
	}
}

// Rename flags (linux/fs.h).
const (
	renameNoReplace = 1 << 0
	renameExchange  = 1 << 1
)

// rename moves dir/name to ndir/nname, in every POSIX case.
func (fs *filesystem) rename(ctx context.Context, dir uint32, name string, ndir uint32, nname string, flags uint32) error {
	if err := checkName(nname); err != nil {
		return err
	}
	if flags&^(renameNoReplace|renameExchange) != 0 || flags == renameNoReplace|renameExchange {
		return syscall.EINVAL
	}
	return fs.update(ctx, func(t *tx) error {
		din, err := t.parentDir(dir)
		if err != nil {
			return err
		}
		ndin, err := t.parentDir(ndir)
		if err != nil {
			return err
		}
		s, ok, err := t.lookup(dir, name)
		if err != nil {
			return err
		}
		if !ok {
			return syscall.ENOENT
		}
		ts, exists, err := t.lookup(ndir, nname)
		if err != nil {
			return err
		}
		isDir := typeOf(s_IFDIR)
		// A directory may not move into itself or below itself.
		if s.typ == isDir && dir != ndir {
			if below, err := t.isAncestor(s.ino, ndir); err != nil {
				return err
			} else if below {
				return syscall.EINVAL
			}
		}
		// Nor may the target be an ancestor of the source (as Linux, ENOTEMPTY).
		if exists && ts.typ == isDir && dir != ndir {
			if above, err := t.isAncestor(ts.ino, dir); err != nil {
				return err
			} else if above && flags&renameExchange == 0 {
				return syscall.ENOTEMPTY
			}
		}
		sin, err := t.inode(s.ino)
		if err != nil {
			return err
		}
		if flags&renameExchange != 0 {
			if !exists {
				return syscall.ENOENT
			}
			if ts.typ == isDir && dir != ndir {
				if below, err := t.isAncestor(ts.ino, dir); err != nil {
					return err
				} else if below {
					return syscall.EINVAL
				}
			}
			tin, err := t.inode(ts.ino)
			if err != nil {
				return err
			}
			if err := t.replaceEntry(dir, din, name, ts.ino, ts.typ); err != nil {
				return err
			}
			if err := t.replaceEntry(ndir, ndin, nname, s.ino, s.typ); err != nil {
				return err
			}
			if dir != ndir {
				if s.typ == isDir {
					sin.parent = ndir
					din.nlink--
					ndin.nlink++
				}
				if ts.typ == isDir {
					tin.parent = dir
					ndin.nlink--
					din.nlink++
				}
			}
			sin.ctime, tin.ctime = t.now, t.now
			din.mtime, din.ctime, ndin.mtime, ndin.ctime = t.now, t.now, t.now, t.now
			return nil
		}
		if exists && flags&renameNoReplace != 0 {
			return syscall.EEXIST
		}
		if exists && ts.ino == s.ino {
			return nil // both names are links to the same file
		}
		var tin *inode
		if exists {
			if tin, err = t.inode(ts.ino); err != nil {
				return err
			}
			switch {
			case s.typ == isDir && !tin.isDir():
				return syscall.ENOTDIR
			case s.typ != isDir && tin.isDir():
				return syscall.EISDIR
			case tin.isDir():
				if empty, err := t.isEmptyDir(ts.ino); err != nil {
					return err
				} else if !empty {
					return syscall.ENOTEMPTY
				}
			}
		}
		if err := t.removeEntry(dir, din, name); err != nil {
			return err
		}
		if exists {
			if err := t.replaceEntry(ndir, ndin, nname, s.ino, s.typ); err != nil {
				return err
			}
			tin.ctime = t.now
			if tin.isDir() {
				tin.nlink = 0
				ndin.nlink--
			} else {
				tin.nlink--
			}
			if err := t.dropLink(ts.ino, tin); err != nil {
				return err
			}
		} else if err := t.addEntry(ndir, ndin, nname, s.ino, s.typ); err != nil {
			return err
		}
		if s.typ == isDir && dir != ndir {
			sin.parent = ndir
			din.nlink--
			ndin.nlink++
		}
		sin.ctime = t.now
		din.mtime, din.ctime, ndin.mtime, ndin.ctime = t.now, t.now, t.now, t.now
		return nil
	})
}

// open records an open handle on ino and truncates it when asked.
func (fs *filesystem) open(ctx context.Context, ino uint32, trunc bool) error {
	if trunc {
		zero := uint64(0)
		if _, err := fs.setattr(ctx, ino, setattrIn{size: &zero}); err != nil {
			return err
		}
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if _, err := fs.loadInode(ino); err != nil {
		return err
	}
	fs.opens[ino]++
	return nil
}

// release drops an open handle; the last close of an unlinked file frees it.
func (fs *filesystem) release(ctx context.Context, ino uint32) error {
	fs.mu.Lock()
	fs.opens[ino]--
	n := fs.opens[ino]
	if n <= 0 {
		delete(fs.opens, ino)
	}
	readOnly := fs.readOnly // Promote may clear it
	fs.mu.Unlock()
	if n > 0 || readOnly {
		return nil
	}
	// Most closes are of linked files: decide that without a transaction.
	fs.mu.RLock()
	in, err := fs.loadInode(ino)
	fs.mu.RUnlock()
	if err != nil || in.nlink > 0 {
		return nil // already freed, or linked
	}
	return fs.update(ctx, func(t *tx) error {
		if t.fs.opens[ino] > 0 {
			return nil // reopened meanwhile
		}
		if in, err := t.peek(ino); err != nil || in.nlink > 0 {
			return nil // freed or linked again meanwhile
		}
		return t.reap(ino)
	})
}

// setattr changes attributes of ino and returns the new inode.
func (fs *filesystem) setattr(ctx context.Context, ino uint32, a setattrIn) (out inode, err error) {
	err = fs.update(ctx, func(t *tx) error {
		in, err := t.inode(ino)
		if err != nil {
			return err
		}
		if a.size != nil {
			if in.isDir() {
				return syscall.EISDIR
			}
			if !in.isReg() {
				return syscall.EINVAL
			}
			if err := t.truncate(in, ino, *a.size); err != nil {
				return err
			}
			in.mtime = t.now
		}
		if a.mode != nil {
			in.mode = in.mode&s_IFMT | *a.mode&0o7777
		}
		if a.uid != nil {
			in.uid = *a.uid
		}
		if a.gid != nil {
			in.gid = *a.gid
		}
		if a.atime != nil {
			in.atime = *a.atime
			if in.atime == timeNow {
				in.atime = t.now
			}
		}
		if a.mtime != nil {
			in.mtime = *a.mtime
			if in.mtime == timeNow {
				in.mtime = t.now
			}
		}
		in.ctime = t.now
		out = *in
		return nil
	})
	return out, err
}

// truncate sets the size of a regular file, freeing blocks past the end and
// zeroing the tail of the last block.
func (t *tx) truncate(in *inode, ino uint32, size uint64) error {
	if size > maxFileSize {
		return syscall.EFBIG
	}
	if size < in.size {
		if off := size % bs; off != 0 {
			lblk := size / bs
			e, err := lookupEntry(t, in, ino, lblk)
			if err != nil {
				return err
			}
			if e.blk != 0 {
				p := make([]byte, bs)
				if err := t.readData(e.blk, e.sum, p); err != nil {
					return err
				}
				clear(p[off:])
				if err := t.writeFileBlock(in, ino, lblk, p, false); err != nil {
					return err
				}
			}
		}
		if err := t.truncateBlocks(in, ino, ceilDiv(size, bs)); err != nil {
			return err
		}
	}
	in.size = size
	return nil
}

// writeAt writes p at off into the inode's blocks and grows its size.
func (t *tx) writeAt(in *inode, ino uint32, p []byte, off uint64) (int, error) {
	end := off + uint64(len(p))
	if end > maxFileSize || end < off {
		return 0, syscall.EFBIG
	}
	oldBlocks := ceilDiv(in.size, bs)
	// Whole blocks are cut from one allocation, in order: fewer
	// allocations, and a volume may write a run of them with one call
	// without copying (blockdev.FileVolume does, to its intent log and at
	// its checkpoint).
	var slab []byte
	done := 0
	for done < len(p) {
		pos := off + uint64(done)
		lblk, boff := pos/bs, int(pos%bs)
		n := min(bs-boff, len(p)-done)
		var blk []byte
		switch {
		case n < bs:
			blk = make([]byte, bs)
		case len(slab) == 0:
			slab = make([]byte, (len(p)-done)/bs*bs)
			fallthrough
		default:
			blk, slab = slab[:bs], slab[bs:]
		}
		if n < bs && lblk < oldBlocks {
			e, err := lookupEntry(t, in, ino, lblk)
			if err != nil {
				return 0, err
			}
			if e.blk != 0 {
				if err := t.readData(e.blk, e.sum, blk); err != nil {
					return 0, err
				}
			}
		}
		copy(blk[boff:], p[done:done+n])
		if err := t.writeFileBlock(in, ino, lblk, blk, false); err != nil {
			return 0, err
		}
		done += n
	}
	if end > in.size {
		in.size = end
	}
	return done, nil
}

// write writes data at off in regular file ino.
func (fs *filesystem) write(ctx context.Context, ino uint32, data []byte, off int64) (int, error) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	if len(data) == 0 {
		return 0, nil
	}
	var n int
	err := fs.update(ctx, func(t *tx) error {
		in, err := t.inode(ino)
		if err != nil {
			return err
		}
		if !in.isReg() {
			return syscall.EISDIR
		}
		if n, err = t.writeAt(in, ino, data, uint64(off)); err != nil {
			return err
		}
		in.mtime, in.ctime = t.now, t.now
		return nil
	})
	return n, err
}

// read reads regular file ino at off into p.
func (fs *filesystem) read(ino uint32, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, syscall.EINVAL
	}
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	in, err := fs.loadInode(ino)
	if err != nil {
		return 0, err
	}
	return fs.readAt(&in, ino, p, uint64(off))
}

// readAt reads committed file content; the caller holds fs.mu. Full
// blocks go straight into p; physically consecutive blocks are read with
// one device call.
func (fs *filesystem) readAt(in *inode, ino uint32, p []byte, off uint64) (int, error) {
	if off >= in.size || len(p) == 0 {
		return 0, nil
	}
	p = p[:min(uint64(len(p)), in.size-off)]
	first := off / bs
	n := int((off+uint64(len(p))-1)/bs - first + 1)
	ents := make([]entry, n)
	if err := fileEntries(fs, in, ino, first, ents); err != nil {
		return 0, err
	}
	// Blocks [0, direct) of the range land in p itself; the rest (a
	// partial head or tail) go through tmp.
	direct := 0
	if off%bs == 0 {
		direct = len(p) / bs
	}
	var tmp []byte
	for i := 0; i < n; {
		if ents[i].blk == 0 || ents[i].sum == zeroSum {
			if i < direct {
				clear(p[i*bs : (i+1)*bs])
			} else {
				fs.copyOut(p, off, first, i, make([]byte, bs))
			}
			i++
			continue
		}
		j := i + 1
		for j < n && j-i < maxRunBlocks && ents[j].blk == ents[j-1].blk+1 && ents[j].sum != zeroSum && (j < direct) == (i < direct) {
			j++
		}
		var buf []byte
		if i < direct {
			buf = p[i*bs : j*bs]
		} else {
			if len(tmp) < (j-i)*bs {
				tmp = make([]byte, (j-i)*bs)
			}
			buf = tmp[:(j-i)*bs]
		}
		if err := fs.readRun(uint64(ents[i].blk), buf); err != nil {
			return 0, err
		}
		for k := i; k < j; k++ {
			blk := buf[(k-i)*bs : (k-i+1)*bs]
			if got := crc(blk); got != ents[k].sum {
				return 0, corruptf("inode %d block %d (logical %d): checksum %08x, want %08x", ino, ents[k].blk, first+uint64(k), got, ents[k].sum)
			}
			if k >= direct {
				fs.copyOut(p, off, first, k, blk)
			}
		}
		i = j
	}
	return len(p), nil
}

// maxRunBlocks bounds one device read.
const maxRunBlocks = 256

// copyOut copies the part of logical block first+k (content blk) that
// falls in the read of p at off.
func (fs *filesystem) copyOut(p []byte, off, first uint64, k int, blk []byte) {
	start := (first + uint64(k)) * bs // file offset of the block
	lo, hi := max(start, off), min(start+bs, off+uint64(len(p)))
	copy(p[lo-off:hi-off], blk[lo-start:hi-start])
}

// rangeReader is a device that reads consecutive blocks in one call.
type rangeReader interface {
	// ReadBlocks reads len(p)/BlockSize blocks starting at first into p.
	ReadBlocks(first uint64, p []byte) error
}

// readRun reads consecutive blocks from the device.
func (fs *filesystem) readRun(first uint64, p []byte) error {
	if err := readBlocks(fs.dev, first, p); err != nil {
		return fmt.Errorf("read blocks %d-%d: %w", first, first+uint64(len(p)/bs)-1, err)
	}
	return nil
}

// readBlocks reads consecutive blocks from r, with one call when r is a
// rangeReader, else block by block.
func readBlocks(r blockdev.Reader, first uint64, p []byte) error {
	if rr, ok := r.(rangeReader); ok {
		return rr.ReadBlocks(first, p)
	}
	for i := 0; i < len(p)/bs; i++ {
		if err := r.ReadBlock(first+uint64(i), p[i*bs:(i+1)*bs]); err != nil {
			return err
		}
	}
	return nil
}

// fileEntries fills out with the map entries of logical blocks first,
// first+1, ...; each leaf map block is read once.
func fileEntries(r metaReader, in *inode, ino uint32, first uint64, out []entry) error {
	var leafKey [4]int
	var leaf []byte
	haveLeaf := false
	for i := range out {
		level, root, idx, err := mapPath(first + uint64(i))
		if err != nil {
			return err
		}
		if level == 0 {
			out[i] = in.direct[root]
			continue
		}
		// The leaf is named by the level and every index but the last.
		key := [4]int{level, idx[0], idx[1], idx[2]}
		key[level] = 0
		if !haveLeaf || key != leafKey {
			leafKey, haveLeaf = key, true
			if leaf, err = leafBlock(r, in, ino, level, root, idx); err != nil {
				return err
			}
		}
		if leaf == nil {
			out[i] = entry{}
			continue
		}
		out[i] = getEntry(leaf[8*idx[level-1]:])
	}
	return nil
}

// Fallocate modes (linux/falloc.h).
const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
)

// allocate implements fallocate: mode 0 and KEEP_SIZE allocate zeroed
// blocks for holes (KEEP_SIZE only up to the current size: blocks past the
// end are not preallocated); PUNCH_HOLE|KEEP_SIZE frees whole blocks and
// zeroes partial ones.
func (fs *filesystem) allocate(ctx context.Context, ino uint32, off, length uint64, mode uint32) error {
	switch mode {
	case 0, fallocKeepSize, fallocPunchHole | fallocKeepSize:
	default:
		return syscall.EOPNOTSUPP
	}
	end := off + length
	if length == 0 || end < off {
		return syscall.EINVAL
	}
	if end > maxFileSize {
		return syscall.EFBIG
	}
	return fs.update(ctx, func(t *tx) error {
		in, err := t.inode(ino)
		if err != nil {
			return err
		}
		if !in.isReg() {
			return syscall.ENODEV
		}
		if mode&fallocPunchHole != 0 {
			end = min(end, in.size)
			for pos := off; pos < end; {
				lblk, boff := pos/bs, pos%bs
				n := min(bs-boff, end-pos)
				e, err := lookupEntry(t, in, ino, lblk)
				if err != nil {
					return err
				}
				if e.blk != 0 {
					if n == bs {
						t.freeBlock(e.blk)
						in.blocks--
						if err := t.setEntry(in, ino, lblk, entry{}); err != nil {
							return err
						}
					} else {
						p := make([]byte, bs)
						if err := t.readData(e.blk, e.sum, p); err != nil {
							return err
						}
						clear(p[boff : boff+n])
						if err := t.writeFileBlock(in, ino, lblk, p, false); err != nil {
							return err
						}
					}
				}
				pos += n
			}
			in.mtime, in.ctime = t.now, t.now
			return nil
		}
		limit := end
		if mode&fallocKeepSize != 0 {
			limit = min(end, in.size)
		}
		// Holes get blocks that read as zeros (entry CRC zeroSum) without
		// being written: the batch holds only map and bitmap blocks.
		for lblk := off / bs; lblk*bs < limit; lblk++ {
			e, err := lookupEntry(t, in, ino, lblk)
			if err != nil {
				return err
			}
			if e.blk == 0 {
				blk, err := t.allocBlock(uint32(t.nextBlock))
				if err != nil {
					return err
				}
				in.blocks++
				if err := t.setEntry(in, ino, lblk, entry{blk: blk, sum: zeroSum}); err != nil {
					return err
				}
			}
		}
		if mode&fallocKeepSize == 0 && end > in.size {
			in.size = end
		}
		in.ctime = t.now
		return nil
	})
}

// Lseek whences beyond io.Seek*.
const (
	seekData = 3
	seekHole = 4
)

// lseek implements SEEK_DATA and SEEK_HOLE.
func (fs *filesystem) lseek(ino uint32, off uint64, whence uint32) (uint64, error) {
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	in, err := fs.loadInode(ino)
	if err != nil {
		return 0, err
	}
	if off >= in.size {
		return 0, syscall.ENXIO
	}
	for lblk := off / bs; lblk*bs < in.size; lblk++ {
		e, err := lookupEntry(fs, &in, ino, lblk)
		if err != nil {
			return 0, err
		}
		if (whence == seekData) == (e.blk != 0) {
			return max(off, lblk*bs), nil
		}
	}
	if whence == seekData {
		return 0, syscall.ENXIO
	}
	return in.size, nil
}

// statfs reports sizes and free counts.
type statfsOut struct {
	blocks, freeBlocks, inodes, freeInodes uint64
}

func (fs *filesystem) statfs() statfsOut {
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	return statfsOut{
		blocks:     fs.sb.blocks,
		freeBlocks: fs.sb.blocks - fs.bmap.used,
		inodes:     fs.sb.inodes,
		freeInodes: fs.sb.inodes - fs.imap.used,
	}
}
