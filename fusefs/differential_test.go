package fusefs

import (
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
)

// Workload knobs: TRICOPY_SEED replays one seed; TRICOPY_LONG=1 runs the
// randomised tests for TRICOPY_DURATION (default 5m) instead of a few
// hundred operations.
func workloadSeed(t testing.TB) uint64 {
	if s := os.Getenv("TRICOPY_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TRICOPY_SEED=%q: %v", s, err)
		}
		return seed
	}
	return uint64(time.Now().UnixNano())
}

func longMode() (bool, time.Duration) {
	if os.Getenv("TRICOPY_LONG") == "" {
		return false, 0
	}
	d, err := time.ParseDuration(os.Getenv("TRICOPY_DURATION"))
	if err != nil {
		d = 5 * time.Minute
	}
	return true, d
}

// runDifferential applies a seeded random workload to sut and to a plain
// directory, comparing errors and the whole tree after every operation.
// onBoundary is called after each operation with the reference tree.
func runDifferential(t *testing.T, name string, sut target, ops int, onOp func(i int, tree map[string]string)) {
	seed := workloadSeed(t)
	t.Logf("seed %d (replay: TRICOPY_SEED=%d go test -run '%s' ./fusefs)", seed, seed, name)
	w := &workload{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), maxWrite: 3 * bs}
	ref := osTarget{t.TempDir()}
	tree := map[string]string{}
	long, dur := longMode()
	deadline := time.Now().Add(dur)
	i := 0
	defer func() { t.Logf("seed %d: %d operations", seed, i) }()
	for ; long && time.Now().Before(deadline) || !long && i < ops; i++ {
		o := w.next(tree)
		if o.pre != nil {
			refErr, sutErr := o.pre(ref), o.pre(sut)
			if errnoOf(refErr) != errnoOf(sutErr) {
				t.Fatalf("seed %d op %d %s (first step): reference says %v, filesystem says %v", seed, i, o.desc, refErr, sutErr)
			}
		}
		refErr := o.run(ref)
		sutErr := o.run(sut)
		if errnoOf(refErr) != errnoOf(sutErr) {
			t.Fatalf("seed %d op %d %s: reference says %v, filesystem says %v", seed, i, o.desc, refErr, sutErr)
		}
		var err error
		if tree, err = ref.dump(); err != nil {
			t.Fatalf("dump reference: %v", err)
		}
		got, err := sut.dump()
		if err != nil {
			t.Fatalf("seed %d op %d %s: dump filesystem: %v", seed, i, o.desc, err)
		}
		if d := diffTrees(tree, got); d != "" {
			t.Fatalf("seed %d op %d %s: trees differ:\n%s", seed, i, o.desc, d)
		}
		if onOp != nil {
			onOp(i, tree)
		}
	}
}

// TestDifferentialEngine runs the workload against the engine directly.
func TestDifferentialEngine(t *testing.T) {
	fs, v := newEngine(t, 64<<10)
	runDifferential(t, "TestDifferentialEngine", engineTarget{fs}, 400, nil)
	checkClean(t, v)
}

// TestDifferentialFUSE runs the workload through a real mount, then
// remounts and compares again.
func TestDifferentialFUSE(t *testing.T) {
	v := newMemVolume(t, 64<<10)
	requireFUSE(t)
	mnt := t.TempDir()
	srv, err := Mount(context.Background(), LocalDevice(v), MountOptions{Mountpoint: mnt, Name: "diff", Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	var last map[string]string
	runDifferential(t, "TestDifferentialFUSE", osTarget{mnt}, 250, func(i int, tree map[string]string) { last = tree })
	if err := srv.Unmount(); err != nil {
		t.Fatal(err)
	}
	checkClean(t, v)
	mnt2 := mountVolume(t, v)
	got, err := osTarget{mnt2}.dump()
	if err != nil {
		t.Fatal(err)
	}
	if d := diffTrees(last, got); d != "" {
		t.Fatalf("after remount:\n%s", d)
	}
}

// recorder is a Device that keeps a copy of every batch committed.
type recorder struct {
	Device
	batches []*blockdev.Batch
}

func (r *recorder) Commit(ctx context.Context, b *blockdev.Batch) (Ack, error) {
	c := &blockdev.Batch{Writes: make([]blockdev.Write, len(b.Writes))}
	for i, w := range b.Writes {
		c.Writes[i] = blockdev.Write{Index: w.Index, Data: append([]byte(nil), w.Data...)}
	}
	r.batches = append(r.batches, c)
	return r.Device.Commit(ctx, b)
}

// snapshot copies every non-zero block of v into a batch.
func snapshot(t testing.TB, v blockdev.Reader) *blockdev.Batch {
	b := &blockdev.Batch{}
	p := make([]byte, bs)
	for i := uint64(0); i < v.BlockCount(); i++ {
		if err := v.ReadBlock(i, p); err != nil {
			t.Fatal(err)
		}
		for _, c := range p {
			if c != 0 {
				b.Writes = append(b.Writes, blockdev.Write{Index: i, Data: append([]byte(nil), p...)})
				break
			}
		}
	}
	return b
}

// TestCrashPrefixes records the batch stream of a random workload, then
// checks every prefix of it: fsck is clean, the filesystem opens, and at
// operation boundaries the tree equals the reference after that many
// operations. Every 40th prefix is also mounted with FUSE and compared.
func TestCrashPrefixes(t *testing.T) {
	const blocks = 32 << 10
	v := newMemVolume(t, blocks)
	base := snapshot(t, v)
	rec := &recorder{Device: LocalDevice(v)}
	fs, err := openFS(context.Background(), rec, engineOptions{log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	treeAt := map[int]map[string]string{0: {}}
	runDifferential(t, "TestCrashPrefixes", engineTarget{fs}, 300, func(i int, tree map[string]string) {
		treeAt[len(rec.batches)] = tree
	})
	t.Logf("%d batches", len(rec.batches))

	replay := blockdev.NewMem(blocks)
	ctx := context.Background()
	if err := replay.Apply(ctx, base, blockdev.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	fuseOK := os.Geteuid() == 0
	for k := 0; k <= len(rec.batches); k++ {
		if k > 0 {
			if err := replay.Apply(ctx, rec.batches[k-1], blockdev.ApplyOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		r, err := Check(ctx, replay)
		if err != nil {
			t.Fatalf("prefix %d: fsck: %v", k, err)
		}
		if !r.Clean {
			t.Fatalf("prefix %d of %d batches: fsck: %q", k, len(rec.batches), r.Problems)
		}
		f2, err := openFS(ctx, LocalDevice(replay), engineOptions{readOnly: true, log: testLogger(t)})
		if err != nil {
			t.Fatalf("prefix %d: open: %v", k, err)
		}
		want, boundary := treeAt[k]
		if !boundary {
			if _, err := (engineTarget{f2}).dump(); err != nil {
				t.Fatalf("prefix %d (inside an operation): %v", k, err)
			}
			continue
		}
		got, err := engineTarget{f2}.dump()
		if err != nil {
			t.Fatalf("prefix %d: dump: %v", k, err)
		}
		if d := diffTrees(want, got); d != "" {
			t.Fatalf("prefix %d: tree differs from the reference:\n%s", k, d)
		}
		if fuseOK && (k%40 == 0 || k == len(rec.batches)) {
			mnt := t.TempDir()
			srv, err := Mount(ctx, LocalDevice(replay), MountOptions{Mountpoint: mnt, Name: "prefix", ReadOnly: true, Logger: testLogger(t)})
			if err != nil {
				t.Fatalf("prefix %d: mount: %v", k, err)
			}
			got, err := osTarget{mnt}.dump()
			if uerr := srv.Unmount(); uerr != nil {
				t.Fatal(uerr)
			}
			if err != nil {
				t.Fatalf("prefix %d: dump mount: %v", k, err)
			}
			if d := diffTrees(want, got); d != "" {
				t.Fatalf("prefix %d: mounted tree differs:\n%s", k, d)
			}
		}
	}
}
