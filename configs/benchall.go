package configs

import (
	"fmt"
	"slices"
	"strings"
)

// BenchNames lists the benchmarks of `tricopy bench all`, in the order it
// runs them.
var BenchNames = []string{"fs", "submit", "mirror", "lag", "failover"}

// BenchAll is the configuration of `tricopy bench all`.
type BenchAll struct {
	// Dir is the scratch directory, on the disk to measure; each
	// benchmark works in a directory of its name under it.
	Dir string `key:"dir" meta:"DIR" help:"scratch directory on the disk to measure; each benchmark works in DIR/NAME; required (their contents are created and removed)"`
	// Report names a directory for the combined report; empty for none.
	Report string `key:"report" meta:"DIR" help:"write one report of every benchmark to DIR (created if missing): README.md with the tables and the machine they ran on, and PNG plots of the latency distributions"`
	// Quick runs every benchmark with small sizes and short runs.
	Quick bool `key:"quick" help:"small sizes, short runs and 1-node clusters only (a few minutes in all): a smoke run whose figures are noisier than the defaults'"`
	// Skip lists benchmarks not to run.
	Skip []string `key:"skip" meta:"LIST" help:"comma-separated benchmarks not to run: fs, submit, mirror, lag, failover"`
	// Strict makes a missed target an error (exit 1).
	Strict bool `key:"strict" help:"exit 1 when a performance target is missed"`
	// Common holds the keys every command has.
	Common
}

// DefaultBenchAll returns the defaults of `tricopy bench all`.
func DefaultBenchAll() BenchAll {
	return BenchAll{Common: DefaultCommon()}
}

// Validate implements Config.
func (c *BenchAll) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if c.Dir == "" {
		return Required("dir")
	}
	for _, s := range c.Skip {
		if !slices.Contains(BenchNames, s) {
			return Invalid("skip", "%q is not a benchmark (want some of %s)", s, strings.Join(BenchNames, ", "))
		}
	}
	if len(c.Skip) > 0 && len(c.Runs()) == 0 {
		return Invalid("skip", "%s skips every benchmark", fmt.Sprint(c.Skip))
	}
	return nil
}

// Runs returns the benchmarks to run, in order: BenchNames without Skip.
func (c *BenchAll) Runs() []string {
	var out []string
	for _, n := range BenchNames {
		if !slices.Contains(c.Skip, n) {
			out = append(out, n)
		}
	}
	return out
}

var _ Config = (*BenchAll)(nil)
