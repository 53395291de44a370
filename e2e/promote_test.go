package e2e

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// promoteDoc is `tricopy promote --json`.
type promoteDoc struct {
	PromotionID string  `json:"promotion_id"`
	N           uint64  `json:"n"`
	Drained     bool    `json:"drained"`
	Already     bool    `json:"already"`
	TookSeconds float64 `json:"took_seconds"`
	Volumes     []struct {
		Volume           string `json:"volume"`
		Secondary        string `json:"secondary"`
		Epoch            uint64 `json:"epoch"`
		UnappliedBatches int    `json:"unapplied_batches"`
		UnappliedBytes   int64  `json:"unapplied_bytes"`
		Exported         string `json:"exported"`
	} `json:"volumes"`
}

// promote runs `tricopy promote --json` against the secondary at addr with
// the extra flags and returns its result; it fails t unless it exits 0.
func promote(t testing.TB, addr string, extra ...string) promoteDoc {
	t.Helper()
	args := append([]string{"promote", "--secondary", addr, "--json", "--log-format", "text"}, extra...)
	out := run(t, "", tricopyBin, args...)
	var doc promoteDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("tricopy promote --json: %v\n%s", err, out)
	}
	t.Logf("tricopy promote: %s", strings.TrimSpace(out))
	return doc
}

// startPromoted restarts a promoted secondary: it mounts its volume
// read-write.
func startPromoted(t *testing.T, spec secondarySpec) *mount {
	t.Helper()
	args := []string{"secondary", "--volume", spec.volume, "--data", spec.data, "--mountpoint", spec.mnt,
		"--intermediate", strings.Join(spec.addrs, ","), "--listen", spec.listen, "--log-format", "text"}
	return launchReady(t, spec.mnt, spec.data, "mounted promoted volume", spec.env, secondaryMountTimeout, args...)
}

// promotionStatusDoc is the part of `tricopy status --json` about
// promotions.
type promotionStatusDoc struct {
	Volumes []struct {
		Name       string `json:"name"`
		Epoch      uint64 `json:"epoch"`
		State      string `json:"state"`
		Promotions []struct {
			PromotionID string `json:"promotion_id"`
			Epoch       uint64 `json:"epoch"`
			Seq         uint64 `json:"seq"`
		} `json:"promotions"`
		StalePrimary *struct {
			Epoch uint64 `json:"epoch"`
		} `json:"stale_primary"`
	} `json:"volumes"`
	Problems []string `json:"problems"`
}

// TestPromoteDrained kills both primaries with the intermediate alive and
// promotes the far site: nothing any primary acknowledged is lost, the
// mounts turn read-write in place (a shell's working directory in them stays
// valid), the new primaries mirror at epoch 2, an old primary restarted is
// fenced (read-only, its writes fail), a second promote changes nothing, and
// a promoted secondary restarted comes back read-write.
func TestPromoteDrained(t *testing.T) {
	s := startSite(t, nil)
	want := map[string][]byte{}
	for i := range 15 {
		for _, v := range []string{"a", "b"} {
			name := fmt.Sprintf("f%02d", i)
			data := fileData(uint64(i), v+name, 3000+i*7000)
			if err := writeSynced(filepath.Join(s.prim[v].mnt, name), data); err != nil {
				t.Fatal(err)
			}
			want[v+"/"+name] = data
		}
	}
	// A process whose working directory is the replica mount of a.
	sh := exec.Command("sh", "-c", "read x; pwd > /dev/null && cat f00 > /dev/null && echo promoted-ok > here.txt && echo done")
	sh.Dir = s.sec["a"].mnt
	stdin, err := sh.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var shOut strings.Builder
	sh.Stdout = &shOut
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	defer sh.Process.Kill()

	for _, v := range []string{"a", "b"} {
		s.pmounts[v].kill(t)
	}
	start := time.Now()
	doc := promote(t, s.sec["b"].listen)
	t.Logf("promote took %v", time.Since(start))
	if !doc.Drained || doc.Already || len(doc.Volumes) != 2 {
		t.Fatalf("promote: %+v, want a drained promotion of two volumes", doc)
	}
	for _, v := range doc.Volumes {
		if v.Epoch != 2 || v.UnappliedBatches != 0 {
			t.Errorf("volume %s: %+v, want epoch 2 and nothing left unapplied", v.Volume, v)
		}
	}
	// Every acknowledged write is on the promoted mounts, which take writes.
	for key, data := range want {
		v, name, _ := strings.Cut(key, "/")
		checkFile(t, filepath.Join(s.sec[v].mnt, name), data)
	}
	for _, v := range []string{"a", "b"} {
		if _, err := os.Stat(filepath.Join(s.sec[v].mnt, ".tricopy")); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: .tricopy after promotion: %v", v, err)
		}
		data := fileData(99, v+"after", 200_000)
		if err := writeSynced(filepath.Join(s.sec[v].mnt, "after"), data); err != nil {
			t.Fatalf("write on promoted %s: %v", v, err)
		}
		want[v+"/after"] = data
	}
	io.WriteString(stdin, "go\n")
	if err := sh.Wait(); err != nil || strings.TrimSpace(shOut.String()) != "done" {
		t.Fatalf("a shell whose working directory is the mount: %v, output %q", err, shOut.String())
	}
	// The intermediate knows the promotion, and the new primaries mirror.
	st := pollStatus(t, 30*time.Second, "both volumes in PAIR at epoch 2", s.addrs, func(doc mirrorStatusDoc, _ int) bool {
		for _, v := range []string{"a", "b"} {
			if vs := doc.volume(v); vs == nil || vs.Epoch != 2 || vs.State != "PAIR" || !vs.PrimaryConnected {
				return false
			}
		}
		return true
	})
	t.Logf("status after promote: committed seq %d", st.CommittedSeq)
	var pst promotionStatusDoc
	if err := json.Unmarshal([]byte(run(t, "", tricopyBin, "status", "--intermediate", strings.Join(s.addrs, ","), "--json")), &pst); err != nil {
		t.Fatal(err)
	}
	for _, v := range pst.Volumes {
		if len(v.Promotions) != 1 || v.Promotions[0].PromotionID != doc.PromotionID || v.Promotions[0].Seq != doc.N || v.Promotions[0].Epoch != 2 {
			t.Errorf("status of volume %s: promotions %+v, want %s at seq %d", v.Name, v.Promotions, doc.PromotionID, doc.N)
		}
	}

	// Split brain: the old primary of a comes back fenced, read-only.
	old := startMirrored(t, s.prim["a"])
	err = writeSynced(filepath.Join(s.prim["a"].mnt, "split-brain"), []byte("must not be written"))
	if !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write on the old primary after promote: %v, want EROFS", err)
	}
	if !strings.Contains(old.stderr.String(), "fenced") {
		t.Errorf("the old primary does not say it is fenced:\n%s", clip(old.stderr.String()))
	}
	checkFile(t, filepath.Join(s.prim["a"].mnt, "f00"), want["a/f00"])
	// tricopy status reports the stale primary (exit 1: a problem).
	pst = promotionStatusDoc{}
	if err := json.Unmarshal([]byte(runStatus(t, s.addrs)), &pst); err != nil {
		t.Fatal(err)
	}
	for _, v := range pst.Volumes {
		if v.Name == "a" && (v.StalePrimary == nil || v.StalePrimary.Epoch != 1) {
			t.Errorf("status of volume a after the old primary came back: stale primary %+v, want epoch 1", v.StalePrimary)
		}
	}
	if !strings.Contains(strings.Join(pst.Problems, "; "), "stale epoch 1") {
		t.Errorf("status problems %v do not name the stale primary", pst.Problems)
	}
	old.stop(t)
	if _, err := os.Stat(filepath.Join(s.sec["a"].mnt, "split-brain")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the old primary's write reached the new one: %v", err)
	}

	// Promote again: nothing changes.
	again := promote(t, s.sec["a"].listen)
	if !again.Already || again.PromotionID != doc.PromotionID || again.N != doc.N {
		t.Fatalf("promote again: %+v, want the first promotion, already done", again)
	}

	// A promoted secondary restarted serves its volume read-write.
	s.smounts["a"].stop(t)
	startPromoted(t, s.sec["a"])
	for key, data := range want {
		if v, name, _ := strings.Cut(key, "/"); v == "a" {
			checkFile(t, filepath.Join(s.sec[v].mnt, name), data)
		}
	}
	if err := writeSynced(filepath.Join(s.sec["a"].mnt, "after-restart"), []byte("x")); err != nil {
		t.Fatalf("write after restarting the promoted secondary: %v", err)
	}
}

// TestPromoteDisaster is the database test: sqlite3 in WAL mode commits
// transactions on primary a; after each commit the writer appends the
// transaction's id to a log on primary b and fsyncs it. The intermediate
// and both primaries are SIGKILLed at a random moment, and the far site is
// promoted without the intermediate: on the promoted mounts the database
// passes PRAGMA integrity_check, and its transactions are exactly the ids
// of the log, or those and the one whose log line was not written yet (the
// consistent cut). TRICOPY_LONG=1 repeats it 10 times.
func TestPromoteDisaster(t *testing.T) {
	requireFUSE(t, "sqlite3")
	rounds := 1
	if os.Getenv("TRICOPY_LONG") == "1" {
		rounds = 10
	}
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv("TRICOPY_PROMOTE_SEED"); v != "" {
		seed, _ = strconv.ParseUint(v, 10, 64)
	}
	t.Logf("seed %d (replay: TRICOPY_PROMOTE_SEED=%d)", seed, seed)
	for r := range rounds {
		t.Run(fmt.Sprintf("round%d", r+1), func(t *testing.T) { disasterRound(t, seed+uint64(r)) })
	}
}

func disasterRound(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 7))
	s := startSite(t, nil)
	db := filepath.Join(s.prim["a"].mnt, "app.db")
	logPath := filepath.Join(s.prim["b"].mnt, "tx.log")
	waitGroupKnown(t, s)
	w := startTxWriter(t, db, logPath)
	defer w.stop()
	waitFor(t, time.Minute, "20 logged transactions", func() bool { return w.logged() >= 20 })
	time.Sleep(time.Duration(rng.IntN(2000)) * time.Millisecond)
	s.nodes[0].p.kill(t)
	for _, v := range []string{"a", "b"} {
		s.pmounts[v].kill(t)
	}
	w.stop()
	t.Logf("the writer logged %d transactions before the disaster", w.logged())

	doc := promote(t, s.sec["a"].listen, "--intermediate-timeout", "2s", "--export-unapplied", filepath.Join(s.base, "unapplied"))
	if doc.Drained || len(doc.Volumes) != 2 {
		t.Fatalf("promote without the intermediate: %+v", doc)
	}
	for _, v := range doc.Volumes {
		if v.Epoch != 2 || v.Exported == "" {
			t.Errorf("volume %s: %+v, want epoch 2 and an export", v.Volume, v)
		}
	}
	pdb := filepath.Join(s.sec["a"].mnt, "app.db")
	if out := strings.TrimSpace(run(t, "", "sqlite3", pdb, "PRAGMA integrity_check;")); out != "ok" {
		t.Fatalf("integrity_check on the promoted database: %q", out)
	}
	ids := parseIDs(t, run(t, "", "sqlite3", pdb, "SELECT id FROM t ORDER BY id;"), "database")
	logData, err := os.ReadFile(filepath.Join(s.sec["b"].mnt, "tx.log"))
	if err != nil {
		t.Fatal(err)
	}
	if i := strings.LastIndexByte(string(logData), '\n'); i >= 0 {
		logData = logData[:i+1] // up to the last complete line
	} else {
		logData = nil
	}
	logged := parseIDs(t, string(logData), "log")
	t.Logf("promoted at seq %d: the database holds %d transactions, the log %d", doc.N, len(ids), len(logged))
	if len(ids) < len(logged) || len(ids) > len(logged)+1 {
		t.Fatalf("the database holds transactions 1..%d, the log 1..%d: not one consistent cut", len(ids), len(logged))
	}
	// The promoted database takes transactions.
	run(t, "", "sqlite3", pdb, fmt.Sprintf("INSERT INTO t VALUES (%d, randomblob(100));", len(ids)+1))

	// The intermediate comes back: the promoted volumes attach (it learns
	// the promotion at N, fencing the old primaries) and resynchronise, then
	// mirror again.
	s.nodes[0].restart(t)
	pollStatus(t, time.Minute, "both promoted volumes attached, in PAIR at epoch 2", s.addrs, func(doc mirrorStatusDoc, _ int) bool {
		for _, v := range []string{"a", "b"} {
			if vs := doc.volume(v); vs == nil || vs.Epoch != 2 || vs.State != "PAIR" || !vs.PrimaryConnected {
				return false
			}
		}
		return true
	})
	if err := writeSynced(filepath.Join(s.sec["b"].mnt, "after-attach"), []byte("mirrored again")); err != nil {
		t.Fatalf("write on promoted b after attach: %v", err)
	}
	// An old primary that comes back now is fenced.
	startMirrored(t, s.prim["a"])
	if err := writeSynced(filepath.Join(s.prim["a"].mnt, "split-brain"), []byte("x")); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write on the old primary after the intermediate learned the promotion: %v, want EROFS", err)
	}
}

// parseIDs reads one id per line and checks they are 1, 2, 3, ...
func parseIDs(t testing.TB, text, what string) []int {
	t.Helper()
	var ids []int
	for line := range strings.Lines(text) {
		id, err := strconv.Atoi(strings.TrimSpace(line))
		if err != nil {
			t.Fatalf("%s: line %q", what, line)
		}
		if id != len(ids)+1 {
			t.Fatalf("%s: id %d after %d ids: not contiguous", what, id, len(ids))
		}
		ids = append(ids, id)
	}
	return ids
}

// txWriter runs sqlite3 on a database and logs each committed transaction's
// id to a file on another volume, fsynced, after the commit returned.
type txWriter struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	n    int
	once sync.Once
	done chan struct{}
}

func startTxWriter(t *testing.T, db, logPath string) *txWriter {
	t.Helper()
	w := &txWriter{cmd: exec.Command("sqlite3", "-batch", db), done: make(chan struct{})}
	stdin, err := w.cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(stdin, "PRAGMA journal_mode=WAL;\nPRAGMA synchronous=FULL;\nCREATE TABLE t(id INTEGER PRIMARY KEY, pad BLOB);\n")
	go func() {
		defer close(w.done)
		defer logf.Close()
		out := bufio.NewScanner(stdout)
		for id := 1; ; id++ {
			fmt.Fprintf(stdin, "BEGIN; INSERT INTO t VALUES (%d, randomblob(%d)); COMMIT; SELECT 'committed ' || %d;\n", id, 500+id%3000, id)
			for {
				if !out.Scan() {
					return
				}
				if out.Text() == fmt.Sprintf("committed %d", id) {
					break
				}
			}
			if _, err := fmt.Fprintf(logf, "%d\n", id); err != nil {
				return
			}
			if err := logf.Sync(); err != nil {
				return
			}
			w.mu.Lock()
			w.n = id
			w.mu.Unlock()
		}
	}()
	return w
}

// logged returns the number of transactions logged so far.
func (w *txWriter) logged() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}

// stop kills sqlite3 and waits for the writer to end.
func (w *txWriter) stop() {
	w.once.Do(func() {
		_ = w.cmd.Process.Kill()
		_ = w.cmd.Wait()
		<-w.done
	})
}

// TestBenchFailover runs `tricopy bench failover` on small volumes, so the
// benchmark keeps working (its figures are for `make bench`, not for a
// test).
func TestBenchFailover(t *testing.T) {
	requireFUSE(t)
	out := run(t, "", tricopyBin, "bench", "failover", "--dir", t.TempDir(), "--size", "64MiB", "--backlog", "8MiB",
		"--log-format", "text", "--log-level", "warn")
	if !strings.Contains(out, "| staged backlog at the disaster |") || !strings.Contains(out, "Target: RTO under") {
		t.Fatalf("tricopy bench failover printed no report:\n%s", out)
	}
	t.Logf("%s", out)
}

// waitGroupKnown waits until every secondary of the site knows the others
// (a promotion without the intermediate needs it).
func waitGroupKnown(t *testing.T, s *site) {
	t.Helper()
	waitFor(t, 30*time.Second, "the secondaries to know each other", func() bool {
		for _, v := range []string{"a", "b"} {
			var st struct {
				Peers []struct{ ID string } `json:"peers"`
			}
			resp, err := http.Get("http://" + s.sec[v].listen + "/v1/status")
			if err != nil {
				return false
			}
			err = json.NewDecoder(resp.Body).Decode(&st)
			resp.Body.Close()
			if err != nil || len(st.Peers) != 2 {
				return false
			}
		}
		return true
	})
}

// runStatus runs `tricopy status --json`, whatever its exit code, and
// returns its output.
func runStatus(t testing.TB, addrs []string) string {
	t.Helper()
	out, err := command(t, "", tricopyBin, "status", "--intermediate", strings.Join(addrs, ","), "--json").Output()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("tricopy status: %v", err)
	}
	return string(out)
}
