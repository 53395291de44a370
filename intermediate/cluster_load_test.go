package intermediate_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/tricopy/tricopy/intermediate"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// ackRecord is one acknowledged Submit as a writer saw it.
type ackRecord struct {
	volume    string
	volumeSeq uint64
	seq       uint64
	submitted time.Time // just before Submit was called
	acked     time.Time // just after it returned
	data      []byte
	index     uint64
}

// blockData makes the 4 KiB payload of one write: a header naming the
// writer and its counter, then a pattern derived from them.
func blockData(volume string, writer, counter int) []byte {
	p := make([]byte, wire.BlockSize)
	copy(p, fmt.Sprintf("%s/w%d/c%d/", volume, writer, counter))
	for i := 64; i < len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], uint64(writer)<<40|uint64(counter)<<8|uint64(i))
	}
	return p
}

// runWriters starts n writers spread over vols until stop is closed; each
// records its acknowledged batches. Errors are reported with t.Errorf.
func runWriters(t *testing.T, vols []*client.Volume, names []string, blocks uint64, n int, stop <-chan struct{}) (wait func() []ackRecord) {
	var mu sync.Mutex
	var recs []ackRecord
	var wg sync.WaitGroup
	for w := 0; w < n; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			v, name := vols[w%len(vols)], names[w%len(vols)]
			for counter := 0; ; counter++ {
				select {
				case <-stop:
					return
				default:
				}
				idx := uint64(w*131+counter*7) % blocks
				data := blockData(name, w, counter)
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				start := time.Now()
				ack, err := v.Submit(ctx, []*wire.Block{{Index: idx, Data: data}})
				end := time.Now()
				cancel()
				if err != nil {
					t.Errorf("writer %d: submit to %s: %v", w, name, err)
					return
				}
				mu.Lock()
				recs = append(recs, ackRecord{volume: name, volumeSeq: ack.VolumeSeq, seq: ack.Seq, submitted: start, acked: end, data: data, index: idx})
				mu.Unlock()
			}
		}(w)
	}
	return func() []ackRecord {
		wg.Wait()
		return recs
	}
}

// checkJournal checks, on one node, invariants 1 and 2 and exactly-once
// presence of every acknowledged batch, and that each intermediate volume
// equals the journal's batches applied in seq order.
func checkJournal(t *testing.T, tn *testNode, names []string, blocks uint64, recs []ackRecord) {
	t.Helper()
	fsm := tn.node.FSM()
	st := fsm.Stats()
	seen := make(map[uint64]string, st.CommittedSeq)
	byVolSeq := map[string]map[uint64]*wire.CommittedBatch{}
	for _, name := range names {
		got, compacted, err := fsm.Fetch(name, 0, 1<<30)
		if err != nil || compacted {
			t.Fatalf("node %s: fetch %s: %v (compacted %v)", tn.id, name, err, compacted)
		}
		byVolSeq[name] = map[uint64]*wire.CommittedBatch{}
		image := make([][]byte, blocks)
		var lastSeq uint64
		for i, cb := range got {
			b := cb.GetBatch()
			if want := uint64(i + 1); b.GetVolumeSeq() != want {
				t.Fatalf("node %s volume %s: journal position %d has volume seq %d, want %d (invariant 1)", tn.id, name, i, b.GetVolumeSeq(), want)
			}
			if cb.GetSeq() <= lastSeq {
				t.Fatalf("node %s volume %s: seq %d after %d (per-volume order)", tn.id, name, cb.GetSeq(), lastSeq)
			}
			lastSeq = cb.GetSeq()
			if other, dup := seen[cb.GetSeq()]; dup {
				t.Fatalf("node %s: seq %d given to %s and %s", tn.id, cb.GetSeq(), other, name)
			}
			seen[cb.GetSeq()] = name
			if err := wire.CheckBatch(b, blocks); err != nil {
				t.Fatalf("node %s: journal batch: %v", tn.id, err)
			}
			byVolSeq[name][b.GetVolumeSeq()] = cb
			for _, blk := range b.GetBlocks() {
				image[blk.GetIndex()] = blk.GetData()
			}
		}
		// The intermediate volume holds the journal applied in seq order.
		buf := make([]byte, wire.BlockSize)
		zero := make([]byte, wire.BlockSize)
		for i := uint64(0); i < blocks; i++ {
			if err := fsm.ReadVolumeBlock(name, i, buf); err != nil {
				t.Fatalf("node %s: read block %d of %s: %v", tn.id, i, name, err)
			}
			want := image[i]
			if want == nil {
				want = zero
			}
			if !bytes.Equal(buf, want) {
				t.Fatalf("node %s: intermediate volume %s block %d differs from the journal", tn.id, name, i)
			}
		}
	}
	for s := uint64(1); s <= st.CommittedSeq; s++ {
		if _, ok := seen[s]; !ok {
			t.Fatalf("node %s: seq %d missing of 1..%d (gapless)", tn.id, s, st.CommittedSeq)
		}
	}
	if uint64(len(seen)) != st.CommittedSeq {
		t.Fatalf("node %s: %d batches in the journal, committed seq %d", tn.id, len(seen), st.CommittedSeq)
	}
	for _, r := range recs {
		cb := byVolSeq[r.volume][r.volumeSeq]
		if cb == nil {
			t.Fatalf("node %s: acknowledged batch %s/%d (seq %d) is missing", tn.id, r.volume, r.volumeSeq, r.seq)
		}
		if cb.GetSeq() != r.seq {
			t.Fatalf("node %s: batch %s/%d acknowledged with seq %d, committed at %d", tn.id, r.volume, r.volumeSeq, r.seq, cb.GetSeq())
		}
		if blk := cb.GetBatch().GetBlocks(); len(blk) != 1 || blk[0].GetIndex() != r.index || !bytes.Equal(blk[0].GetData(), r.data) {
			t.Fatalf("node %s: batch %s/%d holds other data than was acknowledged", tn.id, r.volume, r.volumeSeq)
		}
	}
	checkCausality(t, recs)
}

// checkCausality checks invariant 2: a batch acknowledged before another was
// submitted has the smaller seq.
func checkCausality(t *testing.T, recs []ackRecord) {
	t.Helper()
	byAck := append([]ackRecord(nil), recs...)
	sort.Slice(byAck, func(i, j int) bool { return byAck[i].acked.Before(byAck[j].acked) })
	prefixMax := make([]uint64, len(byAck))
	for i, r := range byAck {
		prefixMax[i] = r.seq
		if i > 0 && prefixMax[i-1] > r.seq {
			prefixMax[i] = prefixMax[i-1]
		}
	}
	for _, y := range recs {
		// Acks strictly before y was submitted.
		k := sort.Search(len(byAck), func(i int) bool { return !byAck[i].acked.Before(y.submitted) })
		if k > 0 && prefixMax[k-1] >= y.seq {
			t.Fatalf("invariant 2: batch %s/%d (seq %d) submitted after a batch with seq %d was acknowledged", y.volume, y.volumeSeq, y.seq, prefixMax[k-1])
		}
	}
}

// compareNodes checks that every running node has the same state machine
// and byte-identical intermediate volumes.
// withoutSessions returns vols with their sessions zeroed.
func withoutSessions(vols []intermediate.VolumeInfo) []intermediate.VolumeInfo {
	for i := range vols {
		vols[i].Session = 0
	}
	return vols
}

func compareNodes(t *testing.T, c *testCluster, names []string, blocks uint64) {
	t.Helper()
	var ref *testNode
	for _, tn := range c.nodes {
		if tn.node == nil {
			continue
		}
		if ref == nil {
			ref = tn
			continue
		}
		a, b := ref.node.FSM(), tn.node.FSM()
		if sa, sb := a.Stats(), b.Stats(); sa.CommittedSeq != sb.CommittedSeq || sa.JournalBatches != sb.JournalBatches || sa.JournalBytes != sb.JournalBytes {
			t.Fatalf("nodes %s and %s differ: %+v vs %+v", ref.id, tn.id, sa, sb)
		}
		// Sessions are left out: a client reopening its stream records a
		// RegisterVolume that the nodes may not all have applied yet.
		if va, vb := fmt.Sprint(withoutSessions(a.Volumes())), fmt.Sprint(withoutSessions(b.Volumes())); va != vb {
			t.Fatalf("nodes %s and %s have different volumes:\n%s\n%s", ref.id, tn.id, va, vb)
		}
		pa, pb := make([]byte, wire.BlockSize), make([]byte, wire.BlockSize)
		for _, name := range names {
			for i := uint64(0); i < blocks; i++ {
				if err := a.ReadVolumeBlock(name, i, pa); err != nil {
					t.Fatal(err)
				}
				if err := b.ReadVolumeBlock(name, i, pb); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(pa, pb) {
					t.Fatalf("intermediate volume %s block %d differs between %s and %s", name, i, ref.id, tn.id)
				}
			}
		}
	}
}

// TestClusterLeaderKilledUnderLoad: 64 writers over 4 volumes on a 3-node
// cluster over TCP, the leader killed twice; then every node is restarted
// and one is wiped and catches up by snapshot.
func TestClusterLeaderKilledUnderLoad(t *testing.T) {
	const blocks = 256
	c := newTestCluster(t, 3, func(cfg *intermediate.Config) {
		cfg.SnapshotThreshold = 200
		cfg.TrailingLogs = 50
		cfg.SnapshotInterval = 200 * time.Millisecond
	})
	c.startAll()
	c.leader(15 * time.Second)

	cl, err := client.New(client.Config{Addrs: c.addrs(), Logger: c.logger})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	names := []string{"a", "b", "c", "d"}
	var vols []*client.Volume
	for _, name := range names {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		v, err := cl.OpenVolume(ctx, client.VolumeOptions{Name: name, Epoch: 1, BlockCount: blocks})
		cancel()
		if err != nil {
			t.Fatalf("open volume %s: %v", name, err)
		}
		defer v.Close()
		vols = append(vols, v)
	}

	stop := make(chan struct{})
	wait := runWriters(t, vols, names, blocks, 64, stop)
	phase := durationEnv("TRICOPY_CLUSTER_PHASE", 1500*time.Millisecond)
	for kill := 0; kill < 2; kill++ {
		time.Sleep(phase)
		victim := c.leader(15 * time.Second)
		t.Logf("killing leader %s", victim.id)
		c.stop(victim)
		time.Sleep(phase)
		c.start(victim)
	}
	time.Sleep(phase)
	close(stop)
	recs := wait()
	if t.Failed() {
		return
	}
	if len(recs) < 100 {
		t.Fatalf("only %d batches acknowledged", len(recs))
	}
	t.Logf("%d batches acknowledged", len(recs))
	c.waitConverged(30 * time.Second)
	for _, tn := range c.nodes {
		checkJournal(t, tn, names, blocks, recs)
	}
	// The same batches come back through Fetch, served by any node.
	for _, name := range names {
		want, _, _ := c.nodes[0].node.FSM().Fetch(name, 0, 0)
		got := fetchAll(t, cl, name, len(want))
		for i := range want {
			if got[i].GetSeq() != want[i].GetSeq() || got[i].GetBatch().GetCrc() != want[i].GetBatch().GetCrc() {
				t.Fatalf("fetch %s: batch %d is seq %d, journal has %d", name, i, got[i].GetSeq(), want[i].GetSeq())
			}
		}
	}

	// Restart every node: each comes back with the same state.
	for _, tn := range c.nodes {
		c.stop(tn)
	}
	c.startAll()
	c.leader(15 * time.Second)
	c.waitConverged(30 * time.Second)
	compareNodes(t, c, names, blocks)
	for _, tn := range c.nodes {
		checkJournal(t, tn, names, blocks, recs)
	}

	// Wipe a follower: it catches up by snapshot.
	var wiped *testNode
	for _, tn := range c.nodes {
		if !tn.node.IsLeader() {
			wiped = tn
			break
		}
	}
	// Snapshot every other node now, which also compacts their logs: the
	// wiped node cannot catch up from the log and must install a snapshot.
	for _, tn := range c.nodes {
		if tn != wiped {
			if err := tn.node.Raft().Snapshot().Error(); err != nil {
				t.Fatalf("snapshot on %s: %v", tn.id, err)
			}
		}
	}
	c.stop(wiped)
	if err := os.RemoveAll(wiped.dir); err != nil {
		t.Fatal(err)
	}
	c.start(wiped)
	c.waitConverged(60 * time.Second)
	// Raft records the installed snapshot just after restoring the state
	// machine, so poll.
	waitFor(t, 10*time.Second, "the wiped node to record an installed snapshot", func() bool {
		idx, _ := strconv.ParseUint(wiped.node.Raft().Stats()["last_snapshot_index"], 10, 64)
		return idx > 0
	})
	compareNodes(t, c, names, blocks)
	checkJournal(t, wiped, names, blocks, recs)
	if _, err := os.Stat(filepath.Join(wiped.dir, "raft.db")); err != nil {
		t.Fatal(err)
	}
}

// TestClusterPartitionLeader: the leader is cut off from its peers; the
// clients move to the new leader and keep committing; after the heal the old
// leader catches up.
func TestClusterPartitionLeader(t *testing.T) {
	const blocks = 64
	c := newTestCluster(t, 3, nil)
	c.startAll()
	old := c.leader(15 * time.Second)
	cl, err := client.New(client.Config{Addrs: c.addrs(), Logger: c.logger})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := cl.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 1, BlockCount: blocks})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	stop := make(chan struct{})
	wait := runWriters(t, []*client.Volume{v}, []string{"a"}, blocks, 8, stop)
	time.Sleep(time.Second)
	c.net.partition(old.id)
	t.Logf("partitioned leader %s", old.id)
	var newLeader *testNode
	waitFor(t, 20*time.Second, "a new leader", func() bool {
		for _, tn := range c.nodes {
			if tn != old && tn.node.IsLeader() {
				newLeader = tn
				return true
			}
		}
		return false
	})
	before := newLeader.node.FSM().Stats().CommittedSeq
	waitFor(t, 20*time.Second, "commits through the new leader", func() bool {
		return newLeader.node.FSM().Stats().CommittedSeq > before+50
	})
	if old.node.Raft().State() == raft.Leader {
		t.Fatalf("partitioned node %s still thinks it leads", old.id)
	}
	c.net.heal(old.id)
	time.Sleep(500 * time.Millisecond)
	close(stop)
	recs := wait()
	if t.Failed() {
		return
	}
	c.waitConverged(30 * time.Second)
	for _, tn := range c.nodes {
		checkJournal(t, tn, []string{"a"}, blocks, recs)
	}
}

// TestClusterJoinRemove grows a one-node cluster to three with join, then
// removes one node.
func TestClusterJoinRemove(t *testing.T) {
	c := newTestCluster(t, 3, nil)
	first := c.nodes[0]
	cfg := c.config(first)
	cfg.Cluster = []intermediate.Peer{{ID: first.id, RaftAddr: first.raftAddr}}
	c.startWith(first, cfg)
	c.leader(15 * time.Second)
	cl, err := client.New(client.Config{Addrs: []string{first.clientAddr}, Logger: c.logger})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	v, err := cl.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 1, BlockCount: 16})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for i := 0; i < 20; i++ {
		if _, err := v.Submit(ctx, []*wire.Block{{Index: uint64(i % 16), Data: blockData("a", 0, i)}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tn := range c.nodes[1:] {
		cfg := c.config(tn)
		cfg.Cluster = nil
		cfg.Join = []string{first.clientAddr}
		c.startWith(tn, cfg)
	}
	c.waitConverged(30 * time.Second)
	st, err := cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetServers()) != 3 || st.GetCommittedSeq() != 20 {
		t.Fatalf("after join: %d servers, committed seq %d; want 3 and 20", len(st.GetServers()), st.GetCommittedSeq())
	}
	compareNodes(t, c, []string{"a"}, 16)
	// Joining again is harmless.
	if err := cl.Join(ctx, c.nodes[2].id, c.nodes[2].raftAddr); err != nil {
		t.Fatalf("second join: %v", err)
	}
	if err := cl.Remove(ctx, c.nodes[2].id); err != nil {
		t.Fatalf("remove: %v", err)
	}
	c.stop(c.nodes[2])
	st, err = cl.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.GetServers()) != 2 {
		t.Fatalf("after remove: %d servers, want 2", len(st.GetServers()))
	}
	if _, err := v.Submit(ctx, []*wire.Block{{Index: 1, Data: blockData("a", 0, 99)}}); err != nil {
		t.Fatalf("submit after remove: %v", err)
	}
}

// fetchAll fetches the first n committed batches of volume through the
// client (several Fetch responses: the server sends at most 256 per message).
func fetchAll(t *testing.T, cl *client.Client, volume string, n int) []*wire.CommittedBatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var got []*wire.CommittedBatch
	err := cl.Fetch(ctx, volume, 0, func(r *wire.FetchResponse) error {
		got = append(got, r.GetBatches()...)
		if len(got) >= n {
			cancel()
		}
		return nil
	})
	if len(got) < n {
		t.Fatalf("fetch %s: %d of %d batches: %v", volume, len(got), n, err)
	}
	return got
}

// durationEnv reads a duration from the environment, or def.
func durationEnv(name string, def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv(name)); err == nil {
		return d
	}
	return def
}
