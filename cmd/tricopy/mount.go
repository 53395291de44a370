package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/blockdev/mirror"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/mirrordev"
	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/fusefs"
	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/client"
)

func newMountCmd(a *app) *cobra.Command {
	cfg := configs.DefaultMount()
	return newCommand(a, commandSpec{
		use:   "mount",
		short: "Mount a volume's filesystem with FUSE (a primary, mirrored to the intermediate or local only)",
		long: `Mount serves the filesystem of the volume in --data at --mountpoint with FUSE,
in the foreground, until it is unmounted.

If --data holds no volume and --size is given, mount first creates a volume of
that size there and formats it (as tricopy format does); without --size it
refuses. --size is ignored when a volume exists. The mountpoint directory is
created if missing. Once the filesystem is mounted, mount prints
"mounted volume NAME at MNT" on standard output.

SIGINT (Ctrl-C) or SIGTERM unmounts cleanly: mount waits for the operations in
progress, makes the volume durable and exits 0. If the mountpoint stays busy
(a shell inside it, an open file), mount says so and waits until it is
unmounted; a second Ctrl-C exits at once, leaving the mount behind.
Unmounting from outside (fusermount3 -u MNT, umount MNT) also ends mount
cleanly.

Every filesystem operation is one atomic batch of block writes on the volume,
so a crash at any instant leaves a volume that mounts and passes fsck.

With --intermediate the volume is mirrored: every operation (and every fsync)
returns only once its batch is committed at the intermediate cluster, and
concurrent operations share round trips (group commit). Before serving, mount
reconciles with the intermediate, waiting for it: after a crash it replays the
batches the intermediate committed and the local volume lacks. A new volume
is first copied whole to the intermediate (state COPY, while the mount is
usable), then mirrored (PAIR). When a write cannot be committed within
--fence-timeout, --fence data fails it with EIO and refuses writes until the
intermediate has committed everything pending (reads go on; it recovers by
itself); --fence never suspends mirroring (SUSP), goes on locally, marks the
changed regions in the primary bitmap, and once the intermediate is back
copies only those regions (RESYNC) before returning to PAIR. If the volume was
promoted elsewhere (a newer epoch), the mount turns read-only for good
(FENCED). tricopy status --intermediate ADDRS shows each volume's state.`,
		example: `  tricopy mount --volume a --data /var/lib/tricopy/a --mountpoint /mnt/a
  tricopy mount --volume a --data /tmp/a --mountpoint /tmp/mnt/a --size 1GiB
  tricopy mount --config configs/mount.example.yaml --read-only
  tricopy mount --volume a --data /var/lib/tricopy/a --mountpoint /mnt/a --intermediate 10.0.0.1:7100,10.0.0.2:7100 --fence never
  TRICOPY_LOG_LEVEL=debug tricopy mount --config configs/mount.example.yaml`,
	}, &cfg, runMount)
}

// runMount is `tricopy mount`.
func runMount(ctx context.Context, a *app, log *slog.Logger, cfg *configs.Mount) error {
	tlsm, err := loadTLS(&cfg.TLS, log, auth.Grant{Role: auth.RolePrimary, Name: cfg.Volume})
	if err != nil {
		return err
	}
	reg, stopMetrics, err := processMetrics(cfg.Metrics, statusFrom{cfg.Intermediate, cfg.Group, toIntermediate(tlsm)}, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	prog, a, log := startProgress(a, log) // bars of the copy and resyncs on a terminal
	defer prog.Close()
	p, err := openPrimary(ctx, log, cfg, tlsm, reg, prog)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "mounted volume %s at %s\n", cfg.Volume, cfg.Mountpoint)
	log.Debug("serving", "volume", cfg.Volume, "mountpoint", cfg.Mountpoint, "data", cfg.Data, "read_only", cfg.ReadOnly)
	return p.serve(ctx)
}

// unmountSlowAfter is how long an unmount runs before serve warns that the
// mountpoint may be busy.
const unmountSlowAfter = 5 * time.Second

// primary is one mounted primary volume: the local volume, its mirror and
// the mirror's client when it is mirrored (and the mirror's metrics), the
// FUSE server, and two goroutines: one logs the mirror's state changes
// (until close), one waits for the filesystem to be unmounted and closes
// unmounted. openPrimary starts it; serve runs it until it is unmounted and
// closes it. `mount` serves one, `up` several.
type primary struct {
	cfg *configs.Mount
	log *slog.Logger
	vol *blockdev.FileVolume
	m   *mirror.Mirror // nil: a local-only or read-only mount
	cl  *client.Client // the mirror's; nil without m
	srv *fusefs.Server

	unregister func() // unregisters the mirror's collector; nil without m

	unmounted chan struct{}      // closed once the filesystem is unmounted, from inside or outside
	stopWatch context.CancelFunc // stops the mirror watcher
	watched   chan struct{}      // closed once the mirror watcher returned
}

// openPrimary opens the volume of cfg (creating and formatting it if cfg
// says so), opens its mirror when cfg names an intermediate, and mounts its
// filesystem. If anything fails it closes what it opened. A fenced volume
// is mounted read-only (cfg.ReadOnly is set). The mirror's collector is
// registered on reg (none if reg is nil) until close; its copies and
// resyncs show on prog (none if nil) from the moment it opens.
func openPrimary(ctx context.Context, log *slog.Logger, cfg *configs.Mount, tlsm *auth.Material, reg prometheus.Registerer, prog *progressDisplay) (*primary, error) {
	vol, err := openOrCreate(ctx, log, cfg)
	if err != nil {
		return nil, err
	}
	p := &primary{cfg: cfg, log: log, vol: vol}
	var dev fusefs.Device = fusefs.LocalDevice(vol)
	if len(cfg.Intermediate) > 0 {
		if cfg.ReadOnly {
			log.Warn("read-only mount: mirroring is not started", "volume", cfg.Volume)
		} else {
			p.m, p.cl, err = openMirror(ctx, log, vol, cfg, toIntermediate(tlsm))
			if err != nil {
				if cerr := closeVolume(log, vol); cerr != nil {
					log.Warn("close volume", "err", cerr)
				}
				return nil, err
			}
			p.unregister = registerCollector(reg, mirror.NewCollector(p.m, cfg.Volume), log, "mirror of volume "+cfg.Volume)
			dev = mirrordev.Device{M: p.m}
			prog.trackMirror(cfg.Volume, p.m)
			if st := p.m.Status(); st.State == mirror.StateFenced {
				log.Error("volume is fenced (promoted elsewhere): mounting read-only", "volume", cfg.Volume, "reason", st.Reason)
				cfg.ReadOnly = true
			}
		}
	}
	p.srv, err = mountVolume(ctx, log, dev, cfg)
	if err != nil {
		if cerr := p.closeDevices(); cerr != nil {
			log.Warn("close volume", "err", cerr)
		}
		return nil, err
	}
	wctx, stopWatch := context.WithCancel(ctx)
	p.stopWatch, p.watched = stopWatch, make(chan struct{})
	go func() {
		defer close(p.watched)
		if p.m != nil {
			watchMirror(wctx, log.With("volume", cfg.Volume), p.m, 5*time.Second)
		}
	}()
	p.unmounted = make(chan struct{})
	go func() {
		p.srv.Wait()
		close(p.unmounted)
	}()
	return p, nil
}

// serve returns once the filesystem is unmounted from outside or, when ctx
// ends, once it unmounted it; then it closes the primary.
func (p *primary) serve(ctx context.Context) error {
	select {
	case <-p.unmounted:
		p.log.Info("unmounted from outside", "volume", p.cfg.Volume, "mountpoint", p.cfg.Mountpoint)
	case <-ctx.Done():
		p.log.Info("unmounting", "volume", p.cfg.Volume, "mountpoint", p.cfg.Mountpoint, "cause", context.Cause(ctx))
		// fusefs retries a busy mountpoint for long before it gives up:
		// say early what may hold it.
		slow := time.AfterFunc(unmountSlowAfter, func() {
			p.log.Warn("still unmounting: is the mountpoint busy? Close the files and leave the directories under it",
				"volume", p.cfg.Volume, "mountpoint", p.cfg.Mountpoint, "waited", unmountSlowAfter.String())
		})
		unmount(p.log, p.srv, p.cfg.Mountpoint, p.unmounted)
		slow.Stop()
		p.log.Info("unmounted", "volume", p.cfg.Volume, "mountpoint", p.cfg.Mountpoint)
	}
	return p.close()
}

// close stops the mirror watcher and closes the mirror, its client and the
// volume, in that order. The filesystem must be unmounted.
func (p *primary) close() error {
	p.stopWatch()
	<-p.watched
	return p.closeDevices()
}

// closeDevices closes the mirror, its client and the volume, in that order.
func (p *primary) closeDevices() error {
	var errs []error
	if p.m != nil {
		p.unregister()
		errs = append(errs, p.m.Close())
		p.cl.Close()
	}
	errs = append(errs, closeVolume(p.log, p.vol))
	return errors.Join(errs...)
}

// openOrCreate opens the volume of cfg, creating and formatting it first if
// cfg.Data holds none and cfg.Size is set.
func openOrCreate(ctx context.Context, log *slog.Logger, cfg *configs.Mount) (*blockdev.FileVolume, error) {
	exists, err := blockdev.Exists(cfg.Data, nil)
	if err != nil {
		return nil, err
	}
	if !exists {
		if cfg.Size == 0 {
			return nil, &configs.Error{Key: "data", Err: fmt.Errorf(
				"%s holds no volume: pass --size (like --size 1GiB) to create and format one there, or run tricopy format first", cfg.Data)}
		}
		if cfg.ReadOnly {
			return nil, &configs.Error{Key: "read-only", Err: fmt.Errorf(
				"%s holds no volume, and a read-only mount does not create one: mount once without --read-only, or run tricopy format first", cfg.Data)}
		}
		vol, err := createFormatted(ctx, log, cfg.Data, cfg.Size, cfg.Inodes)
		if err != nil {
			return nil, err
		}
		log.Info("created and formatted volume", "volume", cfg.Volume, "data", cfg.Data, "uuid", vol.UUID(),
			"size", configs.Size(vol.BlockCount()*blockdev.BlockSize).String(), "blocks", vol.BlockCount())
		return vol, nil
	}
	vol, err := blockdev.Open(cfg.Data, volumeOptions(log))
	if err != nil {
		return nil, openError(cfg.Data, err)
	}
	if cfg.Size != 0 && sizeBlocks(cfg.Size) != vol.BlockCount() {
		log.Warn("size ignored: the volume exists", "volume", cfg.Volume, "size", cfg.Size.String(),
			"volume_size", configs.Size(vol.BlockCount()*blockdev.BlockSize).String())
	}
	return vol, nil
}

// mountVolume creates the mountpoint if needed and mounts the filesystem of
// dev on it.
func mountVolume(ctx context.Context, log *slog.Logger, dev fusefs.Device, cfg *configs.Mount) (*fusefs.Server, error) {
	if err := makeMountpoint(cfg.Mountpoint); err != nil {
		return nil, err
	}
	srv, err := fusefs.Mount(ctx, dev, fusefs.MountOptions{
		Mountpoint: cfg.Mountpoint,
		Name:       cfg.Volume,
		ReadOnly:   cfg.ReadOnly,
		AllowOther: cfg.AllowOther,
		Debug:      cfg.DebugFUSE,
		Logger:     log,
	})
	if err != nil {
		return nil, fmt.Errorf("mount volume %s at %s: %w", cfg.Volume, cfg.Mountpoint, err)
	}
	return srv, nil
}

// unmount unmounts srv and returns once the filesystem is unmounted
// (unmounted is closed). fusefs retries a busy mountpoint for a while; if it
// gives up, unmount waits for an unmount from outside.
func unmount(log *slog.Logger, srv *fusefs.Server, mountpoint string, unmounted <-chan struct{}) {
	select {
	case <-unmounted:
		return
	default:
	}
	if err := srv.Unmount(); err != nil {
		log.Error("unmount failed; waiting for the filesystem to be unmounted: close the files and leave the directories under the mountpoint, "+
			"then run fusermount3 -u "+mountpoint+" (or press Ctrl-C again to exit and leave it mounted)", "err", err)
	}
	<-unmounted
}
