package lagbench

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil/benchtest"
)

func TestRecord(t *testing.T) {
	b := &bench{opts: Options{RecordSize: 8192}}
	r := b.record(3, 17)
	if !isRecord(r, 3, 17) || isRecord(r, 3, 18) || isRecord(r, 2, 17) {
		t.Fatal("isRecord does not tell records apart")
	}
	r[100] ^= 1
	if isRecord(r, 3, 17) {
		t.Fatal("a damaged record passes")
	}
	if isRecord(make([]byte, 8192), 0, 0) {
		t.Fatal("zeros pass as record 0")
	}
}

func TestMarkdown(t *testing.T) {
	res := &Results{RecordSize: 4096, Writers: 8, MaxRate: 1000,
		Loads:   []LoadResult{{Load: 0.5, Rate: 500, Writes: 100, P50: time.Millisecond, P99: 300 * time.Millisecond}},
		CatchUp: &CatchUpResult{Bytes: 1 << 30, WriteRate: 50e6, CatchUpRate: 80e6, CatchUp: 13 * time.Second}}
	var out bytes.Buffer
	if err := res.WriteMarkdown(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "MISSED") || !strings.Contains(out.String(), "1.60x") {
		t.Errorf("markdown:\n%s", out.String())
	}
}

type testWriter struct{ t testing.TB }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestRunSmall runs the whole benchmark with a short duration and a small
// backlog, and checks it measured everything and left nothing behind.
func TestRunSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("runs FUSE mounts, a Raft node and a secondary for about 10s")
	}
	benchtest.Require(t)
	dir := t.TempDir()
	jsonPath := filepath.Join(t.TempDir(), "results.json")
	var out bytes.Buffer
	res, err := Run(context.Background(), Options{
		Dir: dir, Duration: time.Second, Backlog: 8 << 20, Writers: 4,
		ElectionTimeout: 200 * time.Millisecond, JSONPath: jsonPath,
		Logger: slog.New(slog.NewTextHandler(&testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}, &out)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("results:\n%s", out.String())
	if res.MaxRate <= 0 || len(res.Loads) != 2 || res.CatchUp == nil {
		t.Fatalf("results: %+v", res)
	}
	for _, l := range res.Loads {
		if l.Writes == 0 || l.P50 <= 0 || l.P99 < l.P50 || l.Max < l.P99 {
			t.Errorf("load %v: %+v", l.Load, l)
		}
	}
	if c := res.CatchUp; c.Bytes != 8<<20 || c.CatchUpRate <= 0 || c.WriteRate <= 0 {
		t.Errorf("catch-up: %+v", c)
	}
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var decoded Results
	if err := json.Unmarshal(data, &decoded); err != nil || len(decoded.Loads) != 2 {
		t.Fatalf("JSON results: %v\n%s", err, data)
	}
	benchtest.NothingLeft(t, dir)
}

func TestTimeline(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	at := []time.Duration{ms(10), ms(50), ms(120), ms(90), ms(250)}
	lags := []time.Duration{ms(5), ms(7), ms(3), ms(20), ms(1)}
	got := timeline(at, lags, 2*time.Second) // windows of 100ms
	want := []LagWindow{
		{At: 0, Writes: 3, P50: ms(7), Max: ms(20)},
		{At: ms(100), Writes: 1, P50: ms(3), Max: ms(3)},
		{At: ms(200), Writes: 1, P50: ms(1), Max: ms(1)},
	}
	if !slices.Equal(got, want) {
		t.Errorf("timeline = %+v, want %+v", got, want)
	}
}
