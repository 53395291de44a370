package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/blockdev/mirror"
	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/secondary"
)

func newFailbackCmd(a *app) *cobra.Command {
	cfg := configs.DefaultFailback()
	return newCommand(a, commandSpec{
		use:   "failback",
		short: "Turn an old primary, fenced by a promotion, into a secondary of the new primary",
		long: `Failback runs on the old primary site once the far site was promoted (tricopy
promote) and the old primary's host is back. It reads the old primary's volume
in --from (its tricopy mount --data; the old primary must be stopped) and
makes it the replica of a new secondary in --data that follows the volume's
new primary through the intermediate, then runs that secondary in the
foreground exactly like tricopy secondary (same flags, same admin API, the
replica read-only at --mountpoint).

The replica is the old volume with only these regions copied from the
intermediate volume: those the new primary changed since the promotion (the
intermediate marks them from the promotion on), those the old primary may have
missed from before it (the batches the journal held at the promotion), and
those the old primary changed alone (its primary bitmap). It prints the regions
and bytes copied. The replica is shown at the first validated point after the
copy.

The volume must have been promoted elsewhere: the old primary's epoch (in
--from) must be older than the volume's epoch at the intermediate. --from is
only read, and kept: remove it once the failback is done. Run again, failback
just runs the secondary of --data.

To return the group to this site afterwards, run tricopy promote against one
of these secondaries: with the intermediate reachable it fences the far site's
primaries and drains first, so nothing is lost (a planned switch-over).`,
		example: `  tricopy failback --from /var/lib/tricopy/a --volume a --data /var/lib/tricopy/failback/a --mountpoint /srv/replica/a --intermediate 10.0.1.1:7100 --listen 10.0.0.1:7300`,
	}, &cfg, runFailback)
}

// runFailback is `tricopy failback`.
func runFailback(ctx context.Context, a *app, log *slog.Logger, cfg *configs.Failback) error {
	tlsm, err := loadTLS(&cfg.TLS, log, auth.Grant{Role: auth.RoleSecondary, Name: cfg.Volume})
	if err != nil {
		return err
	}
	reg, stopMetrics, err := processMetrics(cfg.Metrics, statusFrom{cfg.Intermediate, cfg.Group, toIntermediate(tlsm)}, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	exists, err := secondary.HasReplica(nil, cfg.Data)
	if err != nil {
		return &configs.Error{Key: "data", Err: err}
	}
	var fb *secondary.FailbackSource
	var old *blockdev.FileVolume
	if !exists {
		old, fb, err = openFailbackSource(ctx, log, cfg, tlsm)
		if err != nil {
			return err
		}
		defer func() {
			if old != nil {
				closeVolume(log, old)
			}
		}()
	}
	r, err := openSecondary(ctx, log, &cfg.Secondary, tlsm, fb, reg)
	if err != nil {
		return err
	}
	if old != nil {
		closeVolume(log, old)
		old = nil
	}
	if st := r.s.Status().Failback; st != nil {
		fmt.Fprintf(a.stdout, "failback of volume %s: copied %d regions (%d bytes) from the intermediate over the old primary's volume, redid %d batches, in %s\n",
			cfg.Volume, st.Regions, st.CopiedBytes, st.RedoBatches, st.Took.Round(time.Millisecond))
	}
	go func() {
		select {
		case <-r.mounted():
			fmt.Fprintln(a.stdout, r.mountedLine())
		case <-r.stopped:
		}
	}()
	return r.serve(ctx)
}

// openFailbackSource opens the old primary's volume in cfg.From and checks
// that it was fenced by a promotion.
func openFailbackSource(ctx context.Context, log *slog.Logger, cfg *configs.Failback, tlsm *auth.Material) (*blockdev.FileVolume, *secondary.FailbackSource, error) {
	rec, found, err := mirror.Inspect(nil, cfg.From)
	switch {
	case err != nil:
		return nil, nil, &configs.Error{Key: "from", Err: err}
	case !found:
		return nil, nil, &configs.Error{Key: "from", Err: fmt.Errorf("%s holds no mirrored primary (no mirror state): failback needs the old primary's data directory", cfg.From)}
	case rec.Volume != cfg.Volume:
		return nil, nil, &configs.Error{Key: "from", Err: fmt.Errorf("%s holds the primary of volume %q, not %q", cfg.From, rec.Volume, cfg.Volume)}
	}
	cl, err := client.New(client.Config{Addrs: cfg.Intermediate, Group: cfg.Group, TLS: toIntermediate(tlsm), Logger: log})
	if err != nil {
		return nil, nil, &configs.Error{Key: "intermediate", Err: err}
	}
	defer cl.Close()
	st, err := cl.Status(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("failback needs the intermediate: %w", err)
	}
	var epoch uint64
	for _, v := range st.GetVolumes() {
		if v.GetName() == cfg.Volume {
			epoch = v.GetEpoch()
		}
	}
	switch {
	case epoch == 0:
		return nil, nil, fmt.Errorf("volume %s is not registered at the intermediate", cfg.Volume)
	case epoch <= rec.Epoch:
		return nil, nil, fmt.Errorf("the old primary in %s is at epoch %d, the volume at the intermediate at %d: it was not promoted elsewhere, and its primary is current; failback refuses to replace it", cfg.From, rec.Epoch, epoch)
	}
	vol, err := blockdev.Open(cfg.From, volumeOptions(log))
	if err != nil {
		return nil, nil, &configs.Error{Key: "from", Err: openError(cfg.From, err)}
	}
	log.Info("failback: the old primary was fenced by a promotion", "volume", cfg.Volume, "old_epoch", rec.Epoch, "epoch", epoch,
		"state", rec.State, "old_dirty_regions", rec.DirtyRegions, "old_applied_seq", rec.AppliedSeq)
	return vol, &secondary.FailbackSource{Volume: vol, Bitmap: rec.Bitmap}, nil
}
