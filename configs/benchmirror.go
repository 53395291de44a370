package configs

import "time"

// Defaults and limits of `tricopy bench mirror`.
const (
	// DefaultBenchMirrorRuntime bounds each fio job and is the measured
	// time of each raw Apply run.
	DefaultBenchMirrorRuntime = 10 * time.Second
	// DefaultBenchMirrorSeqSize is the file size of the sequential job.
	DefaultBenchMirrorSeqSize = 256 * MiB
	// MinBenchMirrorRuntime is the shortest accepted runtime.
	MinBenchMirrorRuntime = time.Second
)

// BenchMirror is the configuration of `tricopy bench mirror`.
type BenchMirror struct {
	// Dir is the scratch directory, on the disk to measure.
	Dir string `key:"dir" meta:"DIR" help:"scratch directory on the disk to measure: volumes, Raft logs and mountpoints go there; required (its contents are created and removed)"`
	// Runtime bounds each fio job and each raw Apply run.
	Runtime time.Duration `key:"runtime" meta:"DURATION" help:"time bound of each fio job and measured time of each raw Apply run; at least 1s"`
	// SeqSize is the file size of the sequential write job.
	SeqSize Size `key:"seq-size" help:"file size of the sequential 1 MiB write job (at least 1MiB)"`
	// Nodes lists the intermediate cluster sizes.
	Nodes []string `key:"nodes" meta:"LIST" help:"comma-separated intermediate cluster sizes to mirror to, like 1,3"`
	// JSON names a file for the raw results.
	JSON string `key:"json" meta:"FILE" help:"also write the raw results as JSON to FILE"`
	// Report names a directory for a report with plots; empty for none.
	Report string `key:"report" meta:"DIR" help:"also write a report to DIR (created if missing): README.md with the tables and the machine they ran on, and PNG plots of the latency distributions"`
	// Strict makes a missed target an error (exit 1).
	Strict bool `key:"strict" help:"exit 1 when a performance target is missed"`
	// Common holds the keys every command has.
	Common
}

// DefaultBenchMirror returns the defaults of `tricopy bench mirror`.
func DefaultBenchMirror() BenchMirror {
	return BenchMirror{Runtime: DefaultBenchMirrorRuntime, SeqSize: DefaultBenchMirrorSeqSize,
		Nodes: []string{"1", "3"}, Common: DefaultCommon()}
}

// Validate implements Config.
func (c *BenchMirror) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	switch {
	case c.Dir == "":
		return Required("dir")
	case c.Runtime < MinBenchMirrorRuntime:
		return Invalid("runtime", "%v is below the minimum of %v", c.Runtime, MinBenchMirrorRuntime)
	case c.SeqSize < MiB:
		return Invalid("seq-size", "%s is below 1MiB", c.SeqSize)
	case len(c.Nodes) == 0:
		return Required("nodes")
	}
	_, err := c.NodeCounts()
	return err
}

// NodeCounts returns the cluster sizes of the nodes key, as BenchSubmit's.
func (c *BenchMirror) NodeCounts() ([]int, error) {
	return (&BenchSubmit{Nodes: c.Nodes}).NodeCounts()
}

var _ Config = (*BenchMirror)(nil)
