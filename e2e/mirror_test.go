package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// Timeouts and sizes of the mirroring tests.
const (
	// mirrorMountTimeout bounds the wait for a mirrored mount to appear: it
	// reconciles with the intermediate (and may replay) before mounting.
	mirrorMountTimeout = time.Minute
	// pairTimeout bounds the wait for a volume to reach PAIR (the initial
	// copy of a new volume, a resync).
	pairTimeout = 2 * time.Minute
	// statusPoll is how often a wait on `tricopy status` polls it (each
	// poll runs a process).
	statusPoll = 200 * time.Millisecond
	// fenceTimeout is the --fence-timeout of the tests that wait on it.
	fenceTimeout = 2 * time.Second
	// regionSize is the default region size of the primary bitmap.
	regionSize = 64 << 10
)

// interNode is one intermediate node run as a process.
type interNode struct {
	id, listen, raft, data string
	p                      *process
	earlier                []string // standard error of the earlier runs, oldest first
}

// startIntermediates starts n intermediate nodes with their data under
// base, with the extra flags: one single-node cluster for n == 1, a bootstrapped --cluster of n
// nodes otherwise. It returns once every node serves and the cluster has
// a leader. If t fails, the logs of the earlier runs of restarted nodes
// are shown too.
func startIntermediates(t *testing.T, base string, n int, extra ...string) []*interNode {
	t.Helper()
	var nodes []*interNode
	var cluster []string
	for i := 1; i <= n; i++ {
		nd := &interNode{id: fmt.Sprintf("i%d", i), listen: freeAddr(t), raft: freeAddr(t)}
		nd.data = filepath.Join(base, nd.id)
		nodes = append(nodes, nd)
		cluster = append(cluster, nd.id+"="+nd.raft)
	}
	for _, nd := range nodes {
		args := []string{"intermediate", "--node", nd.id, "--data", nd.data, "--listen", nd.listen, "--raft", nd.raft, "--log-format", "text"}
		args = append(args, extra...)
		if n > 1 {
			args = append(args, "--cluster", strings.Join(cluster, ","))
		}
		nd.p = startProcess(t, nd.id, "serving at", args...)
		t.Cleanup(func() {
			if t.Failed() {
				for i, e := range nd.earlier {
					t.Logf("%s, run %d of %d:\nstderr:\n%s", nd.id, i+1, len(nd.earlier)+1, clip(e))
				}
			}
		})
	}
	addrs := nodeAddrs(nodes)
	pollStatus(t, 30*time.Second, "an intermediate leader", addrs, func(doc mirrorStatusDoc, _ int) bool { return doc.Leader != "" })
	return nodes
}

// nodeAddrs returns the client addresses of nodes.
func nodeAddrs(nodes []*interNode) []string {
	var addrs []string
	for _, nd := range nodes {
		addrs = append(addrs, nd.listen)
	}
	return addrs
}

// restart starts the node again (after kill or stop) with the same
// arguments, keeping the log of the run that ended.
func (nd *interNode) restart(t *testing.T) {
	t.Helper()
	nd.earlier = append(nd.earlier, nd.p.stderr.String())
	nd.p.start(t, "serving at")
}

// stop sends SIGTERM to the node and fails t unless it exits 0.
func (nd *interNode) stop(t *testing.T) {
	t.Helper()
	if err := nd.p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM %s: %v", nd.id, err)
	}
	select {
	case <-nd.p.exited:
	case <-time.After(stopTimeout):
		t.Fatalf("%s did not exit %v after SIGTERM", nd.id, stopTimeout)
	}
	if nd.p.waitErr != nil {
		t.Fatalf("%s after SIGTERM: %v (want exit 0)\nstderr:\n%s", nd.id, nd.p.waitErr, clip(nd.p.stderr.String()))
	}
}

// volumeDir is the directory of the node's intermediate volume name.
func (nd *interNode) volumeDir(name string) string { return filepath.Join(nd.data, "volumes", name) }

// mirrorSpec describes a mirrored `tricopy mount`.
type mirrorSpec struct {
	volume, data, mnt string
	size              string   // --size; default 64MiB
	addrs             []string // --intermediate
	extra             []string // more flags (--fence, --fence-timeout, ...)
}

// startMirrored starts the mirrored mount of spec and returns once it is
// mounted (it waits for the intermediate and replays first). Calling it
// again with the same spec restarts the primary.
func startMirrored(t *testing.T, spec mirrorSpec) *mount {
	t.Helper()
	size := spec.size
	if size == "" {
		size = "64MiB"
	}
	args := []string{"mount", "--volume", spec.volume, "--data", spec.data, "--mountpoint", spec.mnt,
		"--size", size, "--intermediate", strings.Join(spec.addrs, ","), "--log-format", "text"}
	return launchMount(t, spec.mnt, spec.data, mirrorMountTimeout, append(args, spec.extra...)...)
}

// mirrorStatusDoc is the part of `tricopy status --json` the mirroring
// tests read.
type mirrorStatusDoc struct {
	Leader       string               `json:"leader"`
	CommittedSeq uint64               `json:"committed_seq"`
	JournalBytes uint64               `json:"journal_bytes"`
	Volumes      []mirrorVolumeStatus `json:"volumes"`
	Nodes        []struct {
		ID           string `json:"id"`
		Reachable    bool   `json:"reachable"`
		CommittedSeq uint64 `json:"committed_seq"`
	} `json:"nodes"`
	Healthy  bool     `json:"healthy"`
	Problems []string `json:"problems"`
}

// mirrorVolumeStatus is one volume of mirrorStatusDoc.
type mirrorVolumeStatus struct {
	Name             string `json:"name"`
	Epoch            uint64 `json:"epoch"`
	CommittedSeq     uint64 `json:"committed_seq"`
	VolumeSeq        uint64 `json:"volume_seq"`
	BlockCount       uint64 `json:"block_count"`
	State            string `json:"state"`
	PrimaryConnected bool   `json:"primary_connected"`
	DirtyRegions     uint64 `json:"dirty_regions"`
	ResyncDone       uint64 `json:"resync_done_regions"`
	ResyncTotal      uint64 `json:"resync_total_regions"`
	Reason           string `json:"reason"`
}

// volume returns the status of the volume name, or nil.
func (d mirrorStatusDoc) volume(name string) *mirrorVolumeStatus {
	for i := range d.Volumes {
		if d.Volumes[i].Name == name {
			return &d.Volumes[i]
		}
	}
	return nil
}

// mirrorStatus runs `tricopy status --json` and returns its document and
// exit code; err is set when it printed no document.
func mirrorStatus(t testing.TB, addrs []string) (doc mirrorStatusDoc, code int, err error) {
	t.Helper()
	cmd := command(t, "", tricopyBin, "status", "--intermediate", strings.Join(addrs, ","), "--json", "--timeout", "3s", "--log-format", "text")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(runErr, &ee):
		code = ee.ExitCode()
	case runErr != nil:
		return doc, -1, fmt.Errorf("tricopy status: %w", runErr)
	}
	if err := json.Unmarshal(stdout.Bytes(), &doc); err != nil {
		return doc, code, fmt.Errorf("tricopy status --json (exit %d): %w\nstdout:\n%s\nstderr:\n%s", code, err, clip(stdout.String()), clip(stderr.String()))
	}
	return doc, code, nil
}

// mustStatus is mirrorStatus failing t if status printed no document.
func mustStatus(t testing.TB, addrs []string) (mirrorStatusDoc, int) {
	t.Helper()
	doc, code, err := mirrorStatus(t, addrs)
	if err != nil {
		t.Fatal(err)
	}
	return doc, code
}

// pollStatus polls `tricopy status` until cond holds, failing t after
// timeout with the last document.
func pollStatus(t testing.TB, timeout time.Duration, what string, addrs []string, cond func(doc mirrorStatusDoc, code int) bool) mirrorStatusDoc {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		doc, code, err := mirrorStatus(t, addrs)
		if err == nil && cond(doc, code) {
			return doc
		}
		if time.Now().After(deadline) {
			js, _ := json.MarshalIndent(doc, "", "  ")
			t.Fatalf("timed out after %v waiting for %s; last status (exit %d, err %v):\n%s", timeout, what, code, err, js)
		}
		time.Sleep(statusPoll)
	}
}

// waitState waits until status shows every named volume in state.
func waitState(t testing.TB, addrs []string, state string, timeout time.Duration, names ...string) mirrorStatusDoc {
	t.Helper()
	return pollStatus(t, timeout, fmt.Sprintf("volumes %v in %s", names, state), addrs, func(doc mirrorStatusDoc, _ int) bool {
		for _, n := range names {
			if v := doc.volume(n); v == nil || v.State != state {
				return false
			}
		}
		return true
	})
}

// fileData returns size bytes of content unique to (seed, name).
func fileData(seed uint64, name string, size int) []byte {
	h := fnv.New64a()
	h.Write([]byte(name))
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	binary.LittleEndian.PutUint64(key[8:], h.Sum64())
	b := make([]byte, size)
	rand.NewChaCha8(key).Read(b)
	return b
}

// writeSynced creates (or truncates) path with data and fsyncs it.
func writeSynced(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// checkFile fails t unless path holds want.
func checkFile(t testing.TB, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("acknowledged file: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("acknowledged file %s: %d bytes, want %d; first difference at byte %d", path, len(got), len(want), firstDiff(got, want))
	}
}

// firstDiff returns the index of the first byte where a and b differ.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// openVolume opens the volume in dir (whose process has exited).
func openVolume(t testing.TB, dir string) *blockdev.FileVolume {
	t.Helper()
	v, err := blockdev.Open(dir, blockdev.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatalf("open volume %s: %v", dir, err)
	}
	return v
}

// compareBlocks is how many blocks compareVolumes reads per call.
const compareBlocks = 256

// compareVolumes fails t unless blocks 0..N-1 of the primary volume in
// primaryDir (N blocks) and the intermediate volume in interDir (N+1
// blocks, the last one its header) are equal. Both processes must have
// exited.
func compareVolumes(t testing.TB, primaryDir, interDir string) {
	t.Helper()
	start := time.Now()
	p, iv := openVolume(t, primaryDir), openVolume(t, interDir)
	defer p.Close()
	defer iv.Close()
	n := p.BlockCount()
	if iv.BlockCount() != n+1 {
		t.Fatalf("intermediate volume %s has %d blocks, the primary %d: want primary + 1 (header)", interDir, iv.BlockCount(), n)
	}
	bp, bi := make([]byte, compareBlocks*blockdev.BlockSize), make([]byte, compareBlocks*blockdev.BlockSize)
	var diffs []uint64
	var ndiff int
	for first := uint64(0); first < n; first += compareBlocks {
		c := min(compareBlocks, n-first)
		pb, ib := bp[:c*blockdev.BlockSize], bi[:c*blockdev.BlockSize]
		if err := p.ReadBlocks(first, pb); err != nil {
			t.Fatal(err)
		}
		if err := iv.ReadBlocks(first, ib); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(pb, ib) {
			continue
		}
		for k := range c {
			o := k * blockdev.BlockSize
			if !bytes.Equal(pb[o:o+blockdev.BlockSize], ib[o:o+blockdev.BlockSize]) {
				ndiff++
				if len(diffs) < 10 {
					diffs = append(diffs, first+k)
				}
			}
		}
	}
	if ndiff > 0 {
		t.Fatalf("primary volume %s and intermediate volume %s differ in %d of %d blocks; the first: %v", primaryDir, interDir, ndiff, n, diffs)
	}
	t.Logf("volumes %s and %s equal (%d blocks, compared in %v)", primaryDir, interDir, n, time.Since(start).Round(time.Millisecond))
}

// copyIntermediateVolume copies blocks 0..N-1 of the intermediate volume in
// interDir (the node must have exited) into a new volume at dst, so that
// the filesystem code can read it.
func copyIntermediateVolume(t testing.TB, interDir, dst string) {
	t.Helper()
	iv := openVolume(t, interDir)
	defer iv.Close()
	n := iv.BlockCount() - 1
	out, err := blockdev.Create(dst, n, blockdev.Options{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	ctx := context.Background()
	buf := make([]byte, compareBlocks*blockdev.BlockSize)
	zero := make([]byte, blockdev.BlockSize)
	for first := uint64(0); first < n; first += compareBlocks {
		c := min(compareBlocks, n-first)
		if err := iv.ReadBlocks(first, buf[:c*blockdev.BlockSize]); err != nil {
			t.Fatal(err)
		}
		var b blockdev.Batch
		for k := range c {
			d := buf[k*blockdev.BlockSize : (k+1)*blockdev.BlockSize]
			if !bytes.Equal(d, zero) {
				b.Writes = append(b.Writes, blockdev.Write{Index: first + k, Data: bytes.Clone(d)})
			}
		}
		if len(b.Writes) > 0 {
			if err := out.Apply(ctx, &b, blockdev.ApplyOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := out.Sync(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestMirrorFsyncSurvivesKill writes files with fsync on a mirrored mount,
// then SIGKILLs the primary and the intermediate. The intermediate alone is
// restarted and stopped cleanly; its volume, read with the filesystem code
// (copied to a volume of its own, fsck'd and mounted read-only), must hold
// every file as written (invariant 3).
func TestMirrorFsyncSurvivesKill(t *testing.T) {
	requireFUSE(t)
	base := t.TempDir()
	nodes := startIntermediates(t, filepath.Join(base, "inter"), 1)
	addrs := nodeAddrs(nodes)
	spec := mirrorSpec{volume: "a", data: filepath.Join(base, "a"), mnt: realPath(t, t.TempDir()), addrs: addrs}
	m := startMirrored(t, spec)
	waitState(t, addrs, "PAIR", pairTimeout, "a")

	const seed = 11
	files := map[string][]byte{}
	if err := os.Mkdir(filepath.Join(spec.mnt, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range 40 {
		name := fmt.Sprintf("d/f%03d", i)
		size := []int{0, 1, 100, 4095, 4096, 4097, 65536, 300_000}[i%8] + r.IntN(4096)
		files[name] = fileData(seed, name, size)
		if err := writeSynced(filepath.Join(spec.mnt, name), files[name]); err != nil {
			t.Fatalf("write %s: %v", name, err)
		}
	}
	// Overwrite the middle of one file, as an update in place.
	big := "d/f007"
	patch := fileData(seed, "patch", 10_000)
	f, err := os.OpenFile(filepath.Join(spec.mnt, big), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(patch, 5000); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	copy(files[big][5000:], patch)
	// The kill follows the last fsync at once: no status call in between.
	nodes[0].p.kill(t)
	m.kill(t)
	f.Close()
	t.Logf("SIGKILLed the intermediate and the primary after %d fsync'd files", len(files))

	nodes[0].restart(t)
	doc := pollStatus(t, 30*time.Second, "the restarted intermediate to lead", addrs, func(d mirrorStatusDoc, _ int) bool { return d.Leader != "" })
	t.Logf("restarted intermediate: committed seq %d", doc.CommittedSeq)
	nodes[0].stop(t)

	cp := filepath.Join(base, "copy")
	copyIntermediateVolume(t, nodes[0].volumeDir("a"), cp)
	fsckClean(t, cp)
	ro := realPath(t, t.TempDir())
	rm := launchMount(t, ro, cp, mountTimeout, "mount", "--volume", "copy", "--data", cp, "--mountpoint", ro, "--read-only", "--log-format", "text")
	entries, err := os.ReadDir(filepath.Join(ro, "d"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, "d/"+e.Name())
	}
	var want []string
	for name := range files {
		want = append(want, name)
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("the intermediate's volume holds files %v, want %v", got, want)
	}
	for _, name := range want {
		checkFile(t, filepath.Join(ro, name), files[name])
	}
	rm.stop(t)
}

// markerLen is the length of a causality marker; a record is the marker
// repeated to fill a block.
const markerLen = 32

// causalityMarker returns the marker of record i of kind ("rec" or "ptr").
func causalityMarker(kind string, i int, nonce uint64) []byte {
	m := fmt.Sprintf("<%s %08d %016x.>", kind, i, nonce)
	if len(m) != markerLen {
		panic("marker length " + strconv.Itoa(len(m)))
	}
	return []byte(m)
}

// firstSeqs fetches the committed batches of volume up to its volume seq
// upTo and returns, for each index i of a marker of kind with nonce found
// whole inside a block, the seq of the first batch holding it.
func firstSeqs(t testing.TB, cl *client.Client, volume, kind string, nonce uint64, upTo uint64) map[int]uint64 {
	t.Helper()
	prefix := []byte("<" + kind + " ")
	tail := []byte(fmt.Sprintf(" %016x.>", nonce))
	seqs := map[int]uint64{}
	errDone := errors.New("done")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var last uint64
	err := cl.Fetch(ctx, volume, 0, func(r *wire.FetchResponse) error {
		for _, cb := range r.GetBatches() {
			for _, blk := range cb.GetBatch().GetBlocks() {
				d := blk.GetData()
				for off := 0; ; {
					k := bytes.Index(d[off:], prefix)
					if k < 0 {
						break
					}
					at := off + k
					off = at + 1
					if at+markerLen > len(d) || !bytes.Equal(d[at+markerLen-len(tail):at+markerLen], tail) {
						continue
					}
					i, err := strconv.Atoi(string(d[at+len(prefix) : at+len(prefix)+8]))
					if err != nil {
						continue
					}
					if _, ok := seqs[i]; !ok {
						seqs[i] = cb.GetSeq()
					}
				}
			}
			last = cb.GetBatch().GetVolumeSeq()
			if last >= upTo {
				return errDone
			}
		}
		return nil
	})
	if !errors.Is(err, errDone) {
		t.Fatalf("fetch volume %s up to volume seq %d: stopped at %d: %v", volume, upTo, last, err)
	}
	return seqs
}

// TestMirrorCausality runs two mirrored mounts of one group. It appends a
// record to a file on volume a and fsyncs it, then writes a pointer to it
// on volume b and fsyncs that, many times. In the committed batches, the
// first batch holding record i must have a lower seq than the first batch
// holding pointer i, which must be lower than that of record i+1
// (invariant 2: what was acknowledged before a write was submitted has a
// lower seq).
func TestMirrorCausality(t *testing.T) {
	requireFUSE(t)
	const records = 200
	base := t.TempDir()
	nodes := startIntermediates(t, filepath.Join(base, "inter"), 1)
	addrs := nodeAddrs(nodes)
	specA := mirrorSpec{volume: "a", data: filepath.Join(base, "a"), mnt: realPath(t, t.TempDir()), addrs: addrs}
	specB := mirrorSpec{volume: "b", data: filepath.Join(base, "b"), mnt: realPath(t, t.TempDir()), addrs: addrs}
	ma := startMirrored(t, specA)
	mb := startMirrored(t, specB)
	waitState(t, addrs, "PAIR", pairTimeout, "a", "b")

	nonce := rand.Uint64()
	fa, err := os.OpenFile(filepath.Join(specA.mnt, "records"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer fa.Close()
	fb, err := os.OpenFile(filepath.Join(specB.mnt, "pointers"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	start := time.Now()
	for i := range records {
		rec := bytes.Repeat(causalityMarker("rec", i, nonce), blockdev.BlockSize/markerLen)
		if _, err := fa.WriteAt(rec, int64(i)*blockdev.BlockSize); err != nil {
			t.Fatalf("record %d: %v", i, err)
		}
		if err := fa.Sync(); err != nil {
			t.Fatalf("fsync record %d: %v", i, err)
		}
		ptr := bytes.Repeat(causalityMarker("ptr", i, nonce), blockdev.BlockSize/markerLen)
		if _, err := fb.WriteAt(ptr, int64(i)*blockdev.BlockSize); err != nil {
			t.Fatalf("pointer %d: %v", i, err)
		}
		if err := fb.Sync(); err != nil {
			t.Fatalf("fsync pointer %d: %v", i, err)
		}
	}
	t.Logf("%d records and pointers written and fsync'd in %v", records, time.Since(start).Round(time.Millisecond))

	doc, _ := mustStatus(t, addrs)
	va, vb := doc.volume("a"), doc.volume("b")
	if va == nil || vb == nil {
		t.Fatalf("status shows no volume a or b: %+v", doc.Volumes)
	}
	cl, err := client.New(client.Config{Addrs: addrs, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	xs := firstSeqs(t, cl, "a", "rec", nonce, va.VolumeSeq)
	ys := firstSeqs(t, cl, "b", "ptr", nonce, vb.VolumeSeq)
	var prev uint64
	for i := range records {
		x, okx := xs[i]
		y, oky := ys[i]
		if !okx || !oky {
			t.Fatalf("record %d: found in a committed batch of a: %v (seq %d), pointer in one of b: %v (seq %d)", i, okx, x, oky, y)
		}
		if !(prev < x && x < y) {
			t.Fatalf("causality broken at record %d: seq(pointer %d) = %d, seq(record %d) = %d, seq(pointer %d) = %d; want strictly increasing",
				i, i-1, prev, i, x, i, y)
		}
		prev = y
	}
	t.Logf("seq(record i) < seq(pointer i) < seq(record i+1) for all %d records (seqs %d..%d)", records, xs[0], ys[records-1])
	fa.Close()
	fb.Close()
	ma.stop(t)
	mb.stop(t)
}

// fsyncProbe writes data at off of the existing file path and fsyncs it.
func fsyncProbe(path string, off int64, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("open: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteAt(data, off); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	return f.Close()
}

// fenceRound takes the intermediate away with down (described by how),
// checks that a write+fsync to the file probe on mnt fails with EIO after
// the fence timeout, a second one at once, and that reads work; then it
// brings the intermediate back with up and waits until writes succeed.
func fenceRound(t *testing.T, mnt, how string, down, up func()) {
	t.Helper()
	const seed = 4
	probe := filepath.Join(mnt, "probe")
	want, err := os.ReadFile(probe)
	if err != nil {
		t.Fatal(err)
	}
	down()
	t.Logf("%s the intermediate", how)
	start := time.Now()
	err = fsyncProbe(probe, 0, fileData(seed, how+" 1", 4096))
	took := time.Since(start)
	t.Logf("first write without the intermediate: %v after %v", err, took.Round(time.Millisecond))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("write+fsync with the intermediate %s (fence data): %v, want EIO", how, err)
	}
	if took < fenceTimeout*3/4 || took > fenceTimeout+5*time.Second {
		t.Errorf("the first write failed after %v, want about the fence timeout %v", took, fenceTimeout)
	}
	// The write that timed out stays pending and may be committed later,
	// so reads may show it; the refused one must not show.
	pending := bytes.Clone(want)
	copy(pending, fileData(seed, how+" 1", 4096))
	start = time.Now()
	err = fsyncProbe(probe, 4096, fileData(seed, how+" 2", 4096))
	took = time.Since(start)
	t.Logf("second write without the intermediate: %v after %v", err, took.Round(time.Millisecond))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("second write+fsync with the intermediate %s: %v, want EIO", how, err)
	}
	if took > fenceTimeout/2 {
		t.Errorf("the second write failed after %v, want at once", took)
	}
	got, err := os.ReadFile(probe)
	if err != nil {
		t.Fatalf("read with the intermediate %s: %v", how, err)
	}
	if !bytes.Equal(got, want) && !bytes.Equal(got, pending) {
		t.Fatalf("read with the intermediate %s: the file differs from its content before and after the write that timed out (first difference at byte %d)",
			how, firstDiff(got, pending))
	}
	if _, err := os.ReadDir(mnt); err != nil {
		t.Fatalf("readdir with the intermediate %s: %v", how, err)
	}

	up()
	back := time.Now()
	var attempts int
	waitFor(t, time.Minute, "writes to succeed again", func() bool {
		attempts++
		err := fsyncProbe(probe, 0, fileData(seed, how+" again", 4096))
		if err != nil && !errors.Is(err, syscall.EIO) {
			t.Fatalf("write after the intermediate is back: %v, want success or EIO", err)
		}
		if err != nil {
			time.Sleep(100 * time.Millisecond)
		}
		return err == nil
	})
	t.Logf("writes succeed again %v after the intermediate is back (%d attempts)", time.Since(back).Round(time.Millisecond), attempts)
}

// TestMirrorFenceData takes the intermediate away (SIGKILL, then SIGSTOP)
// under a mirrored mount with fence level data: a write then fails with
// EIO once the fence timeout has passed, the next one at once, reads go
// on; once the intermediate is back, writes succeed again by themselves. After a clean stop the
// primary's and the intermediate's volumes are equal.
func TestMirrorFenceData(t *testing.T) {
	requireFUSE(t)
	base := t.TempDir()
	nodes := startIntermediates(t, filepath.Join(base, "inter"), 1)
	addrs := nodeAddrs(nodes)
	spec := mirrorSpec{volume: "a", data: filepath.Join(base, "a"), mnt: realPath(t, t.TempDir()), addrs: addrs,
		extra: []string{"--fence", "data", "--fence-timeout", fenceTimeout.String()}}
	m := startMirrored(t, spec)
	waitState(t, addrs, "PAIR", pairTimeout, "a")

	const seed = 3
	before := fileData(seed, "before", 100_000)
	if err := writeSynced(filepath.Join(spec.mnt, "before"), before); err != nil {
		t.Fatal(err)
	}
	if err := writeSynced(filepath.Join(spec.mnt, "probe"), fileData(seed, "probe", 8192)); err != nil {
		t.Fatal(err)
	}

	// Round 1: the intermediate dies (its connections are refused);
	// round 2: it is frozen (connections stay open, nothing answers).
	nd := nodes[0]
	fenceRound(t, spec.mnt, "SIGKILLed", func() { nd.p.kill(t) }, func() { nd.restart(t) })
	t.Cleanup(func() { _ = nd.p.cmd.Process.Signal(syscall.SIGCONT) })
	fenceRound(t, spec.mnt, "SIGSTOPped", func() {
		if err := nd.p.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}, func() {
		if err := nd.p.cmd.Process.Signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
	})
	checkFile(t, filepath.Join(spec.mnt, "before"), before)
	after := fileData(seed, "after", 50_000)
	if err := writeSynced(filepath.Join(spec.mnt, "after"), after); err != nil {
		t.Fatal(err)
	}
	waitState(t, addrs, "PAIR", pairTimeout, "a")
	m.stop(t)
	nodes[0].stop(t)
	fsckClean(t, spec.data)
	compareVolumes(t, spec.data, nodes[0].volumeDir("a"))
}

// resyncLine is the mount's log line starting a resync.
var resyncLine = regexp.MustCompile(`msg="intermediate reachable again: resynchronising the marked regions".* dirty_regions=(\d+)`)

// TestMirrorFenceNeverResync stops the intermediate under a 1 GiB mirrored
// mount with fence level never, writes 20 MiB of files (the first write
// waits for the fence timeout, then the mirror is suspended and the
// writes are local), and restarts the intermediate: the resync must bring
// the volume back to PAIR sending no more than the marked regions (and at
// least the data written), and the two volumes must then be equal
// (invariant 8).
func TestMirrorFenceNeverResync(t *testing.T) {
	requireFUSE(t)
	const (
		files    = 20
		fileSize = 1 << 20
		seed     = 5
	)
	base := t.TempDir()
	// The bytes the resync sent are counted as the journal's growth: the
	// journal must keep them all, so it is not trimmed during the test
	// (it is trimmed up to the primary's durable point, which a resync of
	// a few seconds passes).
	nodes := startIntermediates(t, filepath.Join(base, "inter"), 1, "--trim-interval", "1h")
	addrs := nodeAddrs(nodes)
	spec := mirrorSpec{volume: "a", data: filepath.Join(base, "a"), mnt: realPath(t, t.TempDir()), addrs: addrs, size: "1GiB",
		extra: []string{"--fence", "never", "--fence-timeout", fenceTimeout.String()}}
	start := time.Now()
	m := startMirrored(t, spec)
	if err := writeSynced(filepath.Join(spec.mnt, "paired"), fileData(seed, "paired", 10_000)); err != nil {
		t.Fatal(err)
	}
	doc := waitState(t, addrs, "PAIR", pairTimeout, "a")
	t.Logf("initial copy of 1 GiB done in %v; journal %d bytes", time.Since(start).Round(time.Millisecond), doc.JournalBytes)
	journalBefore := doc.JournalBytes

	nodes[0].stop(t)
	start = time.Now()
	var first time.Duration
	for i := range files {
		name := fmt.Sprintf("f%02d", i)
		if err := writeSynced(filepath.Join(spec.mnt, name), fileData(seed, name, fileSize)); err != nil {
			t.Fatalf("write %s with the intermediate down (fence never): %v", name, err)
		}
		if i == 0 {
			first = time.Since(start)
			t.Logf("first file written in %v", first.Round(time.Millisecond))
		}
	}
	took := time.Since(start)
	t.Logf("%d MiB written in %v with the intermediate down", files*fileSize>>20, took.Round(time.Millisecond))
	if rest := took - first; rest > (files-1)*fenceTimeout/2 {
		t.Errorf("the %d files after the first took %v: suspended writes should not wait on the intermediate", files-1, rest)
	}
	if !strings.Contains(m.stderr.String(), `msg="mirroring suspended`) {
		t.Fatalf("no suspension in the mount's log")
	}

	nodes[0].restart(t)
	start = time.Now()
	// The mount's log says when the resync starts (and how many regions
	// are marked) and ends; status must then show PAIR.
	var marked uint64
	waitFor(t, pairTimeout, "the resync to start", func() bool {
		mm := resyncLine.FindStringSubmatch(m.stderr.String())
		if mm == nil {
			return false
		}
		var err error
		marked, err = strconv.ParseUint(mm[1], 10, 64)
		return err == nil
	})
	t.Logf("resync of %d marked regions started %v after the restart", marked, time.Since(start).Round(time.Millisecond))
	resyncDone := regexp.MustCompile(`msg="copy complete: volume in PAIR".* was=RESYNC regions=` + strconv.FormatUint(marked, 10) + `\b`)
	waitFor(t, pairTimeout, "the resync to complete", func() bool { return resyncDone.MatchString(m.stderr.String()) })
	doc = waitState(t, addrs, "PAIR", pairTimeout, "a")
	t.Logf("back in PAIR %v after the restart; journal %d bytes", time.Since(start).Round(time.Millisecond), doc.JournalBytes)
	sent := doc.JournalBytes - journalBefore
	limit := marked * regionSize * 101 / 100
	t.Logf("resync of %d marked regions (%d bytes) sent %d bytes", marked, marked*regionSize, sent)
	if sent > limit {
		t.Errorf("resync sent %d bytes, more than the %d marked regions of %d bytes + 1%% (%d bytes)", sent, marked, regionSize, limit)
	}
	if sent < files*fileSize {
		t.Errorf("resync sent %d bytes, less than the %d bytes written while suspended", sent, files*fileSize)
	}
	for i := range files {
		name := fmt.Sprintf("f%02d", i)
		checkFile(t, filepath.Join(spec.mnt, name), fileData(seed, name, fileSize))
	}
	m.stop(t)
	nodes[0].stop(t)
	fsckClean(t, spec.data)
	compareVolumes(t, spec.data, nodes[0].volumeDir("a"))
}

// replayedLine is the mount's log line after a replay at start.
var replayedLine = regexp.MustCompile(`msg="replayed committed batches".* batches=(\d+)`)

// ackedFile is a file whose fsync returned without error.
type ackedFile struct {
	name string
	size int
}

// fileWriter creates files with unique content under dir, each fsync'd,
// until stopped or until an operation fails, and records the acknowledged
// ones.
type fileWriter struct {
	dir  string
	seed uint64
	gen  int // part of the names, distinct per writer

	mu       sync.Mutex
	acked    []ackedFile
	err      error         // the error that stopped the writer
	errAt    time.Time     // when it stopped on err
	maxPause time.Duration // longest time one file took
	stop     chan struct{}
	done     chan struct{}
}

// startWriter starts a fileWriter on dir; names start with gen.
func startWriter(dir string, seed uint64, gen int) *fileWriter {
	w := &fileWriter{dir: dir, seed: seed, gen: gen, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *fileWriter) run() {
	defer close(w.done)
	r := rand.New(rand.NewPCG(w.seed, uint64(w.gen)))
	for n := 0; ; n++ {
		select {
		case <-w.stop:
			return
		default:
		}
		name := fmt.Sprintf("g%03d-%05d", w.gen, n)
		size := 1 + r.IntN(16<<10)
		start := time.Now()
		err := writeSynced(filepath.Join(w.dir, name), fileData(w.seed, name, size))
		took := time.Since(start)
		w.mu.Lock()
		if err != nil {
			w.err, w.errAt = fmt.Errorf("file %s: %w", name, err), time.Now()
			w.mu.Unlock()
			return
		}
		w.acked = append(w.acked, ackedFile{name, size})
		w.maxPause = max(w.maxPause, took)
		w.mu.Unlock()
	}
}

// count returns the number of acknowledged files.
func (w *fileWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// waitCount waits until the writer acknowledged n files in all, failing t
// at once if it stopped on an error.
func (w *fileWriter) waitCount(t testing.TB, n int, what string) {
	t.Helper()
	waitFor(t, 30*time.Second, what, func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.err != nil {
			t.Fatalf("waiting for %s: the writer stopped after %d files: %v", what, len(w.acked), w.err)
		}
		return len(w.acked) >= n
	})
}

// halt stops the writer (if it still runs) and waits for it, at most
// stopTimeout; it reports whether the writer ended.
func (w *fileWriter) halt() bool {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	select {
	case <-w.done:
		return true
	case <-time.After(stopTimeout):
		return false
	}
}

// finish halts the writer, failing t if it is stuck in a file system call.
func (w *fileWriter) finish(t testing.TB) {
	t.Helper()
	if !w.halt() {
		t.Fatalf("the writer on %s is stuck in a file system call for %v", w.dir, stopTimeout)
	}
}

// cleanUp is finish for t.Cleanup: it only reports a stuck writer, so that
// the later cleanups (which stop the mount, freeing the writer) run.
func (w *fileWriter) cleanUp(t testing.TB) {
	if !w.halt() {
		t.Errorf("the writer on %s is stuck in a file system call", w.dir)
	}
}

// TestMirrorKillPrimaryUnderLoad SIGKILLs a mirrored primary at random
// instants while a writer creates fsync'd files, and restarts it each
// time: every acknowledged file must be there after the restart (which
// replays what the intermediate committed). At the end the volume passes
// fsck and equals the intermediate's. TRICOPY_LONG=1 kills 20 times
// instead of 4; TRICOPY_MIRROR_SEED=N replays a schedule.
func TestMirrorKillPrimaryUnderLoad(t *testing.T) {
	requireFUSE(t)
	kills, size := 4, "64MiB"
	if os.Getenv("TRICOPY_LONG") == "1" {
		// More runs write more files: a larger volume (and more inodes).
		kills, size = 20, "256MiB"
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TRICOPY_MIRROR_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("TRICOPY_MIRROR_SEED: %v", err)
		}
	}
	t.Logf("seed %d (rerun with TRICOPY_MIRROR_SEED=%d)", seed, seed)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("failed with seed %d: rerun with TRICOPY_MIRROR_SEED=%d go test -count=1 -p 1 -run 'TestMirrorKillPrimaryUnderLoad$' ./e2e/", seed, seed)
		}
	})
	r := rand.New(rand.NewPCG(seed, 0))
	base := t.TempDir()
	nodes := startIntermediates(t, filepath.Join(base, "inter"), 1)
	addrs := nodeAddrs(nodes)
	spec := mirrorSpec{volume: "a", data: filepath.Join(base, "a"), mnt: realPath(t, t.TempDir()), addrs: addrs, size: size}
	m := startMirrored(t, spec)
	waitState(t, addrs, "PAIR", pairTimeout, "a")
	dir := filepath.Join(spec.mnt, "w")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}

	var acked []ackedFile
	check := func() {
		t.Helper()
		for _, f := range acked {
			checkFile(t, filepath.Join(dir, f.name), fileData(seed, f.name, f.size))
		}
	}
	for k := range kills {
		w := startWriter(dir, seed, k)
		t.Cleanup(func() { w.cleanUp(t) })
		delay := time.Duration(100+r.IntN(1400)) * time.Millisecond
		time.Sleep(delay)
		killed := time.Now()
		m.kill(t)
		w.finish(t)
		acked = append(acked, w.acked...)
		t.Logf("kill %d after %v: %d files acknowledged in this run (%d in all); the writer stopped on: %v", k+1, delay, len(w.acked), len(acked), w.err)
		if w.err == nil {
			t.Fatalf("the writer saw no error although its mount was killed")
		}
		if w.errAt.Before(killed) {
			t.Fatalf("the writer failed before the kill: %v", w.err)
		}
		start := time.Now()
		m = startMirrored(t, spec)
		replayed := "nothing to replay"
		if mm := replayedLine.FindStringSubmatch(m.stderr.String()); mm != nil {
			replayed = "replayed " + mm[1] + " batches"
		}
		t.Logf("restarted in %v: %s", time.Since(start).Round(time.Millisecond), replayed)
		check()
	}
	if len(acked) == 0 {
		t.Fatalf("no file was acknowledged in %d runs", kills)
	}
	waitState(t, addrs, "PAIR", pairTimeout, "a")
	m.stop(t)
	nodes[0].stop(t)
	fsckClean(t, spec.data)
	compareVolumes(t, spec.data, nodes[0].volumeDir("a"))
}

// TestMirrorLeaderKill SIGKILLs the leader of a three-node intermediate
// cluster under a mirrored mount (fence level data, default timeout)
// while a writer creates fsync'd files, and restarts it a few seconds
// later: the writer must see no error (only a pause), every acknowledged
// file must be there, the group must end healthy, and every node's
// intermediate volume must equal the primary's.
func TestMirrorLeaderKill(t *testing.T) {
	requireFUSE(t)
	const seed = 9
	base := t.TempDir()
	nodes := startIntermediates(t, filepath.Join(base, "inter"), 3)
	addrs := nodeAddrs(nodes)
	spec := mirrorSpec{volume: "a", data: filepath.Join(base, "a"), mnt: realPath(t, t.TempDir()), addrs: addrs,
		extra: []string{"--fence", "data"}}
	m := startMirrored(t, spec)
	doc := waitState(t, addrs, "PAIR", pairTimeout, "a")
	dir := filepath.Join(spec.mnt, "w")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	w := startWriter(dir, seed, 0)
	t.Cleanup(func() { w.cleanUp(t) })
	w.waitCount(t, 20, "the writer to make progress")

	var leader *interNode
	for _, nd := range nodes {
		if nd.id == doc.Leader {
			leader = nd
		}
	}
	if leader == nil {
		t.Fatalf("leader %q is none of the nodes", doc.Leader)
	}
	n0 := w.count()
	leader.p.kill(t)
	killed := time.Now()
	t.Logf("SIGKILLed leader %s with %d files acknowledged", leader.id, n0)
	doc = pollStatus(t, 30*time.Second, "a new leader", addrs, func(d mirrorStatusDoc, _ int) bool { return d.Leader != "" && d.Leader != leader.id })
	t.Logf("new leader %s after %v", doc.Leader, time.Since(killed).Round(time.Millisecond))
	w.waitCount(t, n0+20, "the writer to make progress under the new leader")
	if d := 3*time.Second - time.Since(killed); d > 0 {
		time.Sleep(d)
	}
	leader.restart(t)
	n1 := w.count()
	t.Logf("restarted %s %v after the kill, %d files acknowledged", leader.id, time.Since(killed).Round(time.Millisecond), n1)
	w.waitCount(t, n1+20, "the writer to make progress after the restart")
	w.finish(t)
	t.Logf("writer: %d files acknowledged, longest file %v, stopped on: %v", len(w.acked), w.maxPause.Round(time.Millisecond), w.err)
	if w.err != nil {
		t.Fatalf("the writer saw an error: %v", w.err)
	}
	for _, f := range w.acked {
		checkFile(t, filepath.Join(dir, f.name), fileData(seed, f.name, f.size))
	}
	doc = pollStatus(t, time.Minute, "a healthy group with every node caught up", addrs, func(d mirrorStatusDoc, code int) bool {
		if code != 0 || !d.Healthy || len(d.Nodes) != 3 {
			return false
		}
		for _, n := range d.Nodes {
			if !n.Reachable || n.CommittedSeq != d.CommittedSeq {
				return false
			}
		}
		v := d.volume("a")
		return v != nil && v.State == "PAIR"
	})
	t.Logf("healthy: leader %s, committed seq %d", doc.Leader, doc.CommittedSeq)
	m.stop(t)
	fsckClean(t, spec.data)
	for _, nd := range nodes {
		nd.stop(t)
	}
	for _, nd := range nodes {
		compareVolumes(t, spec.data, nd.volumeDir("a"))
	}
}
