package mirrorbench

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil/benchtest"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/fsbench"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/replbench"
)

func TestCompare(t *testing.T) {
	local := &MountResult{Fsync: fsbench.FioResult{ClatP50: 50 * time.Microsecond, SyncP50: 250 * time.Microsecond}}
	m := &MountResult{Nodes: 1,
		Fsync:    fsbench.FioResult{ClatP50: 900 * time.Microsecond, SyncP50: 100 * time.Microsecond},
		Seq:      fsbench.FioResult{BytesPerSec: 90e6},
		Parallel: fsbench.FioResult{IOPS: 1000}}
	raw := &RawResult{Nodes: 1,
		Small:    replbench.RunResult{Latency: replbench.Latency{P50: 500 * time.Microsecond}},
		Large:    replbench.RunResult{MBPerSec: 100},
		Parallel: replbench.RunResult{OpsPerSec: 1000}}
	cs := compare(local, m, raw)
	if len(cs) != 3 {
		t.Fatalf("%d comparisons", len(cs))
	}
	// 1000µs <= 300 + 1.2*500 = 900? No.
	if cs[0].Passed || cs[0].Ours != 1000 || cs[0].Bound != 900 {
		t.Errorf("latency: %+v", cs[0])
	}
	if !cs[1].Passed || cs[1].Bound != 80 {
		t.Errorf("sequential: %+v", cs[1])
	}
	if cs[2].Passed || cs[2].Bound != 1500 {
		t.Errorf("parallel: %+v", cs[2])
	}
	res := &Results{Comparisons: cs}
	if res.Passed() {
		t.Error("Passed with missed targets")
	}
	var out bytes.Buffer
	if err := res.WriteMarkdown(&out); err != nil || !strings.Contains(out.String(), "**missed**") {
		t.Errorf("markdown: %v\n%s", err, out.String())
	}
}

// TestRunSmall runs the whole benchmark with tiny sizes and one-node
// clusters, and checks it measured everything and left nothing behind.
func TestRunSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("runs fio, FUSE mounts and Raft clusters for about 20s")
	}
	benchtest.Require(t, "fio")
	dir := t.TempDir()
	jsonPath := filepath.Join(t.TempDir(), "results.json")
	var out bytes.Buffer
	res, err := Run(context.Background(), Options{
		Dir: dir, SeqSize: 8 << 20, Runtime: 500 * time.Millisecond, Nodes: []int{1},
		ElectionTimeout: 200 * time.Millisecond, JSONPath: jsonPath,
		Logger: slog.New(slog.NewTextHandler(&testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}, &out)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("results:\n%s", out.String())
	if len(res.Mounts) != 2 || len(res.Raw) != 1 || len(res.Comparisons) != 3 {
		t.Fatalf("results: %d mounts, %d raw, %d comparisons", len(res.Mounts), len(res.Raw), len(res.Comparisons))
	}
	for _, m := range res.Mounts {
		if m.Fsync.SyncOps == 0 || m.WriteFsyncP50() <= 0 || m.Seq.BytesPerSec <= 0 || m.Parallel.IOPS <= 0 {
			t.Errorf("%s: missing figures: %+v", m.Target, m)
		}
	}
	if r := res.Raw[0]; r.Small.Ops == 0 || r.Large.Ops == 0 || r.Parallel.Ops == 0 {
		t.Errorf("raw: missing figures: %+v", r)
	}
	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var decoded Results
	if err := json.Unmarshal(data, &decoded); err != nil || len(decoded.Mounts) != 2 {
		t.Fatalf("JSON results: %v\n%s", err, data)
	}
	benchtest.NothingLeft(t, dir)
}

type testWriter struct{ t testing.TB }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
