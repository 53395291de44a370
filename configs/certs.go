package configs

import (
	"strings"
	"time"
)

// Defaults of `tricopy certs`.
const (
	// DefaultCertValidity is how long the certificates certs issues are valid.
	DefaultCertValidity = 365 * 24 * time.Hour
	// DefaultCAValidity is how long a CA certs makes is valid.
	DefaultCAValidity = 10 * 365 * 24 * time.Hour
)

// Certs is the configuration of `tricopy certs`.
type Certs struct {
	// Dir receives the CA and the certificates.
	Dir string `key:"dir" meta:"DIR" help:"directory for ca.pem, ca.key and the certificates (created if missing; an existing CA there is used, not replaced); required"`
	// Nodes are the intermediate node IDs to make certificates for.
	Nodes []string `key:"nodes" meta:"IDS" help:"intermediate node IDs: one certificate intermediate-ID.pem each (used when --issue is not given)"`
	// Volumes are the volumes of the primary and secondary certificates.
	Volumes []string `key:"volumes" meta:"NAMES" help:"volumes named by primary.pem and secondary.pem (used when --issue is not given)"`
	// Issue lists certificates to make instead of the default set.
	Issue []string `key:"issue" meta:"NAME=GRANT+GRANT,..." help:"certificates to make instead of the default set: NAME.pem and NAME.key for each NAME=GRANTS entry, the grants joined by '+', like pri1=primary/a+primary/b,far1=secondary/a+primary/a,ops=admin/ops"`
	// Validity is how long each certificate is valid.
	Validity time.Duration `key:"validity" meta:"DURATION" help:"how long each certificate is valid"`
	// CAValidity is how long a new CA is valid.
	CAValidity time.Duration `key:"ca-validity" meta:"DURATION" help:"how long a new CA is valid"`
	// Renew replaces certificates that exist.
	Renew bool `key:"renew" help:"replace certificates that exist (new keys, same CA); without it an existing certificate is an error"`
	// Common holds the keys every command has.
	Common
}

// DefaultCerts returns the defaults of `tricopy certs`: the certificates of
// the local deployment.
func DefaultCerts() Certs {
	return Certs{Common: DefaultCommon(), Nodes: []string{"i1"}, Volumes: DefaultUpVolumes(),
		Validity: DefaultCertValidity, CAValidity: DefaultCAValidity}
}

// Validate implements Config.
func (c *Certs) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if c.Dir == "" {
		return Required("dir")
	}
	for _, n := range c.Nodes {
		if err := validateName("nodes", n); err != nil {
			return err
		}
	}
	for _, v := range c.Volumes {
		if err := validateName("volumes", v); err != nil {
			return err
		}
	}
	seen := map[string]bool{}
	for _, e := range c.Issue {
		name, grants, ok := strings.Cut(e, "=")
		if !ok || grants == "" {
			return Invalid("issue", "entry %q: want NAME=GRANT+GRANT (like pri1=primary/a+primary/b)", e)
		}
		if err := validateName("issue", name); err != nil {
			return err
		}
		if name == "ca" || seen[name] {
			return Invalid("issue", "entry %q: the name %q is taken", e, name)
		}
		seen[name] = true
	}
	switch {
	case c.Validity < time.Hour:
		return Invalid("validity", "%v is below the minimum of 1h", c.Validity)
	case c.CAValidity < c.Validity:
		return Invalid("ca-validity", "%v is below --validity %v", c.CAValidity, c.Validity)
	}
	return nil
}

var _ Config = (*Certs)(nil)
