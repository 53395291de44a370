package e2e

import (
	"bytes"
	"fmt"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/tricopy/tricopy/blockdev"
)

// failbackLine is what tricopy failback prints once its copy is done.
var failbackLine = regexp.MustCompile(`failback of volume (\w+): copied (\d+) regions \((\d+) bytes\) from the intermediate`)

// TestFailback promotes the far site after killing the primaries, writes
// 10 MB there, fails the old primaries back as secondaries of the new ones
// (copying only the marked regions, counted), switches back with a planned
// promote (fence, drain: nothing lost), and checks that both sites hold
// identical volumes with the data of both periods.
func TestFailback(t *testing.T) {
	s := startSite(t, nil)
	want := map[string][]byte{}
	write := func(v, mnt, name string, size int) {
		t.Helper()
		data := fileData(uint64(size), v+name, size)
		if err := writeSynced(filepath.Join(mnt, name), data); err != nil {
			t.Fatalf("write %s on %s: %v", name, mnt, err)
		}
		want[v+"/"+name] = data
	}
	for i := range 10 {
		for _, v := range []string{"a", "b"} {
			write(v, s.prim[v].mnt, fmt.Sprintf("before-%02d", i), 20_000+i*5_000)
		}
	}
	for _, v := range []string{"a", "b"} {
		s.pmounts[v].kill(t)
	}
	doc := promote(t, s.sec["a"].listen)
	if !doc.Drained {
		t.Fatalf("promote: %+v", doc)
	}
	// 10 MB of writes on the new side.
	for i := range 5 {
		for _, v := range []string{"a", "b"} {
			write(v, s.sec[v].mnt, fmt.Sprintf("promoted-%02d", i), 1<<20)
		}
	}

	// Fail the old primaries back as secondaries of the new ones.
	back := map[string]secondarySpec{}
	backMounts := map[string]*mount{}
	var copied int64
	for _, v := range []string{"a", "b"} {
		spec := secondarySpec{volume: v, data: filepath.Join(s.base, "failback", v), mnt: filepath.Join(s.base, "failback-mnt", v),
			listen: freeAddr(t), addrs: s.addrs}
		back[v] = spec
		m := launchReady(t, spec.mnt, spec.data, "mounted replica of volume", nil, secondaryMountTimeout, "failback",
			"--from", s.prim[v].data, "--volume", v, "--data", spec.data, "--mountpoint", spec.mnt,
			"--intermediate", strings.Join(s.addrs, ","), "--listen", spec.listen, "--log-format", "text")
		backMounts[v] = m
		got := failbackLine.FindStringSubmatch(m.stdout.String())
		if got == nil {
			t.Fatalf("tricopy failback printed no copy line:\n%s", m.stdout.String())
		}
		regions, _ := strconv.ParseInt(got[2], 10, 64)
		size, _ := strconv.ParseInt(got[3], 10, 64)
		t.Logf("failback of %s: %d regions, %d bytes copied", v, regions, size)
		if size > regions*regionSize {
			t.Errorf("failback of %s copied %d bytes, more than its %d marked regions", v, size, regions)
		}
		// 5 MB written on this volume's new side, its metadata, and the
		// batches before the promotion the old primary may lack: far from
		// the 256 MiB volume.
		if size > 12<<20 {
			t.Errorf("failback of %s copied %d bytes for 5 MiB written since the promotion", v, size)
		}
		copied += size
	}
	waitAll(t, s.addrs)
	for key, data := range want {
		v, name, _ := strings.Cut(key, "/")
		checkFile(t, filepath.Join(back[v].mnt, name), data)
	}

	// The planned switch back: fence the far site, drain, promote here.
	home := promote(t, back["b"].listen)
	if !home.Drained || len(home.Volumes) != 2 {
		t.Fatalf("switch back: %+v", home)
	}
	for _, v := range home.Volumes {
		if v.Epoch != 3 || v.UnappliedBatches != 0 {
			t.Errorf("switch back, volume %s: %+v, want epoch 3 and nothing unapplied", v.Volume, v)
		}
	}
	for key, data := range want {
		v, name, _ := strings.Cut(key, "/")
		checkFile(t, filepath.Join(back[v].mnt, name), data)
	}
	// Stop both sites; their volumes are identical.
	t.Logf("copied %d bytes in all", copied)
	for _, v := range []string{"a", "b"} {
		s.smounts[v].stop(t)
		backMounts[v].stop(t)
	}
	for _, v := range []string{"a", "b"} {
		compareReplicas(t, filepath.Join(s.sec[v].data, "replica"), filepath.Join(back[v].data, "replica"))
	}
}

// compareReplicas fails t unless the volume blocks (all but the header) of
// two replicas are equal.
func compareReplicas(t testing.TB, dirA, dirB string) {
	t.Helper()
	a, b := openVolume(t, dirA), openVolume(t, dirB)
	defer a.Close()
	defer b.Close()
	if a.BlockCount() != b.BlockCount() {
		t.Fatalf("replicas %s and %s have %d and %d blocks", dirA, dirB, a.BlockCount(), b.BlockCount())
	}
	n := a.BlockCount() - 1
	pa, pb := make([]byte, compareBlocks*blockdev.BlockSize), make([]byte, compareBlocks*blockdev.BlockSize)
	var ndiff int
	for first := uint64(0); first < n; first += compareBlocks {
		c := min(compareBlocks, n-first)
		x, y := pa[:c*blockdev.BlockSize], pb[:c*blockdev.BlockSize]
		if err := a.ReadBlocks(first, x); err != nil {
			t.Fatal(err)
		}
		if err := b.ReadBlocks(first, y); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(x, y) {
			ndiff++
		}
	}
	if ndiff > 0 {
		t.Fatalf("the volumes of %s and %s differ in %d chunks of %d blocks", dirA, dirB, ndiff, compareBlocks)
	}
}
