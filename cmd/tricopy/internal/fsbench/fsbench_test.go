package fsbench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil/benchtest"
)

func readSample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestParseFio checks the parsing of fio 3.33 reports committed in
// testdata (a 4 KiB write job with fsync=1 and a 4 KiB random read job).
func TestParseFio(t *testing.T) {
	for _, tc := range []struct {
		file, rw string
		want     FioResult
	}{
		{"fio-fsync.json", "write", FioResult{
			Bytes: 1110016, Ops: 271, Runtime: 1536 * time.Millisecond,
			ClatMean: 8558, ClatP50: 7328, ClatP99: 33536,
			SyncOps: 271, SyncMean: 5653927, SyncP50: 1744896, SyncP99: 11993088,
		}},
		{"fio-randread.json", "randread", FioResult{
			Bytes: 4194304, Ops: 1024, Runtime: 391 * time.Millisecond,
			ClatMean: 380243, ClatP50: 48384, ClatP99: 1843200,
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			got, err := parseFio(readSample(t, tc.file), tc.rw)
			if err != nil {
				t.Fatal(err)
			}
			want := tc.want
			want.BytesPerSec = float64(want.Bytes) / want.Runtime.Seconds()
			want.IOPS = float64(want.Ops) / want.Runtime.Seconds()
			if !reflect.DeepEqual(*got, want) {
				t.Errorf("parseFio:\n got %+v\nwant %+v", *got, want)
			}
		})
	}
}

// TestParseFioBins checks that the latency histograms of fio's json+
// output become the histograms of the result.
func TestParseFioBins(t *testing.T) {
	var d map[string]any
	if err := json.Unmarshal(readSample(t, "fio-fsync.json"), &d); err != nil {
		t.Fatal(err)
	}
	job := d["jobs"].([]any)[0].(map[string]any)
	job["write"].(map[string]any)["clat_ns"].(map[string]any)["bins"] = map[string]any{"7168": 200, "33792": 71}
	job["sync"].(map[string]any)["lat_ns"].(map[string]any)["bins"] = map[string]any{"1744896": 150, "11993088": 121}
	data, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	got, err := parseFio(data, "write")
	if err != nil {
		t.Fatal(err)
	}
	if n := got.ClatHist.Count(); n != 271 || len(got.ClatHist.Bins) != 2 {
		t.Errorf("clat histogram %+v, want 271 writes in 2 bins", got.ClatHist.Bins)
	}
	if n := got.SyncHist.Count(); n != 271 || got.SyncHist.Quantile(0.5) < 1700*time.Microsecond || got.SyncHist.Quantile(0.5) > 1800*time.Microsecond {
		t.Errorf("sync histogram %+v: want 271 fsyncs, median about 1.74ms", got.SyncHist.Bins)
	}
}

// TestParseFioWarnings checks that text fio prints before its JSON
// document is skipped.
func TestParseFioWarnings(t *testing.T) {
	data := append([]byte("fio: this platform does not support process shared mutexes\n"), readSample(t, "fio-fsync.json")...)
	if _, err := parseFio(data, "write"); err != nil {
		t.Fatal(err)
	}
}

func TestParseFioErrors(t *testing.T) {
	sample := readSample(t, "fio-randread.json")
	edit := func(fn func(job map[string]any)) []byte {
		var d map[string]any
		if err := json.Unmarshal(sample, &d); err != nil {
			t.Fatal(err)
		}
		fn(d["jobs"].([]any)[0].(map[string]any))
		b, err := json.Marshal(d)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	noJobs, err := json.Marshal(map[string]any{"fio version": "fio-3.33", "jobs": []any{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		data []byte
		rw   string
		want string
	}{
		{"not json", []byte("fio: engine psync not loadable\n"), "read", "decode fio report"},
		{"no jobs", noJobs, "read", "0 jobs"},
		{"job error", edit(func(j map[string]any) { j["error"] = 5 }), "randread", "failed with error 5"},
		{"wrong direction", sample, "randwrite", "did no randwrite"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseFio(tc.data, tc.rw)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("parseFio: error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestEvaluate(t *testing.T) {
	for _, tc := range []struct {
		name          string
		ours, loop    float64
		lower         bool
		target        float64
		ratio         float64
		verdict       string
		passedOverall bool
	}{
		{"throughput above", 90, 100, false, 0.8, 0.9, VerdictPass, true},
		{"throughput at target", 80, 100, false, 0.8, 0.8, VerdictPass, true},
		{"throughput below", 79, 100, false, 0.8, 0.79, VerdictFail, false},
		{"latency below", 140, 100, true, 1.5, 1.4, VerdictPass, true},
		{"latency at target", 150, 100, true, 1.5, 1.5, VerdictPass, true},
		{"latency above", 151, 100, true, 1.5, 1.51, VerdictFail, false},
		{"no loopback figure", 10, 0, false, 0.5, 0, VerdictNoData, false},
		{"no tricopy figure", 0, 10, false, 0.5, 0, VerdictNoData, false},
		{"no target", 1, 100, false, 0, 0.01, VerdictInfo, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Comparison{Tricopy: tc.ours, Loopback: tc.loop, LowerIsBetter: tc.lower, Target: tc.target}
			c.Verdict = evaluate(&c)
			if c.Verdict != tc.verdict || math.Abs(c.Ratio-tc.ratio) > 1e-9 {
				t.Errorf("evaluate(%v vs %v): ratio %v verdict %q, want %v %q", tc.ours, tc.loop, c.Ratio, c.Verdict, tc.ratio, tc.verdict)
			}
			r := &Results{Comparisons: []Comparison{c}}
			if r.Passed() != tc.passedOverall {
				t.Errorf("Passed() = %v, want %v", r.Passed(), tc.passedOverall)
			}
		})
	}
}

// fakeTarget returns results where every figure of the target is scale
// times a base figure (latencies scaled by lat).
func fakeTarget(name string, scale, lat float64) TargetResult {
	fio := func(bps, iops float64) FioResult {
		return FioResult{BytesPerSec: bps * scale, IOPS: iops * scale,
			ClatP50: time.Duration(10e3 * lat), ClatP99: time.Duration(50e3 * lat),
			SyncP50: time.Duration(300e3 * lat), SyncP99: time.Duration(900e3 * lat)}
	}
	return TargetResult{
		Target:    name,
		SeqWrite:  fio(500<<20, 500),
		SeqRead:   fio(800<<20, 800),
		RandWrite: fio(80<<20, 20000),
		RandRead:  fio(40<<20, 10000),
		Fsync:     fio(12<<20, 3000),
		SmallFiles: SmallFileResult{Files: 100,
			CreatePerSec: 5000 * scale, StatPerSec: 20000 * scale, UnlinkPerSec: 8000 * scale},
	}
}

func TestCompareAndMarkdown(t *testing.T) {
	res := &Results{
		Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), FioVersion: "fio-3.33", Kernel: "6.1.0",
		SeqSize: 512 << 20, RandSize: 256 << 20, FsyncSize: 64 << 20, Runtime: 15 * time.Second, Files: 100,
		CachesDropped: true,
		Targets: []TargetResult{
			fakeTarget(TargetTricopy, 0.7, 1.2), // 0.7x loopback's rates, 1.2x its latencies
			fakeTarget(TargetLoopback, 1, 1),
			fakeTarget(TargetBare, 3, 0.5),
		},
	}
	res.Comparisons = compare(res)
	if len(res.Comparisons) != len(metrics) {
		t.Fatalf("%d comparisons, want %d", len(res.Comparisons), len(metrics))
	}
	want := map[string]string{
		"seq write 1 MiB":              VerdictFail, // 0.7 < 0.8
		"seq read 1 MiB":               VerdictFail,
		"rand write 4 KiB":             VerdictPass, // 0.7 >= 0.6
		"rand read 4 KiB":              VerdictPass,
		"fsync after 4 KiB write, p50": VerdictPass, // 1.2 <= 1.5
		"fsync after 4 KiB write, p99": VerdictPass,
		"4 KiB write+fsync":            VerdictInfo,
		"create+write 1 KiB+close":     VerdictPass,
		"stat":                         VerdictPass,
		"unlink":                       VerdictPass,
	}
	for _, c := range res.Comparisons {
		if v, ok := want[c.Metric]; ok && c.Verdict != v {
			t.Errorf("%s: verdict %q, want %q (ratio %.3f)", c.Metric, c.Verdict, v, c.Ratio)
		}
		wantRatio := 0.7
		if c.LowerIsBetter {
			wantRatio = 1.2
		}
		if math.Abs(c.Ratio-wantRatio) > 1e-9 {
			t.Errorf("%s: ratio %v, want %v", c.Metric, c.Ratio, wantRatio)
		}
	}
	if got := res.Comparisons[0].Tricopy; math.Abs(got-350) > 1e-9 {
		t.Errorf("seq write tricopy = %v MiB/s, want 350", got)
	}
	if res.Passed() {
		t.Error("Passed() = true with failing rows")
	}

	var buf bytes.Buffer
	if err := res.WriteMarkdown(&buf); err != nil {
		t.Fatal(err)
	}
	md := buf.String()
	for _, s := range []string{
		"| workload | unit | tricopy | loopback | bare | tricopy/loopback | target | verdict |",
		"| seq write 1 MiB | MiB/s | 350 | 500 | 1500 | 0.70 | ≥ 0.8 | **FAIL** |",
		"| fsync after 4 KiB write, p50 | µs | 360 | 300 | 150 | 1.20 | ≤ 1.5 | pass |",
		"| 4 KiB write+fsync | ops/s | 2100 | 3000 | 9000 | 0.70 | — |  |",
		"seq file 512 MiB, random file 256 MiB, fsync file 64 MiB",
		"page cache dropped before every job",
	} {
		if !strings.Contains(md, s) {
			t.Errorf("markdown lacks %q:\n%s", s, md)
		}
	}
}

func TestOptions(t *testing.T) {
	o, err := Options{Dir: "x"}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.SeqSize != DefaultSeqSize || o.RandSize != DefaultRandSize || o.Runtime != DefaultRuntime || o.Files != DefaultFiles || o.Logger == nil {
		t.Errorf("defaults not applied: %+v", o)
	}
	if o.fsyncSize() != maxFsyncSize {
		t.Errorf("fsync size %d, want %d", o.fsyncSize(), maxFsyncSize)
	}
	if blocks := o.volumeBlocks(); o.volumeInodes(blocks) != 0 {
		t.Errorf("default volume of %d blocks needs %d inodes, want the default", blocks, o.volumeInodes(blocks))
	}
	many := Options{Dir: "x", SeqSize: 1 << 20, RandSize: 1 << 20, Files: 1 << 20}
	if n := many.volumeInodes(many.volumeBlocks()); n < 1<<20 {
		t.Errorf("a volume for %d files gets %d inodes", many.Files, n)
	}
	for _, bad := range []Options{
		{},
		{Dir: "x", SeqSize: 4096},
		{Dir: "x", RandSize: -1},
		{Dir: "x", Runtime: time.Millisecond},
		{Dir: "x", Files: -1},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("withDefaults(%+v) accepted", bad)
		}
	}
}

func TestRunWithoutFio(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := Run(context.Background(), Options{Dir: t.TempDir()}, &bytes.Buffer{})
	if !errors.Is(err, ErrNoFio) {
		t.Fatalf("Run without fio: %v, want ErrNoFio", err)
	}
}

// hookHandler is a slog handler that writes to the test log and calls
// hook with every message.
type hookHandler struct {
	t    testing.TB
	hook func(msg string)
}

func (h hookHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h hookHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h hookHandler) WithGroup(string) slog.Handler            { return h }
func (h hookHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	b.WriteString(r.Level.String() + " " + r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.String())
		return true
	})
	h.t.Log(b.String())
	if h.hook != nil {
		h.hook(r.Message)
	}
	return nil
}

// mountsUnder returns the mountpoints of /proc/self/mountinfo under dir.
func mountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir) {
			out = append(out, fields[4])
		}
	}
	return out
}

// checkNothingLeft fails t if Run left a mount or a file in dir.
func checkNothingLeft(t testing.TB, dir string) {
	t.Helper()
	if m := mountsUnder(t, dir); len(m) > 0 {
		t.Errorf("mounts left behind: %q", m)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left behind in the benchmark dir: %s", e.Name())
	}
}

// TestRunSmall runs the whole benchmark with tiny sizes.
func TestRunSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("runs fio and FUSE mounts for about 40s")
	}
	benchtest.Require(t, "fio")
	dir := t.TempDir()
	jsonPath := filepath.Join(t.TempDir(), "results.json")
	var out bytes.Buffer
	res, err := Run(context.Background(), Options{
		Dir: dir, SeqSize: 16 << 20, RandSize: 16 << 20, Runtime: time.Second, Files: 200,
		Logger: slog.New(hookHandler{t: t}), JSONPath: jsonPath,
	}, &out)
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	t.Logf("results:\n%s", out.String())
	checkNothingLeft(t, dir)

	if len(res.Targets) != 3 {
		t.Fatalf("%d targets, want 3", len(res.Targets))
	}
	for _, tr := range res.Targets {
		for name, r := range map[string]FioResult{
			"seq write": tr.SeqWrite, "seq read": tr.SeqRead, "rand write": tr.RandWrite,
			"rand read": tr.RandRead, "fsync": tr.Fsync,
		} {
			if r.Ops == 0 || r.BytesPerSec <= 0 || r.ClatP50 <= 0 {
				t.Errorf("%s %s: no figures: %+v", tr.Target, name, r)
			}
		}
		if tr.Fsync.SyncOps == 0 || tr.Fsync.SyncP99 <= 0 {
			t.Errorf("%s fsync: no fsync latencies: %+v", tr.Target, tr.Fsync)
		}
		if s := tr.SmallFiles; s.Files != 200 || s.CreatePerSec <= 0 || s.StatPerSec <= 0 || s.UnlinkPerSec <= 0 {
			t.Errorf("%s small files: %+v", tr.Target, s)
		}
	}
	for _, c := range res.Comparisons {
		if c.Verdict == VerdictNoData {
			t.Errorf("%s: no data", c.Metric)
		}
	}
	if !strings.Contains(out.String(), "| seq write 1 MiB | MiB/s |") {
		t.Errorf("no table in the output:\n%s", out.String())
	}

	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var decoded Results
	if err := json.Unmarshal(data, &decoded); err != nil {
		t.Fatalf("decode %s: %v", jsonPath, err)
	}
	if len(decoded.Targets) != 3 || len(decoded.Comparisons) != len(metrics) || !reflect.DeepEqual(decoded.Targets[0].SeqWrite, res.Targets[0].SeqWrite) {
		t.Errorf("JSON results differ from the returned ones:\n%s", data)
	}
}

// TestRunCancel cancels Run during its first workload and checks that it
// unmounts and cleans up.
func TestRunCancel(t *testing.T) {
	if testing.Short() {
		t.Skip("runs fio and FUSE mounts")
	}
	benchtest.Require(t, "fio")
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(hookHandler{t: t, hook: func(msg string) {
		if msg == "fio job done" {
			cancel()
		}
	}})
	start := time.Now()
	_, err := Run(ctx, Options{Dir: dir, SeqSize: 16 << 20, RandSize: 16 << 20, Runtime: 10 * time.Second, Files: 10, Logger: log}, &bytes.Buffer{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Run after cancel: %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("Run took %v to return after cancel", d)
	}
	checkNothingLeft(t, dir)
}
