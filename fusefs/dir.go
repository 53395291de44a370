package fusefs

import (
	"encoding/binary"
	"fmt"
	"syscall"
)

// dirIndex is the in-memory index of one directory, built from its blocks
// on first use. It is changed only by committed transactions (under fs.mu
// held for writing) and read under fs.mu held for reading.
type dirIndex struct {
	ents map[string]dslot
	free []int // free bytes per logical block
	hint int   // block that last had room
}

// dslot is where a name lives and what it names.
type dslot struct {
	ino  uint32
	typ  uint8
	lblk uint32
}

// dirTx is a transaction's pending changes to one directory.
type dirTx struct {
	ents map[string]*dslot // nil value: removed
	free map[int]int       // lblk → free bytes
	nblk int
}

// dir returns the index of directory ino, loading it on first use.
func (fs *filesystem) dir(ino uint32) (*dirIndex, error) {
	fs.dirMu.Lock()
	di := fs.dirs[ino]
	fs.dirMu.Unlock()
	if di != nil {
		return di, nil
	}
	in, err := fs.loadInode(ino)
	if err != nil {
		return nil, err
	}
	if !in.isDir() {
		return nil, syscall.ENOTDIR
	}
	di = &dirIndex{ents: make(map[string]dslot)}
	src := fs.dirSource()
	nblk := int(in.size / bs)
	for lblk := 0; lblk < nblk; lblk++ {
		p, err := fs.dirBlock(src, &in, ino, uint32(lblk))
		if err != nil {
			return nil, err
		}
		used := dirHeader
		err = decodeDirBlock(p, ino, func(d dirent) error {
			if _, dup := di.ents[d.name]; dup {
				return corruptf("directory %d: name %q appears twice", ino, d.name)
			}
			di.ents[d.name] = dslot{ino: d.ino, typ: d.typ, lblk: uint32(lblk)}
			used += direntSize(d.name)
			return nil
		})
		if err != nil {
			return nil, err
		}
		di.free = append(di.free, bs-used)
	}
	fs.dirMu.Lock()
	if old := fs.dirs[ino]; old != nil {
		di = old // loaded concurrently by another reader
	} else {
		fs.dirs[ino] = di
		fs.dirLoaded(ino, src)
	}
	fs.dirMu.Unlock()
	return di, nil
}

// dirBlock reads logical block lblk of directory ino through the metadata
// cache, verified against its map entry.
func (fs *filesystem) dirBlock(r metaReader, in *inode, ino, lblk uint32) ([]byte, error) {
	e, err := lookupEntry(r, in, ino, uint64(lblk))
	if err != nil {
		return nil, err
	}
	if e.blk == 0 {
		return make([]byte, bs), nil
	}
	return r.readMeta(e.blk, func(p []byte) error {
		if got := crc(p); got != e.sum {
			return corruptf("directory %d block %d (block %d): checksum %08x, want %08x", ino, lblk, e.blk, got, e.sum)
		}
		return nil
	})
}

func (t *tx) dirTx(dir uint32, di *dirIndex) *dirTx {
	if t.dirs == nil {
		t.dirs = make(map[uint32]*dirTx)
	}
	d := t.dirs[dir]
	if d == nil {
		d = &dirTx{ents: make(map[string]*dslot), free: make(map[int]int), nblk: len(di.free)}
		t.dirs[dir] = d
		t.after = append(t.after, func() { t.fs.applyDirTx(dir, di, d) })
	}
	return d
}

func (fs *filesystem) applyDirTx(dir uint32, di *dirIndex, d *dirTx) {
	for name, s := range d.ents {
		if s == nil {
			delete(di.ents, name)
		} else {
			di.ents[name] = *s
		}
	}
	for len(di.free) < d.nblk {
		di.free = append(di.free, bs-dirHeader)
	}
	for lblk, f := range d.free {
		di.free[lblk] = f
	}
}

// lookup finds name in directory dir as the tx sees it.
func (t *tx) lookup(dir uint32, name string) (dslot, bool, error) {
	di, err := t.fs.dir(dir)
	if err != nil {
		return dslot{}, false, err
	}
	if d := t.dirs[dir]; d != nil {
		if s, ok := d.ents[name]; ok {
			if s == nil {
				return dslot{}, false, nil
			}
			return *s, true, nil
		}
	}
	s, ok := di.ents[name]
	return s, ok, nil
}

// isEmptyDir reports whether directory ino has no entries.
func (t *tx) isEmptyDir(ino uint32) (bool, error) {
	di, err := t.fs.dir(ino)
	if err != nil {
		return false, err
	}
	n := len(di.ents)
	if d := t.dirs[ino]; d != nil {
		for name, s := range d.ents {
			_, had := di.ents[name]
			switch {
			case s == nil && had:
				n--
			case s != nil && !had:
				n++
			}
		}
	}
	return n == 0, nil
}

// editBlock rewrites logical block lblk of directory dir: fn edits a
// private copy of the block in place (bytes, no decoding).
func (t *tx) editBlock(dir uint32, din *inode, lblk uint32, fn func(q []byte) error) error {
	p, err := t.fs.dirBlock(t, din, dir, lblk)
	if err != nil {
		return err
	}
	q := make([]byte, bs)
	copy(q, p)
	le := binary.LittleEndian
	if le.Uint32(q) == 0 { // a block never written: start it
		le.PutUint32(q, dirMagic)
		le.PutUint32(q[4:], dir)
		le.PutUint16(q[10:], dirHeader)
	}
	if err := fn(q); err != nil {
		return err
	}
	return t.writeFileBlock(din, dir, uint64(lblk), q, true)
}

// findInBlock returns the offset and size of name's entry in directory
// block q, or -1. It checks every bound, so a damaged block is an error,
// not a panic.
func findInBlock(q []byte, dir uint32, name string) (off, size int, err error) {
	le := binary.LittleEndian
	if le.Uint32(q) != dirMagic || le.Uint32(q[4:]) != dir {
		return -1, 0, corruptf("directory %d: block header damaged", dir)
	}
	count, used := int(le.Uint16(q[8:])), int(le.Uint16(q[10:]))
	if used < dirHeader || used > bs {
		return -1, 0, corruptf("directory %d: block claims %d bytes used", dir, used)
	}
	off = dirHeader
	for i := 0; i < count; i++ {
		if off+6 > used {
			return -1, 0, corruptf("directory %d: entry %d runs past end of block", dir, i)
		}
		n := int(q[off+5])
		if off+6+n > used {
			return -1, 0, corruptf("directory %d: entry %d runs past end of block", dir, i)
		}
		if n == len(name) && string(q[off+6:off+6+n]) == name {
			return off, 6 + n, nil
		}
		off += 6 + n
	}
	return -1, 0, nil
}

// appendToBlock adds an entry at the end of directory block q.
func appendToBlock(q []byte, dir uint32, d dirent) error {
	le := binary.LittleEndian
	used := int(le.Uint16(q[10:]))
	if used < dirHeader || used+direntSize(d.name) > bs {
		return corruptf("directory %d: no room for %q in a block the index says has room", dir, d.name)
	}
	le.PutUint32(q[used:], d.ino)
	q[used+4] = d.typ
	q[used+5] = byte(len(d.name))
	copy(q[used+6:], d.name)
	le.PutUint16(q[8:], le.Uint16(q[8:])+1)
	le.PutUint16(q[10:], uint16(used+direntSize(d.name)))
	return nil
}

// addEntry adds name → ino to directory dir (whose tx inode is din). The
// name must not exist.
func (t *tx) addEntry(dir uint32, din *inode, name string, ino uint32, typ uint8) error {
	di, err := t.fs.dir(dir)
	if err != nil {
		return err
	}
	d := t.dirTx(dir, di)
	need := direntSize(name)
	freeOf := func(lblk int) int {
		if f, ok := d.free[lblk]; ok {
			return f
		}
		if lblk < len(di.free) {
			return di.free[lblk]
		}
		return bs - dirHeader
	}
	lblk := -1
	if di.hint < d.nblk && freeOf(di.hint) >= need {
		lblk = di.hint
	} else {
		for i := 0; i < d.nblk; i++ {
			if freeOf(i) >= need {
				lblk = i
				break
			}
		}
	}
	if lblk < 0 {
		lblk = d.nblk
		d.nblk++
		din.size = uint64(d.nblk) * bs
	}
	if err := t.editBlock(dir, din, uint32(lblk), func(q []byte) error {
		return appendToBlock(q, dir, dirent{name: name, ino: ino, typ: typ})
	}); err != nil {
		return err
	}
	d.free[lblk] = freeOf(lblk) - need
	d.ents[name] = &dslot{ino: ino, typ: typ, lblk: uint32(lblk)}
	hint := lblk
	t.after = append(t.after, func() { di.hint = hint })
	return nil
}

// editEntry finds the entry name of directory dir and lets fn edit its
// block in place, given the entry's offset and size there.
func (t *tx) editEntry(dir uint32, din *inode, name string, fn func(q []byte, off, size int)) (dslot, *dirIndex, *dirTx, error) {
	s, ok, err := t.lookup(dir, name)
	if err != nil {
		return s, nil, nil, err
	}
	if !ok {
		return s, nil, nil, syscall.ENOENT
	}
	di, err := t.fs.dir(dir)
	if err != nil {
		return s, nil, nil, err
	}
	d := t.dirTx(dir, di)
	err = t.editBlock(dir, din, s.lblk, func(q []byte) error {
		off, size, err := findInBlock(q, dir, name)
		if err != nil {
			return err
		}
		if off < 0 {
			return corruptf("directory %d: index names %q in block %d, block does not", dir, name, s.lblk)
		}
		fn(q, off, size)
		return nil
	})
	return s, di, d, err
}

// removeEntry removes name from directory dir.
func (t *tx) removeEntry(dir uint32, din *inode, name string) error {
	s, di, d, err := t.editEntry(dir, din, name, func(q []byte, off, size int) {
		le := binary.LittleEndian
		used := int(le.Uint16(q[10:]))
		copy(q[off:], q[off+size:used])
		clear(q[used-size : used])
		le.PutUint16(q[8:], le.Uint16(q[8:])-1)
		le.PutUint16(q[10:], uint16(used-size))
	})
	if err != nil {
		return err
	}
	f, ok := d.free[int(s.lblk)]
	if !ok {
		f = di.free[s.lblk]
	}
	d.free[int(s.lblk)] = f + direntSize(name)
	d.ents[name] = nil
	return nil
}

// replaceEntry points the existing entry name at ino.
func (t *tx) replaceEntry(dir uint32, din *inode, name string, ino uint32, typ uint8) error {
	s, _, d, err := t.editEntry(dir, din, name, func(q []byte, off, _ int) {
		binary.LittleEndian.PutUint32(q[off:], ino)
		q[off+4] = typ
	})
	if err != nil {
		return err
	}
	d.ents[name] = &dslot{ino: ino, typ: typ, lblk: s.lblk}
	return nil
}

// readdir lists directory ino in on-volume order.
func (fs *filesystem) readdir(ino uint32) ([]dirent, error) {
	in, err := fs.loadInode(ino)
	if err != nil {
		return nil, err
	}
	if !in.isDir() {
		return nil, syscall.ENOTDIR
	}
	var out []dirent
	for lblk := uint32(0); uint64(lblk) < in.size/bs; lblk++ {
		p, err := fs.dirBlock(fs, &in, ino, lblk)
		if err != nil {
			return nil, err
		}
		if err := decodeDirBlock(p, ino, func(d dirent) error { out = append(out, d); return nil }); err != nil {
			return nil, fmt.Errorf("read directory %d: %w", ino, err)
		}
	}
	return out, nil
}
