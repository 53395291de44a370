package fusefs

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestPromoteReplica promotes a live replica mount in place and checks
// that every kind of change then works through the same mountpoint, that
// a file opened and a cwd taken on the replica stay usable, that
// .tricopy is gone, and that the volume is clean and shows the changes
// when mounted afresh.
func TestPromoteReplica(t *testing.T) {
	h := newReplicaPair(t)
	pt, rt := osTarget{h.primary}, osTarget{h.replica}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(pt.p("d/e"), 0o755))
	must(os.WriteFile(pt.p("a.txt"), []byte("alpha\n"), 0o644))
	must(os.WriteFile(pt.p("d/b.txt"), []byte("bravo\n"), 0o644))
	must(os.WriteFile(pt.p("d/e/c.txt"), []byte(strings.Repeat("c", 3*bs+7)), 0o644))
	must(os.Symlink("a.txt", pt.p("l")))
	h.advance(1)
	must(os.WriteFile(pt.p("d/b.txt"), []byte("bravo two\n"), 0o644))
	h.advance(2)
	h.compare("before the promotion")

	// What the replica's users hold: an open file, a cwd, .tricopy.
	held, err := os.Open(rt.p("a.txt"))
	must(err)
	defer held.Close()
	child := startCwdChild(t, rt.p("d"))
	if got, err := readApplied(h.replica); err != nil || got != 2 {
		t.Fatalf("applied before the promotion = %d, %v", got, err)
	}
	for name, err := range map[string]error{
		"create": rt.write("new.txt", 0, []byte("x")),
		"write":  rt.write("a.txt", 0, []byte("x")),
		"mkdir":  rt.mkdir("d/new", 0o755),
		"unlink": rt.unlink("d/b.txt"),
	} {
		if !errors.Is(err, syscall.EROFS) {
			t.Fatalf("%s on the replica before the promotion: %v, want EROFS", name, err)
		}
	}

	if err := h.srv.Promote(context.Background(), LocalDevice(h.r)); err != nil {
		t.Fatalf("promote: %v", err)
	}

	var st unix.Statfs_t
	must(unix.Statfs(h.replica, &st))
	if st.Flags&unix.ST_RDONLY != 0 {
		t.Fatalf("kernel mount still read-only after the promotion (statfs flags %#x)", st.Flags)
	}
	if st.Flags&(unix.ST_NOSUID|unix.ST_NODEV) != unix.ST_NOSUID|unix.ST_NODEV {
		t.Fatalf("remount lost nosuid/nodev (statfs flags %#x)", st.Flags)
	}
	if _, err := os.Lstat(rt.p(metaDirName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lstat .tricopy after the promotion: %v, want not found", err)
	}
	must(os.WriteFile(rt.p(metaDirName), []byte("a real file now\n"), 0o644))

	must(os.WriteFile(rt.p("new.txt"), []byte("written after the promotion\n"), 0o644))
	f, err := os.OpenFile(rt.p("a.txt"), os.O_APPEND|os.O_WRONLY, 0)
	must(err)
	_, err = f.WriteString("appended\n")
	must(err)
	must(f.Sync())
	must(f.Close())
	must(os.Mkdir(rt.p("d/new"), 0o700))
	must(os.Rename(rt.p("d/b.txt"), rt.p("d/new/b.txt")))
	must(os.Remove(rt.p("d/e/c.txt")))
	must(os.Remove(rt.p("d/e")))
	must(rt.fsync("new.txt"))

	buf := make([]byte, 64)
	n, err := held.ReadAt(buf, 0)
	if got := string(buf[:n]); got != "alpha\nappended\n" || err != nil && err != io.EOF {
		t.Fatalf("file opened on the replica reads %q, %v after the promotion", got, err)
	}
	// readlink shows "(deleted)" if the kernel dropped the cwd's dentry.
	if out := child.run(t, "readlink /proc/$$/cwd && cat new/b.txt && echo from-cwd > cwd.txt && ls"); out != rt.p("d")+"\nbravo two\ncwd.txt\nnew\n" {
		t.Fatalf("process with its cwd in the mount, after the promotion: %q", out)
	}
	must(held.Close())
	child.stop(t)

	if got := h.srv.Applied(); got != 2 {
		t.Fatalf("Applied() after the promotion = %d, want 2", got)
	}
	err = h.srv.Advance(context.Background(), func(ctx context.Context) (uint64, []uint64, error) {
		t.Fatal("apply called on a promoted mount")
		return 0, nil, nil
	})
	if !errors.Is(err, ErrPromoted) {
		t.Fatalf("Advance after the promotion: %v, want ErrPromoted", err)
	}
	if err := h.srv.Promote(context.Background(), LocalDevice(h.r)); !errors.Is(err, ErrPromoted) {
		t.Fatalf("second Promote: %v, want ErrPromoted", err)
	}
	must(os.WriteFile(rt.p("last.txt"), []byte("still writable\n"), 0o644))

	if err := h.srv.Unmount(); err != nil {
		t.Fatalf("unmount the promoted mount: %v", err)
	}
	checkClean(t, h.r)
	want := map[string]string{
		"a.txt":       "alpha\nappended\n",
		"new.txt":     "written after the promotion\n",
		"d/new/b.txt": "bravo two\n",
		"d/cwd.txt":   "from-cwd\n",
		metaDirName:   "a real file now\n",
		"last.txt":    "still writable\n",
	}
	fresh := osTarget{mountVolume(t, h.r)}
	for p, content := range want {
		if b, err := os.ReadFile(fresh.p(p)); err != nil || string(b) != content {
			t.Errorf("fresh mount: %s = %q, %v, want %q", p, b, err, content)
		}
	}
	for _, p := range []string{"d/b.txt", "d/e"} {
		if _, err := os.Lstat(fresh.p(p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("fresh mount: lstat %s: %v, want not found", p, err)
		}
	}
	if dest, err := os.Readlink(fresh.p("l")); err != nil || dest != "a.txt" {
		t.Errorf("fresh mount: readlink l = %q, %v", dest, err)
	}
}

// cwdChild is a shell whose cwd is in a mount; it runs scripts sent to it.
type cwdChild struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

// childDone ends each script's output.
const childDone = "--done--"

func startCwdChild(t *testing.T, dir string) *cwdChild {
	t.Helper()
	cmd := exec.Command("sh", "-c", `while read -r line; do eval "$line"; echo `+childDone+`; done`)
	cmd.Dir = dir
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &cwdChild{cmd: cmd, in: in, out: bufio.NewReader(out)}
	t.Cleanup(func() { c.stop(t) })
	return c
}

// run runs one line of shell in the child and returns its output.
func (c *cwdChild) run(t *testing.T, line string) string {
	t.Helper()
	if _, err := io.WriteString(c.in, line+"\n"); err != nil {
		t.Fatalf("send to the child: %v", err)
	}
	var out strings.Builder
	for {
		s, err := c.out.ReadString('\n')
		if err != nil {
			t.Fatalf("child output %q: %v", out.String(), err)
		}
		if s == childDone+"\n" {
			return out.String()
		}
		out.WriteString(s)
	}
}

// stop ends the child; it may be called again.
func (c *cwdChild) stop(t *testing.T) {
	if c.cmd.Process == nil || c.cmd.ProcessState != nil {
		return
	}
	c.in.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Errorf("child shell: %v", err)
	}
}

// TestPromoteOrphans promotes a replica holding orphans (files the primary
// unlinked while open): one nobody holds is freed by Promote, one open on
// the replica stays readable and is freed at its close; a handle on a
// file the primary freed does not see its inode reused.
func TestPromoteOrphans(t *testing.T) {
	h := newReplicaPair(t)
	pt, rt := osTarget{h.primary}, osTarget{h.replica}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"gone", "kept", "freed"} {
		must(os.WriteFile(pt.p(p), []byte("content of "+p), 0o644))
	}
	h.advance(1)
	rkept, err := os.Open(rt.p("kept"))
	must(err)
	defer rkept.Close()
	rfreed, err := os.Open(rt.p("freed"))
	must(err)
	defer rfreed.Close()
	var freedSt syscall.Stat_t
	must(syscall.Fstat(int(rfreed.Fd()), &freedSt))

	// The primary holds gone and kept open while unlinking them: they
	// become orphans. freed is unlinked while closed: its inode is free.
	var pfiles []*os.File
	t.Cleanup(func() {
		for _, f := range pfiles {
			f.Close()
		}
	})
	for _, p := range []string{"gone", "kept"} {
		f, err := os.Open(pt.p(p))
		must(err)
		pfiles = append(pfiles, f)
		must(os.Remove(pt.p(p)))
	}
	must(os.Remove(pt.p("freed")))
	// The kernel sends RELEASE after close returns: freed may have been
	// orphaned too, and is freed by a later batch.
	deadline := time.Now().Add(10 * time.Second)
	for point := uint64(2); ; point++ {
		h.advance(point)
		n := orphanCount(t, h.srv.fs)
		if n == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica shows %d orphans, want 2", n)
		}
		time.Sleep(10 * time.Millisecond)
	}

	if err := h.srv.Promote(context.Background(), LocalDevice(h.r)); err != nil {
		t.Fatalf("promote: %v", err)
	}
	if n := orphanCount(t, h.srv.fs); n != 1 {
		t.Fatalf("%d orphans after the promotion, want 1 (kept, still open)", n)
	}
	buf := make([]byte, 64)
	if n, err := rkept.ReadAt(buf, 0); string(buf[:n]) != "content of kept" || err != nil && err != io.EOF {
		t.Fatalf("orphan open on the replica reads %q, %v after the promotion", buf[:n], err)
	}
	for i := range 4 {
		p := rt.p("new" + string(rune('0'+i)))
		must(os.WriteFile(p, []byte("new"), 0o644))
		var st syscall.Stat_t
		must(syscall.Stat(p, &st))
		if st.Ino == freedSt.Ino {
			t.Fatalf("new file %s got inode %d, still open on the replica as freed", p, st.Ino)
		}
	}
	must(rkept.Close())
	deadline = time.Now().Add(10 * time.Second)
	for orphanCount(t, h.srv.fs) != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d orphans 10s after the last close, want 0", orphanCount(t, h.srv.fs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	must(rfreed.Close())
	if err := h.srv.Unmount(); err != nil {
		t.Fatalf("unmount the promoted mount: %v", err)
	}
	r := checkClean(t, h.r)
	if r.Files != 4 {
		t.Fatalf("fsck counts %d files, want the 4 new ones", r.Files)
	}
}

// orphanCount returns the number of entries in the orphan directory.
func orphanCount(t *testing.T, fs *filesystem) int {
	t.Helper()
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	ents, err := fs.readdir(orphanIno)
	if err != nil {
		t.Fatalf("read the orphan directory: %v", err)
	}
	return len(ents)
}

// TestPromoteWrongDevice checks that a device with another layout is
// refused and leaves the replica mount working as before.
func TestPromoteWrongDevice(t *testing.T) {
	h := newReplicaPair(t)
	if err := os.WriteFile(filepath.Join(h.primary, "x"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.advance(1)
	other := newMemVolume(t, 4096)
	if err := h.srv.Promote(context.Background(), LocalDevice(other)); err == nil || errors.Is(err, ErrPromoted) {
		t.Fatalf("promote to another layout: %v, want an error", err)
	}
	if err := os.WriteFile(filepath.Join(h.replica, "y"), []byte("y"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write after a failed promotion: %v, want EROFS", err)
	}
	if err := os.WriteFile(filepath.Join(h.primary, "y"), []byte("y"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.advance(2)
	h.compare("after a failed promotion")
	if got, err := readApplied(h.replica); err != nil || got != 2 {
		t.Fatalf("applied after a failed promotion = %d, %v, want 2", got, err)
	}
}

// TestPromoteOnPrimary checks that Promote refuses a Server from Mount.
func TestPromoteOnPrimary(t *testing.T) {
	f, v := newEngine(t, 1024)
	s := &Server{fs: f}
	if err := s.Promote(context.Background(), LocalDevice(v)); !errors.Is(err, ErrNotReplica) {
		t.Fatalf("Promote on a primary: %v, want ErrNotReplica", err)
	}
}

// TestPromoteEngine checks, without FUSE, what the engine switch does: the
// kernel is told to forget .tricopy and what it knows, the engine is
// read-write on the new device with the replica-only paths off, and the
// allocation cursors are where a fresh open puts them.
func TestPromoteEngine(t *testing.T) {
	_, _, rfs, r := replicaEngines(t)
	if _, _, err := rfs.lookupName(rootIno, "absent"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("lookup absent: %v", err)
	}
	rfs.nextIno, rfs.nextBlock = 77, 77
	inv, _, err := rfs.promote(LocalDevice(r))
	if err != nil {
		t.Fatalf("promote: %v", err)
	}
	if !slices.Contains(inv.entries, dentryName{rootIno, metaDirName}) || !slices.Contains(inv.entries, dentryName{rootIno, "absent"}) {
		t.Fatalf("promote invalidates entries %v, want .tricopy and the recorded lookups", inv.entries)
	}
	if !slices.Contains(inv.inodes, rootIno) {
		t.Fatalf("promote invalidates inodes %v, want the root", inv.inodes)
	}
	if rfs.readOnly || rfs.liveReplica() || rfs.nextIno != firstIno || rfs.nextBlock != rfs.sb.dataStart {
		t.Fatalf("after promote: readOnly %v, live replica %v, nextIno %d, nextBlock %d", rfs.readOnly, rfs.liveReplica(), rfs.nextIno, rfs.nextBlock)
	}
	if _, ok := rfs.dirSource().(*filesystem); !ok {
		t.Fatal("a promoted engine still records directory sources")
	}
	if _, _, err := rfs.mknod(context.Background(), rootIno, "f", s_IFREG|0o644, 0, 0, 0); err != nil {
		t.Fatalf("create after promote: %v", err)
	}
	if _, _, err := rfs.lookupName(rootIno, "g"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("lookup g: %v", err)
	}
	if n := len(rfs.rep.names); n != 0 {
		t.Fatalf("a promoted engine recorded %d lookups", n)
	}
	if rep := checkClean(t, r); rep.Files != 1 {
		t.Fatalf("the new device holds %d files, want 1", rep.Files)
	}
}

// TestPromoteUnderLoad promotes while other goroutines look up, read,
// list, open, close and fsync through the mount (run it with -race), and
// checks that each of them keeps working and that a writer that got EROFS
// before succeeds after.
func TestPromoteUnderLoad(t *testing.T) {
	h := newReplicaPair(t)
	pt, rt := osTarget{h.primary}, osTarget{h.replica}
	for i := range 8 {
		if err := os.MkdirAll(pt.p(fmt.Sprintf("d%d", i)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(pt.p(fmt.Sprintf("d%d/f", i)), []byte(strings.Repeat("x", 100*i+1)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h.advance(1)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				d := fmt.Sprintf("d%d", (g+i)%8)
				if b, err := os.ReadFile(rt.p(d + "/f")); err != nil || len(b) != 100*((g+i)%8)+1 {
					errs <- fmt.Errorf("read %s/f: %d bytes, %v", d, len(b), err)
					return
				}
				if _, err := os.ReadDir(rt.p(d)); err != nil {
					errs <- fmt.Errorf("readdir %s: %v", d, err)
					return
				}
				if err := rt.fsync(d + "/f"); err != nil {
					errs <- fmt.Errorf("fsync %s/f: %v", d, err)
					return
				}
				if _, err := os.Lstat(rt.p(metaDirName)); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs <- fmt.Errorf("lstat .tricopy: %v", err)
					return
				}
			}
		}()
	}
	wrote := make(chan error, 1)
	go func() {
		for {
			err := rt.write("late", 0, []byte("late"))
			if err == nil || !errors.Is(err, syscall.EROFS) {
				wrote <- err
				return
			}
			if ctx.Err() != nil {
				wrote <- fmt.Errorf("still read-only at the end: %w", err)
				return
			}
		}
	}()
	if err := h.srv.Promote(context.Background(), LocalDevice(h.r)); err != nil {
		t.Fatalf("promote: %v", err)
	}
	select {
	case err := <-wrote:
		if err != nil {
			t.Fatalf("write during the promotion: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no write succeeded 10s after the promotion")
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := h.srv.Unmount(); err != nil {
		t.Fatalf("unmount the promoted mount: %v", err)
	}
	checkClean(t, h.r)
}
