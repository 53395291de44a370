package secondary

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/tricopy/tricopy/fusefs"
	"github.com/tricopy/tricopy/intermediate/auth"
)

// StatusPath is the admin API's status endpoint: GET returns Status as
// JSON.
const StatusPath = "/v1/status"

// CheckPath is the admin API's filesystem check: GET runs Check and
// returns CheckResult as JSON (status 200 whether or not it is clean).
const CheckPath = "/v1/fsck"

// PromotePath is the admin API's promotion: POST a PromoteRequest as JSON;
// the answer is the Promotion as JSON (status 200), or an error text
// (409 when another promotion was done, 500 otherwise).
const PromotePath = "/v1/promote"

// UnappliedPath is the admin API's export of the batches a promotion kept
// aside: GET returns the stream ExportUnapplied writes.
const UnappliedPath = "/v1/unapplied"

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

// Handler returns the secondary's admin API: GET StatusPath, CheckPath and
// UnappliedPath, POST PromotePath.
func (s *Secondary) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PromotePath, s.requireAdmin(func(w http.ResponseWriter, r *http.Request) {
		var req PromoteRequest
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			http.Error(w, fmt.Sprintf("promote request: %v", err), http.StatusBadRequest)
			return
		}
		p, err := s.Promote(r.Context(), req)
		switch {
		case errors.Is(err, ErrPromoted):
			http.Error(w, err.Error(), http.StatusConflict)
			return
		case err != nil:
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, p)
	}))
	mux.HandleFunc("GET "+UnappliedPath, s.requireAdmin(func(w http.ResponseWriter, _ *http.Request) {
		if p := s.Promotion(); p == nil || !p.Done {
			http.Error(w, fmt.Sprintf("secondary %s was not promoted", s.cfg.ID), http.StatusConflict)
			return
		}
		w.Header().Set("Content-Type", "application/octet-stream")
		if _, err := s.ExportUnapplied(w); err != nil {
			s.log.Error("export of unapplied batches failed", "err", err)
		}
	}))
	mux.HandleFunc("GET "+CheckPath, s.requireAdmin(func(w http.ResponseWriter, r *http.Request) {
		res, err := s.Check(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		writeJSON(w, res)
	}))
	mux.HandleFunc("GET "+StatusPath, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, s.Status())
	})
	return mux
}

// requireAdmin serves a request with h only when its client certificate
// holds an admin grant. A request that did not come over TLS passes: the
// admin API listens with TLS (and requires a certificate of the CA at the
// handshake) exactly when the deployment uses TLS, and without TLS there
// is no identity to check. Status is open to every certificate of the CA;
// promotion, the export of unapplied batches and the filesystem check
// (which holds the rounds back) are the admin's.
func (s *Secondary) requireAdmin(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil {
			h(w, r)
			return
		}
		id, err := auth.PeerIdentity(*r.TLS)
		if err == nil && id.HasRole(auth.RoleAdmin) {
			h(w, r)
			return
		}
		who := id.String()
		if err != nil {
			who = "(" + err.Error() + ")"
		}
		s.authRefused.Add(1)
		s.log.Warn("refused an admin API request: the caller's certificate holds no admin grant",
			"method", r.Method+" "+r.URL.Path, "identity", who, "peer", r.RemoteAddr)
		http.Error(w, fmt.Sprintf("%s %s needs a certificate with an admin grant (tricopy://admin/NAME); %s has none",
			r.Method, r.URL.Path, who), http.StatusForbidden)
	}
}

// writeJSON answers v as indented JSON.
func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
