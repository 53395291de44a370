package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/intermediate"
	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/client"
)

// upNode is the ID of the intermediate node of `tricopy up`.
const upNode = "i1"

const (
	// upLeaderTimeout bounds the wait for up's intermediate node to become
	// leader of its single-node cluster (an election takes about a second).
	upLeaderTimeout = 30 * time.Second
	// upStatusWait bounds the wait for every volume to reach PAIR before up
	// prints the status (new volumes are first copied whole: COPY).
	upStatusWait = 10 * time.Second
)

func newUpCmd(a *app) *cobra.Command {
	cfg := configs.DefaultUp()
	return newCommand(a, commandSpec{
		use:   "up",
		short: "Run the local deployment: one intermediate node, mirrored primaries and their secondaries under --dir",
		long: `Up runs a whole deployment on this machine, in the foreground: one intermediate
node (a single-node Raft cluster, node i1, serving --listen), one primary per
name in --volumes, each mirrored synchronously to that node and mounted with
FUSE, and (unless --secondaries=false) a secondary of each, following it
asynchronously, with its replica mounted read-only. Everything lives under
--dir:

  DIR/intermediate/i1      the intermediate node's Raft log, snapshots and volumes
  DIR/data/NAME            volume NAME (created and formatted on first use, of --size)
  DIR/primary/NAME         where volume NAME is mounted (created if missing)
  DIR/secondary-data/NAME  the replica and staging store of NAME's secondary
  DIR/secondary/NAME       where NAME's replica is mounted, read-only: a file
                           written under DIR/primary/NAME appears there
                           within a round (DIR/secondary/NAME/.tricopy/applied
                           holds the validated point it shows)

Up starts the intermediate node and waits until it leads, then opens, mirrors
and mounts each volume as tricopy mount --intermediate does (a new volume is
first copied whole to the intermediate: state COPY, while the mount is usable;
then PAIR), then starts the secondaries as tricopy secondary does (admin API
of the i-th one on --secondary-listen's port + i). It prints "intermediate
node i1 serving at ADDR", one line "mounted volume NAME at MNT" per volume,
one line "mounted replica of volume NAME at MNT" per secondary once its
replica holds a filesystem, then, once every volume and secondary is in PAIR
(or after 10 seconds), the status of the group as tricopy status prints it,
and how to watch it. Run again on the same --dir, up finds its state and
volumes and goes on where it stopped.

SIGINT (Ctrl-C) or SIGTERM unmounts every volume, then every replica (waiting for the operations
in progress; a busy mountpoint is reported and waited for, as by tricopy
mount; a second Ctrl-C exits at once, leaving mounts behind), closes the
mirrors and the volumes, stops the intermediate node, and exits 0. A volume
unmounted from outside is closed; the others and the node go on. If anything
fails while starting, up undoes what it started and exits 1; if the
intermediate node stops on an error, up unmounts everything and exits 1.`,
		example: `  tricopy up --config configs/local.yaml --dir /tmp/tricopy-run
  tricopy up --dir /tmp/tricopy-run --volumes a,b,c --size 256MiB --fence never
  tricopy status --intermediate 127.0.0.1:7100`,
	}, &cfg, runUp)
}

// runUp is `tricopy up`.
func runUp(ctx context.Context, a *app, log *slog.Logger, cfg *configs.Up) error {
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return &configs.Error{Key: "dir", Err: err}
	}
	var certs *upCerts
	if cfg.TLS {
		if certs, err = setupUpTLS(dir, cfg.Volumes, log); err != nil {
			return err
		}
	}
	// One registry and metrics server for every part: the collectors of
	// the node, the mirrors and the secondaries, told apart by their
	// volume label.
	reg, stopMetrics, err := processMetrics(cfg.Metrics, statusFrom{[]string{cfg.Listen}, cfg.Group, toIntermediate(certs.adminTLS())}, log)
	if err != nil {
		return err
	}
	defer stopMetrics()
	prog, a, log := startProgress(a, log) // bars of the copies and resyncs on a terminal
	defer prog.Close()

	node, err := openUpNode(ctx, log, cfg, dir, certs.nodeTLS(), reg)
	if err != nil {
		return err
	}
	fmt.Fprintf(a.stdout, "intermediate node %s serving at %s\n", node.ID(), node.ClientAddr())

	// The primaries are served until pctx ends: Ctrl-C, the node's failure,
	// or a failed start-up.
	pctx, stopPrimaries := context.WithCancelCause(ctx)
	defer stopPrimaries(nil)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error // of the primaries, once closed
	)
	// stop unmounts and closes every primary started (concurrently, so that
	// one busy mountpoint does not hold the others), then stops the node.
	stop := func(cause error) error {
		stopPrimaries(cause)
		wg.Wait()
		if err := node.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close intermediate node %s: %w", node.ID(), err))
		}
		log.Info("stopped intermediate node", "node", node.ID())
		return errors.Join(errs...)
	}

	for _, name := range cfg.Volumes {
		mcfg := primaryConfig(cfg, dir, name, node.ClientAddr())
		p, err := openPrimary(pctx, log, mcfg, certs.primaryTLS(name), reg, prog)
		if err != nil {
			if ctx.Err() != nil {
				err = fmt.Errorf("interrupted while starting volume %s: %w", name, err)
			}
			if serr := stop(err); serr != nil {
				log.Warn("stop after a failed start-up", "err", serr)
			}
			return err
		}
		fmt.Fprintf(a.stdout, "mounted volume %s at %s\n", name, mcfg.Mountpoint)
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := p.serve(pctx)
			if err != nil {
				log.Error("close volume", "volume", name, "err", err)
				mu.Lock()
				errs = append(errs, fmt.Errorf("volume %s: %w", name, err))
				mu.Unlock()
			}
			if pctx.Err() == nil {
				// Unmounted from outside: the volume is closed and free.
				log.Warn("volume closed after an unmount from outside; the other volumes and the intermediate node go on until Ctrl-C",
					"volume", name)
			}
		}()
	}
	// The secondaries are served until sctx ends, and stopped after the
	// primaries.
	sctx, stopSecondaries := context.WithCancelCause(ctx)
	defer stopSecondaries(nil)
	var swg sync.WaitGroup
	stopAll := stop
	stop = func(cause error) error {
		stopPrimaries(cause)
		wg.Wait()
		stopSecondaries(cause)
		swg.Wait()
		return stopAll(cause)
	}
	if cfg.Secondaries {
		for i, name := range cfg.Volumes {
			scfg, err := secondaryConfig(cfg, dir, name, node.ClientAddr(), i)
			if err != nil {
				return errors.Join(err, stop(err))
			}
			r, err := openSecondary(sctx, log, scfg, certs.secondaryTLS(name), nil, reg, prog)
			if err != nil {
				err = fmt.Errorf("start the secondary of volume %s: %w", name, err)
				if serr := stop(err); serr != nil {
					log.Warn("stop after a failed start-up", "err", serr)
				}
				return err
			}
			swg.Add(1)
			go func() {
				defer swg.Done()
				select {
				case <-r.mounted():
					fmt.Fprintln(a.stdout, r.mountedLine())
				case <-sctx.Done():
				}
			}()
			swg.Add(1)
			go func() {
				defer swg.Done()
				if err := r.serve(sctx); err != nil {
					log.Error("close secondary", "volume", name, "err", err)
					mu.Lock()
					errs = append(errs, fmt.Errorf("secondary of volume %s: %w", name, err))
					mu.Unlock()
				}
			}()
		}
	}

	printUpStatus(ctx, a, log, cfg, node, certs.adminTLS())
	if ctx.Err() == nil {
		fmt.Fprintf(a.stdout, "watch the group with: tricopy status --intermediate %s%s; Ctrl-C unmounts and stops\n", node.ClientAddr(), certs.statusFlags())
	}

	select {
	case <-ctx.Done():
		log.Info("stopping", "cause", context.Cause(ctx))
		return stop(context.Cause(ctx))
	case <-node.Fatal():
		ferr := fmt.Errorf("intermediate node %s stopped: %w", node.ID(), node.FatalErr())
		log.Error("intermediate node stopped: unmounting every volume", "err", node.FatalErr())
		return errors.Join(ferr, stop(ferr))
	}
}

// openUpNode starts up's intermediate node, a single-node cluster with its
// state in DIR/intermediate/i1, and waits until it is leader. Its metrics
// are registered on reg (none if nil).
func openUpNode(ctx context.Context, log *slog.Logger, cfg *configs.Up, dir string, tlsm *auth.Material, reg prometheus.Registerer) (*intermediate.Node, error) {
	ndir := filepath.Join(dir, "intermediate", upNode)
	node, err := intermediate.Open(ctx, intermediate.Config{
		ID:       upNode,
		Dir:      ndir,
		Group:    cfg.Group,
		Listen:   cfg.Listen,
		RaftAddr: cfg.Raft,
		Cluster:  []intermediate.Peer{{ID: upNode, RaftAddr: cfg.Raft}},
		Metrics:  reg,
		TLS:      tlsm,
		Logger:   log,
	})
	if err != nil {
		return nil, fmt.Errorf("start intermediate node %s in %s: %w", upNode, ndir, err)
	}
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	deadline := time.After(upLeaderTimeout)
	for !node.IsLeader() {
		var werr error
		select {
		case <-t.C:
			continue
		case <-ctx.Done():
			werr = fmt.Errorf("interrupted while waiting for intermediate node %s to become leader: %w", upNode, context.Cause(ctx))
		case <-node.Fatal():
			werr = fmt.Errorf("intermediate node %s stopped: %w", upNode, node.FatalErr())
		case <-deadline:
			werr = fmt.Errorf("intermediate node %s did not become leader within %v (does the Raft state in %s belong to another cluster?)",
				upNode, upLeaderTimeout, ndir)
		}
		if cerr := node.Close(); cerr != nil {
			log.Warn("close intermediate node", "err", cerr)
		}
		return nil, werr
	}
	log.Info("intermediate node is leader", "node", upNode, "addr", node.ClientAddr(), "group", cfg.Group)
	return node, nil
}

// primaryConfig is the mount configuration of volume name in up's layout,
// mirrored to the intermediate at addr.
func primaryConfig(cfg *configs.Up, dir, name, addr string) *configs.Mount {
	m := configs.DefaultMount()
	m.Volume = name
	m.Data = filepath.Join(dir, "data", name)
	m.Mountpoint = filepath.Join(dir, "primary", name)
	m.Size = cfg.Size
	m.Intermediate = []string{addr}
	m.Group = cfg.Group
	m.Fence = cfg.Fence
	m.FenceTimeout = cfg.FenceTimeout
	m.Common = cfg.Common
	return &m
}

// secondaryConfig is the configuration of the secondary of the i-th volume,
// name, in up's layout, following the intermediate at addr.
func secondaryConfig(cfg *configs.Up, dir, name, addr string, i int) (*configs.Secondary, error) {
	host, port, err := net.SplitHostPort(cfg.SecondaryListen)
	if err != nil {
		return nil, &configs.Error{Key: "secondary-listen", Err: err}
	}
	p, err := strconv.Atoi(port)
	if err != nil || p+i > 65535 {
		return nil, &configs.Error{Key: "secondary-listen", Err: fmt.Errorf("port %q: no room for %d secondaries", port, i+1)}
	}
	s := configs.DefaultSecondary()
	s.Volume = name
	s.Data = filepath.Join(dir, "secondary-data", name)
	s.Mountpoint = filepath.Join(dir, "secondary", name)
	s.Intermediate = []string{addr}
	s.Listen = net.JoinHostPort(host, strconv.Itoa(p+i))
	s.Group = cfg.Group
	s.Common = cfg.Common
	return &s, nil
}

// printUpStatus prints the status of the group once every volume of cfg
// is in PAIR, or as it is after upStatusWait.
func printUpStatus(ctx context.Context, a *app, log *slog.Logger, cfg *configs.Up, node *intermediate.Node, tlsm *auth.Material) {
	cl, err := client.New(client.Config{Addrs: []string{node.ClientAddr()}, Group: cfg.Group, TLS: toIntermediate(tlsm), Logger: log})
	if err != nil {
		log.Warn("status", "err", err)
		return
	}
	defer cl.Close()
	wctx, cancel := context.WithTimeout(ctx, upStatusWait)
	defer cancel()
	var doc *statusJSON
	for {
		qctx, qcancel := context.WithTimeout(wctx, 2*time.Second)
		doc = collectStatus(qctx, cl, cfg.Group)
		qcancel()
		if allPaired(doc, cfg.Volumes) || wctx.Err() != nil {
			break
		}
		select {
		case <-wctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	if ctx.Err() != nil {
		return
	}
	printStatus(a, doc)
}

// allPaired reports whether doc is healthy and shows every one of volumes
// in PAIR.
func allPaired(doc *statusJSON, volumes []string) bool {
	if !doc.Healthy {
		return false
	}
	for _, name := range volumes {
		if !slices.ContainsFunc(doc.Volumes, func(v volumeJSON) bool { return v.Name == name && v.State == "PAIR" }) {
			return false
		}
	}
	return true
}
