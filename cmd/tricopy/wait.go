package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/intermediate/client"
)

// errWaitTimeout is returned by wait when the secondaries did not catch up
// in time.
var errWaitTimeout = errors.New("secondaries did not catch up in time")

// waitPoll is how often wait asks the leader.
const waitPoll = 50 * time.Millisecond

func newWaitCmd(a *app) *cobra.Command {
	cfg := configs.DefaultWait()
	return newCommand(a, commandSpec{
		use:   "wait",
		short: "Wait until every secondary has applied everything committed when wait started",
		long: `Wait asks the intermediate (--intermediate, any node; it follows the leader) for
the group's committed seq C, then waits until every registered secondary of the
group has applied a validated point at or above C: from then on every replica
holds every batch acknowledged to a primary before wait started. It prints
the point reached and how long it took.

It exits 0 once that holds (at once when the group has no secondary), 1 when
--timeout passes first (naming the secondaries still behind), 2 on a usage or
configuration error.`,
		example: `  tricopy wait --intermediate 127.0.0.1:7100
  tricopy wait --intermediate 10.0.1.1:7100,10.0.1.2:7100 --timeout 30s`,
	}, &cfg, runWait)
}

// runWait is `tricopy wait`.
func runWait(ctx context.Context, a *app, log *slog.Logger, cfg *configs.Wait) error {
	tlsm, err := loadTLS(&cfg.TLS, log)
	if err != nil {
		return err
	}
	cl, err := client.New(client.Config{Addrs: cfg.Intermediate, Group: cfg.Group, TLS: toIntermediate(tlsm), Logger: log})
	if err != nil {
		return &configs.Error{Key: "intermediate", Err: err}
	}
	defer cl.Close()
	if cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
	}
	start := time.Now()
	st, err := cl.Status(ctx)
	if err != nil {
		return err
	}
	target := st.GetCommittedSeq()
	var behind []string
	for {
		behind = behind[:0]
		var lowest uint64
		first := true
		for _, sec := range st.GetSecondaries() {
			if first || sec.GetAppliedSeq() < lowest {
				lowest, first = sec.GetAppliedSeq(), false
			}
			if sec.GetAppliedSeq() < target {
				behind = append(behind, fmt.Sprintf("%s (volume %s) at %d", sec.GetId(), sec.GetVolume(), sec.GetAppliedSeq()))
			}
		}
		if st.GetRaftState() == "Leader" && len(behind) == 0 {
			if first {
				fmt.Fprintf(a.stdout, "no secondary in group %s: nothing to wait for (committed seq %d)\n", st.GetGroup(), target)
			} else {
				fmt.Fprintf(a.stdout, "every secondary applied seq %d (committed seq %d when wait started) after %s\n",
					lowest, target, time.Since(start).Round(time.Millisecond))
			}
			return nil
		}
		select {
		case <-ctx.Done():
			if len(behind) == 0 {
				behind = append(behind, "no leader answered")
			}
			return fmt.Errorf("%w: want seq %d; behind: %v", errWaitTimeout, target, behind)
		case <-time.After(waitPoll):
		}
		if st, err = cl.Status(ctx); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("%w: want seq %d; %v", errWaitTimeout, target, err)
			}
			return err
		}
	}
}
