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

// xattrNamespaces are the prefixes of the attribute names the filesystem
// stores, those Linux filesystems have handlers for. The kernel checks
// access to each (user: the file's permission bits; trusted: CAP_SYS_ADMIN;
// security: the security modules), but passes other names to the
// filesystem unchecked (system.*: none at all), so the filesystem refuses
// them, as ext4 does. POSIX ACL names (system.posix_acl_*) never reach it:
// the kernel refuses them, ACLs not being enabled.
var xattrNamespaces = []string{"user.", "trusted.", "security."}

// checkXattrName refuses an attribute name outside xattrNamespaces
// (EOPNOTSUPP) or one that is a bare prefix (EINVAL), as ext4.
func checkXattrName(name string) error {
	for _, ns := range xattrNamespaces {
		if strings.HasPrefix(name, ns) {
			if len(name) == len(ns) {
				return syscall.EINVAL
			}
			return nil
		}
	}
	return syscall.EOPNOTSUPP
}

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
	if err := checkXattrName(name); err != nil {
		return nil, err
	}
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
	if err := checkXattrName(name); err != nil {
		return err
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
