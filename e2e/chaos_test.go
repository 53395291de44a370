package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The chaos test runs the whole deployment (three intermediate nodes, the
// primaries of a and b, a secondary of each) as real processes under a
// seeded schedule of faults while workloads write, and checks the
// invariants all the time and at the end. Settings come from the
// environment so that `make chaos` can pass them:
//
//	TRICOPY_CHAOS_SEEDS     comma-separated seeds (default 1,2,3: what CI runs)
//	TRICOPY_CHAOS_DURATION  length of each run (default 2m)
//	TRICOPY_CHAOS_NET       loopback or netns (default: netns when ip(8) and
//	                        nsenter(1) work, else loopback)
//	TRICOPY_CHAOS_BREAK     the test of the tester: break an invariant on
//	                        purpose and require the run to catch it:
//	                        independent-apply (secondaries apply without
//	                        the common validated point: a torn cut) or
//	                        ack-before-commit (primaries acknowledge writes
//	                        before the intermediate commits them: a lost
//	                        acknowledged write once a primary is killed)
//
// A failing run prints its seed, its schedule and what happened, and
// TRICOPY_CHAOS_SEEDS=<seed> replays the schedule.

// chaosConvergeTimeout bounds the time from the end of the faults to every
// pair in PAIR and every secondary at the validated point.
const chaosConvergeTimeout = 3 * time.Minute

// Leak bounds: a process that ran from start to end may end with at most
// this many more goroutines and file descriptors than it had when the
// cluster first came up, and no process with more than the caps.
const (
	chaosGoroutineGrowth = 60
	chaosFDGrowth        = 40
	chaosGoroutineCap    = 2000
	chaosFDCap           = 1000
)

// chaosSecondaryDisk is the size of each secondary's disk (a tmpfs).
const chaosSecondaryDisk = "512m"

// mountTmpfs mounts a tmpfs of size at dir.
func mountTmpfs(dir, size string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		return fmt.Errorf("mount a tmpfs at %s: %w", dir, err)
	}
	return nil
}

// chaosSettings are the settings of TestChaos.
type chaosSettings struct {
	seeds    []uint64
	duration time.Duration
	net      string
	broken   string
}

func chaosSettingsFromEnv(t *testing.T) chaosSettings {
	s := chaosSettings{seeds: []uint64{1, 2, 3}, duration: 2 * time.Minute, net: os.Getenv("TRICOPY_CHAOS_NET"),
		broken: os.Getenv("TRICOPY_CHAOS_BREAK")}
	if v := os.Getenv("TRICOPY_CHAOS_SEEDS"); v != "" {
		s.seeds = nil
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(f), 10, 64)
			if err != nil {
				t.Fatalf("TRICOPY_CHAOS_SEEDS=%q: %v", v, err)
			}
			s.seeds = append(s.seeds, n)
		}
	}
	if v := os.Getenv("TRICOPY_CHAOS_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 30*time.Second {
			t.Fatalf("TRICOPY_CHAOS_DURATION=%q: want a duration of at least 30s (%v)", v, err)
		}
		s.duration = d
	}
	if s.net == "" {
		s.net = "loopback"
		if netnsAvailable() == nil {
			s.net = "netns"
		}
	}
	if _, ok := chaosBreaks[s.broken]; !ok && s.broken != "" {
		t.Fatalf("TRICOPY_CHAOS_BREAK=%q: the invariants it can break are: independent-apply, ack-before-commit", s.broken)
	}
	return s
}

// chaosBreak is an invariant the self-test breaks on purpose.
type chaosBreak struct {
	what string // the violation the run must report
	// caught reports whether a problem of the run is that violation.
	caught func(problem string) bool
	// secEnv and primEnv are the switches, by volume.
	secEnv, primEnv map[string][]string
	// primariesOnly aims every kill and pause of the schedule at the
	// primaries, so that the run (of CI's length) meets the bug.
	primariesOnly bool
}

// chaosBreaks are the invariants TRICOPY_CHAOS_BREAK may break.
var chaosBreaks = map[string]chaosBreak{
	// Each secondary applies what it staged on its own, b's at once and
	// a's 700 ms late: a torn cut for every reader of both (the run does
	// not converge either: the secondaries apply outside the protocol).
	"independent-apply": {
		what:    "torn cut",
		caught:  func(p string) bool { return strings.HasPrefix(p, "torn cut") },
		secEnv:  map[string][]string{"a": {"TRICOPY_TEST_INDEPENDENT_APPLY=700ms"}, "b": {"TRICOPY_TEST_INDEPENDENT_APPLY=0s"}},
		primEnv: nil,
	},
	// The primaries acknowledge before the intermediate commits: a primary
	// killed with batches in flight loses writes it acknowledged. The
	// workloads see it as a file in none of the states its operations may
	// have left, a lost index line, blob or transaction, or an index line
	// on b (committed) whose blob a lost (a torn cut on the replicas).
	"ack-before-commit": {
		what: "lost acknowledged write",
		caught: func(p string) bool {
			for _, s := range []string{"lost acknowledged", "acknowledged blob", "lost committed transaction",
				", want one of ", "none of the", "torn cut"} {
				if strings.Contains(p, s) {
					return true
				}
			}
			return false
		},
		primEnv:       map[string][]string{"a": {"TRICOPY_TEST_ACK_BEFORE_COMMIT=1"}, "b": {"TRICOPY_TEST_ACK_BEFORE_COMMIT=1"}},
		primariesOnly: true,
	},
}

// TestChaos runs a schedule per seed.
func TestChaos(t *testing.T) {
	requireFUSE(t)
	cfg := chaosSettingsFromEnv(t)
	for _, seed := range cfg.seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			problems := runChaos(t, seed, cfg)
			if br, ok := chaosBreaks[cfg.broken]; ok {
				var caught []string
				for _, p := range problems {
					if br.caught(p) {
						caught = append(caught, p)
					}
				}
				if len(caught) == 0 {
					t.Fatalf("TRICOPY_CHAOS_BREAK=%s: the run saw no %s: the chaos test cannot see this bug; it saw: %v", cfg.broken, br.what, problems)
				}
				t.Logf("TRICOPY_CHAOS_BREAK=%s: caught, %d violations of the kind seen; the first: %s", cfg.broken, len(caught), caught[0])
				return
			}
			if len(problems) > 0 {
				t.Errorf("seed %d (%s network, %v): %d violations:\n%s\nreplay: make chaos SEED=%d DURATION=%v CHAOS_NET=%s",
					seed, cfg.net, cfg.duration, len(problems), strings.Join(problems, "\n"), seed, cfg.duration, cfg.net)
			}
		})
	}
}

// chaosLeakSample is a process's goroutines and open files.
type chaosLeakSample struct {
	goroutines, fds float64
	run             int // the process's run it was taken in
}

// sampleLeaks scrapes every running process's goroutine and file counts.
func sampleLeaks(t *testing.T, c *chaosCluster) map[string]chaosLeakSample {
	out := map[string]chaosLeakSample{}
	for _, p := range c.procs {
		if !p.running() {
			continue
		}
		m, err := scrape(t, p.metrics)
		if err != nil {
			continue
		}
		p.mu.Lock()
		run := p.nstarts
		p.mu.Unlock()
		out[p.name] = chaosLeakSample{goroutines: m["go_goroutines"], fds: m["process_open_fds"], run: run}
	}
	return out
}

// runChaos runs one schedule and returns the violations it found; it
// fails t for a cluster that cannot run at all.
func runChaos(t *testing.T, seed uint64, cfg chaosSettings) (problems []string) {
	base := t.TempDir()
	var n chaosNet = newLoopbackNet(chaosSites)
	if cfg.net == "netns" {
		nn, err := newNetnsNet(fmt.Sprintf("tc%d", os.Getpid()%10000), chaosSites)
		if err != nil {
			t.Fatalf("network namespaces: %v", err)
		}
		t.Cleanup(func() {
			if err := nn.close(); err != nil {
				t.Errorf("remove the network namespaces: %v", err)
			}
		})
		n = nn
	}
	br := chaosBreaks[cfg.broken]
	c, err := newChaosCluster(base, n, br.secEnv, br.primEnv)
	if err != nil {
		t.Fatal(err)
	}
	var procNames, secNames []string
	for _, p := range c.procs {
		procNames = append(procNames, p.name)
		if p.role == roleSecondary {
			secNames = append(secNames, p.name)
			// A small disk of its own, which the full-disk fault fills.
			if err := mountTmpfs(p.data, chaosSecondaryDisk); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				if err := unix.Unmount(p.data, unix.MNT_DETACH); err != nil {
					t.Errorf("unmount the disk of %s: %v", p.name, err)
				}
			})
		}
	}
	targets := procNames
	if br.primariesOnly {
		targets = nil
		for _, v := range chaosVolumes {
			targets = append(targets, c.prim[v].name)
		}
	}
	schedule := chaosSchedule(seed, cfg.duration, n.canCut(), targets, secNames, chaosSites)
	t.Cleanup(func() {
		if t.Failed() || len(problems) > 0 {
			var b strings.Builder
			fmt.Fprintf(&b, "seed %d, %s network, %v; schedule (%d faults):\n", seed, cfg.net, cfg.duration, len(schedule))
			for _, f := range schedule {
				fmt.Fprintf(&b, "  %v\n", f)
			}
			t.Log(b.String())
			t.Log(c.logs())
		}
		c.kill()
	})
	start := time.Now()
	if err := c.start(t.Context()); err != nil {
		t.Fatalf("start the cluster: %v", err)
	}
	t.Logf("seed %d: cluster up on the %s network in %v; %d faults over %v", seed, cfg.net, time.Since(start).Round(time.Millisecond), len(schedule), cfg.duration)
	baseline := sampleLeaks(t, c)

	dep, err := startChaosDependent(c.prim["a"].mnt, c.prim["b"].mnt, seed)
	if err != nil {
		t.Fatalf("start the dependent writer: %v", err)
	}
	ops := map[string]*chaosOps{}
	for i, v := range chaosVolumes {
		if ops[v], err = startChaosOps(filepath.Join(c.prim[v].mnt, "ops"), seed<<8+uint64(i)); err != nil {
			t.Fatalf("start the file operations on %s: %v", v, err)
		}
	}
	sql, err := startChaosSQL(filepath.Join(c.prim["a"].mnt, "sql"))
	if err != nil {
		t.Fatalf("start the sqlite3 workload: %v", err)
	}
	watch := startChaosWatch(c.sec["a"].mnt, c.sec["b"].mnt, dep, cfg.broken != "")
	stopFsck := make(chan struct{})
	fsckDone, fsckResult := fsckLoop([]string{c.sec["a"].listen, c.sec["b"].listen}, stopFsck)

	// Processes that exit by themselves are failures; the supervisor
	// notes them and starts them again, as systemd would, so the run goes
	// on and finds more.
	superCtx, stopSuper := context.WithCancel(t.Context())
	superDone := make(chan struct{})
	var crashes []string
	go func() {
		defer close(superDone)
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-superCtx.Done():
				return
			case <-tick.C:
			}
			for _, p := range c.procs {
				if e := p.unexpectedExit(); e != "" {
					crashes = append(crashes, e)
					_ = p.removeDeadMount()
					if err := p.start(superCtx); err != nil {
						crashes = append(crashes, fmt.Sprintf("restart %s after it exited: %v", p.name, err))
					}
				}
			}
		}
	}()

	runner := newChaosRunner(c)
	ctx, cancel := context.WithTimeout(t.Context(), cfg.duration)
	runner.run(ctx, schedule)
	<-ctx.Done()
	cancel()
	stopSuper()
	<-superDone
	problems = append(problems, crashes...)
	for _, p := range c.procs {
		if !p.running() {
			problems = append(problems, fmt.Sprintf("%s is not running after the faults ended", p.name))
		}
	}
	events, applied, errs := runner.report()
	for _, e := range errs {
		problems = append(problems, "fault: "+e)
	}
	t.Logf("faults applied: %v; what happened:\n  %s", applied, strings.Join(events, "\n  "))

	// The faults are over: stop writing, and everything must converge.
	for name, s := range map[string]chaosStopper{"dependent writer": dep.chaosStopper, "ops on a": ops["a"].chaosStopper,
		"ops on b": ops["b"].chaosStopper, "sqlite3": sql.chaosStopper} {
		if err := s.halt(time.Minute); err != nil {
			problems = append(problems, fmt.Sprintf("%s: %v", name, err))
		}
	}
	acked, fails := dep.counts()
	t.Logf("dependent writer: %d pairs acknowledged, %d failed operations; ops: a %d acknowledged, %d failed; b %d, %d",
		acked, fails, ops["a"].acked.Load(), ops["a"].fails.Load(), ops["b"].acked.Load(), ops["b"].fails.Load())
	committed, sessions, sqlFails := sql.counts()
	t.Logf("sqlite3: %d transactions committed in %d sessions, %d sessions failed", committed, sessions, sqlFails)
	if acked < 20 {
		problems = append(problems, fmt.Sprintf("the dependent writer acknowledged only %d pairs: the run tested little", acked))
	}
	for _, v := range chaosVolumes {
		// A failed operation leaves its file uncertain until read again.
		ops[v].resolve()
	}
	problems = append(problems, dep.check(c.prim["a"].mnt, c.prim["b"].mnt)...)
	for _, v := range chaosVolumes {
		problems = append(problems, ops[v].check(filepath.Join(c.prim[v].mnt, "ops"))...)
	}
	// Read-write: sqlite3 rolls back a transaction its killed session left.
	problems = append(problems, sql.check(sql.db, false)...)

	convergeTimeout := chaosConvergeTimeout
	if cfg.broken != "" {
		convergeTimeout = 10 * time.Second // it cannot: see TestChaos
	}
	converge := time.Now()
	var last chaosStatus
	var lastCode int
	var lastErr error
	for {
		last, lastCode, lastErr = chaosStatusOf(c.addrs)
		if lastErr == nil && lastCode == 0 && chaosAllPair(last) {
			break
		}
		if time.Since(converge) > convergeTimeout {
			problems = append(problems, fmt.Sprintf("not converged %v after the faults: status exit %d, err %v, %+v", convergeTimeout, lastCode, lastErr, last))
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("converged in %v: validated seq %d of %d committed", time.Since(converge).Round(time.Millisecond), last.ValidatedSeq, last.CommittedSeq)
	if cfg.broken != "" {
		_, _, violations := watch.result()
		_ = watch.halt(time.Minute)
		close(stopFsck)
		<-fsckDone
		return append(problems, violations...)
	}
	waitAll(t, c.addrs)

	samples, points, violations := watch.result()
	if err := watch.halt(time.Minute); err != nil {
		problems = append(problems, fmt.Sprintf("replica watcher: %v", err))
	}
	problems = append(problems, violations...)
	t.Logf("replica watcher: %d samples with a's point at or past b's; highest points a %d, b %d", samples, points[0], points[1])
	if samples < 5 && cfg.broken == "" {
		problems = append(problems, fmt.Sprintf("only %d samples of the replicas with a's point at or past b's: the cut was hardly checked", samples))
	}
	close(stopFsck)
	<-fsckDone
	clean, fsckProblems := fsckResult()
	problems = append(problems, fsckProblems...)
	t.Logf("%d clean fscks of the replicas during the run", clean)

	// The replicas show what the primaries hold.
	problems = append(problems, dep.check(c.sec["a"].mnt, c.sec["b"].mnt)...)
	problems = append(problems, sql.check(filepath.Join(c.sec["a"].mnt, "sql", "chaos.db"), true)...)
	for _, v := range chaosVolumes {
		problems = append(problems, ops[v].check(filepath.Join(c.sec[v].mnt, "ops"))...)
		want, got := readTree(t, c.prim[v].mnt), readTree(t, c.sec[v].mnt)
		for name, data := range want {
			if g, ok := got[name]; !ok || string(g) != string(data) {
				problems = append(problems, fmt.Sprintf("replica of %s: %s differs from the primary (%d bytes, want %d)", v, name, len(g), len(data)))
			}
		}
		for name := range got {
			if _, ok := want[name]; !ok {
				problems = append(problems, fmt.Sprintf("replica of %s holds %s, which the primary does not", v, name))
			}
		}
	}

	// Leaks: the processes that ran throughout against their first
	// sample, every process against the caps.
	end := sampleLeaks(t, c)
	for name, e := range end {
		if e.goroutines > chaosGoroutineCap || e.fds > chaosFDCap {
			problems = append(problems, fmt.Sprintf("%s ends with %v goroutines and %v open files", name, e.goroutines, e.fds))
		}
		if b, ok := baseline[name]; ok && b.run == e.run {
			if e.goroutines > b.goroutines+chaosGoroutineGrowth || e.fds > b.fds+chaosFDGrowth {
				problems = append(problems, fmt.Sprintf("%s leaks: %v goroutines and %v open files at the end, %v and %v at the start",
					name, e.goroutines, e.fds, b.goroutines, b.fds))
			}
		}
	}

	// Stop everything cleanly, the primaries first so that the
	// secondaries apply their last batches, and compare the volumes.
	for _, v := range chaosVolumes {
		if err := c.prim[v].terminate(); err != nil {
			problems = append(problems, err.Error())
		}
	}
	waitAll(t, c.addrs)
	if err := c.stop(); err != nil {
		problems = append(problems, err.Error())
	}
	if len(problems) > 0 {
		return problems
	}
	for _, v := range chaosVolumes {
		replica := filepath.Join(c.sec[v].data, "replica")
		compareVolumes(t, c.prim[v].data, replica)
		for _, nd := range c.inter {
			compareVolumes(t, c.prim[v].data, filepath.Join(nd.data, "volumes", v))
		}
		fsckClean(t, c.prim[v].data)
		img := filepath.Join(base, "fsck-"+v)
		copyIntermediateVolume(t, replica, img)
		fsckClean(t, img)
	}
	if ms, err := fuseMounts(); err != nil {
		t.Fatal(err)
	} else if left := slices.DeleteFunc(ms, func(m string) bool { return !strings.HasPrefix(m, base) }); len(left) > 0 {
		problems = append(problems, fmt.Sprintf("mounts left behind: %v", left))
	}
	return problems
}

// chaosAllPair reports whether every volume and every secondary is in
// PAIR at the validated point.
func chaosAllPair(doc chaosStatus) bool {
	if !doc.Healthy || len(doc.Volumes) != len(chaosVolumes) {
		return false
	}
	for _, v := range doc.Volumes {
		if v.State != "PAIR" || len(v.Secondaries) != 1 {
			return false
		}
		for _, s := range v.Secondaries {
			if s.State != "PAIR" {
				return false
			}
		}
	}
	return true
}
