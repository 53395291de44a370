package replbench

import (
	"context"
	"encoding/json"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// newHclog returns an hclog.Logger for the yardstick's Raft that sends
// each line to log as a record with the line's level, message and
// key-value pairs; the logger's name becomes the component attribute.
// Lines below the lowest level log is enabled for are not formatted.
func newHclog(log *slog.Logger, name string) hclog.Logger {
	level := hclog.Warn
	switch {
	case log.Enabled(context.Background(), slog.LevelDebug):
		level = hclog.Debug
	case log.Enabled(context.Background(), slog.LevelInfo):
		level = hclog.Info
	}
	return hclog.New(&hclog.LoggerOptions{
		Name:        name,
		Level:       level,
		Output:      &slogWriter{log: log},
		JSONFormat:  true,
		DisableTime: true,
	})
}

// slogWriter is the output of newHclog's logger, which writes one JSON
// object per line: "@level", "@message", "@module" and the pairs.
type slogWriter struct {
	log *slog.Logger
}

// hclogLevels maps hclog's level names to slog levels.
var hclogLevels = map[string]slog.Level{
	"trace": slog.LevelDebug,
	"debug": slog.LevelDebug,
	"info":  slog.LevelInfo,
	"warn":  slog.LevelWarn,
	"error": slog.LevelError,
}

// Write implements io.Writer. A line that is not a JSON object is logged
// as it is, at Info.
func (w *slogWriter) Write(p []byte) (int, error) {
	var fields map[string]any
	if err := json.Unmarshal(p, &fields); err != nil {
		w.log.Info(strings.TrimSpace(string(p)))
		return len(p), nil
	}
	level, ok := hclogLevels[str(fields["@level"])]
	if !ok {
		level = slog.LevelInfo
	}
	attrs := []slog.Attr{slog.String("component", str(fields["@module"]))}
	for _, k := range slices.Sorted(maps.Keys(fields)) {
		if !strings.HasPrefix(k, "@") {
			attrs = append(attrs, slog.Any(k, fields[k]))
		}
	}
	w.log.LogAttrs(context.Background(), level, str(fields["@message"]), attrs...)
	return len(p), nil
}

// str returns v if it is a string, else "".
func str(v any) string {
	s, _ := v.(string)
	return s
}
