package configs

// BenchFSCommand is the configuration of `tricopy bench fs`: the keys of
// BenchFS and the report key every benchmark has.
type BenchFSCommand struct {
	BenchFS
	// Report names a directory for a report with plots; empty for none.
	Report string `key:"report" meta:"DIR" help:"also write a report to DIR (created if missing): README.md with the tables and the machine they ran on, and PNG plots of the latency distributions"`
}

// DefaultBenchFSCommand returns the defaults of `tricopy bench fs`.
func DefaultBenchFSCommand() BenchFSCommand {
	return BenchFSCommand{BenchFS: DefaultBenchFS()}
}

// Validate implements Config.
func (c *BenchFSCommand) Validate() error { return c.BenchFS.Validate() }

var _ Config = (*BenchFSCommand)(nil)
