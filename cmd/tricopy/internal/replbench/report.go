package replbench

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil"
)

// Sides of a scenario: the yardstick and ours.
const (
	// SideRaft is raw hashicorp/raft Apply with raft-boltdb, the yardstick.
	SideRaft = "raft"
	// SideSubmit is tricopy's intermediate cluster written through its
	// client's Submit.
	SideSubmit = "submit"
)

// Metrics a target is held on.
const (
	// MetricP50 is the median latency of one write; lower is better.
	MetricP50 = "p50"
	// MetricOpsPerSec is the number of writes acknowledged per second.
	MetricOpsPerSec = "ops/s"
	// MetricMBPerSec is the payload acknowledged per second, in MB (10^6
	// bytes).
	MetricMBPerSec = "MB/s"
)

// Verdicts of a Comparison.
const (
	// VerdictMet means the ratio meets the target.
	VerdictMet = "met"
	// VerdictMissed means the ratio misses the target.
	VerdictMissed = "missed"
	// VerdictNoData means a figure needed for the ratio is missing (zero).
	VerdictNoData = "no data"
)

// Results are the figures of one Run.
type Results struct {
	// Time is when the measurements started.
	Time time.Time `json:"time"`
	// Machine and Disk describe the system measured.
	Machine Machine `json:"machine"`
	Disk    Disk    `json:"disk"`
	// RaftVersion is the version of hashicorp/raft both sides run.
	RaftVersion string `json:"raft_version,omitempty"`
	// Warmup and Duration are the unmeasured and measured time of every run.
	Warmup   time.Duration `json:"warmup_ns"`
	Duration time.Duration `json:"duration_ns"`
	// Runs holds one entry per scenario and side, in the order run.
	Runs []RunResult `json:"runs"`
	// Comparisons holds one row per scenario: both sides' figure of the
	// scenario's metric, the ratio ours/yardstick and the verdict.
	Comparisons []Comparison `json:"comparisons"`
}

// Machine describes the computer the benchmark ran on.
type Machine struct {
	CPUs       int    `json:"cpus"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	CPUModel   string `json:"cpu_model,omitempty"`
	Kernel     string `json:"kernel,omitempty"`
	GoVersion  string `json:"go_version"`
	// LoadBefore and LoadAfter are the 1-minute load averages when the
	// benchmark started and ended (-1 if unknown). A load before near the
	// CPU count means other work competed with the clusters, whose
	// figures are then not comparable with a quiet run's.
	LoadBefore float64 `json:"load_before"`
	LoadAfter  float64 `json:"load_after"`
}

// Disk describes the disk under Options.Dir and its fsync latency, which
// bounds the latency of every Raft write.
type Disk struct {
	// Dir is the benchmark's scratch directory.
	Dir string `json:"dir"`
	// Device and FSType name the filesystem Dir is on, when known.
	Device string `json:"device,omitempty"`
	FSType string `json:"fs_type,omitempty"`
	// Fsync is the latency of appending 4 KiB to a file and fsyncing it.
	Fsync Latency `json:"fsync"`
}

// RunResult is what one side measured in one scenario.
type RunResult struct {
	// Scenario names the workload, like "4 KiB × 64 writers".
	Scenario string `json:"scenario"`
	// Nodes is the cluster size.
	Nodes int `json:"nodes"`
	// Side is SideRaft or SideSubmit.
	Side string `json:"side"`
	// Writers is the number of concurrent writers; WriteBytes the payload
	// of each write.
	Writers    int `json:"writers"`
	WriteBytes int `json:"write_bytes"`
	// Elapsed is the measured window; Ops and Bytes the writes and payload
	// acknowledged in it.
	Elapsed time.Duration `json:"elapsed_ns"`
	Ops     int64         `json:"ops"`
	Bytes   int64         `json:"bytes"`
	// OpsPerSec and MBPerSec are the rates over Elapsed (MB = 10^6 bytes).
	OpsPerSec float64 `json:"ops_per_sec"`
	MBPerSec  float64 `json:"mb_per_sec"`
	// Latency is over the writes acknowledged in the window, each from the
	// call to its acknowledgement.
	Latency Latency `json:"latency"`
	// LogWrites and LogEntries count the leader's Raft log store calls (one
	// bbolt commit with fsync each) and the entries they stored, in the
	// window; EntriesPerFsync is their ratio.
	LogWrites       uint64  `json:"log_writes"`
	LogEntries      uint64  `json:"log_entries"`
	EntriesPerFsync float64 `json:"entries_per_fsync"`
	// SubmitEntries and SubmitBatches count the leader's Submit entries
	// and the batches they carried, in the window (SideSubmit only);
	// BatchesPerEntry is their ratio.
	SubmitEntries   uint64  `json:"submit_entries,omitempty"`
	SubmitBatches   uint64  `json:"submit_batches,omitempty"`
	BatchesPerEntry float64 `json:"batches_per_entry,omitempty"`
}

// setRates fills the derived fields of r from the counts.
func (r *RunResult) setRates() {
	r.OpsPerSec = perSecond(float64(r.Ops), r.Elapsed)
	r.MBPerSec = perSecond(float64(r.Bytes), r.Elapsed) / 1e6
	r.EntriesPerFsync = ratio(float64(r.LogEntries), float64(r.LogWrites))
	r.BatchesPerEntry = ratio(float64(r.SubmitBatches), float64(r.SubmitEntries))
}

// metric returns the figure of r named by a Metric constant, or 0.
func (r *RunResult) metric(name string) float64 {
	switch name {
	case MetricP50:
		return millis(r.Latency.P50)
	case MetricOpsPerSec:
		return r.OpsPerSec
	case MetricMBPerSec:
		return r.MBPerSec
	}
	return 0
}

// Comparison is the verdict of one scenario on one cluster size.
type Comparison struct {
	// Scenario and Nodes name the scenario.
	Scenario string `json:"scenario"`
	Nodes    int    `json:"nodes"`
	// Metric is a Metric constant; Unit its unit.
	Metric string `json:"metric"`
	Unit   string `json:"unit"`
	// Raft and Submit are the figures of the two sides.
	Raft   float64 `json:"raft"`
	Submit float64 `json:"submit"`
	// Ratio is Submit/Raft, or 0 when Raft is 0.
	Ratio float64 `json:"ratio"`
	// LowerIsBetter is true for latencies.
	LowerIsBetter bool `json:"lower_is_better"`
	// Target is the ratio to reach: at least Target, or at most Target
	// when LowerIsBetter.
	Target float64 `json:"target"`
	// Verdict is VerdictMet, VerdictMissed or VerdictNoData.
	Verdict string `json:"verdict"`
}

// evaluate sets c.Ratio and c.Verdict from the figures and the target.
func (c *Comparison) evaluate() {
	c.Ratio = ratio(c.Submit, c.Raft)
	switch {
	case c.Raft <= 0 || c.Submit <= 0:
		c.Verdict = VerdictNoData
	case c.LowerIsBetter && c.Ratio <= c.Target, !c.LowerIsBetter && c.Ratio >= c.Target:
		c.Verdict = VerdictMet
	default:
		c.Verdict = VerdictMissed
	}
}

// compare returns the comparison of scenario s from the runs of both
// sides (either may be nil when it did not run).
func compare(s Scenario, raft, submit *RunResult) Comparison {
	c := Comparison{
		Scenario:      s.Name(),
		Nodes:         s.Nodes,
		Metric:        s.Metric,
		Unit:          metricUnit(s.Metric),
		LowerIsBetter: s.Metric == MetricP50,
		Target:        s.Target,
	}
	if raft != nil {
		c.Raft = raft.metric(s.Metric)
	}
	if submit != nil {
		c.Submit = submit.metric(s.Metric)
	}
	c.evaluate()
	return c
}

// metricUnit returns the unit of a metric's figure.
func metricUnit(m string) string {
	if m == MetricP50 {
		return "ms"
	}
	return m
}

// Passed reports whether every scenario met its target.
func (r *Results) Passed() bool {
	for _, c := range r.Comparisons {
		if c.Verdict != VerdictMet {
			return false
		}
	}
	return true
}

// Run returns the result of side in the scenario named name on a cluster
// of nodes, or nil.
func (r *Results) Run(name string, nodes int, side string) *RunResult {
	for i := range r.Runs {
		if x := &r.Runs[i]; x.Scenario == name && x.Nodes == nodes && x.Side == side {
			return x
		}
	}
	return nil
}

// WriteMarkdown writes r as a description of the machine and disk, then a
// markdown table with two rows per scenario: the yardstick's figures, then
// ours with the ratio, the target and the verdict.
func (r *Results) WriteMarkdown(w io.Writer) error {
	bw := bufio.NewWriter(w)
	m := r.Machine
	cpu := fmt.Sprintf("%d CPUs", m.CPUs)
	if m.CPUModel != "" {
		cpu += " (" + m.CPUModel + ")"
	}
	if m.GOMAXPROCS != m.CPUs {
		cpu += fmt.Sprintf(", GOMAXPROCS %d", m.GOMAXPROCS)
	}
	fmt.Fprintf(bw, "Replication benchmark, %s: %s, kernel %s, %s; 1-minute load average %s before, %s after.\n\n",
		r.Time.Format(time.RFC3339), cpu, orUnknown(m.Kernel), m.GoVersion, load(m.LoadBefore), load(m.LoadAfter))
	d := r.Disk
	fs := ""
	if d.FSType != "" {
		fs = fmt.Sprintf(" (%s on %s)", d.FSType, d.Device)
	}
	fmt.Fprintf(bw, "Disk: %s%s: 4 KiB append + fsync p50 %s, p99 %s, mean %s over %d samples. "+
		"Every Raft log write of either side costs at least one such fsync.\n\n",
		d.Dir, fs, ms(d.Fsync.P50), ms(d.Fsync.P99), ms(d.Fsync.Mean), d.Fsync.Samples)
	raftName := "hashicorp/raft"
	if r.RaftVersion != "" {
		raftName += " " + r.RaftVersion
	}
	fmt.Fprintf(bw, "Yardstick (raft): %s Apply, raft-boltdb with fsync, TCP on 127.0.0.1, each writer waiting for its future. "+
		"Ours (submit): the intermediate cluster, client Submit of one batch, writers spread over 4 volumes. "+
		"Every run: a fresh cluster, %v warm-up, %v measured. MB = 10^6 bytes; entries/fsync and batches/entry are the leader's.\n\n",
		raftName, r.Warmup, r.Duration)
	fmt.Fprintln(bw, "| scenario | nodes | side | ops/s | MB/s | p50 ms | p99 ms | entries/fsync | batches/entry | ratio | target | verdict |")
	fmt.Fprintln(bw, "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
	for _, c := range r.Comparisons {
		raft, submit := r.Run(c.Scenario, c.Nodes, SideRaft), r.Run(c.Scenario, c.Nodes, SideSubmit)
		fmt.Fprintf(bw, "| %s | %d | raft Apply | %s | | | |\n", c.Scenario, c.Nodes, runCells(raft))
		ratioCell := "—"
		if c.Raft > 0 {
			ratioCell = fmt.Sprintf("%s %.2f", c.Metric, c.Ratio)
		}
		op := "≥"
		if c.LowerIsBetter {
			op = "≤"
		}
		verdict := c.Verdict
		if verdict == VerdictMissed {
			verdict = "**MISSED**"
		}
		fmt.Fprintf(bw, "| %s | %d | Submit | %s | %s | %s %s %.1f× | %s |\n",
			c.Scenario, c.Nodes, runCells(submit), ratioCell, c.Metric, op, c.Target, verdict)
	}
	return bw.Flush()
}

// runCells returns the figure cells of a table row for r: ops/s, MB/s,
// p50, p99, entries/fsync, batches/entry.
func runCells(r *RunResult) string {
	if r == nil {
		return "— | — | — | — | — | —"
	}
	batches := "—"
	if r.Side == SideSubmit {
		batches = benchutil.Number(r.BatchesPerEntry)
	}
	return strings.Join([]string{
		benchutil.Number(r.OpsPerSec), benchutil.Number(r.MBPerSec), benchutil.Number(millis(r.Latency.P50)), benchutil.Number(millis(r.Latency.P99)),
		benchutil.Number(r.EntriesPerFsync), batches,
	}, " | ")
}

// millis returns d in milliseconds.
func millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// ms formats d in milliseconds.
func ms(d time.Duration) string { return benchutil.Number(millis(d)) + " ms" }

// load formats a load average, negative meaning unknown.
func load(v float64) string {
	if v < 0 {
		return "unknown"
	}
	return fmt.Sprintf("%.2f", v)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}
