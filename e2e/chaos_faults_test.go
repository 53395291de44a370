package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Fault kinds of a chaos schedule.
const (
	faultKill       = "kill"        // SIGKILL a process, restart it after For
	faultKillLeader = "kill-leader" // SIGKILL the intermediate leader of the moment
	faultPause      = "pause"       // SIGSTOP a process, SIGCONT after For
	faultPartition  = "partition"   // cut the link between two sites for For
	faultSlow       = "slow"        // delay a site's traffic by Delay for For
	faultFull       = "full"        // fill a secondary's disk (a small tmpfs) for For
)

// chaosFault is one entry of a schedule.
type chaosFault struct {
	At     time.Duration // from the start of the run
	Kind   string
	Target string        // a process name; two sites "x|y" for a partition; a site for slow
	For    time.Duration // how long the fault lasts
	Delay  time.Duration // the added latency of a slow link
}

func (f chaosFault) String() string {
	s := fmt.Sprintf("%7.1fs %-11s %-6s for %v", f.At.Seconds(), f.Kind, f.Target, f.For.Round(10*time.Millisecond))
	if f.Delay > 0 {
		s += fmt.Sprintf(" (+%v)", f.Delay)
	}
	return s
}

// chaosSchedule derives the faults of a run from its seed: one every 2 to
// 7 s from 5 s on, each lasting at most 15 s, all over 20 s before the run
// ends so that it ends quiet. The same seed, duration and network give the
// same schedule.
func chaosSchedule(seed uint64, d time.Duration, canCut bool, procs, secondaries, sites []string) []chaosFault {
	rng := rand.New(rand.NewPCG(seed, 0x6368616f73))
	between := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(rng.Int64N(int64(hi-lo))) }
	var out []chaosFault
	for at := 5 * time.Second; ; at += between(2*time.Second, 7*time.Second) {
		f := chaosFault{At: at}
		r := rng.IntN(100)
		switch {
		case r < 35:
			f.Kind, f.Target, f.For = faultKill, procs[rng.IntN(len(procs))], between(500*time.Millisecond, 4*time.Second)
		case r < 45:
			f.Kind, f.Target, f.For = faultKillLeader, "leader", between(500*time.Millisecond, 4*time.Second)
		case r < 62 || (!canCut && r < 90):
			f.Kind, f.Target, f.For = faultPause, procs[rng.IntN(len(procs))], between(time.Second, 6*time.Second)
		case r < 70 || !canCut:
			f.Kind, f.Target, f.For = faultFull, secondaries[rng.IntN(len(secondaries))], between(2*time.Second, 8*time.Second)
		case r < 88:
			i := rng.IntN(len(sites))
			j := (i + 1 + rng.IntN(len(sites)-1)) % len(sites)
			f.Kind, f.Target, f.For = faultPartition, sites[i]+"|"+sites[j], between(2*time.Second, 8*time.Second)
		default:
			f.Kind, f.Target, f.For = faultSlow, sites[rng.IntN(len(sites))], between(5*time.Second, 15*time.Second)
			f.Delay = between(20*time.Millisecond, 150*time.Millisecond).Round(time.Millisecond)
		}
		if f.At+f.For > d-20*time.Second {
			return out
		}
		out = append(out, f)
	}
}

// maxActiveFaults is how many faults may be in effect at once; a fault
// whose turn comes while as many are in effect, or whose target is already
// faulted, is skipped (and the log says so).
const maxActiveFaults = 2

// chaosRunner applies a schedule to a cluster and records what happened.
type chaosRunner struct {
	c     *chaosCluster
	start time.Time

	mu      sync.Mutex
	busy    map[string]bool // processes and sites with a fault in effect
	active  int
	events  []string // what was done, with times, for the report
	errs    []string // faults that could not be applied or undone
	applied map[string]int
}

func newChaosRunner(c *chaosCluster) *chaosRunner {
	return &chaosRunner{c: c, busy: map[string]bool{}, applied: map[string]int{}}
}

// logf records an event.
func (r *chaosRunner) logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("%7.1fs ", time.Since(r.start).Seconds())+fmt.Sprintf(format, args...))
}

// fail records a fault that could not be applied or undone.
func (r *chaosRunner) fail(format string, args ...any) {
	r.logf("ERROR: "+format, args...)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// run applies every fault of schedule at its time and returns once every
// fault has been undone. When ctx ends, faults not yet begun are dropped
// and those in effect are undone at once.
func (r *chaosRunner) run(ctx context.Context, schedule []chaosFault) {
	r.start = time.Now()
	var wg sync.WaitGroup
	for _, f := range schedule {
		t := time.NewTimer(time.Until(r.start.Add(f.At)))
		select {
		case <-ctx.Done():
			t.Stop()
			wg.Wait()
			return
		case <-t.C:
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.apply(ctx, f)
		}()
	}
	wg.Wait()
}

// claim marks the targets busy, unless one is or too many faults are in
// effect.
func (r *chaosRunner) claim(targets ...string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.active >= maxActiveFaults {
		return false
	}
	for _, t := range targets {
		if r.busy[t] {
			return false
		}
	}
	// At most one intermediate node is down or paused at a time, so that
	// the cluster keeps a quorum through process faults (partitions may
	// still take it away).
	if strings.HasPrefix(targets[0], "i") && len(targets) == 1 {
		for _, p := range r.c.inter {
			if r.busy[p.name] {
				return false
			}
		}
	}
	r.active++
	for _, t := range targets {
		r.busy[t] = true
	}
	return true
}

func (r *chaosRunner) release(targets ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.active--
	for _, t := range targets {
		delete(r.busy, t)
	}
}

// hold waits for d or until ctx ends.
func hold(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// apply applies f, waits f.For, and undoes it.
func (r *chaosRunner) apply(ctx context.Context, f chaosFault) {
	target := f.Target
	if f.Kind == faultKillLeader {
		leader, err := chaosLeader(r.c.addrs)
		if err != nil || leader == "" {
			r.logf("skip %v: no leader known (%v)", f, err)
			return
		}
		target = leader
	}
	targets := []string{target}
	if f.Kind == faultPartition {
		targets = strings.Split(target, "|")
	}
	if !r.claim(targets...) {
		r.logf("skip %v: target busy or %d faults in effect", f, maxActiveFaults)
		return
	}
	defer r.release(targets...)
	r.mu.Lock()
	r.applied[f.Kind]++
	r.mu.Unlock()
	switch f.Kind {
	case faultKill, faultKillLeader:
		p := r.c.proc(target)
		r.logf("SIGKILL %s (%s)", p.name, f.Kind)
		if err := p.kill(); err != nil {
			r.fail("kill %s: %v", p.name, err)
			return
		}
		hold(ctx, f.For)
		r.logf("restart %s", p.name)
		// The restart must happen even when the run is over: use a
		// context of its own, bounded by the ready timeout.
		if err := p.start(context.Background()); err != nil {
			r.fail("restart %s: %v", p.name, err)
			return
		}
		r.logf("%s ready again", p.name)
	case faultPause:
		p := r.c.proc(target)
		r.logf("SIGSTOP %s", p.name)
		if err := p.signal(syscall.SIGSTOP, false); err != nil {
			r.fail("pause %s: %v", p.name, err)
			return
		}
		hold(ctx, f.For)
		r.logf("SIGCONT %s", p.name)
		if err := p.signal(syscall.SIGCONT, false); err != nil {
			r.fail("resume %s: %v", p.name, err)
		}
	case faultPartition:
		r.logf("cut %s-%s", targets[0], targets[1])
		if err := r.c.net.partition(targets[0], targets[1], true); err != nil {
			r.fail("cut %s: %v", target, err)
			return
		}
		hold(ctx, f.For)
		r.logf("heal %s-%s", targets[0], targets[1])
		if err := r.c.net.partition(targets[0], targets[1], false); err != nil {
			r.fail("heal %s: %v", target, err)
		}
	case faultFull:
		p := r.c.proc(target)
		free, err := fillDisk(p.data)
		if err != nil {
			r.fail("fill the disk of %s: %v", p.name, err)
			return
		}
		r.logf("disk of %s full (%d bytes were free)", p.name, free)
		p.setFull(true)
		hold(ctx, f.For)
		if err := os.Remove(filepath.Join(p.data, ballastName)); err != nil {
			r.fail("free the disk of %s: %v", p.name, err)
		}
		p.setFull(false)
		// A secondary that met the full disk has stopped following
		// (FAILED, or exited): the operator's move, once there is
		// room again, is a restart.
		if st, err := secondaryState(p.listen); p.running() && (err != nil || st != "FAILED") {
			r.logf("disk of %s free again; it is %s", p.name, st)
			return
		}
		r.logf("disk of %s free again; restarting it", p.name)
		if p.running() {
			if err := p.kill(); err != nil {
				r.fail("kill %s: %v", p.name, err)
				return
			}
		} else if err := p.removeDeadMount(); err != nil {
			r.fail("remove the mount of %s: %v", p.name, err)
			return
		}
		if err := p.start(context.Background()); err != nil {
			r.fail("restart %s: %v", p.name, err)
		}
	case faultSlow:
		r.logf("slow %s by %v", target, f.Delay)
		if err := r.c.net.slow(target, f.Delay); err != nil {
			r.fail("slow %s: %v", target, err)
			return
		}
		hold(ctx, f.For)
		r.logf("unslow %s", target)
		if err := r.c.net.slow(target, 0); err != nil {
			r.fail("unslow %s: %v", target, err)
		}
	}
}

// ballastName is the file a full-disk fault fills a disk with.
const ballastName = "chaos-ballast"

// fillDisk allocates every free block of the filesystem holding dir to a
// ballast file in dir and returns how many bytes were free.
func fillDisk(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, err
	}
	free := int64(st.Bavail) * st.Bsize
	f, err := os.Create(filepath.Join(dir, ballastName))
	if err != nil {
		return free, err
	}
	defer f.Close()
	// Allocate in steps: the last one may not fit exactly.
	for off, step := int64(0), int64(16<<20); step >= 4096; {
		if err := unix.Fallocate(int(f.Fd()), 0, off, step); err != nil {
			step /= 2
			continue
		}
		off += step
	}
	return free, nil
}

// secondaryState asks a secondary's admin API for its state.
func secondaryState(addr string) (string, error) {
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + "/v1/status")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var st struct {
		State string `json:"state"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return "", err
	}
	return st.State, nil
}

// report returns the events and the count of faults applied per kind.
func (r *chaosRunner) report() (events []string, applied map[string]int, errs []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	applied = map[string]int{}
	for k, v := range r.applied {
		applied[k] = v
	}
	return append([]string(nil), r.events...), applied, append([]string(nil), r.errs...)
}

// chaosStatus is the part of `tricopy status --json` the chaos test reads.
type chaosStatus struct {
	Leader       string   `json:"leader"`
	ValidatedSeq uint64   `json:"validated_seq"`
	CommittedSeq uint64   `json:"committed_seq"`
	Healthy      bool     `json:"healthy"`
	Problems     []string `json:"problems"`
	Volumes      []struct {
		Name        string `json:"name"`
		State       string `json:"state"`
		Secondaries []struct {
			ID         string `json:"id"`
			State      string `json:"state"`
			AppliedSeq uint64 `json:"applied_seq"`
		} `json:"secondaries"`
	} `json:"volumes"`
}

// chaosStatusOf runs `tricopy status --json` (bounded to 20 s) and
// returns the document and the exit code.
func chaosStatusOf(addrs []string) (chaosStatus, int, error) {
	var doc chaosStatus
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tricopyBin, "status", "--json", "--intermediate", strings.Join(addrs, ","), "--log-format", "text")
	cmd.Env = childEnv()
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		return doc, -1, fmt.Errorf("tricopy status: %w", err)
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return doc, code, fmt.Errorf("tricopy status (exit %d): %w: %s", code, err, clip(string(out)))
	}
	return doc, code, nil
}

// chaosLeader returns the id of the intermediate leader.
func chaosLeader(addrs []string) (string, error) {
	doc, _, err := chaosStatusOf(addrs)
	return doc.Leader, err
}
