package benchreport

import (
	"image/png"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/failoverbench"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/fsbench"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/lagbench"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/mirrorbench"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/replbench"
)

// logNormal returns a histogram of n latencies around median, spread by
// sigma (log-normal), from a fixed seed.
func logNormal(seed uint64, n int, median time.Duration, sigma float64) benchutil.Histogram {
	r := rand.New(rand.NewPCG(seed, 1))
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = time.Duration(float64(median) * math.Exp(sigma*r.NormFloat64()))
	}
	return benchutil.NewHistogram(s)
}

func fakeFS() *fsbench.Results {
	res := &fsbench.Results{Time: time.Now(), Files: 10}
	for i, t := range []string{fsbench.TargetTricopy, fsbench.TargetLoopback, fsbench.TargetBare} {
		med := time.Duration(300-60*i) * time.Microsecond
		tr := fsbench.TargetResult{Target: t}
		tr.Fsync.SyncHist = logNormal(uint64(i), 2000, med, 0.3)
		tr.Fsync.ClatHist = logNormal(uint64(i+10), 2000, med/5, 0.5)
		tr.RandRead.ClatHist = logNormal(uint64(i+20), 2000, med/4, 1.2)
		res.Targets = append(res.Targets, tr)
	}
	return res
}

func fakeSubmit() *replbench.Results {
	res := &replbench.Results{Time: time.Now()}
	for i, side := range []string{replbench.SideRaft, replbench.SideSubmit} {
		res.Runs = append(res.Runs, replbench.RunResult{Scenario: "4 KiB × 64 writers", Nodes: 3, Side: side,
			Latency: replbench.Latency{Hist: logNormal(uint64(i), 5000, time.Duration(5+i)*time.Millisecond, 0.4)}})
	}
	res.Comparisons = []replbench.Comparison{{Scenario: "4 KiB × 64 writers", Nodes: 3, Metric: replbench.MetricOpsPerSec}}
	return res
}

func fakeMirror() *mirrorbench.Results {
	res := &mirrorbench.Results{Time: time.Now()}
	for i, n := range []int{0, 1, 3} {
		m := mirrorbench.MountResult{Target: []string{"local", "mirror, 1 node", "mirror, 3 nodes"}[i], Nodes: n}
		m.Fsync.ClatHist = logNormal(uint64(i), 1000, time.Duration(80+700*i)*time.Microsecond, 0.3)
		m.Fsync.SyncHist = logNormal(uint64(i+5), 1000, time.Duration(285-120*i)*time.Microsecond, 0.3)
		res.Mounts = append(res.Mounts, m)
	}
	for i, n := range []int{1, 3} {
		res.Raw = append(res.Raw, mirrorbench.RawResult{Nodes: n,
			Small: replbench.RunResult{Latency: replbench.Latency{Hist: logNormal(uint64(i+9), 3000, time.Duration(375+750*i)*time.Microsecond, 0.2)}}})
	}
	return res
}

func fakeLag() *lagbench.Results {
	res := &lagbench.Results{Time: time.Now(), Writers: 8, RecordSize: 4096, MaxRate: 1600}
	for i, load := range []float64{0.5, 0.9} {
		l := lagbench.LoadResult{Load: load, Rate: 1600 * load, Hist: logNormal(uint64(i), 10000, time.Duration(6+2*i)*time.Millisecond, 0.7)}
		for k := range 150 {
			l.Timeline = append(l.Timeline, lagbench.LagWindow{At: time.Duration(k) * 100 * time.Millisecond,
				P50: time.Duration(6+2*i+k%5) * time.Millisecond, Max: time.Duration(30+(k*37)%170) * time.Millisecond})
		}
		res.Loads = append(res.Loads, l)
	}
	return res
}

func fakeFailover() *failoverbench.Results {
	return &failoverbench.Results{Time: time.Now(), Volumes: 2, Size: 1 << 30, BacklogBytes: 203 << 20, N: 204,
		Promote: 760 * time.Millisecond, RTO: 765 * time.Millisecond, MountRTOs: []time.Duration{762 * time.Millisecond, 765 * time.Millisecond}, Passed: true}
}

// TestReport writes a report of every benchmark from made-up results and
// checks that README.md has every section and that every image it links
// is a PNG in the directory. Set TRICOPY_REPORT_SAMPLE=DIR to keep it in
// DIR and look at the plots.
func TestReport(t *testing.T) {
	dir := os.Getenv("TRICOPY_REPORT_SAMPLE")
	if dir == "" {
		dir = t.TempDir()
	}
	r, err := New(dir, t.TempDir(), []string{"tricopy", "bench", "all", "--dir", "/var/tmp/x y"})
	if err != nil {
		t.Fatal(err)
	}
	steps := []func() error{
		func() error { return r.AddFS(fakeFS()) },
		func() error { return r.AddSubmit(fakeSubmit()) },
		func() error { return r.AddMirror(fakeMirror()) },
		func() error { return r.AddLag(fakeLag()) },
		func() error { return r.AddFailover(fakeFailover()) },
		func() error { return r.AddFailure("Broken", os.ErrPermission) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			t.Fatal(err)
		}
	}
	data, err := os.ReadFile(r.Readme())
	if err != nil {
		t.Fatal(err)
	}
	md := string(data)
	for _, want := range []string{
		"Command: `tricopy bench all --dir '/var/tmp/x y'`", "- CPU: ", "## Filesystem", "## Replication", "## Mirrored mount",
		"## Lag", "## Failover", "## Broken", "The benchmark failed", "### Secondary lag", "| load |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("README.md lacks %q", want)
		}
	}
	links := regexp.MustCompile(`!\[[^\]]+\]\(([^)]+)\)`).FindAllStringSubmatch(md, -1)
	// fs: 3 of 4 jobs have data (rand write has none); submit 1, mirror 2,
	// lag 2, failover 1.
	if len(links) != 9 {
		t.Errorf("%d images linked, want 9:\n%s", len(links), md)
	}
	for _, l := range links {
		f, err := os.Open(filepath.Join(dir, l[1]))
		if err != nil {
			t.Errorf("linked image: %v", err)
			continue
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Errorf("%s: %v", l[1], err)
		} else if img.Bounds().Dx() < 200 {
			t.Errorf("%s: %v", l[1], img.Bounds())
		}
	}
}

func TestSlug(t *testing.T) {
	for in, want := range map[string]string{"4 KiB × 64 writers": "4-kib-x-64-writers", "128 KiB × 8 writers": "128-kib-x-8-writers"} {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
}
