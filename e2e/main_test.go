// Package e2e runs ordinary programs (sqlite3, git, tar) on real tricopy
// mounts served by the tricopy binary, and checks the volumes with
// `tricopy fsck` afterwards; it runs intermediate clusters and mirrored
// mounts as real processes and kills them with SIGKILL.
//
// TestMain builds the binary once. Every test needs root and /dev/fuse and
// skips without them, or with -short; with TRICOPY_REQUIRE_FUSE set (as in
// CI) a test fails instead of skipping. Run them one package at a time:
//
//	go test -count=1 -p 1 ./e2e/
//
// TRICOPY_E2E_SEED picks the seed of the generated file tree (default 1).
// TRICOPY_MIRROR_SEED replays the kill schedule of
// TestMirrorKillPrimaryUnderLoad (a failing run prints it); TRICOPY_LONG=1
// makes that test kill the primary 20 times instead of 4.
package e2e

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Set by TestMain.
var (
	// tricopyBin is the path of the tricopy binary under test; empty when
	// the tests cannot run here and the binary was not built.
	tricopyBin string
	// workDir holds the binary and data shared by the tests.
	workDir string
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if !testing.Short() && (fuseMissing() == "" || requireFUSEEnv()) {
		dir, err := os.MkdirTemp("", "tricopy-e2e-")
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			return 1
		}
		defer os.RemoveAll(dir)
		workDir = dir
		if err := os.Mkdir(filepath.Join(dir, "home"), 0o755); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			return 1
		}
		bin, err := buildTricopy(dir)
		if err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
			return 1
		}
		tricopyBin = bin
	}
	return m.Run()
}

// buildTricopy builds ./cmd/tricopy of this module into dir.
func buildTricopy(dir string) (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", fmt.Errorf("not inside a Go module (go env GOMOD = %q)", gomod)
	}
	bin := filepath.Join(dir, "tricopy")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/tricopy")
	cmd.Dir = filepath.Dir(gomod)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/tricopy: %w\n%s", err, out)
	}
	return bin, nil
}
