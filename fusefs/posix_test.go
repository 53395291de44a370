package fusefs

import (
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
	"golang.org/x/sys/unix"
)

// notPOSIX lists posixtest cases that assert behaviour POSIX does not
// have; go-fuse's own run against a kernel filesystem leaves them out too
// (posixtest/posixtest_test.go). FcntlFlockLocksFile expects two fds of one
// process to conflict on fcntl locks, which only a filesystem forwarding
// locks to per-fd OFD locks (the loopback) does; ext4 does not.
// TestPosixLocksAcrossProcesses checks the POSIX behaviour instead.
var notPOSIX = map[string]bool{"FcntlFlockLocksFile": true}

// posixNames returns the names of the posixtest cases we run, sorted.
func posixNames() []string {
	names := make([]string, 0, len(posixtest.All))
	for name := range posixtest.All {
		if !notPOSIX[name] {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// TestPosix runs go-fuse's posixtest suite, each test on a fresh volume,
// and checks the volume with fsck afterwards. A skipped case fails.
func TestPosix(t *testing.T) {
	for _, name := range posixNames() {
		t.Run(name, func(t *testing.T) {
			v := newMemVolume(t, 64<<10) // 256 MiB
			t.Cleanup(func() { checkClean(t, v) })
			mnt := mountVolume(t, v)
			t.Cleanup(func() {
				if t.Skipped() {
					t.Errorf("posixtest %s skipped: every case must pass", name)
				}
			})
			posixtest.All[name](t, mnt)
		})
	}
}

// TestPosixLocksAcrossProcesses checks that an fcntl write lock held by
// this process makes another process's F_SETLK fail with EAGAIN.
func TestPosixLocksAcrossProcesses(t *testing.T) {
	v := newMemVolume(t, 16<<10)
	mnt := mountVolume(t, v)
	p := filepath.Join(mnt, "locked")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_WRLCK}
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk); err != nil {
		t.Fatalf("lock: %v", err)
	}
	out, err := cmd2(p).CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	if got := string(out); got != "EAGAIN\n" {
		t.Fatalf("child's F_SETLK on a locked file: got %q, want EAGAIN", got)
	}
	lk.Type = syscall.F_UNLCK
	if err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	if out, err := cmd2(p).CombinedOutput(); err != nil || string(out) != "locked\n" {
		t.Fatalf("child's F_SETLK on an unlocked file: %q, %v", out, err)
	}
}

// cmd2 runs lockHelper on p in a child process.
func cmd2(p string) *exec.Cmd { return helperCmd("TRICOPY_LOCK_HELPER", p) }

// helperCmd runs this test binary as a helper process: TestMain sees the
// variable env set to arg and runs the matching helper instead of tests.
func helperCmd(env, arg string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env+"="+arg)
	return cmd
}

func TestMain(m *testing.M) {
	if op := os.Getenv(userOpEnv); op != "" {
		userOp(op)
		return
	}
	if p := os.Getenv("TRICOPY_LOCK_HELPER"); p != "" {
		lockHelper(p)
		return
	}
	if p := os.Getenv("TRICOPY_MMAP_HELPER"); p != "" {
		mmapHelper(p)
		return
	}
	os.Exit(m.Run())
}

// mmapHelper writes through a shared writable mapping of p and msyncs it.
func mmapHelper(p string) {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		os.Stdout.WriteString("open: " + err.Error() + "\n")
		return
	}
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), 0, 3*bs, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		os.Stdout.WriteString("mmap: " + err.Error() + "\n")
		return
	}
	copy(mem[bs+10:], "via mmap")
	if err := unix.Msync(mem, unix.MS_SYNC); err != nil {
		os.Stdout.WriteString("msync: " + err.Error() + "\n")
		return
	}
	if err := unix.Munmap(mem); err != nil {
		os.Stdout.WriteString("munmap: " + err.Error() + "\n")
		return
	}
	os.Stdout.WriteString("ok\n")
}

// lockHelper tries to take a read lock on p and prints the outcome.
func lockHelper(p string) {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		os.Stdout.WriteString("open: " + err.Error() + "\n")
		return
	}
	defer f.Close()
	lk := syscall.Flock_t{Type: syscall.F_RDLCK}
	switch err := syscall.FcntlFlock(f.Fd(), syscall.F_SETLK, &lk); err {
	case nil:
		os.Stdout.WriteString("locked\n")
	case syscall.EAGAIN, syscall.EACCES:
		os.Stdout.WriteString("EAGAIN\n")
	default:
		os.Stdout.WriteString(err.Error() + "\n")
	}
}

func TestMountSmoke(t *testing.T) {
	v := newMemVolume(t, 16<<10)
	mnt := mountVolume(t, v)
	p := filepath.Join(mnt, "hello")
	if err := os.WriteFile(p, []byte("world"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil || string(got) != "world" {
		t.Fatalf("read back %q, %v", got, err)
	}
}
