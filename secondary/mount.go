package secondary

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/fusefs"
)

// Mount is the live read-only mount of a replica, the View of a Secondary.
// A replica whose blocks hold no filesystem yet (a new secondary whose
// primary's volume has not reached it) is mounted after the first round
// that gives it one.
type Mount struct {
	cur  atomic.Pointer[Replica] // the replica served; a resync replaces it
	opts fusefs.MountOptions
	log  *slog.Logger

	mu      sync.Mutex
	srv     *fusefs.Server // nil until mounted
	mounted chan struct{}  // closed once mounted
	gone    chan struct{}  // closed once unmounted (from inside or outside)
	lastErr string         // the last mount failure logged
}

var _ View = (*Mount)(nil)

// NewMount mounts replica read-only at opts.Mountpoint, now if its blocks
// hold a filesystem, else after the round that gives it one. opts.ReadOnly
// is implied.
func NewMount(ctx context.Context, replica *Replica, opts fusefs.MountOptions) (*Mount, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	opts.ReadOnly = true
	m := &Mount{opts: opts, log: opts.Logger, mounted: make(chan struct{}), gone: make(chan struct{})}
	m.cur.Store(replica)
	if err := m.tryMount(ctx); err != nil {
		return nil, err
	}
	if m.srv == nil {
		m.log.Info("the replica holds no filesystem yet (or holds a copy not validated yet): it is mounted once a validated point brings one",
			"mountpoint", opts.Mountpoint, "applied_seq", replica.Applied())
	}
	return m, nil
}

// tryMount mounts the replica if it holds a filesystem. A replica without
// one is no error.
func (m *Mount) tryMount(ctx context.Context) error {
	r := m.cur.Load()
	if !r.Exposable() {
		return nil // a copy at a point not validated yet
	}
	srv, err := fusefs.MountReplica(ctx, mountReader{m}, m.opts, r.Applied())
	switch {
	case errors.Is(err, fusefs.ErrNoFilesystem):
		return nil
	case err != nil:
		return fmt.Errorf("mount replica of volume %s at %s: %w", r.Volume(), m.opts.Mountpoint, err)
	}
	m.mu.Lock()
	m.srv = srv
	m.mu.Unlock()
	close(m.mounted)
	go func() {
		srv.Wait()
		close(m.gone)
	}()
	m.log.Info("mounted replica read-only", "mountpoint", m.opts.Mountpoint, "applied_seq", r.Applied())
	return nil
}

// Advance implements View: it applies a round through the mount, or
// directly when the replica is not mounted yet, then tries to mount it.
func (m *Mount) Advance(ctx context.Context, apply func(ctx context.Context) (uint64, []uint64, error)) error {
	m.mu.Lock()
	srv := m.srv
	m.mu.Unlock()
	if srv != nil {
		return srv.Advance(ctx, apply)
	}
	if _, _, err := apply(ctx); err != nil {
		return err
	}
	if err := m.tryMount(ctx); err != nil {
		// The round is applied; a replica that looks like a filesystem but
		// does not mount (a primary copying its volume) may mount later.
		if err.Error() != m.lastErr {
			m.lastErr = err.Error()
			m.log.Warn("replica not mountable yet", "applied_seq", m.cur.Load().Applied(), "err", err)
		}
	}
	return nil
}

// SetReplica makes the mount serve r from now on (a resync replaced the
// replica). Call it only inside Advance's apply, where no reader runs.
func (m *Mount) SetReplica(r *Replica) { m.cur.Store(r) }

// Promote turns the live read-only mount into a read-write filesystem on
// dev, in place (fusefs.Server.Promote): same mountpoint, open files and
// working directories stay valid. dev must hold the replica's blocks. A
// replica that was never mounted (it held no filesystem) cannot be
// promoted in place: Promote returns an error.
func (m *Mount) Promote(ctx context.Context, dev fusefs.Device) error {
	m.mu.Lock()
	srv := m.srv
	m.mu.Unlock()
	if srv == nil {
		return fmt.Errorf("promote the mount at %s: the replica was never mounted (it holds no filesystem)", m.opts.Mountpoint)
	}
	if err := srv.Promote(ctx, dev); err != nil {
		return fmt.Errorf("promote the mount at %s: %w", m.opts.Mountpoint, err)
	}
	m.log.Warn("the replica mount is read-write now: the volume is a primary", "mountpoint", m.opts.Mountpoint)
	return nil
}

// IsMounted reports whether the replica is mounted.
func (m *Mount) IsMounted() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.srv != nil
}

// mountReader serves the mount's current replica to the filesystem.
type mountReader struct{ m *Mount }

var _ blockdev.RangeReader = mountReader{}

// BlockCount implements blockdev.Reader.
func (r mountReader) BlockCount() uint64 { return r.m.cur.Load().BlockCount() }

// ReadBlock implements blockdev.Reader.
func (r mountReader) ReadBlock(index uint64, p []byte) error {
	return r.m.cur.Load().ReadBlock(index, p)
}

// ReadBlocks implements blockdev.RangeReader.
func (r mountReader) ReadBlocks(first uint64, p []byte) error {
	return r.m.cur.Load().ReadBlocks(first, p)
}

// Mounted is closed once the replica is mounted.
func (m *Mount) Mounted() <-chan struct{} { return m.mounted }

// Gone is closed once the mount is gone (unmounted by Unmount or from
// outside).
func (m *Mount) Gone() <-chan struct{} { return m.gone }

// Unmount unmounts the replica if it is mounted.
func (m *Mount) Unmount() error {
	m.mu.Lock()
	srv := m.srv
	m.mu.Unlock()
	if srv == nil {
		return nil
	}
	select {
	case <-m.gone:
		return nil
	default:
	}
	if err := srv.Unmount(); err != nil {
		return err
	}
	<-m.gone
	return nil
}
