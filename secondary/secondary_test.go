package secondary_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
	"github.com/tricopy/tricopy/secondary"
)

// The tests of this file run the follower loop against a real one-node
// intermediate over TCP, with primaries played by the client's Submit.

type testWriter struct {
	mu sync.Mutex
	t  testing.TB
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func testLog(t testing.TB) *slog.Logger {
	if os.Getenv("TRICOPY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(&testWriter{t: t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func reserveAddr(t testing.TB) string {
	t.Helper()
	reserved.Lock()
	defer reserved.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		// The kernel may hand a port just closed out again: never give
		// one address twice in a process.
		if !reserved.addrs[addr] {
			reserved.addrs[addr] = true
			return addr
		}
	}
}

// reserved are the addresses reserveAddr gave out.
var reserved = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: map[string]bool{}}

// startNode starts a one-node intermediate that trims its journal often.
func startNode(t *testing.T) (*intermediate.Node, string) {
	t.Helper()
	return startNodeWith(t, nil)
}

// startNodeWith is startNode with a change to the node's configuration.
func startNodeWith(t *testing.T, change func(*intermediate.Config)) (*intermediate.Node, string) {
	t.Helper()
	raftAddr, addr := reserveAddr(t), reserveAddr(t)
	cfg := intermediate.Config{
		ID: "i1", Dir: t.TempDir(), Listen: addr, RaftAddr: raftAddr,
		Cluster:          []intermediate.Peer{{ID: "i1", RaftAddr: raftAddr}},
		HeartbeatTimeout: 500 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
		LeaderLeaseTimeout: 250 * time.Millisecond, TrimInterval: 50 * time.Millisecond,
		CoordinatorTick: 20 * time.Millisecond, Logger: testLog(t).With("component", "intermediate"),
	}
	if change != nil {
		change(&cfg)
	}
	n, err := intermediate.Open(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start intermediate: %v", err)
	}
	t.Cleanup(func() { n.Close() })
	waitUntil(t, 10*time.Second, "the node to lead", n.IsLeader)
	return n, addr
}

func waitUntil(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func newClient(t *testing.T, addr string) *client.Client {
	t.Helper()
	cl, err := client.New(client.Config{Addrs: []string{addr}, Backoff: 20 * time.Millisecond, Logger: testLog(t).With("component", "client")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

const testBlocks = 256

// openVolume opens a primary's Submit stream of volume name.
func openVolume(t *testing.T, cl *client.Client, name string) *client.Volume {
	t.Helper()
	return openVolumeN(t, cl, name, testBlocks)
}

func openVolumeN(t *testing.T, cl *client.Client, name string, blocks uint64) *client.Volume {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	v, err := cl.OpenVolume(ctx, client.VolumeOptions{Name: name, Epoch: 1, BlockCount: blocks})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// submitRandom submits n batches of 1 to 3 random blocks and returns the
// last seq.
func submitRandom(t *testing.T, v *client.Volume, rng *rand.Rand, n int) uint64 {
	t.Helper()
	sent := submitLogged(t, v, rng, n)
	return sent[len(sent)-1].seq
}

func openSecondary(t *testing.T, cl *client.Client, dir, volume string) *secondary.Secondary {
	t.Helper()
	return openSecondaryStep(t, cl, dir, volume, 0)
}

func openSecondaryStep(t *testing.T, cl *client.Client, dir, volume string, step int64) *secondary.Secondary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := secondary.Open(ctx, secondary.Config{
		Volume: volume, Dir: dir, Addr: "127.0.0.1:1", Intermediate: cl,
		ReportInterval: 20 * time.Millisecond, RoundStep: step, Logger: testLog(t).With("component", "secondary"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(nil); err != nil {
		t.Fatal(err)
	}
	return s
}

func waitApplied(t *testing.T, s *secondary.Secondary, n uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.WaitApplied(ctx, n); err != nil {
		t.Fatalf("%v; status %+v", err, s.Status())
	}
}

// sameAsIntermediate fails t unless the replica of s equals the
// intermediate volume of its volume, which must be at the replica's point.
func sameAsIntermediate(t *testing.T, n *intermediate.Node, s *secondary.Secondary) {
	t.Helper()
	st := s.Status()
	want, got := make([]byte, wire.BlockSize), make([]byte, wire.BlockSize)
	for i := range s.Replica().BlockCount() {
		if err := n.FSM().ReadVolumeBlock(st.Volume, i, want); err != nil {
			t.Fatal(err)
		}
		if err := s.Replica().ReadBlock(i, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(want, got) {
			t.Fatalf("replica of %s at %d: block %d differs from the intermediate volume", st.Volume, st.AppliedSeq, i)
		}
	}
}

// TestFollow runs two secondaries of two volumes against a real
// intermediate: both reach the same validated point, equal to their
// intermediate volumes; one restarted in the middle of the stream (and once
// more while its volume moves) catches up; the status says PAIR.
func TestFollow(t *testing.T) {
	n, addr := startNode(t)
	cl := newClient(t, addr)
	rng := rand.New(rand.NewPCG(1, 2))
	va, vb := openVolume(t, cl, "a"), openVolume(t, cl, "b")
	dirA, dirB := t.TempDir(), t.TempDir()
	sa, sb := openSecondary(t, cl, dirA, "a"), openSecondary(t, cl, dirB, "b")
	defer func() { sb.Close() }()
	for range 4 {
		submitRandom(t, va, rng, 20)
		last := submitRandom(t, vb, rng, 20)
		waitApplied(t, sa, last)
		waitApplied(t, sb, last)
		// Restart a's secondary; writes go on meanwhile.
		if err := sa.Close(); err != nil {
			t.Fatal(err)
		}
		submitRandom(t, va, rng, 5)
		sa = openSecondary(t, cl, dirA, "a")
	}
	last := submitRandom(t, va, rng, 3)
	waitApplied(t, sa, last)
	waitApplied(t, sb, last)
	// Quiet now: both end at the same point, the group's validated one.
	waitUntil(t, 10*time.Second, "both secondaries at the validated point", func() bool {
		v := n.FSM().Validated()
		return sa.Status().AppliedSeq == v && sb.Status().AppliedSeq == v
	})
	sameAsIntermediate(t, n, sa)
	sameAsIntermediate(t, n, sb)
	for _, s := range []*secondary.Secondary{sa, sb} {
		if st := s.Status(); st.State != secondary.StatePair || !st.Connected || st.DurableSeq < st.AppliedSeq {
			t.Errorf("status %+v", st)
		}
	}
	// The leader learns the applied points from APPLIED messages, a moment
	// after the secondaries.
	var st *wire.StatusResponse
	waitUntil(t, 10*time.Second, "the leader to see both secondaries at the validated point", func() bool {
		var err error
		if st, err = cl.Status(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, sec := range st.GetSecondaries() {
			if sec.GetAppliedSeq() != st.GetValidatedSeq() {
				return false
			}
		}
		return true
	})
	if len(st.GetSecondaries()) != 2 || st.GetHeldBy() != "" {
		t.Errorf("intermediate status: secondaries %v, held by %q", st.GetSecondaries(), st.GetHeldBy())
	}
	for _, sec := range st.GetSecondaries() {
		if sec.GetState() != secondary.StatePair || sec.GetAppliedSeq() != st.GetValidatedSeq() || sec.GetLagBatches() != 0 {
			t.Errorf("secondary in status: %v (validated %d)", sec, st.GetValidatedSeq())
		}
	}
	if err := sa.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestInitialCopy: a new secondary of a volume whose journal was trimmed
// starts with a fuzzy copy of the intermediate volume, taken while the
// primary keeps writing, plus the batches of the copy's interval; it is not
// exposable until a validated round, then follows the journal and ends
// equal to the intermediate volume.
func TestInitialCopy(t *testing.T) {
	n, addr := startNode(t)
	cl := newClient(t, addr)
	v := openVolumeN(t, cl, "a", 16384) // 64 chunks of the copy
	rng := rand.New(rand.NewPCG(3, 4))
	last := submitRandom(t, v, rng, 200)
	// The primary holds everything durably: the journal may be trimmed.
	v.Report(&wire.PrimaryReport{State: "PAIR", DurableSeq: last})
	submitRandom(t, v, rng, 1) // carries the report
	waitUntil(t, 10*time.Second, "the journal to be trimmed", func() bool {
		vi, _ := n.FSM().Volume("a")
		return vi.TrimmedSeq > 0
	})
	// Keep writing while the secondary copies.
	stop := make(chan struct{})
	writer := make(chan uint64)
	go func() {
		wrng := rand.New(rand.NewPCG(5, 6))
		var last uint64
		defer func() { writer <- last }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			last = submitRandom(t, v, wrng, 1)
		}
	}()
	s := openSecondary(t, cl, t.TempDir(), "a")
	defer s.Close()
	close(stop)
	last = <-writer
	last = max(last, submitRandom(t, v, rng, 5))
	waitApplied(t, s, last)
	waitUntil(t, 10*time.Second, "the secondary at the validated point", func() bool {
		return s.Status().AppliedSeq == n.FSM().Validated() && s.Replica().Exposable()
	})
	sameAsIntermediate(t, n, s)
	if st := s.Status(); st.State != secondary.StatePair {
		t.Fatalf("status %+v", st)
	}
}

// TestOpenRefusals: a data directory holding another volume's replica is
// refused, naming both.
func TestOpenRefusals(t *testing.T) {
	_, addr := startNode(t)
	cl := newClient(t, addr)
	openVolume(t, cl, "a")
	dir := t.TempDir()
	r, err := secondary.CreateReplica(filepath.Join(dir, "replica"), "other", testBlocks, secondary.ReplicaOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	_, err = secondary.Open(context.Background(), secondary.Config{Volume: "a", Dir: dir, Intermediate: cl, Logger: testLog(t)})
	if err == nil || !strings.Contains(err.Error(), `"other"`) {
		t.Fatalf("Open over another volume's replica: %v", err)
	}
	if _, err := secondary.Open(context.Background(), secondary.Config{Volume: "a/b", Dir: dir, Intermediate: cl}); err == nil {
		t.Fatal("Open with a bad volume name succeeded")
	}
	// A volume that never registers: Open waits until ctx ends.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = secondary.Open(ctx, secondary.Config{Volume: "never", Dir: t.TempDir(), Intermediate: cl, Logger: testLog(t)})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Open of an unregistered volume: %v, want the deadline", err)
	}
}

// TestLongRoundInSteps: a secondary that was down while its volume moved a
// lot catches up with rounds applied in steps of at most RoundStep bytes
// (the replica's round limit is never hit) and ends equal to the
// intermediate volume.
func TestLongRoundInSteps(t *testing.T) {
	n, addr := startNode(t)
	cl := newClient(t, addr)
	rng := rand.New(rand.NewPCG(9, 9))
	v := openVolume(t, cl, "a")
	dir := t.TempDir()
	s := openSecondaryStep(t, cl, dir, "a", 3*wire.BlockSize)
	waitApplied(t, s, submitRandom(t, v, rng, 3))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	last := submitRandom(t, v, rng, 60)
	s = openSecondaryStep(t, cl, dir, "a", 3*wire.BlockSize)
	defer s.Close()
	waitApplied(t, s, last)
	sameAsIntermediate(t, n, s)
}

// TestRemoveSecondary: a secondary that is down holds the group's validated
// point (status names it); once removed, the point moves on and the other
// secondary applies everything.
func TestRemoveSecondary(t *testing.T) {
	n, addr := startNode(t)
	cl := newClient(t, addr)
	rng := rand.New(rand.NewPCG(7, 7))
	va, vb := openVolume(t, cl, "a"), openVolume(t, cl, "b")
	sa := openSecondary(t, cl, t.TempDir(), "a")
	defer sa.Close()
	sb := openSecondary(t, cl, t.TempDir(), "b")
	waitApplied(t, sa, submitRandom(t, vb, rng, 3))
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	held := n.FSM().Validated()
	last := submitRandom(t, va, rng, 5)
	time.Sleep(300 * time.Millisecond)
	if v := n.FSM().Validated(); v != held {
		t.Fatalf("validated moved from %d to %d while secondary b was down", held, v)
	}
	st, err := cl.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.GetHeldBy() != "b" {
		t.Fatalf("held_by %q, want b", st.GetHeldBy())
	}
	removed, volume, err := cl.RemoveSecondary(context.Background(), "b")
	if err != nil || !removed || volume != "b" {
		t.Fatalf("RemoveSecondary: %v %q %v", removed, volume, err)
	}
	waitApplied(t, sa, last)
	if removed, _, err := cl.RemoveSecondary(context.Background(), "b"); err != nil || removed {
		t.Fatalf("RemoveSecondary again: %v %v, want nothing removed", removed, err)
	}
	if len(n.FSM().Secondaries()) != 1 {
		t.Fatalf("secondaries after the removal: %v", n.FSM().Secondaries())
	}
}

// TestResync: with secondary b down, its primary writes more than the
// journal's budget: b is suspended (no write is refused), the journal is
// trimmed, secondary a keeps following. Back, b resynchronises the marked
// regions from the intermediate volume, keeps its replica at its old point
// until the resync is installed at a validated point, and ends equal to
// the intermediate volume.
func TestResync(t *testing.T) {
	n, addr := startNodeWith(t, func(c *intermediate.Config) {
		c.JournalBudget = 3 << 20
		c.SuspendThreshold = 1 << 20
	})
	cl := newClient(t, addr)
	rng := rand.New(rand.NewPCG(8, 8))
	va, vb := openVolume(t, cl, "a"), openVolume(t, cl, "b")
	// submit writes and reports the primary's durable point, so that the
	// primaries do not hold the journal.
	submit := func(v *client.Volume, k int) uint64 {
		t.Helper()
		last := submitRandom(t, v, rng, k)
		v.Report(&wire.PrimaryReport{State: "PAIR", DurableSeq: last})
		return last
	}
	sa := openSecondary(t, cl, t.TempDir(), "a")
	defer sa.Close()
	dirB := t.TempDir()
	sb := openSecondary(t, cl, dirB, "b")
	submit(va, 2)
	waitApplied(t, sb, submit(vb, 5))
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	var last uint64
	for range 60 {
		submit(vb, 10) // about 100 KiB a round: the threshold is 1 MiB
		last = submit(va, 1)
	}
	waitApplied(t, sa, last)
	info, ok := n.FSM().Secondary("b")
	if !ok {
		t.Fatal("secondary b is not registered")
	}
	st, err := cl.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var sec *wire.SecondaryStatus
	for _, x := range st.GetSecondaries() {
		if x.GetId() == "b" {
			sec = x
		}
	}
	if sec == nil || !sec.GetSuspended() || sec.GetDirtyRegions() == 0 {
		t.Fatalf("secondary b after the journal filled: %v (%+v)", sec, info)
	}
	sb = openSecondary(t, cl, dirB, "b")
	defer func() { sb.Close() }()
	waitApplied(t, sb, last)
	waitUntil(t, 10*time.Second, "b at the validated point", func() bool {
		return sb.Status().AppliedSeq == n.FSM().Validated() && sb.Status().State == secondary.StatePair
	})
	sameAsIntermediate(t, n, sb)
	sameAsIntermediate(t, n, sa)
}
