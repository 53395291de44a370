package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// requireFUSE skips a FUSE test where FUSE cannot work (the mount is a
// direct mount: it needs root and /dev/fuse), unless TRICOPY_REQUIRE_FUSE is
// set (as in make test and CI), where it fails instead.
func requireFUSE(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "not root"
	} else if _, err := os.Stat("/dev/fuse"); err != nil {
		why = "no /dev/fuse"
	}
	if why == "" {
		return
	}
	if os.Getenv("TRICOPY_REQUIRE_FUSE") != "" {
		t.Fatalf("FUSE test cannot run (%s) but TRICOPY_REQUIRE_FUSE is set", why)
	}
	t.Skipf("FUSE test needs root and /dev/fuse: %s", why)
}

// mounted is a `tricopy mount` running in the test process.
type mounted struct {
	cancel         context.CancelFunc
	done           chan int // receives the exit code
	stdout, stderr *syncBuffer
}

// startMount runs `tricopy mount args...` in the background and returns once
// it printed that the volume is mounted. Cleanup stops it if the test did
// not.
func startMount(t *testing.T, args ...string) *mounted {
	t.Helper()
	requireFUSE(t)
	clearEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	m := &mounted{cancel: cancel, done: make(chan int, 1), stdout: &syncBuffer{}, stderr: &syncBuffer{}}
	go func() {
		m.done <- run(ctx, append([]string{"mount"}, args...), strings.NewReader(""), m.stdout, m.stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-m.done:
		case <-time.After(30 * time.Second):
			t.Errorf("mount did not exit 30s after cancel; stderr:\n%s", m.stderr)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(m.stdout.String(), "mounted volume") {
		select {
		case code := <-m.done:
			t.Fatalf("mount exited with %d before mounting; stderr:\n%s", code, m.stderr)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("mount did not report mounting within 20s; stderr:\n%s", m.stderr)
		}
	}
	return m
}

// wait returns the exit code of the mount, failing the test if it does not
// exit within 30 seconds.
func (m *mounted) wait(t *testing.T) int {
	t.Helper()
	select {
	case code := <-m.done:
		m.done <- code // for Cleanup
		return code
	case <-time.After(30 * time.Second):
		t.Fatalf("mount did not exit; stderr:\n%s", m.stderr)
		return -1
	}
}

func TestMountCreateWriteSignalRemount(t *testing.T) {
	base := t.TempDir()
	data := filepath.Join(base, "data", "a")
	mnt := filepath.Join(base, "mnt", "a")
	m := startMount(t, "--volume", "a", "--data", data, "--mountpoint", mnt, "--size", "16MiB")
	if got, want := m.stdout.String(), "mounted volume a at "+mnt+"\n"; got != want {
		t.Errorf("stdout %q, want %q", got, want)
	}
	if err := os.WriteFile(filepath.Join(mnt, "hello.txt"), []byte("hello\n"), 0o644); err != nil {
		t.Fatalf("write on the mount: %v", err)
	}

	// The volume is locked while mounted.
	runCmd(t, nil, "fsck", "--data", data).expect(t, exitFailed, "in use")

	m.cancel() // as SIGINT does
	if code := m.wait(t); code != exitOK {
		t.Fatalf("mount exited with %d after cancel, want 0; stderr:\n%s", code, m.stderr)
	}
	if _, err := os.Stat(filepath.Join(mnt, "hello.txt")); !os.IsNotExist(err) {
		t.Fatalf("file still visible at the mountpoint after unmount (stat: %v)", err)
	}
	r := runCmd(t, nil, "fsck", "--data", data)
	r.expect(t, exitOK)
	if !strings.Contains(r.stdout, "files: 1,") {
		t.Errorf("fsck after unmount: %s", r.stdout)
	}

	// Remount without --size: the volume exists; the file is there.
	m = startMount(t, "--volume", "a", "--data", data, "--mountpoint", mnt, "--read-only")
	b, err := os.ReadFile(filepath.Join(mnt, "hello.txt"))
	if err != nil || string(b) != "hello\n" {
		t.Fatalf("read after remount: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "other"), nil, 0o644); err == nil {
		t.Errorf("write on a read-only mount succeeded")
	}
	m.cancel()
	if code := m.wait(t); code != exitOK {
		t.Fatalf("read-only mount exited with %d, want 0", code)
	}
}

func TestMountExternalUnmount(t *testing.T) {
	base := t.TempDir()
	data := filepath.Join(base, "data")
	mnt := filepath.Join(base, "mnt")
	runCmd(t, nil, "format", "--data", data, "--size", "4MiB").expect(t, exitOK)
	m := startMount(t, "--volume", "ext", "--data", data, "--mountpoint", mnt)
	if err := os.Mkdir(filepath.Join(mnt, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Unmount(mnt, 0); err != nil {
		t.Fatalf("umount %s: %v", mnt, err)
	}
	if code := m.wait(t); code != exitOK {
		t.Fatalf("mount exited with %d after an external unmount, want 0; stderr:\n%s", code, m.stderr)
	}
	if !strings.Contains(m.stderr.String(), "unmounted from outside") {
		t.Errorf("stderr does not report the external unmount:\n%s", m.stderr)
	}
	r := runCmd(t, nil, "fsck", "--data", data)
	r.expect(t, exitOK)
	if !strings.Contains(r.stdout, "directories: 3,") {
		t.Errorf("fsck after external unmount: %s", r.stdout)
	}
}

func TestMountSizeIgnoredWhenVolumeExists(t *testing.T) {
	base := t.TempDir()
	data := filepath.Join(base, "data")
	runCmd(t, nil, "format", "--data", data, "--size", "4MiB").expect(t, exitOK)
	m := startMount(t, "--volume", "a", "--data", data, "--mountpoint", filepath.Join(base, "mnt"), "--size", "8MiB")
	m.cancel()
	if code := m.wait(t); code != exitOK {
		t.Fatalf("mount exited with %d, want 0", code)
	}
	if !strings.Contains(m.stderr.String(), "size ignored") {
		t.Errorf("no warning that --size is ignored:\n%s", m.stderr)
	}
}

// runAsMainEnv, when set to 1, makes the test binary run main() with its
// arguments instead of the tests, so that a test can run the real binary's
// signal handling in a child process without building it.
const runAsMainEnv = "TRICOPY_CMD_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runAsMainEnv) == "1" {
		main()
	}
	os.Exit(m.Run())
}

// TestSignalUnmounts runs the binary's main in a child process and checks
// that SIGINT and SIGTERM unmount and exit 0.
func TestSignalUnmounts(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			requireFUSE(t)
			base := t.TempDir()
			mnt := filepath.Join(base, "mnt")
			cmd := exec.Command(os.Args[0], "mount", "--volume", "s", "--data", filepath.Join(base, "data"),
				"--mountpoint", mnt, "--size", "4MiB", "--log-format", "text")
			cmd.Env = append(os.Environ(), runAsMainEnv+"=1")
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr syncBuffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if cmd.ProcessState == nil {
					cmd.Process.Kill()
					cmd.Wait()
					syscall.Unmount(mnt, syscall.MNT_DETACH)
				}
			})
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if want := "mounted volume s at " + mnt + "\n"; line != want {
				t.Fatalf("first line %q (%v), want %q; stderr:\n%s", line, err, want, &stderr)
			}
			if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("after %v: %v; stderr:\n%s", sig, err, &stderr)
			}
			if !strings.Contains(stderr.String(), "msg=unmounted") {
				t.Errorf("no clean unmount logged:\n%s", &stderr)
			}
			if _, err := os.Stat(filepath.Join(mnt, "f")); !os.IsNotExist(err) {
				t.Errorf("mountpoint still mounted after exit (stat: %v)", err)
			}
		})
	}
}
