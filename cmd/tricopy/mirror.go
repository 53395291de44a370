package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/blockdev/mirror"
	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/intermediate/client"
)

// openMirror connects to the intermediate and opens the mirror of vol,
// reconciling with the intermediate first (which waits for it until ctx
// ends). The caller closes the mirror, then the client.
func openMirror(ctx context.Context, log *slog.Logger, vol *blockdev.FileVolume, cfg *configs.Mount, tlsCfg *tls.Config) (*mirror.Mirror, *client.Client, error) {
	cl, err := client.New(client.Config{Addrs: cfg.Intermediate, Group: cfg.Group, TLS: tlsCfg, Logger: log})
	if err != nil {
		return nil, nil, &configs.Error{Key: "intermediate", Err: err}
	}
	log.Info("connecting to the intermediate", "volume", cfg.Volume, "intermediate", cfg.Intermediate, "group", cfg.Group, "fence", cfg.Fence)
	m, err := mirror.Open(ctx, mirror.Config{
		Name: cfg.Volume, Group: cfg.Group, Local: vol, Dir: vol.Dir(), Client: cl,
		Fence: mirror.Fence(cfg.Fence), Timeout: cfg.FenceTimeout, RegionSize: int(cfg.RegionSize.Bytes()),
		ResyncRate: int64(cfg.ResyncRate.Bytes()),
		Logger:     log.With("component", "mirror"), AckBeforeCommit: ackBeforeCommit(log),
	})
	if err != nil {
		cl.Close()
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("mirror of volume %s: interrupted while waiting for the intermediate at %v: %w", cfg.Volume, cfg.Intermediate, err)
		}
		return nil, nil, err
	}
	return m, cl, nil
}

// watchMirror logs the mirror's state changes, and the progress of a copy
// or resync every interval, until ctx ends. The caller waits for it.
func watchMirror(ctx context.Context, log *slog.Logger, m *mirror.Mirror, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var last mirror.Status
	for {
		st := m.Status()
		switch {
		case st.State != last.State || st.Reason != last.Reason:
			log.Info("mirror state", "state", st.State, "reason", st.Reason, "dirty_regions", st.DirtyRegions,
				"resync_done", st.ResyncDone, "resync_total", st.ResyncTotal)
		case (st.State == mirror.StateCopy || st.State == mirror.StateResync) && st.ResyncDone != last.ResyncDone:
			pct := 0.0
			if st.ResyncTotal > 0 {
				pct = 100 * float64(st.ResyncDone) / float64(st.ResyncTotal)
			}
			log.Info("copy progress", "state", st.State, "regions_done", st.ResyncDone, "regions_total", st.ResyncTotal,
				"percent", fmt.Sprintf("%.1f", pct), "copied_bytes", st.CopiedBytes)
		}
		last = st
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// ackBeforeCommitEnv is the test-only switch of
// mirror.Config.AckBeforeCommit (the chaos test's self-test): set to 1,
// the mount acknowledges writes before the intermediate commits them.
const ackBeforeCommitEnv = "TRICOPY_TEST_ACK_BEFORE_COMMIT"

// ackBeforeCommit reports whether ackBeforeCommitEnv is set, and says so
// in the log.
func ackBeforeCommit(log *slog.Logger) bool {
	if os.Getenv(ackBeforeCommitEnv) != "1" {
		return false
	}
	log.Warn("test-only: writes are acknowledged before the intermediate commits them (invariant 3 broken on purpose)", "env", ackBeforeCommitEnv)
	return true
}
