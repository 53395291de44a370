package fusefs

import "syscall"

// What the filesystem itself decides about ownership and permissions; the
// kernel checks the rest (default_permissions, see MountArgs).

// initOwner returns the mode and group of a new inode of the given mode
// that a caller with group gid makes in directory din, as Linux's
// inode_init_owner: in a setgid directory every new inode takes the
// directory's group, and a new subdirectory is setgid too. The kernel has
// already cleared a setgid bit the caller may not set on a new file
// (vfs_prepare_mode).
func initOwner(din *inode, mode, gid uint32) (uint32, uint32) {
	if din.mode&syscall.S_ISGID == 0 {
		return mode, gid
	}
	if mode&s_IFMT == s_IFDIR {
		mode |= syscall.S_ISGID
	}
	return mode, din.gid
}

// Access bits of mayOpen, as in a mode's "other" triple.
const (
	accRead  = 4
	accWrite = 2
)

// openAccess returns the access an open with flags needs: read, write or
// both by O_ACCMODE, and write for O_TRUNC.
func openAccess(flags uint32) uint32 {
	var acc uint32
	switch flags & syscall.O_ACCMODE {
	case syscall.O_RDONLY:
		acc = accRead
	case syscall.O_WRONLY:
		acc = accWrite
	default:
		acc = accRead | accWrite
	}
	if flags&syscall.O_TRUNC != 0 {
		acc |= accWrite
	}
	return acc
}

// mayOpen reports whether a caller with uid and gid may open in for acc
// (accRead|accWrite) by its mode bits: uid 0 may open anything; else the
// owner's, the group's or the others' bits decide, the first class the
// caller is in, as Linux's generic_permission. FUSE does not send the
// caller's supplementary groups, so a caller who has access only through
// one is refused: the check errs towards refusing. The kernel checks every
// open it sends itself (default_permissions); this one is for a file the
// kernel did not know of, found by a create (see node.Create).
func mayOpen(in *inode, uid, gid, acc uint32) bool {
	if uid == 0 {
		return true
	}
	bits := in.mode & 0o7
	switch {
	case uid == in.uid:
		bits = in.mode >> 6 & 0o7
	case gid == in.gid:
		bits = in.mode >> 3 & 0o7
	}
	return bits&acc == acc
}
