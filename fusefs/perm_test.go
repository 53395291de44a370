package fusefs

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hanwen/go-fuse/v2/posixtest"
	"github.com/tricopy/tricopy/blockdev"
	"golang.org/x/sys/unix"
)

// nobody is the uid and gid of the ordinary user the permission tests act
// as; it has no supplementary groups.
const nobody = 65534

// userOpEnv names the variable that makes the test binary run one
// operation (userOp) instead of tests.
const userOpEnv = "TRICOPY_USER_OP"

// publicDir returns a fresh directory every user may traverse, removed at
// cleanup (t.TempDir is private to root).
func publicDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "tricopy-perm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// userBinary copies this test binary where every user may run it (the go
// build directory is private to root) and returns its path.
func userBinary(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(publicDir(t), "fusefs.test")
	if err := copyFile(os.Args[0], bin, 0o755); err != nil {
		t.Fatalf("copy the test binary: %v", err)
	}
	return bin
}

// userMount is a filesystem mounted by root with allow_other, used by root
// (the test) and by nobody (the test binary run as a child).
type userMount struct {
	t   testing.TB
	mnt string
	bin string // from userBinary
}

// newUserMount mounts v with allow_other where nobody can reach it;
// userMount runs bin as nobody.
func newUserMount(t testing.TB, v blockdev.Volume, bin string) *userMount {
	t.Helper()
	requireFUSE(t)
	u := &userMount{t: t, mnt: filepath.Join(publicDir(t), "mnt"), bin: bin}
	if err := os.Mkdir(u.mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(context.Background(), LocalDevice(v), MountOptions{Mountpoint: u.mnt, Name: "perm", AllowOther: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return u
}

func copyFile(from, to string, mode os.FileMode) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}

func (u *userMount) p(name string) string { return filepath.Join(u.mnt, name) }

// command returns the test binary run as nobody (no supplementary groups).
func (u *userMount) command(args ...string) *exec.Cmd {
	cmd := exec.Command(u.bin, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}}}
	cmd.Dir = "/"
	return cmd
}

// asNobody runs one operation (see userOp) as nobody and returns what it
// reports: "ok" or an errno name.
func (u *userMount) asNobody(op ...string) string {
	u.t.Helper()
	arg, err := json.Marshal(op)
	if err != nil {
		u.t.Fatal(err)
	}
	cmd := u.command("-test.run=^$")
	cmd.Env = append(os.Environ(), userOpEnv+"="+string(arg))
	out, err := cmd.CombinedOutput()
	if err != nil {
		u.t.Fatalf("%v as nobody: %v: %s", op, err, out)
	}
	return strings.TrimSpace(string(out))
}

// expect runs op as nobody and fails the test unless it reports want.
func (u *userMount) expect(want string, op ...string) {
	u.t.Helper()
	if got := u.asNobody(op...); got != want {
		u.t.Errorf("%s as nobody: %s, want %s", strings.Join(op, " "), got, want)
	}
}

// userOp runs one file operation named by the JSON list op (name and
// arguments) and prints "ok" or the errno's name. The child of
// userMount.asNobody.
func userOp(op string) {
	var a []string
	if err := json.Unmarshal([]byte(op), &a); err != nil || len(a) == 0 {
		os.Stdout.WriteString("bad operation " + op + "\n")
		os.Exit(2)
	}
	num := func(i int) uint32 {
		n, err := strconv.ParseUint(a[i], 0, 32)
		if err != nil {
			os.Stdout.WriteString("bad number " + a[i] + "\n")
			os.Exit(2)
		}
		return uint32(n)
	}
	var err error
	switch a[0] {
	case "read":
		_, err = os.ReadFile(a[1])
	case "write": // write PATH DATA: at offset 0 without truncating
		var f *os.File
		if f, err = os.OpenFile(a[1], os.O_WRONLY, 0); err == nil {
			_, err = f.Write([]byte(a[2]))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	case "writedirect": // O_DIRECT write of one aligned block at offset 0
		var fd int
		if fd, err = unix.Open(a[1], unix.O_WRONLY|unix.O_DIRECT, 0); err == nil {
			var buf []byte
			if buf, err = unix.Mmap(-1, 0, bs, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE); err == nil {
				_, err = unix.Pwrite(fd, buf, 0)
			}
			if cerr := unix.Close(fd); err == nil {
				err = cerr
			}
		}
	case "opentrunc":
		var f *os.File
		if f, err = os.OpenFile(a[1], os.O_WRONLY|os.O_TRUNC, 0); err == nil {
			err = f.Close()
		}
	case "create": // create PATH MODE: O_EXCL
		var fd int
		if fd, err = unix.Open(a[1], unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, num(2)); err == nil {
			err = unix.Close(fd)
		}
	case "mkdir":
		err = unix.Mkdir(a[1], num(2))
	case "mkfifo":
		err = unix.Mkfifo(a[1], num(2))
	case "symlink":
		err = unix.Symlink(a[1], a[2])
	case "link":
		err = unix.Link(a[1], a[2])
	case "chmod":
		err = unix.Chmod(a[1], num(2))
	case "chown":
		err = unix.Lchown(a[1], int(num(2)), int(num(3)))
	case "utimes": // explicit times
		err = unix.UtimesNano(a[1], []unix.Timespec{{Sec: 1}, {Sec: 2}})
	case "touch": // both times now (needs write permission only)
		err = unix.UtimesNano(a[1], nil)
	case "truncate":
		err = unix.Truncate(a[1], int64(num(2)))
	case "unlink":
		err = unix.Unlink(a[1])
	case "rmdir":
		err = unix.Rmdir(a[1])
	case "rename":
		err = unix.Rename(a[1], a[2])
	case "readdir":
		_, err = os.ReadDir(a[1])
	case "setxattr":
		err = unix.Lsetxattr(a[1], a[2], []byte(a[3]), 0)
	case "getxattr":
		_, err = unix.Lgetxattr(a[1], a[2], make([]byte, 256))
	case "listxattr": // prints the names, or the errno
		b := make([]byte, 4096)
		var n int
		if n, err = unix.Llistxattr(a[1], b); err == nil {
			names := strings.Split(strings.TrimSuffix(string(b[:n]), "\x00"), "\x00")
			os.Stdout.WriteString(strings.Join(names, ",") + "\n")
			return
		}
	case "fallocate":
		var fd int
		if fd, err = unix.Open(a[1], unix.O_WRONLY, 0); err == nil {
			err = unix.Fallocate(fd, 0, 0, 8192)
			unix.Close(fd)
		}
	case "mknodchr":
		err = unix.Mknod(a[1], unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3)))
	case "exec": // exec PATH: run the test binary at PATH as "euid"
		env := slices.DeleteFunc(os.Environ(), func(s string) bool { return strings.HasPrefix(s, userOpEnv+"=") })
		err = unix.Exec(a[1], []string{a[1], "-test.run=^$"}, append(env, userOpEnv+`=["euid"]`))
	case "euid": // prints the effective uid
		os.Stdout.WriteString(strconv.Itoa(os.Geteuid()) + "\n")
		return
	case "stat":
		var st unix.Stat_t
		err = unix.Stat(a[1], &st)
	default:
		os.Stdout.WriteString("unknown operation " + a[0] + "\n")
		os.Exit(2)
	}
	var errno syscall.Errno
	switch {
	case err == nil:
		os.Stdout.WriteString("ok\n")
	case errors.As(err, &errno):
		os.Stdout.WriteString(unix.ErrnoName(errno) + "\n")
	default:
		os.Stdout.WriteString(err.Error() + "\n")
	}
}

// as returns u for subtest t.
func (u *userMount) as(t testing.TB) *userMount {
	c := *u
	c.t = t
	return &c
}

// stat stats name in the mount as root.
func (u *userMount) stat(name string) unix.Stat_t {
	u.t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(u.p(name), &st); err != nil {
		u.t.Fatal(err)
	}
	return st
}

// setup fails the test when a setup step done as root failed.
func (u *userMount) setup(what string, err error) {
	u.t.Helper()
	if err != nil {
		u.t.Fatalf("setup %s: %v", what, err)
	}
}

// rootFile creates name as root with mode (set by chmod, so not masked)
// and group gid.
func (u *userMount) rootFile(name string, mode uint32, gid int) {
	u.t.Helper()
	u.setup(name, os.WriteFile(u.p(name), []byte("root's"), 0o600))
	u.setup(name, unix.Lchown(u.p(name), 0, gid))
	u.setup(name, unix.Chmod(u.p(name), mode))
}

// rootDir creates directory name as root with mode and group gid.
func (u *userMount) rootDir(name string, mode uint32, gid int) {
	u.t.Helper()
	u.setup(name, os.Mkdir(u.p(name), 0o700))
	u.setup(name, unix.Lchown(u.p(name), 0, gid))
	u.setup(name, unix.Chmod(u.p(name), mode))
}

func (u *userMount) wantOwner(name string, uid, gid uint32) {
	u.t.Helper()
	if st := u.stat(name); st.Uid != uid || st.Gid != gid {
		u.t.Errorf("%s owned by %d:%d, want %d:%d", name, st.Uid, st.Gid, uid, gid)
	}
}

func (u *userMount) wantMode(name string, mode uint32) {
	u.t.Helper()
	if st := u.stat(name); st.Mode&0o7777 != mode {
		u.t.Errorf("%s has mode %#o, want %#o", name, st.Mode&0o7777, mode)
	}
}

// TestPermissionsAsUser checks, as nobody on a mount by root with
// allow_other, that permissions work as on a kernel filesystem: access
// bits, ownership rules, sticky directories, setuid and setgid bits cleared
// by a write, setgid directories, xattr namespaces.
func TestPermissionsAsUser(t *testing.T) {
	v := newMemVolume(t, 16<<10)
	u := newUserMount(t, v, userBinary(t))
	u.rootFile("secret", 0o600, 0)
	u.rootFile("readonly", 0o644, 0)
	u.rootFile("shared", 0o666, 0)
	u.rootDir("ro", 0o755, 0)
	u.rootFile("ro/f", 0o666, 0)
	u.rootDir("private", 0o700, 0)
	u.rootFile("private/f", 0o666, 0)
	u.rootDir("pub", 0o777, 0)
	u.rootDir("tmp", 0o1777, 0)
	u.rootFile("tmp/rootfile", 0o666, 0)
	u.rootDir("sgid", 0o2777, 1234)
	u.rootFile("suid", 0o4777, 0)
	u.rootFile("suiddirect", 0o4777, 0)
	u.rootFile("suidtrunc", 0o4777, 0)
	u.rootFile("suidalloc", 0o4777, 0)
	u.rootFile("sgidx", 0o2777, 0)
	u.rootFile("sgidnox", 0o2767, 0) // setgid without group execute: not a privilege, kept
	u.rootFile("suidroot", 0o4777, 0)

	t.Run("access", func(t *testing.T) {
		u := u.as(t)
		u.expect("EACCES", "read", u.p("secret"))
		u.expect("ok", "read", u.p("readonly"))
		u.expect("EACCES", "write", u.p("readonly"), "x")
		u.expect("EACCES", "opentrunc", u.p("readonly"))
		u.expect("EACCES", "truncate", u.p("readonly"), "0")
		u.expect("EACCES", "touch", u.p("readonly"))
		u.expect("EACCES", "create", u.p("ro/new"), "0644")
		u.expect("EACCES", "mkdir", u.p("ro/newdir"), "0755")
		u.expect("EACCES", "symlink", "x", u.p("ro/newlink"))
		u.expect("EACCES", "unlink", u.p("ro/f"))
		u.expect("EACCES", "rename", u.p("ro/f"), u.p("pub/f"))
		u.expect("EACCES", "stat", u.p("private/f"))
		u.expect("EACCES", "readdir", u.p("private"))
		u.expect("EPERM", "mknodchr", u.p("pub/null"))
		if b, err := os.ReadFile("/proc/sys/fs/protected_hardlinks"); err == nil && strings.TrimSpace(string(b)) == "1" {
			u.expect("EPERM", "link", u.p("secret"), u.p("pub/secret"))
		}
		if b, err := os.ReadFile(u.p("secret")); err != nil || string(b) != "root's" {
			t.Errorf("secret now %q, %v", b, err)
		}
	})
	t.Run("ownership", func(t *testing.T) {
		u := u.as(t)
		u.expect("EPERM", "chmod", u.p("shared"), "0777")
		u.expect("EPERM", "chown", u.p("shared"), "65534", "65534")
		u.expect("EPERM", "utimes", u.p("shared"))
		u.expect("ok", "touch", u.p("shared")) // times now: write permission is enough
		u.expect("ok", "write", u.p("shared"), "x")
		u.expect("ok", "truncate", u.p("shared"), "1")
		u.wantMode("shared", 0o666)
		u.wantOwner("shared", 0, 0)
	})
	t.Run("create", func(t *testing.T) {
		u := u.as(t)
		u.expect("ok", "create", u.p("pub/f"), "0644")
		u.wantOwner("pub/f", nobody, nobody)
		u.wantMode("pub/f", 0o644)
		u.expect("ok", "mkdir", u.p("pub/d"), "0755")
		u.wantOwner("pub/d", nobody, nobody)
		u.expect("ok", "symlink", "f", u.p("pub/l"))
		u.wantOwner("pub/l", nobody, nobody)
		u.expect("ok", "mkfifo", u.p("pub/p"), "0644")
		u.wantOwner("pub/p", nobody, nobody)
		u.expect("ok", "chmod", u.p("pub/f"), "0600")
		u.wantMode("pub/f", 0o600)
		u.expect("ok", "utimes", u.p("pub/f"))
		if st := u.stat("pub/f"); st.Atim.Sec != 1 || st.Mtim.Sec != 2 {
			t.Errorf("utimes by the owner: atime %d, mtime %d, want 1 and 2", st.Atim.Sec, st.Mtim.Sec)
		}
		u.expect("EPERM", "chown", u.p("pub/f"), "0", "65534")
		u.expect("EPERM", "chown", u.p("pub/f"), "65534", "0")
		u.expect("ok", "chown", u.p("pub/f"), "65534", "65534")
	})
	t.Run("sticky", func(t *testing.T) {
		u := u.as(t)
		u.expect("EPERM", "unlink", u.p("tmp/rootfile"))
		u.expect("EPERM", "rename", u.p("tmp/rootfile"), u.p("tmp/mine"))
		u.expect("ok", "create", u.p("tmp/own"), "0644")
		u.expect("EPERM", "rename", u.p("tmp/own"), u.p("tmp/rootfile"))
		u.expect("ok", "rename", u.p("tmp/own"), u.p("tmp/own2"))
		u.expect("ok", "unlink", u.p("tmp/own2"))
		u.expect("ok", "write", u.p("tmp/rootfile"), "x")
		u.wantOwner("tmp/rootfile", 0, 0)
	})
	t.Run("killpriv", func(t *testing.T) {
		u := u.as(t)
		u.expect("ok", "write", u.p("suid"), "x")
		u.wantMode("suid", 0o777)
		u.expect("ok", "writedirect", u.p("suiddirect"))
		u.wantMode("suiddirect", 0o777)
		u.expect("ok", "truncate", u.p("suidtrunc"), "0")
		u.wantMode("suidtrunc", 0o777)
		u.expect("ok", "fallocate", u.p("suidalloc"))
		u.wantMode("suidalloc", 0o777)
		u.expect("ok", "write", u.p("sgidx"), "x")
		u.wantMode("sgidx", 0o777)
		u.expect("ok", "write", u.p("sgidnox"), "x")
		u.wantMode("sgidnox", 0o2767)
		// A write by root keeps the bits (CAP_FSETID); a chown clears them.
		f, err := os.OpenFile(u.p("suidroot"), os.O_WRONLY, 0)
		u.setup("open", err)
		_, err = f.Write([]byte("x"))
		u.setup("write", errors.Join(err, f.Close()))
		u.wantMode("suidroot", 0o4777)
		u.setup("chown", unix.Lchown(u.p("suidroot"), 1, 1))
		u.wantMode("suidroot", 0o777)
	})
	t.Run("setgid", func(t *testing.T) {
		u := u.as(t)
		u.expect("ok", "create", u.p("sgid/f"), "0755")
		u.wantOwner("sgid/f", nobody, 1234)
		u.wantMode("sgid/f", 0o755)
		u.expect("ok", "mkdir", u.p("sgid/d"), "0755")
		u.wantOwner("sgid/d", nobody, 1234)
		u.wantMode("sgid/d", 0o2755)
		u.expect("ok", "symlink", "f", u.p("sgid/l"))
		u.wantOwner("sgid/l", nobody, 1234)
		u.expect("ok", "mkfifo", u.p("sgid/p"), "0644")
		u.wantOwner("sgid/p", nobody, 1234)
		u.expect("ok", "create", u.p("sgid/d/g"), "0644")
		u.wantOwner("sgid/d/g", nobody, 1234)
		// nobody is not in group 1234: it may not set the setgid bit.
		u.expect("ok", "create", u.p("sgid/x"), "02755")
		u.wantMode("sgid/x", 0o755)
		u.expect("ok", "chmod", u.p("sgid/f"), "02755")
		u.wantMode("sgid/f", 0o755)
	})
	t.Run("xattr", func(t *testing.T) {
		u := u.as(t)
		u.rootFile("x", 0o644, 0)
		u.setup("setxattr", unix.Lsetxattr(u.p("x"), "user.a", []byte("1"), 0))
		u.setup("setxattr", unix.Lsetxattr(u.p("x"), "trusted.b", []byte("2"), 0))
		u.setup("setxattr", unix.Lsetxattr(u.p("x"), "security.c", []byte("3"), 0))
		u.expect("user.a,security.c", "listxattr", u.p("x"))
		u.expect("ok", "getxattr", u.p("x"), "user.a")
		u.expect("ENODATA", "getxattr", u.p("x"), "trusted.b")
		u.expect("ok", "getxattr", u.p("x"), "security.c")
		u.expect("EACCES", "setxattr", u.p("x"), "user.a", "v")
		u.expect("EACCES", "getxattr", u.p("secret"), "user.k")
		u.expect("EPERM", "setxattr", u.p("shared"), "trusted.k", "v")
		u.expect("EPERM", "setxattr", u.p("shared"), "security.k", "v")
		u.expect(unix.ErrnoName(unix.EOPNOTSUPP), "setxattr", u.p("secret"), "system.k", "v")
		u.expect(unix.ErrnoName(unix.EOPNOTSUPP), "setxattr", u.p("shared"), "other.k", "v")
		for _, name := range []string{"system.k", "other.k"} {
			if err := unix.Lsetxattr(u.p("x"), name, []byte("v"), 0); !errors.Is(err, unix.EOPNOTSUPP) {
				t.Errorf("setxattr %s as root: %v, want EOPNOTSUPP", name, err)
			}
		}
		if err := unix.Lsetxattr(u.p("x"), "user.", []byte("v"), 0); !errors.Is(err, unix.EINVAL) {
			t.Errorf("setxattr user. as root: %v, want EINVAL", err)
		}
		b := make([]byte, 256)
		n, err := unix.Llistxattr(u.p("x"), b)
		if got := string(b[:max(n, 0)]); err != nil || got != "user.a\x00trusted.b\x00security.c\x00" {
			t.Errorf("listxattr as root: %q, %v", got, err)
		}
	})
	checkCleanLive(t, v)
}

// posixUserMntEnv names the variable that makes TestPosixAsUser, in a
// child run as nobody, run the posixtest cases its -test.run selects on
// the mount the variable names.
const posixUserMntEnv = "TRICOPY_POSIX_USER_MNT"

// rootOnlyPosix lists the posixtest cases TestPosixAsUser leaves out, with
// the reason: none, since no case needs a privilege (mknod of a device,
// chown to another user, trusted xattrs).
var rootOnlyPosix = map[string]string{}

// TestPosixAsUser runs go-fuse's posixtest suite as nobody in a directory
// it owns on a mount by root with allow_other, each case on a fresh volume
// checked with fsck afterwards. A skipped case fails. Run one case with
// go test -p 1 -run 'TestPosixAsUser/^NAME$' ./fusefs.
func TestPosixAsUser(t *testing.T) {
	if mnt := os.Getenv(posixUserMntEnv); mnt != "" {
		if os.Geteuid() != nobody || os.Getegid() != nobody {
			t.Fatalf("child runs as %d:%d, want nobody", os.Geteuid(), os.Getegid())
		}
		for _, name := range posixNames() {
			t.Run(name, func(t *testing.T) { posixtest.All[name](t, mnt) })
		}
		return
	}
	requireFUSE(t)
	bin := userBinary(t)
	for _, name := range posixNames() {
		t.Run(name, func(t *testing.T) {
			if why, ok := rootOnlyPosix[name]; ok {
				t.Skip(why)
			}
			v := newMemVolume(t, 64<<10) // 256 MiB
			t.Cleanup(func() { checkClean(t, v) })
			u := newUserMount(t, v, bin)
			home := u.p("home")
			if err := os.Mkdir(home, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(home, nobody, nobody); err != nil {
				t.Fatal(err)
			}
			cmd := u.command("-test.run=^TestPosixAsUser$/^"+name+"$", "-test.v")
			cmd.Env = append(os.Environ(), posixUserMntEnv+"="+home)
			out, err := cmd.CombinedOutput()
			switch {
			case err != nil:
				t.Fatalf("posixtest %s as nobody: %v\n%s", name, err, out)
			case bytes.Contains(out, []byte("--- SKIP")):
				t.Fatalf("posixtest %s as nobody skipped: every case must pass\n%s", name, out)
			case !bytes.Contains(out, []byte("--- PASS: TestPosixAsUser/"+name)):
				t.Fatalf("posixtest %s as nobody did not run\n%s", name, out)
			}
		})
	}
}

// mountInfo returns the per-mount options (field 6) and the superblock
// options (the third field after the separator) of the mount at mnt in
// /proc/self/mountinfo.
func mountInfo(t testing.TB, mnt string) (mountOpts, superOpts []string) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 10 || f[4] != mnt {
			continue
		}
		for i := 6; i+3 < len(f); i++ {
			if f[i] == "-" {
				mountOpts, superOpts = strings.Split(f[5], ","), strings.Split(f[i+3], ",")
				break
			}
		}
	}
	if mountOpts == nil {
		t.Fatalf("%s not in /proc/self/mountinfo", mnt)
	}
	return mountOpts, superOpts
}

// wantMountOpts fails the test unless the mount at mnt has every one of
// the mount options and superblock options given.
func wantMountOpts(t testing.TB, what, mnt string, mountOpts, superOpts []string) {
	t.Helper()
	m, s := mountInfo(t, mnt)
	for _, o := range mountOpts {
		if !slices.Contains(m, o) {
			t.Errorf("%s mount options %q lack %s", what, m, o)
		}
	}
	for _, o := range superOpts {
		if !slices.Contains(s, o) {
			t.Errorf("%s superblock options %q lack %s", what, s, o)
		}
	}
}

// TestMountOptions checks in /proc/self/mountinfo that the primary and the
// replica mounts are nosuid and nodev with default_permissions, the
// replica read-only, and that a promotion keeps nosuid and nodev.
func TestMountOptions(t *testing.T) {
	h := newReplicaPair(t)
	wantMountOpts(t, "primary", h.primary, []string{"rw", "nosuid", "nodev"}, []string{"rw", "default_permissions"})
	wantMountOpts(t, "replica", h.replica, []string{"nosuid", "nodev"}, []string{"ro", "default_permissions"})
	if err := h.srv.Promote(context.Background(), LocalDevice(h.r)); err != nil {
		t.Fatal(err)
	}
	wantMountOpts(t, "promoted replica", h.replica, []string{"rw", "nosuid", "nodev"}, []string{"rw", "default_permissions"})
}

// TestNosuidNodev checks that the mount honours neither setuid bits (a
// setuid-root program run by nobody keeps nobody's euid) nor device nodes
// (they are created but cannot be opened), while both are stored.
func TestNosuidNodev(t *testing.T) {
	v := newMemVolume(t, 16<<10)
	u := newUserMount(t, v, userBinary(t))
	prog := u.p("suidprog")
	if err := copyFile(u.bin, prog, 0o755); err != nil {
		t.Fatal(err)
	}
	u.setup("chmod", unix.Chmod(prog, 0o4755))
	u.wantMode("suidprog", 0o4755)
	// Exec'd by a child, not from this process: a fork of the process
	// serving the mount holds its /dev/fuse descriptor until its execve
	// ends, and an execve of a file on the mount needs the server; under
	// the race detector that deadlocked.
	u.expect(strconv.Itoa(nobody), "exec", prog)
	null := u.p("null")
	u.setup("mknod", unix.Mknod(null, unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	if st := u.stat("null"); st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) {
		t.Errorf("device node stored as mode %#o rdev %#x", st.Mode, st.Rdev)
	}
	if f, err := os.OpenFile(null, os.O_WRONLY, 0); !errors.Is(err, unix.EACCES) {
		if err == nil {
			f.Close()
		}
		t.Errorf("open a device node as root: %v, want EACCES (nodev)", err)
	}
}

// TestMountArgs checks the options every mount gets from MountArgs.
func TestMountArgs(t *testing.T) {
	for _, ro := range []bool{false, true} {
		o := MountArgs("v", ro, false, false).MountOptions.Options
		for _, want := range []string{"default_permissions", "nosuid", "nodev"} {
			if !slices.Contains(o, want) {
				t.Errorf("MountArgs(readOnly=%v) options %q lack %s", ro, o, want)
			}
		}
		if slices.Contains(o, "ro") != ro {
			t.Errorf("MountArgs(readOnly=%v) options %q", ro, o)
		}
	}
}

// callerCtx returns the context go-fuse gives an operation by uid and gid.
func callerCtx(uid, gid uint32) context.Context {
	return fuse.NewContext(context.Background(), &fuse.Caller{Owner: fuse.Owner{Uid: uid, Gid: gid}})
}

// TestInitOwner checks the owner and mode of every kind of new inode, in
// an ordinary and in a setgid directory.
func TestInitOwner(t *testing.T) {
	ctx := context.Background()
	fs, v := newEngine(t, 4096)
	sgid, _, err := fs.mknod(ctx, rootIno, "sgid", s_IFDIR|syscall.S_ISGID|0o777, 0, 0, 1234)
	if err != nil {
		t.Fatal(err)
	}
	plain, _, err := fs.mknod(ctx, rootIno, "plain", s_IFDIR|0o777, 0, 0, 1234)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		dir      uint32
		wantGid  uint32
		wantSgid bool // on a new directory
	}{{plain, 7, false}, {sgid, 1234, true}} {
		check := func(what string, in inode, err error, mode uint32) {
			t.Helper()
			if err != nil {
				t.Fatalf("%s in directory %d: %v", what, c.dir, err)
			}
			if in.uid != 5 || in.gid != c.wantGid || in.mode != mode {
				t.Errorf("%s in directory %d: %d:%d mode %#o, want 5:%d mode %#o", what, c.dir, in.uid, in.gid, in.mode, c.wantGid, mode)
			}
		}
		_, in, err := fs.mknod(ctx, c.dir, "f", s_IFREG|0o644, 0, 5, 7)
		check("file", in, err, s_IFREG|0o644)
		_, in, err = fs.mknod(ctx, c.dir, "p", s_IFIFO|0o644, 0, 5, 7)
		check("fifo", in, err, s_IFIFO|0o644)
		dirMode := uint32(s_IFDIR | 0o755)
		if c.wantSgid {
			dirMode |= syscall.S_ISGID
		}
		_, in, err = fs.mknod(ctx, c.dir, "d", s_IFDIR|0o755, 0, 5, 7)
		check("directory", in, err, dirMode)
		_, in, err = fs.symlink(ctx, c.dir, "l", "f", 5, 7)
		check("symlink", in, err, s_IFLNK|0o777)
		ino, in, err := fs.tmpfile(ctx, c.dir, s_IFREG|0o600, 5, 7)
		check("tmpfile", in, err, s_IFREG|0o600)
		if err := fs.release(ctx, ino); err != nil {
			t.Fatal(err)
		}
	}
	checkCleanLive(t, v)
}

func TestCheckXattrName(t *testing.T) {
	for name, want := range map[string]error{
		"user.a":                   nil,
		"trusted.a":                nil,
		"security.a":               nil,
		"user.":                    syscall.EINVAL,
		"trusted.":                 syscall.EINVAL,
		"system.a":                 syscall.EOPNOTSUPP,
		"system.posix_acl_access":  syscall.EOPNOTSUPP,
		"other.a":                  syscall.EOPNOTSUPP,
		"user":                     syscall.EOPNOTSUPP,
		"a":                        syscall.EOPNOTSUPP,
		"User.a":                   syscall.EOPNOTSUPP,
		"security.capability.more": nil,
	} {
		if got := checkXattrName(name); got != want {
			t.Errorf("checkXattrName(%q) = %v, want %v", name, got, want)
		}
	}
	ctx := context.Background()
	fs, _ := newEngine(t, 4096)
	ino, _, err := fs.mknod(ctx, rootIno, "f", s_IFREG|0o644, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := fs.setxattr(ctx, ino, "system.a", []byte("v"), 0); err != syscall.EOPNOTSUPP {
		t.Errorf("setxattr system.a: %v, want EOPNOTSUPP", err)
	}
	if err := fs.setxattr(ctx, ino, "system.a", nil, 0); err != syscall.EOPNOTSUPP {
		t.Errorf("removexattr system.a: %v, want EOPNOTSUPP", err)
	}
	if _, err := fs.getxattr(ino, "system.a"); err != syscall.EOPNOTSUPP {
		t.Errorf("getxattr system.a: %v, want EOPNOTSUPP", err)
	}
	if err := fs.setxattr(ctx, ino, "user.", []byte("v"), 0); err != syscall.EINVAL {
		t.Errorf("setxattr user.: %v, want EINVAL", err)
	}
	if names, err := fs.listxattr(ino); err != nil || len(names) != 0 {
		t.Errorf("refused names were stored: %q, %v", names, err)
	}
}

// TestListxattrHidesTrusted checks that trusted.* names are listed to root
// only.
func TestListxattrHidesTrusted(t *testing.T) {
	ctx := context.Background()
	fs, _ := newEngine(t, 4096)
	ino, _, err := fs.mknod(ctx, rootIno, "f", s_IFREG|0o644, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"user.a", "trusted.b", "security.c"} {
		if err := fs.setxattr(ctx, ino, name, []byte("v"), 0); err != nil {
			t.Fatal(err)
		}
	}
	n := &node{fs: fs, ino: ino}
	for uid, want := range map[uint32]string{0: "user.a\x00trusted.b\x00security.c\x00", nobody: "user.a\x00security.c\x00"} {
		size, errno := n.Listxattr(callerCtx(uid, uid), nil)
		if errno != 0 || int(size) != len(want) {
			t.Errorf("uid %d: listxattr size %d, %v, want %d", uid, size, errno, len(want))
		}
		b := make([]byte, 256)
		size, errno = n.Listxattr(callerCtx(uid, uid), b)
		if got := string(b[:size]); errno != 0 || got != want {
			t.Errorf("uid %d: listxattr %q, %v, want %q", uid, got, errno, want)
		}
	}
}

func TestMayOpen(t *testing.T) {
	in := &inode{mode: s_IFREG | 0o640, uid: 5, gid: 6}
	for _, c := range []struct {
		uid, gid uint32
		flags    uint32
		want     bool
	}{
		{0, 0, syscall.O_RDWR | syscall.O_TRUNC, true},
		{5, 9, syscall.O_RDWR, true},
		{5, 9, syscall.O_WRONLY | syscall.O_TRUNC, true},
		{7, 6, syscall.O_RDONLY, true},
		{7, 6, syscall.O_WRONLY, false},
		{7, 6, syscall.O_RDONLY | syscall.O_TRUNC, false},
		{7, 6, syscall.O_RDWR, false},
		{7, 8, syscall.O_RDONLY, false},
		{nobody, nobody, syscall.O_RDONLY, false},
	} {
		if got := mayOpen(in, c.uid, c.gid, openAccess(c.flags)); got != c.want {
			t.Errorf("uid %d gid %d flags %#x on %d:%d %#o: %v, want %v", c.uid, c.gid, c.flags, in.uid, in.gid, in.mode&0o7777, got, c.want)
		}
	}
	// The owner class decides for the owner even when others may do more.
	if mayOpen(&inode{mode: s_IFREG | 0o066, uid: 5}, 5, 5, accRead) {
		t.Error("owner without read permission may read")
	}
}

// TestCreateExistingChecksAccess checks a create that finds the name
// taken (the kernel believed it absent): it opens the file only if the
// caller may, and does not truncate it otherwise.
func TestCreateExistingChecksAccess(t *testing.T) {
	ctx := context.Background()
	fs, _ := newEngine(t, 4096)
	ino, _, err := fs.mknod(ctx, rootIno, "secret", s_IFREG|0o600, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fs.write(ctx, ino, []byte("root's"), 0); err != nil {
		t.Fatal(err)
	}
	n := &node{fs: fs, ino: rootIno}
	errno := func() (errno syscall.Errno) {
		defer func() {
			// Opening makes the go-fuse node, which needs a mount.
			if recover() != nil {
				errno = 0
			}
		}()
		var out fuse.EntryOut
		_, _, _, errno = n.Create(callerCtx(nobody, nobody), "secret", syscall.O_WRONLY|syscall.O_CREAT|syscall.O_TRUNC, 0o644, &out)
		return errno
	}()
	if errno != syscall.EACCES {
		t.Fatalf("create over root's 0600 file as nobody: %v, want EACCES", errno)
	}
	if in, err := fs.getattr(ino); err != nil || in.size != 6 {
		t.Fatalf("root's file after the refused create: size %d, %v", in.size, err)
	}
	if fs.opens[ino] != 0 {
		t.Fatalf("the refused create left %d open handles", fs.opens[ino])
	}
}
