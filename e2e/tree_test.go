package e2e

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// defaultSeed is the seed of the generated tree unless TRICOPY_E2E_SEED
// says otherwise.
const defaultSeed = 1

// minTreeBytes is the least number of file bytes of the generated tree.
const minTreeBytes = 50_000_000

// tree is a generated source tree and its tarball, shared by the tests.
type tree struct {
	seed    uint64
	dir     string // the tree
	tarball string // tar -cf of the tree, outside it
	bytes   int64  // bytes in regular files
	entries int    // files, directories and symlinks
}

var (
	treeOnce sync.Once
	theTree  *tree
	treeErr  error
)

// sourceTree returns the tree generated from the seed, creating it and
// its tarball the first time.
func sourceTree(t testing.TB) *tree {
	t.Helper()
	treeOnce.Do(func() {
		seed := uint64(defaultSeed)
		if s := os.Getenv("TRICOPY_E2E_SEED"); s != "" {
			seed, treeErr = strconv.ParseUint(s, 10, 64)
			if treeErr != nil {
				treeErr = fmt.Errorf("TRICOPY_E2E_SEED: %w", treeErr)
				return
			}
		}
		start := time.Now()
		tr := &tree{seed: seed, dir: filepath.Join(workDir, "tree"), tarball: filepath.Join(workDir, "tree.tar")}
		if treeErr = tr.generate(); treeErr != nil {
			return
		}
		cmd := command(t, "", "tar", "-cf", tr.tarball, "-C", tr.dir, ".")
		if out, err := cmd.CombinedOutput(); err != nil {
			treeErr = fmt.Errorf("tar -cf: %w: %s", err, out)
			return
		}
		theTree = tr
		t.Logf("generated the source tree in %v", time.Since(start).Round(time.Millisecond))
	})
	if treeErr != nil {
		t.Fatalf("generate source tree: %v", treeErr)
	}
	t.Logf("source tree: %d entries, %d bytes in files, seed %d (to reproduce: TRICOPY_E2E_SEED=%d go test -count=1 -run '^%s$' ./e2e/)",
		theTree.entries, theTree.bytes, theTree.seed, theTree.seed, t.Name())
	return theTree
}

// generate writes the tree of seed t.seed to t.dir: nested directories
// (one empty), about 1 200 small files, 40 medium ones and 3 large ones
// (one of them all zeros), odd names, hard links, and symlinks (relative,
// upward, absolute, dangling), all with fixed modes and times.
func (tr *tree) generate() error {
	rng := rand.New(rand.NewPCG(tr.seed, tr.seed^0x9e3779b97f4a7c15))
	if err := os.Mkdir(tr.dir, 0o755); err != nil {
		return err
	}
	base := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	stamp := func() time.Time { return base.Add(time.Duration(rng.IntN(1e6)) * time.Second) }

	dirs := []string{"."}
	depth := map[string]int{".": 0}
	for i := 0; i < 40; i++ {
		parent := dirs[rng.IntN(len(dirs))]
		if depth[parent] >= 5 {
			parent = "."
		}
		d := filepath.Join(parent, fmt.Sprintf("dir%02d", i))
		if err := os.Mkdir(filepath.Join(tr.dir, d), 0o755); err != nil {
			return err
		}
		dirs = append(dirs, d)
		depth[d] = depth[parent] + 1
	}
	empty := filepath.Join(tr.dir, "dir00", "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		return err
	}

	modes := []os.FileMode{0o644, 0o644, 0o600, 0o755, 0o444}
	var files []string
	addFile := func(name string, size int64, zeros bool) error {
		rel := filepath.Join(dirs[rng.IntN(len(dirs))], name)
		var seed [32]byte
		for i := range 4 {
			binary.LittleEndian.PutUint64(seed[8*i:], rng.Uint64())
		}
		var src io.Reader = rand.NewChaCha8(seed)
		if zeros {
			src = zeroReader{}
		}
		if err := writeFile(filepath.Join(tr.dir, rel), io.LimitReader(src, size), modes[rng.IntN(len(modes))]); err != nil {
			return err
		}
		files = append(files, rel)
		tr.bytes += size
		return nil
	}
	for i := 0; i < 1200; i++ {
		size := int64(rng.IntN(16 << 10))
		if i%100 == 0 {
			size = 0
		}
		if err := addFile(fmt.Sprintf("small%04d.dat", i), size, false); err != nil {
			return err
		}
	}
	for i := 0; i < 40; i++ {
		if err := addFile(fmt.Sprintf("medium%02d.bin", i), 64<<10+int64(rng.IntN(1<<20)), false); err != nil {
			return err
		}
	}
	for i, size := range []int64{12<<20 + 1, 9<<20 + 4095, 7 << 20} {
		if err := addFile(fmt.Sprintf("large%d.img", i), size, i == 2); err != nil {
			return err
		}
	}
	for _, name := range []string{"name with spaces.txt", "ünïcødé-名前.txt", strings.Repeat("long", 50) + ".txt", ".hidden", "-dash"} {
		if err := addFile(name, int64(rng.IntN(4096)), false); err != nil {
			return err
		}
	}

	for i := 0; i < 10; i++ {
		target := files[rng.IntN(len(files))]
		link := filepath.Join(dirs[rng.IntN(len(dirs))], fmt.Sprintf("hardlink%02d", i))
		if err := os.Link(filepath.Join(tr.dir, target), filepath.Join(tr.dir, link)); err != nil {
			return err
		}
	}
	var links []string
	for i := 0; i < 60; i++ {
		dir := dirs[rng.IntN(len(dirs))]
		var target string
		switch i % 5 {
		case 0: // a file, relative to the link's directory
			f := files[rng.IntN(len(files))]
			rel, err := filepath.Rel(dir, f)
			if err != nil {
				return err
			}
			target = rel
		case 1: // a directory, upward
			target = filepath.Join("..", filepath.Base(dirs[rng.IntN(len(dirs))]))
		case 2: // absolute, dangling
			target = fmt.Sprintf("/nonexistent/tricopy-e2e/%d", i)
		case 3: // relative, dangling
			target = fmt.Sprintf("missing-%d", i)
		case 4: // long
			target = strings.Repeat("x/", 100) + "end"
		}
		link := filepath.Join(dir, fmt.Sprintf("symlink%02d", i))
		if err := os.Symlink(target, filepath.Join(tr.dir, link)); err != nil {
			return err
		}
		links = append(links, link)
	}

	// Times last, deepest first, so that making entries does not change
	// the times of their directories afterwards.
	for _, l := range links {
		ts := unixTimespec(stamp())
		if err := lutimes(filepath.Join(tr.dir, l), ts); err != nil {
			return err
		}
	}
	for _, f := range files {
		ts := stamp()
		if err := os.Chtimes(filepath.Join(tr.dir, f), ts, ts); err != nil {
			return err
		}
	}
	emptyTime := stamp()
	if err := os.Chtimes(empty, emptyTime, emptyTime); err != nil {
		return err
	}
	for i := len(dirs) - 1; i >= 0; i-- {
		ts := stamp()
		if err := os.Chtimes(filepath.Join(tr.dir, dirs[i]), ts, ts); err != nil {
			return err
		}
	}
	tr.entries = len(dirs) + 1 + len(files) + 10 + len(links)
	if tr.bytes < minTreeBytes {
		return fmt.Errorf("generated only %d bytes, want at least %d", tr.bytes, minTreeBytes)
	}
	return nil
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

func writeFile(name string, r io.Reader, perm os.FileMode) (err error) {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}()
	if _, err := io.Copy(f, r); err != nil {
		return err
	}
	return f.Chmod(perm) // not subject to the umask
}

func unixTimespec(t time.Time) unix.Timespec { return unix.NsecToTimespec(t.UnixNano()) }

// lutimes sets both times of path without following a symlink.
func lutimes(path string, ts unix.Timespec) error {
	return unix.UtimesNanoAt(unix.AT_FDCWD, path, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}

// compareTrees fails t unless got has the same entries as want, with the
// same types, permissions, sizes, link counts, symlink targets and
// modification times (to the second: tar keeps whole seconds). The
// contents are compared by diff -r.
func compareTrees(t testing.TB, want, got string) {
	t.Helper()
	seen := map[string]bool{}
	var problems []string
	err := filepath.WalkDir(want, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(want, p)
		if err != nil {
			return err
		}
		seen[rel] = true
		if msg := compareEntry(p, filepath.Join(got, rel)); msg != "" {
			problems = append(problems, rel+": "+msg)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", want, err)
	}
	err = filepath.WalkDir(got, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(got, p)
		if err != nil {
			return err
		}
		if !seen[rel] {
			problems = append(problems, rel+": not in the original tree")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", got, err)
	}
	if len(problems) > 0 {
		if len(problems) > 20 {
			problems = append(problems[:20], fmt.Sprintf("and %d more", len(problems)-20))
		}
		t.Fatalf("%s differs from %s:\n%s", got, want, strings.Join(problems, "\n"))
	}
}

// compareEntry compares the metadata of two paths; it returns "" if they
// match.
func compareEntry(want, got string) string {
	a, err := os.Lstat(want)
	if err != nil {
		return err.Error()
	}
	b, err := os.Lstat(got)
	if err != nil {
		return err.Error()
	}
	if a.Mode() != b.Mode() {
		return fmt.Sprintf("mode %v, want %v", b.Mode(), a.Mode())
	}
	if a.Mode().IsRegular() && a.Size() != b.Size() {
		return fmt.Sprintf("size %d, want %d", b.Size(), a.Size())
	}
	if a.ModTime().Unix() != b.ModTime().Unix() {
		return fmt.Sprintf("mtime %v, want %v", b.ModTime(), a.ModTime())
	}
	sa, sb := a.Sys().(*syscall.Stat_t), b.Sys().(*syscall.Stat_t)
	if a.Mode().IsRegular() && sa.Nlink != sb.Nlink {
		return fmt.Sprintf("%d links, want %d", sb.Nlink, sa.Nlink)
	}
	if a.Mode()&os.ModeSymlink != 0 {
		la, err := os.Readlink(want)
		if err != nil {
			return err.Error()
		}
		lb, err := os.Readlink(got)
		if err != nil {
			return err.Error()
		}
		if la != lb {
			return fmt.Sprintf("symlink to %q, want %q", lb, la)
		}
	}
	return ""
}

// checkPrefixes checks a tree that tar was extracting when the filesystem
// crashed: every regular file in got whose original is a regular file must
// hold a prefix of the original's content, and at most one of them (the
// file being written) may be shorter than the original. It returns the
// number of regular files checked.
func checkPrefixes(t testing.TB, want, got string) int {
	t.Helper()
	var files int
	var partial []string
	err := filepath.WalkDir(got, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(got, p)
		if err != nil {
			return err
		}
		orig := filepath.Join(want, rel)
		if fi, err := os.Lstat(orig); err != nil || !fi.Mode().IsRegular() {
			// tar leaves an empty placeholder file for a symlink it
			// creates at the end.
			return nil
		}
		a, err := os.ReadFile(orig)
		if err != nil {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files++
		if !bytes.HasPrefix(a, b) {
			t.Errorf("%s: %d bytes that are not a prefix of the original's %d", rel, len(b), len(a))
		}
		if len(b) < len(a) {
			partial = append(partial, fmt.Sprintf("%s (%d of %d bytes)", rel, len(b), len(a)))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", got, err)
	}
	if len(partial) > 1 {
		t.Errorf("%d files are incomplete, want at most the one tar was writing: %s", len(partial), strings.Join(partial, ", "))
	}
	t.Logf("%d files after the crash, %d incomplete: %v", files, len(partial), partial)
	return files
}
