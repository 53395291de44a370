package fusefs

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// target is a filesystem a workload runs against, addressed by
// slash-separated paths relative to its root.
type target interface {
	mkdir(p string, mode uint32) error
	write(p string, off int64, data []byte) error // creates the file (0644) if needed
	truncate(p string, size int64) error
	rename(a, b string) error
	link(a, b string) error
	unlink(p string) error
	rmdir(p string) error
	symlink(dest, p string) error
	chmod(p string, mode uint32) error
	setxattr(p, name string, val []byte) error
	removexattr(p, name string) error
	fsync(p string) error
	// dump describes every entry below the root, keyed by path.
	dump() (map[string]string, error)
}

// errnoOf reduces an error to its errno for comparison (0 for nil).
func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		if e == syscall.ESTALE {
			return syscall.ENOENT
		}
		return e
	}
	return syscall.EIO
}

// osTarget runs the workload with system calls below a directory: a plain
// directory (the reference) or a mount.
type osTarget struct{ root string }

func (o osTarget) p(s string) string { return filepath.Join(o.root, s) }

func (o osTarget) mkdir(p string, mode uint32) error { return syscall.Mkdir(o.p(p), mode) }
func (o osTarget) write(p string, off int64, data []byte) error {
	fd, err := syscall.Open(o.p(p), syscall.O_WRONLY|syscall.O_CREAT|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	_, err = syscall.Pwrite(fd, data, off)
	return err
}
func (o osTarget) truncate(p string, size int64) error { return syscall.Truncate(o.p(p), size) }
func (o osTarget) rename(a, b string) error            { return syscall.Rename(o.p(a), o.p(b)) }
func (o osTarget) link(a, b string) error              { return syscall.Link(o.p(a), o.p(b)) }
func (o osTarget) unlink(p string) error               { return syscall.Unlink(o.p(p)) }
func (o osTarget) rmdir(p string) error                { return syscall.Rmdir(o.p(p)) }
func (o osTarget) symlink(dest, p string) error        { return syscall.Symlink(dest, o.p(p)) }
func (o osTarget) chmod(p string, mode uint32) error   { return syscall.Chmod(o.p(p), mode) }
func (o osTarget) setxattr(p, name string, val []byte) error {
	return unix.Lsetxattr(o.p(p), name, val, 0)
}
func (o osTarget) removexattr(p, name string) error { return unix.Lremovexattr(o.p(p), name) }
func (o osTarget) fsync(p string) error {
	fd, err := syscall.Open(o.p(p), syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer syscall.Close(fd)
	return syscall.Fsync(fd)
}

func (o osTarget) dump() (map[string]string, error) {
	out := make(map[string]string)
	err := filepath.WalkDir(o.root, func(full string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(o.root, full)
		if rel == "." {
			return nil
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(full, &st); err != nil {
			return err
		}
		var content, dest string
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			b, err := os.ReadFile(full)
			if err != nil {
				return err
			}
			content = fmt.Sprintf("%x", sha256.Sum256(b))
		case syscall.S_IFLNK:
			if dest, err = os.Readlink(full); err != nil {
				return err
			}
		}
		xs, err := osXattrs(full)
		if err != nil {
			return err
		}
		out[rel] = describe(st.Mode, uint64(st.Size), uint32(st.Nlink), content, dest, xs)
		return nil
	})
	return out, err
}

func osXattrs(p string) ([]string, error) {
	n, err := unix.Llistxattr(p, nil)
	if err != nil || n == 0 {
		return nil, err
	}
	buf := make([]byte, n)
	if n, err = unix.Llistxattr(p, buf); err != nil {
		return nil, err
	}
	var out []string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		v := make([]byte, 70000)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			return nil, err
		}
		out = append(out, fmt.Sprintf("%s=%x", name, sha256.Sum256(v[:m])))
	}
	sort.Strings(out)
	return out, nil
}

// describe renders the compared attributes of one entry. Directory sizes
// differ between filesystems by design and are left out.
func describe(mode uint32, size uint64, nlink uint32, content, dest string, xattrs []string) string {
	if mode&s_IFMT == s_IFDIR {
		size = 0
	}
	return fmt.Sprintf("mode=%o size=%d nlink=%d data=%s link=%q xattrs=%v", mode, size, nlink, content, dest, xattrs)
}

// engineTarget runs the workload directly against the filesystem engine.
type engineTarget struct{ fs *filesystem }

var bg = context.Background()

func (e engineTarget) resolve(p string) (uint32, error) {
	ino := uint32(rootIno)
	if p == "" || p == "." {
		return ino, nil
	}
	for _, name := range strings.Split(p, "/") {
		next, _, err := e.fs.lookupName(ino, name)
		if err != nil {
			return 0, err
		}
		ino = next
	}
	return ino, nil
}

func (e engineTarget) parent(p string) (uint32, string, error) {
	dir, name := path.Split(p)
	ino, err := e.resolve(strings.TrimSuffix(dir, "/"))
	return ino, name, err
}

func (e engineTarget) mkdir(p string, mode uint32) error {
	dir, name, err := e.parent(p)
	if err != nil {
		return err
	}
	_, _, err = e.fs.mknod(bg, dir, name, s_IFDIR|mode, 0, 0, 0)
	return err
}

func (e engineTarget) write(p string, off int64, data []byte) error {
	ino, err := e.resolve(p)
	if errnoOf(err) == syscall.ENOENT {
		dir, name, perr := e.parent(p)
		if perr != nil {
			return perr
		}
		ino, _, err = e.fs.mknod(bg, dir, name, s_IFREG|0o644, 0, 0, 0)
	}
	if err != nil {
		return err
	}
	in, err := e.fs.getattr(ino)
	if err != nil {
		return err
	}
	if in.isDir() {
		return syscall.EISDIR
	}
	_, err = e.fs.write(bg, ino, data, off)
	return err
}

func (e engineTarget) truncate(p string, size int64) error {
	ino, err := e.resolve(p)
	if err != nil {
		return err
	}
	s := uint64(size)
	_, err = e.fs.setattr(bg, ino, setattrIn{size: &s})
	return err
}

func (e engineTarget) rename(a, b string) error {
	ad, an, err := e.parent(a)
	if err != nil {
		return err
	}
	bd, bn, err := e.parent(b)
	if err != nil {
		return err
	}
	return e.fs.rename(bg, ad, an, bd, bn, 0)
}

func (e engineTarget) link(a, b string) error {
	ino, err := e.resolve(a)
	if err != nil {
		return err
	}
	bd, bn, err := e.parent(b)
	if err != nil {
		return err
	}
	_, err = e.fs.link(bg, ino, bd, bn)
	return err
}

func (e engineTarget) unlink(p string) error {
	dir, name, err := e.parent(p)
	if err != nil {
		return err
	}
	return e.fs.unlink(bg, dir, name)
}

func (e engineTarget) rmdir(p string) error {
	dir, name, err := e.parent(p)
	if err != nil {
		return err
	}
	return e.fs.rmdir(bg, dir, name)
}

func (e engineTarget) symlink(dest, p string) error {
	dir, name, err := e.parent(p)
	if err != nil {
		return err
	}
	_, _, err = e.fs.symlink(bg, dir, name, dest, 0, 0)
	return err
}

func (e engineTarget) chmod(p string, mode uint32) error {
	ino, err := e.resolve(p)
	if err != nil {
		return err
	}
	_, err = e.fs.setattr(bg, ino, setattrIn{mode: &mode})
	return err
}

func (e engineTarget) setxattr(p, name string, val []byte) error {
	ino, err := e.resolve(p)
	if err != nil {
		return err
	}
	return e.fs.setxattr(bg, ino, name, val, 0)
}

func (e engineTarget) removexattr(p, name string) error {
	ino, err := e.resolve(p)
	if err != nil {
		return err
	}
	return e.fs.setxattr(bg, ino, name, nil, 0)
}

func (e engineTarget) fsync(p string) error {
	if _, err := e.resolve(p); err != nil {
		return err
	}
	return e.fs.sync(bg)
}

func (e engineTarget) dump() (map[string]string, error) {
	out := make(map[string]string)
	var walk func(dir uint32, prefix string) error
	walk = func(dir uint32, prefix string) error {
		e.fs.mu.RLock()
		ents, err := e.fs.readdir(dir)
		e.fs.mu.RUnlock()
		if err != nil {
			return err
		}
		for _, d := range ents {
			p := path.Join(prefix, d.name)
			in, err := e.fs.getattr(d.ino)
			if err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			var content, dest string
			switch {
			case in.isReg():
				b := make([]byte, in.size)
				if _, err := e.fs.read(d.ino, b, 0); err != nil {
					return fmt.Errorf("%s: %w", p, err)
				}
				content = fmt.Sprintf("%x", sha256.Sum256(b))
			case in.isLink():
				b, err := e.fs.readlink(d.ino)
				if err != nil {
					return err
				}
				dest = string(b)
			}
			names, err := e.fs.listxattr(d.ino)
			if err != nil {
				return err
			}
			var xs []string
			for _, n := range names {
				v, err := e.fs.getxattr(d.ino, n)
				if err != nil {
					return err
				}
				xs = append(xs, fmt.Sprintf("%s=%x", n, sha256.Sum256(v)))
			}
			sort.Strings(xs)
			out[p] = describe(in.mode, in.size, in.nlink, content, dest, xs)
			if in.isDir() {
				if err := walk(d.ino, p); err != nil {
					return err
				}
			}
		}
		return nil
	}
	return out, walk(rootIno, "")
}

// workload generates a seeded random sequence of operations. It picks
// paths from the reference tree so that most operations succeed and many
// collide (rename over, EEXIST, ENOTEMPTY).
type workload struct {
	rng      *rand.Rand
	maxWrite int
}

// op is one generated operation. pre, if set, is a step of its own that
// comes first (creating the file a write goes to: two filesystem
// operations, as through FUSE, so a crash can fall between them).
type op struct {
	desc string
	pre  func(t target) error
	run  func(t target) error
}

func (w *workload) next(tree map[string]string) op {
	var files, dirs, all []string
	dirs = append(dirs, "")
	for p, d := range tree {
		all = append(all, p)
		switch modeOf(d) & s_IFMT {
		case s_IFDIR:
			dirs = append(dirs, p)
		case s_IFREG:
			files = append(files, p)
		}
	}
	sort.Strings(files)
	sort.Strings(dirs)
	sort.Strings(all)
	r := w.rng
	pick := func(list []string) string {
		if len(list) == 0 {
			return "missing"
		}
		return list[r.IntN(len(list))]
	}
	newName := func() string {
		return path.Join(pick(dirs), string(rune('a'+r.IntN(6)))+string(rune('a'+r.IntN(3))))
	}
	anyPath := func() string {
		if r.IntN(4) == 0 || len(all) == 0 {
			return newName()
		}
		return pick(all)
	}
	// fileOrNew never returns a symlink: the operations it feeds follow
	// symlinks on the reference, and the engine target does not resolve them.
	fileOrNew := func() string {
		if r.IntN(3) == 0 || len(files) == 0 {
			for {
				p := newName()
				if d, ok := tree[p]; !ok || modeOf(d)&s_IFMT != s_IFLNK {
					return p
				}
			}
		}
		return pick(files)
	}
	switch k := r.IntN(100); {
	case k < 30:
		p := fileOrNew()
		size := 1 + r.IntN(w.maxWrite)
		if r.IntN(10) == 0 {
			size = 1 + r.IntN(3*bs)
		}
		off := int64(r.IntN(64 << 10))
		if r.IntN(8) == 0 {
			off = int64(r.IntN(3 << 20)) // past the direct and into the indirect blocks
		}
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(r.IntN(256))
		}
		o := op{desc: fmt.Sprintf("write %s off=%d len=%d", p, off, size), run: func(t target) error { return t.write(p, off, data) }}
		if _, exists := tree[p]; !exists {
			o.pre = func(t target) error { return t.write(p, 0, nil) }
		}
		return o
	case k < 38:
		p := fileOrNew()
		size := int64(r.IntN(80 << 10))
		if r.IntN(6) == 0 {
			size = int64(r.IntN(4 << 20))
		}
		return op{desc: fmt.Sprintf("truncate %s %d", p, size), run: func(t target) error { return t.truncate(p, size) }}
	case k < 48:
		p := newName()
		return op{desc: "mkdir " + p, run: func(t target) error { return t.mkdir(p, 0o755) }}
	case k < 60:
		a, b := anyPath(), anyPath()
		if r.IntN(2) == 0 {
			b = newName()
		}
		return op{desc: fmt.Sprintf("rename %s %s", a, b), run: func(t target) error { return t.rename(a, b) }}
	case k < 66:
		a, b := fileOrNew(), newName()
		return op{desc: fmt.Sprintf("link %s %s", a, b), run: func(t target) error { return t.link(a, b) }}
	case k < 74:
		p := anyPath()
		return op{desc: "unlink " + p, run: func(t target) error { return t.unlink(p) }}
	case k < 80:
		p := anyPath()
		if r.IntN(2) == 0 {
			p = pick(dirs[1:])
		}
		return op{desc: "rmdir " + p, run: func(t target) error { return t.rmdir(p) }}
	case k < 85:
		p := newName()
		dest := strings.Repeat("../x/", 1+r.IntN(3)) + fmt.Sprint(r.IntN(1000))
		if r.IntN(5) == 0 {
			dest = strings.Repeat("y", 100+r.IntN(3000)) // targets longer than one block's worth of inline data
		}
		return op{desc: fmt.Sprintf("symlink %s -> %.20s", p, dest), run: func(t target) error { return t.symlink(dest, p) }}
	case k < 90:
		p := fileOrNew()
		mode := uint32(r.IntN(0o1000)) | 0o600
		return op{desc: fmt.Sprintf("chmod %s %o", p, mode), run: func(t target) error { return t.chmod(p, mode) }}
	case k < 96:
		p := fileOrNew()
		name := fmt.Sprintf("user.k%d", r.IntN(4))
		if r.IntN(4) == 0 {
			return op{desc: fmt.Sprintf("removexattr %s %s", p, name), run: func(t target) error { return t.removexattr(p, name) }}
		}
		// ext4, the reference, keeps all of an inode's xattrs in one
		// block; larger values are covered by posixtest's XAttrLarge.
		val := make([]byte, r.IntN(200))
		if r.IntN(8) == 0 {
			val = make([]byte, r.IntN(700))
		}
		for i := range val {
			val[i] = byte(r.IntN(256))
		}
		return op{desc: fmt.Sprintf("setxattr %s %s len=%d", p, name, len(val)), run: func(t target) error { return t.setxattr(p, name, val) }}
	default:
		p := fileOrNew()
		return op{desc: "fsync " + p, run: func(t target) error { return t.fsync(p) }}
	}
}

// modeOf extracts the mode from a describe string.
func modeOf(desc string) uint32 {
	var m uint32
	fmt.Sscanf(desc, "mode=%o", &m)
	return m
}

// diffTrees returns a description of how two dumps differ, or "".
func diffTrees(want, got map[string]string) string {
	var out []string
	keys := make([]string, 0, len(want)+len(got))
	for k := range want {
		keys = append(keys, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		w, wok := want[k]
		g, gok := got[k]
		switch {
		case !gok:
			out = append(out, fmt.Sprintf("missing %s: %s", k, w))
		case !wok:
			out = append(out, fmt.Sprintf("extra   %s: %s", k, g))
		case w != g:
			out = append(out, fmt.Sprintf("differs %s:\n    want %s\n    got  %s", k, w, g))
		}
		if len(out) > 10 {
			out = append(out, "...")
			break
		}
	}
	return strings.Join(out, "\n")
}
