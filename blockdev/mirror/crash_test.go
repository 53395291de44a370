package mirror_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/blockdev/mirror"
)

// TestCrashPoints enumerates crash points of a primary mirroring a
// workload: the n-th mutating operation on its files (the local volume's
// intent log and data file, the state file, the bitmap) and every one after
// it fail, as if the machine died there, and the unsynced writes are lost
// (at random, per page, with CrashRandom) before the restart. The restarted
// mirror must reconcile with the intermediate: every acknowledged commit
// present, an unacknowledged one present whole or absent, and the local
// volume equal to the intermediate volume.
func TestCrashPoints(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TRICOPY_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (replay with TRICOPY_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	in := newInter(t)
	const blocks, commits = 64, 24
	// Count the workload's operations once, without a crash point.
	total := func() int {
		p := newPrimaryNamed(t, in, "count", blocks, nil)
		p.mustOpen()
		p.waitState(mirror.StatePair)
		before := p.fsys.MutatingOps()
		for i := 0; i < commits; i++ {
			if err := p.commit(i+1, uint64(i)); err != nil {
				t.Fatal(err)
			}
			if i%6 == 5 {
				time.Sleep(60 * time.Millisecond) // let the checkpointer run
			}
		}
		n := p.fsys.MutatingOps() - before
		p.close()
		return n
	}()
	t.Logf("the workload makes %d mutating operations", total)
	points := 30
	if os.Getenv("TRICOPY_LONG") != "" {
		points = total
	}
	for k := 0; k < points; k++ {
		n := k * total / points
		t.Run(fmt.Sprintf("op%d", n), func(t *testing.T) {
			p := newPrimaryNamed(t, in, fmt.Sprintf("v%d", n), blocks, nil)
			p.mustOpen()
			p.waitState(mirror.StatePair)
			p.fsys.FailAfter(n)
			acked := map[int]bool{}
			for i := 0; i < commits; i++ {
				if err := p.commit(i+1, uint64(i)); err == nil {
					acked[i] = true
				}
				if i%6 == 5 {
					time.Sleep(60 * time.Millisecond)
				}
			}
			p.crashRandom(rng)
			p.mustOpen()
			p.waitState(mirror.StatePair)
			local := p.local()
			for i := 0; i < commits; i++ {
				got := local[i*blockdev.BlockSize : (i+1)*blockdev.BlockSize]
				switch {
				case bytes.Equal(got, block(i+1, uint64(i))):
				case acked[i]:
					t.Fatalf("acknowledged commit %d lost", i)
				case !bytes.Equal(got, make([]byte, blockdev.BlockSize)):
					t.Fatalf("block %d holds neither its commit nor zeros", i)
				}
			}
			waitFor(t, 10*time.Second, "nothing pending", func() bool { return p.m.Status().PendingBatches == 0 })
			sameImage(t, "intermediate vs local", in.volume(p.name, blocks), p.local())
			p.close()
		})
	}
}
