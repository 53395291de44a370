package secondary

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/tricopy/tricopy/blockdev"
)

// DefaultPeerInterval is how often a secondary asks the intermediate for
// its group's secondaries when Config.PeerInterval is zero.
const DefaultPeerInterval = time.Second

// peersFile holds what a secondary learned of its group, in its data
// directory; peersMagic starts it.
const (
	peersFile  = "group.state"
	peersMagic = "tricopy secondary group v1\n"
	labelPeers = "secondary group state"
)

// peerRetry is how often a secondary asks for its group until its view
// includes itself.
const peerRetry = 200 * time.Millisecond

// knowsItself reports whether the group view lists this secondary.
func (s *Secondary) knowsItself() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.ContainsFunc(s.group.Peers, func(p Peer) bool { return p.ID == s.cfg.ID })
}

// Peer is one secondary of the group, as the intermediate registered it.
type Peer struct {
	ID     string `json:"id"`
	Volume string `json:"volume"`
	// Addr is its admin address (its --listen).
	Addr string `json:"addr"`
}

// GroupView is what a secondary learned of its group from the
// intermediate and keeps in its data directory, so that promote works when
// the intermediate is gone: the group's secondaries and the epoch of its own
// volume.
type GroupView struct {
	Peers []Peer `json:"peers"`
	// Epoch is the epoch of the secondary's volume at the intermediate.
	Epoch uint64 `json:"epoch"`
	// Volumes are the group's volumes at the intermediate, sorted: a
	// promotion must find a secondary of each.
	Volumes []string `json:"volumes,omitempty"`
}

// equal reports whether v and o hold the same peers, epoch and volumes.
func (v GroupView) equal(o GroupView) bool {
	return v.Epoch == o.Epoch && slices.Equal(v.Peers, o.Peers) && slices.Equal(v.Volumes, o.Volumes)
}

// loadGroupView reads the group view in dir; a missing file is an empty
// view.
func loadGroupView(fsys blockdev.FS, dir string) (GroupView, error) {
	var v GroupView
	if _, err := blockdev.LoadStateFile(fsys, labelPeers, filepath.Join(dir, peersFile), peersMagic, &v); err != nil {
		return GroupView{}, err
	}
	return v, nil
}

// Group returns what the secondary knows of its group.
func (s *Secondary) Group() GroupView {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.group
	v.Peers = slices.Clone(v.Peers)
	v.Volumes = slices.Clone(v.Volumes)
	return v
}

// peerWatcher asks the intermediate for the group's secondaries and the
// volume's epoch every Config.PeerInterval and records changes durably.
func (s *Secondary) peerWatcher(ctx context.Context) {
	defer s.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.learnGroup(ctx); err != nil && ctx.Err() == nil {
			s.log.Debug("could not learn the group's secondaries", "err", err)
		}
		// Until it knows itself registered, ask often: promote needs the
		// view from the start.
		next := s.cfg.PeerInterval
		if !s.knowsItself() {
			next = min(next, peerRetry)
		}
		t.Reset(next)
	}
}

// learnGroup refreshes the group view from the intermediate's status.
func (s *Secondary) learnGroup(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.PeerInterval)
	defer cancel()
	st, err := s.cfg.Intermediate.Status(ctx)
	if err != nil {
		return err
	}
	var v GroupView
	for _, sec := range st.GetSecondaries() {
		v.Peers = append(v.Peers, Peer{ID: sec.GetId(), Volume: sec.GetVolume(), Addr: sec.GetAddr()})
	}
	slices.SortFunc(v.Peers, func(a, b Peer) int { return strings.Compare(a.ID, b.ID) })
	for _, vol := range st.GetVolumes() {
		v.Volumes = append(v.Volumes, vol.GetName())
		if vol.GetName() == s.cfg.Volume {
			v.Epoch = vol.GetEpoch()
		}
	}
	slices.Sort(v.Volumes)
	if v.Epoch == 0 || len(v.Peers) == 0 {
		return nil // the volume or this secondary is not registered yet
	}
	s.mu.Lock()
	old := s.group
	s.mu.Unlock()
	if old.equal(v) {
		return nil
	}
	if err := blockdev.SaveStateFile(s.cfg.FS, labelPeers, filepath.Join(s.cfg.Dir, peersFile), peersMagic, v); err != nil {
		return fmt.Errorf("record the group's secondaries: %w", err)
	}
	s.mu.Lock()
	s.group = v
	s.mu.Unlock()
	s.log.Info("learned the group's secondaries", "peers", len(v.Peers), "epoch", v.Epoch)
	return nil
}
