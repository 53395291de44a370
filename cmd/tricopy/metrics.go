package main

import (
	"context"
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

// startMetrics listens on addr and serves reg at /metrics, from a goroutine
// that the returned stop ends (a graceful Shutdown bounded by its context)
// and waits for. It listens before it returns, so that an address that
// cannot be bound fails the command at start, as a configuration error of
// the key metrics.
func startMetrics(addr string, reg *prometheus.Registry, log *slog.Logger) (stop func(context.Context) error, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, &configs.Error{Key: "metrics", Err: err}
	}
	mux := http.NewServeMux()
	mux.Handle(metricsPath, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
	}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "metrics", addr, "err", err)
		}
	}()
	log.Info("serving metrics", "url", "http://"+ln.Addr().String()+metricsPath)
	return func(ctx context.Context) error {
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

// processMetrics is the metrics of one command: a process registry served
// on addr (the metrics key). With addr empty there is neither: reg is a nil
// interface (every part registers nothing; intermediate.Config.Metrics
// takes nil as "no metrics") and stop does nothing. The command calls stop
// on its way out.
func processMetrics(addr string, log *slog.Logger) (reg prometheus.Registerer, stop func(), err error) {
	if addr == "" {
		return nil, func() {}, nil
	}
	r := newRegistry()
	stopServer, err := startMetrics(addr, r, log)
	if err != nil {
		return nil, nil, err
	}
	reg = r
	return reg, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopServer(ctx); err != nil {
			log.Warn("stop metrics server", "err", err)
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
