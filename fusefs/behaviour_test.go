package fusefs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"golang.org/x/sys/unix"
)

// TestENOSPC fills the volume, checks the error, then deletes and reuses
// the space; the filesystem stays consistent throughout.
func TestENOSPC(t *testing.T) {
	v := newMemVolume(t, 2048) // 8 MiB
	mnt := mountVolume(t, v)
	chunk := bytes.Repeat([]byte("z"), 256<<10)
	var files []string
	var full error
	for i := 0; i < 100 && full == nil; i++ {
		p := filepath.Join(mnt, fmt.Sprintf("f%d", i))
		files = append(files, p)
		f, err := os.Create(p)
		if err != nil {
			full = err
			break
		}
		_, full = f.Write(chunk)
		f.Close()
	}
	if !errors.Is(full, syscall.ENOSPC) {
		t.Fatalf("filling the volume ended with %v, want ENOSPC", full)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bfree > 64 {
		t.Fatalf("volume full but statfs reports %d free blocks", st.Bfree)
	}
	for _, p := range files {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	if err := syscall.Statfs(mnt, &st); err != nil {
		t.Fatal(err)
	}
	if st.Bfree < st.Blocks*9/10 {
		t.Fatalf("after deleting everything statfs reports %d of %d blocks free", st.Bfree, st.Blocks)
	}
	p := filepath.Join(mnt, "again")
	if err := os.WriteFile(p, chunk, 0o644); err != nil {
		t.Fatalf("write after freeing space: %v", err)
	}
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, chunk) {
		t.Fatalf("read back after freeing space: %v", err)
	}
	checkClean(t, v)
}

// TestUnlinkOpenFile checks that an unlinked file stays readable while
// open and is freed at the last close.
func TestUnlinkOpenFile(t *testing.T) {
	v := newMemVolume(t, 4096)
	mnt := mountVolume(t, v)
	p := filepath.Join(mnt, "doomed")
	data := bytes.Repeat([]byte("keep me "), 10000)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	var before syscall.Statfs_t
	syscall.Statfs(mnt, &before)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat after unlink: %v", err)
	}
	if _, err := f.WriteAt([]byte("still writable"), 0); err != nil {
		t.Fatalf("write to unlinked open file: %v", err)
	}
	got := make([]byte, len(data))
	if _, err := f.ReadAt(got, 0); err != nil {
		t.Fatalf("read unlinked open file: %v", err)
	}
	if !bytes.Equal(got[14:], data[14:]) || string(got[:14]) != "still writable" {
		t.Fatal("unlinked open file content changed")
	}
	var during syscall.Statfs_t
	syscall.Statfs(mnt, &during)
	if during.Bfree > before.Bfree {
		t.Fatalf("blocks freed while the file is open: %d → %d", before.Bfree, during.Bfree)
	}
	checkCleanLive(t, v)
	f.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var after syscall.Statfs_t
		syscall.Statfs(mnt, &after)
		if after.Bfree > before.Bfree {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("blocks not freed after the last close: %d free, %d before", after.Bfree, before.Bfree)
		}
		time.Sleep(10 * time.Millisecond)
	}
	checkClean(t, v)
}

// checkCleanLive runs fsck on a mounted volume (the engine's state is
// committed batch by batch, so the volume is consistent at any time).
func checkCleanLive(t *testing.T, v interface {
	BlockCount() uint64
	ReadBlock(uint64, []byte) error
}) {
	t.Helper()
	checkClean(t, v)
}

// TestOrphanReapedAfterCrash crashes with an unlinked file still open and
// checks that the next mount frees it: no leak across remount.
func TestOrphanReapedAfterCrash(t *testing.T) {
	fs, v := newEngine(t, 4096)
	ctx := context.Background()
	ino, _, err := fs.mknod(ctx, rootIno, "f", s_IFREG|0o644, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fs.write(ctx, ino, make([]byte, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	free0 := fs.statfs().freeBlocks
	if err := fs.open(ctx, ino, false); err != nil {
		t.Fatal(err)
	}
	if err := fs.unlink(ctx, rootIno, "f"); err != nil {
		t.Fatal(err)
	}
	if err := v.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	v.Crash() // the process dies with the file open
	r := checkClean(t, v)
	if r.Files != 1 {
		t.Fatalf("fsck sees %d files before reaping, want the orphan", r.Files)
	}
	fs2, err := openFS(ctx, LocalDevice(v), engineOptions{log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if got := fs2.statfs().freeBlocks; got <= free0 {
		t.Fatalf("orphan not reaped at open: %d free blocks, %d with the file", got, free0)
	}
	if r := checkClean(t, v); r.Files != 0 {
		t.Fatalf("fsck sees %d files after reaping", r.Files)
	}
}

// TestLargeSparseFile writes at the ends of a 6 GiB sparse file, reaching
// the triple-indirect map, and truncates it down and up.
func TestLargeSparseFile(t *testing.T) {
	v := newMemVolume(t, 16<<10)
	mnt := mountVolume(t, v)
	p := filepath.Join(mnt, "huge")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	offs := []int64{0, 5 << 20, 1 << 30, 6<<30 - 7}
	for _, off := range offs {
		if _, err := f.WriteAt([]byte(fmt.Sprintf("at %d", off)), off); err != nil {
			t.Fatalf("write at %d: %v", off, err)
		}
	}
	fi, _ := f.Stat()
	if fi.Size() != 6<<30-7+int64(len(fmt.Sprintf("at %d", int64(6<<30-7)))) {
		t.Fatalf("size %d", fi.Size())
	}
	for _, off := range offs {
		buf := make([]byte, len(fmt.Sprintf("at %d", off)))
		if _, err := f.ReadAt(buf, off); err != nil || string(buf) != fmt.Sprintf("at %d", off) {
			t.Fatalf("read at %d: %q %v", off, buf, err)
		}
	}
	hole := make([]byte, 8192)
	if _, err := f.ReadAt(hole, 3<<30); err != nil || !bytes.Equal(hole, make([]byte, 8192)) {
		t.Fatalf("hole does not read as zeros: %v", err)
	}
	if off, err := unix.Seek(int(f.Fd()), 2<<20, unix.SEEK_DATA); err != nil || off != 5<<20 {
		t.Fatalf("SEEK_DATA from 2 MiB: %d %v", off, err)
	}
	checkCleanLive(t, v)
	if err := f.Truncate(1<<30 + 2); err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(2 << 30); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := f.ReadAt(buf, 1<<30); err != nil || string(buf) != "at\x00\x00" {
		t.Fatalf("after truncate down and up: %q %v", buf, err)
	}
	if _, err := f.ReadAt(buf, 6<<30-100); err == nil {
		t.Fatal("read past the end succeeded")
	}
	checkCleanLive(t, v)
}

// TestBigDirectory creates 100 000 entries in one directory and checks that
// lookups, listing and removal stay fast and correct.
func TestBigDirectory(t *testing.T) {
	if testing.Short() {
		t.Skip("long")
	}
	const n = 100000
	v := blockdev.NewMem(64 << 10)
	ctx := context.Background()
	if err := Format(ctx, v, FormatOptions{Inodes: 2 * n}); err != nil {
		t.Fatal(err)
	}
	fs, err := openFS(ctx, LocalDevice(v), engineOptions{log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	dir, _, err := fs.mknod(ctx, rootIno, "big", s_IFDIR|0o755, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := 0; i < n; i++ {
		if _, _, err := fs.mknod(ctx, dir, fmt.Sprintf("entry-%06d", i), s_IFREG|0o644, 0, 0, 0); err != nil {
			t.Fatalf("create %d: %v", i, err)
		}
	}
	create := time.Since(start)
	// Creating the last thousand must not be much slower than the first.
	t0 := time.Now()
	for i := n; i < n+1000; i++ {
		if _, _, err := fs.mknod(ctx, dir, fmt.Sprintf("entry-%06d", i), s_IFREG|0o644, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
	}
	lastK := time.Since(t0)
	t.Logf("%d creates in %v; 1000 more at %d entries in %v", n, create, n, lastK)
	if per := lastK / 1000; per > 20*create/n+time.Millisecond {
		t.Fatalf("create at %d entries takes %v, average was %v", n, per, create/n)
	}
	fs.mu.RLock()
	ents, err := fs.readdir(dir)
	fs.mu.RUnlock()
	if err != nil || len(ents) != n+1000 {
		t.Fatalf("readdir: %d entries, %v", len(ents), err)
	}
	for i := 0; i < n+1000; i += 997 {
		if _, _, err := fs.lookupName(dir, fmt.Sprintf("entry-%06d", i)); err != nil {
			t.Fatalf("lookup %d: %v", i, err)
		}
	}
	for i := 0; i < n+1000; i += 2 {
		if err := fs.unlink(ctx, dir, fmt.Sprintf("entry-%06d", i)); err != nil {
			t.Fatal(err)
		}
	}
	r := checkClean(t, v)
	if r.Files != (n+1000)/2 {
		t.Fatalf("fsck counts %d files", r.Files)
	}
	// A fresh mount rebuilds the index from the blocks.
	fs2, err := openFS(ctx, LocalDevice(v), engineOptions{log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := fs2.lookupName(dir, "entry-000001"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := fs2.lookupName(dir, "entry-000002"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("removed entry: %v", err)
	}
}

// TestFileKinds covers FIFOs, nanosecond times, chown, O_APPEND, shared
// writable mmap and statfs counts.
func TestFileKinds(t *testing.T) {
	v := newMemVolume(t, 4096)
	mnt := mountVolume(t, v)
	fifo := filepath.Join(mnt, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(fifo, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFIFO {
		t.Fatalf("fifo: mode %o, %v", st.Mode, err)
	}
	go func() {
		if w, err := os.OpenFile(fifo, os.O_WRONLY, 0); err == nil {
			w.Write([]byte("through the pipe"))
			w.Close()
		}
	}()
	if got, err := os.ReadFile(fifo); err != nil || string(got) != "through the pipe" {
		t.Fatalf("fifo read: %q %v", got, err)
	}

	p := filepath.Join(mnt, "f")
	if err := os.WriteFile(p, []byte("0123"), 0o644); err != nil {
		t.Fatal(err)
	}
	ts := []unix.Timespec{{Sec: 1500000000, Nsec: 123456789}, {Sec: 1600000000, Nsec: 987654321}}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, 1234, 5678); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Atim.Nsec != 123456789 || st.Mtim.Sec != 1600000000 || st.Mtim.Nsec != 987654321 || st.Uid != 1234 || st.Gid != 5678 {
		t.Fatalf("times/owner: atime %v mtime %v uid %d gid %d", st.Atim, st.Mtim, st.Uid, st.Gid)
	}

	a, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	a.Write([]byte("45"))
	a.Write([]byte("67"))
	a.Close()
	if got, _ := os.ReadFile(p); string(got) != "01234567" {
		t.Fatalf("O_APPEND: %q", got)
	}

	// Shared writable mmap, in a child process: touching FUSE-backed
	// memory from Go code in the process that serves the mount can
	// deadlock with the garbage collector's stop-the-world.
	m := filepath.Join(mnt, "mapped")
	if err := os.WriteFile(m, make([]byte, 3*bs), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := helperCmd("TRICOPY_MMAP_HELPER", m).CombinedOutput(); err != nil || string(out) != "ok\n" {
		t.Fatalf("mmap helper: %q %v", out, err)
	}
	buf := make([]byte, 8)
	g, err := os.Open(m)
	if err != nil {
		t.Fatal(err)
	}
	g.ReadAt(buf, bs+10)
	g.Close()
	if string(buf) != "via mmap" {
		t.Fatalf("mmap write not in file: %q", buf)
	}

	var sfs syscall.Statfs_t
	if err := syscall.Statfs(mnt, &sfs); err != nil {
		t.Fatal(err)
	}
	r := checkClean(t, v)
	if sfs.Bfree != r.FreeBlocks || sfs.Files != r.Inodes || sfs.Ffree != r.FreeInodes {
		t.Fatalf("statfs free %d/%d files %d, fsck free blocks %d inodes %d free inodes %d",
			sfs.Bfree, sfs.Blocks, sfs.Ffree, r.FreeBlocks, r.Inodes, r.FreeInodes)
	}
}

// TestAbortRestoresCounts checks that an operation failing with ENOSPC
// after allocating leaves free counts and the volume exactly as before.
func TestAbortRestoresCounts(t *testing.T) {
	fs, v := newEngine(t, 1024)
	ctx := context.Background()
	ino, _, err := fs.mknod(ctx, rootIno, "f", s_IFREG|0o644, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	before := fs.statfs()
	if _, err := fs.write(ctx, ino, make([]byte, 8<<20), 0); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("oversized write: %v, want ENOSPC", err)
	}
	if err := fs.allocate(ctx, ino, 0, 8<<20, 0); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("oversized fallocate: %v, want ENOSPC", err)
	}
	if after := fs.statfs(); after != before {
		t.Fatalf("statfs after failed operations %+v, before %+v", after, before)
	}
	checkClean(t, v)
	if _, err := fs.write(ctx, ino, make([]byte, 1<<20), 0); err != nil {
		t.Fatalf("write that fits: %v", err)
	}
	checkClean(t, v)
}

// TestNoChangeNoBatch checks that open and close of a linked file commit no
// batch, and that a rename's walk up the tree dirties no inode.
func TestNoChangeNoBatch(t *testing.T) {
	v := newMemVolume(t, 4096)
	rec := &recorder{Device: LocalDevice(v)}
	ctx := context.Background()
	fs, err := openFS(ctx, rec, engineOptions{log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	e := engineTarget{fs}
	if err := e.mkdir("a", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := e.mkdir("a/b", 0o755); err != nil {
		t.Fatal(err)
	}
	if err := e.write("a/b/f", 0, []byte("x")); err != nil {
		t.Fatal(err)
	}
	ino, err := e.resolve("a/b/f")
	if err != nil {
		t.Fatal(err)
	}
	n := len(rec.batches)
	for i := 0; i < 3; i++ {
		if err := fs.open(ctx, ino, false); err != nil {
			t.Fatal(err)
		}
		if err := fs.release(ctx, ino); err != nil {
			t.Fatal(err)
		}
	}
	if len(rec.batches) != n {
		t.Fatalf("open/close committed %d batches", len(rec.batches)-n)
	}
	// A rename's loop check walks the parents of the target directory;
	// reading them must not make the tx rewrite them.
	c, err := e.resolve("a/b")
	if err != nil {
		t.Fatal(err)
	}
	fs.mu.Lock()
	tx := fs.begin()
	below, err := tx.isAncestor(rootIno+1000, c)
	dirtied := len(tx.inodes)
	tx.abort()
	fs.mu.Unlock()
	if err != nil || below {
		t.Fatalf("isAncestor: %v %v", below, err)
	}
	if dirtied != 0 {
		t.Fatalf("walking the parents dirtied %d inodes", dirtied)
	}
	checkClean(t, v)
}
