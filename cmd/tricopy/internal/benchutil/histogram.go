package benchutil

import (
	"math"
	"slices"
	"time"
)

// binsPerE is the number of histogram bins per factor e of duration: a
// bin is 2% wide, fine enough to draw a distribution's shape and read its
// percentiles to about 1%.
const binsPerE = 50

// Histogram is a distribution of durations, kept for the plots of a
// report: every sample is rounded to the nearest of a geometric series of
// values 2% apart, and a bin counts the samples rounded to its value.
// Table figures (p50, p99) are computed from the exact samples, not from
// it.
type Histogram struct {
	// Bins are in increasing order of Value, without empty bins.
	Bins []Bin `json:"bins,omitempty"`
}

// Bin is one value of a Histogram and its count.
type Bin struct {
	Value time.Duration `json:"ns"`
	Count int64         `json:"n"`
}

// binValue returns the value of the bin of d: 0 for d <= 0.
func binValue(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	k := math.Round(math.Log(float64(d)) * binsPerE)
	return time.Duration(math.Round(math.Exp(k / binsPerE)))
}

// NewHistogram returns the histogram of samples.
func NewHistogram(samples []time.Duration) Histogram {
	counts := make(map[time.Duration]int64)
	for _, d := range samples {
		counts[d]++
	}
	return HistogramOfCounts(counts)
}

// HistogramOfCounts returns the histogram of counts[d] samples of each
// duration d, such as a latency histogram of fio's.
func HistogramOfCounts(counts map[time.Duration]int64) Histogram {
	bins := make(map[time.Duration]int64)
	for d, n := range counts {
		if n > 0 {
			bins[binValue(d)] += n
		}
	}
	var h Histogram
	for v, n := range bins {
		h.Bins = append(h.Bins, Bin{Value: v, Count: n})
	}
	slices.SortFunc(h.Bins, func(a, b Bin) int { return int(a.Value - b.Value) })
	return h
}

// Count returns the number of samples.
func (h Histogram) Count() int64 {
	var n int64
	for _, b := range h.Bins {
		n += b.Count
	}
	return n
}

// Quantile returns the value of the bin holding the q-quantile (0 < q <=
// 1) by the nearest-rank method, or 0 for an empty histogram.
func (h Histogram) Quantile(q float64) time.Duration {
	total := h.Count()
	if total == 0 {
		return 0
	}
	rank := min(max(int64(math.Ceil(q*float64(total))), 1), total)
	var seen int64
	for _, b := range h.Bins {
		if seen += b.Count; seen >= rank {
			return b.Value
		}
	}
	return h.Bins[len(h.Bins)-1].Value
}
