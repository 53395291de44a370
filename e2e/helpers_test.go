package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Timeouts of the tests.
const (
	// cmdTimeout bounds every program a test runs.
	cmdTimeout = 2 * time.Minute
	// mountTimeout bounds the wait for a mount to appear or to go away.
	mountTimeout = 15 * time.Second
	// stopTimeout bounds the wait for tricopy mount to exit after SIGTERM
	// or SIGKILL.
	stopTimeout = 30 * time.Second
	// pollInterval is how often a wait checks its condition.
	pollInterval = 10 * time.Millisecond
)

// fuseMissing says why FUSE mounts cannot work here, or "" if they can.
func fuseMissing() string {
	if os.Geteuid() != 0 {
		return "not root"
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return "no /dev/fuse"
	}
	return ""
}

// requireFUSEEnv reports whether TRICOPY_REQUIRE_FUSE is set (as in CI):
// a test that cannot run then fails instead of skipping.
func requireFUSEEnv() bool { return os.Getenv("TRICOPY_REQUIRE_FUSE") != "" }

// requireFUSE skips t unless it can mount FUSE filesystems with the tricopy
// binary and run the named programs (and fusermount3); with
// TRICOPY_REQUIRE_FUSE set it fails instead. It also skips with -short.
func requireFUSE(t testing.TB, programs ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e test: skipped with -short")
	}
	why := fuseMissing()
	if why == "" {
		for _, p := range append([]string{"fusermount3"}, programs...) {
			if _, err := exec.LookPath(p); err != nil {
				why = p + " not installed"
				break
			}
		}
	}
	if why == "" && tricopyBin == "" {
		why = "the tricopy binary was not built"
	}
	if why == "" {
		return
	}
	if requireFUSEEnv() {
		t.Fatalf("e2e test cannot run (%s) but TRICOPY_REQUIRE_FUSE is set", why)
	}
	t.Skipf("e2e test needs root, /dev/fuse and programs: %s", why)
}

// childEnv is the environment of every program a test runs: the test's,
// without TRICOPY_* variables (which would configure tricopy) and GIT_*
// ones, with a fixed locale, an empty home and a fixed git identity and
// date, so that the output does not depend on the user.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "TRICOPY_") || strings.HasPrefix(kv, "GIT_") ||
			strings.HasPrefix(kv, "HOME=") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env,
		"HOME="+filepath.Join(workDir, "home"),
		"LC_ALL=C",
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=tricopy e2e", "GIT_AUTHOR_EMAIL=e2e@tricopy.invalid", "GIT_AUTHOR_DATE=2026-01-02T03:04:05Z",
		"GIT_COMMITTER_NAME=tricopy e2e", "GIT_COMMITTER_EMAIL=e2e@tricopy.invalid", "GIT_COMMITTER_DATE=2026-01-02T03:04:05Z",
	)
}

// command returns a command running name with args in dir (if not "")
// with childEnv, killed after cmdTimeout.
func command(t testing.TB, dir, name string, args ...string) *exec.Cmd {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = childEnv()
	return cmd
}

// run runs the program name with args in dir and returns its standard
// output; it fails t if the program fails.
func run(t testing.TB, dir, name string, args ...string) string {
	t.Helper()
	return runCmd(t, command(t, dir, name, args...))
}

// runCmd runs cmd and returns its standard output; it fails t, showing
// both outputs, if the program fails.
func runCmd(t testing.TB, cmd *exec.Cmd) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s (in %s): %v after %v\nstdout:\n%s\nstderr:\n%s", strings.Join(cmd.Args, " "), cmd.Dir, err,
			time.Since(start).Round(time.Millisecond), clip(stdout.String()), clip(stderr.String()))
	}
	return stdout.String()
}

// clip shortens s to its last 4 KiB for a failure message.
func clip(s string) string {
	const max = 4 << 10
	if len(s) <= max {
		return s
	}
	return "[...]" + s[len(s)-max:]
}

// format runs `tricopy format` on data.
func format(t testing.TB, data, size string) {
	t.Helper()
	out := run(t, "", tricopyBin, "format", "--data", data, "--size", size, "--log-format", "text")
	t.Logf("%s", strings.TrimSpace(out))
}

// fsckReport is the JSON report of `tricopy fsck --json` (a CLI contract).
type fsckReport struct {
	Clean       bool     `json:"clean"`
	Problems    []string `json:"problems"`
	Blocks      uint64   `json:"blocks"`
	FreeBlocks  uint64   `json:"free_blocks"`
	Inodes      uint64   `json:"inodes"`
	FreeInodes  uint64   `json:"free_inodes"`
	Files       uint64   `json:"files"`
	Directories uint64   `json:"directories"`
	Symlinks    uint64   `json:"symlinks"`
	Others      uint64   `json:"others"`
}

// fsckClean runs `tricopy fsck --data data --json` and fails t unless it
// exits 0 with a clean report.
func fsckClean(t testing.TB, data string) fsckReport {
	t.Helper()
	cmd := command(t, "", tricopyBin, "fsck", "--data", data, "--json", "--log-format", "text")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var r fsckReport
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("tricopy fsck --data %s: %v; report: %v\nstdout:\n%s\nstderr:\n%s", data, runErr, err, clip(stdout.String()), clip(stderr.String()))
	}
	if runErr != nil || !r.Clean || len(r.Problems) > 0 {
		t.Fatalf("tricopy fsck --data %s: %v, clean=%v, %d problems:\n%s\nstderr:\n%s",
			data, runErr, r.Clean, len(r.Problems), strings.Join(r.Problems, "\n"), clip(stderr.String()))
	}
	t.Logf("fsck %s: clean: %d files, %d directories, %d symlinks, %d of %d blocks free",
		data, r.Files, r.Directories, r.Symlinks, r.FreeBlocks, r.Blocks)
	return r
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// mount is a `tricopy mount` process.
type mount struct {
	mnt, data string
	cmd       *exec.Cmd
	stdout    syncBuffer
	stderr    syncBuffer
	exited    chan struct{} // closed when the process has exited
	waitErr   error         // the exit status; read after exited is closed
}

// startMount starts `tricopy mount --volume volume --data data
// --mountpoint mnt` in the background and returns once the mount appears
// in /proc/self/mountinfo. At cleanup it stops the process if it is still
// running, unmounts a mount left behind, and, if t failed, logs the
// process's output.
func startMount(t testing.TB, volume, data, mnt string) *mount {
	t.Helper()
	mnt = realPath(t, mnt)
	return launchMount(t, mnt, data, mountTimeout, "mount", "--volume", volume, "--data", data, "--mountpoint", mnt, "--log-format", "text")
}

// launchMount starts `tricopy args...` (a mount command on mnt) in the
// background and returns once it printed "mounted volume" and the mount is
// in the mount table. At cleanup it stops the process if it still runs,
// unmounts a mount left behind, and, if t failed, logs the process's
// output.
func launchMount(t testing.TB, mnt, data string, timeout time.Duration, args ...string) *mount {
	t.Helper()
	return launchReady(t, mnt, data, "mounted volume", nil, timeout, args...)
}

// launchReady is launchMount for a process that prints ready once mounted,
// with env added to its environment.
func launchReady(t testing.TB, mnt, data, ready string, env []string, timeout time.Duration, args ...string) *mount {
	t.Helper()
	m := &mount{mnt: mnt, data: data, exited: make(chan struct{})}
	m.cmd = exec.Command(tricopyBin, args...)
	m.cmd.Env = append(childEnv(), env...)
	m.cmd.Stdout, m.cmd.Stderr = &m.stdout, &m.stderr
	started := time.Now()
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("start tricopy mount: %v", err)
	}
	go func() {
		m.waitErr = m.cmd.Wait()
		close(m.exited)
	}()
	t.Cleanup(func() {
		m.cleanUp(t)
		if t.Failed() {
			t.Logf("tricopy %s (started %s)\nstdout:\n%s\nstderr:\n%s",
				strings.Join(args, " "), started.Format("15:04:05.000"), clip(m.stdout.String()), clip(m.stderr.String()))
		}
	})
	deadline := time.Now().Add(timeout)
	for !strings.Contains(m.stdout.String(), ready) || !isMounted(t, mnt) {
		select {
		case <-m.exited:
			t.Fatalf("tricopy %s exited before mounting: %v\nstderr:\n%s", strings.Join(args, " "), m.waitErr, clip(m.stderr.String()))
		case <-time.After(pollInterval):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not mounted after %v\nstderr:\n%s", mnt, timeout, clip(m.stderr.String()))
		}
	}
	return m
}

// cleanUp ends the process and removes its mount, whatever state they are
// in; it reports problems with t.Errorf.
func (m *mount) cleanUp(t testing.TB) {
	select {
	case <-m.exited:
	default:
		if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Errorf("SIGTERM tricopy mount: %v", err)
		}
		select {
		case <-m.exited:
		case <-time.After(stopTimeout):
			t.Errorf("tricopy mount did not exit %v after SIGTERM; killing it", stopTimeout)
			_ = m.cmd.Process.Kill()
			<-m.exited
		}
	}
	if isMounted(t, m.mnt) {
		if err := lazyUnmount(m.mnt); err != nil {
			t.Errorf("unmount %s left behind: %v", m.mnt, err)
		}
	}
}

// stop sends SIGTERM to the mount process and fails t unless it exits 0
// within stopTimeout, leaving no mount behind.
func (m *mount) stop(t testing.TB) {
	t.Helper()
	if err := m.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM tricopy mount: %v", err)
	}
	select {
	case <-m.exited:
	case <-time.After(stopTimeout):
		t.Fatalf("tricopy mount did not exit %v after SIGTERM", stopTimeout)
	}
	if m.waitErr != nil {
		t.Fatalf("tricopy mount after SIGTERM: %v (want exit 0)\nstderr:\n%s", m.waitErr, clip(m.stderr.String()))
	}
	if isMounted(t, m.mnt) {
		t.Fatalf("%s still mounted after tricopy mount exited", m.mnt)
	}
}

// kill kills the mount process with SIGKILL, then removes the dead mount
// it leaves behind with fusermount3 -u -z (umount -l if that fails).
func (m *mount) kill(t testing.TB) {
	t.Helper()
	if err := m.cmd.Process.Kill(); err != nil {
		t.Fatalf("SIGKILL tricopy mount: %v", err)
	}
	select {
	case <-m.exited:
	case <-time.After(stopTimeout):
		t.Fatalf("tricopy mount did not exit %v after SIGKILL", stopTimeout)
	}
	if !isMounted(t, m.mnt) {
		t.Fatalf("%s was unmounted by the death of tricopy mount: a dead FUSE mount should stay until unmounted", m.mnt)
	}
	if err := lazyUnmount(m.mnt); err != nil {
		t.Fatal(err)
	}
	waitFor(t, mountTimeout, "dead mount "+m.mnt+" to go away", func() bool { return !isMounted(t, m.mnt) })
}

// lazyUnmount detaches the (possibly dead) FUSE mount at mnt.
func lazyUnmount(mnt string) error {
	out, err := exec.Command("fusermount3", "-u", "-z", mnt).CombinedOutput()
	if err == nil {
		return nil
	}
	out2, err2 := exec.Command("umount", "-l", mnt).CombinedOutput()
	if err2 == nil {
		return nil
	}
	return fmt.Errorf("unmount %s: fusermount3 -u -z: %w (%s); umount -l: %w (%s)",
		mnt, err, bytes.TrimSpace(out), err2, bytes.TrimSpace(out2))
}

// waitFor polls cond until it returns true, failing t after timeout.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(pollInterval)
	}
}

// realPath returns p with symlinks resolved, as the mount table shows it.
func realPath(t testing.TB, p string) string {
	t.Helper()
	r, err := filepath.EvalSymlinks(p)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// isMounted reports whether a FUSE filesystem is mounted at mnt according
// to /proc/self/mountinfo.
func isMounted(t testing.TB, mnt string) bool {
	t.Helper()
	mounts, err := fuseMounts()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mounts {
		if m == mnt {
			return true
		}
	}
	return false
}

// fuseMounts returns the mountpoints of the FUSE mounts in
// /proc/self/mountinfo.
func fuseMounts() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// 36 35 0:42 / /mnt/a rw,relatime shared:1 - fuse.tricopy tricopy:a rw,...
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields, types := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(types) < 1 {
			continue
		}
		if types[0] == "fuse" || strings.HasPrefix(types[0], "fuse.") {
			out = append(out, unescapeMountinfo(fields[4]))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return out, nil
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of a path
// in /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// usedBytes returns the bytes in use on the filesystem mounted at dir.
func usedBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		t.Fatalf("statfs %s: %v", dir, err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

// copyTree copies the regular files, directories and symlinks under src to
// dst (which must not exist), with permissions made writable by the owner.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.Mkdir(target, 0o755)
		case d.Type()&os.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case d.Type().IsRegular():
			return copyFile(p, target, info.Mode().Perm()|0o644)
		default:
			return nil
		}
	})
}

func copyFile(src, dst string, perm os.FileMode) (err error) {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, out.Close()) }()
	_, err = io.Copy(out, in)
	return err
}
