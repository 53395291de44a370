package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/blockdev/mirror"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/mirrordev"
	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/fusefs"
	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
	"github.com/tricopy/tricopy/secondary"
)

// independentApplyEnv is the test-only switch that turns off the consistent
// cut (secondary.Config.IndependentApply): its value is the apply delay.
// It is deliberately not a config key: no deployment may set it by
// accident in a file.
const independentApplyEnv = "TRICOPY_TEST_INDEPENDENT_APPLY"

// holdApplyEnv is the test-only switch of secondary.Config.HoldApply: while
// the file it names exists, the secondary applies no validated point (it
// still stages and prepares). `tricopy bench failover` uses it to build a
// staged backlog. Not a config key either.
const holdApplyEnv = "TRICOPY_TEST_HOLD_APPLY"

// inPlaceBytesEnv is the test-only setting of secondary.Config.InPlaceBytes
// (bytes), so that the e2e kill test can make every round an in-place one.
const inPlaceBytesEnv = "TRICOPY_TEST_IN_PLACE_BYTES"

func newSecondaryCmd(a *app) *cobra.Command {
	cfg := configs.DefaultSecondary()
	c := newCommand(a, commandSpec{
		use:   "secondary",
		short: "Follow one volume asynchronously and serve a live read-only mount of its replica",
		long: `Secondary follows volume --volume of the group at the intermediate cluster
--intermediate, in the foreground, until it is stopped (SIGINT, SIGTERM) or its
mount is unmounted from outside.

It fetches the volume's committed batches as the intermediate commits them
(reconnecting to any node, checking every checksum) into a durable staging
store in --data, ahead of applying them. It answers the coordinator on the
intermediate leader: PREPARED(N) once every batch of its volume up to N is
staged durably, and at VALIDATE(N) it applies its staged batches up to N to
its replica as one atomic step. Every secondary of the group exposes the same
validated point N, so the replicas of several volumes form one consistent
cut, whatever crash happens at whatever instant.

The replica is mounted read-only at --mountpoint (created if missing) and
always shows exactly one validated point: MNT/.tricopy/applied holds it (a
hidden file, not listed). A new secondary creates its replica with the
volume's size, waiting for the volume's primary to register it, and mounts it
once the replica holds a filesystem. Once the replica is mounted, secondary
prints "mounted replica of volume NAME at MNT" on standard output.

A secondary that meets a protocol violation, a bad checksum or an I/O error
stops following (fail-stop: state FAILED with the reason, in its status and in
tricopy status) and keeps serving its last validated point. While it is down
or failed it holds the group's validated point where it is; tricopy status
says which secondary holds it.

The admin API on --listen serves GET /v1/status (this secondary's state as
JSON).`,
		example: `  tricopy secondary --volume a --data /var/lib/tricopy/secondary/a --mountpoint /srv/replica/a --intermediate 10.0.1.1:7100 --listen 10.0.2.1:7300
  tricopy secondary --config configs/secondary.example.yaml`,
	}, &cfg, runSecondary)
	c.AddCommand(newSecondaryRemoveCmd(a))
	return c
}

func newSecondaryRemoveCmd(a *app) *cobra.Command {
	cfg := configs.DefaultSecondaryRemove()
	return newCommand(a, commandSpec{
		use:   "remove",
		short: "Take a secondary out of its group",
		long: `Remove asks the leader (found through any of --intermediate) to take secondary
--name out of the group: the group's validated point and the journal's trimming
stop waiting for it. Use it for a secondary that is gone for good; a secondary
that is only down holds the validated point on purpose. Stop the secondary's
process first: a secondary that connects again registers again. Removing a
secondary that is not registered succeeds and says so.`,
		example: `  tricopy secondary remove --intermediate 10.0.1.1:7100 --name a`,
	}, &cfg, runSecondaryRemove)
}

// runSecondaryRemove is `tricopy secondary remove`.
func runSecondaryRemove(ctx context.Context, a *app, log *slog.Logger, cfg *configs.SecondaryRemove) error {
	tlsm, err := loadTLS(&cfg.TLS, log)
	if err != nil {
		return err
	}
	cl, err := client.New(client.Config{Addrs: cfg.Intermediate, Group: cfg.Group, TLS: toIntermediate(tlsm), Logger: log})
	if err != nil {
		return &configs.Error{Key: "intermediate", Err: err}
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	removed, volume, err := cl.RemoveSecondary(ctx, cfg.Name)
	if err != nil {
		return fmt.Errorf("remove secondary %s: %w", cfg.Name, err)
	}
	if removed {
		fmt.Fprintf(a.stdout, "removed secondary %s of volume %s\n", cfg.Name, volume)
	} else {
		fmt.Fprintf(a.stdout, "no secondary %s in group %s: nothing to remove\n", cfg.Name, cfg.Group)
	}
	return nil
}

// runSecondary is `tricopy secondary`.
func runSecondary(ctx context.Context, a *app, log *slog.Logger, cfg *configs.Secondary) error {
	tlsm, err := loadTLS(&cfg.TLS, log, auth.Grant{Role: auth.RoleSecondary, Name: cfg.Volume})
	if err != nil {
		return err
	}
	reg, stopMetrics, err := processMetrics(cfg.Metrics, statusFrom{cfg.Intermediate, cfg.Group, toIntermediate(tlsm)}, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	prog, a, log := startProgress(a, log) // a bar of the initial copy on a terminal
	defer prog.Close()
	r, err := openSecondary(ctx, log, cfg, tlsm, nil, reg, prog)
	if err != nil {
		return err
	}
	go func() {
		select {
		case <-r.mounted():
			fmt.Fprintf(a.stdout, "%s\n", r.mountedLine())
		case <-r.stopped:
		}
	}()
	return r.serve(ctx)
}

// secondaryRun is one running secondary: its client, the secondary, its
// read-only mount, its admin API and its metrics. openSecondary starts it,
// serve runs it until it is stopped and closes it. `secondary` runs one,
// `up` several.
type secondaryRun struct {
	cfg   *configs.Secondary
	log   *slog.Logger
	cl    *client.Client
	s     *secondary.Secondary
	mount *secondary.Mount
	admin *http.Server

	reg        prometheus.Registerer // the process registry; nil: no metrics
	unregister func()                // unregisters the secondary's collector; nil until registered

	// Once promoted: the volume's mirror and, when the replica was not
	// mounted at the promotion (a restart), the read-write mount. Guarded
	// by mu; set by becomePrimary.
	mu               sync.Mutex
	m                *mirror.Mirror
	unregisterMirror func() // unregisters m's collector; nil without m
	primary          *fusefs.Server
	gone             chan struct{}      // closed when the read-write mount is gone
	stopAttach       context.CancelFunc // stops attach; nil when it never ran
	attached         chan struct{}      // closed when attach returned
	served           chan struct{}      // closed once the admin server returned
	stopped          chan struct{}      // closed by close
}

// openSecondary opens the secondary of cfg, mounts its replica, starts
// following and serves the admin API. A new secondary with fb builds its
// replica from an old primary's volume (tricopy failback). The collectors
// of the secondary and, once promoted, of its volume's mirror are
// registered on reg (none if reg is nil) until close. An initial copy shows
// its progress on prog, when one is given. If anything fails it closes what
// it opened.
func openSecondary(ctx context.Context, log *slog.Logger, cfg *configs.Secondary, tlsm *auth.Material, fb *secondary.FailbackSource, reg prometheus.Registerer, prog ...*progressDisplay) (_ *secondaryRun, err error) {
	log = log.With("volume", cfg.Volume)
	inPlace, err := inPlaceBytes(log)
	if err != nil {
		return nil, err
	}
	independent, delay, err := independentApply()
	if err != nil {
		return nil, err
	}
	if err := makeMountpoint(cfg.Mountpoint); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, &configs.Error{Key: "listen", Err: err}
	}
	if tlsm != nil {
		// The admin API requires a certificate of the CA; promotion also
		// an admin grant (secondary.Handler).
		ln = tls.NewListener(ln, tlsm.ServerConfig())
		if !tlsm.Identity().Has(auth.RolePrimary, cfg.Volume) {
			log.Warn("the TLS certificate holds no primary grant for the volume: once promoted, this secondary could not write it to the intermediate",
				"need", auth.Grant{Role: auth.RolePrimary, Name: cfg.Volume}.URI().String(), "identity", tlsm.Identity().String())
		}
	}
	r := &secondaryRun{cfg: cfg, log: log, reg: reg, served: make(chan struct{}), stopped: make(chan struct{})}
	defer func() {
		if err != nil {
			ln.Close()
			r.closeParts()
		}
	}()
	r.cl, err = client.New(client.Config{Addrs: cfg.Intermediate, Group: cfg.Group, TLS: toIntermediate(tlsm), Logger: log})
	if err != nil {
		return nil, &configs.Error{Key: "intermediate", Err: err}
	}
	log.Info("opening secondary", "data", cfg.Data, "intermediate", cfg.Intermediate, "group", cfg.Group)
	var copying *copyProgress
	if len(prog) > 0 {
		copying = prog[0].trackCopy(cfg.Volume + " (secondary)")
	}
	r.s, err = secondary.Open(ctx, secondary.Config{
		ID: cfg.Name, Volume: cfg.Volume, Group: cfg.Group, Dir: cfg.Data, Addr: cfg.Listen,
		Intermediate: r.cl, IntermediateAddrs: cfg.Intermediate, OnPromote: r.becomePrimary, Failback: fb,
		Logger:           log.With("component", "secondary"),
		IndependentApply: independent, IndependentApplyDelay: delay, HoldApply: holdApply(log), InPlaceBytes: inPlace,
		OnCopyProgress: copying.callback(),
	})
	copying.end(err)
	if err != nil {
		return nil, err
	}
	r.unregister = registerCollector(reg, secondary.NewCollector(r.s), log, "secondary of volume "+cfg.Volume)
	if p := r.s.Promotion(); p != nil {
		// Promoted before: the volume is a primary. Finish the promotion
		// if it was cut (becomePrimary mounts read-write).
		log.Warn("this secondary was promoted: serving its volume as a primary", "promotion", p.ID, "n", p.N, "epoch", p.Epoch)
		if err := r.s.Start(nil); err != nil {
			return nil, err
		}
		if p.Done {
			err = r.becomePrimary(ctx, *p)
		} else {
			_, err = r.s.Promote(ctx, p.PromoteRequest)
		}
		if err != nil {
			return nil, err
		}
	} else {
		r.mount, err = secondary.NewMount(ctx, r.s.Replica(), r.mountOptions())
		if err != nil {
			return nil, err
		}
		if err := r.s.Start(r.mount); err != nil {
			return nil, err
		}
	}
	// ErrorLog: TLS handshakes refused (no certificate, another CA) are
	// logged as warnings of the process's logger, not to standard error.
	r.admin = &http.Server{Handler: r.s.Handler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.With("component", "admin-api").Handler(), slog.LevelWarn)}
	go func() {
		defer close(r.served)
		if err := r.admin.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin API stopped", "listen", cfg.Listen, "err", err)
		}
	}()
	return r, nil
}

// mounted is closed once the volume is mounted: the replica read-only, or
// the promoted volume read-write.
func (r *secondaryRun) mounted() <-chan struct{} {
	if r.mount != nil {
		return r.mount.Mounted()
	}
	c := make(chan struct{})
	close(c)
	return c
}

// mountedLine says what is mounted where, once mounted.
func (r *secondaryRun) mountedLine() string {
	if r.mount == nil {
		return fmt.Sprintf("mounted promoted volume %s read-write at %s", r.cfg.Volume, r.cfg.Mountpoint)
	}
	return fmt.Sprintf("mounted replica of volume %s at %s", r.cfg.Volume, r.cfg.Mountpoint)
}

// mountOptions are the options of the secondary's mount.
func (r *secondaryRun) mountOptions() fusefs.MountOptions {
	return fusefs.MountOptions{
		Mountpoint: r.cfg.Mountpoint, Name: r.cfg.Volume, AllowOther: r.cfg.AllowOther, Debug: r.cfg.DebugFUSE, Logger: r.log,
	}
}

// becomePrimary is the secondary's OnPromote: it records the volume's
// mirror state at the new epoch (in PAIR after a drain, else suspended and
// detached from the intermediate), opens the mirror over the replica's
// blocks, and turns the read-only mount read-write in place, or mounts the
// volume read-write when the replica is not mounted (a restart).
func (r *secondaryRun) becomePrimary(ctx context.Context, p secondary.Promotion) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.m != nil {
		return nil
	}
	rep := r.s.Replica()
	dir := r.s.PrimaryDir()
	opts := mirror.AdoptOptions{
		Dir: dir, Volume: r.cfg.Volume, Group: r.cfg.Group, BlockCount: rep.BlockCount(), Epoch: p.Epoch,
		AppliedVolumeSeq: p.VolumeSeq, AppliedSeq: max(p.Seq, p.VolumeSeq),
	}
	switch {
	case !p.Drained:
		opts.AppliedVolumeSeq, opts.AppliedSeq, opts.Suspended = p.VolumeSeq, max(p.N, p.VolumeSeq), true
		opts.Reason = fmt.Sprintf("promoted at seq %d without the intermediate: changes are kept local and marked", p.N)
	case p.Seq > p.N:
		// Drained to a point below the volume's last batch (a primary's
		// copy window was open): detached until the intermediate says
		// which regions the batches after the point wrote.
		opts.AppliedVolumeSeq, opts.AppliedSeq, opts.Suspended = 0, p.N, true
		opts.Reason = fmt.Sprintf("promoted at seq %d, below the volume's last batch %d at the intermediate (a primary was copying): "+
			"changes are kept local and marked until the regions written after seq %d are resynchronised", p.N, p.Seq, p.N)
	}
	err := mirror.Adopt(opts)
	if err != nil {
		return err
	}
	m, err := mirror.Open(ctx, mirror.Config{
		Name: r.cfg.Volume, Group: r.cfg.Group, Local: rep.PrimaryVolume(), Dir: dir, Client: r.cl,
		Fence: mirror.Fence(r.cfg.Fence), Timeout: r.cfg.FenceTimeout, ResyncRate: int64(r.cfg.ResyncRate.Bytes()),
		Logger: r.log.With("component", "mirror"),
	})
	if err != nil {
		return fmt.Errorf("open the mirror of promoted volume %s: %w", r.cfg.Volume, err)
	}
	dev := mirrordev.Device{M: m}
	if r.mount != nil && r.mount.IsMounted() {
		err = r.mount.Promote(ctx, dev)
	} else {
		if r.mount != nil {
			r.mount.Unmount()
		}
		var srv *fusefs.Server
		srv, err = fusefs.Mount(ctx, dev, r.mountOptions())
		if err == nil {
			r.primary, r.gone = srv, make(chan struct{})
			go func(gone chan struct{}) {
				srv.Wait()
				close(gone)
			}(r.gone)
		}
	}
	if err != nil {
		m.Close()
		return fmt.Errorf("mount promoted volume %s read-write at %s: %w", r.cfg.Volume, r.cfg.Mountpoint, err)
	}
	r.m = m
	r.unregisterMirror = registerCollector(r.reg, mirror.NewCollector(m, r.cfg.Volume), r.log, "mirror of promoted volume "+r.cfg.Volume)
	if m.Detached() {
		actx, cancel := context.WithCancel(context.Background())
		r.stopAttach = cancel
		r.attached = make(chan struct{})
		go func() {
			defer close(r.attached)
			r.attach(actx, m, p)
		}()
	}
	return nil
}

// attachRetry spaces the attempts of a detached promoted volume to reach
// the intermediate.
const attachRetry = time.Second

// attach runs while the volume, promoted without the intermediate, is
// detached: it tries the intermediate every attachRetry; once it answers,
// it records the promotion there at its point N (PromoteAt: the old
// primaries are fenced from then on), and attaches the mirror with the
// regions the old primaries wrote after N, so that its resync overwrites
// them. Promotions are idempotent by ID: every promoted secondary of the
// group does this, the first records it.
func (r *secondaryRun) attach(ctx context.Context, m *mirror.Mirror, p secondary.Promotion) {
	log := r.log.With("promotion", p.ID, "n", p.N, "epoch", p.Epoch)
	log.Warn("promoted without the intermediate: changes stay local until it is reachable again")
	for attempt := 0; ; attempt++ {
		err := r.attachOnce(ctx, m, p)
		if err == nil {
			return
		}
		if errors.Is(err, wire.ErrStaleEpoch) {
			log.Error("the intermediate had the volume at another epoch than the promotion expected (promoted elsewhere meanwhile?): staying detached; resolve by hand", "err", err)
			return
		}
		if attempt%30 == 0 {
			log.Info("intermediate still unreachable; the promoted volume stays detached", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(attachRetry):
		}
	}
}

// attachOnce makes one attempt of attach.
func (r *secondaryRun) attachOnce(ctx context.Context, m *mirror.Mirror, p secondary.Promotion) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := r.cl.PromoteAtFor(ctx, p.ID, p.By, p.N, p.Epoch-1, p.AdminProof())
	if err != nil {
		return err
	}
	for _, v := range resp.GetVolumes() {
		if v.GetName() != r.cfg.Volume {
			continue
		}
		if err := m.Attach(mirror.Attachment{Epoch: v.GetEpoch(), Regions: v.GetAfterRegions(), AllRegions: !v.GetJournalComplete()}); err != nil {
			return err
		}
		r.log.Warn("the intermediate learned the promotion: the volume mirrors to it again after a resync",
			"promotion", p.ID, "epoch", v.GetEpoch(), "journal_complete", v.GetJournalComplete())
		return nil
	}
	return fmt.Errorf("the intermediate's promotion %s does not list volume %s", p.ID, r.cfg.Volume)
}

// holdApply returns the test-only HoldApply of holdApplyEnv, nil when it
// is not set.
func holdApply(log *slog.Logger) func() bool {
	path, ok := os.LookupEnv(holdApplyEnv)
	if !ok || path == "" {
		return nil
	}
	log.Warn("test-only: validated points are not applied while this file exists", "env", holdApplyEnv, "file", path)
	return func() bool {
		_, err := os.Stat(path)
		return err == nil
	}
}

// inPlaceBytes reads the test-only inPlaceBytesEnv, 0 when it is not set.
func inPlaceBytes(log *slog.Logger) (int64, error) {
	v, ok := os.LookupEnv(inPlaceBytesEnv)
	if !ok {
		return 0, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, usageErrorf("%s=%q: want a number of bytes", inPlaceBytesEnv, v)
	}
	log.Warn("test-only: rounds of this many bytes or more are written in place", "env", inPlaceBytesEnv, "bytes", n)
	return n, nil
}

// independentApply reads the test-only switch.
func independentApply() (bool, time.Duration, error) {
	v, ok := os.LookupEnv(independentApplyEnv)
	if !ok {
		return false, 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return false, 0, usageErrorf("%s=%q: want a duration like 0s or 300ms", independentApplyEnv, v)
	}
	return true, d, nil
}

// serve returns once ctx ends or the mount is unmounted from outside, then
// closes the secondary.
func (r *secondaryRun) serve(ctx context.Context) error {
	var replicaGone <-chan struct{}
	if r.mount != nil {
		replicaGone = r.mount.Gone()
	}
	r.mu.Lock()
	primaryGone := r.gone
	r.mu.Unlock()
	select {
	case <-ctx.Done():
		r.log.Info("stopping secondary", "cause", context.Cause(ctx))
	case <-replicaGone:
		r.log.Info("mount unmounted from outside: stopping", "mountpoint", r.cfg.Mountpoint)
	case <-primaryGone:
		r.log.Info("mount unmounted from outside: stopping", "mountpoint", r.cfg.Mountpoint)
	}
	return r.close()
}

// close stops the secondary and closes everything it opened.
func (r *secondaryRun) close() error {
	close(r.stopped)
	err := r.closeParts()
	<-r.served
	return err
}

// closeParts unmounts the replica and closes the admin API, the secondary
// (its metrics unregistered first) and the client; each may be nil.
func (r *secondaryRun) closeParts() error {
	var errs []error
	if r.mount != nil {
		if err := r.mount.Unmount(); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", r.cfg.Mountpoint, err))
		}
	}
	r.mu.Lock()
	m, unregisterMirror, srv, stopAttach, attached := r.m, r.unregisterMirror, r.primary, r.stopAttach, r.attached
	r.mu.Unlock()
	if stopAttach != nil {
		stopAttach()
		<-attached
	}
	if srv != nil {
		if err := srv.Unmount(); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", r.cfg.Mountpoint, err))
		}
	}
	if m != nil {
		unregisterMirror()
		errs = append(errs, m.Close())
	}
	if r.admin != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, r.admin.Shutdown(sctx))
		cancel()
	}
	if r.unregister != nil {
		r.unregister()
	}
	if r.s != nil {
		errs = append(errs, r.s.Close())
	}
	if r.cl != nil {
		r.cl.Close()
	}
	return errors.Join(errs...)
}

// makeMountpoint creates a mountpoint directory if needed, naming the usual
// cause of a failure.
func makeMountpoint(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		if errors.Is(err, syscall.ENOTCONN) {
			return fmt.Errorf("create mountpoint %s: %w (an earlier mount died there: unmount it with fusermount3 -u %s or umount %s)",
				dir, err, dir, dir)
		}
		return fmt.Errorf("create mountpoint %s: %w", dir, err)
	}
	return nil
}
