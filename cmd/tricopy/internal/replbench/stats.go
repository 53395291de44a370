package replbench

import (
	"math"
	"slices"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil"
)

// Latency summarises the latencies of the operations of one run.
type Latency struct {
	// Samples is the number of operations measured.
	Samples int `json:"samples"`
	// Mean, P50, P99 and Max are over those operations.
	Mean time.Duration `json:"mean_ns"`
	P50  time.Duration `json:"p50_ns"`
	P99  time.Duration `json:"p99_ns"`
	Max  time.Duration `json:"max_ns"`
	// Hist is the distribution of those latencies, for plots.
	Hist benchutil.Histogram `json:"hist,omitzero"`
}

// summarize returns the latency summary of samples, which it sorts.
func summarize(samples []time.Duration) Latency {
	if len(samples) == 0 {
		return Latency{}
	}
	slices.Sort(samples)
	var sum time.Duration
	for _, d := range samples {
		sum += d
	}
	return Latency{
		Samples: len(samples),
		Mean:    sum / time.Duration(len(samples)),
		P50:     percentile(samples, 50),
		P99:     percentile(samples, 99),
		Max:     samples[len(samples)-1],
		Hist:    benchutil.NewHistogram(samples),
	}
}

// percentile returns the p-th percentile (0 < p <= 100) of sorted by the
// nearest-rank method: the smallest sample that at least p percent of the
// samples are less than or equal to. It returns 0 for no samples.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// perSecond returns n per second over d, or 0 when d is not positive.
func perSecond(n float64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return n / d.Seconds()
}

// ratio returns a/b, or 0 when b is 0.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}
