package secondary

import (
	"encoding/json"
	"net/http"
)

// StatusPath is the admin API's status endpoint: GET returns Status as
// JSON.
const StatusPath = "/v1/status"

// Handler returns the secondary's admin API: GET StatusPath.
func (s *Secondary) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+StatusPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s.Status())
	})
	return mux
}
