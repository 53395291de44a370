package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// process is a long-running tricopy process (here: an intermediate node).
type process struct {
	name    string
	args    []string
	cmd     *exec.Cmd
	stdout  syncBuffer
	stderr  syncBuffer
	exited  chan struct{}
	waitErr error
}

// startProcess starts `tricopy args...` and returns once its standard
// output contains ready. At cleanup it stops the process and, if t failed,
// logs its output.
func startProcess(t testing.TB, name, ready string, args ...string) *process {
	t.Helper()
	p := &process{name: name, args: args}
	p.start(t, ready)
	t.Cleanup(func() {
		p.terminate(t)
		if t.Failed() {
			t.Logf("%s: tricopy %s\nstderr:\n%s", name, strings.Join(args, " "), clip(p.stderr.String()))
		}
	})
	return p
}

func (p *process) start(t testing.TB, ready string) {
	t.Helper()
	p.exited = make(chan struct{})
	p.stdout, p.stderr = syncBuffer{}, syncBuffer{}
	p.cmd = exec.Command(tricopyBin, p.args...)
	p.cmd.Env = childEnv()
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	deadline := time.Now().Add(mountTimeout)
	for !strings.Contains(p.stdout.String(), ready) {
		select {
		case <-p.exited:
			t.Fatalf("%s exited before it was ready: %v\nstderr:\n%s", p.name, p.waitErr, clip(p.stderr.String()))
		case <-time.After(pollInterval):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %v\nstderr:\n%s", p.name, mountTimeout, clip(p.stderr.String()))
		}
	}
}

// kill sends SIGKILL and waits for the process to die.
func (p *process) kill(t testing.TB) {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		t.Fatalf("%s did not die after SIGKILL", p.name)
	}
}

// terminate stops a running process with SIGTERM (SIGKILL if it hangs).
func (p *process) terminate(t testing.TB) {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(stopTimeout):
		t.Errorf("%s did not exit %v after SIGTERM; killing it", p.name, stopTimeout)
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// freeAddr returns a free address on 127.0.0.1.
func freeAddr(t testing.TB) string {
	t.Helper()
	addr, err := chaosAddr("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// reserved are the addresses freeAddr and chaosAddr gave out.
var reserved = struct {
	sync.Mutex
	addrs map[string]bool
}{addrs: map[string]bool{}}

// statusDoc is the part of `tricopy status --json` these tests read.
type statusDoc struct {
	Leader       string `json:"leader"`
	CommittedSeq uint64 `json:"committed_seq"`
	Healthy      bool   `json:"healthy"`
	Nodes        []struct {
		ID           string `json:"id"`
		Reachable    bool   `json:"reachable"`
		CommittedSeq uint64 `json:"committed_seq"`
	} `json:"nodes"`
}

// status runs `tricopy status --json` and returns its document and exit code.
func status(t testing.TB, addrs []string) (statusDoc, int) {
	t.Helper()
	cmd := command(t, "", tricopyBin, "status", "--intermediate", strings.Join(addrs, ","), "--json", "--timeout", "3s")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("tricopy status: %v", err)
	}
	var doc statusDoc
	if err := json.Unmarshal(stdout.Bytes(), &doc); err != nil {
		t.Fatalf("tricopy status --json: %v\n%s", err, stdout.String())
	}
	return doc, code
}

// TestIntermediateSIGKILL runs a three-node intermediate cluster as real
// processes, keeps writers submitting, and SIGKILLs the leader twice
// (restarting it each time). Every acknowledged batch must be committed
// exactly once with its acknowledged seq, seqs gapless, and tricopy status
// must report the group healthy again with every node caught up.
func TestIntermediateSIGKILL(t *testing.T) {
	requireFUSE(t)
	const blocks = 64
	var cluster, addrs []string
	type nodeAddrs struct{ id, listen, raft string }
	var ns []nodeAddrs
	for i := 1; i <= 3; i++ {
		n := nodeAddrs{id: fmt.Sprintf("i%d", i), listen: freeAddr(t), raft: freeAddr(t)}
		ns = append(ns, n)
		cluster = append(cluster, n.id+"="+n.raft)
		addrs = append(addrs, n.listen)
	}
	base := t.TempDir()
	procs := map[string]*process{}
	for _, n := range ns {
		procs[n.id] = startProcess(t, n.id, "serving at", "intermediate", "--node", n.id,
			"--data", filepath.Join(base, n.id), "--listen", n.listen, "--raft", n.raft,
			"--cluster", strings.Join(cluster, ","), "--log-format", "text", "--snapshot-threshold", "300", "--trailing-logs", "100")
	}
	var leader string
	waitFor(t, 30*time.Second, "a leader", func() bool {
		doc, _ := status(t, addrs)
		leader = doc.Leader
		return leader != ""
	})

	cl, err := client.New(client.Config{Addrs: addrs})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	type ack struct {
		volume string
		vseq   uint64
		seq    uint64
		data   []byte
	}
	var mu sync.Mutex
	var acks []ack
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, name := range []string{"a", "b"} {
		v, err := cl.OpenVolume(ctx, client.VolumeOptions{Name: name, Epoch: 1, BlockCount: blocks})
		if err != nil {
			t.Fatal(err)
		}
		defer v.Close()
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					tag := []byte(fmt.Sprintf("%s/%d/%d;", name, w, i))
					data := bytes.Repeat(tag, wire.BlockSize/len(tag)+1)[:wire.BlockSize]
					a, err := v.Submit(ctx, []*wire.Block{{Index: uint64(i+w*16) % blocks, Data: data}})
					if err != nil {
						t.Errorf("submit %s: %v", name, err)
						return
					}
					mu.Lock()
					acks = append(acks, ack{name, a.VolumeSeq, a.Seq, data})
					mu.Unlock()
				}
			}()
		}
	}
	for kill := 0; kill < 2; kill++ {
		time.Sleep(time.Second)
		p := procs[leader]
		t.Logf("SIGKILL leader %s", leader)
		p.kill(t)
		waitFor(t, 30*time.Second, "a new leader", func() bool {
			doc, _ := status(t, addrs)
			if doc.Leader != "" && doc.Leader != leader {
				leader = doc.Leader
				return true
			}
			return false
		})
		if _, code := status(t, addrs); code != 1 {
			t.Errorf("status with a node down: exit %d, want 1", code)
		}
		p.start(t, "serving at")
	}
	time.Sleep(time.Second)
	close(stop)
	wg.Wait()
	if t.Failed() {
		return
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d batches acknowledged", len(acks))

	var doc statusDoc
	waitFor(t, 60*time.Second, "a healthy group with every node caught up", func() bool {
		var code int
		doc, code = status(t, addrs)
		if code != 0 || len(doc.Nodes) != 3 {
			return false
		}
		for _, n := range doc.Nodes {
			if !n.Reachable || n.CommittedSeq != doc.CommittedSeq {
				return false
			}
		}
		return true
	})
	if doc.CommittedSeq != uint64(len(acks)) {
		t.Fatalf("committed seq %d, %d batches acknowledged (every submit succeeded, so they must match)", doc.CommittedSeq, len(acks))
	}

	// Read everything back through Fetch and check it against the acks.
	type key struct {
		volume string
		vseq   uint64
	}
	got := map[key]*wire.CommittedBatch{}
	seqs := map[uint64]bool{}
	perVolume := map[string]uint64{}
	for _, a := range acks {
		perVolume[a.volume]++
	}
	for _, name := range []string{"a", "b"} {
		fctx, fcancel := context.WithTimeout(ctx, 30*time.Second)
		var next uint64 = 1
		err := cl.Fetch(fctx, name, 0, func(r *wire.FetchResponse) error {
			for _, cb := range r.GetBatches() {
				if cb.GetBatch().GetVolumeSeq() != next {
					return fmt.Errorf("volume %s: volume seq %d after %d", name, cb.GetBatch().GetVolumeSeq(), next-1)
				}
				next++
				if seqs[cb.GetSeq()] {
					return fmt.Errorf("seq %d twice", cb.GetSeq())
				}
				seqs[cb.GetSeq()] = true
				got[key{name, cb.GetBatch().GetVolumeSeq()}] = cb
			}
			if next-1 == perVolume[name] {
				fcancel()
			}
			return nil
		})
		fcancel()
		if err != nil && fctx.Err() == nil {
			t.Fatal(err)
		}
	}
	for s := uint64(1); s <= doc.CommittedSeq; s++ {
		if !seqs[s] {
			var maxSeq uint64
			for s := range seqs {
				maxSeq = max(maxSeq, s)
			}
			t.Fatalf("seq %d missing (gapless 1..%d); fetched %d seqs up to %d; acknowledged per volume %v",
				s, doc.CommittedSeq, len(seqs), maxSeq, perVolume)
		}
	}
	for _, a := range acks {
		cb := got[key{a.volume, a.vseq}]
		if cb == nil || cb.GetSeq() != a.seq || !bytes.Equal(cb.GetBatch().GetBlocks()[0].GetData(), a.data) {
			t.Fatalf("acknowledged batch %s/%d (seq %d) missing or different", a.volume, a.vseq, a.seq)
		}
	}
}
