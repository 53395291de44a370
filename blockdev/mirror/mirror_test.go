package mirror_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/blockdev/mirror"
	"github.com/tricopy/tricopy/intermediate"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// The tests run the mirror against a real one-node intermediate over TCP,
// in this process, which they stop and start to make it unavailable.

type testWriter struct {
	mu sync.Mutex
	t  testing.TB
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("TRICOPY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(&testWriter{t: t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
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

// inter is a one-node intermediate that can be stopped and started again.
type inter struct {
	t                    testing.TB
	dir                  string
	raftAddr, clientAddr string
	node                 *intermediate.Node
	log                  *slog.Logger
}

func newInter(t testing.TB) *inter {
	in := &inter{t: t, dir: t.TempDir(), raftAddr: reserveAddr(t), clientAddr: reserveAddr(t), log: testLogger(t)}
	in.start()
	t.Cleanup(in.stop)
	return in
}

func (in *inter) start() {
	in.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		n, err := intermediate.Open(context.Background(), intermediate.Config{
			ID: "i1", Dir: in.dir, Listen: in.clientAddr, RaftAddr: in.raftAddr,
			Cluster:          []intermediate.Peer{{ID: "i1", RaftAddr: in.raftAddr}},
			HeartbeatTimeout: 500 * time.Millisecond, ElectionTimeout: 500 * time.Millisecond,
			LeaderLeaseTimeout: 250 * time.Millisecond, Logger: in.log.With("component", "intermediate"),
			TrimInterval: 100 * time.Millisecond,
		})
		if err == nil {
			in.node = n
			break
		}
		if time.Now().After(deadline) {
			in.t.Fatalf("start intermediate: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitFor(in.t, 10*time.Second, "the intermediate to elect itself", in.node.IsLeader)
}

func (in *inter) stop() {
	if in.node != nil {
		in.node.Close()
		in.node = nil
	}
}

// volume reads the whole intermediate volume of name.
func (in *inter) volume(name string, blocks uint64) []byte {
	in.t.Helper()
	out := make([]byte, blocks*blockdev.BlockSize)
	for i := uint64(0); i < blocks; i++ {
		if err := in.node.FSM().ReadVolumeBlock(name, i, out[i*blockdev.BlockSize:(i+1)*blockdev.BlockSize]); err != nil {
			in.t.Fatal(err)
		}
	}
	return out
}

func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// primary is a mirrored volume on a MemFS, so that it can crash.
type primary struct {
	t      testing.TB
	name   string
	in     *inter
	fsys   *blockdev.MemFS
	blocks uint64
	cfg    func(*mirror.Config)
	vol    *blockdev.FileVolume
	cl     *client.Client
	m      *mirror.Mirror
}

const volDir = "/vol"

func newPrimary(t testing.TB, in *inter, blocks uint64, cfg func(*mirror.Config)) *primary {
	return newPrimaryNamed(t, in, "a", blocks, cfg)
}

// newPrimaryNamed makes a primary of the volume called name.
func newPrimaryNamed(t testing.TB, in *inter, name string, blocks uint64, cfg func(*mirror.Config)) *primary {
	p := &primary{t: t, name: name, in: in, fsys: blockdev.NewMemFS(), blocks: blocks, cfg: cfg}
	v, err := blockdev.Create(volDir, blocks, blockdev.Options{FS: p.fsys, Logger: in.log})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.vol = v
	t.Cleanup(p.close)
	return p
}

// newPaired starts an intermediate and a primary of volume "a" in PAIR.
func newPaired(t testing.TB, blocks uint64, cfg func(*mirror.Config)) (*inter, *primary) {
	t.Helper()
	in := newInter(t)
	p := newPrimary(t, in, blocks, cfg)
	p.mustOpen()
	p.waitState(mirror.StatePair)
	return in, p
}

// open opens the mirror (the volume must be open).
func (p *primary) open(ctx context.Context) error {
	p.t.Helper()
	if p.vol == nil {
		v, err := blockdev.Open(volDir, blockdev.Options{FS: p.fsys, Logger: p.in.log})
		if err != nil {
			p.t.Fatal(err)
		}
		p.vol = v
	}
	cl, err := client.New(client.Config{Addrs: []string{p.in.clientAddr}, Backoff: 20 * time.Millisecond, Logger: p.in.log.With("component", "client")})
	if err != nil {
		p.t.Fatal(err)
	}
	cfg := mirror.Config{
		Name: p.name, Group: client.DefaultGroup, Local: p.vol, FS: p.fsys, Dir: volDir, Client: cl,
		Timeout: time.Second, RetryInterval: 50 * time.Millisecond, CheckpointInterval: 50 * time.Millisecond,
		Logger: p.in.log.With("component", "mirror"),
	}
	if p.cfg != nil {
		p.cfg(&cfg)
	}
	m, err := mirror.Open(ctx, cfg)
	if err != nil {
		cl.Close()
		return err
	}
	p.cl, p.m = cl, m
	return nil
}

func (p *primary) mustOpen() {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := p.open(ctx); err != nil {
		p.t.Fatalf("open mirror: %v", err)
	}
}

// close closes the mirror, the client and the volume cleanly.
func (p *primary) close() {
	if p.m != nil {
		if err := p.m.Close(); err != nil {
			p.t.Errorf("close mirror: %v", err)
		}
		p.m = nil
	}
	if p.cl != nil {
		p.cl.Close()
		p.cl = nil
	}
	if p.vol != nil {
		p.vol.Close()
		p.vol = nil
	}
}

// crash loses everything the primary did not sync and abandons the mirror
// as a killed process would.
func (p *primary) crash() { p.crashWith(p.fsys.Crash) }

// crashRandom is crash where each unsynced change survives or not at random.
func (p *primary) crashRandom(rng *rand.Rand) { p.crashWith(func() { p.fsys.CrashRandom(rng) }) }

func (p *primary) crashWith(crash func()) {
	crash()
	if p.cl != nil {
		p.cl.Close() // the process is gone: its streams end
	}
	if p.m != nil {
		p.m.Close() // fails: the files are gone; stops the goroutines
	}
	p.vol.Close()
	p.m, p.cl, p.vol = nil, nil, nil
}

// local reads the whole local volume.
func (p *primary) local() []byte {
	p.t.Helper()
	out := make([]byte, p.blocks*blockdev.BlockSize)
	if err := p.vol.ReadBlocks(0, out); err != nil {
		p.t.Fatal(err)
	}
	return out
}

func (p *primary) waitState(s mirror.State) {
	p.t.Helper()
	waitFor(p.t, 30*time.Second, "state "+string(s), func() bool { return p.m.Status().State == s })
}

// commit commits a batch writing the blocks with content derived from tag
// and waits for its ack.
func (p *primary) commit(tag int, idx ...uint64) error {
	p.t.Helper()
	ack, err := p.m.Commit(context.Background(), batch(tag, idx...))
	if err != nil {
		return err
	}
	if ack == nil {
		return nil
	}
	return ack(context.Background())
}

func block(tag int, idx uint64) []byte {
	b := make([]byte, blockdev.BlockSize)
	rng := rand.New(rand.NewPCG(uint64(tag), idx))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func batch(tag int, idx ...uint64) *blockdev.Batch {
	b := &blockdev.Batch{}
	for _, i := range idx {
		b.Writes = append(b.Writes, blockdev.Write{Index: i, Data: block(tag, i)})
	}
	return b
}

// model applies batches to an expected image.
type model []byte

func (md model) apply(tag int, idx ...uint64) {
	for _, i := range idx {
		copy(md[i*blockdev.BlockSize:], block(tag, i))
	}
}

func sameImage(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if bytes.Equal(got, want) {
		return
	}
	for i := 0; i < len(got); i += blockdev.BlockSize {
		if !bytes.Equal(got[i:i+blockdev.BlockSize], want[i:i+blockdev.BlockSize]) {
			t.Fatalf("%s: block %d differs", what, i/blockdev.BlockSize)
		}
	}
}

// TestCopyThenPair starts a mirror of a volume holding data: the initial
// copy sends the regions that hold data (not the zero ones), then the pair
// mirrors every commit; the intermediate volume ends equal to the local one.
func TestCopyThenPair(t *testing.T) {
	in := newInter(t)
	const blocks = 1024 // 64 regions of 16 blocks
	p := newPrimary(t, in, blocks, nil)
	md := make(model, blocks*blockdev.BlockSize)
	ctx := context.Background()
	for tag, idx := range [][]uint64{{0, 1, 2}, {100}, {1023}, {500, 501}} {
		if err := p.vol.Apply(ctx, batch(tag, idx...), blockdev.ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		md.apply(tag, idx...)
	}
	p.mustOpen()
	p.waitState(mirror.StatePair)
	st := p.m.Status()
	if st.DirtyRegions != 0 || st.CopiedBytes != 4*64<<10 {
		t.Fatalf("after the copy: %+v, want 4 regions (64 KiB each) copied and none dirty", st)
	}
	sameImage(t, "intermediate after the copy", in.volume("a", blocks), md)

	for tag := 10; tag < 60; tag++ {
		idx := []uint64{uint64(tag * 7 % blocks), uint64(tag * 13 % blocks)}
		if err := p.commit(tag, idx...); err != nil {
			t.Fatalf("commit %d: %v", tag, err)
		}
		md.apply(tag, idx...)
	}
	sameImage(t, "intermediate in PAIR", in.volume("a", blocks), md)
	waitFor(t, 10*time.Second, "the local volume to apply every ack", func() bool { return p.m.Status().PendingBatches == 0 })
	sameImage(t, "local volume in PAIR", p.local(), md)

	// A clean restart neither copies nor replays.
	p.close()
	p.mustOpen()
	if st := p.m.Status(); st.State != mirror.StatePair || st.CopiedBytes != 0 {
		t.Fatalf("after a clean restart: %+v", st)
	}
	sameImage(t, "local volume after a restart", p.local(), md)
}

// TestConcurrentCommitsRead checks reads of batches not yet applied locally
// and many concurrent committers.
func TestConcurrentCommitsRead(t *testing.T) {
	const blocks = 256
	in, p := newPaired(t, blocks, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 40; i++ {
				idx := uint64(w*16 + i%16)
				tag := w*1000 + i
				ack, err := p.m.Commit(context.Background(), batch(tag, idx))
				if err != nil {
					errs <- err
					return
				}
				got := make([]byte, blockdev.BlockSize)
				if err := p.m.ReadBlock(idx, got); err != nil || !bytes.Equal(got, block(tag, idx)) {
					errs <- fmt.Errorf("read of block %d just committed: %v, equal %v", idx, err, bytes.Equal(got, block(tag, idx)))
					return
				}
				if err := ack(context.Background()); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the local volume to apply every ack", func() bool { return p.m.Status().PendingBatches == 0 })
	sameImage(t, "intermediate vs local", in.volume("a", blocks), p.local())
}

// TestCrashReplay crashes the primary (losing what it did not sync) after
// acknowledged commits: the restarted mirror replays what the intermediate
// committed, so every acknowledged write is in the local volume and it
// equals the intermediate volume.
func TestCrashReplay(t *testing.T) {
	const blocks = 256
	in, p := newPaired(t, blocks, func(c *mirror.Config) { c.CheckpointInterval = time.Hour })
	md := make(model, blocks*blockdev.BlockSize)
	for tag := 1; tag <= 30; tag++ {
		idx := []uint64{uint64(tag % blocks), uint64((tag * 31) % blocks)}
		if err := p.commit(tag, idx...); err != nil {
			t.Fatal(err)
		}
		md.apply(tag, idx...)
	}
	p.crash()
	p.mustOpen()
	if st := p.m.Status(); st.State != mirror.StatePair || st.AppliedVolumeSeq != 30 {
		t.Fatalf("after the crash and restart: %+v", st)
	}
	sameImage(t, "local volume after replay", p.local(), md)
	sameImage(t, "intermediate volume", in.volume("a", blocks), md)
	// It goes on mirroring.
	if err := p.commit(99, 7); err != nil {
		t.Fatal(err)
	}
	md.apply(99, 7)
	sameImage(t, "intermediate after a commit", in.volume("a", blocks), md)
}

// TestFenceData stops the intermediate: a write fails with ErrUnavailable
// within the timeout and later writes are refused at once, reads go on;
// once the intermediate is back the pending batch commits, writes are
// accepted again, and no batch was applied locally that the intermediate
// does not have.
func TestFenceData(t *testing.T) {
	const blocks = 256
	in, p := newPaired(t, blocks, nil)
	if err := p.commit(1, 1); err != nil {
		t.Fatal(err)
	}
	in.stop()
	start := time.Now()
	err := p.commit(2, 2)
	if !errors.Is(err, mirror.ErrUnavailable) {
		t.Fatalf("commit with the intermediate down: %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("the failure took %s, timeout 1s", d)
	}
	if _, err := p.m.Commit(context.Background(), batch(3, 3)); !errors.Is(err, mirror.ErrUnavailable) {
		t.Fatalf("commit after a timeout: %v, want ErrUnavailable at once", err)
	}
	got := make([]byte, blockdev.BlockSize)
	if err := p.m.ReadBlock(2, got); err != nil || !bytes.Equal(got, block(2, 2)) {
		t.Fatalf("read while unavailable: %v", err)
	}
	if st := p.m.Status(); st.State != mirror.StatePair || st.Reason == "" {
		t.Fatalf("status while unavailable: %+v", st)
	}
	in.start()
	waitFor(t, 20*time.Second, "writes to be accepted again", func() bool {
		ack, err := p.m.Commit(context.Background(), batch(4, 4))
		return err == nil && ack(context.Background()) == nil
	})
	waitFor(t, 10*time.Second, "the local volume to apply every ack", func() bool { return p.m.Status().PendingBatches == 0 })
	sameImage(t, "intermediate vs local after recovery", in.volume("a", blocks), p.local())
	if !bytes.Equal(p.local()[2*blockdev.BlockSize:3*blockdev.BlockSize], block(2, 2)) {
		t.Fatal("the batch that timed out was not committed once the intermediate came back")
	}
}

// TestFenceNeverResync stops the intermediate with fence level never: the
// mirror suspends, writes go on locally and are marked; after a restart of
// the primary while suspended, and the intermediate's return, the resync
// copies only the marked regions and ends in PAIR with equal volumes.
func TestFenceNeverResync(t *testing.T) {
	const blocks = 4096 // 256 regions
	in, p := newPaired(t, blocks, func(c *mirror.Config) { c.Fence = mirror.FenceNever })
	md := make(model, blocks*blockdev.BlockSize)
	if err := p.commit(1, 1); err != nil {
		t.Fatal(err)
	}
	md.apply(1, 1)
	in.stop()
	if err := p.commit(2, 2); err != nil {
		t.Fatalf("commit with the intermediate down, fence never: %v", err)
	}
	md.apply(2, 2)
	p.waitState(mirror.StateSusp)
	touched := map[uint64]bool{0: true}
	for tag := 3; tag < 40; tag++ {
		idx := uint64(tag * 97 % blocks)
		if err := p.commit(tag, idx); err != nil {
			t.Fatal(err)
		}
		md.apply(tag, idx)
		touched[idx/16] = true
	}
	if err := p.m.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if st := p.m.Status(); st.State != mirror.StateSusp || st.DirtyRegions != uint64(len(touched)) {
		t.Fatalf("suspended: %+v, want %d dirty regions", st, len(touched))
	}
	// A crash while suspended keeps the marks.
	p.crash()
	p.mustOpen()
	if st := p.m.Status(); st.State != mirror.StateSusp || st.DirtyRegions != uint64(len(touched)) {
		t.Fatalf("after a crash while suspended: %+v", st)
	}
	sameImage(t, "local volume after the crash", p.local(), md)

	in.start()
	p.waitState(mirror.StatePair)
	st := p.m.Status()
	if max := uint64(len(touched)) * 64 << 10; st.CopiedBytes == 0 || st.CopiedBytes > max {
		t.Fatalf("resync copied %d bytes, want at most %d (%d regions)", st.CopiedBytes, max, len(touched))
	}
	waitFor(t, 10*time.Second, "the local volume to apply every ack", func() bool { return p.m.Status().PendingBatches == 0 })
	sameImage(t, "intermediate after the resync", in.volume("a", blocks), md)
	sameImage(t, "local after the resync", p.local(), md)
}

// TestFenced bumps the volume's epoch at the intermediate (as promote
// does): the next batch is refused, the mirror is fenced for good (also
// after a restart), and what it had pending is kept locally and marked.
func TestFenced(t *testing.T) {
	const blocks = 256
	in, p := newPaired(t, blocks, nil)
	if err := p.commit(1, 1); err != nil {
		t.Fatal(err)
	}
	data, err := wire.EncodeEntry(&wire.Entry{Op: &wire.Entry_SetEpoch{SetEpoch: &wire.SetEpoch{Volume: "a", Epoch: 2}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := in.node.Raft().Apply(data, 5*time.Second).Error(); err != nil {
		t.Fatal(err)
	}
	if err := p.commit(2, 40); !errors.Is(err, mirror.ErrFenced) {
		t.Fatalf("commit after the epoch moved: %v, want ErrFenced", err)
	}
	if _, err := p.m.Commit(context.Background(), batch(3, 3)); !errors.Is(err, mirror.ErrFenced) {
		t.Fatalf("commit when fenced: %v, want ErrFenced", err)
	}
	st := p.m.Status()
	if st.State != mirror.StateFenced || st.DirtyRegions != 1 {
		t.Fatalf("fenced: %+v, want the refused batch's region marked", st)
	}
	p.close()
	p.mustOpen()
	if st := p.m.Status(); st.State != mirror.StateFenced {
		t.Fatalf("after a restart: %+v", st)
	}
	if _, err := p.m.Commit(context.Background(), batch(4, 4)); !errors.Is(err, mirror.ErrFenced) {
		t.Fatalf("commit after a restart: %v, want ErrFenced", err)
	}
}

// TestRefusals checks what Open refuses.
func TestRefusals(t *testing.T) {
	in := newInter(t)
	p := newPrimary(t, in, 256, nil)
	p.mustOpen()
	p.waitState(mirror.StatePair)
	if err := p.commit(1, 1); err != nil {
		t.Fatal(err)
	}
	p.close()
	// Another data directory for the same volume name.
	q := newPrimary(t, in, 256, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := q.open(ctx); err == nil || !strings.Contains(err.Error(), "has no mirror state") {
		t.Fatalf("a fresh directory for a volume the intermediate holds: %v", err)
	}
	// A corrupt state file.
	f, err := p.fsys.OpenFile("test", filepath.Join(volDir, "mirror.state"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("x"), 40); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := p.open(ctx); err == nil || !strings.Contains(err.Error(), "mirror state") {
		t.Fatalf("a corrupt state file: %v", err)
	}
}

// TestJournalTrimmed checks that the primary's reports let the
// intermediate trim its journal once the local volume holds the batches
// durably, and that a primary restarted after a crash then needs none of
// them.
func TestJournalTrimmed(t *testing.T) {
	const blocks = 256
	in, p := newPaired(t, blocks, nil)
	md := make(model, blocks*blockdev.BlockSize)
	for tag := 1; tag <= 40; tag++ {
		idx := uint64(tag * 5 % blocks)
		if err := p.commit(tag, idx); err != nil {
			t.Fatal(err)
		}
		md.apply(tag, idx)
	}
	waitFor(t, 10*time.Second, "the journal to be trimmed", func() bool {
		st := in.node.FSM().Stats()
		return st.JournalBatches == 0 && st.JournalStart > 40
	})
	p.crash()
	p.mustOpen()
	if st := p.m.Status(); st.State != mirror.StatePair {
		t.Fatalf("after a restart: %+v", st)
	}
	sameImage(t, "local after the restart", p.local(), md)
	sameImage(t, "intermediate", in.volume("a", blocks), md)
	if err := p.commit(99, 1); err != nil {
		t.Fatal(err)
	}
}

// TestStartWithoutIntermediate restarts primaries while the intermediate is
// down: with fence level never after a clean shutdown the mirror starts
// suspended and resynchronises later; with fence level data (or after a
// crash) Open waits for the intermediate and gives up only when its context
// ends, because the local volume may lack committed batches.
func TestStartWithoutIntermediate(t *testing.T) {
	in := newInter(t)
	const blocks = 256
	never := newPrimary(t, in, blocks, func(c *mirror.Config) { c.Fence = mirror.FenceNever })
	never.mustOpen()
	never.waitState(mirror.StatePair)
	if err := never.commit(1, 1); err != nil {
		t.Fatal(err)
	}
	never.close()
	data := newPrimaryNamed(t, in, "b", blocks, nil)
	data.mustOpen()
	data.waitState(mirror.StatePair)
	if err := data.commit(1, 1); err != nil {
		t.Fatal(err)
	}
	data.close()

	in.stop()
	never.mustOpen()
	if st := never.m.Status(); st.State != mirror.StateSusp {
		t.Fatalf("fence never, clean shutdown, intermediate down: %+v, want SUSP", st)
	}
	if err := never.commit(2, 100); err != nil {
		t.Fatalf("commit while suspended: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := data.open(ctx); err == nil {
		t.Fatal("fence data opened without the intermediate")
	}

	in.start()
	never.waitState(mirror.StatePair)
	waitFor(t, 10*time.Second, "nothing pending", func() bool { return never.m.Status().PendingBatches == 0 })
	sameImage(t, "intermediate after the resync", in.volume("a", blocks), never.local())
	data.mustOpen()
	if st := data.m.Status(); st.State != mirror.StatePair {
		t.Fatalf("fence data once the intermediate is back: %+v", st)
	}
}
