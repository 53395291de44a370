package e2e

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// The chaos cluster: the whole three-site deployment as real processes,
// each with its own data directory and address, which the fault schedule
// kills, restarts, pauses and cuts off. Unlike the helpers of the other
// e2e tests it reports errors instead of failing a testing.T, because its
// methods run on the scheduler's and the workloads' goroutines.

// Timeouts of the chaos cluster.
const (
	// chaosReadyTimeout bounds the wait for a (re)started process to be
	// ready: a primary reconciles and may replay, a secondary may copy.
	chaosReadyTimeout = 2 * time.Minute
	// chaosExitTimeout bounds the wait for a process to exit after a signal.
	chaosExitTimeout = 30 * time.Second
)

// Process roles in the chaos cluster.
const (
	roleIntermediate = "intermediate"
	rolePrimary      = "primary"
	roleSecondary    = "secondary"
)

// chaosNet is how the processes of the cluster reach each other: loopback
// addresses (127.0.x.y, one per site) on the host's network, or a network
// namespace per site.
type chaosNet interface {
	// addr returns a new address for a process of site to listen on.
	addr(site string) (string, error)
	// command returns the command line that runs name args in site.
	command(site, name string, args ...string) []string
	// partition cuts (cut) or heals (!cut) the link between two sites.
	partition(a, b string, cut bool) error
	// slow delays (d > 0) or stops delaying (d == 0) site's traffic.
	slow(site string, d time.Duration) error
	// canCut reports whether partition and slow work.
	canCut() bool
	// close removes what the network made.
	close() error
}

// loopbackNet puts each site on its own 127.0.x.y address of the host's
// loopback interface. It cannot cut links: a client follows the leader's
// real address whatever proxy it was given, so the faults it allows are the
// process faults.
type loopbackNet struct {
	ips map[string]string
}

func (n *loopbackNet) addr(site string) (string, error) { return chaosAddr(n.ips[site]) }

func (n *loopbackNet) command(_, name string, args ...string) []string {
	return append([]string{name}, args...)
}

func (n *loopbackNet) partition(a, b string, cut bool) error {
	return errors.New("loopback network cannot cut links")
}

func (n *loopbackNet) slow(site string, d time.Duration) error {
	return errors.New("loopback network cannot slow links")
}

func (n *loopbackNet) canCut() bool { return false }
func (n *loopbackNet) close() error { return nil }

// newLoopbackNet gives every site an address 127.0.(10+k).1.
func newLoopbackNet(sites []string) *loopbackNet {
	n := &loopbackNet{ips: map[string]string{}}
	for k, s := range sites {
		n.ips[s] = fmt.Sprintf("127.0.%d.1", 10+k)
	}
	return n
}

// chaosProc is one tricopy process of the cluster, restartable.
type chaosProc struct {
	name    string // i1, pa, sb, ...
	role    string
	site    string
	volume  string // the volume of a primary or secondary
	data    string
	mnt     string // the FUSE mount it serves; "" for an intermediate
	listen  string // its client or admin address ("" for a primary)
	metrics string // its --metrics address
	ready   string // the line on standard output that says it is ready
	args    []string
	env     []string
	net     chaosNet

	mu       sync.Mutex
	cmd      *exec.Cmd
	stdout   *syncBuffer
	stderr   *syncBuffer
	exited   chan struct{}
	waitErr  error
	expected bool      // the harness ended this run on purpose
	full     bool      // its disk is full: an exit for that reason is expected
	paused   bool      // stopped with SIGSTOP
	runs     []string  // output of the runs that ended, oldest first
	started  time.Time // when the current run started
	nstarts  int
}

// start starts the process and waits until it is ready (its ready line
// printed and, for a mount, the mount in the mount table).
func (p *chaosProc) start(ctx context.Context) error {
	p.mu.Lock()
	if p.cmd != nil && !p.hasExited() {
		p.mu.Unlock()
		return fmt.Errorf("%s: already running", p.name)
	}
	if p.cmd != nil {
		p.runs = append(p.runs, p.output())
	}
	line := p.net.command(p.site, tricopyBin, p.args...)
	cmd := exec.Command(line[0], line[1:]...)
	cmd.Env = append(childEnv(), p.env...)
	stdout, stderr := &syncBuffer{}, &syncBuffer{}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		p.mu.Unlock()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	exited := make(chan struct{})
	p.cmd, p.stdout, p.stderr, p.exited = cmd, stdout, stderr, exited
	p.expected, p.paused, p.started = false, false, time.Now()
	p.nstarts++
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		p.mu.Lock()
		p.waitErr = err
		p.mu.Unlock()
		close(exited)
	}()
	deadline := time.NewTimer(chaosReadyTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if strings.Contains(stdout.String(), p.ready) {
			if p.mnt == "" {
				return nil
			}
			if ok, err := mounted(p.mnt); err != nil || ok {
				return err
			}
		}
		select {
		case <-exited:
			return fmt.Errorf("%s exited before it was ready: %v\nstderr:\n%s", p.name, p.exitErr(), clip(stderr.String()))
		case <-deadline.C:
			return fmt.Errorf("%s not ready after %v\nstderr:\n%s", p.name, chaosReadyTimeout, clip(stderr.String()))
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// hasExited reports whether the current run ended; p.mu is held.
func (p *chaosProc) hasExited() bool {
	select {
	case <-p.exited:
		return true
	default:
		return false
	}
}

// exitErr is the exit status of the current run.
func (p *chaosProc) exitErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitErr
}

// running reports whether the current run is alive.
func (p *chaosProc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd != nil && !p.hasExited()
}

// setFull says whether the process's disk is full on purpose.
func (p *chaosProc) setFull(full bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.full = full
}

// unexpectedExit returns a description of the current run's end if it
// ended without the harness ending it (or, while its disk is full, for
// another reason than the full disk), or "".
func (p *chaosProc) unexpectedExit() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || !p.hasExited() || p.expected {
		return ""
	}
	if p.full && strings.Contains(p.stderr.String(), "no space left on device") {
		p.expected = true
		return ""
	}
	return fmt.Sprintf("%s exited by itself (run %d, started %s): %v\nstderr:\n%s",
		p.name, p.nstarts, p.started.Format("15:04:05.000"), p.waitErr, clip(p.stderr.String()))
}

// signal sends sig to the current run; expected marks a signal that ends
// it.
func (p *chaosProc) signal(sig syscall.Signal, ends bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.hasExited() {
		return fmt.Errorf("%s is not running", p.name)
	}
	if ends {
		p.expected = true
	}
	switch sig {
	case syscall.SIGSTOP:
		p.paused = true
	case syscall.SIGCONT:
		p.paused = false
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s to %s: %w", sig, p.name, err)
	}
	return nil
}

// kill ends the process with SIGKILL (a crash) and removes the dead mount
// it leaves behind.
func (p *chaosProc) kill() error {
	if err := p.signal(syscall.SIGKILL, true); err != nil {
		return err
	}
	if err := p.waitExit(); err != nil {
		return err
	}
	return p.removeDeadMount()
}

// terminate ends the process with SIGTERM and returns an error unless it
// exits 0 with its mount gone.
func (p *chaosProc) terminate() error {
	p.mu.Lock()
	paused := p.paused
	p.mu.Unlock()
	if paused {
		if err := p.signal(syscall.SIGCONT, false); err != nil {
			return err
		}
	}
	if err := p.signal(syscall.SIGTERM, true); err != nil {
		return err
	}
	if err := p.waitExit(); err != nil {
		// Go prints every goroutine's stack on SIGQUIT: say where it
		// hangs.
		_ = p.cmd.Process.Signal(syscall.SIGQUIT)
		_ = p.waitExit()
		_ = p.cmd.Process.Kill()
		return fmt.Errorf("%w; its goroutines after SIGQUIT:\n%s", err, tail(p.stderr.String(), 256<<10))
	}
	if err := p.exitErr(); err != nil {
		return fmt.Errorf("%s after SIGTERM: %w (want exit 0)\nstderr:\n%s", p.name, err, clip(p.stderr.String()))
	}
	if p.mnt != "" {
		if ok, err := mounted(p.mnt); err != nil || ok {
			return errors.Join(err, fmt.Errorf("%s still mounted after %s exited", p.mnt, p.name))
		}
	}
	return nil
}

// waitExit waits for the current run to end.
func (p *chaosProc) waitExit() error {
	p.mu.Lock()
	exited := p.exited
	p.mu.Unlock()
	select {
	case <-exited:
		return nil
	case <-time.After(chaosExitTimeout):
		return fmt.Errorf("%s did not exit within %v", p.name, chaosExitTimeout)
	}
}

// removeDeadMount unmounts the mount a killed process left behind.
func (p *chaosProc) removeDeadMount() error {
	if p.mnt == "" {
		return nil
	}
	if ok, err := mounted(p.mnt); err != nil || !ok {
		return err
	}
	if err := lazyUnmount(p.mnt); err != nil {
		return fmt.Errorf("unmount the dead mount of %s: %w", p.name, err)
	}
	deadline := time.Now().Add(chaosExitTimeout)
	for {
		ok, err := mounted(p.mnt)
		if err != nil || !ok {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the dead mount %s of %s is still there after %v", p.mnt, p.name, chaosExitTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// output is the current run's output; p.mu is held.
func (p *chaosProc) output() string {
	if p.stdout == nil {
		return ""
	}
	return fmt.Sprintf("stdout:\n%s\nstderr:\n%s", clip(p.stdout.String()), clip(p.stderr.String()))
}

// logs returns the output of every run, for a failing test.
func (p *chaosProc) logs() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var b strings.Builder
	for i, r := range p.runs {
		fmt.Fprintf(&b, "=== %s run %d of %d (%s)\n%s\n", p.name, i+1, p.nstarts, strings.Join(p.args, " "), r)
	}
	fmt.Fprintf(&b, "=== %s run %d of %d (%s, exit %v)\n%s\n", p.name, p.nstarts, p.nstarts, strings.Join(p.args, " "), p.waitErr, p.output())
	return b.String()
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "[...]" + s[len(s)-n:]
}

// mounted reports whether mnt is a FUSE mount in this mount namespace.
func mounted(mnt string) (bool, error) {
	ms, err := fuseMounts()
	if err != nil {
		return false, err
	}
	return slices.Contains(ms, mnt), nil
}

// chaosCluster is the deployment: three intermediate nodes (sites i1, i2,
// i3), the primaries of a and b (site p) and their secondaries (site s).
type chaosCluster struct {
	base  string
	net   chaosNet
	procs []*chaosProc
	inter []*chaosProc
	prim  map[string]*chaosProc
	sec   map[string]*chaosProc
	addrs []string // the intermediate nodes' client addresses
}

// chaosSites are the sites of the chaos cluster.
var chaosSites = []string{"p", "i1", "i2", "i3", "s"}

// chaosVolumes are the volumes of the group.
var chaosVolumes = []string{"a", "b"}

// chaosAddr returns a free TCP address on ip, never one it (or freeAddr)
// gave out before.
func chaosAddr(ip string) (string, error) {
	reserved.Lock()
	defer reserved.Unlock()
	for {
		l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			return "", fmt.Errorf("find a free port on %s: %w", ip, err)
		}
		addr := l.Addr().String()
		l.Close()
		// The kernel may hand a port just closed out again: never give
		// one address twice in a process.
		if !reserved.addrs[addr] {
			reserved.addrs[addr] = true
			return addr, nil
		}
	}
}

// newChaosCluster lays out the cluster's processes under base on the
// network n, with secEnv[volume] and primEnv[volume] added to the
// environment of the secondary and the primary of volume (the test-only
// switches of the self-tests); secEnv[volume] goes to the
// volume's secondary; start starts them.
func newChaosCluster(base string, n chaosNet, secEnv, primEnv map[string][]string) (*chaosCluster, error) {
	c := &chaosCluster{base: base, net: n, prim: map[string]*chaosProc{}, sec: map[string]*chaosProc{}}
	var addrErr error
	addr := func(site string) string {
		a, err := n.addr(site)
		addrErr = cmp.Or(addrErr, err)
		return a
	}
	var cluster []string
	raft := map[string]string{}
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("i%d", i)
		raft[id] = addr(id)
		cluster = append(cluster, id+"="+raft[id])
	}
	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("i%d", i)
		p := &chaosProc{name: id, role: roleIntermediate, site: id, data: filepath.Join(base, id),
			listen: addr(id), metrics: addr(id), ready: "serving at", net: n}
		p.args = []string{"intermediate", "--node", id, "--data", p.data, "--listen", p.listen, "--raft", raft[id],
			"--cluster", strings.Join(cluster, ","), "--metrics", p.metrics, "--log-format", "text"}
		c.inter = append(c.inter, p)
		c.addrs = append(c.addrs, p.listen)
	}
	inter := strings.Join(c.addrs, ",")
	for _, v := range chaosVolumes {
		p := &chaosProc{name: "p" + v, role: rolePrimary, site: "p", volume: v, data: filepath.Join(base, "data", v),
			mnt: filepath.Join(base, "primary", v), metrics: addr("p"), ready: "mounted volume", env: primEnv[v], net: n}
		p.args = []string{"mount", "--volume", v, "--data", p.data, "--mountpoint", p.mnt, "--size", "128MiB",
			"--intermediate", inter, "--metrics", p.metrics, "--log-format", "text"}
		c.prim[v] = p
		s := &chaosProc{name: "s" + v, role: roleSecondary, site: "s", volume: v, data: filepath.Join(base, "secdata", v),
			mnt: filepath.Join(base, "secondary", v), listen: addr("s"), metrics: addr("s"), ready: "mounted replica of volume",
			env: secEnv[v], net: n}
		s.args = []string{"secondary", "--volume", v, "--data", s.data, "--mountpoint", s.mnt, "--intermediate", inter,
			"--listen", s.listen, "--metrics", s.metrics, "--log-format", "text"}
		c.sec[v] = s
	}
	c.procs = append(c.procs, c.inter...)
	for _, v := range chaosVolumes {
		c.procs = append(c.procs, c.prim[v])
	}
	for _, v := range chaosVolumes {
		c.procs = append(c.procs, c.sec[v])
	}
	if addrErr != nil {
		return nil, addrErr
	}
	for _, p := range c.procs {
		if p.mnt != "" {
			if err := os.MkdirAll(p.mnt, 0o755); err != nil {
				return nil, err
			}
		}
	}
	return c, nil
}

// proc returns the process called name, or nil.
func (c *chaosCluster) proc(name string) *chaosProc {
	for _, p := range c.procs {
		if p.name == name {
			return p
		}
	}
	return nil
}

// start starts the intermediate nodes (together: they elect a leader
// among themselves), then the primaries, then the secondaries.
func (c *chaosCluster) start(ctx context.Context) error {
	errs := make(chan error, len(c.inter))
	for _, p := range c.inter {
		go func() { errs <- p.start(ctx) }()
	}
	var err error
	for range c.inter {
		err = errors.Join(err, <-errs)
	}
	if err != nil {
		return err
	}
	for _, v := range chaosVolumes {
		if err := c.prim[v].start(ctx); err != nil {
			return err
		}
	}
	for _, v := range chaosVolumes {
		if err := c.sec[v].start(ctx); err != nil {
			return err
		}
	}
	return nil
}

// stop ends every process that runs, with SIGTERM, secondaries first; it
// returns every process that did not exit cleanly.
func (c *chaosCluster) stop() error {
	var err error
	for _, p := range slices.Backward(c.procs) {
		if p.running() {
			err = errors.Join(err, p.terminate())
		}
	}
	return err
}

// kill ends every process that runs with SIGKILL (cleanup after a failed
// run) and removes their mounts.
func (c *chaosCluster) kill() {
	for _, p := range c.procs {
		if p.running() {
			_ = p.kill()
		} else {
			_ = p.removeDeadMount()
		}
	}
}

// logs returns every process's output.
func (c *chaosCluster) logs() string {
	var b strings.Builder
	for _, p := range c.procs {
		b.WriteString(p.logs())
	}
	return b.String()
}
