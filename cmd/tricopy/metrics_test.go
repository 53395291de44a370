package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// getMetrics GETs http://addr/metrics and returns the body, failing t
// unless it answers 200.
func getMetrics(t *testing.T, addr string) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + addr + metricsPath)
	if err != nil {
		t.Fatalf("GET metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET metrics: %s: %s", resp.Status, b)
	}
	return string(b)
}

// TestMetricsBadAddress: --metrics with an address that is not host:port,
// or that cannot be bound, exits 2 naming the key, before the command did
// anything else.
func TestMetricsBadAddress(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	data, mnt := filepath.Join(dir, "data"), filepath.Join(dir, "mnt")
	commands := map[string][]string{
		"intermediate": {"intermediate", "--node", "i1", "--data", data, "--listen", freeAddr(t), "--raft", freeAddr(t)},
		"mount":        {"mount", "--volume", "a", "--data", data, "--mountpoint", mnt, "--size", "1MiB"},
		"secondary": {"secondary", "--volume", "a", "--data", data, "--mountpoint", mnt,
			"--intermediate", freeAddr(t), "--listen", freeAddr(t)},
		"failback": {"failback", "--from", filepath.Join(dir, "old"), "--volume", "a", "--data", data, "--mountpoint", mnt,
			"--intermediate", freeAddr(t), "--listen", freeAddr(t)},
		"up": {"up", "--dir", dir, "--listen", freeAddr(t), "--raft", freeAddr(t), "--secondary-listen", freeAddr(t)},
	}
	for name, args := range commands {
		for _, addr := range []string{"nohost", "127.0.0.1:0", busy.Addr().String()} {
			runCmd(t, nil, append(args, "--metrics", addr)...).expect(t, exitUsage, `"metrics"`, addr)
			for _, p := range []string{data, mnt, filepath.Join(dir, "intermediate")} {
				if _, err := os.Stat(p); err == nil {
					t.Fatalf("%s --metrics %s created %s before failing", name, addr, p)
				}
			}
		}
	}
}

// TestStartMetrics serves a registry, scrapes it, and stops the server:
// the port is released.
func TestStartMetrics(t *testing.T) {
	reg := newRegistry()
	c := prometheus.NewGauge(prometheus.GaugeOpts{Name: "tricopy_test_gauge", Help: "A test gauge."})
	c.Set(42)
	reg.MustRegister(c)
	addr := freeAddr(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	stop, err := startMetrics(addr, reg, func(context.Context) *statusJSON { return noIntermediateStatus("default") }, log)
	if err != nil {
		t.Fatal(err)
	}
	body := getMetrics(t, addr)
	for _, w := range []string{"tricopy_test_gauge 42\n", "go_goroutines ", "process_start_time_seconds "} {
		if !strings.Contains(body, w) {
			t.Errorf("metrics lack %q:\n%s", w, body)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("address %s still in use after stop: %v", addr, err)
	}
	l.Close()
}

// TestIntermediateMetrics runs `tricopy intermediate --metrics` and scrapes
// the node's series.
func TestIntermediateMetrics(t *testing.T) {
	listen, raftAddr, metrics := freeAddr(t), freeAddr(t), freeAddr(t)
	startBackground(t, "serving at", "intermediate", "--node", "i1", "--data", t.TempDir(),
		"--listen", listen, "--raft", raftAddr, "--log-level", "warn", "--metrics", metrics)
	deadline := time.Now().Add(20 * time.Second)
	for {
		body := getMetrics(t, metrics)
		if strings.Contains(body, "\ntricopy_intermediate_leader 1\n") && strings.Contains(body, "\ngo_goroutines ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no tricopy_intermediate_leader 1 within 20s:\n%s", body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
