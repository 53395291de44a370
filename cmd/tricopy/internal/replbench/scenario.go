package replbench

import "fmt"

// blockSize is the size of one block of a Submit batch.
const blockSize = 4096

// Targets of the scenarios: ratios ours/yardstick measured in the same run.
const (
	// TargetSingleWriterP50 bounds Submit's p50 latency with one writer of
	// 4 KiB, relative to raft Apply's.
	TargetSingleWriterP50 = 1.2
	// TargetManyWritersOps is the least Submit's ops/s with 64 writers of
	// 4 KiB, relative to raft Apply's: group commit must pay off.
	TargetManyWritersOps = 1.5
	// TargetLargeMBps is the least Submit's MB/s with 128 KiB writes,
	// relative to raft Apply's.
	TargetLargeMBps = 0.8
)

// manyWriters is the writer count of the many-writers 4 KiB scenario.
const manyWriters = 64

// largeBlocks is the block count of a write of the large scenario (128 KiB).
const largeBlocks = 32

// Scenario is one workload on one cluster size, run on both sides.
type Scenario struct {
	// Nodes is the cluster size.
	Nodes int `json:"nodes"`
	// Blocks is the number of 4 KiB blocks of one write (one Submit batch,
	// or one Raft entry of Blocks*4 KiB for the yardstick).
	Blocks int `json:"blocks"`
	// Writers is the number of concurrent writers, each waiting for the
	// acknowledgement of its write before the next.
	Writers int `json:"writers"`
	// Metric is the figure the target is held on; Target the ratio
	// ours/yardstick to reach (at most Target for MetricP50, else at
	// least).
	Metric string  `json:"metric"`
	Target float64 `json:"target"`
}

// WriteBytes returns the payload of one write.
func (s Scenario) WriteBytes() int { return s.Blocks * blockSize }

// Name returns the workload's name, without the cluster size: "4 KiB × 1
// writer", "128 KiB × 8 writers".
func (s Scenario) Name() string {
	w := "writers"
	if s.Writers == 1 {
		w = "writer"
	}
	return fmt.Sprintf("%d KiB × %d %s", s.WriteBytes()>>10, s.Writers, w)
}

// String returns the name with the cluster size.
func (s Scenario) String() string {
	n := "nodes"
	if s.Nodes == 1 {
		n = "node"
	}
	return fmt.Sprintf("%s, %d %s", s.Name(), s.Nodes, n)
}

// scenarios returns the scenarios of a run, for each cluster size in
// order: 4 KiB with one writer, 4 KiB with 64 writers, 128 KiB with
// largeWriters writers.
func scenarios(nodes []int, largeWriters int) []Scenario {
	var out []Scenario
	for _, n := range nodes {
		out = append(out,
			Scenario{Nodes: n, Blocks: 1, Writers: 1, Metric: MetricP50, Target: TargetSingleWriterP50},
			Scenario{Nodes: n, Blocks: 1, Writers: manyWriters, Metric: MetricOpsPerSec, Target: TargetManyWritersOps},
			Scenario{Nodes: n, Blocks: largeBlocks, Writers: largeWriters, Metric: MetricMBPerSec, Target: TargetLargeMBps},
		)
	}
	return out
}
