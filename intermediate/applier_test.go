package intermediate

import (
	"bytes"
	"errors"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// ftGate holds the applier before each job until the test lets it go.
type ftGate struct {
	mu      sync.Mutex
	open    bool
	release chan struct{} // closed to let the held jobs go
	arrived chan uint64   // the number of each job the applier reached
}

// ftHoldApplier makes the applier of f wait at each job until the gate
// opens.
func ftHoldApplier(t testing.TB, f *FSM) *ftGate {
	t.Helper()
	g := &ftGate{release: make(chan struct{}), arrived: make(chan uint64, 1024)}
	f.ap.setHook(func(j *volumeJob) {
		g.arrived <- j.n
		<-g.release
	})
	t.Cleanup(g.openGate)
	return g
}

func (g *ftGate) openGate() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.open {
		g.open = true
		close(g.release)
	}
}

// ftWaitArrived waits until the applier reached job n.
func ftWaitArrived(t testing.TB, g *ftGate, n uint64) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case got := <-g.arrived:
			if got == n {
				return
			}
		case <-deadline:
			t.Fatalf("the applier did not reach job %d", n)
		}
	}
}

// ftNotDone checks that done stays open for a while: the call it stands
// for is blocked.
func ftNotDone(t testing.TB, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
		t.Fatalf("%s returned while the applier was held", what)
	case <-time.After(50 * time.Millisecond):
	}
}

// ftDone waits for done.
func ftDone(t testing.TB, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s did not return once the applier was let go", what)
	}
}

// ftApplierGoroutines counts the goroutines running an applier.
func ftApplierGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return strings.Count(string(buf[:n]), "intermediate.(*applier).run(")
		}
		buf = make([]byte, 2*len(buf))
	}
}

// TestApplierInOrderReadSeesLatest applies entries while the applier lags
// (it sleeps on some jobs): the jobs run in log order, and ReadVolumeBlock
// right after Apply returns always sees the entry's data.
func TestApplierInOrderReadSeesLatest(t *testing.T) {
	h := ftNew(t, nil, "/vols")
	h.register("a", 8, 1)
	h.register("b", 8, 1)
	var mu sync.Mutex
	var order []uint64
	h.f.ap.setHook(func(j *volumeJob) {
		mu.Lock()
		order = append(order, j.n)
		mu.Unlock()
		if j.n%3 == 0 {
			time.Sleep(time.Millisecond)
		}
	})
	p := make([]byte, wire.BlockSize)
	const entries = 60
	va := uint64(0)
	for i := range uint64(entries) {
		// Two batches of a in one entry: the later one's block i%8 wins.
		va += 2
		h.submit(ftBatch("a", 1, va-1, i%8, (i+3)%8), ftBatch("b", 1, i+1, 5), ftBatch("a", 1, va, i%8))
		for _, c := range []struct {
			volume    string
			index, vs uint64
		}{{"a", i % 8, va}, {"a", (i + 3) % 8, va - 1}, {"b", 5, i + 1}} {
			if err := h.f.ReadVolumeBlock(c.volume, c.index, p); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(p, ftBlock(c.volume, c.index, c.vs)) {
				t.Fatalf("entry %d: block %d of %s does not hold volume seq %d right after Apply", i, c.index, c.volume, c.vs)
			}
		}
	}
	ftDrain(t, h.f)
	mu.Lock()
	defer mu.Unlock()
	if len(order) != entries {
		t.Fatalf("the applier ran %d jobs for %d entries", len(order), entries)
	}
	for i, n := range order {
		if n != uint64(i)+1 {
			t.Fatalf("job %d ran at position %d: jobs out of log order %v", n, i, order)
		}
	}
	ftCheckInvariants(t, h.f)
}

// TestSnapshotPersistWaitsForApplier takes a snapshot while the applier is
// held with entries up to the snapshot queued, and more queued after it:
// Persist must wait for the applier (without the wait, the volumes' headers
// would be behind the snapshot and Persist would refuse), and the snapshot,
// restored elsewhere and followed by the rest of the log, must give the
// source's state.
func TestSnapshotPersistWaitsForApplier(t *testing.T) {
	mem := blockdev.NewMemFS()
	src := ftNew(t, mem, "/src")
	ftWorkload(t, src, 6)
	ftDrain(t, src.f)
	first := src.f.jobs + 1
	g := ftHoldApplier(t, src.f)
	va, vb := src.f.Volumes()[0].LastVolumeSeq, src.f.Volumes()[1].LastVolumeSeq
	for i := range uint64(5) {
		va, vb = va+1, vb+1
		src.submit(ftBatch("a", 1, va, i%16, 15), ftBatch("b", 1, vb, (i+1)%8))
	}
	ftWaitArrived(t, g, first)
	snap, err := src.f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	defer snap.Release()
	snapIndex := uint64(len(src.log))
	for i := range uint64(3) {
		va++
		src.submit(ftBatch("a", 1, va, (i*5)%16))
	}

	imaged := make(chan string, 2)
	src.f.imageHook = func(volume string, _ uint64) { imaged <- volume }
	sink := &ftSink{}
	var perr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		perr = snap.Persist(sink)
	}()
	ftNotDone(t, done, "Persist")
	if len(imaged) != 0 {
		t.Fatal("Persist read a volume's image before the applier reached the snapshot")
	}
	g.openGate()
	ftDone(t, done, "Persist")
	if perr != nil {
		t.Fatalf("persist: %v", perr)
	}
	if !sink.closed || sink.cancelled {
		t.Fatalf("persist: sink closed %t, cancelled %t", sink.closed, sink.cancelled)
	}

	dst := ftNew(t, mem, "/dst")
	if err := ftRestore(dst.f, sink.Bytes()); err != nil {
		t.Fatal(err)
	}
	for _, l := range src.log[snapIndex:] {
		dst.f.Apply(l)
	}
	ftSameDump(t, "restored and replayed", ftDumpOf(t, dst.f), ftDumpOf(t, src.f))
	ftCheckInvariants(t, dst.f)
}

// TestFSMApplierErrorIsFatal fails the intent log write of an entry's
// volume write, in the applier: the entry's own result stands (it is
// committed), the state machine stops with the error (OnFatal once), and
// everything after fails. The second case fails the write while Apply
// waits on a full queue: that Apply fails.
func TestFSMApplierErrorIsFatal(t *testing.T) {
	for _, blocked := range []bool{false, true} {
		t.Run(map[bool]string{false: "idle", true: "apply blocked"}[blocked], func(t *testing.T) {
			ffs := blockdev.NewFaultFS(blockdev.NewMemFS())
			h := ftNewWith(t, ffs, "/vols", func(c *FSMConfig) { c.ApplyQueueEntries = 1 })
			h.register("a", 8, 1)
			h.submit(ftBatch("a", 1, 1, 0))
			ftDrain(t, h.f)
			var g *ftGate
			if blocked {
				g = ftHoldApplier(t, h.f)
			}
			ffs.Inject(blockdev.FSFault{Kind: blockdev.OpWrite, Label: blockdev.LabelLog, N: 1})
			if r := h.submit(ftBatch("a", 1, 2, 1))[0]; r != (BatchResult{VolumeSeq: 2, Seq: 2}) {
				t.Fatalf("the entry whose volume write fails later: %+v, want committed at seq 2", r)
			}
			if blocked {
				ftWaitArrived(t, g, h.f.jobs)
				l := ftEncode(t, ftFill(h.f, ftSubmit(ftBatch("a", 1, 3, 2))))
				var res any
				done := make(chan struct{})
				go func() {
					defer close(done)
					res = h.applyLog(l)
				}()
				ftNotDone(t, done, "Apply with a full queue")
				g.openGate()
				ftDone(t, done, "Apply with a full queue")
				if err, ok := res.(error); !ok || !errors.Is(err, wire.ErrFailed) {
					t.Fatalf("Apply blocked when the applier failed: %v, want ErrFailed", res)
				}
			}
			deadline := time.Now().Add(10 * time.Second)
			for h.fatals.Load() == 0 {
				if time.Now().After(deadline) {
					t.Fatal("the failed volume write did not stop the state machine")
				}
				time.Sleep(time.Millisecond)
			}
			if err := h.f.ReadVolumeBlock("a", 1, make([]byte, wire.BlockSize)); !errors.Is(err, blockdev.ErrInjected) {
				t.Fatalf("read of a block the failed write holds: %v, want the applier's error", err)
			}
			ftCheckStopped(t, h, blockdev.ErrInjected)
			if err := h.f.Close(); err != nil {
				t.Fatalf("close after the applier failed: %v", err)
			}
		})
	}
}

// TestFSMApplyBackPressure fills the applier's queue, by entries and by
// bytes, while the applier is held: the next Apply blocks (readers do not)
// until the applier makes room, then everything is applied. A job larger
// than the byte bound is admitted alone.
func TestFSMApplyBackPressure(t *testing.T) {
	const job = 2 * blockdev.BlockSize // one block and the header
	for _, tc := range []struct {
		name   string
		config func(*FSMConfig)
	}{
		{"entries", func(c *FSMConfig) { c.ApplyQueueEntries = 2 }},
		{"bytes", func(c *FSMConfig) { c.ApplyQueueBytes = 2*job + job/2 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := ftNewWith(t, nil, "/vols", tc.config)
			h.register("a", 8, 1)
			// Larger than the byte bound, into an empty queue.
			h.submit(ftBatch("a", 1, 1, 0, 1, 2, 3, 4, 5))
			ftDrain(t, h.f)
			g := ftHoldApplier(t, h.f)
			h.submit(ftBatch("a", 1, 2, 0))
			ftWaitArrived(t, g, h.f.jobs)
			h.submit(ftBatch("a", 1, 3, 1))
			l := ftEncode(t, ftFill(h.f, ftSubmit(ftBatch("a", 1, 4, 2))))
			var res any
			done := make(chan struct{})
			go func() {
				defer close(done)
				res = h.applyLog(l)
			}()
			ftNotDone(t, done, "Apply with a full queue")
			// The state is decided; readers go on.
			if st := h.f.Stats(); st.CommittedSeq != 4 {
				t.Fatalf("stats while Apply is blocked: %+v, want committed seq 4", st)
			}
			if batches, _, err := h.f.Fetch("a", 2, 0); err != nil || len(batches) != 2 {
				t.Fatalf("fetch while Apply is blocked: %d batches, err %v", len(batches), err)
			}
			g.openGate()
			ftDone(t, done, "Apply with a full queue")
			if sr, ok := res.(*SubmitResult); !ok || sr.Batches[0] != (BatchResult{VolumeSeq: 4, Seq: 4}) {
				t.Fatalf("the blocked Apply returned %+v", res)
			}
			p := make([]byte, wire.BlockSize)
			for idx, vs := range map[uint64]uint64{0: 2, 1: 3, 2: 4, 3: 1} {
				if err := h.f.ReadVolumeBlock("a", idx, p); err != nil || !bytes.Equal(p, ftBlock("a", idx, vs)) {
					t.Fatalf("block %d after the queue drained: err %v, want volume seq %d", idx, err, vs)
				}
			}
			ftCheckInvariants(t, h.f)
		})
	}
}

// TestFSMCloseDrainsApplier closes the FSM with entries queued behind a
// held applier: Close waits for them, stops the applier goroutine (none is
// left), and the volumes hold every entry when reopened.
func TestFSMCloseDrainsApplier(t *testing.T) {
	before := ftApplierGoroutines()
	mem := blockdev.NewMemFS()
	h := ftNew(t, mem, "/vols")
	h.register("a", 8, 1)
	g := ftHoldApplier(t, h.f)
	for i := range uint64(6) {
		h.submit(ftBatch("a", 1, i+1, i))
	}
	last := h.f.Volumes()[0].LastSeq
	f := h.f
	var cerr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		cerr = f.Close()
	}()
	ftNotDone(t, done, "Close")
	g.openGate()
	ftDone(t, done, "Close")
	if cerr != nil {
		t.Fatal(cerr)
	}
	select {
	case <-f.ap.done:
	default:
		t.Fatal("Close returned before the applier goroutine")
	}
	deadline := time.Now().Add(10 * time.Second)
	// Other tests' FSMs may end meanwhile: no more than before is the check.
	for ftApplierGoroutines() > before {
		if time.Now().After(deadline) {
			t.Fatalf("%d applier goroutines after Close, %d before the FSM", ftApplierGoroutines(), before)
		}
		time.Sleep(time.Millisecond)
	}
	l := ftEncode(t, ftSubmit(ftBatch("a", 1, 7, 0)))
	l.Index = 99
	if err, ok := f.Apply(l).(error); !ok || !errors.Is(err, wire.ErrFailed) {
		t.Fatalf("Apply after Close: %v, want ErrFailed", err)
	}

	h.open()
	if got := h.f.vols["a"].hdr.applied; got != last {
		t.Fatalf("reopened volume at applied seq %d, want %d: Close did not drain", got, last)
	}
	for i := range uint64(6) {
		p := make([]byte, wire.BlockSize)
		if err := h.f.vols["a"].vol.ReadBlock(i, p); err != nil || !bytes.Equal(p, ftBlock("a", i, i+1)) {
			t.Fatalf("block %d of the reopened volume: err %v, content differs", i, err)
		}
	}
}
