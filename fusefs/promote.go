package fusefs

// Promoting a live replica mount to a read-write filesystem in place.
//
// Disaster recovery makes a secondary the primary. Its replica mount stays
// where it is: same mountpoint, same FUSE server, same kernel mount, so
// programs with a cwd or open files below it keep them. Promote switches
// the engine to a read-write device holding the same blocks, turns the
// replica state off (replica.promoted), frees the orphans the old primary
// left, and then clears the kernel mount's read-only flag with a remount.
//
// The replica state stays attached to the filesystem (fs.rep is never
// cleared, so no reader can find it gone); every replica-only path checks
// fs.liveReplica instead. What the kernel cached from the replica is still
// true (the blocks are the same), but Promote has it forgotten anyway, as
// Advance does after a failed round: every inode and recorded entry the
// kernel may hold, and the .tricopy entry, which a promoted mount does not
// have (a real root entry of that name becomes reachable). On the kernels
// we run (checked on 6.18) neither that nor the remount breaks a cwd or an
// open file below the mount.

import (
	"context"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// ErrPromoted is returned (wrapped) by Promote on a Server already
// promoted and by Advance on a promoted Server.
var ErrPromoted = errors.New("replica mount promoted")

// Promote turns the live replica mount of s into a read-write filesystem in
// place, without unmounting: afterwards it behaves like a mount from Mount
// on dev (normal kernel cache timeouts, no .tricopy directory, changes
// committed to dev), at the same mountpoint and with the same FUSE server.
// Open files, open directories and cwds below the mount stay usable, and
// the open counts carry over: a file opened on the replica that the old
// primary had unlinked while open is freed at its last close. Orphans
// (inodes the old primary unlinked while open) that nobody holds open are
// freed, as Mount does. A handle on a file the old primary freed stays
// dead (ENOENT; its inode number is not reused while it is open), but one
// whose inode number the old primary already gave to another file reaches
// that file, as reads through it did on the replica: the engine does not
// check generations. Applied keeps returning the last applied point.
//
// The caller guarantees that, when Promote is called, the blocks of dev are
// exactly the blocks the replica mount shows (the reader given to
// MountReplica, after the last Advance), and that nothing but this mount
// changes dev from then on. Promote checks only that dev holds the same
// filesystem layout.
//
// Concurrency: Promote may be called from any goroutine but not from a
// FUSE operation of this mount. It serialises with Advance (an Advance
// waits, then fails with ErrPromoted) and with itself. It switches the
// engine under the filesystem's lock held for writing, so no FUSE
// operation runs across the switch and each sees either the replica or
// the promoted filesystem. Then, with operations running again, it asks
// the kernel to forget what it cached of the replica, frees the orphans,
// and remounts the kernel mount read-write (mount(2) with MS_REMOUNT,
// which needs CAP_SYS_ADMIN). Until that remount the kernel refuses
// changes with EROFS, as on the replica; reads and fsync work throughout.
//
// On a Server from Mount Promote returns an error wrapping ErrNotReplica;
// on one already promoted, an error wrapping ErrPromoted. If dev cannot be
// loaded (another layout, a read error), the mount stays a replica on its
// old reader and Promote returns an error saying so. Once the engine is
// switched the promotion stands: a later failure (freeing the orphans, the
// remount) returns an error that says the engine is promoted and what is
// left undone; Advance then fails with ErrPromoted. Unmount syncs dev.
func (s *Server) Promote(ctx context.Context, dev Device) error {
	fs, r := s.fs, s.fs.rep
	if r == nil {
		return fmt.Errorf("promote: %w", ErrNotReplica)
	}
	r.advanceMu.Lock()
	defer r.advanceMu.Unlock()
	if r.promoted.Load() {
		return fmt.Errorf("promote: %w", ErrPromoted)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("promote: %w", err)
	}

	inv, applied, err := fs.promote(dev)
	s.invalidate(inv)
	if err != nil {
		return fmt.Errorf("promote (still a replica at applied %d): %w", applied, err)
	}
	fs.log.Info("promoted replica", "mountpoint", s.opts.Mountpoint, "volume", s.opts.Name, "applied", applied)

	var errs []error
	if err := fs.reapOrphans(ctx); err != nil {
		errs = append(errs, fmt.Errorf("free orphaned inodes: %w", err))
	}
	if err := remountWritable(s.opts.Mountpoint); err != nil {
		errs = append(errs, fmt.Errorf("kernel mount %q still read-only: %w", s.opts.Mountpoint, err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("promote: engine promoted to read-write, but: %w", err)
	}
	return nil
}

// promote switches the engine from the replica's reader to dev: it drops
// every cache and reloads the superblock and bitmaps from dev, makes the
// engine read-write and turns the replica state off. It returns what the
// kernel must forget and the applied point. If dev cannot be loaded, it
// goes back to the replica's reader and returns the error; the kernel must
// then forget everything it may know (the lookup records are gone).
func (fs *filesystem) promote(dev Device) (invalidation, uint64, error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	r := fs.rep
	old := fs.dev
	fs.dev = dev
	inv, err := fs.dropAll()
	if err != nil {
		fs.dev = old
		back, backErr := fs.dropAll()
		inv.inodes = append(inv.inodes, back.inodes...)
		inv.entries = append(inv.entries, back.entries...)
		return inv, r.applied, fmt.Errorf("load the new device: %w", errors.Join(err, backErr))
	}
	inv.entries = append(inv.entries, dentryName{rootIno, metaDirName})
	fs.readOnly = false
	fs.nextBlock = fs.sb.dataStart
	fs.nextIno = firstIno
	r.promoted.Store(true)
	return inv, r.applied, nil
}

// remountFlags are the mount flags a remount keeps: statfs(2) reports
// them as ST_*, mount(2) takes them as MS_*.
var remountFlags = []struct{ st, ms uint64 }{
	{unix.ST_NOSUID, unix.MS_NOSUID},
	{unix.ST_NODEV, unix.MS_NODEV},
	{unix.ST_NOEXEC, unix.MS_NOEXEC},
	{unix.ST_SYNCHRONOUS, unix.MS_SYNCHRONOUS},
	{unix.ST_MANDLOCK, unix.MS_MANDLOCK},
	{unix.ST_NOATIME, unix.MS_NOATIME},
	{unix.ST_NODIRATIME, unix.MS_NODIRATIME},
	{unix.ST_RELATIME, unix.MS_RELATIME},
}

// remountWritable makes the kernel mount at mountpoint read-write without
// unmounting it: mount(2) with MS_REMOUNT and the mount's other flags.
// FUSE ignores the option string on such a remount; the VFS clears the
// superblock's and the mount's read-only flags. It must not run under
// fs.mu: the kernel sends requests (statfs here, possibly a sync).
func remountWritable(mountpoint string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(mountpoint, &st); err != nil {
		return fmt.Errorf("statfs: %w", err)
	}
	flags := uint64(unix.MS_REMOUNT)
	for _, f := range remountFlags {
		if uint64(st.Flags)&f.st != 0 {
			flags |= f.ms
		}
	}
	if err := unix.Mount("", mountpoint, "", uintptr(flags), ""); err != nil {
		return fmt.Errorf("remount read-write: %w", err)
	}
	return nil
}
