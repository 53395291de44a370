package intermediate

import (
	"context"
	"io"
	"log"
	"log/slog"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// Log attribute keys of this package.
const (
	logKeyNode      = "node"
	logKeyComponent = "component"
	logKeyVolume    = "volume"
	logKeyErr       = "err"
	logKeyAddr      = "addr"
	logKeyLeader    = "leader"
	logKeySeq       = "seq"
	logKeyIndex     = "index"
	logKeyEpoch     = "epoch"
	logKeyPeer      = "peer"
)

// hclogAdapter sends hashicorp/raft's hclog output to a slog.Logger, so the
// Raft library logs through the process's one logger with its level and
// format. hclog's Trace maps to a level below slog's Debug.
type hclogAdapter struct {
	logger *slog.Logger
	name   string
	args   []any
	level  hclog.Level
}

// levelTrace is the slog level of hclog's Trace.
const levelTrace = slog.LevelDebug - 4

// newHclog returns an hclog.Logger writing to logger.
func newHclog(logger *slog.Logger, name string) hclog.Logger {
	return &hclogAdapter{logger: logger.With(logKeyComponent, name), name: name, level: hclog.Trace}
}

func toSlogLevel(l hclog.Level) slog.Level {
	switch l {
	case hclog.Trace:
		return levelTrace
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

func (h *hclogAdapter) enabled(l hclog.Level) bool {
	if l < h.level && h.level != hclog.NoLevel {
		return false
	}
	return h.logger.Enabled(context.Background(), toSlogLevel(l))
}

// Log implements hclog.Logger.
func (h *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Off || !h.enabled(level) {
		return
	}
	h.logger.Log(context.Background(), toSlogLevel(level), msg, append(h.args[:len(h.args):len(h.args)], args...)...)
}

// Trace implements hclog.Logger.
func (h *hclogAdapter) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }

// Debug implements hclog.Logger.
func (h *hclogAdapter) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }

// Info implements hclog.Logger.
func (h *hclogAdapter) Info(msg string, args ...any) { h.Log(hclog.Info, msg, args...) }

// Warn implements hclog.Logger.
func (h *hclogAdapter) Warn(msg string, args ...any) { h.Log(hclog.Warn, msg, args...) }

// Error implements hclog.Logger.
func (h *hclogAdapter) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }

// IsTrace implements hclog.Logger.
func (h *hclogAdapter) IsTrace() bool { return h.enabled(hclog.Trace) }

// IsDebug implements hclog.Logger.
func (h *hclogAdapter) IsDebug() bool { return h.enabled(hclog.Debug) }

// IsInfo implements hclog.Logger.
func (h *hclogAdapter) IsInfo() bool { return h.enabled(hclog.Info) }

// IsWarn implements hclog.Logger.
func (h *hclogAdapter) IsWarn() bool { return h.enabled(hclog.Warn) }

// IsError implements hclog.Logger.
func (h *hclogAdapter) IsError() bool { return h.enabled(hclog.Error) }

// ImpliedArgs implements hclog.Logger.
func (h *hclogAdapter) ImpliedArgs() []any { return h.args }

// With implements hclog.Logger.
func (h *hclogAdapter) With(args ...any) hclog.Logger {
	c := *h
	c.args = append(h.args[:len(h.args):len(h.args)], args...)
	return &c
}

// Name implements hclog.Logger.
func (h *hclogAdapter) Name() string { return h.name }

// Named implements hclog.Logger.
func (h *hclogAdapter) Named(name string) hclog.Logger {
	if h.name != "" {
		name = h.name + "." + name
	}
	return h.ResetNamed(name)
}

// ResetNamed implements hclog.Logger.
func (h *hclogAdapter) ResetNamed(name string) hclog.Logger {
	c := *h
	c.name = name
	return &c
}

// SetLevel implements hclog.Logger.
func (h *hclogAdapter) SetLevel(level hclog.Level) { h.level = level }

// GetLevel implements hclog.Logger.
func (h *hclogAdapter) GetLevel() hclog.Level { return h.level }

// StandardLogger implements hclog.Logger.
func (h *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

// StandardWriter implements hclog.Logger.
func (h *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return hclogWriter{h}
}

// hclogWriter turns lines written by a standard library logger into Info
// records, keeping hclog's "[LEVEL]" prefixes when present.
type hclogWriter struct{ h *hclogAdapter }

func (w hclogWriter) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	level := hclog.Info
	for prefix, l := range map[string]hclog.Level{"[TRACE]": hclog.Trace, "[DEBUG]": hclog.Debug, "[INFO]": hclog.Info, "[WARN]": hclog.Warn, "[ERR]": hclog.Error, "[ERROR]": hclog.Error} {
		if strings.HasPrefix(line, prefix) {
			level, line = l, strings.TrimSpace(strings.TrimPrefix(line, prefix))
			break
		}
	}
	w.h.Log(level, line)
	return len(p), nil
}

var _ hclog.Logger = (*hclogAdapter)(nil)
