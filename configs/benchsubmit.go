package configs

import (
	"slices"
	"strconv"
	"time"
)

// Defaults and limits of `tricopy bench submit`.
const (
	// DefaultBenchSubmitDuration is the default measured time of each
	// scenario.
	DefaultBenchSubmitDuration = 5 * time.Second
	// DefaultBenchSubmitLargeWriters is the default number of writers of the
	// 128 KiB scenarios.
	DefaultBenchSubmitLargeWriters = 8
	// MinBenchSubmitDuration is the shortest accepted duration.
	MinBenchSubmitDuration = time.Second
	// MaxBenchSubmitWriters bounds large-writers.
	MaxBenchSubmitWriters = 1024
	// MaxBenchSubmitNodes is the largest cluster size the benchmark starts.
	MaxBenchSubmitNodes = 7
)

// BenchSubmit is the configuration of `tricopy bench submit`.
type BenchSubmit struct {
	// Dir is the scratch directory, on the disk to measure.
	Dir string `key:"dir" meta:"DIR" help:"scratch directory on the disk to measure; the nodes' Raft logs go there; required (its contents are created and removed)"`
	// Duration is the measured time of each scenario, after its warm-up.
	Duration time.Duration `key:"duration" meta:"DURATION" help:"measured time of each scenario and side, after a short warm-up; at least 1s"`
	// LargeWriters is the number of writers of the 128 KiB scenarios.
	LargeWriters uint64 `key:"large-writers" meta:"N" help:"number of concurrent writers of the 128 KiB scenarios"`
	// Nodes lists the cluster sizes to run every scenario on.
	Nodes []string `key:"nodes" meta:"LIST" help:"comma-separated cluster sizes to run every scenario on, like 1,3"`
	// JSON names a file for the raw results.
	JSON string `key:"json" meta:"FILE" help:"also write the raw results as JSON to FILE"`
	// Report names a directory for a report with plots; empty for none.
	Report string `key:"report" meta:"DIR" help:"also write a report to DIR (created if missing): README.md with the tables and the machine they ran on, and PNG plots of the latency distributions"`
	// Strict makes a missed target an error (exit 1).
	Strict bool `key:"strict" help:"exit 1 when a performance target is missed"`
	// Common holds the keys every command has.
	Common
}

// DefaultBenchSubmit returns the defaults of `tricopy bench submit`.
func DefaultBenchSubmit() BenchSubmit {
	return BenchSubmit{
		Duration:     DefaultBenchSubmitDuration,
		LargeWriters: DefaultBenchSubmitLargeWriters,
		Nodes:        []string{"1", "3"},
		Common:       DefaultCommon(),
	}
}

// Validate implements Config.
func (c *BenchSubmit) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	switch {
	case c.Dir == "":
		return Required("dir")
	case c.Duration < MinBenchSubmitDuration:
		return Invalid("duration", "%v is below the minimum of %v", c.Duration, MinBenchSubmitDuration)
	case c.LargeWriters == 0 || c.LargeWriters > MaxBenchSubmitWriters:
		return Invalid("large-writers", "%d is not between 1 and %d", c.LargeWriters, MaxBenchSubmitWriters)
	case len(c.Nodes) == 0:
		return Required("nodes")
	}
	_, err := c.NodeCounts()
	return err
}

// NodeCounts returns the cluster sizes of the nodes key as numbers, in the
// order given. An entry that is not a number from 1 to
// MaxBenchSubmitNodes, or is repeated, is an error naming the key.
func (c *BenchSubmit) NodeCounts() ([]int, error) {
	var out []int
	for _, s := range c.Nodes {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxBenchSubmitNodes {
			return nil, Invalid("nodes", "%q is not a cluster size from 1 to %d", s, MaxBenchSubmitNodes)
		}
		if slices.Contains(out, n) {
			return nil, Invalid("nodes", "cluster size %d listed twice", n)
		}
		out = append(out, n)
	}
	return out, nil
}

var _ Config = (*BenchSubmit)(nil)
