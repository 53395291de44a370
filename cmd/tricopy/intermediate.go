package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/intermediate"
	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/client"
)

func newIntermediateCmd(a *app) *cobra.Command {
	cfg := configs.DefaultIntermediate()
	c := newCommand(a, commandSpec{
		use:   "intermediate",
		short: "Run one node of the intermediate Raft cluster",
		long: `Intermediate runs one node of the intermediate cluster, in the foreground: the
Raft-replicated sequencer that gives the writes of every primary of the group
one global order (the gapless seq), keeps the journal of committed batches and
one intermediate volume per primary volume.

Primaries submit to --listen (any node; followers send them to the leader),
secondaries fetch from any node, and tricopy status asks any node. Nodes talk
Raft on --raft. The Raft log, snapshots and intermediate volumes live in
--data; a restarted node rejoins with its state.

A new cluster: start every node with the same --cluster list. Without --cluster
and --join the node forms a single-node cluster of its own (the same as
--cluster ID=RAFT, the embedded default). A node added later starts with --join
and the client address of any member instead; 'tricopy intermediate remove'
takes a node out. --cluster and --join only matter while --data is empty.

The node prints "intermediate node ID serving at ADDR" on standard output once
it serves. SIGINT or SIGTERM stops it (it stays a member). If its state machine
meets an entry or batch that fails its checksum it stops serving and exits 1:
the node must be wiped and rejoined (it then catches up by snapshot).`,
		example: `  tricopy intermediate --node i1 --data /var/lib/tricopy/i1 --listen 127.0.0.1:7100 --raft 127.0.0.1:7200
  tricopy intermediate --node i2 --data /var/lib/tricopy/i2 --listen 10.0.0.2:7100 \
      --raft 10.0.0.2:7200 --cluster i1=10.0.0.1:7200,i2=10.0.0.2:7200,i3=10.0.0.3:7200
  tricopy intermediate --node i4 --data /var/lib/tricopy/i4 --listen 10.0.0.4:7100 \
      --raft 10.0.0.4:7200 --join 10.0.0.1:7100`,
	}, &cfg, runIntermediate)
	c.AddCommand(newIntermediateRemoveCmd(a))
	return c
}

// runIntermediate is `tricopy intermediate`.
func runIntermediate(ctx context.Context, a *app, log *slog.Logger, cfg *configs.Intermediate) error {
	peers, err := cfg.Peers()
	if err != nil {
		return err
	}
	tlsm, err := loadTLS(&cfg.TLS, log, auth.Grant{Role: auth.RoleIntermediate, Name: cfg.Node})
	if err != nil {
		return err
	}
	reg, stopMetrics, err := processMetrics(cfg.Metrics, statusFrom{[]string{cfg.Listen}, cfg.Group, toIntermediate(tlsm)}, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	icfg := intermediate.Config{
		ID:                cfg.Node,
		Dir:               cfg.Data,
		Group:             cfg.Group,
		Listen:            cfg.Listen,
		RaftAddr:          cfg.Raft,
		Join:              cfg.Join,
		JournalBudget:     uint64(cfg.JournalBudget),
		MaxMessage:        int(cfg.MaxMessage),
		SnapshotThreshold: cfg.SnapshotThreshold,
		SnapshotInterval:  cfg.SnapshotInterval,
		TrailingLogs:      cfg.TrailingLogs,
		TrimInterval:      cfg.TrimInterval,
		SuspendThreshold:  uint64(cfg.SuspendThreshold),
		Metrics:           reg,
		TLS:               tlsm,
		Logger:            log,
	}
	for _, p := range peers {
		icfg.Cluster = append(icfg.Cluster, intermediate.Peer{ID: p[0], RaftAddr: p[1]})
	}
	node, err := intermediate.Open(ctx, icfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "intermediate node %s serving at %s\n", node.ID(), node.ClientAddr())
	var fatal error
	select {
	case <-ctx.Done():
		log.Info("stopping")
	case <-node.Fatal():
		fatal = node.FatalErr()
	}
	if err := node.Close(); err != nil && fatal == nil {
		return fmt.Errorf("close node %s: %w", cfg.Node, err)
	}
	if fatal != nil {
		return fmt.Errorf("node %s stopped: %w", cfg.Node, fatal)
	}
	return nil
}

func newIntermediateRemoveCmd(a *app) *cobra.Command {
	cfg := configs.DefaultIntermediateRemove()
	return newCommand(a, commandSpec{
		use:   "remove",
		short: "Take a node out of the intermediate cluster",
		long: `Remove asks the cluster's leader (found through any of --intermediate) to take
node --node out of the Raft configuration. Removing a node that is not a member
succeeds and does nothing. Stop the removed node's process afterwards; to bring
it back, wipe its --data and start it with --join.`,
		example: `  tricopy intermediate remove --intermediate 10.0.0.1:7100,10.0.0.2:7100 --node i3`,
	}, &cfg, runIntermediateRemove)
}

// runIntermediateRemove is `tricopy intermediate remove`.
func runIntermediateRemove(ctx context.Context, a *app, log *slog.Logger, cfg *configs.IntermediateRemove) error {
	tlsm, err := loadTLS(&cfg.TLS, log)
	if err != nil {
		return err
	}
	cl, err := client.New(client.Config{Addrs: cfg.Intermediate, TLS: toIntermediate(tlsm), Logger: log})
	if err != nil {
		return err
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if err := cl.Remove(ctx, cfg.Node); err != nil {
		return fmt.Errorf("remove node %s: %w", cfg.Node, err)
	}
	fmt.Fprintf(a.stdout, "removed node %s\n", cfg.Node)
	return nil
}
