package secondary

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"
	"unicode"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// StatePromoted is the state of a secondary promoted to primary: it no
// longer follows; its volume is a primary of a new epoch.
const StatePromoted = "PROMOTED"

// ErrPromoted means the secondary was promoted (by another promotion than
// the one asked for, or it no longer follows).
var ErrPromoted = errors.New("secondary promoted")

// Promotion files in the data directory.
const (
	promotionFile  = "promotion.state"
	promotionMagic = "tricopy secondary promotion v1\n"
	labelPromotion = "secondary promotion"
	// PrimaryDirName is the directory, in a promoted secondary's data
	// directory, where its volume's mirror keeps its state and bitmap.
	PrimaryDirName = "primary"
)

// PromoteRequest asks a secondary to become the primary of its volume at
// the group's point N.
type PromoteRequest struct {
	// ID names the promotion; a request with the ID of the promotion
	// already done returns its record (promote is idempotent).
	ID string `json:"id"`
	// N is the group's point the replica is rolled forward to: the highest
	// validated point any secondary of the group knows, which every
	// secondary prepared (or, after a drain, the seq at which the
	// intermediate fenced the old primaries).
	N uint64 `json:"n"`
	// Epoch is the volume's new epoch.
	Epoch uint64 `json:"epoch"`
	// Drained says the intermediate fenced the old primaries at N and the
	// new primary mirrors to it; VolumeSeq and Seq are then the volume's
	// last batch there (the mirror resumes after it). Otherwise the new
	// primary runs suspended and detached from the intermediate. A drained
	// promotion with Seq above N (the intermediate held its point below a
	// primary's open copy window, so the volume has batches after N) runs
	// detached too, until it learns from the intermediate which regions
	// those batches wrote: its resync overwrites them.
	Drained   bool   `json:"drained"`
	VolumeSeq uint64 `json:"volume_seq"`
	Seq       uint64 `json:"seq"`
	// By says who asked (host, user), for the record.
	By string `json:"by,omitempty"`
	// Group lists the group's secondaries the promotion found, so that a
	// promote run again through any of them finds them all.
	Group []Peer `json:"group,omitempty"`
	// AdminChain and AdminSignature, with TLS, are the promoting admin's
	// certificate chain (DER) and signature of the promotion
	// (wire.PromotionStatement of the group, ID, By and N): a secondary
	// promoted without the intermediate carries them to it when it
	// records the promotion there, since its own certificate holds no
	// admin grant.
	AdminChain     [][]byte `json:"admin_chain,omitempty"`
	AdminSignature []byte   `json:"admin_signature,omitempty"`
}

// AdminProof returns the admin's signature the request carries, nil if
// none.
func (r PromoteRequest) AdminProof() *wire.AdminProof {
	if len(r.AdminSignature) == 0 {
		return nil
	}
	return &wire.AdminProof{Chain: r.AdminChain, Signature: r.AdminSignature}
}

// check validates a request.
func (r PromoteRequest) check() error {
	switch {
	case r.ID == "" || len(r.ID) > 64:
		return fmt.Errorf("promotion id %q: want 1 to 64 characters", r.ID)
	case r.Epoch == 0:
		return errors.New("promotion epoch 0")
	case r.Seq < r.VolumeSeq:
		return fmt.Errorf("seq %d below volume seq %d", r.Seq, r.VolumeSeq)
	case len(r.AdminChain) > 4 || len(r.AdminSignature) > 1024:
		return fmt.Errorf("admin proof of %d certificates and a %d-byte signature: too large", len(r.AdminChain), len(r.AdminSignature))
	}
	for _, c := range r.ID {
		if !unicode.IsPrint(c) || c == ' ' {
			return fmt.Errorf("promotion id %q: want printable characters without spaces", r.ID)
		}
	}
	return nil
}

// Promotion is a secondary's record of its promotion, kept durably in its
// data directory.
type Promotion struct {
	PromoteRequest
	// Started is when the promotion began here.
	Started time.Time `json:"started"`
	// Unapplied and UnappliedBytes count the staged batches after N (and
	// their block bytes) that the promotion kept aside, not applied.
	Unapplied      int   `json:"unapplied_batches"`
	UnappliedBytes int64 `json:"unapplied_bytes"`
	// Done is set once the replica is at N and the volume is a primary.
	Done bool `json:"done"`
}

// Promotion returns the secondary's promotion record, nil if it was never
// asked to promote.
func (s *Secondary) Promotion() *Promotion {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.promotion == nil {
		return nil
	}
	p := *s.promotion
	return &p
}

// loadPromotion reads the promotion record in dir, nil if none.
func loadPromotion(fsys blockdev.FS, dir string) (*Promotion, error) {
	var p Promotion
	found, err := blockdev.LoadStateFile(fsys, labelPromotion, filepath.Join(dir, promotionFile), promotionMagic, &p)
	if err != nil || !found {
		return nil, err
	}
	if err := p.check(); err != nil {
		return nil, fmt.Errorf("promotion record in %s: %w", dir, err)
	}
	return &p, nil
}

func (s *Secondary) savePromotion(p *Promotion) error {
	return blockdev.SaveStateFile(s.cfg.FS, labelPromotion, filepath.Join(s.cfg.Dir, promotionFile), promotionMagic, p)
}

// PrimaryDir returns the directory where the promoted volume's mirror
// keeps its state.
func (s *Secondary) PrimaryDir() string { return filepath.Join(s.cfg.Dir, PrimaryDirName) }

// Promote makes the secondary the primary of its volume at point req.N:
// it stops following (the fetcher, the coordinator link, the applier), rolls
// the replica forward to N from the staging store through the view (the
// mount shows N atomically), keeps the staged batches after N aside (they
// are counted and can be exported with ExportUnapplied), then calls
// Config.OnPromote, which turns the volume into a primary (the mount
// becomes read-write), and records the promotion as done.
//
// The record is written before the roll forward: a secondary restarted in
// the middle does not follow again (Start does nothing), and Promote with
// any request finishes the recorded promotion (Promotion().PromoteRequest).
// Promote with the ID of the promotion done returns its record; any other
// request after a promotion returns an error wrapping ErrPromoted.
//
// Promote refuses a point the secondary cannot reach: below its applied
// point (the replica never goes back) or above what it staged.
func (s *Secondary) Promote(ctx context.Context, req PromoteRequest) (Promotion, error) {
	if err := req.check(); err != nil {
		return Promotion{}, fmt.Errorf("promote secondary %q: %w", s.cfg.ID, err)
	}
	s.promoteMu.Lock()
	defer s.promoteMu.Unlock()
	s.mu.Lock()
	prev := s.promotion
	s.mu.Unlock()
	switch {
	case prev != nil && prev.ID != req.ID:
		return *prev, fmt.Errorf("promote secondary %q: %w by promotion %s at seq %d", s.cfg.ID, ErrPromoted, prev.ID, prev.N)
	case prev != nil && prev.Done:
		return *prev, nil
	case prev != nil:
		req = prev.PromoteRequest // finish the recorded promotion as recorded
	}
	start := time.Now()
	if err := s.stopFollowing(); err != nil {
		return Promotion{}, fmt.Errorf("promote secondary %q: stop following: %w", s.cfg.ID, err)
	}
	applied := s.rep().Applied()
	if !s.rep().Exposable() {
		applied = 0 // an initial copy at a point not validated: only a later N shows it
	}
	staged := max(s.stage.Durable(), s.rep().Applied())
	switch {
	case req.N < applied:
		return Promotion{}, fmt.Errorf("promote secondary %q to seq %d: the replica is already at %d, beyond it (the group's secondaries disagree: is another group's secondary listed?)", s.cfg.ID, req.N, applied)
	case req.N > staged:
		return Promotion{}, fmt.Errorf("promote secondary %q to seq %d: it staged its volume's batches only up to %d (was it suspended? it cannot reach the group's point)", s.cfg.ID, req.N, staged)
	}
	p := prev
	if p == nil {
		p = &Promotion{PromoteRequest: req, Started: start.UTC()}
		if err := s.savePromotion(p); err != nil {
			return Promotion{}, fmt.Errorf("promote secondary %q: %w", s.cfg.ID, err)
		}
		s.mu.Lock()
		s.promotion = p
		s.mu.Unlock()
	}
	s.log.Warn("promoting: rolling the replica forward", "promotion", req.ID, "n", req.N, "applied_seq", s.rep().Applied(), "epoch", req.Epoch, "drained", req.Drained)
	if req.N > s.rep().Applied() || !s.rep().Exposable() {
		s.applyMu.Lock()
		err := s.rollForward(ctx, req.N)
		s.applyMu.Unlock()
		if err != nil {
			return Promotion{}, fmt.Errorf("promote secondary %q: roll forward to %d: %w", s.cfg.ID, req.N, err)
		}
	}
	var unapplied int
	var unappliedBytes int64
	for cb, err := range s.stage.Batches(req.N, s.stage.Last()) {
		if err != nil {
			return Promotion{}, fmt.Errorf("promote secondary %q: count the batches after %d: %w", s.cfg.ID, req.N, err)
		}
		unapplied++
		for _, b := range cb.GetBatch().GetBlocks() {
			unappliedBytes += int64(len(b.GetData()))
		}
	}
	if s.cfg.OnPromote != nil {
		if err := s.cfg.OnPromote(ctx, *p); err != nil {
			return Promotion{}, fmt.Errorf("promote secondary %q: become primary: %w", s.cfg.ID, err)
		}
	}
	done := *p
	done.Unapplied, done.UnappliedBytes, done.Done = unapplied, unappliedBytes, true
	if err := s.savePromotion(&done); err != nil {
		return Promotion{}, fmt.Errorf("promote secondary %q: %w", s.cfg.ID, err)
	}
	s.mu.Lock()
	s.promotion = &done
	s.state, s.reason = StatePromoted, fmt.Sprintf("promoted at seq %d to epoch %d (promotion %s)", req.N, req.Epoch, req.ID)
	s.mu.Unlock()
	s.log.Warn("promoted: the volume is a primary", "promotion", req.ID, "n", req.N, "epoch", req.Epoch,
		"unapplied_batches", unapplied, "unapplied_bytes", unappliedBytes, "took", time.Since(start))
	return done, nil
}

// rollForward applies the staged batches up to n to the replica, through
// the view if there is one, in steps like applyRound; the caller holds
// applyMu.
func (s *Secondary) rollForward(ctx context.Context, n uint64) error {
	s.mu.Lock()
	view := s.view
	s.mu.Unlock()
	if s.pending != nil && n >= s.pending.at {
		return s.installResync(ctx, n, view)
	}
	return s.applySteps(ctx, n, view)
}
