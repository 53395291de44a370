package auth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// ErrNoCertificate is returned by PeerIdentity when the peer presented no
// certificate.
var ErrNoCertificate = errors.New("no peer certificate")

// ErrNotAuthorized is wrapped by the handshake errors of ServerConfig and
// ClientConfig when the peer's certificate verifies but holds no grant of
// the role required of it.
var ErrNotAuthorized = errors.New("not authorized")

// Identity is who a peer certificate says it is.
type Identity struct {
	// Name is the subject common name, a display name for logs; it grants
	// nothing.
	Name string
	// Grants are the grants of the certificate, in the order of its URI
	// SANs, without duplicates.
	Grants []Grant
}

// IdentityOf returns the identity cert holds. URI SANs of a scheme other
// than tricopy:// are ignored; a malformed tricopy:// URI makes the whole
// identity invalid, and the error (wrapping ErrBadGrant) names it.
func IdentityOf(cert *x509.Certificate) (Identity, error) {
	id := Identity{Name: cert.Subject.CommonName}
	for _, u := range cert.URIs {
		// url.Parse, which crypto/x509 uses, folds the scheme to lower case.
		if u.Scheme != Scheme {
			continue
		}
		g, err := grantOfURI(u, u.String())
		if err != nil {
			return Identity{}, fmt.Errorf("certificate %q: %w", id.Name, err)
		}
		if !slices.Contains(id.Grants, g) {
			id.Grants = append(id.Grants, g)
		}
	}
	return id, nil
}

// PeerIdentity returns the identity of the peer of a connection, from its
// leaf certificate cs.PeerCertificates[0]. It fails with ErrNoCertificate
// when the peer presented none. It does not verify the certificate: the
// configurations of this package have done that during the handshake.
func PeerIdentity(cs tls.ConnectionState) (Identity, error) {
	if len(cs.PeerCertificates) == 0 {
		return Identity{}, ErrNoCertificate
	}
	return IdentityOf(cs.PeerCertificates[0])
}

// Has reports whether id holds exactly the grant role/name.
func (id Identity) Has(role Role, name string) bool {
	return slices.Contains(id.Grants, Grant{Role: role, Name: name})
}

// HasRole reports whether id holds any grant of role.
func (id Identity) HasRole(role Role) bool {
	return slices.ContainsFunc(id.Grants, func(g Grant) bool { return g.Role == role })
}

// String returns the name and grants of id for logs and errors, e.g.
// `"node1" (primary/a, secondary/b)` or `"node1" (no grants)`.
func (id Identity) String() string {
	if len(id.Grants) == 0 {
		return fmt.Sprintf("%q (no grants)", id.Name)
	}
	gs := make([]string, len(id.Grants))
	for i, g := range id.Grants {
		gs[i] = g.String()
	}
	return fmt.Sprintf("%q (%s)", id.Name, strings.Join(gs, ", "))
}

// authorize returns nil when id holds a grant of one of roles (or roles is
// empty), and else an error wrapping ErrNotAuthorized that names peer
// ("client" or "server"), id and the roles.
func authorize(peer string, id Identity, roles []Role) error {
	if len(roles) == 0 || slices.ContainsFunc(roles, id.HasRole) {
		return nil
	}
	rs := make([]string, len(roles))
	for i, r := range roles {
		rs[i] = string(r)
	}
	return fmt.Errorf("%w: %s %s holds no %s grant", ErrNotAuthorized, peer, id, strings.Join(rs, " or "))
}
