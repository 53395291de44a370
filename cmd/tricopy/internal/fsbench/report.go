package fsbench

import (
	"bufio"
	"fmt"
	"io"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil"
)

// Results are the figures of one Run.
type Results struct {
	// Time is when the measurements started.
	Time time.Time `json:"time"`
	// FioVersion and Kernel describe the system measured.
	FioVersion string `json:"fio_version"`
	Kernel     string `json:"kernel"`
	// SeqSize, RandSize and FsyncSize are the file sizes in bytes of the
	// sequential, random and fsync jobs; Runtime bounds each job.
	SeqSize   int64         `json:"seq_size"`
	RandSize  int64         `json:"rand_size"`
	FsyncSize int64         `json:"fsync_size"`
	Runtime   time.Duration `json:"runtime_ns"`
	// Files is the number of files of the small-file workload.
	Files int `json:"files"`
	// CachesDropped is true when the page cache was dropped before every
	// job; false means only fio's invalidate=1 applied.
	CachesDropped bool `json:"caches_dropped"`
	// Targets holds the figures of each target: tricopy, loopback, bare.
	Targets []TargetResult `json:"targets"`
	// Comparisons holds one row per metric: the three figures, the ratio
	// tricopy/loopback, and the verdict against the target.
	Comparisons []Comparison `json:"comparisons"`
}

// TargetResult is what the workloads measured on one target.
type TargetResult struct {
	// Target is TargetTricopy, TargetLoopback or TargetBare.
	Target string `json:"target"`
	// SeqWrite and SeqRead are the sequential 1 MiB jobs.
	SeqWrite FioResult `json:"seq_write"`
	SeqRead  FioResult `json:"seq_read"`
	// RandWrite and RandRead are the random 4 KiB jobs.
	RandWrite FioResult `json:"rand_write"`
	RandRead  FioResult `json:"rand_read"`
	// Fsync is the job of 4 KiB sequential writes each followed by fsync.
	Fsync FioResult `json:"fsync"`
	// SmallFiles is the create/stat/unlink workload.
	SmallFiles SmallFileResult `json:"small_files"`
}

// FioResult is what one fio job measured. Latencies are completion
// latencies of the read or write calls (fio's clat); the Sync fields are
// the latencies of the fsync calls of a job with fsync=1.
type FioResult struct {
	Bytes       int64         `json:"bytes"`
	Ops         int64         `json:"ops"`
	Runtime     time.Duration `json:"runtime_ns"`
	BytesPerSec float64       `json:"bytes_per_sec"`
	IOPS        float64       `json:"iops"`
	ClatMean    time.Duration `json:"clat_mean_ns"`
	ClatP50     time.Duration `json:"clat_p50_ns"`
	ClatP99     time.Duration `json:"clat_p99_ns"`
	SyncOps     int64         `json:"sync_ops,omitempty"`
	SyncMean    time.Duration `json:"sync_mean_ns,omitempty"`
	SyncP50     time.Duration `json:"sync_p50_ns,omitempty"`
	SyncP99     time.Duration `json:"sync_p99_ns,omitempty"`
	// ClatHist and SyncHist are the distributions of the two latencies
	// (from fio's json+ histogram), for plots.
	ClatHist benchutil.Histogram `json:"clat_hist,omitzero"`
	SyncHist benchutil.Histogram `json:"sync_hist,omitzero"`
}

// SmallFileResult is what the small-file workload measured: the duration
// of each phase over Files files, and the rate of each.
type SmallFileResult struct {
	Files        int           `json:"files"`
	Create       time.Duration `json:"create_ns"`
	Stat         time.Duration `json:"stat_ns"`
	Unlink       time.Duration `json:"unlink_ns"`
	CreatePerSec float64       `json:"create_per_sec"`
	StatPerSec   float64       `json:"stat_per_sec"`
	UnlinkPerSec float64       `json:"unlink_per_sec"`
}

func (r *SmallFileResult) setRates() {
	rate := func(d time.Duration) float64 {
		if d <= 0 {
			return 0
		}
		return float64(r.Files) / d.Seconds()
	}
	r.CreatePerSec, r.StatPerSec, r.UnlinkPerSec = rate(r.Create), rate(r.Stat), rate(r.Unlink)
}

// Verdicts of a Comparison.
const (
	// VerdictPass means the ratio meets the target.
	VerdictPass = "pass"
	// VerdictFail means the ratio misses the target.
	VerdictFail = "fail"
	// VerdictNoData means a figure needed for the ratio is missing (zero).
	VerdictNoData = "no data"
	// VerdictInfo marks a metric without a target.
	VerdictInfo = "info"
)

// Comparison is one row of the results table.
type Comparison struct {
	// Metric names the workload and figure, like "seq write 1 MiB".
	Metric string `json:"metric"`
	// Unit is the unit of the three figures, like "MiB/s".
	Unit string `json:"unit"`
	// Tricopy, Loopback and Bare are the figures of each target.
	Tricopy  float64 `json:"tricopy"`
	Loopback float64 `json:"loopback"`
	Bare     float64 `json:"bare"`
	// Ratio is Tricopy/Loopback, or 0 when Loopback is 0.
	Ratio float64 `json:"ratio"`
	// LowerIsBetter is true for latencies.
	LowerIsBetter bool `json:"lower_is_better"`
	// Target is the ratio to reach: at least Target, or at most Target
	// when LowerIsBetter; 0 means none.
	Target float64 `json:"target,omitempty"`
	// Verdict is VerdictPass, VerdictFail, VerdictNoData or VerdictInfo.
	Verdict string `json:"verdict"`
}

// metric is a row of the table: how to get the figure from a target's
// results, and the target ratio tricopy/loopback.
type metric struct {
	name   string
	unit   string
	value  func(*TargetResult) float64
	lower  bool    // lower is better
	target float64 // 0: none
}

func mibps(r FioResult) float64      { return r.BytesPerSec / (1 << 20) }
func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// metrics are the rows of the table, with the targets of the issue: seq
// write and read at least 0.8x loopback, random 4 KiB at least 0.6x,
// small-file operations at least 0.5x, fsync latency at most 1.5x.
var metrics = []metric{
	{"seq write 1 MiB", "MiB/s", func(r *TargetResult) float64 { return mibps(r.SeqWrite) }, false, 0.8},
	{"seq read 1 MiB", "MiB/s", func(r *TargetResult) float64 { return mibps(r.SeqRead) }, false, 0.8},
	{"rand write 4 KiB", "IOPS", func(r *TargetResult) float64 { return r.RandWrite.IOPS }, false, 0.6},
	{"rand read 4 KiB", "IOPS", func(r *TargetResult) float64 { return r.RandRead.IOPS }, false, 0.6},
	{"fsync after 4 KiB write, p50", "µs", func(r *TargetResult) float64 { return micros(r.Fsync.SyncP50) }, true, 1.5},
	{"fsync after 4 KiB write, p99", "µs", func(r *TargetResult) float64 { return micros(r.Fsync.SyncP99) }, true, 1.5},
	{"4 KiB write (fsync=1 job), p50", "µs", func(r *TargetResult) float64 { return micros(r.Fsync.ClatP50) }, true, 0},
	{"4 KiB write (fsync=1 job), p99", "µs", func(r *TargetResult) float64 { return micros(r.Fsync.ClatP99) }, true, 0},
	{"4 KiB write+fsync", "ops/s", func(r *TargetResult) float64 { return r.Fsync.IOPS }, false, 0},
	{"create+write 1 KiB+close", "files/s", func(r *TargetResult) float64 { return r.SmallFiles.CreatePerSec }, false, 0.5},
	{"stat", "files/s", func(r *TargetResult) float64 { return r.SmallFiles.StatPerSec }, false, 0.5},
	{"unlink", "files/s", func(r *TargetResult) float64 { return r.SmallFiles.UnlinkPerSec }, false, 0.5},
}

// compare builds the table rows of res from res.Targets.
func compare(res *Results) []Comparison {
	out := make([]Comparison, 0, len(metrics))
	for _, m := range metrics {
		c := Comparison{Metric: m.name, Unit: m.unit, LowerIsBetter: m.lower, Target: m.target}
		if t := res.Target(TargetTricopy); t != nil {
			c.Tricopy = m.value(t)
		}
		if t := res.Target(TargetLoopback); t != nil {
			c.Loopback = m.value(t)
		}
		if t := res.Target(TargetBare); t != nil {
			c.Bare = m.value(t)
		}
		c.Verdict = evaluate(&c)
		out = append(out, c)
	}
	return out
}

// evaluate sets c.Ratio and returns the verdict of c.
func evaluate(c *Comparison) string {
	c.Ratio = 0
	if c.Loopback > 0 {
		c.Ratio = c.Tricopy / c.Loopback
	}
	switch {
	case c.Target == 0:
		return VerdictInfo
	case c.Loopback <= 0 || c.Tricopy <= 0:
		return VerdictNoData
	case c.LowerIsBetter && c.Ratio <= c.Target, !c.LowerIsBetter && c.Ratio >= c.Target:
		return VerdictPass
	default:
		return VerdictFail
	}
}

// Target returns the results of the named target, or nil.
func (r *Results) Target(name string) *TargetResult {
	for i := range r.Targets {
		if r.Targets[i].Target == name {
			return &r.Targets[i]
		}
	}
	return nil
}

// Passed reports whether every metric with a target met it.
func (r *Results) Passed() bool {
	for _, c := range r.Comparisons {
		if c.Verdict == VerdictFail || c.Verdict == VerdictNoData {
			return false
		}
	}
	return true
}

// WriteMarkdown writes r as a markdown table, with a line describing the
// run before it.
func (r *Results) WriteMarkdown(w io.Writer) error {
	bw := bufio.NewWriter(w)
	caches := "page cache dropped before every job"
	if !r.CachesDropped {
		caches = "page cache not dropped (not permitted), fio invalidate=1 only"
	}
	fmt.Fprintf(bw, "Filesystem benchmark, %s, %s, kernel %s: seq file %s, random file %s, fsync file %s, "+
		"each fio job at most %v; %d small files; %s.\n\n",
		r.Time.Format(time.RFC3339), r.FioVersion, r.Kernel, sizeString(r.SeqSize), sizeString(r.RandSize),
		sizeString(r.FsyncSize), r.Runtime, r.Files, caches)
	fmt.Fprintln(bw, "| workload | unit | tricopy | loopback | bare | tricopy/loopback | target | verdict |")
	fmt.Fprintln(bw, "| --- | --- | ---: | ---: | ---: | ---: | :---: | --- |")
	for _, c := range r.Comparisons {
		ratio, target, verdict := "—", "—", c.Verdict
		if c.Loopback > 0 {
			ratio = fmt.Sprintf("%.2f", c.Ratio)
		}
		if c.Target > 0 {
			op := "≥"
			if c.LowerIsBetter {
				op = "≤"
			}
			target = fmt.Sprintf("%s %.1f", op, c.Target)
		}
		switch c.Verdict {
		case VerdictFail:
			verdict = "**FAIL**"
		case VerdictInfo:
			verdict = ""
		}
		fmt.Fprintf(bw, "| %s | %s | %s | %s | %s | %s | %s | %s |\n",
			c.Metric, c.Unit, benchutil.Number(c.Tricopy), benchutil.Number(c.Loopback), benchutil.Number(c.Bare), ratio, target, verdict)
	}
	return bw.Flush()
}

// sizeString formats a byte count in MiB, KiB or bytes.
func sizeString(n int64) string {
	switch {
	case n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	default:
		return fmt.Sprintf("%d B", n)
	}
}
