package blockdev

import (
	"errors"
	"io/fs"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"testing"
)

func mustBitmap(t testing.TB, blocks uint64, regionSize int) *Bitmap {
	t.Helper()
	b, err := NewBitmap(blocks, regionSize)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func regionsOf(b *Bitmap) []uint64 {
	var rs []uint64
	for r := range b.Iterate {
		rs = append(rs, r)
	}
	return rs
}

func TestBitmapGeometry(t *testing.T) {
	// 1000 blocks in 64 KiB regions of 16 blocks: 63 regions, the last of 8.
	b := mustBitmap(t, 1000, 0)
	if b.RegionSize() != DefaultRegionSize || b.Regions() != 63 || b.BlockCount() != 1000 {
		t.Fatalf("region size %d, regions %d, blocks %d", b.RegionSize(), b.Regions(), b.BlockCount())
	}
	if first, n := b.RegionBlocks(0); first != 0 || n != 16 {
		t.Errorf("RegionBlocks(0) = %d, %d", first, n)
	}
	if first, n := b.RegionBlocks(62); first != 992 || n != 8 {
		t.Errorf("RegionBlocks(62) = %d, %d", first, n)
	}
	if r := b.RegionOf(999); r != 62 {
		t.Errorf("RegionOf(999) = %d", r)
	}
	for _, size := range []int{-4096, 100, 4097, MaxRegionSize + BlockSize} {
		if _, err := NewBitmap(10, size); err == nil {
			t.Errorf("NewBitmap(10, %d) succeeded", size)
		}
	}
	if _, err := NewBitmap(MaxBlocks+1, BlockSize); err == nil {
		t.Error("NewBitmap of too many blocks succeeded")
	}
	empty := mustBitmap(t, 0, 0)
	if empty.Regions() != 0 || len(regionsOf(empty)) != 0 {
		t.Error("bitmap of no blocks has regions")
	}
	empty.SetAll()
}

func TestBitmapSetClear(t *testing.T) {
	b := mustBitmap(t, 1000, 2*BlockSize) // 500 regions of 2 blocks
	b.SetBlock(0)
	b.SetBlock(1) // same region
	b.SetBlock(999)
	b.SetRange(200, 300) // blocks 200..499: regions 100..249
	b.SetRange(5, 0)     // nothing
	want := []uint64{0}
	for r := uint64(100); r < 250; r++ {
		want = append(want, r)
	}
	want = append(want, 499)
	if got := regionsOf(b); !slices.Equal(got, want) {
		t.Fatalf("regions %v, want %v", got, want)
	}
	if b.Count() != uint64(len(want)) {
		t.Fatalf("Count() = %d, want %d", b.Count(), len(want))
	}
	b.ClearRegion(100)
	b.ClearRegion(100)
	b.ClearRegion(1)
	if b.IsSet(100) || !b.IsSet(101) || b.Count() != uint64(len(want)-1) {
		t.Fatalf("after ClearRegion: IsSet(100) %v, IsSet(101) %v, Count %d", b.IsSet(100), b.IsSet(101), b.Count())
	}
	// Stopping an iteration early.
	var seen []uint64
	for r := range b.Iterate {
		seen = append(seen, r)
		if len(seen) == 3 {
			break
		}
	}
	if !slices.Equal(seen, []uint64{0, 101, 102}) {
		t.Fatalf("first three regions %v", seen)
	}
	b.SetAll()
	if b.Count() != 500 || len(regionsOf(b)) != 500 {
		t.Fatalf("after SetAll: Count %d", b.Count())
	}
	b.ClearAll()
	if b.Count() != 0 || len(regionsOf(b)) != 0 {
		t.Fatalf("after ClearAll: Count %d", b.Count())
	}
}

// TestBitmapAgainstModel checks random operations against a map.
func TestBitmapAgainstModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 0))
	for range 20 {
		blocks := 1 + rng.Uint64N(5000)
		per := 1 + rng.IntN(5)
		b := mustBitmap(t, blocks, per*BlockSize)
		set := map[uint64]bool{}
		for range 200 {
			switch rng.IntN(4) {
			case 0:
				i := rng.Uint64N(blocks)
				b.SetBlock(i)
				set[i/uint64(per)] = true
			case 1:
				first := rng.Uint64N(blocks)
				n := rng.Uint64N(min(blocks-first, 300) + 1)
				b.SetRange(first, n)
				for i := first; i < first+n; i++ {
					set[i/uint64(per)] = true
				}
			case 2:
				r := rng.Uint64N(b.Regions())
				b.ClearRegion(r)
				delete(set, r)
			case 3:
				c := b.Clone()
				c.ClearAll()
				if b.Count() != uint64(len(set)) {
					t.Fatal("clearing a clone changed the original")
				}
			}
			if b.Count() != uint64(len(set)) {
				t.Fatalf("Count() = %d, want %d", b.Count(), len(set))
			}
		}
		for r := range b.Regions() {
			if b.IsSet(r) != set[r] {
				t.Fatalf("IsSet(%d) = %v", r, b.IsSet(r))
			}
		}
	}
}

func TestBitmapOr(t *testing.T) {
	a := mustBitmap(t, 300, BlockSize)
	b := mustBitmap(t, 300, BlockSize)
	a.SetRange(0, 100)
	b.SetRange(50, 100)
	b.SetBlock(299)
	if err := a.Or(b); err != nil {
		t.Fatal(err)
	}
	if a.Count() != 151 || !a.IsSet(299) || !a.IsSet(149) || a.IsSet(150) {
		t.Fatalf("union: Count %d", a.Count())
	}
	if b.Count() != 101 {
		t.Fatal("Or changed its argument")
	}
	if err := a.Or(mustBitmap(t, 300, 2*BlockSize)); err == nil {
		t.Error("Or of different region sizes succeeded")
	}
	if err := a.Or(mustBitmap(t, 301, BlockSize)); err == nil {
		t.Error("Or of different block counts succeeded")
	}
}

func TestBitmapPanicsOutOfRange(t *testing.T) {
	b := mustBitmap(t, 10, BlockSize)
	for name, f := range map[string]func(){
		"SetBlock":     func() { b.SetBlock(10) },
		"SetRange":     func() { b.SetRange(5, 6) },
		"SetRangeWrap": func() { b.SetRange(5, ^uint64(0)) },
		"ClearRegion":  func() { b.ClearRegion(10) },
		"IsSet":        func() { b.IsSet(10) },
		"RegionBlocks": func() { b.RegionBlocks(10) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s did not panic", name)
				}
			}()
			f()
		}()
	}
}

func TestBitmapMarshal(t *testing.T) {
	rng := rand.New(rand.NewPCG(testSeed(t), 1))
	for _, blocks := range []uint64{0, 1, 63, 64, 65, 1000, 4096} {
		b := mustBitmap(t, blocks, BlockSize)
		for range blocks / 3 {
			b.SetBlock(rng.Uint64N(blocks))
		}
		data, err := b.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		var c Bitmap
		if err := c.UnmarshalBinary(data); err != nil {
			t.Fatalf("%d blocks: %v", blocks, err)
		}
		if !c.Equal(b) {
			t.Fatalf("%d blocks: round trip changed the bitmap", blocks)
		}
		// Every damaged byte and every truncation is detected, and leaves
		// the target unchanged.
		for i := range data {
			bad := slices.Clone(data)
			bad[i] ^= 1 << (i % 8)
			if err := c.UnmarshalBinary(bad); !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrVersion) {
				t.Fatalf("%d blocks, byte %d flipped: %v", blocks, i, err)
			}
			if err := c.UnmarshalBinary(data[:i]); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("%d blocks, truncated to %d: %v", blocks, i, err)
			}
		}
		if !c.Equal(b) {
			t.Fatalf("%d blocks: a failed Unmarshal changed the bitmap", blocks)
		}
	}
}

func TestBitmapSaveLoad(t *testing.T) {
	b := mustBitmap(t, 5000, 0)
	b.SetRange(100, 1000)
	for _, tc := range []struct {
		name string
		fsys FS
		path string
	}{
		{"OSFS", nil, filepath.Join(t.TempDir(), "a.bitmap")},
		{"MemFS", NewMemFS(), "/a.bitmap"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := LoadBitmap(tc.fsys, tc.path); !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("LoadBitmap of missing file = %v", err)
			}
			if err := SaveBitmap(tc.fsys, tc.path, b); err != nil {
				t.Fatal(err)
			}
			got, err := LoadBitmap(tc.fsys, tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(b) {
				t.Fatal("loaded bitmap differs")
			}
		})
	}
	fsys := NewMemFS()
	if err := SaveBitmap(fsys, "/x.bitmap", b); err != nil {
		t.Fatal(err)
	}
	data := readMemFile(t, fsys, "/x.bitmap")
	data[30] ^= 1
	writeMemFile(t, fsys, "/x.bitmap", data)
	if _, err := LoadBitmap(fsys, "/x.bitmap"); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("LoadBitmap of damaged file = %v, want ErrCorrupt", err)
	}
}

// TestSaveBitmapCrashPoints crashes SaveBitmap at every mutating operation:
// the file then holds the old bitmap or the new one.
func TestSaveBitmapCrashPoints(t *testing.T) {
	seed := testSeed(t)
	oldB := mustBitmap(t, 2000, 0)
	oldB.SetRange(0, 10)
	newB := mustBitmap(t, 2000, 0)
	newB.SetRange(500, 700)
	for _, mode := range crashModes {
		for k := 0; ; k++ {
			fsys := NewMemFS()
			if err := fsys.MkdirAll("t", "/d", 0o700); err != nil {
				t.Fatal(err)
			}
			if err := fsys.SyncDir("t", "/"); err != nil {
				t.Fatal(err)
			}
			if err := SaveBitmap(fsys, "/d/b", oldB); err != nil {
				t.Fatal(err)
			}
			fsys.FailAfter(k)
			err := SaveBitmap(fsys, "/d/b", newB)
			if err != nil && !errors.Is(err, ErrCrashed) {
				t.Fatal(err)
			}
			mode.crash(fsys, rand.New(rand.NewPCG(seed, uint64(k))))
			got, lerr := LoadBitmap(fsys, "/d/b")
			if lerr != nil {
				t.Fatalf("%s at %d: %v", mode.name, k, lerr)
			}
			switch {
			case got.Equal(newB):
			case got.Equal(oldB) && err != nil:
			default:
				t.Fatalf("%s at %d: loaded bitmap is neither the old nor the new one (save error %v)", mode.name, k, err)
			}
			if err == nil {
				break
			}
		}
	}
}
