package fusefs

import (
	"context"
	"log/slog"
	"os"
	"testing"

	"github.com/tricopy/tricopy/blockdev"
)

// testLogger discards Info logs so test output stays readable.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// newMemVolume returns a formatted in-memory volume of the given size.
func newMemVolume(t testing.TB, blocks uint64) *blockdev.MemVolume {
	t.Helper()
	v := blockdev.NewMem(blocks)
	if err := Format(context.Background(), v, FormatOptions{}); err != nil {
		t.Fatalf("format: %v", err)
	}
	return v
}

// newEngine opens the filesystem engine on a fresh in-memory volume.
func newEngine(t testing.TB, blocks uint64) (*filesystem, *blockdev.MemVolume) {
	t.Helper()
	v := newMemVolume(t, blocks)
	fs, err := openFS(context.Background(), LocalDevice(v), engineOptions{log: testLogger(t)})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	return fs, v
}

// requireFUSE skips a FUSE test where FUSE cannot work, unless
// TRICOPY_REQUIRE_FUSE is set (as in CI), where it fails instead.
func requireFUSE(t testing.TB) {
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

// mountVolume mounts v at a fresh directory and unmounts it at cleanup.
func mountVolume(t testing.TB, v blockdev.Volume) string {
	t.Helper()
	requireFUSE(t)
	mnt := t.TempDir()
	srv, err := Mount(context.Background(), LocalDevice(v), MountOptions{Mountpoint: mnt, Name: "test", Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return mnt
}

// checkClean runs Check on v and fails the test on any problem.
func checkClean(t testing.TB, v blockdev.Reader) *Report {
	t.Helper()
	r, err := Check(context.Background(), v)
	if err != nil {
		t.Fatalf("fsck: %v", err)
	}
	if !r.Clean {
		t.Fatalf("fsck found %d problems: %q", len(r.Problems), r.Problems)
	}
	return r
}
