package e2e

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// secondaryMountTimeout bounds the wait for a secondary's replica to be
// mounted: it waits for the volume to be registered, then for a validated
// point that holds a filesystem.
const secondaryMountTimeout = time.Minute

// secondarySpec describes a `tricopy secondary`.
type secondarySpec struct {
	volume, data, mnt, listen string
	addrs                     []string
	env                       []string // added to the environment (the test-only switch)
	extra                     []string // more flags (--metrics, ...)
}

// startSecondary starts the secondary of spec and returns once its replica
// is mounted. Calling it again with the same spec restarts it.
func startSecondary(t *testing.T, spec secondarySpec) *mount {
	t.Helper()
	args := []string{"secondary", "--volume", spec.volume, "--data", spec.data, "--mountpoint", spec.mnt,
		"--intermediate", strings.Join(spec.addrs, ","), "--listen", spec.listen, "--log-format", "text"}
	args = append(args, spec.extra...)
	return launchReady(t, spec.mnt, spec.data, "mounted replica of volume", spec.env, secondaryMountTimeout, args...)
}

// readApplied reads the validated point a replica mount shows.
func readApplied(mnt string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(mnt, ".tricopy", "applied"))
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
}

// waitAll runs `tricopy wait` and fails t unless it exits 0.
func waitAll(t testing.TB, addrs []string) {
	t.Helper()
	out := run(t, "", tricopyBin, "wait", "--intermediate", strings.Join(addrs, ","), "--timeout", "60s", "--log-format", "text")
	t.Logf("tricopy wait: %s", strings.TrimSpace(out))
}

// secondaryStatusDoc is the part of `tricopy status --json` about
// secondaries.
type secondaryStatusDoc struct {
	CommittedSeq uint64 `json:"committed_seq"`
	ValidSeq     uint64 `json:"valid_seq"`
	ValidatedSeq uint64 `json:"validated_seq"`
	HeldBy       string `json:"held_by"`
	Healthy      bool   `json:"healthy"`
	Volumes      []struct {
		Name        string `json:"name"`
		Secondaries []struct {
			ID           string  `json:"id"`
			Addr         string  `json:"addr"`
			State        string  `json:"state"`
			Connected    bool    `json:"connected"`
			PreparedSeq  uint64  `json:"prepared_seq"`
			AppliedSeq   uint64  `json:"applied_seq"`
			LagBatches   uint64  `json:"lag_batches"`
			LagBytes     uint64  `json:"lag_bytes"`
			LagSeconds   float64 `json:"lag_seconds"`
			Suspended    bool    `json:"suspended"`
			DirtyRegions uint64  `json:"dirty_regions"`
		} `json:"secondaries"`
	} `json:"volumes"`
}

// site is the deployment of the secondary tests: one intermediate node,
// primaries a and b, and a secondary of each.
type site struct {
	base    string
	nodes   []*interNode
	addrs   []string
	prim    map[string]mirrorSpec
	sec     map[string]secondarySpec
	pmounts map[string]*mount
	smounts map[string]*mount
}

// startSite starts the intermediate (with the extra flags), the primaries
// and the secondaries of the volumes a and b; secEnv gives each secondary's
// extra environment.
func startSite(t *testing.T, secEnv map[string][]string, interFlags ...string) *site {
	t.Helper()
	return startSiteWith(t, secEnv, nil, interFlags...)
}

// startSiteWith is startSite with primExtra as more flags of the
// primaries.
func startSiteWith(t *testing.T, secEnv map[string][]string, primExtra []string, interFlags ...string) *site {
	t.Helper()
	requireFUSE(t)
	base := t.TempDir()
	s := &site{base: base, prim: map[string]mirrorSpec{}, sec: map[string]secondarySpec{},
		pmounts: map[string]*mount{}, smounts: map[string]*mount{}}
	s.nodes = startIntermediates(t, filepath.Join(base, "inter"), 1, interFlags...)
	s.addrs = nodeAddrs(s.nodes)
	for _, v := range []string{"a", "b"} {
		s.prim[v] = mirrorSpec{volume: v, data: filepath.Join(base, "data", v), mnt: filepath.Join(base, "primary", v), addrs: s.addrs, size: "256MiB",
			extra: primExtra}
		s.pmounts[v] = startMirrored(t, s.prim[v])
	}
	waitState(t, s.addrs, "PAIR", pairTimeout, "a", "b")
	for _, v := range []string{"a", "b"} {
		s.sec[v] = secondarySpec{volume: v, data: filepath.Join(base, "secdata", v), mnt: filepath.Join(base, "secondary", v),
			listen: freeAddr(t), addrs: s.addrs, env: secEnv[v]}
		s.smounts[v] = startSecondary(t, s.sec[v])
	}
	return s
}

// TestSecondaryFollows writes files on two primaries and checks that after
// tricopy wait each replica mount shows them, status reports both
// secondaries in PAIR at the validated point, and, once everything stopped,
// each replica is byte-identical to its primary volume and fsck-clean.
func TestSecondaryFollows(t *testing.T) {
	s := startSite(t, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	want := map[string]map[string][]byte{"a": {}, "b": {}}
	for i := range 40 {
		v := []string{"a", "b"}[i%2]
		name := fmt.Sprintf("dir%d/file%d", i%5, i)
		data := fileData(uint64(i), name, 1+rng.IntN(300<<10))
		path := filepath.Join(s.prim[v].mnt, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := writeSynced(path, data); err != nil {
			t.Fatal(err)
		}
		want[v][name] = data
	}
	// Overwrite and remove some, so the replicas see more than creates.
	for i := 0; i < 40; i += 7 {
		v := []string{"a", "b"}[i%2]
		name := fmt.Sprintf("dir%d/file%d", i%5, i)
		if err := os.Remove(filepath.Join(s.prim[v].mnt, name)); err != nil {
			t.Fatal(err)
		}
		delete(want[v], name)
	}
	waitAll(t, s.addrs)
	for v, files := range want {
		got := readTree(t, s.sec[v].mnt)
		if len(got) != len(files) {
			t.Errorf("replica of %s holds %d files, want %d", v, len(got), len(files))
		}
		for name, data := range files {
			if !bytes.Equal(got[name], data) {
				t.Errorf("replica of %s: %s: %d bytes, want %d (first difference at %d)", v, name, len(got[name]), len(data), firstDiff(got[name], data))
			}
		}
	}
	doc := secondaryStatus(t, s.addrs)
	for _, v := range doc.Volumes {
		if len(v.Secondaries) != 1 {
			t.Fatalf("volume %s has %d secondaries in status, want 1", v.Name, len(v.Secondaries))
		}
		sec := v.Secondaries[0]
		if sec.State != "PAIR" || !sec.Connected || sec.AppliedSeq != doc.ValidatedSeq || sec.Addr != s.sec[v.Name].listen {
			t.Errorf("secondary of %s in status: %+v; validated seq %d, listen %s", v.Name, sec, doc.ValidatedSeq, s.sec[v.Name].listen)
		}
	}
	applied := map[string]uint64{}
	for v := range want {
		n, err := readApplied(s.sec[v].mnt)
		if err != nil {
			t.Fatal(err)
		}
		applied[v] = n
	}
	if applied["a"] != applied["b"] {
		t.Errorf("replicas show different points after wait: a %d, b %d", applied["a"], applied["b"])
	}

	// Byte-identical: stop the primaries, let the secondaries apply
	// everything, stop them and compare the volumes.
	for _, v := range []string{"a", "b"} {
		s.pmounts[v].stop(t)
	}
	waitAll(t, s.addrs)
	for _, v := range []string{"a", "b"} {
		s.smounts[v].stop(t)
		replica := filepath.Join(s.sec[v].data, "replica")
		compareVolumes(t, s.prim[v].data, replica)
		img := filepath.Join(s.base, "fsck-"+v)
		copyIntermediateVolume(t, replica, img)
		fsckClean(t, img)
	}
}

// replicaCheck is the answer of a secondary's GET /v1/fsck.
type replicaCheck struct {
	AppliedSeq uint64 `json:"applied_seq"`
	Report     struct {
		Clean    bool     `json:"clean"`
		Problems []string `json:"problems"`
	} `json:"report"`
}

// checkReplica asks the secondary listening at addr to fsck its replica.
func checkReplica(addr string) (replicaCheck, error) {
	var c replicaCheck
	resp, err := http.Get("http://" + addr + "/v1/fsck")
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return c, err
	}
	if resp.StatusCode != http.StatusOK {
		return c, fmt.Errorf("GET /v1/fsck: %s: %s", resp.Status, body)
	}
	return c, json.Unmarshal(body, &c)
}

// fsckLoop checks the replicas of the secondaries listening at addrs, one
// after the other, until stop is closed, and returns how many checks found
// a clean filesystem and every problem found. A secondary that does not
// answer (restarting) is skipped.
func fsckLoop(addrs []string, stop <-chan struct{}) (done <-chan struct{}, result func() (clean int, problems []string)) {
	var (
		mu     sync.Mutex
		clean  int
		probs  []string
		doneCh = make(chan struct{})
	)
	go func() {
		defer close(doneCh)
		for {
			for _, a := range addrs {
				select {
				case <-stop:
					return
				case <-time.After(200 * time.Millisecond):
				}
				c, err := checkReplica(a)
				if err != nil {
					continue
				}
				mu.Lock()
				if c.Report.Clean {
					clean++
				} else {
					probs = append(probs, fmt.Sprintf("%s at seq %d: %v", a, c.AppliedSeq, c.Report.Problems))
				}
				mu.Unlock()
			}
		}
	}()
	return doneCh, func() (int, []string) {
		mu.Lock()
		defer mu.Unlock()
		return clean, probs
	}
}

// readTree returns the regular files under dir by relative path, skipping
// nothing (the replica's .tricopy is not listed).
func readTree(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(dir, path)
			out[rel] = b
		}
		return nil
	})
	if err != nil {
		t.Fatalf("read tree %s: %v", dir, err)
	}
	return out
}

// secondaryStatus runs tricopy status --json and decodes the secondaries'
// part.
func secondaryStatus(t testing.TB, addrs []string) secondaryStatusDoc {
	t.Helper()
	cmd := command(t, "", tricopyBin, "status", "--intermediate", strings.Join(addrs, ","), "--json", "--timeout", "3s", "--log-format", "text")
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	_ = cmd.Run()
	var doc secondaryStatusDoc
	if err := json.Unmarshal(stdout.Bytes(), &doc); err != nil {
		t.Fatalf("tricopy status --json: %v\n%s", err, stdout.String())
	}
	return doc
}

// dependentWriter writes a blob on primary a and fsyncs it, then appends a
// line naming it with its checksum to an index on primary b and fsyncs
// that, in a loop: every index line's blob was acknowledged before the line
// was written.
type dependentWriter struct {
	aDir, bDir string
	stop       chan struct{}
	done       chan struct{}
	n          atomic.Int64
	err        error
}

func startDependentWriter(aDir, bDir string) *dependentWriter {
	w := &dependentWriter{aDir: aDir, bDir: bDir, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *dependentWriter) run() {
	defer close(w.done)
	rng := rand.New(rand.NewPCG(7, 8))
	idx, err := os.OpenFile(filepath.Join(w.bDir, "index"), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		w.err = err
		return
	}
	defer idx.Close()
	if err := os.MkdirAll(filepath.Join(w.aDir, "blobs"), 0o755); err != nil {
		w.err = err
		return
	}
	for i := 0; ; i++ {
		select {
		case <-w.stop:
			return
		default:
		}
		name := fmt.Sprintf("blob-%06d", i)
		data := fileData(uint64(i), name, 4096+rng.IntN(60<<10))
		if err := writeSynced(filepath.Join(w.aDir, "blobs", name), data); err != nil {
			w.err = fmt.Errorf("write blob %s: %w", name, err)
			return
		}
		sum := sha256.Sum256(data)
		if _, err := fmt.Fprintf(idx, "%s %s\n", name, hex.EncodeToString(sum[:])); err != nil {
			w.err = fmt.Errorf("append index line of %s: %w", name, err)
			return
		}
		if err := idx.Sync(); err != nil {
			w.err = fmt.Errorf("fsync index after %s: %w", name, err)
			return
		}
		w.n.Add(1)
		// A short pause leaves the validated point still now and then,
		// so that readers find both mounts at one point often enough.
		time.Sleep(dependentPause)
	}
}

// dependentPause is the dependent writer's pause between pairs.
const dependentPause = 5 * time.Millisecond

func (w *dependentWriter) finish(t testing.TB) {
	t.Helper()
	close(w.stop)
	<-w.done
	if w.err != nil {
		t.Fatalf("dependent writer: %v", w.err)
	}
}

// cutSample is one read of both replica mounts: the index on b's replica,
// every blob it names on a's replica, and the applied points around them.
type cutSample struct {
	lines      int
	violations []string
	before     [2]uint64 // applied of a, b before the reads
	after      [2]uint64
	err        error // a read failed (a mount restarting): no sample
}

// How many index lines a cut sample checks: the last ones, and random
// earlier ones.
const (
	cutTailLines   = 8
	cutRandomLines = 4
)

// readCut reads both replica mounts as the dependent-writes check does.
func readCut(aMnt, bMnt string) cutSample {
	var s cutSample
	var err error
	if s.before[0], err = readApplied(aMnt); err == nil {
		s.before[1], err = readApplied(bMnt)
	}
	if err != nil {
		s.err = err
		return s
	}
	index, err := os.ReadFile(filepath.Join(bMnt, "index"))
	if errors.Is(err, fs.ErrNotExist) {
		index, err = nil, nil
	}
	if err != nil {
		s.err = err
		return s
	}
	// A line without its newline is an append in progress at this point:
	// the kernel sends a write(2) that crosses a page boundary as two FUSE
	// writes, two batches, and a validated point (like a crash) may fall
	// between them. Only complete lines count.
	index = index[:bytes.LastIndexByte(index, '\n')+1]
	// Check the last lines (where a torn cut shows: the newest index lines
	// against the newest blobs) and a few random earlier ones: reading every
	// blob would take longer than a round, and no sample would be stable.
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(index))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	s.lines = len(lines)
	check := map[int]bool{}
	for i := max(0, len(lines)-cutTailLines); i < len(lines); i++ {
		check[i] = true
	}
	for range cutRandomLines {
		if len(lines) > 0 {
			check[rand.IntN(len(lines))] = true
		}
	}
	for i := range check {
		f := strings.Fields(lines[i])
		if len(f) != 2 {
			s.violations = append(s.violations, fmt.Sprintf("torn index line %q", lines[i]))
			continue
		}
		blob, err := os.ReadFile(filepath.Join(aMnt, "blobs", f[0]))
		if errors.Is(err, fs.ErrNotExist) {
			s.violations = append(s.violations, fmt.Sprintf("index names %s, missing on a's replica", f[0]))
			continue
		}
		if err != nil {
			s.err = err
			return s
		}
		if sum := sha256.Sum256(blob); hex.EncodeToString(sum[:]) != f[1] {
			s.violations = append(s.violations, fmt.Sprintf("blob %s on a's replica does not match its index checksum %.16s (%d bytes, checksum %x)", f[0], f[1], len(blob), sum[:8]))
		}
	}
	if s.after[0], err = readApplied(aMnt); err == nil {
		s.after[1], err = readApplied(bMnt)
	}
	s.err = err
	return s
}

// stable reports whether neither mount moved during the sample.
func (s cutSample) stable() bool { return s.err == nil && s.before == s.after }

// TestSecondaryConsistentCut is the dependent-writes test across hosts: a
// writer puts a blob on a, then an index line naming it on b; readers of
// the two replica mounts, whenever both show one validated point N, must
// find every indexed blob with the right checksum. With the consistent cut
// turned off (the test-only independent apply, b's secondary ahead of a's)
// the same check must find violations, so the test proves something.
func TestSecondaryConsistentCut(t *testing.T) {
	t.Run("consistent", func(t *testing.T) {
		samples, violations := dependentWrites(t, nil, true)
		if len(violations) > 0 {
			t.Fatalf("%d of %d samples at one validated point saw a torn cut; first: %v", len(violations), samples, violations[0])
		}
		if samples < cutMinSamples/2 {
			t.Fatalf("only %d samples at one validated point with index lines: the check saw too little", samples)
		}
	})
	t.Run("independent", func(t *testing.T) {
		env := map[string][]string{
			"a": {"TRICOPY_TEST_INDEPENDENT_APPLY=700ms"},
			"b": {"TRICOPY_TEST_INDEPENDENT_APPLY=0s"},
		}
		samples, violations := dependentWrites(t, env, false)
		if len(violations) == 0 {
			t.Fatalf("independent apply: %d samples and no violation: the check cannot tell a torn cut", samples)
		}
		t.Logf("independent apply: %d violations in %d samples, as there must be; first: %v", len(violations), samples, violations[0])
	})
}

// cutMinSamples is how many stable samples dependentWrites takes at least
// when a minute allows it; the consistent case fails below half of it.
const cutMinSamples = 40

// dependentWrites runs the dependent writer for a while with readers of
// the replica mounts, and returns how many stable samples with index
// lines were taken and the violations they saw. sameN requires both mounts
// to show the same point (the consistent cut); without it a sample only
// needs each mount to stay put.
func dependentWrites(t *testing.T, env map[string][]string, sameN bool) (samples int, violations []string) {
	s := startSite(t, env)
	w := startDependentWriter(s.prim["a"].mnt, s.prim["b"].mnt)
	stopFsck := make(chan struct{})
	fsckDone, fsckResult := fsckLoop([]string{s.sec["a"].listen, s.sec["b"].listen}, stopFsck)
	// Sample for 15 s, longer (up to a minute) on a loaded machine where
	// fewer reads fit between two rounds.
	start := time.Now()
	var mu sync.Mutex
	more := func() bool {
		mu.Lock()
		defer mu.Unlock()
		d := time.Since(start)
		return d < 15*time.Second || (samples < cutMinSamples && d < time.Minute)
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for more() {
				c := readCut(s.sec["a"].mnt, s.sec["b"].mnt)
				if !c.stable() || c.lines == 0 || (sameN && c.before[0] != c.before[1]) {
					continue
				}
				mu.Lock()
				samples++
				for _, v := range c.violations {
					violations = append(violations, fmt.Sprintf("at a=%d b=%d: %s", c.before[0], c.before[1], v))
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	w.finish(t)
	close(stopFsck)
	<-fsckDone
	clean, problems := fsckResult()
	if len(problems) > 0 {
		t.Fatalf("fsck found a damaged replica: %v", problems)
	}
	if clean < 4 {
		t.Fatalf("only %d replica checks ran", clean)
	}
	t.Logf("writer wrote %d blob/index pairs; %d stable samples; %d clean fscks of the replicas", w.n.Load(), samples, clean)
	if w.n.Load() < 20 {
		t.Fatalf("the writer wrote only %d pairs", w.n.Load())
	}
	return samples, violations
}

// TestSecondaryKill SIGKILLs the secondary of b at random instants while
// the dependent writer runs and readers check the cut (3 times; 20 with
// TRICOPY_LONG=1; TRICOPY_SECONDARY_SEED picks the instants). Every restart
// must come back consistent and catch up; no sample at one validated point
// may ever see a torn cut; in the end both replicas hold everything.
func TestSecondaryKill(t *testing.T) { secondaryKill(t, nil) }

// TestSecondaryKillInPlace is TestSecondaryKill with every round of the
// killed secondary written in place (TRICOPY_TEST_IN_PLACE_BYTES=1): a kill
// inside one leaves it interrupted, and the restarted secondary redoes it
// from its stage before it mounts.
func TestSecondaryKillInPlace(t *testing.T) {
	secondaryKill(t, map[string][]string{"b": {"TRICOPY_TEST_IN_PLACE_BYTES=1"}})
}

func secondaryKill(t *testing.T, secEnv map[string][]string) {
	kills := 3
	if os.Getenv("TRICOPY_LONG") == "1" {
		kills = 20
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("TRICOPY_SECONDARY_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("TRICOPY_SECONDARY_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (replay with TRICOPY_SECONDARY_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, 3))
	s := startSite(t, secEnv)
	w := startDependentWriter(s.prim["a"].mnt, s.prim["b"].mnt)
	var (
		stopCheck  = make(chan struct{})
		checked    = make(chan struct{})
		samples    int
		violations []string
	)
	fsckDone, fsckResult := fsckLoop([]string{s.sec["a"].listen, s.sec["b"].listen}, stopCheck)
	var backwards []string
	go func() {
		defer close(checked)
		var seen [2]uint64 // the highest point each mount showed
		for {
			select {
			case <-stopCheck:
				return
			default:
			}
			c := readCut(s.sec["a"].mnt, s.sec["b"].mnt)
			for i, n := range c.before {
				if c.err == nil && n < seen[i] {
					backwards = append(backwards, fmt.Sprintf("mount %d went back from %d to %d", i, seen[i], n))
				}
				if c.err == nil {
					seen[i] = max(seen[i], n)
				}
			}
			if !c.stable() || c.lines == 0 || c.before[0] != c.before[1] {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			samples++
			for _, v := range c.violations {
				violations = append(violations, fmt.Sprintf("at N=%d: %s", c.before[0], v))
			}
		}
	}()
	redone := 0
	for k := range kills {
		time.Sleep(time.Duration(100+rng.IntN(900)) * time.Millisecond)
		t.Logf("kill %d of %d: SIGKILL the secondary of b after %d pairs", k+1, kills, w.n.Load())
		if secEnv != nil && !strings.Contains(s.smounts["b"].stderr.String(), "written in place") {
			t.Fatalf("the secondary of b does not write its rounds in place:\n%s", clip(s.smounts["b"].stderr.String()))
		}
		s.smounts["b"].kill(t)
		s.smounts["b"] = startSecondary(t, s.sec["b"])
		if strings.Contains(s.smounts["b"].stderr.String(), "redoing it from the staged batches") {
			redone++
		}
	}
	t.Logf("%d restarts redid an interrupted in-place round", redone)
	time.Sleep(time.Second)
	close(stopCheck)
	<-checked
	<-fsckDone
	w.finish(t)
	if clean, problems := fsckResult(); len(problems) > 0 || clean == 0 {
		t.Fatalf("fsck of the replicas: %d clean, problems %v", clean, problems)
	}
	if len(backwards) > 0 {
		t.Fatalf("a replica's applied point went back: %v", backwards)
	}
	if len(violations) > 0 {
		t.Fatalf("%d violations in %d samples; first: %s", len(violations), samples, violations[0])
	}
	waitAll(t, s.addrs)
	c := readCut(s.sec["a"].mnt, s.sec["b"].mnt)
	if c.err != nil || len(c.violations) > 0 || c.lines != int(w.n.Load()) {
		t.Fatalf("after wait: %d index lines (want %d), violations %v, err %v", c.lines, w.n.Load(), c.violations, c.err)
	}
	t.Logf("%d kills, %d samples at one validated point, %d pairs, all on both replicas", kills, samples, w.n.Load())
}

// TestSecondaryInitialCopy: a secondary that joins a volume holding 500 MB
// of data, whose journal was trimmed, starts with a copy of the
// intermediate volume (taken while the primary keeps writing), then follows
// the journal; once everything stopped, its replica is byte-identical to
// the primary volume and fsck-clean.
func TestSecondaryInitialCopy(t *testing.T) {
	requireFUSE(t)
	base := t.TempDir()
	nodes := startIntermediates(t, filepath.Join(base, "inter"), 1)
	addrs := nodeAddrs(nodes)
	prim := mirrorSpec{volume: "a", data: filepath.Join(base, "data", "a"), mnt: filepath.Join(base, "primary", "a"), addrs: addrs, size: "1GiB"}
	pm := startMirrored(t, prim)
	waitState(t, addrs, "PAIR", pairTimeout, "a")
	const files, fileSize = 50, 10 << 20
	start := time.Now()
	for i := range files {
		name := fmt.Sprintf("big-%02d", i)
		if err := writeSynced(filepath.Join(prim.mnt, name), fileData(uint64(i), name, fileSize)); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("wrote %d MB on the primary in %v", files*fileSize>>20, time.Since(start).Round(time.Millisecond))
	pollStatus(t, time.Minute, "the journal to be trimmed", addrs, func(doc mirrorStatusDoc, _ int) bool {
		return doc.JournalBytes < 64<<20
	})
	// The writer goes on while the secondary copies.
	if err := os.MkdirAll(filepath.Join(prim.mnt, "during"), 0o755); err != nil {
		t.Fatal(err)
	}
	w := startWriter(filepath.Join(prim.mnt, "during"), 11, 0)
	spec := secondarySpec{volume: "a", data: filepath.Join(base, "secdata", "a"), mnt: filepath.Join(base, "secondary", "a"),
		listen: freeAddr(t), addrs: addrs}
	start = time.Now()
	sm := startSecondary(t, spec)
	t.Logf("secondary mounted after %v", time.Since(start).Round(time.Millisecond))
	if !strings.Contains(sm.stderr.String(), "initial copy done") {
		t.Fatalf("the secondary did not start with a copy:\n%s", clip(sm.stderr.String()))
	}
	w.finish(t)
	if w.err != nil || len(w.acked) == 0 {
		t.Fatalf("the writer during the copy: %d files, error %v", len(w.acked), w.err)
	}
	waitAll(t, addrs)
	got := readTree(t, spec.mnt)
	for i := range files {
		name := fmt.Sprintf("big-%02d", i)
		if !bytes.Equal(got[name], fileData(uint64(i), name, fileSize)) {
			t.Fatalf("replica: %s differs from what the primary wrote", name)
		}
	}
	pm.stop(t)
	waitAll(t, addrs)
	sm.stop(t)
	replica := filepath.Join(spec.data, "replica")
	compareVolumes(t, prim.data, replica)
	img := filepath.Join(base, "fsck-a")
	copyIntermediateVolume(t, replica, img)
	fsckClean(t, img)
}

// TestSecondaryJournalOverflow: with secondary b down, the primaries write
// more than the journal budget. Instead of refusing writes, the
// intermediate suspends b and marks its intermediate bitmap; secondary a
// keeps following with a low lag. When b returns it resynchronises only the
// marked regions (counted: at most the dirty regions' bytes) while its
// mount keeps its last point, then follows again; at the end both replicas
// equal their primaries and are fsck-clean.
func TestSecondaryJournalOverflow(t *testing.T) {
	// The journal also holds what the primaries have not checkpointed
	// (about a second of writes): the writer is paced so that this stays
	// well under the budget on any machine.
	s := startSite(t, nil, "--journal-budget", "64MiB", "--suspend-threshold", "16MiB", "--trim-interval", "100ms")
	before, err := readApplied(s.sec["b"].mnt)
	if err != nil {
		t.Fatal(err)
	}
	s.smounts["b"].stop(t)
	// 96 MiB on b, a little on a, all fsync'd: every write must succeed.
	var maxLag float64
	for i := range 24 {
		name := fmt.Sprintf("big-%02d", i)
		if err := writeSynced(filepath.Join(s.prim["b"].mnt, name), fileData(uint64(i), name, 4<<20)); err != nil {
			t.Fatalf("write %s on b with its secondary down: %v", name, err)
		}
		small := fmt.Sprintf("small-%02d", i)
		if err := writeSynced(filepath.Join(s.prim["a"].mnt, small), fileData(uint64(i), small, 4096)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(150 * time.Millisecond)
		if i%6 == 5 {
			for _, v := range secondaryStatus(t, s.addrs).Volumes {
				for _, sec := range v.Secondaries {
					if sec.ID == "a" {
						maxLag = max(maxLag, sec.LagSeconds)
					}
				}
			}
		}
	}
	// Once the journal dropped everything (with b suspended, nothing holds
	// it), the bitmap holds every region the resync must copy.
	pollStatus(t, time.Minute, "the journal to be trimmed", s.addrs, func(doc mirrorStatusDoc, _ int) bool {
		return doc.JournalBytes < 1<<20
	})
	doc := secondaryStatus(t, s.addrs)
	var dirty uint64
	for _, v := range doc.Volumes {
		for _, sec := range v.Secondaries {
			if sec.ID == "b" {
				if !sec.Suspended || sec.DirtyRegions == 0 {
					t.Fatalf("secondary b after the journal filled: %+v", sec)
				}
				dirty = sec.DirtyRegions
			}
		}
	}
	if maxLag > 5 {
		t.Errorf("secondary a lagged %.1fs while b was suspended", maxLag)
	}
	t.Logf("secondary b suspended with %d dirty regions; secondary a's lag at most %.3fs", dirty, maxLag)
	s.smounts["b"] = startSecondary(t, s.sec["b"])
	waitAll(t, s.addrs)
	m := regexp.MustCompile(`resync staged.* region_blocks=(\d+)`).FindStringSubmatch(s.smounts["b"].stderr.String())
	if m == nil {
		t.Fatalf("secondary b did not resync:\n%s", clip(s.smounts["b"].stderr.String()))
	}
	regionBlocks, _ := strconv.ParseUint(m[1], 10, 64)
	if regionBlocks*4096 > dirty*regionSize {
		t.Errorf("resync copied %d blocks, more than the %d dirty regions hold", regionBlocks, dirty)
	}
	t.Logf("resync copied %d KiB for %d dirty regions (%d KiB)", regionBlocks*4, dirty, dirty*regionSize>>10)
	after, err := readApplied(s.sec["b"].mnt)
	if err != nil || after < before {
		t.Fatalf("b's mount at %d after the resync, %d before (%v)", after, before, err)
	}
	for i := range 24 {
		name := fmt.Sprintf("big-%02d", i)
		got, err := os.ReadFile(filepath.Join(s.sec["b"].mnt, name))
		if err != nil || !bytes.Equal(got, fileData(uint64(i), name, 4<<20)) {
			t.Fatalf("replica of b: %s wrong after the resync (%v)", name, err)
		}
	}
	for _, v := range []string{"a", "b"} {
		s.pmounts[v].stop(t)
	}
	waitAll(t, s.addrs)
	for _, v := range []string{"a", "b"} {
		s.smounts[v].stop(t)
		replica := filepath.Join(s.sec[v].data, "replica")
		compareVolumes(t, s.prim[v].data, replica)
		img := filepath.Join(s.base, "fsck-"+v)
		copyIntermediateVolume(t, replica, img)
		fsckClean(t, img)
	}
}
