package e2e

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestCrashDuringTar kills `tricopy mount` with SIGKILL while tar extracts
// the tree onto the mount, removes the dead mount, and checks that the
// volume passes fsck (it holds a prefix of its batch stream: invariant 7),
// that every file tar wrote holds a prefix of the original, and that the
// volume mounts again and takes a full extraction.
func TestCrashDuringTar(t *testing.T) {
	requireFUSE(t, "tar", "diff")
	src := sourceTree(t)
	data := filepath.Join(t.TempDir(), "volume")
	mnt := t.TempDir()
	format(t, data, "1GiB")

	m := startMount(t, "crash", data, mnt)
	dst := filepath.Join(mnt, "tree")
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	// Kill once tar has written between 20% and 80% of the tree, at a
	// point drawn from the seed.
	frac := 0.2 + 0.6*rand.New(rand.NewPCG(src.seed, 7)).Float64()
	killAt := usedBytes(t, mnt) + int64(frac*float64(src.bytes))
	t.Logf("killing tricopy mount once %.0f%% of the tree is written (drawn from seed %d)", 100*frac, src.seed)

	tar := command(t, "", "tar", "-xf", src.tarball, "-C", dst)
	var tarOut syncBuffer
	tar.Stdout, tar.Stderr = &tarOut, &tarOut
	if err := tar.Start(); err != nil {
		t.Fatalf("start tar: %v", err)
	}
	tarDone := make(chan error, 1)
	go func() { tarDone <- tar.Wait() }()
	deadline := time.Now().Add(cmdTimeout)
	for usedBytes(t, mnt) < killAt {
		select {
		case err := <-tarDone:
			t.Fatalf("tar ended (%v) before the kill point: %s", err, clip(tarOut.String()))
		case <-time.After(pollInterval):
		}
		if time.Now().After(deadline) {
			t.Fatalf("tar did not reach the kill point in %v", cmdTimeout)
		}
	}
	m.kill(t)
	select {
	case err := <-tarDone:
		if err == nil {
			t.Fatalf("tar succeeded although its filesystem died under it")
		}
		t.Logf("tar after the kill: %v", err)
	case <-time.After(cmdTimeout):
		t.Fatalf("tar did not end %v after the mount died", cmdTimeout)
	}

	fsckClean(t, data)
	m = startMount(t, "crash", data, mnt)
	if n := checkPrefixes(t, src.dir, dst); n == 0 {
		t.Errorf("no file of the extraction survived the crash")
	}
	run(t, "", "rm", "-rf", dst)
	extract(t, src, dst)
	m.stop(t)
	fsckClean(t, data)
}
