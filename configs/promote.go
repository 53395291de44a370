package configs

import "time"

// Promote is the configuration of `tricopy promote`.
type Promote struct {
	// Secondary is the admin address of any secondary of the group.
	Secondary string `key:"secondary" meta:"ADDR" help:"admin address (--listen) of any secondary of the group; it knows the others; required"`
	// Intermediate overrides the intermediate addresses the secondaries know.
	Intermediate []string `key:"intermediate" meta:"ADDRS" help:"client addresses of intermediate nodes to try (default: those the secondaries use)"`
	// IntermediateTimeout bounds the attempt to reach the intermediate.
	IntermediateTimeout time.Duration `key:"intermediate-timeout" meta:"DURATION" help:"how long to try the intermediate before promoting without it"`
	// Timeout bounds the whole promotion.
	Timeout time.Duration `key:"timeout" meta:"DURATION" help:"give up (exit 1) after this long; a promotion cut short can be run again"`
	// ExportUnapplied is a directory to write the batches the promotion
	// kept aside into.
	ExportUnapplied string `key:"export-unapplied" meta:"DIR" help:"write each volume's batches that were staged after the promote point and not applied to DIR/VOLUME.unapplied"`
	// JSON prints the result as JSON.
	JSON bool `key:"json" help:"print the result as one JSON object"`
	// TLS holds the TLS keys (all or none).
	TLS
	// Common holds the keys every command has.
	Common
}

// DefaultPromote returns the defaults of `tricopy promote`.
func DefaultPromote() Promote {
	return Promote{Common: DefaultCommon(), IntermediateTimeout: 5 * time.Second, Timeout: 5 * time.Minute}
}

// Validate implements Config.
func (c *Promote) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if c.Secondary == "" {
		return Required("secondary")
	}
	if err := validateAddr("secondary", c.Secondary); err != nil {
		return err
	}
	if len(c.Intermediate) > 0 {
		if err := validateAddrs("intermediate", c.Intermediate); err != nil {
			return err
		}
	}
	switch {
	case c.IntermediateTimeout <= 0:
		return Invalid("intermediate-timeout", "%v is not positive", c.IntermediateTimeout)
	case c.Timeout <= 0:
		return Invalid("timeout", "%v is not positive", c.Timeout)
	}
	return nil
}

var _ Config = (*Promote)(nil)
