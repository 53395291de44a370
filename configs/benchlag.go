package configs

import "time"

// Defaults and limits of `tricopy bench lag`.
const (
	// DefaultBenchLagDuration is the measured time of each load level.
	DefaultBenchLagDuration = 15 * time.Second
	// DefaultBenchLagBacklog is the backlog the catch-up measurement
	// writes with the secondary down.
	DefaultBenchLagBacklog = 1 * GiB
)

// BenchLag is the configuration of `tricopy bench lag`.
type BenchLag struct {
	// Dir is the scratch directory, on the disk to measure.
	Dir string `key:"dir" meta:"DIR" help:"scratch directory on the disk to measure: volumes, the Raft log, the staging store and mountpoints go there; required (its contents are created and removed)"`
	// Duration is the measured time of each load level.
	Duration time.Duration `key:"duration" meta:"DURATION" help:"measured time of the maximum-rate run and of each load level; at least 1s"`
	// Backlog is the catch-up backlog; 0 skips the catch-up measurement.
	Backlog Size `key:"backlog" help:"bytes written with the secondary down before it catches up (0 skips the catch-up measurement)"`
	// JSON names a file for the raw results.
	JSON string `key:"json" meta:"FILE" help:"also write the raw results as JSON to FILE"`
	// Report names a directory for a report with plots; empty for none.
	Report string `key:"report" meta:"DIR" help:"also write a report to DIR (created if missing): README.md with the tables and the machine they ran on, and PNG plots of the latency distributions"`
	// Strict makes a missed target an error (exit 1).
	Strict bool `key:"strict" help:"exit 1 when a performance target is missed"`
	// Common holds the keys every command has.
	Common
}

// DefaultBenchLag returns the defaults of `tricopy bench lag`.
func DefaultBenchLag() BenchLag {
	return BenchLag{Duration: DefaultBenchLagDuration, Backlog: DefaultBenchLagBacklog, Common: DefaultCommon()}
}

// Validate implements Config.
func (c *BenchLag) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	switch {
	case c.Dir == "":
		return Required("dir")
	case c.Duration < time.Second:
		return Invalid("duration", "%v is below the minimum of 1s", c.Duration)
	case c.Backlog != 0 && c.Backlog < MiB:
		return Invalid("backlog", "%s is below 1MiB (0 skips the catch-up)", c.Backlog)
	}
	return nil
}

var _ Config = (*BenchLag)(nil)
