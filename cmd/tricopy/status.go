package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// errUnhealthy is returned by status when the group is not healthy (no
// leader reachable).
var errUnhealthy = errors.New("group not healthy")

// statusJSON is the document `tricopy status --json` prints. Its fields are
// a stable contract, documented in docs/STATUS.md: fields may be added,
// never renamed or removed.
type statusJSON struct {
	Group        string `json:"group"`
	Leader       string `json:"leader"`
	LeaderAddr   string `json:"leader_addr"`
	CommittedSeq uint64 `json:"committed_seq"`
	ValidSeq     uint64 `json:"valid_seq"`
	ValidatedSeq uint64 `json:"validated_seq"`
	HeldBy       string `json:"held_by"`
	// ConsistentSeq is the highest seq the validated point may take:
	// valid_seq, or just below the earliest open copy window
	// (volumes[].copy_since_seq); CopyHeldBy names that window's volume,
	// empty when none holds the point.
	ConsistentSeq  uint64       `json:"consistent_seq"`
	CopyHeldBy     string       `json:"copy_held_by"`
	JournalBatches uint64       `json:"journal_batches"`
	JournalBytes   uint64       `json:"journal_bytes"`
	JournalBudget  uint64       `json:"journal_budget"`
	Volumes        []volumeJSON `json:"volumes"`
	Nodes          []nodeJSON   `json:"nodes"`
	Healthy        bool         `json:"healthy"`
	Problems       []string     `json:"problems"`
}

// volumeJSON is one volume in statusJSON.
type volumeJSON struct {
	Name         string `json:"name"`
	Epoch        uint64 `json:"epoch"`
	CommittedSeq uint64 `json:"committed_seq"`
	VolumeSeq    uint64 `json:"volume_seq"`
	BlockCount   uint64 `json:"block_count"`
	// State is the pair state the volume's primary reported (COPY, PAIR,
	// SUSP, RESYNC, FENCED), DISCONNECTED when its primary reported before
	// but its Submit stream is closed now, or "" when no primary reported
	// to the current leader.
	State            string `json:"state"`
	PrimaryConnected bool   `json:"primary_connected"`
	DirtyRegions     uint64 `json:"dirty_regions"`
	ResyncDone       uint64 `json:"resync_done_regions"`
	ResyncTotal      uint64 `json:"resync_total_regions"`
	Reason           string `json:"reason,omitempty"`
	// CopySinceSeq is the seq of the first batch of the volume's open copy
	// window (its primary copies or resynchronises, so its image at the
	// intermediate is torn from there on), 0 when none is open.
	CopySinceSeq uint64 `json:"copy_since_seq"`
	// Secondaries are the volume's secondaries, as the leader knows them.
	Secondaries []secondaryJSON `json:"secondaries"`
	// Promotions is the volume's promotion history, oldest first (the
	// intermediate keeps the latest 16); empty when it was never promoted.
	Promotions []promotionJSON `json:"promotions"`
	// ChangedSincePromotion counts the 64 KiB regions that may differ
	// between the intermediate volume and the old primary's volume since
	// the last promotion: what a failback of the old primary copies (with
	// the regions it changed locally). 0 when it was never promoted.
	ChangedSincePromotion uint64 `json:"changed_since_promotion_regions"`
	// StalePrimary is the last refused attempt of a primary at another
	// epoch (an old primary fenced by a promotion) to open the volume, as
	// this leader saw it; absent when none.
	StalePrimary *stalePrimaryJSON `json:"stale_primary,omitempty"`
}

// stalePrimaryJSON is a fenced old primary that tried to open its volume.
type stalePrimaryJSON struct {
	Epoch uint64 `json:"epoch"`
	Peer  string `json:"peer"`
	Time  string `json:"time"`
}

// staleProblemFor is how long after a fenced old primary tried to open its
// volume status counts it as a problem.
const staleProblemFor = 10 * time.Minute

// promotionJSON is one promotion of a volume in statusJSON.
type promotionJSON struct {
	ID    string `json:"promotion_id"`
	Epoch uint64 `json:"epoch"`
	Seq   uint64 `json:"seq"`
	// Time is when the intermediate's leader recorded the promotion, in
	// RFC 3339 with nanoseconds, UTC.
	Time string `json:"time"`
	By   string `json:"by"`
}

// secondaryJSON is one secondary of a volume in statusJSON.
type secondaryJSON struct {
	ID   string `json:"id"`
	Addr string `json:"addr"`
	// State is what the secondary reported (PAIR, FAILED, ...),
	// DISCONNECTED when its Coordinate stream is closed, or "" when it
	// never spoke to the current leader.
	State       string  `json:"state"`
	Connected   bool    `json:"connected"`
	FetchedSeq  uint64  `json:"fetched_seq"`
	PreparedSeq uint64  `json:"prepared_seq"`
	AppliedSeq  uint64  `json:"applied_seq"`
	LagBatches  uint64  `json:"lag_batches"`
	LagBytes    uint64  `json:"lag_bytes"`
	LagSeconds  float64 `json:"lag_seconds"`
	// Suspended: the journal dropped batches this secondary lacks (it lagged
	// while the journal filled); DirtyRegions counts the regions of its
	// intermediate bitmap, which its resync copies.
	Suspended    bool   `json:"suspended"`
	DirtyRegions uint64 `json:"dirty_regions"`
	Reason       string `json:"reason,omitempty"`
}

// nodeJSON is one intermediate node in statusJSON.
type nodeJSON struct {
	ID           string `json:"id"`
	Addr         string `json:"addr"`
	RaftAddr     string `json:"raft_addr"`
	State        string `json:"state"`
	Reachable    bool   `json:"reachable"`
	Error        string `json:"error,omitempty"`
	CommittedSeq uint64 `json:"committed_seq"`
	AppliedIndex uint64 `json:"applied_index"`
}

func newStatusCmd(a *app) *cobra.Command {
	cfg := configs.DefaultStatus()
	return newCommand(a, commandSpec{
		use:   "status",
		short: "Show the state of the consistency group",
		long: `Status asks every address in --intermediate, and the leader they name, for the
state of the group: the leader, the committed seq (the last global sequence
number given to a batch), the valid counter, the journal's use of its budget,
each volume's pair state as its primary reports it (COPY, PAIR, SUSP, RESYNC,
FENCED, or DISCONNECTED when its primary is gone), epoch, last committed seq,
dirty regions, copy progress, last promotion and the regions changed since it (what a
failback of the old primary copies), the group's validated point (the point every
secondary exposes) and which secondary holds it back, each secondary's state,
prepared and applied seq and lag (in batches, bytes and seconds), and each
intermediate node's Raft state and progress.

With --json it prints one JSON object whose fields are a stable contract for
scripts (docs/STATUS.md). It exits 0 when the group is healthy (a leader is
known and answers, every listed node answers, every volume whose primary
reported is in PAIR, every secondary is connected and in PAIR), 1 otherwise, so
it serves as a health check; with --max-lag a secondary lagging more than that
(the age of the oldest batch it has not applied) makes it unhealthy too. --watch
refreshes it every interval until interrupted.`,
		example: `  tricopy status --intermediate 127.0.0.1:7100
  tricopy status --intermediate 10.0.0.1:7100,10.0.0.2:7100,10.0.0.3:7100 --json | jq .committed_seq
  tricopy status --intermediate 127.0.0.1:7100 --max-lag 30s --watch 2s`,
	}, &cfg, runStatus)
}

// runStatus is `tricopy status`.
func runStatus(ctx context.Context, a *app, log *slog.Logger, cfg *configs.Status) error {
	tlsm, err := loadTLS(&cfg.TLS, log)
	if err != nil {
		return err
	}
	cl, err := client.New(client.Config{Addrs: cfg.Intermediate, Group: cfg.Group, TLS: toIntermediate(tlsm), Logger: log})
	if err != nil {
		return err
	}
	defer cl.Close()
	if cfg.Watch == 0 {
		return statusOnce(ctx, a, cl, cfg, false)
	}
	return watchStatus(ctx, a, cl, cfg)
}

// watchStatus shows the status every cfg.Watch until ctx ends, redrawing
// the screen on a terminal, and returns the health of the last complete
// one.
func watchStatus(ctx context.Context, a *app, cl *client.Client, cfg *configs.Status) error {
	f, ok := a.stdout.(*os.File)
	redraw := ok && isTerminal(f) && !cfg.JSON
	var last error
	for {
		if redraw {
			fmt.Fprint(a.stdout, "\x1b[H\x1b[2J")
		}
		err := statusOnce(ctx, a, cl, cfg, true)
		if ctx.Err() != nil {
			return last // the interruption cut this one short
		}
		last = err
		if redraw {
			fmt.Fprintf(a.stdout, "\nevery %s; Ctrl-C to stop\n", cfg.Watch)
		}
		select {
		case <-ctx.Done():
			return last
		case <-time.After(cfg.Watch):
		}
	}
}

// statusOnce collects and prints the status once (JSON on one line when
// watching) and returns errUnhealthy, wrapped, when the group is not
// healthy.
func statusOnce(ctx context.Context, a *app, cl *client.Client, cfg *configs.Status, watching bool) error {
	qctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	doc := collectStatus(qctx, cl, cfg.Group)
	checkMaxLag(doc, cfg.MaxLag)
	if cfg.JSON {
		enc := json.NewEncoder(a.stdout)
		if !watching {
			enc.SetIndent("", "  ")
		}
		if err := enc.Encode(doc); err != nil {
			return fmt.Errorf("write status: %w", err)
		}
	} else {
		printStatus(a, doc)
	}
	if !doc.Healthy {
		return fmt.Errorf("%w: %v", errUnhealthy, doc.Problems)
	}
	return nil
}

// checkMaxLag makes every secondary whose lag exceeds maxLag (when not 0)
// a problem.
func checkMaxLag(doc *statusJSON, maxLag time.Duration) {
	if maxLag <= 0 {
		return
	}
	for _, v := range doc.Volumes {
		for _, sec := range v.Secondaries {
			if lag := time.Duration(sec.LagSeconds * float64(time.Second)); lag > maxLag {
				doc.Problems = append(doc.Problems, fmt.Sprintf("secondary %s of volume %s lags %s, more than --max-lag %s",
					sec.ID, v.Name, lag.Round(time.Millisecond), maxLag))
				doc.Healthy = false
			}
		}
	}
}

// collectStatus builds the status document from every node's answer.
func collectStatus(ctx context.Context, cl *client.Client, group string) *statusJSON {
	doc := &statusJSON{Group: group, Volumes: []volumeJSON{}, Nodes: []nodeJSON{}, Problems: []string{}}
	all, _ := cl.StatusAll(ctx)
	leader, lerr := cl.Status(ctx)
	if lerr != nil {
		doc.Problems = append(doc.Problems, fmt.Sprintf("no node answered: %v", lerr))
	}
	byAddr := map[string]*wire.StatusResponse{}
	errs := map[string]error{}
	for _, ns := range all {
		if ns.Err != nil {
			errs[ns.Addr] = ns.Err
			continue
		}
		byAddr[ns.Addr] = ns.Status
	}
	if leader != nil {
		doc.Group = leader.GetGroup()
		doc.Leader = leader.GetLeader()
		doc.LeaderAddr = leader.GetLeaderAddr()
		doc.CommittedSeq = leader.GetCommittedSeq()
		doc.ValidSeq = leader.GetValidSeq()
		doc.ValidatedSeq = leader.GetValidatedSeq()
		doc.HeldBy = leader.GetHeldBy()
		doc.ConsistentSeq = leader.GetConsistentSeq()
		doc.JournalBatches = leader.GetJournalBatches()
		doc.JournalBytes = leader.GetJournalBytes()
		doc.JournalBudget = leader.GetJournalBudget()
		for _, v := range leader.GetVolumes() {
			vj := volumeJSON{
				Name: v.GetName(), Epoch: v.GetEpoch(), CommittedSeq: v.GetCommittedSeq(), VolumeSeq: v.GetVolumeSeq(), BlockCount: v.GetBlockCount(),
				State: v.GetState(), PrimaryConnected: v.GetConnected(), DirtyRegions: v.GetDirtyRegions(),
				ResyncDone: v.GetResyncDone(), ResyncTotal: v.GetResyncTotal(), Reason: v.GetReason(),
				Secondaries: []secondaryJSON{}, Promotions: []promotionJSON{}, ChangedSincePromotion: v.GetChangedSincePromotion(),
				CopySinceSeq: v.GetCopySinceSeq(),
			}
			if s := vj.CopySinceSeq; s != 0 && s-1 == doc.ConsistentSeq {
				doc.CopyHeldBy = vj.Name
			}
			for _, p := range v.GetPromotions() {
				vj.Promotions = append(vj.Promotions, promotionJSON{ID: p.GetPromotionId(), Epoch: p.GetEpoch(), Seq: p.GetSeq(),
					Time: time.Unix(0, p.GetTimeUnixNano()).UTC().Format(time.RFC3339Nano), By: p.GetBy()})
			}
			if e := v.GetStalePrimaryEpoch(); e != 0 {
				at := time.Unix(0, v.GetStalePrimaryTimeUnixNano())
				vj.StalePrimary = &stalePrimaryJSON{Epoch: e, Peer: v.GetStalePrimaryPeer(), Time: at.UTC().Format(time.RFC3339Nano)}
				if time.Since(at) < staleProblemFor {
					doc.Problems = append(doc.Problems, fmt.Sprintf("volume %s: a primary at stale epoch %d (from %s) tried to open it at %s and was refused: it is fenced (read-only); fail it back (tricopy failback) or stop it",
						vj.Name, e, vj.StalePrimary.Peer, vj.StalePrimary.Time))
				}
			}
			if vj.State != "" && !vj.PrimaryConnected {
				vj.State = "DISCONNECTED"
			}
			switch {
			case vj.State == "":
			case vj.State == "PAIR" && vj.Reason != "":
				doc.Problems = append(doc.Problems, fmt.Sprintf("volume %s is PAIR but its writes fail: %s", vj.Name, vj.Reason))
			case vj.State == "PAIR":
			case vj.Reason != "":
				doc.Problems = append(doc.Problems, fmt.Sprintf("volume %s is %s: %s", vj.Name, vj.State, vj.Reason))
			default:
				doc.Problems = append(doc.Problems, fmt.Sprintf("volume %s is %s", vj.Name, vj.State))
			}
			for _, sec := range leader.GetSecondaries() {
				if sec.GetVolume() != vj.Name {
					continue
				}
				sj := secondaryJSON{
					ID: sec.GetId(), Addr: sec.GetAddr(), State: sec.GetState(), Connected: sec.GetConnected(),
					FetchedSeq: sec.GetFetchedSeq(), PreparedSeq: sec.GetPreparedSeq(), AppliedSeq: sec.GetAppliedSeq(),
					LagBatches: sec.GetLagBatches(), LagBytes: sec.GetLagBytes(), LagSeconds: sec.GetLagSeconds(),
					Suspended: sec.GetSuspended(), DirtyRegions: sec.GetDirtyRegions(), Reason: sec.GetReason(),
				}
				if !sj.Connected {
					sj.State = "DISCONNECTED"
				}
				if sj.Suspended {
					doc.Problems = append(doc.Problems, fmt.Sprintf("secondary %s of volume %s is suspended: the journal dropped batches it lacks (%d dirty regions to resync)",
						sj.ID, vj.Name, sj.DirtyRegions))
				}
				if sj.State != "PAIR" {
					p := fmt.Sprintf("secondary %s of volume %s is %s", sj.ID, vj.Name, sj.State)
					if sj.Reason != "" {
						p += ": " + sj.Reason
					}
					doc.Problems = append(doc.Problems, p)
				}
				vj.Secondaries = append(vj.Secondaries, sj)
			}
			doc.Volumes = append(doc.Volumes, vj)
		}
		if leader.GetLeaderAddr() != "" {
			if _, seen := byAddr[leader.GetLeaderAddr()]; !seen {
				byAddr[leader.GetLeaderAddr()] = leader
			}
		}
		if leader.GetLeader() == "" || leader.GetRaftState() != "Leader" {
			doc.Problems = append(doc.Problems, "no leader")
		}
		for _, srv := range leader.GetServers() {
			n := nodeJSON{ID: srv.GetId(), Addr: srv.GetClientAddr(), RaftAddr: srv.GetRaftAddr(), State: "unknown"}
			for addr, st := range byAddr {
				if st.GetNode() == srv.GetId() {
					n.Addr, n.Reachable, n.State = addr, true, st.GetRaftState()
					n.CommittedSeq, n.AppliedIndex = st.GetCommittedSeq(), st.GetAppliedIndex()
				}
			}
			if !n.Reachable {
				if err, ok := errs[n.Addr]; ok {
					n.Error = err.Error()
				} else if n.Addr == "" {
					n.Error = "client address unknown (never leader, not in --intermediate)"
				}
			}
			doc.Nodes = append(doc.Nodes, n)
		}
	}
	for addr, err := range errs {
		doc.Problems = append(doc.Problems, fmt.Sprintf("node at %s did not answer: %v", addr, err))
	}
	doc.Healthy = len(doc.Problems) == 0
	return doc
}

// printStatus prints doc for a person.
func printStatus(a *app, doc *statusJSON) {
	leader := doc.Leader
	if leader == "" {
		leader = "none"
	}
	fmt.Fprintf(a.stdout, "group %s: leader %s, committed seq %d, valid seq %d, validated seq %d, journal %d batches %s of %s\n",
		doc.Group, leader, doc.CommittedSeq, doc.ValidSeq, doc.ValidatedSeq, doc.JournalBatches,
		configs.Size(doc.JournalBytes), configs.Size(doc.JournalBudget))
	if doc.HeldBy != "" {
		fmt.Fprintf(a.stdout, "the validated point is held back by secondary %s\n", doc.HeldBy)
	}
	if doc.CopyHeldBy != "" {
		fmt.Fprintf(a.stdout, "the validated point is held at seq %d by volume %s's copy: its image at the intermediate is torn until the copy ends\n",
			doc.ConsistentSeq, doc.CopyHeldBy)
	}
	tw := tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VOLUME\tSTATE\tEPOCH\tCOMMITTED SEQ\tVOLUME SEQ\tSIZE\tDIRTY REGIONS\tRESYNC")
	for _, v := range doc.Volumes {
		state, resync := v.State, "-"
		if state == "" {
			state = "-"
		}
		if v.ResyncTotal > 0 {
			resync = fmt.Sprintf("%d/%d (%.0f%%)", v.ResyncDone, v.ResyncTotal, 100*float64(v.ResyncDone)/float64(v.ResyncTotal))
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%d\t%s\n", v.Name, state, v.Epoch, v.CommittedSeq, v.VolumeSeq,
			configs.Size(v.BlockCount*wire.BlockSize), v.DirtyRegions, resync)
	}
	tw.Flush()
	for _, v := range doc.Volumes {
		if n := len(v.Promotions); n > 0 {
			p := v.Promotions[n-1]
			line := fmt.Sprintf("%s: promoted at seq %d to epoch %d at %s", v.Name, p.Seq, p.Epoch, p.Time)
			if p.By != "" {
				line += " by " + p.By
			}
			fmt.Fprintf(a.stdout, "%s (promotion %s); regions changed since: %d\n", line, p.ID, v.ChangedSincePromotion)
		}
		if sp := v.StalePrimary; sp != nil {
			fmt.Fprintf(a.stdout, "%s: STALE primary at epoch %d from %s refused at %s (fenced, read-only)\n", v.Name, sp.Epoch, sp.Peer, sp.Time)
		}
	}
	tw = tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SECONDARY\tVOLUME\tADDR\tSTATE\tPREPARED SEQ\tAPPLIED SEQ\tLAG BATCHES\tLAG BYTES\tLAG SECONDS")
	for _, v := range doc.Volumes {
		for _, sec := range v.Secondaries {
			state := sec.State
			if state == "" {
				state = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%.3f\n", sec.ID, v.Name, sec.Addr, state, sec.PreparedSeq,
				sec.AppliedSeq, sec.LagBatches, configs.Size(sec.LagBytes), sec.LagSeconds)
		}
	}
	tw.Flush()
	tw = tabwriter.NewWriter(a.stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tADDR\tRAFT ADDR\tSTATE\tCOMMITTED SEQ\tAPPLIED INDEX")
	for _, n := range doc.Nodes {
		state := n.State
		if !n.Reachable {
			state = "UNREACHABLE"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\n", n.ID, n.Addr, n.RaftAddr, state, n.CommittedSeq, n.AppliedIndex)
	}
	tw.Flush()
	for _, p := range doc.Problems {
		fmt.Fprintf(a.stdout, "problem: %s\n", p)
	}
}
