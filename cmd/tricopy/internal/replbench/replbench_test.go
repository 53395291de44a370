package replbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil"
)

func durations(ms ...int) []time.Duration {
	out := make([]time.Duration, len(ms))
	for i, m := range ms {
		out[i] = time.Duration(m) * time.Millisecond
	}
	return out
}

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, tc := range []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one sample p50", durations(7), 50, 7 * time.Millisecond},
		{"one sample p99", durations(7), 99, 7 * time.Millisecond},
		{"two samples p50 is the lower", durations(1, 2), 50, time.Millisecond},
		{"two samples p99 is the upper", durations(1, 2), 99, 2 * time.Millisecond},
		{"hundred p50", hundred, 50, 50 * time.Millisecond},
		{"hundred p99", hundred, 99, 99 * time.Millisecond},
		{"hundred p100", hundred, 100, 100 * time.Millisecond},
		{"hundred tiny p", hundred, 0.001, time.Millisecond},
	} {
		if got := percentile(tc.sorted, tc.p); got != tc.want {
			t.Errorf("%s: percentile(p=%v) = %v, want %v", tc.name, tc.p, got, tc.want)
		}
	}
}

func TestSummarize(t *testing.T) {
	got := summarize(durations(5, 1, 3, 2, 4))
	want := Latency{Samples: 5, Mean: 3 * time.Millisecond, P50: 3 * time.Millisecond, P99: 5 * time.Millisecond, Max: 5 * time.Millisecond}
	if q := got.Hist.Quantile(0.5); got.Hist.Count() != 5 || q < 2970*time.Microsecond || q > 3030*time.Microsecond {
		t.Errorf("summarize: histogram %+v, want the 5 samples", got.Hist)
	}
	got.Hist = benchutil.Histogram{}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("summarize = %+v, want %+v", got, want)
	}
	if got := summarize(nil); !reflect.DeepEqual(got, Latency{}) {
		t.Errorf("summarize(nil) = %+v, want zero", got)
	}
}

func TestEvaluate(t *testing.T) {
	for _, tc := range []struct {
		name         string
		raft, submit float64
		lower        bool
		target       float64
		ratio        float64
		verdict      string
	}{
		{"latency within", 2, 2.4, true, 1.2, 1.2, VerdictMet},
		{"latency over", 2, 2.5, true, 1.2, 1.25, VerdictMissed},
		{"latency better", 2, 1, true, 1.2, 0.5, VerdictMet},
		{"throughput at target", 1000, 1500, false, 1.5, 1.5, VerdictMet},
		{"throughput under", 1000, 1499, false, 1.5, 1.499, VerdictMissed},
		{"large met", 100, 80, false, 0.8, 0.8, VerdictMet},
		{"no yardstick", 0, 80, false, 0.8, 0, VerdictNoData},
		{"no ours", 100, 0, false, 0.8, 0, VerdictNoData},
		{"no ours latency", 2, 0, true, 1.2, 0, VerdictNoData},
	} {
		c := Comparison{Raft: tc.raft, Submit: tc.submit, LowerIsBetter: tc.lower, Target: tc.target}
		c.evaluate()
		if c.Verdict != tc.verdict || c.Ratio < tc.ratio-1e-9 || c.Ratio > tc.ratio+1e-9 {
			t.Errorf("%s: ratio %v verdict %q, want %v %q", tc.name, c.Ratio, c.Verdict, tc.ratio, tc.verdict)
		}
	}
}

func TestScenarios(t *testing.T) {
	got := scenarios([]int{1, 3}, 8)
	var names []string
	for _, s := range got {
		names = append(names, s.String())
	}
	want := []string{
		"4 KiB × 1 writer, 1 node", "4 KiB × 64 writers, 1 node", "128 KiB × 8 writers, 1 node",
		"4 KiB × 1 writer, 3 nodes", "4 KiB × 64 writers, 3 nodes", "128 KiB × 8 writers, 3 nodes",
	}
	if strings.Join(names, "; ") != strings.Join(want, "; ") {
		t.Fatalf("scenarios:\n got %q\nwant %q", names, want)
	}
	for _, s := range got {
		switch {
		case s.Writers == 1 && (s.Metric != MetricP50 || s.Target != 1.2):
			t.Errorf("%s: target %s %v, want p50 1.2", s, s.Metric, s.Target)
		case s.Writers == 64 && (s.Metric != MetricOpsPerSec || s.Target != 1.5):
			t.Errorf("%s: target %s %v, want ops/s 1.5", s, s.Metric, s.Target)
		case s.Blocks == 32 && (s.Metric != MetricMBPerSec || s.Target != 0.8):
			t.Errorf("%s: target %s %v, want MB/s 0.8", s, s.Metric, s.Target)
		}
	}
}

// sampleResults returns results of one 1-node run of every scenario: the
// single-writer target met, the 64-writer one missed, the 128 KiB one met.
func sampleResults() *Results {
	res := &Results{
		Time:        time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		Machine:     Machine{CPUs: 8, GOMAXPROCS: 8, CPUModel: "Test CPU", Kernel: "6.1.0", GoVersion: "go1.26", LoadBefore: 0.25, LoadAfter: -1},
		Disk:        Disk{Dir: "/tmp/b", Device: "/dev/vda", FSType: "ext4", Fsync: Latency{Samples: 100, P50: 500 * time.Microsecond, P99: 2 * time.Millisecond, Mean: 600 * time.Microsecond}},
		RaftVersion: "v1.7.3",
		Warmup:      time.Second,
		Duration:    5 * time.Second,
	}
	add := func(sc Scenario, side string, ops int64, p50 time.Duration, writes, entries, subEntries, batches uint64) *RunResult {
		r := RunResult{Scenario: sc.Name(), Nodes: sc.Nodes, Side: side, Writers: sc.Writers, WriteBytes: sc.WriteBytes(),
			Elapsed: 5 * time.Second, Ops: ops, Bytes: ops * int64(sc.WriteBytes()),
			Latency:   Latency{Samples: int(ops), P50: p50, P99: 3 * p50},
			LogWrites: writes, LogEntries: entries, SubmitEntries: subEntries, SubmitBatches: batches}
		r.setRates()
		res.Runs = append(res.Runs, r)
		return &res.Runs[len(res.Runs)-1]
	}
	for _, sc := range scenarios([]int{1}, 8) {
		var raft, submit *RunResult
		switch sc.Writers {
		case 1:
			raft = add(sc, SideRaft, 5000, time.Millisecond, 5000, 5000, 0, 0)
			submit = add(sc, SideSubmit, 4500, 1100*time.Microsecond, 4500, 4500, 4500, 4500)
		case 64:
			raft = add(sc, SideRaft, 50000, 6*time.Millisecond, 5000, 50000, 0, 0)
			submit = add(sc, SideSubmit, 60000, 5*time.Millisecond, 3000, 3000, 3000, 60000)
		default:
			raft = add(sc, SideRaft, 10000, 4*time.Millisecond, 2000, 10000, 0, 0)
			submit = add(sc, SideSubmit, 9000, 4*time.Millisecond, 1800, 1800, 1800, 9000)
		}
		res.Comparisons = append(res.Comparisons, compare(sc, raft, submit))
	}
	return res
}

func TestResultsVerdicts(t *testing.T) {
	res := sampleResults()
	var got []string
	for _, c := range res.Comparisons {
		got = append(got, c.Verdict)
	}
	if want := []string{VerdictMet, VerdictMissed, VerdictMet}; strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("verdicts %q, want %q (comparisons %+v)", got, want, res.Comparisons)
	}
	if c := res.Comparisons[0]; c.Raft != 1 || c.Submit != 1.1 || c.Unit != "ms" || !c.LowerIsBetter {
		t.Errorf("p50 comparison %+v, want 1 ms vs 1.1 ms, lower is better", c)
	}
	if c := res.Comparisons[2]; c.Raft < 262.144-1e-9 || c.Raft > 262.144+1e-9 {
		t.Errorf("MB/s comparison %+v: raft %v, want 262.144", c, c.Raft)
	}
	if res.Passed() {
		t.Error("Passed() = true with a missed target")
	}
	res.Comparisons = res.Comparisons[:1]
	if !res.Passed() {
		t.Error("Passed() = false with every target met")
	}
	res.Comparisons[0].Verdict = VerdictNoData
	if res.Passed() {
		t.Error("Passed() = true with a target without data")
	}
}

func TestWriteMarkdown(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleResults().WriteMarkdown(&buf); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		"8 CPUs (Test CPU), kernel 6.1.0, go1.26; 1-minute load average 0.25 before, unknown after.",
		"/tmp/b (ext4 on /dev/vda): 4 KiB append + fsync p50 0.50 ms, p99 2.00 ms, mean 0.60 ms over 100 samples",
		"hashicorp/raft v1.7.3 Apply",
		"1s warm-up, 5s measured",
		"| scenario | nodes | side | ops/s | MB/s | p50 ms | p99 ms | entries/fsync | batches/entry | ratio | target | verdict |",
		"| 4 KiB × 1 writer | 1 | raft Apply | 1000 | 4.10 | 1.00 | 3.00 | 1.00 | — | | | |",
		"| 4 KiB × 1 writer | 1 | Submit | 900 | 3.69 | 1.10 | 3.30 | 1.00 | 1.00 | p50 1.10 | p50 ≤ 1.2× | met |",
		"| 4 KiB × 64 writers | 1 | raft Apply | 10000 | 41.0 | 6.00 | 18.0 | 10.0 | — | | | |",
		"| 4 KiB × 64 writers | 1 | Submit | 12000 | 49.2 | 5.00 | 15.0 | 1.00 | 20.0 | ops/s 1.20 | ops/s ≥ 1.5× | **MISSED** |",
		"| 128 KiB × 8 writers | 1 | Submit | 1800 | 236 | 4.00 | 12.0 | 1.00 | 5.00 | MB/s 0.90 | MB/s ≥ 0.8× | met |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("markdown lacks %q; got:\n%s", want, out)
		}
	}
	// Every table row has the header's column count.
	var cols int
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "|") {
			continue
		}
		n := strings.Count(line, "|")
		if cols == 0 {
			cols = n
		} else if n != cols {
			t.Errorf("row has %d bars, header %d: %s", n, cols, line)
		}
	}
}

func TestOptionsDefaults(t *testing.T) {
	o, err := Options{Dir: "/x"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.Duration != DefaultDuration || o.Warmup != DefaultWarmup || o.LargeWriters != DefaultLargeWriters || len(o.Nodes) != 2 {
		t.Errorf("defaults %+v", o)
	}
	for _, bad := range []Options{
		{},
		{Dir: "/x", Duration: time.Millisecond},
		{Dir: "/x", Nodes: []int{1, 1}},
		{Dir: "/x", Nodes: []int{0}},
		{Dir: "/x", LargeWriters: -1},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("withDefaults(%+v) accepted", bad)
		}
	}
}

// fakeSystem acknowledges every write after delay, or fails write failAt.
type fakeSystem struct {
	delay  time.Duration
	failAt int64 // 0: never
	writes atomic.Int64
	closed bool
}

func (f *fakeSystem) write(ctx context.Context, _ int, _ uint64) error {
	if n := f.writes.Add(1); f.failAt != 0 && n == f.failAt {
		return errors.New("injected failure")
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(f.delay):
		return nil
	}
}

func (f *fakeSystem) counters() counters {
	n := uint64(f.writes.Load())
	return counters{logWrites: n / 2, logEntries: n, submitEntries: n / 2, submitBatches: n}
}

func (f *fakeSystem) close() error { f.closed = true; return nil }

func TestDrive(t *testing.T) {
	sc := Scenario{Nodes: 1, Blocks: 1, Writers: 4}
	f := &fakeSystem{delay: 2 * time.Millisecond}
	r, err := drive(context.Background(), f, sc, 50*time.Millisecond, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if r.Ops < 20 || r.Ops > 400 || r.Latency.P50 < 2*time.Millisecond || r.Elapsed != 200*time.Millisecond {
		t.Errorf("drive: %+v", r)
	}
	if r.Bytes != r.Ops*4096 || r.Latency.Samples != int(r.Ops) {
		t.Errorf("drive: bytes %d samples %d for %d ops", r.Bytes, r.Latency.Samples, r.Ops)
	}
	if r.EntriesPerFsync < 1.5 || r.EntriesPerFsync > 2.5 || r.LogEntries == 0 {
		t.Errorf("drive: entries per fsync %v over %d entries, want about 2", r.EntriesPerFsync, r.LogEntries)
	}

	f = &fakeSystem{delay: time.Millisecond, failAt: 10}
	if _, err := drive(context.Background(), f, sc, 50*time.Millisecond, time.Minute); err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Errorf("drive with a failing write: err %v, want the injected failure", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	f = &fakeSystem{delay: time.Millisecond}
	if _, err := drive(ctx, f, sc, 0, time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("drive cancelled: err %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("drive took %v to stop after cancellation", d)
	}
}

func TestProbeFsync(t *testing.T) {
	dir := t.TempDir()
	l, err := probeFsync(context.Background(), dir, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if l.Samples < probeMinSamples || l.P50 <= 0 || l.P99 < l.P50 {
		t.Errorf("probe: %+v", l)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("probe left %d files behind", len(ents))
	}
}

// TestRunShort runs the whole benchmark, both sides, on 1-node clusters
// with a short measurement, and checks the results and the cleanup. To
// see the clusters' logs: TRICOPY_TEST_LOG=1 go test -run TestRunShort -v.
func TestRunShort(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Raft clusters")
	}
	dir := t.TempDir()
	jsonPath := filepath.Join(t.TempDir(), "results.json")
	logOut := io.Discard
	if os.Getenv("TRICOPY_TEST_LOG") != "" {
		logOut = os.Stderr
	}
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, Options{
		Dir:             dir,
		Duration:        300 * time.Millisecond,
		Warmup:          100 * time.Millisecond,
		Nodes:           []int{1},
		ElectionTimeout: 100 * time.Millisecond,
		Logger:          slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: slog.LevelDebug})),
		JSONPath:        jsonPath,
	}, &out)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("\n%s", out.String())
	if len(res.Runs) != 6 || len(res.Comparisons) != 3 {
		t.Fatalf("%d runs and %d comparisons, want 6 and 3", len(res.Runs), len(res.Comparisons))
	}
	for _, r := range res.Runs {
		if r.Ops == 0 || r.OpsPerSec <= 0 || r.Latency.P50 <= 0 || r.LogWrites == 0 || r.EntriesPerFsync < 1 {
			t.Errorf("%s %s: empty figures %+v", r.Side, r.Scenario, r)
		}
		if r.Side == SideSubmit && (r.SubmitEntries == 0 || r.BatchesPerEntry < 1) {
			t.Errorf("%s %s: no Submit counters %+v", r.Side, r.Scenario, r)
		}
	}
	for _, c := range res.Comparisons {
		if c.Verdict == VerdictNoData {
			t.Errorf("%s: no data", c.Scenario)
		}
	}
	if res.Disk.Fsync.Samples == 0 {
		t.Error("no fsync samples")
	}
	if !strings.Contains(out.String(), "| 4 KiB × 64 writers | 1 | Submit |") {
		t.Errorf("table lacks the 64-writer row:\n%s", out.String())
	}
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var back Results
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("decode %s: %v", jsonPath, err)
	}
	if len(back.Runs) != 6 || back.Runs[0].Ops != res.Runs[0].Ops {
		t.Errorf("JSON results differ: %d runs", len(back.Runs))
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("Run left %d entries in %s", len(ents), dir)
	}
}

// TestRunCancelled cancels Run while the writers of the first yardstick
// run are waiting on Raft, and checks that it returns promptly and cleans
// up.
func TestRunCancelled(t *testing.T) {
	if testing.Short() {
		t.Skip("starts Raft clusters")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started := make(chan struct{}, 8)
	log := slog.New(&watchHandler{msg: "run started", seen: started})
	go func() {
		<-started
		time.Sleep(500 * time.Millisecond) // election (100ms), warm-up (10ms), then writes
		cancel()
	}()
	done := make(chan error, 1)
	var cancelledAt time.Time
	go func() {
		_, err := Run(ctx, Options{
			Dir:             dir,
			Duration:        time.Minute,
			Warmup:          10 * time.Millisecond,
			Nodes:           []int{1},
			ElectionTimeout: 100 * time.Millisecond,
			Logger:          log,
		}, io.Discard)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Run returned before it was cancelled: %v", err)
	case <-ctx.Done():
		cancelledAt = time.Now()
	case <-time.After(time.Minute):
		t.Fatal("no run started within a minute")
	}
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run cancelled: err %v, want context.Canceled", err)
		}
		if d := time.Since(cancelledAt); d > 10*time.Second {
			t.Errorf("Run took %v to return after cancellation", d)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of its cancellation")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("Run left %d entries in %s", len(ents), dir)
	}
}

// watchHandler is a slog.Handler that drops every record and signals seen
// for each record whose message is msg.
type watchHandler struct {
	msg  string
	seen chan<- struct{}
}

func (h *watchHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *watchHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		select {
		case h.seen <- struct{}{}:
		default:
		}
	}
	return nil
}

func (h *watchHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *watchHandler) WithGroup(string) slog.Handler      { return h }

func TestHclogToSlog(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))
	h := newHclog(log, "raft").Named("raft1")
	h.Debug("not shown")
	h.Warn("heartbeat timeout reached", "last-leader-id", "", "term", 3)
	out := buf.String()
	if strings.Contains(out, "not shown") {
		t.Errorf("debug line logged at level info:\n%s", out)
	}
	want := `level=WARN msg="heartbeat timeout reached" component=raft.raft1 last-leader-id="" term=3`
	if !strings.Contains(out, want) {
		t.Errorf("got:\n%s\nwant a line containing:\n%s", out, want)
	}
}
