package fusefs

import (
	"context"
	"errors"
	"testing"

	"github.com/tricopy/tricopy/blockdev"
)

// The decoders of on-volume structures must turn any bytes into a value or
// an error, never a panic or an absurd allocation.

func FuzzSuperblock(f *testing.F) {
	sb, err := layout(64<<10, 4096)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(sb.encode(), uint64(64<<10))
	f.Add(make([]byte, bs), uint64(1))
	f.Fuzz(func(t *testing.T, p []byte, volBlocks uint64) {
		if len(p) != bs {
			q := make([]byte, bs)
			copy(q, p)
			p = q
		}
		s, err := decodeSuper(p, volBlocks)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNoFilesystem) {
				t.Fatalf("error %v is neither ErrCorrupt nor ErrNoFilesystem", err)
			}
			return
		}
		if s.blocks > volBlocks || s.dataStart >= s.blocks {
			t.Fatalf("accepted inconsistent superblock %+v on %d blocks", s, volBlocks)
		}
	})
}

func FuzzInode(f *testing.F) {
	in := inode{mode: s_IFREG | 0o644, nlink: 1, size: 12345, direct: [directEntries]entry{{blk: 77, sum: 5}}}
	p := make([]byte, inodeSize)
	in.encode(p, 9)
	f.Add(p, uint32(9))
	f.Add(make([]byte, inodeSize), uint32(3))
	f.Fuzz(func(t *testing.T, p []byte, ino uint32) {
		in, err := decodeInode(p, ino)
		if err != nil {
			return
		}
		if in.mode == 0 {
			return
		}
		q := make([]byte, inodeSize)
		in.encode(q, ino)
		if string(q) != string(p[:inodeSize]) {
			t.Fatalf("decode/encode of inode %d does not round-trip", ino)
		}
	})
}

func FuzzDirBlock(f *testing.F) {
	f.Add(encodeDirBlock(5, []dirent{{name: "a", ino: 9, typ: 8}, {name: "hello.txt", ino: 10, typ: 4}}), uint32(5))
	f.Add(make([]byte, bs), uint32(5))
	f.Fuzz(func(t *testing.T, p []byte, dir uint32) {
		if len(p) != bs {
			q := make([]byte, bs)
			copy(q, p)
			p = q
		}
		var ents []dirent
		if err := decodeDirBlock(p, dir, func(d dirent) error { ents = append(ents, d); return nil }); err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not ErrCorrupt", err)
			}
			return
		}
		if len(ents) == 0 {
			return
		}
		q := encodeDirBlock(dir, ents)
		var again []dirent
		if err := decodeDirBlock(q, dir, func(d dirent) error { again = append(again, d); return nil }); err != nil || len(again) != len(ents) {
			t.Fatalf("re-encoded block does not decode: %v", err)
		}
	})
}

func FuzzXattrs(f *testing.F) {
	f.Add(encodeXattrs([]xattr{{name: "user.a", value: []byte("b")}, {name: "security.x", value: nil}}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, p []byte) {
		xs, err := decodeXattrs(p, 1)
		if err != nil {
			return
		}
		if q := encodeXattrs(xs); string(q) != string(p) {
			t.Fatalf("xattr stream does not round-trip")
		}
	})
}

// FuzzVolume corrupts bytes of a small formatted volume holding a few
// files; Check must report or pass, and opening must fail cleanly or work.
func FuzzVolume(f *testing.F) {
	f.Add(uint32(0), uint16(0), byte(1))
	f.Add(uint32(5), uint16(100), byte(0xff))
	f.Fuzz(func(t *testing.T, blk uint32, off uint16, xor byte) {
		v := fuzzVolume(t)
		blk %= uint32(v.BlockCount())
		p := make([]byte, bs)
		if err := v.ReadBlock(uint64(blk), p); err != nil {
			t.Fatal(err)
		}
		p[int(off)%bs] ^= xor
		ctx := context.Background()
		if err := v.Apply(ctx, &blockdev.Batch{Writes: []blockdev.Write{{Index: uint64(blk), Data: p}}}, blockdev.ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := Check(ctx, v); err != nil {
			t.Fatalf("check: %v", err)
		}
		fs, err := openFS(ctx, LocalDevice(v), engineOptions{readOnly: true, log: testLogger(t)})
		if err != nil {
			return
		}
		_, _ = engineTarget{fs}.dump()
	})
}

var fuzzBase *blockdev.Batch

func fuzzVolume(t *testing.T) *blockdev.MemVolume {
	ctx := context.Background()
	if fuzzBase == nil {
		fs, v := newEngine(t, 1024)
		e := engineTarget{fs}
		for _, err := range []error{
			e.mkdir("d", 0o755),
			e.write("d/f", 0, []byte("hello")),
			e.write("big", 70<<10, []byte("x")),
			e.symlink("d/f", "l"),
			e.setxattr("d/f", "user.k", []byte("v")),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
		fuzzBase = snapshot(t, v)
	}
	v := blockdev.NewMem(1024)
	if err := v.Apply(ctx, fuzzBase, blockdev.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	return v
}
