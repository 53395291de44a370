package fusefs

import (
	"context"
	"slices"
	"strings"
	"syscall"
)

// Setxattr flags (linux/xattr.h).
const (
	xattrCreate  = 1
	xattrReplace = 2
)

// xattrs returns the extended attributes of in, through r (committed state
// or a tx).
func (fs *filesystem) xattrs(r metaReader, dataRead func(blk, sum uint32, p []byte) error, in *inode, ino uint32) ([]xattr, error) {
	if in.xattr == 0 {
		return nil, nil
	}
	var xin inode
	if t, ok := r.(*tx); ok {
		p, err := t.inode(in.xattr)
		if err != nil {
			return nil, err
		}
		xin = *p
	} else {
		var err error
		if xin, err = fs.loadInode(in.xattr); err != nil {
			return nil, err
		}
	}
	if xin.flags&flagXattr == 0 || xin.size > maxXattrStream {
		return nil, corruptf("inode %d: xattr inode %d is not an xattr stream", ino, in.xattr)
	}
	p := make([]byte, xin.size)
	blk := make([]byte, bs)
	for lblk := uint64(0); lblk*bs < xin.size; lblk++ {
		if err := readFileBlock(r, dataRead, &xin, in.xattr, lblk, blk); err != nil {
			return nil, err
		}
		copy(p[lblk*bs:], blk)
	}
	return decodeXattrs(p, ino)
}

// getxattr returns the value of attribute name of ino.
func (fs *filesystem) getxattr(ino uint32, name string) ([]byte, error) {
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	in, err := fs.loadInode(ino)
	if err != nil {
		return nil, err
	}
	xs, err := fs.xattrs(fs, fs.readData, &in, ino)
	if err != nil {
		return nil, err
	}
	for _, x := range xs {
		if x.name == name {
			return x.value, nil
		}
	}
	return nil, syscall.ENODATA
}

// listxattr returns the attribute names of ino.
func (fs *filesystem) listxattr(ino uint32) ([]string, error) {
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	in, err := fs.loadInode(ino)
	if err != nil {
		return nil, err
	}
	xs, err := fs.xattrs(fs, fs.readData, &in, ino)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(xs))
	for i, x := range xs {
		names[i] = x.name
	}
	return names, nil
}

// setxattr sets (value != nil) or removes (value == nil) attribute name.
func (fs *filesystem) setxattr(ctx context.Context, ino uint32, name string, value []byte, flags uint32) error {
	if len(name) == 0 || len(name) > maxNameLen {
		return syscall.ERANGE
	}
	if len(value) > maxXattrValue {
		return syscall.E2BIG
	}
	return fs.update(ctx, func(t *tx) error {
		in, err := t.inode(ino)
		if err != nil {
			return err
		}
		if strings.HasPrefix(name, "user.") && !in.isReg() && !in.isDir() {
			return syscall.EPERM // as the kernel: user attributes only on files and directories
		}
		xs, err := t.fs.xattrs(t, t.readData, in, ino)
		if err != nil {
			return err
		}
		i := slices.IndexFunc(xs, func(x xattr) bool { return x.name == name })
		switch {
		case value == nil && i < 0:
			return syscall.ENODATA
		case value == nil:
			xs = slices.Delete(xs, i, i+1)
		case i >= 0 && flags&xattrCreate != 0:
			return syscall.EEXIST
		case i < 0 && flags&xattrReplace != 0:
			return syscall.ENODATA
		case i >= 0:
			xs[i].value = slices.Clone(value)
		default:
			xs = append(xs, xattr{name: name, value: slices.Clone(value)})
		}
		in.ctime = t.now
		return t.storeXattrs(in, ino, xs)
	})
}

// storeXattrs rewrites the xattr stream of in.
func (t *tx) storeXattrs(in *inode, ino uint32, xs []xattr) error {
	if len(xs) == 0 {
		return t.freeXattrs(in)
	}
	p := encodeXattrs(xs)
	if len(p) > maxXattrStream {
		return syscall.ENOSPC
	}
	var xin *inode
	if in.xattr == 0 {
		xino, x, err := t.newInode(s_IFREG, 0, 0, 0)
		if err != nil {
			return err
		}
		x.flags = flagXattr
		x.parent = ino
		in.xattr, xin = xino, x
	} else {
		var err error
		if xin, err = t.inode(in.xattr); err != nil {
			return err
		}
	}
	if err := t.truncate(xin, in.xattr, 0); err != nil {
		return err
	}
	if _, err := t.writeAt(xin, in.xattr, p, 0); err != nil {
		return err
	}
	xin.ctime = t.now
	return nil
}

// freeXattrs frees the xattr inode of in, if it has one.
func (t *tx) freeXattrs(in *inode) error {
	if in.xattr == 0 {
		return nil
	}
	xin, err := t.inode(in.xattr)
	if err != nil {
		return err
	}
	if err := t.truncateBlocks(xin, in.xattr, 0); err != nil {
		return err
	}
	*xin = inode{}
	t.freeInode(in.xattr)
	in.xattr = 0
	return nil
}
