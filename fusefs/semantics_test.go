package fusefs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestReaddirWhileChanging lists a directory page by page while another
// goroutine creates and removes other names in it: every name that exists
// throughout must be returned exactly once.
func TestReaddirWhileChanging(t *testing.T) {
	v := newMemVolume(t, 16<<10)
	mnt := mountVolume(t, v)
	dir := filepath.Join(mnt, "d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const stable = 3000
	for i := 0; i < stable; i++ {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("stable-%04d", i)), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			p := filepath.Join(dir, fmt.Sprintf("churn-%d", i%200))
			if i%2 == 0 {
				os.WriteFile(p, nil, 0o644)
			} else {
				os.Remove(filepath.Join(dir, fmt.Sprintf("churn-%d", (i-1)%200)))
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	for round := 0; round < 5; round++ {
		f, err := os.Open(dir)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for {
			names, err := f.Readdirnames(100) // many getdents calls
			for _, n := range names {
				seen[n]++
			}
			if err != nil {
				break
			}
		}
		f.Close()
		for i := 0; i < stable; i++ {
			if n := seen[fmt.Sprintf("stable-%04d", i)]; n != 1 {
				t.Fatalf("round %d: stable-%04d listed %d times", round, i, n)
			}
		}
		for name, n := range seen {
			if n != 1 {
				t.Fatalf("round %d: %s listed %d times", round, name, n)
			}
		}
	}
}

// TestRenameFlags checks RENAME_NOREPLACE and RENAME_EXCHANGE, including
// the exchange of a file and a directory across parents.
func TestRenameFlags(t *testing.T) {
	v := newMemVolume(t, 4096)
	mnt := mountVolume(t, v)
	p := func(s string) string { return filepath.Join(mnt, s) }
	os.Mkdir(p("a"), 0o755)
	os.Mkdir(p("b"), 0o755)
	os.Mkdir(p("a/sub"), 0o700)
	os.WriteFile(p("b/file"), []byte("file"), 0o644)
	os.WriteFile(p("x"), []byte("x"), 0o644)
	if err := unix.Renameat2(unix.AT_FDCWD, p("x"), unix.AT_FDCWD, p("b/file"), unix.RENAME_NOREPLACE); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("RENAME_NOREPLACE over a file: %v, want EEXIST", err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, p("a/sub"), unix.AT_FDCWD, p("b/file"), unix.RENAME_EXCHANGE); err != nil {
		t.Fatalf("RENAME_EXCHANGE: %v", err)
	}
	if fi, err := os.Stat(p("b/file")); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("b/file after exchange: %v %v", fi, err)
	}
	if got, err := os.ReadFile(p("a/sub")); err != nil || string(got) != "file" {
		t.Fatalf("a/sub after exchange: %q %v", got, err)
	}
	if err := os.WriteFile(p("b/file/inside"), nil, 0o644); err != nil {
		t.Fatalf("the moved directory is usable: %v", err)
	}
	if err := unix.Renameat2(unix.AT_FDCWD, p("x"), unix.AT_FDCWD, p("missing"), unix.RENAME_EXCHANGE); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("RENAME_EXCHANGE with a missing target: %v, want ENOENT", err)
	}
	// Directories: root, the orphan directory, a, b and b/file; files: x,
	// a/sub and b/file/inside.
	if r := checkClean(t, v); r.Directories != 5 || r.Files != 3 {
		t.Fatalf("fsck counts %d directories and %d files, want 5 and 3", r.Directories, r.Files)
	}
}

// TestPermissionsOtherUser mounts with allow_other and checks, as uid
// 65534 in a child process, that the kernel enforces the modes the
// filesystem stores (default_permissions).
func TestPermissionsOtherUser(t *testing.T) {
	v := newMemVolume(t, 4096)
	requireFUSE(t)
	mnt := t.TempDir()
	if err := os.Chmod(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	srv, err := Mount(context.Background(), LocalDevice(v), MountOptions{Mountpoint: mnt, Name: "perm", AllowOther: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Unmount() })
	os.WriteFile(filepath.Join(mnt, "public"), []byte("hello"), 0o644)
	os.WriteFile(filepath.Join(mnt, "secret"), []byte("hidden"), 0o600)
	os.Mkdir(filepath.Join(mnt, "closed"), 0o700)
	// t.TempDir's parents are 0700: make the path to the mount traversable.
	for d := filepath.Dir(mnt); d != "/" && d != "/tmp"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	as := func(args ...string) (string, error) {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := as("cat", filepath.Join(mnt, "public")); err != nil || out != "hello" {
		t.Fatalf("other user reads a 0644 file: %q %v", out, err)
	}
	if out, err := as("cat", filepath.Join(mnt, "secret")); err == nil {
		t.Fatalf("other user read a 0600 file: %q", out)
	}
	if out, err := as("touch", filepath.Join(mnt, "closed", "x")); err == nil {
		t.Fatalf("other user created a file in a 0700 directory: %q", out)
	}
	if out, err := as("touch", filepath.Join(mnt, "new")); err == nil {
		t.Fatalf("other user created a file in a 0755 root-owned directory: %q", out)
	}
	if out, err := as("chmod", "777", filepath.Join(mnt, "public")); err == nil {
		t.Fatalf("other user changed the mode of root's file: %q", out)
	}
	checkClean(t, v)
}
