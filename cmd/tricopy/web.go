package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// The web page of the metrics server: every process started with
// --metrics ADDR serves, beside /metrics, the status of its group as a page
// that refreshes itself (http://ADDR/) and as the document `tricopy status
// --json` prints (http://ADDR/status.json, docs/STATUS.md).
const (
	// webStatusPath is where the metrics server serves the status document.
	webStatusPath = "/status.json"
	// webStatusTimeout bounds the collection of one status document from
	// the intermediate nodes.
	webStatusTimeout = 3 * time.Second
	// webStatusTTL is how long a collected document is served again, so
	// that many open pages (each polls every second) ask the cluster at
	// most about twice a second.
	webStatusTTL = 500 * time.Millisecond
)

// indexHTML is the page served at /: self-contained (inline CSS and
// script, no external resource), it polls /status.json every second.
//
//go:embed web/index.html
var indexHTML []byte

// webCSP is the page's Content-Security-Policy: its own inline style and
// script, requests to its own origin only.
const webCSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"

// handleWeb adds the page (/, only that path) and the status document
// (/status.json) to mux. The document is collected by status with a
// context derived from base (which the server's stop ends), bounded by
// webStatusTimeout.
func handleWeb(mux *http.ServeMux, base context.Context, status func(context.Context) *statusJSON, log *slog.Logger) {
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Content-Security-Policy", webCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-cache")
		w.Write(indexHTML)
	})
	mux.Handle("GET "+webStatusPath, &statusCache{base: base, collect: status, log: log})
}

// statusCache serves the status document, collected at most once per
// webStatusTTL: a request that finds the last one older waits for (or
// makes) the next collection, which concurrent requests share. It runs on
// the HTTP server's request goroutines.
type statusCache struct {
	base    context.Context // ends when the server stops
	collect func(context.Context) *statusJSON
	log     *slog.Logger

	mu   sync.Mutex // held during a collection
	at   time.Time  // when body was collected
	body []byte     // the last document, encoded; nil before the first
}

// ServeHTTP implements http.Handler.
func (c *statusCache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := c.get()
	if err != nil {
		c.log.Warn("serve status document", "err", err)
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	w.Write(body)
}

// get returns the encoded document, collecting it again when the last one
// is older than webStatusTTL.
func (c *statusCache) get() ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.body != nil && time.Since(c.at) < webStatusTTL {
		return c.body, nil
	}
	ctx, cancel := context.WithTimeout(c.base, webStatusTimeout)
	defer cancel()
	body, err := json.MarshalIndent(c.collect(ctx), "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode status: %w", err)
	}
	c.body, c.at = append(body, '\n'), time.Now()
	return c.body, nil
}

// noIntermediateStatus is the status document of a process that knows no
// intermediate node (a local-only mount): no group to show, and why.
func noIntermediateStatus(group string) *statusJSON {
	return &statusJSON{Group: group, Volumes: []volumeJSON{}, Nodes: []nodeJSON{},
		Problems: []string{"this process knows no intermediate node (a local-only mount): it has no group status to show"}}
}
