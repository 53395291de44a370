// Package failoverbench is `tricopy bench failover`: the recovery time of
// `tricopy promote`, from the command to a writable mount on every promoted
// volume, with a backlog of batches staged on the secondaries but not
// applied yet. It runs the real programs as processes of the tricopy binary
// (a one-node intermediate, the primaries, the secondaries, all on
// 127.0.0.1), kills the primaries with SIGKILL, and promotes in this process
// through the same code as `tricopy promote`.
package failoverbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/secondary"
)

// TargetRTO bounds the time from promote to writable mounts (issue 6).
const TargetRTO = 5 * time.Second

// Defaults of Options.
const (
	DefaultVolumes = 2
	DefaultSize    = 1 << 30
	DefaultBacklog = 100 << 20
)

// holdApplyEnv is the secondaries' test-only switch (see `tricopy
// secondary`): while the file it names exists they apply nothing.
const holdApplyEnv = "TRICOPY_TEST_HOLD_APPLY"

// Options configure Run.
type Options struct {
	// Dir is the scratch directory, on the disk to measure. Required.
	Dir string
	// Bin is the tricopy binary to run; default the running executable.
	Bin string
	// Volumes is the number of volumes (default DefaultVolumes), each of
	// Size bytes (default DefaultSize) with Backlog bytes (default
	// DefaultBacklog) staged on its secondary, not applied, at the
	// disaster.
	Volumes int
	Size    int64
	Backlog int64
	// Logger receives progress; nil means slog.Default().
	Logger *slog.Logger
	// JSONPath, if set, names a file Run writes the Results to.
	JSONPath string
}

func (o Options) withDefaults() (Options, error) {
	if o.Dir == "" {
		return o, errors.New("failover benchmark: no directory")
	}
	if o.Bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return o, fmt.Errorf("failover benchmark: find the tricopy binary: %w", err)
		}
		o.Bin = exe
	}
	if o.Volumes <= 0 {
		o.Volumes = DefaultVolumes
	}
	if o.Size <= 0 {
		o.Size = DefaultSize
	}
	if o.Backlog <= 0 {
		o.Backlog = DefaultBacklog
	}
	if o.Backlog > o.Size/2 {
		return o, fmt.Errorf("failover benchmark: backlog %d is more than half the volume size %d", o.Backlog, o.Size)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o, nil
}

// Results are the figures of one run.
type Results struct {
	Time    time.Time `json:"time"`
	Kernel  string    `json:"kernel"`
	Volumes int       `json:"volumes"`
	Size    int64     `json:"volume_size"`
	// BacklogBytes is the block bytes staged and not applied, over all
	// secondaries, when the primaries were killed (the intermediate's
	// lag_bytes).
	BacklogBytes uint64 `json:"backlog_bytes"`
	// N is the promote point.
	N uint64 `json:"n"`
	// Promote is the time tricopy promote took; RTO the time from its
	// start until a file was written and fsynced on every promoted mount.
	Promote time.Duration `json:"promote_ns"`
	RTO     time.Duration `json:"rto_ns"`
	// MountRTOs holds, per promoted volume, the time from the start of
	// promote until its file was written and fsynced; RTO is the largest.
	MountRTOs []time.Duration `json:"mount_rtos_ns,omitempty"`
	Passed    bool            `json:"passed"`
}

// WriteMarkdown writes the report.
func (r *Results) WriteMarkdown(w io.Writer) error {
	p := &benchutil.Printer{W: w}
	p.F("## Failover (1-node intermediate, %d volumes of %d MiB, real processes)\n\n", r.Volumes, r.Size>>20)
	p.F("| staged backlog at the disaster | promote point N | tricopy promote | RTO: promote to a file written and fsynced on every mount |\n| --- | --- | --- | --- |\n")
	p.F("| %.1f MiB | %d | %v | %v |\n", float64(r.BacklogBytes)/(1<<20), r.N, r.Promote.Round(time.Millisecond), r.RTO.Round(time.Millisecond))
	verdict := "met"
	if !r.Passed {
		verdict = "MISSED"
	}
	p.F("\nTarget: RTO under %v: %s.\n", TargetRTO, verdict)
	return p.Err
}

// Run runs the benchmark, writes a markdown report to w (and JSON to
// opts.JSONPath) and returns the results. It needs root and /dev/fuse. It
// stops every process, removes every mount and its working directory
// before it returns, also on error.
func Run(ctx context.Context, opts Options, w io.Writer) (_ *Results, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	runDir, err := benchutil.MakeRunDir(opts.Dir, "failoverbench-")
	if err != nil {
		return nil, err
	}
	defer benchutil.RemoveRunDir(runDir, &err)
	b := &bench{opts: opts, log: opts.Logger, dir: runDir, hold: filepath.Join(runDir, "hold-apply")}
	defer func() { err = errors.Join(err, b.close()) }()
	res := &Results{Time: time.Now().UTC(), Kernel: benchutil.KernelRelease(), Volumes: opts.Volumes, Size: opts.Size}
	if err := b.start(ctx); err != nil {
		return nil, err
	}
	if res.BacklogBytes, err = b.backlog(ctx); err != nil {
		return nil, err
	}
	for _, p := range b.primaries {
		if err := p.kill(); err != nil {
			return nil, err
		}
	}
	b.log.Info("primaries killed; promoting", "backlog_bytes", res.BacklogBytes)
	start := time.Now()
	gp, err := secondary.PromoteGroup(ctx, secondary.GroupOptions{Secondary: b.secAddrs[0], By: "tricopy bench failover", Logger: b.log})
	if err != nil {
		return nil, fmt.Errorf("promote: %w", err)
	}
	res.Promote = time.Since(start)
	var wg sync.WaitGroup
	errs := make([]error, len(b.secMnts))
	res.MountRTOs = make([]time.Duration, len(b.secMnts))
	for i, mnt := range b.secMnts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = writeSynced(filepath.Join(mnt, "after-promote"), bytes.Repeat([]byte("x"), 4096))
			res.MountRTOs[i] = time.Since(start)
		}()
	}
	wg.Wait()
	res.RTO = time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("write on a promoted mount: %w", err)
	}
	res.N = gp.N
	res.Passed = res.RTO < TargetRTO
	return res, benchutil.Report(w, res.WriteMarkdown, opts.JSONPath, res)
}

// bench is one run's deployment.
type bench struct {
	opts      Options
	log       *slog.Logger
	dir       string
	hold      string
	addr      string
	procs     []*proc
	primaries []*proc
	primMnts  []string
	secMnts   []string
	secAddrs  []string
}

// proc is one process of the tricopy binary.
type proc struct {
	name   string
	cmd    *exec.Cmd
	mnt    string // its mountpoint, if any
	out    *syncBuffer
	exited chan struct{}
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// launch starts the tricopy binary with args and waits until its standard
// output says ready.
func (b *bench) launch(ctx context.Context, name, ready, mnt string, env []string, args ...string) (*proc, error) {
	p := &proc{name: name, mnt: mnt, out: &syncBuffer{}, exited: make(chan struct{})}
	p.cmd = exec.Command(b.opts.Bin, append(args, "--log-format", "text", "--log-level", "warn")...)
	p.cmd.Env = append(os.Environ(), env...)
	stderr := &syncBuffer{}
	p.cmd.Stdout, p.cmd.Stderr = p.out, stderr
	if err := p.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.exited)
	}()
	b.procs = append(b.procs, p)
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(p.out.String(), ready) {
		select {
		case <-p.exited:
			return nil, fmt.Errorf("%s exited before it was ready:\n%s", name, stderr.String())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%s not ready after 2 minutes:\n%s", name, stderr.String())
		}
	}
	return p, nil
}

// kill SIGKILLs the process and removes the dead mount it leaves.
func (p *proc) kill() error {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
	if p.mnt != "" {
		if err := syscall.Unmount(p.mnt, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) {
			return fmt.Errorf("unmount %s after killing %s: %w", p.mnt, p.name, err)
		}
	}
	return nil
}

// stop ends the process with SIGTERM (SIGKILL after 30 s).
func (p *proc) stop() error {
	select {
	case <-p.exited:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		return nil
	case <-time.After(30 * time.Second):
		return p.kill()
	}
}

// freeAddr returns a free 127.0.0.1 port.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// start runs the intermediate, the primaries (in PAIR) and their
// secondaries (mounted), then holds the secondaries' applying.
func (b *bench) start(ctx context.Context) error {
	listen, err := freeAddr()
	if err != nil {
		return err
	}
	raft, err := freeAddr()
	if err != nil {
		return err
	}
	b.addr = listen
	b.log.Info("starting the intermediate, the primaries and the secondaries", "volumes", b.opts.Volumes, "size", b.opts.Size)
	if _, err := b.launch(ctx, "intermediate", "serving at", "", nil, "intermediate", "--node", "i1",
		"--data", filepath.Join(b.dir, "inter"), "--listen", listen, "--raft", raft); err != nil {
		return err
	}
	size := fmt.Sprintf("%dMiB", b.opts.Size>>20)
	for i := range b.opts.Volumes {
		name := string(rune('a' + i))
		mnt := filepath.Join(b.dir, "primary", name)
		p, err := b.launch(ctx, "primary "+name, "mounted volume", mnt, nil, "mount", "--volume", name,
			"--data", filepath.Join(b.dir, "data", name), "--mountpoint", mnt, "--size", size, "--intermediate", listen)
		if err != nil {
			return err
		}
		b.primaries, b.primMnts = append(b.primaries, p), append(b.primMnts, mnt)
	}
	cl, err := client.New(client.Config{Addrs: []string{listen}, Logger: b.log})
	if err != nil {
		return err
	}
	defer cl.Close()
	if err := waitFor(ctx, 5*time.Minute, "the primaries in PAIR", func() (bool, error) {
		st, err := cl.Status(ctx)
		if err != nil {
			return false, nil
		}
		pairs := 0
		for _, v := range st.GetVolumes() {
			if v.GetState() == "PAIR" {
				pairs++
			}
		}
		return pairs == b.opts.Volumes, nil
	}); err != nil {
		return err
	}
	for i := range b.opts.Volumes {
		name := string(rune('a' + i))
		mnt := filepath.Join(b.dir, "secondary", name)
		admin, err := freeAddr()
		if err != nil {
			return err
		}
		if _, err := b.launch(ctx, "secondary "+name, "mounted replica", mnt, []string{holdApplyEnv + "=" + b.hold}, "secondary",
			"--volume", name, "--data", filepath.Join(b.dir, "secdata", name), "--mountpoint", mnt,
			"--intermediate", listen, "--listen", admin); err != nil {
			return err
		}
		b.secMnts, b.secAddrs = append(b.secMnts, mnt), append(b.secAddrs, admin)
	}
	// Every secondary knows its group before the disaster.
	return waitFor(ctx, time.Minute, "the secondaries to learn their group", func() (bool, error) {
		for _, a := range b.secAddrs {
			st, err := adminStatus(ctx, a)
			if err != nil || len(st.Peers) != b.opts.Volumes {
				return false, nil
			}
		}
		return true, nil
	})
}

// backlog holds the secondaries' applying, writes Backlog bytes on every
// primary, waits until the secondaries staged all of it, and returns the
// staged bytes not applied.
func (b *bench) backlog(ctx context.Context) (uint64, error) {
	if err := os.WriteFile(b.hold, nil, 0o644); err != nil {
		return 0, err
	}
	b.log.Info("writing the backlog with the secondaries' applying held", "bytes_per_volume", b.opts.Backlog)
	var wg sync.WaitGroup
	errs := make([]error, len(b.primMnts))
	for i, mnt := range b.primMnts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = writeBacklog(filepath.Join(mnt, "backlog"), b.opts.Backlog)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return 0, fmt.Errorf("write the backlog: %w", err)
	}
	cl, err := client.New(client.Config{Addrs: []string{b.addr}, Logger: b.log})
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	st, err := cl.Status(ctx)
	if err != nil {
		return 0, err
	}
	committed := st.GetCommittedSeq()
	if err := waitFor(ctx, 5*time.Minute, "the secondaries to stage the backlog", func() (bool, error) {
		for _, a := range b.secAddrs {
			ss, err := adminStatus(ctx, a)
			if err != nil {
				return false, err
			}
			if ss.DurableSeq < committed {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		return 0, err
	}
	if st, err = cl.Status(ctx); err != nil {
		return 0, err
	}
	var lag uint64
	for _, s := range st.GetSecondaries() {
		lag += s.GetLagBytes()
	}
	return lag, nil
}

// writeBacklog writes n bytes of pseudo-random data to path in 1 MiB
// writes and fsyncs it.
func writeBacklog(path string, n int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	buf := make([]byte, 1<<20)
	x := uint64(len(path)) * 0x9e3779b97f4a7c15
	for off := int64(0); off < n; off += int64(len(buf)) {
		for i := 0; i+8 <= len(buf); i += 8 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
			buf[i] = byte(x)
			buf[i+1] = byte(x >> 8)
			buf[i+2] = byte(x >> 16)
			buf[i+3] = byte(x >> 24)
		}
		if _, err := f.Write(buf[:min(int64(len(buf)), n-off)]); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeSynced writes data to a new file at path and fsyncs it.
func writeSynced(path string, data []byte) error {
	f, err := os.Create(path)
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

// adminStatus asks a secondary's admin API for its status.
func adminStatus(ctx context.Context, addr string) (secondary.Status, error) {
	var st secondary.Status
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+secondary.StatusPath, nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("status of the secondary at %s: %s", addr, resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// waitFor polls cond until it holds, fails, or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("wait for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for %s: not after %v", what, timeout)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for %s: %w", what, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// close stops every process, newest first, and removes the mounts they
// leave.
func (b *bench) close() error {
	var errs []error
	for i := len(b.procs) - 1; i >= 0; i-- {
		p := b.procs[i]
		if err := p.stop(); err != nil {
			errs = append(errs, err)
		}
		if p.mnt != "" {
			_ = syscall.Unmount(p.mnt, syscall.MNT_DETACH)
		}
	}
	return errors.Join(errs...)
}
