package blockdev

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

// TestWriteInPlace: blocks written in place are read back at once and
// survive a crash, and the intent log never replays older data of a block
// over them; a crash inside WriteInPlace leaves each block old or new and
// the volume opens.
func TestWriteInPlace(t *testing.T) {
	ctx := context.Background()
	fill := func(b byte) []byte { return bytes.Repeat([]byte{b}, BlockSize) }
	opts := func(fsys FS) Options { return Options{FS: fsys, CheckpointBytes: 1 << 20} }
	setup := func(fsys *MemFS) *FileVolume {
		v, err := Create("/v", 8, opts(fsys))
		if err != nil {
			t.Fatal(err)
		}
		// Logged and not checkpointed: blocks 0 and 1 are in the intent log.
		if err := v.Apply(ctx, &Batch{Writes: []Write{{Index: 0, Data: fill('a')}, {Index: 1, Data: fill('a')}}}, ApplyOptions{Sync: true}); err != nil {
			t.Fatal(err)
		}
		return v
	}
	in := []Write{{Index: 0, Data: fill('b')}, {Index: 2, Data: fill('x')}, {Index: 2, Data: fill('b')}}
	read := func(v *FileVolume, i uint64) []byte {
		p := make([]byte, BlockSize)
		if err := v.ReadBlock(i, p); err != nil {
			t.Fatal(err)
		}
		return p
	}

	fsys := NewMemFS()
	v := setup(fsys)
	base := fsys.MutatingOps()
	if err := v.WriteInPlace(ctx, in); err != nil {
		t.Fatal(err)
	}
	total := fsys.MutatingOps() - base
	for i, want := range map[uint64]byte{0: 'b', 1: 'a', 2: 'b', 3: 0} {
		if !bytes.Equal(read(v, i), fill(want)) {
			t.Fatalf("block %d after WriteInPlace: want %q", i, want)
		}
	}
	v.Close()
	fsys.Crash()
	v, err := Open("/v", opts(fsys))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range map[uint64]byte{0: 'b', 1: 'a', 2: 'b'} {
		if !bytes.Equal(read(v, i), fill(want)) {
			t.Fatalf("block %d after a crash: want %q (the log must not replay older data over it)", i, want)
		}
	}
	// Later Applies go through the log as usual, over the in-place data.
	if err := v.Apply(ctx, &Batch{Writes: []Write{{Index: 2, Data: fill('c')}}}, ApplyOptions{Sync: true}); err != nil {
		t.Fatal(err)
	}
	v.Close()
	fsys.Crash()
	if v, err = Open("/v", opts(fsys)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(read(v, 2), fill('c')) {
		t.Fatal("a logged write after the in-place one is lost")
	}
	v.Close()

	// A crash at each mutating operation of WriteInPlace.
	for k := 0; k < total; k++ {
		fsys := NewMemFS()
		v := setup(fsys)
		fsys.FailAfter(k)
		if err := v.WriteInPlace(ctx, in); !errors.Is(err, ErrCrashed) {
			t.Fatalf("crash at %d of %d: %v, want ErrCrashed", k, total, err)
		}
		if err := v.WriteInPlace(ctx, in); !errors.Is(err, ErrFailed) && !errors.Is(err, ErrCrashed) {
			t.Fatalf("after a failed WriteInPlace: %v, want the volume failed", err)
		}
		v.Close()
		fsys.Crash()
		v, err := Open("/v", opts(fsys))
		if err != nil {
			t.Fatalf("crash at %d: reopen: %v", k, err)
		}
		for i, olds := range map[uint64]string{0: "ab", 1: "a", 2: "\x00b"} {
			got := read(v, i)
			ok := false
			for _, c := range []byte(olds) {
				ok = ok || bytes.Equal(got, fill(c))
			}
			if !ok {
				t.Fatalf("crash at %d: block %d is neither of %q", k, i, olds)
			}
		}
		v.Close()
	}
	if err := v.WriteInPlace(ctx, in); !errors.Is(err, ErrClosed) {
		t.Fatalf("WriteInPlace on a closed volume: %v", err)
	}
	if err := setup(NewMemFS()).WriteInPlace(ctx, []Write{{Index: 8, Data: fill('z')}}); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("a block outside the volume: %v", err)
	}
}
