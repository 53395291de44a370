package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// httpGet does method on http://addr+path and returns the answer's status
// code, Content-Type and body.
func httpGet(t *testing.T, method, addr, path string) (code int, ctype, body string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read: %v", method, path, err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(b)
}

// TestWebPage runs `tricopy intermediate --metrics` with a volume in PAIR
// and checks the metrics listener: / is the self-contained page, whose
// script polls status.json; /status.json is the document of status --json
// (every documented field, the volume in PAIR); /metrics still serves the
// registry; any other path is 404 and a POST is refused.
func TestWebPage(t *testing.T) {
	listen, raftAddr, metrics := freeAddr(t), freeAddr(t), freeAddr(t)
	startBackground(t, "serving at", "intermediate", "--node", "i1", "--data", t.TempDir(),
		"--listen", listen, "--raft", raftAddr, "--log-level", "warn", "--metrics", metrics)
	cl, err := client.New(client.Config{Addrs: []string{listen}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := cl.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 1, BlockCount: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	v.Report(&wire.PrimaryReport{State: "PAIR"})
	// Reports go out ahead of the next batch.
	if _, err := v.Submit(ctx, []*wire.Block{{Index: 0, Data: make([]byte, wire.BlockSize)}}); err != nil {
		t.Fatal(err)
	}

	code, ctype, page := httpGet(t, http.MethodGet, metrics, "/")
	if code != http.StatusOK || !strings.HasPrefix(ctype, "text/html") {
		t.Fatalf("GET /: %d %s", code, ctype)
	}
	for _, w := range []string{"<!DOCTYPE html>", "<script>", `fetch("status.json"`, "#2e7d32", "#f9a825", "#c62828"} {
		if !strings.Contains(page, w) {
			t.Errorf("the page lacks %q", w)
		}
	}
	if m := regexp.MustCompile(`(?i)(src|href)\s*=\s*"(https?:)?//`).FindString(page); m != "" {
		t.Errorf("the page loads an external resource: %s", m)
	}

	var doc map[string]any
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		code, ctype, body := httpGet(t, http.MethodGet, metrics, webStatusPath)
		if code != http.StatusOK || ctype != "application/json" {
			t.Fatalf("GET %s: %d %s: %s", webStatusPath, code, ctype, body)
		}
		doc = nil
		if err := json.Unmarshal([]byte(body), &doc); err != nil {
			t.Fatalf("GET %s is not one JSON object: %v\n%s", webStatusPath, err, body)
		}
		if vol, _ := lookup(doc, "volumes[]"); vol != nil && vol.(map[string]any)["state"] == "PAIR" && doc["healthy"] == true {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never showed volume a in PAIR, healthy, within 10s: %v", webStatusPath, doc)
		}
	}
	for _, f := range documentedFields(t) {
		if f == "nodes[].error" || f == "volumes[].reason" || f == "volumes[].secondaries[].reason" || f == "volumes[].stale_primary" ||
			strings.HasPrefix(f, "volumes[].secondaries[].") || strings.HasPrefix(f, "volumes[].promotions[].") {
			continue // omitted when empty, or no element to look into
		}
		if _, ok := lookup(doc, f); !ok {
			t.Errorf("documented field %q missing from %s", f, webStatusPath)
		}
	}
	if doc["leader"] != "i1" || doc["group"] != "default" {
		t.Errorf("%s: leader %v group %v, want i1, default", webStatusPath, doc["leader"], doc["group"])
	}
	// The same document as status --json: the same fields.
	r := runCmd(t, nil, "status", "--intermediate", listen, "--json")
	var cli map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &cli); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	for k := range cli {
		if _, ok := doc[k]; !ok {
			t.Errorf("%s lacks field %q of status --json", webStatusPath, k)
		}
	}

	if body := getMetrics(t, metrics); !strings.Contains(body, "\ntricopy_intermediate_leader 1\n") {
		t.Errorf("/metrics lacks tricopy_intermediate_leader 1:\n%s", body)
	}
	for _, p := range []string{"/nope", "/index.html", "/status.json/x", "/web/index.html", "/metrics/x"} {
		if code, _, _ := httpGet(t, http.MethodGet, metrics, p); code != http.StatusNotFound {
			t.Errorf("GET %s: %d, want 404", p, code)
		}
	}
	if code, _, _ := httpGet(t, http.MethodPost, metrics, "/"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST /: %d, want 405", code)
	}
}

// TestWebStatusCache: concurrent requests of /status.json share one
// collection, a document is served again for webStatusTTL, and stop
// cuts a collection in progress short instead of waiting for it.
func TestWebStatusCache(t *testing.T) {
	var calls atomic.Int32
	block := make(chan struct{})
	status := func(ctx context.Context) *statusJSON {
		calls.Add(1)
		select {
		case <-block:
		case <-ctx.Done():
		}
		doc := noIntermediateStatus("g")
		doc.Problems = []string{"collected"}
		if err := ctx.Err(); err != nil {
			doc.Problems = []string{err.Error()}
		}
		return doc
	}
	addr := freeAddr(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	stop, err := startMetrics(addr, newRegistry(), status, log)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	bodies := make([]string, 8)
	for i := range bodies {
		wg.Go(func() {
			c := &http.Client{Timeout: 10 * time.Second}
			resp, err := c.Get("http://" + addr + webStatusPath)
			if err != nil {
				t.Errorf("GET %s: %v", webStatusPath, err)
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			bodies[i] = string(b)
		})
	}
	time.Sleep(100 * time.Millisecond) // let them all arrive
	close(block)
	wg.Wait()
	for i, b := range bodies {
		if !strings.Contains(b, `"collected"`) {
			t.Errorf("request %d: %s", i, b)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d concurrent requests made %d collections, want 1", len(bodies), n)
	}
	httpGet(t, http.MethodGet, addr, webStatusPath)
	if n := calls.Load(); n != 1 {
		t.Errorf("a request within the TTL collected again (%d collections)", n)
	}
	time.Sleep(webStatusTTL + 50*time.Millisecond)
	httpGet(t, http.MethodGet, addr, webStatusPath)
	if n := calls.Load(); n != 2 {
		t.Errorf("a request after the TTL: %d collections, want 2", n)
	}

	// A collection that would block until its timeout: stop ends it.
	block = make(chan struct{})
	time.Sleep(webStatusTTL + 50*time.Millisecond)
	go func() {
		c := &http.Client{Timeout: 10 * time.Second}
		if resp, err := c.Get("http://" + addr + webStatusPath); err == nil {
			resp.Body.Close()
		}
	}()
	for calls.Load() != 3 {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if took := time.Since(start); took > webStatusTimeout/2 {
		t.Errorf("stop took %v with a collection in progress", took)
	}
}

// TestWebNoIntermediate: a process with --metrics that knows no
// intermediate (a local-only mount) serves a status document saying so,
// unhealthy, and its stop releases the address.
func TestWebNoIntermediate(t *testing.T) {
	addr := freeAddr(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	reg, stop, err := processMetrics(addr, statusFrom{group: "g"}, log)
	if err != nil {
		t.Fatal(err)
	}
	if reg == nil {
		t.Fatal("no registry")
	}
	code, _, body := httpGet(t, http.MethodGet, addr, webStatusPath)
	var doc statusJSON
	if err := json.Unmarshal([]byte(body), &doc); err != nil || code != http.StatusOK {
		t.Fatalf("GET %s: %d %v\n%s", webStatusPath, code, err, body)
	}
	if doc.Group != "g" || doc.Healthy || len(doc.Problems) != 1 || !strings.Contains(doc.Problems[0], "no intermediate") ||
		doc.Volumes == nil || doc.Nodes == nil {
		t.Errorf("status of a process without intermediate: %+v", doc)
	}
	if code, _, _ := httpGet(t, http.MethodGet, addr, "/"); code != http.StatusOK {
		t.Errorf("GET /: %d", code)
	}
	stop()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("address %s still in use after stop: %v", addr, err)
	}
	l.Close()
}
