package configs

import "time"

// Defaults of `tricopy up`.
const (
	// DefaultUpSize is the size of each volume up creates on first use.
	DefaultUpSize = 1 * GiB
	// DefaultUpListen is the client address of up's intermediate node.
	DefaultUpListen = "127.0.0.1:7100"
	// DefaultUpRaft is the Raft address of up's intermediate node.
	DefaultUpRaft = "127.0.0.1:7200"
	// DefaultUpSecondaryListen is the admin address of up's first
	// secondary; the others take the next ports.
	DefaultUpSecondaryListen = "127.0.0.1:7300"
)

// DefaultUpVolumes returns the volumes up mounts by default: a and b.
func DefaultUpVolumes() []string { return []string{"a", "b"} }

// Up is the configuration of `tricopy up`, the local deployment: one
// intermediate node and the primaries of one group, all under Dir.
type Up struct {
	// Dir is the base directory of the deployment: DIR/intermediate/i1,
	// DIR/data/NAME, DIR/primary/NAME, and with Secondaries
	// DIR/secondary-data/NAME and DIR/secondary/NAME.
	Dir string `key:"dir" meta:"DIR" help:"base directory: the intermediate node's state in DIR/intermediate/i1, each volume in DIR/data/NAME, mounted at DIR/primary/NAME (all created if missing); required"`
	// Volumes names the primary volumes.
	Volumes []string `key:"volumes" meta:"NAMES" help:"comma-separated names of the primary volumes to mount (letters, digits, '.', '_', '-'), each created and formatted on first use"`
	// Group is the consistency group of the volumes, which the intermediate
	// node serves.
	Group string `key:"group" meta:"G" help:"consistency group of the volumes, served by the intermediate node"`
	// Size is the size of each volume created on first use.
	Size Size `key:"size" help:"size of each volume created on first use, like 256MiB or 1GiB (rounded down to 4KiB blocks; at least 1MiB); ignored for volumes that exist"`
	// Fence is the fence level of every primary: data or never.
	Fence string `key:"fence" oneof:"data,never" help:"when a write cannot be committed at the intermediate within --fence-timeout: data fails it (EIO) and refuses writes until the intermediate is back; never suspends mirroring, goes on locally and marks the primary bitmap"`
	// FenceTimeout bounds the wait for a batch's commit at the intermediate.
	FenceTimeout time.Duration `key:"fence-timeout" meta:"DURATION" help:"how long a write may wait for its commit at the intermediate before the fence level applies"`
	// Listen is the intermediate node's client (gRPC) address.
	Listen string `key:"listen" meta:"ADDR" help:"host:port the intermediate node serves the primaries and tricopy status on"`
	// Raft is the intermediate node's Raft transport address.
	Raft string `key:"raft" meta:"ADDR" help:"host:port of the intermediate node's Raft transport"`
	// Secondaries starts a secondary of every volume.
	Secondaries bool `key:"secondaries" help:"also run a secondary of every volume: its replica in DIR/secondary-data/NAME, mounted read-only at DIR/secondary/NAME"`
	// SecondaryListen is the admin address of the first secondary.
	SecondaryListen string `key:"secondary-listen" meta:"ADDR" help:"host:port of the first secondary's admin API; the secondary of the i-th volume listens on the port i higher"`
	// TLS puts TLS on every link of the deployment, with certificates
	// made in DIR/certs.
	TLS bool `key:"tls" help:"use TLS 1.3 with client certificates on every link: on first use a CA and a certificate per part (intermediate-i1, primary-NAME, secondary-NAME, admin) are made in DIR/certs, as tricopy certs does; tricopy status needs --tls-cert DIR/certs/admin.pem --tls-key DIR/certs/admin.key --tls-ca DIR/certs/ca.pem"`
	// Metrics is the address of the Prometheus metrics server of the whole
	// deployment; empty: none.
	Metrics string `key:"metrics" meta:"ADDR" help:"serve Prometheus metrics (tricopy_*) of the whole deployment (intermediate node, primaries, secondaries) at http://ADDR/metrics; empty: none"`
	// Common holds the keys every command has.
	Common
}

// DefaultUp returns the defaults of `tricopy up`.
func DefaultUp() Up {
	return Up{Common: DefaultCommon(), Volumes: DefaultUpVolumes(), Group: DefaultGroup, Size: DefaultUpSize,
		Fence: DefaultFence, FenceTimeout: DefaultFenceTimeout, Listen: DefaultUpListen, Raft: DefaultUpRaft,
		Secondaries: true, SecondaryListen: DefaultUpSecondaryListen, TLS: true}
}

// Validate implements Config.
func (c *Up) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if c.Dir == "" {
		return Required("dir")
	}
	if len(c.Volumes) == 0 {
		return Required("volumes")
	}
	seen := map[string]bool{}
	for _, v := range c.Volumes {
		if err := validateName("volumes", v); err != nil {
			return err
		}
		if seen[v] {
			return Invalid("volumes", "volume %q listed twice", v)
		}
		seen[v] = true
	}
	if err := validateName("group", c.Group); err != nil {
		return err
	}
	if c.Size == 0 {
		return Required("size")
	}
	if err := validateVolumeSize("size", c.Size); err != nil {
		return err
	}
	if c.FenceTimeout < MinFenceTimeout {
		return Invalid("fence-timeout", "%v is below the minimum of %v", c.FenceTimeout, MinFenceTimeout)
	}
	if c.Listen == "" {
		return Required("listen")
	}
	if err := validateAddr("listen", c.Listen); err != nil {
		return err
	}
	if c.Raft == "" {
		return Required("raft")
	}
	if err := validateAddr("raft", c.Raft); err != nil {
		return err
	}
	if c.Raft == c.Listen {
		return Invalid("raft", "%s is also the listen address: the Raft transport needs a port of its own", c.Raft)
	}
	others := map[string]string{"listen": c.Listen, "raft": c.Raft}
	if c.Secondaries {
		if err := validateAddr("secondary-listen", c.SecondaryListen); err != nil {
			return err
		}
		others["secondary-listen"] = c.SecondaryListen
	}
	return validateMetrics(c.Metrics, others)
}

var _ Config = (*Up)(nil)
