package fusefs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
)

// recordingDevice is a primary's Device that keeps a copy of every batch it
// commits, in commit order: the stream a secondary receives.
type recordingDevice struct {
	Device
	mu      sync.Mutex
	batches []*blockdev.Batch
}

func (d *recordingDevice) Commit(ctx context.Context, b *blockdev.Batch) (Ack, error) {
	c := &blockdev.Batch{Writes: make([]blockdev.Write, len(b.Writes))}
	for i, w := range b.Writes {
		c.Writes[i] = blockdev.Write{Index: w.Index, Data: slices.Clone(w.Data)}
	}
	ack, err := d.Device.Commit(ctx, b)
	if err == nil {
		d.mu.Lock()
		d.batches = append(d.batches, c)
		d.mu.Unlock()
	}
	return ack, err
}

// take returns the batches committed since the last take.
func (d *recordingDevice) take() []*blockdev.Batch {
	d.mu.Lock()
	defer d.mu.Unlock()
	b := d.batches
	d.batches = nil
	return b
}

// applyRound writes batches to v as one atomic batch and returns the
// indices of the blocks written.
func applyRound(ctx context.Context, v blockdev.Volume, batches []*blockdev.Batch) ([]uint64, error) {
	last := make(map[uint64][]byte)
	for _, b := range batches {
		for _, w := range b.Writes {
			last[w.Index] = w.Data
		}
	}
	round := &blockdev.Batch{}
	for idx, data := range last {
		round.Writes = append(round.Writes, blockdev.Write{Index: idx, Data: slices.Clone(data)})
	}
	slices.SortFunc(round.Writes, func(a, b blockdev.Write) int { return int(int64(a.Index) - int64(b.Index)) })
	if len(round.Writes) > 0 {
		if err := v.Apply(ctx, round, blockdev.ApplyOptions{}); err != nil {
			return nil, err
		}
	}
	changed := make([]uint64, len(round.Writes))
	for i, w := range round.Writes {
		changed[i] = w.Index
	}
	return changed, nil
}

// replicaPair is a primary mount on volume P and a live replica mount of
// volume R, which follows P round by round.
type replicaPair struct {
	t        testing.TB
	p, r     *blockdev.MemVolume
	rec      *recordingDevice
	primary  string // mountpoint
	replica  string // mountpoint
	srv      *Server
	psrv     *Server // the primary's
	point    uint64
	pending  []*blockdev.Batch // taken from the primary, not applied yet
	advances int
}

func newReplicaPair(t testing.TB) *replicaPair {
	t.Helper()
	requireFUSE(t)
	ctx := context.Background()
	h := &replicaPair{t: t, p: newMemVolume(t, 8192)}
	h.r = h.p.Clone()
	h.rec = &recordingDevice{Device: LocalDevice(h.p)}
	h.primary, h.replica = t.TempDir(), t.TempDir()
	psrv, err := Mount(ctx, h.rec, MountOptions{Mountpoint: h.primary, Name: "primary", Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("mount primary: %v", err)
	}
	h.psrv = psrv
	t.Cleanup(func() {
		if err := psrv.Unmount(); err != nil {
			t.Errorf("unmount primary: %v", err)
		}
	})
	h.srv, err = MountReplica(ctx, h.r, MountOptions{Mountpoint: h.replica, Name: "replica", Logger: testLogger(t)}, 0)
	if err != nil {
		t.Fatalf("mount replica: %v", err)
	}
	t.Cleanup(func() {
		if err := h.srv.Unmount(); err != nil {
			t.Errorf("unmount replica: %v", err)
		}
	})
	return h
}

// quiesce waits until the primary has no open file and committed nothing
// for a moment: the kernel sends RELEASE after close(2) returned, and the
// last release of an unlinked file frees it in a batch of its own, which
// must be in the round (else the replica's free counts lag the primary's).
func (h *replicaPair) quiesce() {
	h.t.Helper()
	fs := h.psrv.fs
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		fs.mu.RLock()
		open := len(fs.opens)
		fs.mu.RUnlock()
		if open == 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	for last := -1; time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		h.rec.mu.Lock()
		n := len(h.rec.batches)
		h.rec.mu.Unlock()
		if n == last {
			return
		}
		last = n
	}
}

// advance applies everything the primary committed since the last round as
// one round with point next, and checks R with fsck.
func (h *replicaPair) advance(next uint64) {
	h.t.Helper()
	h.pending = append(h.pending, h.rec.take()...)
	err := h.srv.Advance(context.Background(), func(ctx context.Context) (uint64, []uint64, error) {
		changed, err := applyRound(ctx, h.r, h.pending)
		return next, changed, err
	})
	if err != nil {
		h.t.Fatalf("advance to %d: %v", next, err)
	}
	h.pending = nil
	h.point = next
	h.advances++
	if got := h.srv.Applied(); got != next {
		h.t.Fatalf("Applied() = %d after advancing to %d", got, next)
	}
	checkClean(h.t, h.r)
}

// dumpTree describes every entry below root (as osTarget.dump) plus inode
// number, owner and mtime, which a replica must show exactly.
func dumpTree(t testing.TB, root string) map[string]string {
	t.Helper()
	var paths []string
	err := filepath.WalkDir(root, func(full string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if rel, _ := filepath.Rel(root, full); rel != "." {
			paths = append(paths, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	return dumpPaths(t, root, paths)
}

// dumpPaths describes the given paths below root like dumpTree, without
// listing a directory (readdir would refresh the kernel's attributes);
// a missing path is described as absent.
func dumpPaths(t testing.TB, root string, paths []string) map[string]string {
	t.Helper()
	out := make(map[string]string, len(paths))
	for _, p := range paths {
		full := filepath.Join(root, p)
		var st syscall.Stat_t
		if err := syscall.Lstat(full, &st); err != nil {
			// ENOTDIR: a name below one that is no longer a directory.
			if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ENOTDIR) {
				t.Fatalf("lstat %s: %v", full, err)
			}
			out[p] = "absent"
			continue
		}
		var content, dest string
		var err error
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			b, err := os.ReadFile(full)
			if err != nil {
				t.Fatalf("read %s: %v", full, err)
			}
			content = fmt.Sprintf("%x", sha256.Sum256(b))
		case syscall.S_IFLNK:
			if dest, err = os.Readlink(full); err != nil {
				t.Fatalf("readlink %s: %v", full, err)
			}
		}
		xs, err := osXattrs(full)
		if err != nil {
			t.Fatalf("xattrs of %s: %v", full, err)
		}
		out[p] = fmt.Sprintf("%s ino=%d uid=%d gid=%d mtime=%d.%09d",
			describe(st.Mode, uint64(st.Size), uint32(st.Nlink), content, dest, xs), st.Ino, st.Uid, st.Gid, st.Mtim.Sec, st.Mtim.Nsec)
	}
	return out
}

// compare fails the test unless the replica shows what the primary shows:
// first the given paths (and every path of the primary's tree) looked up
// one by one, as the kernel cached them, then the whole tree listed.
func (h *replicaPair) compare(when string, paths ...string) {
	h.t.Helper()
	want := dumpTree(h.t, h.primary)
	for p := range want {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	paths = slices.Compact(paths)
	if d := diffTrees(dumpPaths(h.t, h.primary, paths), dumpPaths(h.t, h.replica, paths)); d != "" {
		h.t.Fatalf("%s: replica at %d differs from the primary, path by path:\n%s", when, h.point, d)
	}
	if d := diffTrees(want, dumpTree(h.t, h.replica)); d != "" {
		h.t.Fatalf("%s: replica at %d differs from the primary, listed:\n%s", when, h.point, d)
	}
	var ps, rs syscall.Statfs_t
	if err := syscall.Statfs(h.primary, &ps); err != nil {
		h.t.Fatal(err)
	}
	if err := syscall.Statfs(h.replica, &rs); err != nil {
		h.t.Fatal(err)
	}
	if ps.Blocks != rs.Blocks || ps.Bfree != rs.Bfree || ps.Files != rs.Files || ps.Ffree != rs.Ffree {
		h.t.Fatalf("%s: replica statfs blocks %d/%d free, inodes %d/%d free; primary %d/%d, %d/%d", when,
			rs.Bfree, rs.Blocks, rs.Ffree, rs.Files, ps.Bfree, ps.Blocks, ps.Ffree, ps.Files)
	}
}

// readApplied reads MNT/.tricopy/applied.
func readApplied(mnt string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(mnt, metaDirName, appliedName))
	if err != nil {
		return 0, err
	}
	s, ok := strings.CutSuffix(string(b), "\n")
	if !ok {
		return 0, fmt.Errorf("applied file %q lacks its newline", b)
	}
	return strconv.ParseUint(s, 10, 64)
}

// TestReplicaFollowsPrimary changes files on the primary in every way
// (overwrite, append, truncate, rename, rename over, unlink, link, mkdir,
// rmdir, symlink, chmod, xattr) after the replica's kernel cached the old
// content, attributes, entries and absent names, and checks that the
// replica shows exactly the new state right after Advance.
func TestReplicaFollowsPrimary(t *testing.T) {
	h := newReplicaPair(t)
	pt := osTarget{h.primary}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(pt.p("a.txt"), []byte("first version of a\n"), 0o644))
	must(os.WriteFile(pt.p("b.txt"), []byte("bee"), 0o644))
	must(os.WriteFile(pt.p("g.txt"), []byte("g, inode one"), 0o644))
	must(os.MkdirAll(pt.p("d/e"), 0o755))
	must(os.WriteFile(pt.p("d/c.txt"), bytes.Repeat([]byte("c"), 3*bs+100), 0o644))
	must(os.WriteFile(pt.p("d/e/f.txt"), []byte("deep"), 0o644))
	must(os.Symlink("a.txt", pt.p("l")))
	must(os.Link(pt.p("b.txt"), pt.p("d/hl")))
	must(pt.setxattr("a.txt", "user.k", []byte("v1")))
	h.advance(1)
	h.compare("after the first round")

	// The kernel caches the old state: content (page cache of an open
	// file), attributes, entries and names that do not exist yet.
	before := dumpTree(t, h.replica)
	held, err := os.Open(filepath.Join(h.replica, "a.txt"))
	must(err)
	defer held.Close()
	buf := make([]byte, 100)
	n, err := held.ReadAt(buf, 0)
	if string(buf[:n]) != "first version of a\n" {
		t.Fatalf("replica a.txt = %q, %v", buf[:n], err)
	}
	absent := []string{"new.txt", "d/new", "d/e/f2.txt", "d/f2.txt"}
	for _, p := range absent {
		if _, err := os.Lstat(filepath.Join(h.replica, p)); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("replica %s before it exists: %v", p, err)
		}
	}

	must(os.WriteFile(pt.p("a.txt"), []byte("FIRST VERSION OF A\n"), 0o644)) // same size
	f, err := os.OpenFile(pt.p("b.txt"), os.O_APPEND|os.O_WRONLY, 0)
	must(err)
	_, err = f.WriteString(" and more")
	must(err)
	must(f.Close())
	must(os.Truncate(pt.p("d/c.txt"), 2))
	must(os.Rename(pt.p("d/e/f.txt"), pt.p("d/f2.txt")))
	must(os.Remove(pt.p("d/hl")))
	must(os.Remove(pt.p("d/e")))
	must(os.Mkdir(pt.p("d/new"), 0o700))
	must(os.WriteFile(pt.p("new.txt"), []byte("new"), 0o600))
	must(os.WriteFile(pt.p("g.tmp"), []byte("g, inode two"), 0o644))
	must(os.Rename(pt.p("g.tmp"), pt.p("g.txt")))
	must(os.Remove(pt.p("l")))
	must(os.Symlink("b.txt", pt.p("l")))
	must(os.Chmod(pt.p("a.txt"), 0o640))
	must(pt.setxattr("a.txt", "user.k", []byte("v2")))
	h.advance(2)
	n, err = held.ReadAt(buf, 0)
	if string(buf[:n]) != "FIRST VERSION OF A\n" {
		t.Fatalf("open replica a.txt after the round = %q, %v (stale page cache?)", buf[:n], err)
	}
	h.compare("right after the second round", slices.Concat(slices.Collect(maps.Keys(before)), absent)...)
}

// TestReplicaRandomRounds runs a seeded random workload on the primary in
// rounds of a few operations; before each round the replica's kernel
// caches the whole tree and every name the workload may create, after it
// the replica must equal the primary.
func TestReplicaRandomRounds(t *testing.T) {
	h := newReplicaPair(t)
	seed := workloadSeed(t)
	t.Logf("seed %d (replay: TRICOPY_SEED=%d go test -run TestReplicaRandomRounds ./fusefs)", seed, seed)
	w := &workload{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), maxWrite: 3 * bs}
	pt := osTarget{h.primary}
	tree := map[string]string{}
	rounds := 40
	if testing.Short() {
		rounds = 10
	}
	for round := 1; round <= rounds; round++ {
		// Every path that exists and every name the workload may create.
		var paths []string
		for p, d := range dumpTree(t, h.replica) {
			paths = append(paths, p)
			if modeOf(d)&s_IFMT == s_IFDIR {
				paths = append(paths, candidateNames(p)...)
			}
		}
		paths = append(paths, candidateNames("")...)
		dumpPaths(t, h.replica, paths)
		var descs []string
		for n := 1 + w.rng.IntN(6); n > 0; n-- {
			o := w.next(tree)
			if o.pre != nil {
				o.pre(pt)
			}
			err := o.run(pt)
			descs = append(descs, fmt.Sprintf("%s (%v)", o.desc, errnoOf(err)))
			var derr error
			if tree, derr = pt.dump(); derr != nil {
				t.Fatalf("dump primary: %v", derr)
			}
		}
		h.quiesce()
		h.advance(uint64(round))
		h.compare(fmt.Sprintf("seed %d round %d (%s)", seed, round, strings.Join(descs, "; ")), paths...)
	}
}

// candidateNames lists the names the workload may create in dir.
func candidateNames(dir string) []string {
	var out []string
	for _, a := range "abcdef" {
		for _, b := range "abc" {
			out = append(out, path.Join(dir, string(a)+string(b)))
		}
	}
	return out
}

// TestReplicaAtomicRounds runs readers on the replica while the primary
// rewrites a set of files every round, whose content encodes the round
// (and whose size changes with it), some in place and some by rename over.
// A reader that reads .tricopy/applied = N before and after reading the
// files must have read round N's content in every file.
func TestReplicaAtomicRounds(t *testing.T) {
	h := newReplicaPair(t)
	pt := osTarget{h.primary}
	inPlace := []string{"r0", "d1/r1", "d1/d2/r2"}
	replaced := []string{"g3", "d1/g4"}
	files := append(slices.Clone(inPlace), replaced...)
	content := func(round uint64, i int) []byte {
		return bytes.Repeat([]byte(fmt.Sprintf("file %d round %d\n", i, round)), 1+int(round*7+uint64(i))%300)
	}
	if err := os.MkdirAll(pt.p("d1/d2"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeRound := func(round uint64) {
		for i, p := range files {
			var err error
			if i < len(inPlace) {
				err = os.WriteFile(pt.p(p), content(round, i), 0o644)
			} else {
				tmp := pt.p(p + ".tmp")
				if err = os.WriteFile(tmp, content(round, i), 0o644); err == nil {
					err = os.Rename(tmp, pt.p(p))
				}
			}
			if err != nil {
				t.Fatalf("round %d: write %s on the primary: %v", round, p, err)
			}
		}
	}
	writeRound(1)
	h.advance(1)

	const readers = 4
	var (
		stop             atomic.Bool
		consistent, torn atomic.Int64
		wg               sync.WaitGroup
		failMu           sync.Mutex
		failure          string
	)
	fail := func(s string) {
		failMu.Lock()
		defer failMu.Unlock()
		if failure == "" {
			failure = s
		}
		stop.Store(true)
	}
	for r := 0; r < readers; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := make([][]byte, len(files))
			errs := make([]error, len(files))
			for !stop.Load() {
				before, err := readApplied(h.replica)
				if err != nil {
					fail(fmt.Sprintf("read applied: %v", err))
					return
				}
				for i, p := range files {
					got[i], errs[i] = os.ReadFile(filepath.Join(h.replica, p))
				}
				after, err := readApplied(h.replica)
				if err != nil {
					fail(fmt.Sprintf("read applied: %v", err))
					return
				}
				if before != after {
					torn.Add(1)
					continue
				}
				for i, p := range files {
					if errs[i] != nil {
						fail(fmt.Sprintf("applied %d before and after, but %s: %v", before, p, errs[i]))
						return
					}
					if want := content(before, i); !bytes.Equal(got[i], want) {
						fail(fmt.Sprintf("applied %d before and after, but %s has %d bytes starting %q, want %d bytes starting %q",
							before, p, len(got[i]), got[i][:min(len(got[i]), 24)], len(want), want[:min(len(want), 24)]))
						return
					}
				}
				consistent.Add(1)
			}
		}()
	}
	rounds := uint64(150)
	if testing.Short() {
		rounds = 30
	}
	start := time.Now()
	for round := uint64(2); round <= rounds && !stop.Load(); round++ {
		writeRound(round)
		h.advance(round)
		time.Sleep(time.Duration(rand.IntN(3)) * time.Millisecond)
	}
	elapsed := time.Since(start)
	stop.Store(true)
	wg.Wait()
	if failure != "" {
		t.Fatal(failure)
	}
	t.Logf("%d rounds in %v: %d consistent reads of all %d files, %d spanning a round",
		h.advances, elapsed.Round(time.Millisecond), consistent.Load(), len(files), torn.Load())
	if consistent.Load() == 0 {
		t.Fatal("no reader ever read all files within one round")
	}
}

// TestReplicaAppliedFile checks the virtual .tricopy directory: not listed
// in the root, readable with the real cat, size not truncating the
// content, never cached, and the replica tree lists like the primary's.
func TestReplicaAppliedFile(t *testing.T) {
	h := newReplicaPair(t)
	if err := os.WriteFile(filepath.Join(h.primary, "x"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, point := range []uint64{9, 10, 1234, 1 << 40} {
		h.advance(point)
		out, err := exec.Command("cat", filepath.Join(h.replica, ".tricopy/applied")).Output()
		if err != nil {
			t.Fatalf("cat applied: %v", err)
		}
		if want := fmt.Sprintf("%d\n", point); string(out) != want {
			t.Fatalf("cat applied = %q, want %q", out, want)
		}
		st, err := os.Stat(filepath.Join(h.replica, ".tricopy/applied"))
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() != int64(len(out)) || st.Mode() != 0o444 {
			t.Fatalf("applied: size %d mode %v, want size %d mode -r--r--r--", st.Size(), st.Mode(), len(out))
		}
	}
	ents, err := os.ReadDir(h.replica)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == metaDirName {
			t.Fatalf("readdir of the replica root lists %s", metaDirName)
		}
	}
	if len(ents) != 1 || ents[0].Name() != "x" {
		t.Fatalf("replica root lists %v, want [x]", ents)
	}
	ents, err = os.ReadDir(filepath.Join(h.replica, metaDirName))
	if err != nil || len(ents) != 1 || ents[0].Name() != appliedName {
		t.Fatalf("readdir .tricopy = %v, %v", ents, err)
	}
	if _, err := os.Stat(filepath.Join(h.replica, metaDirName, "other")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat .tricopy/other: %v", err)
	}
	if out, err := exec.Command("diff", "-r", h.primary, h.replica).CombinedOutput(); err != nil {
		t.Fatalf("diff -r primary replica: %v\n%s", err, out)
	}
}

// TestReplicaReadOnly checks that every change to a replica mount fails
// with EROFS.
func TestReplicaReadOnly(t *testing.T) {
	h := newReplicaPair(t)
	pt := osTarget{h.primary}
	if err := os.Mkdir(pt.p("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pt.p("f"), []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	h.advance(1)
	rt := osTarget{h.replica}
	checks := map[string]error{
		"create":      rt.write("new", 0, []byte("x")),
		"write":       rt.write("f", 0, []byte("x")),
		"truncate":    rt.truncate("f", 0),
		"chmod":       rt.chmod("f", 0o600),
		"chown":       os.Lchown(rt.p("f"), 1, 1),
		"utimes":      os.Chtimes(rt.p("f"), time.Unix(1, 0), time.Unix(1, 0)),
		"unlink":      rt.unlink("f"),
		"rmdir":       rt.rmdir("d"),
		"mkdir":       rt.mkdir("d2", 0o755),
		"rename":      rt.rename("f", "g"),
		"link":        rt.link("f", "g"),
		"symlink":     rt.symlink("f", "s"),
		"mknod":       syscall.Mknod(rt.p("fifo"), syscall.S_IFIFO|0o644, 0),
		"setxattr":    rt.setxattr("f", "user.k", []byte("v")),
		"removexattr": rt.removexattr("f", "user.k"),
		"write applied": func() error {
			f, err := os.OpenFile(rt.p(".tricopy/applied"), os.O_WRONLY, 0)
			if err == nil {
				f.Close()
			}
			return err
		}(),
		"create in .tricopy": rt.write(".tricopy/x", 0, []byte("x")),
	}
	for name, err := range checks {
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s on the replica: %v, want EROFS", name, err)
		}
	}
	if b, err := os.ReadFile(rt.p("f")); err != nil || string(b) != "data" {
		t.Fatalf("replica f = %q, %v", b, err)
	}
	checkClean(t, h.r)
}

var errInjectedApply = errors.New("injected apply failure")

// TestReplicaApplyFails checks Advance when apply fails: before writing
// (the replica keeps its point and content), and after writing the blocks
// (every cache is dropped: the replica shows the blocks as they are);
// either way the mount keeps serving and later rounds work.
func TestReplicaApplyFails(t *testing.T) {
	h := newReplicaPair(t)
	pt := osTarget{h.primary}
	if err := os.MkdirAll(pt.p("d/e"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"a", "d/b", "d/e/c"} {
		if err := os.WriteFile(pt.p(p), []byte("one "+p), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h.advance(1)
	old := dumpTree(t, h.primary)
	h.compare("round 1")
	change := func(v string) {
		for _, p := range []string{"a", "d/b", "d/e/c"} {
			if err := os.WriteFile(pt.p(p), []byte(v+" "+p+" longer"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Rename(pt.p("d/e/c"), pt.p("d/c2")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(pt.p("d/e/c"), []byte("another c"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	change("two")

	// Fails before writing anything.
	err := h.srv.Advance(context.Background(), func(ctx context.Context) (uint64, []uint64, error) {
		return 0, nil, errInjectedApply
	})
	if !errors.Is(err, errInjectedApply) {
		t.Fatalf("advance with failing apply: %v, want the injected error", err)
	}
	if got, err := readApplied(h.replica); err != nil || got != 1 || h.srv.Applied() != 1 {
		t.Fatalf("applied after a failed round = %d, %v (Applied() %d), want 1", got, err, h.srv.Applied())
	}
	if d := diffTrees(old, dumpTree(t, h.replica)); d != "" {
		t.Fatalf("replica after a failed round differs from round 1:\n%s", d)
	}

	// Fails after writing the blocks: the content changed though the
	// point did not; every cache must go.
	h.pending = append(h.pending, h.rec.take()...)
	err = h.srv.Advance(context.Background(), func(ctx context.Context) (uint64, []uint64, error) {
		if _, err := applyRound(ctx, h.r, h.pending); err != nil {
			return 0, nil, err
		}
		return 0, nil, errInjectedApply
	})
	if !errors.Is(err, errInjectedApply) {
		t.Fatalf("advance with failing apply: %v, want the injected error", err)
	}
	h.pending = nil
	h.compare("after a round that failed after writing")
	if got, err := readApplied(h.replica); err != nil || got != 1 {
		t.Fatalf("applied = %d, %v, want 1", got, err)
	}
	checkClean(t, h.r)

	h.advance(2)
	h.compare("round 2")
	change("three")
	h.advance(3)
	h.compare("round 3")
}

// TestReplicaAdvanceOnPrimary checks that Advance refuses a Server from
// Mount.
func TestReplicaAdvanceOnPrimary(t *testing.T) {
	f, _ := newEngine(t, 1024)
	s := &Server{fs: f}
	called := false
	err := s.Advance(context.Background(), func(ctx context.Context) (uint64, []uint64, error) {
		called = true
		return 1, nil, nil
	})
	if !errors.Is(err, ErrNotReplica) || called {
		t.Fatalf("Advance on a primary: %v (apply called: %v), want ErrNotReplica", err, called)
	}
	if s.Applied() != 0 {
		t.Fatalf("Applied() on a primary = %d", s.Applied())
	}
}

// replicaEngines returns a primary engine on a fresh volume, recording its
// batches, and a replica engine on a copy of that volume.
func replicaEngines(t *testing.T) (prim *filesystem, rec *recordingDevice, rfs *filesystem, r *blockdev.MemVolume) {
	t.Helper()
	p := newMemVolume(t, 2048)
	r = p.Clone()
	rec = &recordingDevice{Device: LocalDevice(p)}
	prim, err := openFS(context.Background(), rec, engineOptions{log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rfs, err = openFS(context.Background(), replicaDevice{r}, engineOptions{readOnly: true, log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	rfs.rep = newReplica(rfs, 0)
	return prim, rec, rfs, r
}

// engineRound applies the primary's batches to the replica engine as
// Advance does and returns what the kernel would be told.
func engineRound(t *testing.T, rec *recordingDevice, rfs *filesystem, r *blockdev.MemVolume) invalidation {
	t.Helper()
	rfs.mu.Lock()
	defer rfs.mu.Unlock()
	changed, err := applyRound(context.Background(), r, rec.take())
	if err != nil {
		t.Fatal(err)
	}
	inv, err := rfs.dropChanged(changed)
	if err != nil {
		t.Fatalf("drop changed blocks: %v", err)
	}
	return inv
}

// TestReplicaEngineDropsExactly checks, without FUSE, that a round drops
// the directory indexes built from changed blocks and keeps the others,
// reloads the bitmaps, and names the dentries and inodes the kernel must
// forget: entries that vanished, appeared or name another inode.
func TestReplicaEngineDropsExactly(t *testing.T) {
	prim, rec, rfs, r := replicaEngines(t)
	ctx := context.Background()
	mk := func(dir uint32, name string, mode uint32) uint32 {
		t.Helper()
		ino, _, err := prim.mknod(ctx, dir, name, mode, 0, 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		return ino
	}
	// B and its file get an inode-table block of their own, so that
	// changes in A and new inodes do not touch it.
	pads := 0
	pad := func() {
		for {
			pads++
			if ino := mk(rootIno, fmt.Sprintf("pad%d", pads), s_IFREG|0o644); ino%inodesPerBlock == inodesPerBlock-1 {
				return
			}
		}
	}
	a := mk(rootIno, "A", s_IFDIR|0o755)
	fa := mk(a, "fa", s_IFREG|0o644)
	pad()
	b := mk(rootIno, "B", s_IFDIR|0o755)
	mk(b, "fb", s_IFREG|0o644)
	pad()
	engineRound(t, rec, rfs, r)

	lookup := func(dir uint32, name string) (uint32, error) {
		ino, _, err := rfs.lookupName(dir, name)
		return ino, err
	}
	for _, c := range []struct {
		dir  uint32
		name string
	}{{rootIno, "A"}, {rootIno, "B"}, {a, "fa"}, {b, "fb"}} {
		if _, err := lookup(c.dir, c.name); err != nil {
			t.Fatalf("replica lookup %s: %v", c.name, err)
		}
	}
	if _, err := lookup(a, "new"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("lookup A/new before it exists: %v", err)
	}
	rfs.dirMu.Lock()
	indexB := rfs.dirs[b]
	rfs.dirMu.Unlock()

	// A round that changes only A: new name, and fa replaced by another
	// inode.
	mk(a, "new", s_IFREG|0o644)
	if err := prim.unlink(ctx, a, "fa"); err != nil {
		t.Fatal(err)
	}
	fa2 := mk(a, "fa", s_IFREG|0o644)
	if fa2 == fa {
		t.Logf("fa reused inode %d", fa)
	}
	inv := engineRound(t, rec, rfs, r)

	rfs.dirMu.Lock()
	keptB := rfs.dirs[b] == indexB
	rfs.dirMu.Unlock()
	if !keptB {
		t.Error("the index of B, whose blocks did not change, was dropped")
	}
	slices.SortFunc(inv.entries, func(x, y dentryName) int { return strings.Compare(x.name, y.name) })
	want := []dentryName{{a, "fa"}, {a, "new"}}
	if !slices.Equal(inv.entries, want) {
		t.Errorf("entries to invalidate %v, want %v", inv.entries, want)
	}
	if !slices.Contains(inv.inodes, a) {
		t.Errorf("inodes to invalidate %v lack directory A (%d)", inv.inodes, a)
	}
	if slices.Contains(inv.inodes, b) {
		t.Errorf("inodes to invalidate %v include unchanged directory B (%d)", inv.inodes, b)
	}
	if ino, err := lookup(a, "new"); err != nil || ino == 0 {
		t.Fatalf("replica lookup A/new after the round: %d, %v", ino, err)
	}
	if ino, err := lookup(a, "fa"); err != nil || ino != fa2 {
		t.Fatalf("replica lookup A/fa after the round: %d, %v, want %d", ino, err, fa2)
	}
	if got, want := rfs.statfs(), prim.statfs(); got != want {
		t.Fatalf("replica statfs %+v, primary %+v", got, want)
	}
	// Removing A: its entries and the name A go.
	for _, n := range []string{"new", "fa"} {
		if err := prim.unlink(ctx, a, n); err != nil {
			t.Fatal(err)
		}
	}
	if err := prim.rmdir(ctx, rootIno, "A"); err != nil {
		t.Fatal(err)
	}
	inv = engineRound(t, rec, rfs, r)
	for _, e := range []dentryName{{rootIno, "A"}, {a, "fa"}, {a, "new"}} {
		if !slices.Contains(inv.entries, e) {
			t.Errorf("entries to invalidate %v lack %v", inv.entries, e)
		}
	}
	if _, err := lookup(rootIno, "A"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("lookup A after its removal: %v", err)
	}
	if got, want := rfs.statfs(), prim.statfs(); got != want {
		t.Fatalf("replica statfs %+v, primary %+v", got, want)
	}
	checkClean(t, r)
}

// TestReplicaAppliedWaitsForSettle checks that a read of applied waits
// until its round's kernel invalidation is done, and gives up with EINTR
// when the caller's context is cancelled.
func TestReplicaAppliedWaitsForSettle(t *testing.T) {
	_, _, rfs, _ := replicaEngines(t)
	f := &appliedFile{fs: rfs}
	rfs.mu.Lock()
	rfs.rep.applied, rfs.rep.round = 7, 1 // installed, not settled
	rfs.mu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, errno := f.Read(ctx, &appliedHandle{}, make([]byte, 64), 0)
		done <- errno
	}()
	select {
	case err := <-done:
		t.Fatalf("read of an unsettled point returned %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, syscall.EINTR) {
			t.Fatalf("cancelled read: %v, want EINTR", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled read did not return")
	}

	h := &appliedHandle{}
	go func() {
		res, errno := f.Read(context.Background(), h, make([]byte, 64), 0)
		if errno != 0 {
			done <- errno
			return
		}
		b, _ := res.Bytes(make([]byte, 64))
		if string(b) != "7\n" {
			done <- fmt.Errorf("read %q, want \"7\\n\"", b)
			return
		}
		done <- nil
	}()
	time.Sleep(20 * time.Millisecond)
	rfs.rep.settle(1)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("read did not return after the round settled")
	}
	// Reading further on takes the same content.
	rfs.mu.Lock()
	rfs.rep.applied, rfs.rep.round = 10000, 2
	rfs.mu.Unlock()
	res, errno := f.Read(context.Background(), h, make([]byte, 64), 1)
	if b, _ := res.Bytes(make([]byte, 64)); errno != 0 || string(b) != "\n" {
		t.Fatalf("read at offset 1 = %q, %v, want the rest of \"7\\n\"", b, errno)
	}
}
