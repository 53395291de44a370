package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/intermediate/client"
)

// metricsPath is where the metrics server serves the registry.
const metricsPath = "/metrics"

// newRegistry returns a process registry: the Go runtime and process
// collectors, to which each part of the command registers its own.
func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// startMetrics listens on addr and serves, from a goroutine that the
// returned stop ends (a graceful Shutdown bounded by its context) and waits
// for: reg at /metrics, and the web page of the group's status at / with
// its document at /status.json (web.go), which status collects. It listens
// before it returns, so that an address that cannot be bound fails the
// command at start, as a configuration error of the key metrics.
func startMetrics(addr string, reg *prometheus.Registry, status func(context.Context) *statusJSON, log *slog.Logger) (stop func(context.Context) error, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, &configs.Error{Key: "metrics", Err: err}
	}
	// base ends when stop is called: it cuts a status collection short, so
	// that Shutdown does not wait for it.
	base, cancel := context.WithCancel(context.Background())
	mux := http.NewServeMux()
	mux.Handle(metricsPath, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	handleWeb(mux, base, status, log)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "metrics", addr, "err", err)
		}
	}()
	url := "http://" + ln.Addr().String()
	log.Info("serving metrics", "url", url+metricsPath, "status_page", url+"/")
	return func(ctx context.Context) error {
		cancel()
		err := srv.Shutdown(ctx)
		if err != nil {
			// Shutdown gave up on open connections: drop them.
			srv.Close()
		}
		<-served
		if err != nil {
			return fmt.Errorf("stop metrics server %s: %w", addr, err)
		}
		return nil
	}, nil
}

// statusFrom is where the web page of a process's metrics server gets the
// status of its group: the client addresses of the intermediate nodes the
// process knows (none: a local-only mount) and the consistency group.
type statusFrom struct {
	addrs []string
	group string
	tls   *tls.Config
}

// processMetrics is the metrics of one command: a process registry served
// on addr (the metrics key), with the web page of the status of the group
// that from names (web.go). With addr empty there is neither: reg is a nil
// interface (every part registers nothing; intermediate.Config.Metrics
// takes nil as "no metrics") and stop does nothing. The command calls stop
// on its way out; it stops the server, then closes the status client.
func processMetrics(addr string, from statusFrom, log *slog.Logger) (reg prometheus.Registerer, stop func(), err error) {
	if addr == "" {
		return nil, func() {}, nil
	}
	var cl *client.Client
	status := func(context.Context) *statusJSON { return noIntermediateStatus(from.group) }
	if len(from.addrs) > 0 {
		// The client does no I/O until the first request of /status.json.
		cl, err = client.New(client.Config{Addrs: from.addrs, Group: from.group, TLS: from.tls, Logger: log})
		if err != nil {
			return nil, nil, fmt.Errorf("status client of the metrics server: %w", err)
		}
		status = func(ctx context.Context) *statusJSON { return collectStatus(ctx, cl, from.group) }
	}
	r := newRegistry()
	stopServer, err := startMetrics(addr, r, status, log)
	if err != nil {
		if cl != nil {
			cl.Close()
		}
		return nil, nil, err
	}
	reg = r
	return reg, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopServer(ctx); err != nil {
			log.Warn("stop metrics server", "err", err)
		}
		if cl != nil {
			cl.Close()
		}
	}, nil
}

// registerCollector registers c on reg, if reg is not nil, and returns the
// function that unregisters it. A collector that cannot be registered (the
// same series registered already, like the mirror of a volume promoted in
// the process that serves its old primary) is logged and left out: metrics
// never stop a command.
func registerCollector(reg prometheus.Registerer, c prometheus.Collector, log *slog.Logger, what string) (unregister func()) {
	if reg == nil {
		return func() {}
	}
	if err := reg.Register(c); err != nil {
		log.Warn("metrics not exported", "of", what, "err", err)
		return func() {}
	}
	return func() { reg.Unregister(c) }
}
