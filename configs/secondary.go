package configs

import "time"

// Secondary is the configuration of `tricopy secondary`.
type Secondary struct {
	// Volume names the volume the secondary follows.
	Volume string `key:"volume" meta:"NAME" help:"name of the volume to follow (its primary's --volume); required"`
	// Data is the secondary's data directory (replica and staging store).
	Data string `key:"data" meta:"DIR" help:"directory of the secondary's replica and staging store (created if missing); required"`
	// Mountpoint is where the replica is mounted read-only.
	Mountpoint string `key:"mountpoint" meta:"MNT" help:"directory to mount the replica on, read-only (created if missing); required"`
	// Intermediate lists intermediate client addresses.
	Intermediate []string `key:"intermediate" meta:"ADDRS" help:"comma-separated client addresses of intermediate nodes (any members); required"`
	// Listen is the secondary's admin address.
	Listen string `key:"listen" meta:"ADDR" help:"host:port the secondary's admin API listens on (GET /v1/status); the address is reported to the intermediate; required"`
	// Name names the secondary in its group.
	Name string `key:"name" meta:"ID" help:"name of the secondary, unique in its group (default: the volume name)"`
	// Group is the consistency group.
	Group string `key:"group" meta:"G" help:"consistency group of the volume"`
	// AllowOther lets other users use the mount.
	AllowOther bool `key:"allow-other" help:"let users other than the mounting one use the mount (FUSE allow_other)"`
	// DebugFUSE logs every FUSE request.
	DebugFUSE bool `key:"debug-fuse" help:"log every FUSE request and reply (very verbose)"`
	// Fence is the fence level of the volume once promoted to primary.
	Fence string `key:"fence" oneof:"data,never" help:"fence level of the volume once tricopy promote made it a primary (see tricopy mount --fence)"`
	// FenceTimeout is the fence timeout once promoted.
	FenceTimeout time.Duration `key:"fence-timeout" meta:"DURATION" help:"fence timeout of the volume once promoted (see tricopy mount --fence-timeout)"`
	// ResyncRate bounds the promoted volume's resyncs.
	ResyncRate Size `key:"resync-rate" meta:"SIZE" help:"most bytes per second the resyncs of the volume once promoted send (see tricopy mount --resync-rate); 0: unlimited"`
	// Metrics is the address of the Prometheus metrics server; empty: none.
	Metrics string `key:"metrics" meta:"ADDR" help:"serve Prometheus metrics (tricopy_*) at http://ADDR/metrics; empty: none"`
	// TLS holds the TLS keys (all or none).
	TLS
	// Common holds the keys every command has.
	Common
}

// DefaultSecondary returns the defaults of `tricopy secondary`.
func DefaultSecondary() Secondary {
	return Secondary{Common: DefaultCommon(), Group: DefaultGroup, Fence: DefaultFence, FenceTimeout: DefaultFenceTimeout}
}

// Validate implements Config.
func (c *Secondary) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if err := validateName("volume", c.Volume); err != nil {
		return err
	}
	switch {
	case c.Data == "":
		return Required("data")
	case c.Mountpoint == "":
		return Required("mountpoint")
	case c.Listen == "":
		return Required("listen")
	}
	if err := validateAddrs("intermediate", c.Intermediate); err != nil {
		return err
	}
	if err := validateAddr("listen", c.Listen); err != nil {
		return err
	}
	if c.FenceTimeout < MinFenceTimeout {
		return Invalid("fence-timeout", "%v is below the minimum of %v", c.FenceTimeout, MinFenceTimeout)
	}
	if c.Name != "" {
		if err := validateName("name", c.Name); err != nil {
			return err
		}
	}
	if err := validateMetrics(c.Metrics, map[string]string{"listen": c.Listen}); err != nil {
		return err
	}
	return validateName("group", c.Group)
}

// Wait is the configuration of `tricopy wait`.
type Wait struct {
	// Intermediate lists client addresses of the cluster.
	Intermediate []string `key:"intermediate" meta:"ADDRS" help:"comma-separated client addresses of intermediate nodes (any member will do); required"`
	// Group is the consistency group to wait for.
	Group string `key:"group" meta:"G" help:"consistency group to wait for"`
	// Timeout bounds the wait; 0 waits forever.
	Timeout time.Duration `key:"timeout" meta:"DURATION" help:"give up (exit 1) after this long; 0 waits for ever"`
	// TLS holds the TLS keys (all or none).
	TLS
	// Common holds the keys every command has.
	Common
}

// DefaultWait returns the defaults of `tricopy wait`.
func DefaultWait() Wait {
	return Wait{Common: DefaultCommon(), Group: DefaultGroup, Timeout: 5 * time.Minute}
}

// Validate implements Config.
func (c *Wait) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if err := validateAddrs("intermediate", c.Intermediate); err != nil {
		return err
	}
	if c.Timeout < 0 {
		return Invalid("timeout", "%v is negative", c.Timeout)
	}
	return validateName("group", c.Group)
}

var (
	_ Config = (*Secondary)(nil)
	_ Config = (*Wait)(nil)
)

// SecondaryRemove is the configuration of `tricopy secondary remove`.
type SecondaryRemove struct {
	// Intermediate lists client addresses of the cluster.
	Intermediate []string `key:"intermediate" meta:"ADDRS" help:"comma-separated client addresses of intermediate nodes (any member will do); required"`
	// Name is the ID of the secondary to remove.
	Name string `key:"name" meta:"ID" help:"name of the secondary to take out of the group (its --name, by default its volume); required"`
	// Group is the consistency group.
	Group string `key:"group" meta:"G" help:"consistency group of the secondary"`
	// Timeout bounds the request.
	Timeout time.Duration `key:"timeout" meta:"DURATION" help:"give up after this long"`
	// TLS holds the TLS keys (all or none).
	TLS
	// Common holds the keys every command has.
	Common
}

// DefaultSecondaryRemove returns the defaults of `tricopy secondary remove`.
func DefaultSecondaryRemove() SecondaryRemove {
	return SecondaryRemove{Common: DefaultCommon(), Group: DefaultGroup, Timeout: DefaultTimeout}
}

// Validate implements Config.
func (c *SecondaryRemove) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if err := validateAddrs("intermediate", c.Intermediate); err != nil {
		return err
	}
	if err := validateName("name", c.Name); err != nil {
		return err
	}
	return validateName("group", c.Group)
}

var _ Config = (*SecondaryRemove)(nil)

// Failback is the configuration of `tricopy failback`: a secondary whose
// replica is built from an old primary's volume.
type Failback struct {
	// From is the old primary's data directory.
	From string `key:"from" meta:"DIR" help:"data directory of the old primary of the volume (its tricopy mount --data), fenced by a promotion; it is only read; required"`
	// Secondary holds the keys of the secondary it becomes.
	Secondary
}

// DefaultFailback returns the defaults of `tricopy failback`.
func DefaultFailback() Failback {
	return Failback{Secondary: DefaultSecondary()}
}

// Validate implements Config.
func (c *Failback) Validate() error {
	if err := c.Secondary.Validate(); err != nil {
		return err
	}
	if c.From == "" {
		return Required("from")
	}
	if c.From == c.Data {
		return Invalid("from", "%s is also --data: the secondary needs a directory of its own", c.From)
	}
	return nil
}

var _ Config = (*Failback)(nil)
