package main

import (
	"crypto/tls"
	"fmt"
	"log/slog"

	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/intermediate/auth"
)

// loadTLS loads the TLS material the keys of c name, or returns nil when
// TLS is off (none of the keys set; configs refused a partial setup).
// When need is not empty, the certificate must hold one of those grants
// (a grant with an empty name: any grant of its role):
// a process refuses to start with a certificate that does not let it do
// its job, rather than be refused call after call.
func loadTLS(c *configs.TLS, log *slog.Logger, need ...auth.Grant) (*auth.Material, error) {
	if !c.TLSEnabled() {
		return nil, nil
	}
	m, err := auth.Load(auth.Files{Cert: c.TLSCert, Key: c.TLSKey, CA: c.TLSCA}, log)
	if err != nil {
		return nil, &configs.Error{Key: "tls-cert", Err: err}
	}
	if len(need) == 0 {
		return m, nil
	}
	id := m.Identity()
	for _, g := range need {
		if id.Has(g.Role, g.Name) || (g.Name == "" && id.HasRole(g.Role)) {
			return m, nil
		}
	}
	return nil, &configs.Error{Key: "tls-cert", Err: fmt.Errorf("certificate %s holds %s, but this command needs %s", c.TLSCert, id, grantList(need))}
}

// grantList is the URIs of gs joined by " or ".
func grantList(gs []auth.Grant) string {
	s := ""
	for i, g := range gs {
		if i > 0 {
			s += " or "
		}
		if g.Name == "" {
			s += "tricopy://" + string(g.Role) + "/NAME"
			continue
		}
		s += g.URI().String()
	}
	return s
}

// toIntermediate is the TLS configuration of a client of the
// intermediate, nil without TLS.
func toIntermediate(m *auth.Material) *tls.Config {
	if m == nil {
		return nil
	}
	return m.ClientConfig(auth.RoleIntermediate)
}
