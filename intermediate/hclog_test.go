package intermediate

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"

	"github.com/hashicorp/go-hclog"
)

// TestHclogAdapter: Raft's hclog records reach slog with their level,
// message, arguments and logger name; levels below the handler's are
// dropped.
func TestHclogAdapter(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	h := newHclog(logger, "raft").Named("net").With("peer", "i2")
	h.Debug("dropped", "x", 1)
	h.Info("entering follower state", "term", 3)
	h.Error("failed to heartbeat", "error", "refused")
	h.StandardLogger(nil).Print("[WARN] from the standard logger")
	if h.IsDebug() || !h.IsInfo() {
		t.Errorf("IsDebug %v IsInfo %v; want false, true", h.IsDebug(), h.IsInfo())
	}
	var recs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		recs = append(recs, m)
	}
	if len(recs) != 3 {
		t.Fatalf("%d records, want 3:\n%s", len(recs), buf.String())
	}
	want := []struct{ level, msg string }{{"INFO", "entering follower state"}, {"ERROR", "failed to heartbeat"}, {"WARN", "from the standard logger"}}
	for i, w := range want {
		if recs[i]["level"] != w.level || recs[i]["msg"] != w.msg || recs[i]["peer"] != "i2" || recs[i][logKeyComponent] != "raft" {
			t.Errorf("record %d = %v, want level %s msg %q peer i2 component raft", i, recs[i], w.level, w.msg)
		}
	}
	if recs[0]["term"] != float64(3) || recs[1]["error"] != "refused" {
		t.Errorf("arguments lost: %v", recs[:2])
	}
	if h.Name() != "raft.net" {
		t.Errorf("Name() = %q", h.Name())
	}
	h.SetLevel(hclog.Error)
	buf.Reset()
	h.Warn("below the set level")
	if buf.Len() != 0 {
		t.Errorf("SetLevel(Error) let a warning through: %s", buf.String())
	}
}
