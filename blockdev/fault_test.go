package blockdev

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
)

// TestFileVolumeFaultEveryOp fails each FS operation of a workload in turn.
// The failing Apply, Sync or Checkpoint must return an error wrapping both
// the cause and ErrFailed; every later Apply and Sync must fail with
// ErrFailed without touching the FS; reads keep serving what was visible;
// and reopening, after a clean restart or after a crash, recovers a prefix
// of the batches including every synced one (after a clean restart, every
// applied one).
func TestFileVolumeFaultEveryOp(t *testing.T) {
	for _, deferred := range []bool{false, true} {
		t.Run(fmt.Sprintf("deferred=%v", deferred), func(t *testing.T) { faultEveryOp(t, deferred) })
	}
}

// faultEveryOp is TestFileVolumeFaultEveryOp, with the checkpoints of
// frozen log generations deferred to the workload's frozen steps if
// deferred (see crashPoints).
func faultEveryOp(t *testing.T, deferred bool) {
	seed := testSeed(t)
	w := newWorkload(seed, 30, 16)
	ctx := context.Background()

	mem := NewMemFS()
	ffs := NewFaultFS(mem)
	v, err := Create(crashDir, w.blocks, crashOptions(mem))
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	v, err = Open(crashDir, Options{FS: ffs, Logger: quietLogger, CheckpointBytes: crashOptions(mem).CheckpointBytes})
	if err != nil {
		t.Fatal(err)
	}
	v.deferCheckpoints = deferred
	base := ffs.Total()
	if o := w.run(v); o.err != nil {
		t.Fatal(o.err)
	}
	total := ffs.Total() - base
	v.Close()

	for i := 1; i <= total; i++ {
		for _, crash := range []bool{false, true} {
			name := fmt.Sprintf("op %d crash %v", i, crash)
			mem := NewMemFS()
			ffs := NewFaultFS(mem)
			opts := Options{FS: ffs, Logger: quietLogger, CheckpointBytes: crashOptions(mem).CheckpointBytes}
			v, err := Create(crashDir, w.blocks, opts)
			if err != nil {
				t.Fatal(err)
			}
			v.Close()
			if v, err = Open(crashDir, opts); err != nil {
				t.Fatal(err)
			}
			v.deferCheckpoints = deferred
			ffs.Inject(FSFault{N: i})
			o := w.run(v)
			injected := ffs.Injected()
			if len(injected) != 1 {
				t.Fatalf("%s: injected %v", name, injected)
			}
			if o.err == nil {
				// Only a failure to close a replaced log is harmless.
				if injected[0].Kind != OpClose {
					t.Fatalf("%s: workload succeeded despite failed %s", name, injected[0])
				}
			} else {
				if !errors.Is(o.err, ErrInjected) || !errors.Is(o.err, ErrFailed) {
					t.Fatalf("%s: workload error %v, want ErrInjected and ErrFailed", name, o.err)
				}
				before := ffs.Total()
				err := v.Apply(ctx, &Batch{Writes: []Write{{Index: 0, Data: stampBlock(7, 0)}}}, ApplyOptions{})
				if !errors.Is(err, ErrFailed) {
					t.Fatalf("%s: Apply after failure = %v, want ErrFailed", name, err)
				}
				if err := v.Sync(ctx); !errors.Is(err, ErrFailed) {
					t.Fatalf("%s: Sync after failure = %v, want ErrFailed", name, err)
				}
				if err := v.Checkpoint(ctx); !errors.Is(err, ErrFailed) {
					t.Fatalf("%s: Checkpoint after failure = %v, want ErrFailed", name, err)
				}
				if n := ffs.Total() - before; n != 0 {
					t.Fatalf("%s: failed volume made %d FS operations", name, n)
				}
				// Reads serve what Apply made visible: every applied batch,
				// and maybe the failed one.
				w.checkPrefix(t, v, o.applied, o.attempted)
			}
			v.Close()
			lo := o.applied
			if crash {
				mem.Crash()
				lo = o.synced
			}
			v, err = Open(crashDir, Options{FS: mem, Logger: quietLogger})
			if err != nil {
				t.Fatalf("%s: reopen: %v", name, err)
			}
			func() {
				defer func() {
					if t.Failed() {
						t.Logf("%s: failed %s, outcome %+v", name, injected[0], o)
					}
				}()
				w.checkPrefix(t, v, lo, o.attempted)
			}()
			v.Close()
		}
	}
}

// TestFileVolumeSyncFaultOSFS fails the second fsync of the intent log of a
// volume on the real file system.
func TestFileVolumeSyncFaultOSFS(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	ffs := NewFaultFS(OSFS{})
	v, err := Create(dir, 8, Options{FS: ffs, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ffs.Inject(FSFault{Kind: OpSync, Label: LabelLog, N: 2})
	m := newModel(8)
	for i := range uint64(3) {
		b := &Batch{Writes: []Write{{Index: i, Data: stampBlock(i+1, i)}}}
		err := v.Apply(ctx, b, ApplyOptions{Sync: true})
		switch {
		case i == 0 && err != nil:
			t.Fatal(err)
		case i == 1 && (!errors.Is(err, ErrInjected) || !errors.Is(err, ErrFailed)):
			t.Fatalf("Apply with failed sync = %v, want ErrInjected and ErrFailed", err)
		case i == 2 && !errors.Is(err, ErrFailed):
			t.Fatalf("Apply after failure = %v, want ErrFailed", err)
		}
		if i < 2 {
			m.apply(b)
		}
	}
	m.check(t, v)
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	// The record whose fsync failed is still in the file: a clean reopen
	// recovers it.
	v, err = Open(dir, Options{Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	m.check(t, v)
}

func TestFaulty(t *testing.T) {
	ctx := context.Background()
	apply := func(f *Faulty, stamp uint64) error {
		return f.Apply(ctx, &Batch{Writes: []Write{{Index: 0, Data: stampBlock(stamp, 0)}}}, ApplyOptions{})
	}
	read := func(f *Faulty) (uint64, error) {
		p := make([]byte, BlockSize)
		err := f.ReadBlock(0, p)
		return uint64(p[0]), err
	}

	t.Run("Apply", func(t *testing.T) {
		f := NewFaulty(NewMem(4))
		f.Inject(Fault{Op: FaultApply, N: 2})
		for stamp, wantErr := range []bool{false, true, false} {
			err := apply(f, uint64(stamp+1))
			if wantErr != errors.Is(err, ErrInjected) || (!wantErr && err != nil) {
				t.Fatalf("apply %d = %v", stamp+1, err)
			}
		}
		// The failed batch never reached the volume; the last one did.
		if got, _ := read(f); got != 3 {
			t.Fatalf("block 0 has stamp %d, want 3", got)
		}
		if f.Count(FaultApply) != 3 || f.Count(FaultRead) != 1 {
			t.Fatalf("counts apply %d read %d", f.Count(FaultApply), f.Count(FaultRead))
		}
	})

	t.Run("ApplyAfter", func(t *testing.T) {
		f := NewFaulty(NewMem(4))
		f.Inject(Fault{Op: FaultApply, N: 1, After: true})
		if err := apply(f, 5); !errors.Is(err, ErrInjected) {
			t.Fatalf("apply = %v", err)
		}
		if got, _ := read(f); got != 5 {
			t.Fatalf("block 0 has stamp %d, want 5: the batch should have been applied", got)
		}
	})

	t.Run("Persist", func(t *testing.T) {
		mem := NewMem(4)
		f := NewFaulty(mem)
		f.Inject(Fault{Op: FaultSync, N: 2, Persist: true})
		for i := 1; i <= 4; i++ {
			if err := apply(f, uint64(i)); err != nil {
				t.Fatal(err)
			}
			err := f.Sync(ctx)
			if (i >= 2) != errors.Is(err, ErrInjected) {
				t.Fatalf("sync %d = %v", i, err)
			}
		}
		// Only the first sync reached the volume.
		mem.Crash()
		if got, _ := read(f); got != 1 {
			t.Fatalf("after crash block 0 has stamp %d, want 1", got)
		}
	})

	t.Run("Read", func(t *testing.T) {
		f := NewFaulty(NewMem(4))
		f.Inject(Fault{Op: FaultRead, N: 1})
		if _, err := read(f); !errors.Is(err, ErrInjected) {
			t.Fatalf("read = %v", err)
		}
		if _, err := read(f); err != nil {
			t.Fatalf("second read = %v", err)
		}
	})
}

func TestFaultFSMatching(t *testing.T) {
	mem := NewMemFS()
	ffs := NewFaultFS(mem)
	ffs.Inject(FSFault{Kind: OpSync, Label: "b", N: 2})
	open := func(label string) File {
		f, err := ffs.OpenFile(label, "/"+label, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	a, b := open("a"), open("b")
	for i := 1; i <= 3; i++ {
		if err := a.Sync(); err != nil {
			t.Fatalf("sync %d of a: %v", i, err)
		}
		err := b.Sync()
		if (i == 2) != errors.Is(err, ErrInjected) {
			t.Fatalf("sync %d of b = %v", i, err)
		}
	}
	if got := ffs.Count(OpSync, "b"); got != 3 {
		t.Fatalf("Count(sync, b) = %d, want 3", got)
	}
	if inj := ffs.Injected(); len(inj) != 1 || inj[0] != (Op{OpSync, "b", "/b"}) {
		t.Fatalf("Injected() = %v", inj)
	}
	// Path matching, and Clear.
	ffs.Inject(FSFault{Path: "/a", N: 1, Persist: true})
	if _, err := a.WriteAt([]byte("x"), 0); !errors.Is(err, ErrInjected) {
		t.Fatalf("write to a = %v", err)
	}
	if _, err := b.WriteAt([]byte("x"), 0); err != nil {
		t.Fatalf("write to b = %v", err)
	}
	ffs.Clear()
	if _, err := a.WriteAt([]byte("x"), 0); err != nil {
		t.Fatalf("write to a after Clear = %v", err)
	}
}

func TestVolumeDirectory(t *testing.T) {
	for _, tc := range []struct {
		name string
		fsys FS
		dir  func(t *testing.T) string
	}{
		{"OSFS", nil, func(t *testing.T) string { return t.TempDir() + "/a/b" }},
		{"MemFS", NewMemFS(), func(t *testing.T) string { return "/a/b" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.dir(t)
			opts := Options{FS: tc.fsys, Logger: testLogger(t)}
			if ok, err := Exists(dir, tc.fsys); ok || err != nil {
				t.Fatalf("Exists before Create = %v, %v", ok, err)
			}
			if _, err := Open(dir, opts); err == nil {
				t.Fatal("Open of a missing volume succeeded")
			}
			v, err := Create(dir, 10, opts)
			if err != nil {
				t.Fatal(err)
			}
			if ok, err := Exists(dir, tc.fsys); !ok || err != nil {
				t.Fatalf("Exists after Create = %v, %v", ok, err)
			}
			if _, err := Open(dir, opts); !errors.Is(err, ErrInUse) {
				t.Fatalf("second Open = %v, want ErrInUse", err)
			}
			if err := v.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := Create(dir, 10, opts); !errors.Is(err, ErrExists) {
				t.Fatalf("Create over a volume = %v, want ErrExists", err)
			}
			v, err = Open(dir, opts)
			if err != nil {
				t.Fatal(err)
			}
			if v.BlockCount() != 10 || len(v.UUID()) != 36 {
				t.Fatalf("BlockCount() = %d, UUID() = %q", v.BlockCount(), v.UUID())
			}
			v.Close()
		})
	}
	if _, err := Create(t.TempDir(), 0, Options{}); err == nil {
		t.Error("Create of 0 blocks succeeded")
	}
	if _, err := Create(t.TempDir(), 1, Options{CheckpointBytes: -1}); err == nil {
		t.Error("Create with negative CheckpointBytes succeeded")
	}
}
