// Package benchtest holds what the benchmarks' tests share: the check that
// a machine can run them and the check that a run left nothing behind.
package benchtest

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// Require skips a test that needs root, /dev/fuse and the programs named,
// unless TRICOPY_REQUIRE_FUSE is set, where it fails instead.
func Require(t testing.TB, programs ...string) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "not root"
	} else if _, err := os.Stat("/dev/fuse"); err != nil {
		why = "no /dev/fuse"
	} else {
		for _, p := range programs {
			if _, err := exec.LookPath(p); err != nil {
				why = "no " + p + " (apt-get install " + p + ")"
				break
			}
		}
	}
	if why == "" {
		return
	}
	if os.Getenv("TRICOPY_REQUIRE_FUSE") != "" {
		t.Fatalf("benchmark test cannot run (%s) but TRICOPY_REQUIRE_FUSE is set", why)
	}
	t.Skipf("benchmark test needs root, /dev/fuse and %v: %s", programs, why)
}

// NothingLeft fails t if dir holds anything or a mount below dir remains.
func NothingLeft(t testing.TB, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left behind: %s", e.Name())
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for sc := bufio.NewScanner(f); sc.Scan(); {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && strings.HasPrefix(fields[4], dir) {
			t.Errorf("mount left behind: %s", fields[4])
		}
	}
}
