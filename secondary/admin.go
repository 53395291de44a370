package secondary

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"

	"github.com/tricopy/tricopy/fusefs"
)

// StatusPath is the admin API's status endpoint: GET returns Status as
// JSON.
const StatusPath = "/v1/status"

// CheckPath is the admin API's filesystem check: GET runs Check and
// returns CheckResult as JSON (status 200 whether or not it is clean).
const CheckPath = "/v1/fsck"

// CheckResult is a check of the replica's filesystem at one applied point.
type CheckResult struct {
	// AppliedSeq is the point the replica was at during the whole check.
	AppliedSeq uint64 `json:"applied_seq"`
	// Report is fsck's report; Report.Clean says whether it is clean.
	Report *fusefs.Report `json:"report"`
}

// Check runs the filesystem checker (fusefs.Check, as tricopy fsck) on the
// replica between two rounds: the applier waits meanwhile, so the check
// sees exactly one applied point. Use it on small volumes or rarely: the
// group's rounds wait for this secondary while it runs.
func (s *Secondary) Check(ctx context.Context) (*CheckResult, error) {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	n := s.rep().Applied()
	rep, err := fusefs.Check(ctx, s.rep())
	if err != nil {
		return nil, fmt.Errorf("check replica of %s at seq %d: %w", s.cfg.Volume, n, err)
	}
	return &CheckResult{AppliedSeq: n, Report: rep}, nil
}

// Handler returns the secondary's admin API: GET StatusPath and CheckPath.
func (s *Secondary) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+CheckPath, func(w http.ResponseWriter, r *http.Request) {
		res, err := s.Check(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(res)
	})
	mux.HandleFunc("GET "+StatusPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s.Status())
	})
	return mux
}
