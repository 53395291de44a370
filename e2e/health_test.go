package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Settings of the health tests.
const (
	// healthFenceTimeout is the --fence-timeout of TestHealthExitCode: long
	// enough that the copy batches a throttled resync keeps in flight (8 of
	// 1 MiB at healthResyncRate) commit well within it on a loaded machine.
	healthFenceTimeout = 10 * time.Second
	// healthResyncRate throttles the path of the primary to the
	// intermediate during the resync, in bytes per second, so that the
	// resync lasts seconds and status sees it.
	healthResyncRate = 4 << 20
	// healthFiles files of 1 MiB are written while the primary is
	// suspended: the regions the resync copies.
	healthFiles = 32
)

// healthDoc is the part of `tricopy status --json` the health tests read.
type healthDoc struct {
	Healthy  bool     `json:"healthy"`
	Problems []string `json:"problems"`
	Volumes  []struct {
		Name             string `json:"name"`
		State            string `json:"state"`
		PrimaryConnected bool   `json:"primary_connected"`
		DirtyRegions     uint64 `json:"dirty_regions"`
		ResyncDone       uint64 `json:"resync_done_regions"`
		ResyncTotal      uint64 `json:"resync_total_regions"`
		Secondaries      []struct {
			ID         string  `json:"id"`
			State      string  `json:"state"`
			AppliedSeq uint64  `json:"applied_seq"`
			LagBatches uint64  `json:"lag_batches"`
			LagSeconds float64 `json:"lag_seconds"`
		} `json:"secondaries"`
	} `json:"volumes"`
}

// healthStatus runs `tricopy status --intermediate addrs --json` with the
// extra flags and returns its document and exit code. A run that printed
// no document fails t.
func healthStatus(t testing.TB, addrs []string, extra ...string) (healthDoc, int) {
	t.Helper()
	var doc healthDoc
	out, code := statusExit(t, addrs, append([]string{"--json"}, extra...)...)
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("tricopy status --json %s (exit %d): %v\n%s", strings.Join(extra, " "), code, err, clip(out))
	}
	return doc, code
}

// statusExit runs `tricopy status --intermediate addrs` with the extra
// flags and returns its standard output and exit code.
func statusExit(t testing.TB, addrs []string, extra ...string) (string, int) {
	t.Helper()
	args := append([]string{"status", "--intermediate", strings.Join(addrs, ","), "--timeout", "3s", "--log-format", "text"}, extra...)
	cmd := command(t, "", tricopyBin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return stdout.String(), ee.ExitCode()
	case err != nil:
		t.Fatalf("tricopy %s: %v\nstderr:\n%s", strings.Join(args, " "), err, clip(stderr.String()))
	}
	return stdout.String(), 0
}

// wantExit fails t unless `tricopy status` (plain and --json, with extra
// flags) exits with code; it returns the JSON document.
func wantExit(t testing.TB, addrs []string, code int, what string, extra ...string) healthDoc {
	t.Helper()
	if out, got := statusExit(t, addrs, extra...); got != code {
		t.Fatalf("%s: tricopy status %s exited %d, want %d\n%s", what, strings.Join(extra, " "), got, code, clip(out))
	}
	doc, got := healthStatus(t, addrs, extra...)
	if got != code {
		js, _ := json.MarshalIndent(doc, "", "  ")
		t.Fatalf("%s: tricopy status --json %s exited %d, want %d\n%s", what, strings.Join(extra, " "), got, code, js)
	}
	if doc.Healthy != (code == 0) {
		t.Fatalf("%s: healthy %v with exit code %d (problems %q)", what, doc.Healthy, code, doc.Problems)
	}
	return doc
}

// pollHealth polls `tricopy status --json` until cond holds, failing t
// after timeout with the last document.
func pollHealth(t testing.TB, timeout time.Duration, what string, addrs []string, cond func(doc healthDoc, code int) bool, extra ...string) (healthDoc, int) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		doc, code := healthStatus(t, addrs, extra...)
		if cond(doc, code) {
			return doc, code
		}
		if time.Now().After(deadline) {
			js, _ := json.MarshalIndent(doc, "", "  ")
			t.Fatalf("timed out after %v waiting for %s; last status (exit %d):\n%s", timeout, what, code, js)
		}
		time.Sleep(statusPoll)
	}
}

// TestHealthExitCode checks `tricopy status` as a health check through the
// life of a mirrored volume with fence level never: exit 0 in PAIR; 1
// while the primary is cut off from the intermediate and suspended (the
// intermediate, which status asks, is up: the cut is a proxy between the
// primary and it; status shows the volume DISCONNECTED, since a suspended
// primary cannot report); 1 during the resync once the path is back
// (throttled by the proxy, so that the resync of 32 MiB lasts seconds),
// with its progress in regions; 0 again once the volume is back in PAIR.
func TestHealthExitCode(t *testing.T) {
	requireFUSE(t)
	const seed = 9
	base := t.TempDir()
	nodes := startIntermediates(t, filepath.Join(base, "inter"), 1)
	addrs := nodeAddrs(nodes)
	px := startTCPProxy(t, nodes[0].listen)
	spec := mirrorSpec{volume: "a", data: filepath.Join(base, "a"), mnt: realPath(t, t.TempDir()), addrs: []string{px.addr()},
		size: "256MiB", extra: []string{"--fence", "never", "--fence-timeout", healthFenceTimeout.String()}}
	m := startMirrored(t, spec)
	if err := writeSynced(filepath.Join(spec.mnt, "paired"), fileData(seed, "paired", 100_000)); err != nil {
		t.Fatal(err)
	}

	// PAIR: healthy.
	pollHealth(t, pairTimeout, "volume a in PAIR and exit code 0", addrs, func(doc healthDoc, code int) bool {
		return code == 0 && len(doc.Volumes) == 1 && doc.Volumes[0].State == "PAIR"
	})
	wantExit(t, addrs, 0, "in PAIR")
	wantExit(t, addrs, 0, "in PAIR, --max-lag without secondaries", "--max-lag", "1ms")

	// Cut the primary off: its next write waits for the fence timeout,
	// then the mirror suspends and writes go on locally, marked.
	px.cut()
	t.Log("path from the primary to the intermediate cut")
	start := time.Now()
	for i := range healthFiles {
		name := fmt.Sprintf("f%02d", i)
		if err := writeSynced(filepath.Join(spec.mnt, name), fileData(seed, name, 1<<20)); err != nil {
			t.Fatalf("write %s with the primary cut off (fence never): %v", name, err)
		}
	}
	t.Logf("%d MiB written in %v with the primary cut off", healthFiles, time.Since(start).Round(time.Millisecond))
	if !strings.Contains(m.stderr.String(), `msg="mirroring suspended`) {
		t.Fatalf("no suspension in the mount's log")
	}
	doc := wantExit(t, addrs, 1, "suspended")
	v := doc.Volumes[0]
	if v.State != "DISCONNECTED" || v.PrimaryConnected {
		t.Fatalf("suspended: volume a in state %q, primary connected %v; want DISCONNECTED, not connected", v.State, v.PrimaryConnected)
	}
	if !containsSubstring(doc.Problems, "volume a is DISCONNECTED") {
		t.Fatalf("suspended: problems %q do not name volume a", doc.Problems)
	}

	// The path is back, throttled: the resync runs for seconds.
	px.heal(healthResyncRate)
	t.Logf("path back, throttled to %d MiB/s", healthResyncRate>>20)
	doc, _ = pollHealth(t, pairTimeout, "volume a in RESYNC", addrs, func(doc healthDoc, code int) bool {
		return len(doc.Volumes) == 1 && doc.Volumes[0].State == "RESYNC" && doc.Volumes[0].ResyncTotal > 0
	})
	v = doc.Volumes[0]
	t.Logf("RESYNC: %d/%d regions, %d dirty", v.ResyncDone, v.ResyncTotal, v.DirtyRegions)
	if doc.Healthy || !containsSubstring(doc.Problems, "volume a is RESYNC") {
		t.Fatalf("RESYNC: healthy %v, problems %q; want unhealthy, naming volume a", doc.Healthy, doc.Problems)
	}
	if written := uint64(healthFiles * (1 << 20) / regionSize); v.ResyncTotal < written || v.ResyncDone > v.ResyncTotal || !v.PrimaryConnected {
		t.Fatalf("RESYNC: %d/%d regions (want a total of at least the %d regions written), primary connected %v",
			v.ResyncDone, v.ResyncTotal, written, v.PrimaryConnected)
	}
	// The progress moves (the primary reports it on its stream, behind
	// the copy batches): seen unless the resync ends first.
	doc, code := pollHealth(t, pairTimeout, "resync progress", addrs, func(doc healthDoc, code int) bool {
		v := doc.Volumes[0]
		if v.State == "RESYNC" && code != 1 {
			t.Fatalf("RESYNC: tricopy status --json exited %d, want 1", code)
		}
		return v.State != "RESYNC" || v.ResyncDone > 0
	})
	if v := doc.Volumes[0]; v.State == "RESYNC" {
		t.Logf("RESYNC: %d/%d regions (exit %d)", v.ResyncDone, v.ResyncTotal, code)
	} else {
		t.Logf("the resync ended (%s, exit %d) before status saw its progress move", v.State, code)
	}

	// Unthrottled, the resync ends: healthy again.
	px.heal(0)
	start = time.Now()
	pollHealth(t, pairTimeout, "volume a back in PAIR and exit code 0", addrs, func(doc healthDoc, code int) bool {
		return code == 0 && doc.Volumes[0].State == "PAIR"
	})
	t.Logf("back in PAIR %v after the throttle was lifted", time.Since(start).Round(time.Millisecond))
	wantExit(t, addrs, 0, "back in PAIR")
	for i := range healthFiles {
		name := fmt.Sprintf("f%02d", i)
		checkFile(t, filepath.Join(spec.mnt, name), fileData(seed, name, 1<<20))
	}
	m.stop(t)
	nodes[0].stop(t)
	compareVolumes(t, spec.data, nodes[0].volumeDir("a"))
}

// TestHealthMaxLag checks --max-lag: a secondary that holds its applies
// (the test-only switch) while its primary writes lags more and more; the
// group stays healthy (exit 0), but not with a --max-lag below the lag
// (exit 1); once it applies again, --max-lag passes again.
func TestHealthMaxLag(t *testing.T) {
	requireFUSE(t)
	const seed = 10
	base := t.TempDir()
	nodes := startIntermediates(t, filepath.Join(base, "inter"), 1)
	addrs := nodeAddrs(nodes)
	spec := mirrorSpec{volume: "a", data: filepath.Join(base, "a"), mnt: realPath(t, t.TempDir()), addrs: addrs}
	m := startMirrored(t, spec)
	hold := filepath.Join(base, "hold")
	sec := startSecondary(t, secondarySpec{volume: "a", data: filepath.Join(base, "sa"), mnt: realPath(t, t.TempDir()),
		listen: freeAddr(t), addrs: addrs, env: []string{"TRICOPY_TEST_HOLD_APPLY=" + hold}})
	pollHealth(t, pairTimeout, "a healthy group", addrs, func(_ healthDoc, code int) bool { return code == 0 })
	wantExit(t, addrs, 0, "following", "--max-lag", "1s")

	if err := os.WriteFile(hold, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Written after the hold: the secondary stages it and does not apply
	// it. The lag is the age of the oldest batch it has not applied.
	if err := writeSynced(filepath.Join(spec.mnt, "held"), fileData(seed, "held", 100_000)); err != nil {
		t.Fatal(err)
	}
	doc, _ := pollHealth(t, time.Minute, "a lag above 2 s", addrs, func(doc healthDoc, code int) bool {
		return code == 0 && len(doc.Volumes) == 1 && len(doc.Volumes[0].Secondaries) == 1 && doc.Volumes[0].Secondaries[0].LagSeconds > 2
	})
	t.Logf("lag %.1fs", doc.Volumes[0].Secondaries[0].LagSeconds)
	wantExit(t, addrs, 0, "lagging, no --max-lag")
	doc = wantExit(t, addrs, 1, "lagging, --max-lag 1s", "--max-lag", "1s")
	if !containsSubstring(doc.Problems, "more than --max-lag 1s") {
		t.Fatalf("lagging: problems %q do not name the lag", doc.Problems)
	}
	wantExit(t, addrs, 0, "lagging, --max-lag 1h", "--max-lag", "1h")

	if err := os.Remove(hold); err != nil {
		t.Fatal(err)
	}
	pollHealth(t, time.Minute, "the lag gone and --max-lag 1s passing", addrs, func(_ healthDoc, code int) bool { return code == 0 }, "--max-lag", "1s")
	sec.stop(t)
	m.stop(t)
}

// containsSubstring reports whether one of list contains sub.
func containsSubstring(list []string, sub string) bool {
	for _, s := range list {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// tcpProxy forwards TCP connections to a target address, and can cut them
// (closing every connection and refusing new ones) and throttle the
// direction toward the target.
type tcpProxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	down  bool
	rate  int // bytes per second toward the target; 0: unlimited
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

// startTCPProxy starts a proxy to target on a free address; it stops at
// the end of the test.
func startTCPProxy(t testing.TB, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		p.mu.Unlock()
		if down {
			c.Close()
			continue
		}
		u, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.down { // cut meanwhile
			p.mu.Unlock()
			c.Close()
			u.Close()
			continue
		}
		p.conns[c], p.conns[u] = true, true
		p.wg.Add(2)
		p.mu.Unlock()
		go p.pipe(u, c, true)
		go p.pipe(c, u, false)
	}
}

// pipe copies from src to dst, throttled when toTarget, and closes both
// when either side ends.
func (p *tcpProxy) pipe(dst, src net.Conn, toTarget bool) {
	defer p.wg.Done()
	defer func() {
		dst.Close()
		src.Close()
		p.mu.Lock()
		delete(p.conns, dst)
		delete(p.conns, src)
		p.mu.Unlock()
	}()
	buf := make([]byte, 16<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			if toTarget {
				p.mu.Lock()
				rate := p.rate
				p.mu.Unlock()
				if rate > 0 {
					time.Sleep(time.Duration(n) * time.Second / time.Duration(rate))
				}
			}
		}
		if err != nil {
			return // EOF, or closed by cut
		}
	}
}

// cut closes every connection and refuses new ones until heal.
func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// heal accepts connections again, throttled to rate bytes per second
// toward the target (0: unlimited); it also changes the rate of the
// connections open.
func (p *tcpProxy) heal(rate int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down, p.rate = false, rate
}

// close stops the proxy and waits for its goroutines.
func (p *tcpProxy) close() {
	p.ln.Close()
	p.cut()
	p.wg.Wait()
}
