package secondary_test

import (
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/secondary"
)

// fullFS is the OS filesystem, except that while full is set every write
// to a stage segment fails with ENOSPC, as on a full disk.
type fullFS struct {
	blockdev.OSFS
	full *atomic.Bool
}

func (f fullFS) OpenFile(label, name string, flag int, perm fs.FileMode) (blockdev.File, error) {
	file, err := f.OSFS.OpenFile(label, name, flag, perm)
	if err != nil || label != secondary.LabelStageSegment {
		return file, err
	}
	return fullFile{File: file, full: f.full}, nil
}

type fullFile struct {
	blockdev.File
	full *atomic.Bool
}

func (f fullFile) WriteAt(p []byte, off int64) (int, error) {
	if f.full.Load() {
		return 0, fmt.Errorf("write: %w", syscall.ENOSPC)
	}
	return f.File.WriteAt(p, off)
}

// TestStageFullStalls: when the staging area's disk is full the secondary
// is not failed: it reports STALLED with the reason, holds the group's
// validated point, keeps its replica where it was, and resumes by itself
// once there is space, ending equal to the intermediate.
func TestStageFullStalls(t *testing.T) {
	n, addr := startNode(t)
	cl := newClient(t, addr)
	v := openVolume(t, cl, "a")
	rng := rand.New(rand.NewPCG(21, 22))
	full := new(atomic.Bool)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := secondary.Open(ctx, secondary.Config{
		Volume: "a", Dir: t.TempDir(), Addr: "127.0.0.1:1", Intermediate: cl, FS: fullFS{full: full},
		ReportInterval: 20 * time.Millisecond, Logger: testLog(t).With("component", "secondary"),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Start(nil); err != nil {
		t.Fatal(err)
	}
	last := submitRandom(t, v, rng, 5)
	waitApplied(t, s, last)
	applied := s.Status().AppliedSeq

	full.Store(true)
	last = submitRandom(t, v, rng, 8)
	waitUntil(t, 10*time.Second, "the secondary to stall", func() bool { return s.Status().State == secondary.StateStalled })
	st := s.Status()
	if !strings.Contains(st.Reason, "full") || st.AppliedSeq != applied {
		t.Fatalf("stalled: %+v, want a reason saying the staging area is full and the replica at %d", st, applied)
	}
	if val := n.FSM().Validated(); val > applied {
		t.Fatalf("the group validated %d while the stalled secondary staged up to %d", val, applied)
	}
	time.Sleep(1200 * time.Millisecond) // a few retries, still full
	if st := s.Status(); st.State != secondary.StateStalled {
		t.Fatalf("after retries on a full disk: %+v, want STALLED, not failed", st)
	}

	full.Store(false)
	waitApplied(t, s, last)
	waitUntil(t, 10*time.Second, "PAIR again", func() bool { return s.Status().State == secondary.StatePair })
	sameAsIntermediate(t, n, s)
}
