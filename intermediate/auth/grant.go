package auth

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Role is the kind of permission a Grant gives.
type Role string

// The roles of a grant.
const (
	// RolePrimary may Submit for its volume (and read it back).
	RolePrimary Role = "primary"
	// RoleSecondary may fetch, coordinate and read its volume as a secondary.
	RoleSecondary Role = "secondary"
	// RoleIntermediate is an intermediate node: it may use the Raft
	// transport and join itself to the cluster.
	RoleIntermediate Role = "intermediate"
	// RoleAdmin is an operator: promote, failback, join and remove nodes.
	RoleAdmin Role = "admin"
)

// Roles lists every role, in the order of the documentation.
var Roles = []Role{RolePrimary, RoleSecondary, RoleIntermediate, RoleAdmin}

// Valid reports whether r is one of the roles in Roles.
func (r Role) Valid() bool {
	switch r {
	case RolePrimary, RoleSecondary, RoleIntermediate, RoleAdmin:
		return true
	}
	return false
}

// Scheme is the URI scheme of a grant in a certificate.
const Scheme = "tricopy"

// MaxName is the length limit of the name of a grant (a volume name or a
// node id), in bytes.
const MaxName = 64

// ErrBadGrant is wrapped by the errors of ParseGrant, IdentityOf and
// CA.Issue for a malformed grant or tricopy:// URI.
var ErrBadGrant = errors.New("bad grant")

// Grant is one permission a certificate carries.
type Grant struct {
	// Role is what the grant allows.
	Role Role
	// Name is what it allows it for: a volume for RolePrimary and
	// RoleSecondary, a node id for RoleIntermediate, an operator's name for
	// RoleAdmin.
	Name string
}

// String returns the CLI form of g, ROLE/NAME, e.g. "primary/a".
func (g Grant) String() string {
	return string(g.Role) + "/" + g.Name
}

// URI returns the form of g in a certificate, tricopy://ROLE/NAME, e.g.
// tricopy://primary/a.
func (g Grant) URI() *url.URL {
	return &url.URL{Scheme: Scheme, Host: string(g.Role), Path: "/" + g.Name}
}

// Check returns nil when g has a known role and a valid name, and else an
// error wrapping ErrBadGrant.
func (g Grant) Check() error {
	if err := checkRole(g.Role); err != nil {
		return fmt.Errorf("%w %q: %w", ErrBadGrant, g.String(), err)
	}
	if err := CheckName(g.Name); err != nil {
		return fmt.Errorf("%w %q: %w", ErrBadGrant, g.String(), err)
	}
	return nil
}

// ParseGrant parses a grant in its CLI form, "primary/a", or in its URI
// form, "tricopy://primary/a". The error wraps ErrBadGrant.
func ParseGrant(s string) (Grant, error) {
	if !strings.Contains(s, ":") {
		// Neither a role nor a name holds a ':', so this can only be the
		// CLI form.
		role, name, ok := strings.Cut(s, "/")
		if !ok {
			return Grant{}, fmt.Errorf("%w %q: want ROLE/NAME or %s://ROLE/NAME", ErrBadGrant, s, Scheme)
		}
		g := Grant{Role: Role(role), Name: name}
		if err := checkRole(g.Role); err != nil {
			return Grant{}, fmt.Errorf("%w %q: %w", ErrBadGrant, s, err)
		}
		if err := CheckName(name); err != nil {
			return Grant{}, fmt.Errorf("%w %q: %w", ErrBadGrant, s, err)
		}
		return g, nil
	}
	// The raw text is checked as well as the parsed URL: url.Parse decodes
	// escapes and drops an empty fragment, which the canonical form of a
	// grant never holds.
	if i := strings.IndexAny(s, "%?#"); i >= 0 {
		return Grant{}, fmt.Errorf("%w %q: unexpected %q; want %s://ROLE/NAME", ErrBadGrant, s, s[i], Scheme)
	}
	u, err := url.Parse(s)
	if err != nil {
		return Grant{}, fmt.Errorf("%w %q: %w", ErrBadGrant, s, err)
	}
	if u.Scheme != Scheme {
		return Grant{}, fmt.Errorf("%w %q: scheme is not %s://", ErrBadGrant, s, Scheme)
	}
	return grantOfURI(u, s)
}

// grantOfURI returns the grant of u, whose scheme is Scheme; raw is how the
// errors name u.
func grantOfURI(u *url.URL, raw string) (Grant, error) {
	fail := func(format string, args ...any) (Grant, error) {
		return Grant{}, fmt.Errorf("%w %q: %s", ErrBadGrant, raw, fmt.Sprintf(format, args...))
	}
	switch {
	case u.Opaque != "":
		return fail("want %s://ROLE/NAME", Scheme)
	case u.User != nil:
		return fail("has user info")
	case u.Port() != "":
		return fail("has a port")
	case u.RawQuery != "" || u.ForceQuery:
		return fail("has a query")
	case u.Fragment != "" || u.RawFragment != "":
		return fail("has a fragment")
	case u.RawPath != "":
		return fail("has an escaped path")
	}
	role := Role(u.Host)
	if err := checkRole(role); err != nil {
		return fail("%v", err)
	}
	name, ok := strings.CutPrefix(u.Path, "/")
	if !ok {
		return fail("no name")
	}
	if strings.Contains(name, "/") {
		return fail("extra path segments")
	}
	if err := CheckName(name); err != nil {
		return fail("%v", err)
	}
	return Grant{Role: role, Name: name}, nil
}

func checkRole(r Role) error {
	if r == "" {
		return errors.New("empty role")
	}
	if !r.Valid() {
		return fmt.Errorf("unknown role %q; roles are primary, secondary, intermediate, admin", string(r))
	}
	return nil
}

// CheckName returns nil when name may be the name of a grant, a volume name
// or a node id: 1 to MaxName characters of [A-Za-z0-9._-], not starting with
// '.' or '-'.
func CheckName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case len(name) > MaxName:
		return fmt.Errorf("name of %d bytes, longer than %d", len(name), MaxName)
	case name[0] == '.' || name[0] == '-':
		return fmt.Errorf("name %q starts with %q", name, name[0])
	}
	for i := 0; i < len(name); i++ {
		if !nameByte(name[i]) {
			return fmt.Errorf("name %q has byte %q at offset %d; allowed are A-Z a-z 0-9 . _ -", name, name[i], i)
		}
	}
	return nil
}

func nameByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	case c == '.', c == '_', c == '-':
		return true
	}
	return false
}
