package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/secondary"
)

func newPromoteCmd(a *app) *cobra.Command {
	cfg := configs.DefaultPromote()
	return newCommand(a, commandSpec{
		use:   "promote",
		short: "Promote the whole group at the far site: every secondary becomes the primary of its volume",
		long: `Promote asks the secondary at --secondary for its group's secondaries (each
secondary learns them from the intermediate and keeps them on disk, so promote
works with the primary site and the intermediate gone), then promotes all of
them together, at one point N of the group's global order:

- With the intermediate reachable (within --intermediate-timeout): it first
  fences the old primaries (the intermediate raises every volume's epoch, so
  no batch of an old primary commits from then on; N is the last seq
  committed), then drains: it waits until every secondary applied N. Nothing
  any primary acknowledged is lost. The new primaries mirror to the
  intermediate at their new epochs.
- Without the intermediate: N is the highest validated point any secondary
  knows (every secondary prepared it, so every one can reach it). Each rolls
  forward to N; batches staged after N are kept aside, not applied (export
  them with --export-unapplied). The new primaries run suspended (changes
  local and marked in their bitmaps) at epochs one above those they knew.

Each secondary's mount turns read-write in place: the path programs use does
not change. An old primary that comes back finds its epoch stale and stays
read-only (tricopy status shows it FENCED).

Promote is idempotent: run again after an interruption, it finishes the same
promotion; run on a promoted group, it prints the promotion and changes
nothing. It prints N, per volume the new epoch and the batches not applied,
and the time taken (--json: one object, documented in docs/STATUS.md). Exit
code 0 when every secondary is promoted, 1 otherwise (naming the secondary at
fault), 2 on a usage or configuration error.`,
		example: `  tricopy promote --secondary 10.0.2.1:7300
  tricopy promote --secondary 10.0.2.1:7300 --json --export-unapplied /var/tmp/unapplied`,
	}, &cfg, runPromote)
}

// runPromote is `tricopy promote`.
func runPromote(ctx context.Context, a *app, log *slog.Logger, cfg *configs.Promote) error {
	tlsm, err := loadTLS(&cfg.TLS, log, auth.Grant{Role: auth.RoleAdmin})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	res, err := secondary.PromoteGroup(ctx, secondary.GroupOptions{
		Secondary: cfg.Secondary, Intermediate: cfg.Intermediate, IntermediateTimeout: cfg.IntermediateTimeout,
		ExportDir: cfg.ExportUnapplied, By: promoteBy(), TLS: tlsm, Logger: log,
	})
	if err != nil {
		return err
	}
	if cfg.JSON {
		enc := json.NewEncoder(a.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	printPromote(a.stdout, res)
	return nil
}

// promoteBy says who runs the promotion, for the records.
func promoteBy() string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown-host"
	}
	return fmt.Sprintf("tricopy promote on %s (pid %d)", host, os.Getpid())
}

// printPromote prints the result for people.
func printPromote(w io.Writer, res *secondary.GroupPromotion) {
	switch {
	case res.Already:
		fmt.Fprintf(w, "the group was promoted already by promotion %s at seq %d; nothing changed\n", res.PromotionID, res.N)
	case res.Drained:
		fmt.Fprintf(w, "promoted the group at seq %d after a drain: the old primaries are fenced, nothing they acknowledged is lost (promotion %s, %.2fs)\n",
			res.N, res.PromotionID, res.TookSeconds)
	default:
		fmt.Fprintf(w, "promoted the group WITHOUT the intermediate at seq %d, the highest validated point the secondaries knew (promotion %s, %.2fs)\n",
			res.N, res.PromotionID, res.TookSeconds)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VOLUME\tSECONDARY\tADDR\tEPOCH\tNOT APPLIED\tEXPORTED")
	for _, v := range res.Volumes {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d batches (%s)\t%s\n", v.Volume, v.Secondary, v.Addr, v.Epoch,
			v.UnappliedBatches, configs.Size(v.UnappliedBytes).String(), cmp.Or(v.Exported, "-"))
	}
	tw.Flush()
}
