package fusefs

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/tricopy/tricopy/blockdev"
)

// crashRun runs a seeded workload on the filesystem over a FileVolume on a
// strict in-memory FS, stopping the FS at its crashAt-th mutating operation
// (never, if crashAt < 0). It returns the FS, the reference tree after each
// operation that was attempted (trees[0] is the empty tree), the index of
// the last tree covered by a successful fsync, and the number of mutating
// operations the workload did.
func crashRun(t *testing.T, seed uint64, ops, crashAt int) (mfs *blockdev.MemFS, trees []map[string]string, synced, mutating int) {
	t.Helper()
	ctx := context.Background()
	mfs = blockdev.NewMemFS()
	opts := blockdev.Options{FS: mfs, CheckpointBytes: 96 << 10, Logger: testLogger(t)}
	vol, err := blockdev.Create("vol", 2048, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := Format(ctx, vol, FormatOptions{}); err != nil {
		t.Fatal(err)
	}
	base := mfs.MutatingOps()
	if crashAt >= 0 {
		mfs.FailAfter(crashAt)
	}
	fs, err := openFS(ctx, LocalDevice(vol), engineOptions{log: testLogger(t)})
	if err != nil {
		if mfs.Crashed() {
			return mfs, []map[string]string{{}}, 0, mfs.MutatingOps() - base
		}
		t.Fatal(err)
	}
	w := &workload{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), maxWrite: 3 * bs}
	ref := osTarget{t.TempDir()}
	tree := map[string]string{}
	trees = append(trees, tree)
	sut := engineTarget{fs}
	for i := 0; i < ops && !mfs.Crashed(); i++ {
		o := w.next(tree)
		if o.pre != nil {
			o.pre(ref)
			o.pre(sut)
			if tree, err = ref.dump(); err != nil {
				t.Fatal(err)
			}
			trees = append(trees, tree)
		}
		o.run(ref)
		sutErr := o.run(sut)
		if tree, err = ref.dump(); err != nil {
			t.Fatal(err)
		}
		trees = append(trees, tree)
		if strings.HasPrefix(o.desc, "fsync") && sutErr == nil && !mfs.Crashed() {
			synced = len(trees) - 1
		}
	}
	return mfs, trees, synced, mfs.MutatingOps() - base
}

// TestCrashFileVolume crashes the filesystem on a real FileVolume (over the
// strict in-memory FS, with small checkpoints so that log rotation happens)
// at sampled mutating operations, with both crash models, and checks that
// the reopened volume passes fsck and shows the tree after some operation at
// or after the last successful fsync.
func TestCrashFileVolume(t *testing.T) {
	seed := workloadSeed(t)
	t.Logf("seed %d (replay: TRICOPY_SEED=%d go test -run TestCrashFileVolume ./fusefs)", seed, seed)
	const ops = 60
	_, _, _, total := crashRun(t, seed, ops, -1)
	points := 40
	if testing.Short() {
		points = 10
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	for p := 0; p < points; p++ {
		crashAt := p * total / points
		if p%2 == 1 {
			crashAt = rng.IntN(total + 1)
		}
		for _, random := range []bool{false, true} {
			name := fmt.Sprintf("crash at op %d of %d, random loss %v", crashAt, total, random)
			mfs, trees, synced, _ := crashRun(t, seed, ops, crashAt)
			if random {
				mfs.CrashRandom(rand.New(rand.NewPCG(seed, uint64(crashAt))))
			} else {
				mfs.Crash()
			}
			ctx := context.Background()
			vol, err := blockdev.Open("vol", blockdev.Options{FS: mfs, Logger: testLogger(t)})
			if err != nil {
				t.Fatalf("seed %d, %s: reopen volume: %v", seed, name, err)
			}
			r, err := Check(ctx, vol)
			if err != nil || !r.Clean {
				t.Fatalf("seed %d, %s: fsck: %v %q", seed, name, err, r.Problems)
			}
			fs, err := openFS(ctx, LocalDevice(vol), engineOptions{log: testLogger(t)})
			if err != nil {
				t.Fatalf("seed %d, %s: open filesystem: %v", seed, name, err)
			}
			got, err := engineTarget{fs}.dump()
			if err != nil {
				t.Fatalf("seed %d, %s: dump: %v", seed, name, err)
			}
			match := -1
			for i := len(trees) - 1; i >= synced; i-- {
				if diffTrees(trees[i], got) == "" {
					match = i
					break
				}
			}
			if match < 0 {
				for i := range trees {
					if diffTrees(trees[i], got) == "" {
						t.Errorf("recovered tree equals state %d, before the last fsync (%d)", i, synced)
					}
				}
				t.Fatalf("seed %d, %s: tree after recovery equals no state at or after the last fsync (op %d):\n%s",
					seed, name, synced, diffTrees(trees[len(trees)-1], got))
			}
			if err := vol.Close(); err != nil {
				t.Fatal(err)
			}
		}
	}
}
