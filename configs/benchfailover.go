package configs

// Defaults of `tricopy bench failover`.
const (
	// DefaultBenchFailoverSize is the size of each volume.
	DefaultBenchFailoverSize = 1 * GiB
	// DefaultBenchFailoverBacklog is the backlog staged on each secondary.
	DefaultBenchFailoverBacklog = 100 * MiB
)

// BenchFailover is the configuration of `tricopy bench failover`.
type BenchFailover struct {
	// Dir is the scratch directory, on the disk to measure.
	Dir string `key:"dir" meta:"DIR" help:"scratch directory on the disk to measure: volumes, the Raft log, the staging stores and mountpoints go there; required (its contents are created and removed)"`
	// Volumes is the number of volumes.
	Volumes uint64 `key:"volumes" meta:"N" help:"number of volumes, each with a primary and a secondary (1 to 8)"`
	// Size is the size of each volume.
	Size Size `key:"size" help:"size of each volume"`
	// Backlog is what each secondary has staged and not applied at the disaster.
	Backlog Size `key:"backlog" help:"bytes written on each primary while its secondary stages but does not apply (at most half the size)"`
	// JSON names a file for the raw results.
	JSON string `key:"json" meta:"FILE" help:"also write the raw results as JSON to FILE"`
	// Report names a directory for a report with plots; empty for none.
	Report string `key:"report" meta:"DIR" help:"also write a report to DIR (created if missing): README.md with the tables and the machine they ran on, and PNG plots of the latency distributions"`
	// Strict makes a missed target an error (exit 1).
	Strict bool `key:"strict" help:"exit 1 when the performance target is missed"`
	// Common holds the keys every command has.
	Common
}

// DefaultBenchFailover returns the defaults of `tricopy bench failover`.
func DefaultBenchFailover() BenchFailover {
	return BenchFailover{Volumes: 2, Size: DefaultBenchFailoverSize, Backlog: DefaultBenchFailoverBacklog, Common: DefaultCommon()}
}

// Validate implements Config.
func (c *BenchFailover) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	switch {
	case c.Dir == "":
		return Required("dir")
	case c.Volumes < 1 || c.Volumes > 8:
		return Invalid("volumes", "%d is not between 1 and 8", c.Volumes)
	case c.Size < 16*MiB:
		return Invalid("size", "%s is below 16MiB", c.Size)
	case c.Backlog < MiB || c.Backlog > c.Size/2:
		return Invalid("backlog", "%s is not between 1MiB and half the size (%s)", c.Backlog, c.Size/2)
	}
	return nil
}

var _ Config = (*BenchFailover)(nil)
