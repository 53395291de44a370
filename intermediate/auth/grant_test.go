package auth

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net/url"
	"slices"
	"strings"
	"testing"
)

func TestGrantRoundTrip(t *testing.T) {
	for _, role := range Roles {
		for _, name := range []string{"a", "vol-1", "Node_2.x", "a.", "9", strings.Repeat("z", MaxName)} {
			g := Grant{Role: role, Name: name}
			if err := g.Check(); err != nil {
				t.Fatalf("%v.Check: %v", g, err)
			}
			if want := string(role) + "/" + name; g.String() != want {
				t.Errorf("String() = %q, want %q", g.String(), want)
			}
			u := g.URI().String()
			if want := "tricopy://" + string(role) + "/" + name; u != want {
				t.Errorf("URI() = %q, want %q", u, want)
			}
			for _, s := range []string{g.String(), u} {
				got, err := ParseGrant(s)
				if err != nil {
					t.Errorf("ParseGrant(%q): %v", s, err)
				} else if got != g {
					t.Errorf("ParseGrant(%q) = %+v, want %+v", s, got, g)
				}
			}
		}
	}
}

func TestParseGrantRefused(t *testing.T) {
	for _, tc := range []struct {
		in, want string
	}{
		{"", "want ROLE/NAME"},
		{"primary", "want ROLE/NAME"},
		{"primary/", "empty name"},
		{"/a", "empty role"},
		{"bogus/a", `unknown role "bogus"`},
		{"Primary/a", `unknown role "Primary"`},
		{"primary/a/b", `has byte '/'`},
		{"primary/.a", `starts with '.'`},
		{"primary/-a", `starts with '-'`},
		{"primary/a b", `has byte ' '`},
		{"primary/" + strings.Repeat("a", MaxName+1), "longer than 64"},
		{"tricopy://primary", "no name"},
		{"tricopy://primary/", "empty name"},
		{"tricopy://bogus/a", `unknown role "bogus"`},
		{"tricopy:///a", "empty role"},
		{"tricopy://primary/a/b", "extra path segments"},
		{"tricopy://primary//a", "extra path segments"},
		{"tricopy://primary/a/", "extra path segments"},
		{"tricopy://primary/a?x=1", `unexpected '?'`},
		{"tricopy://primary/a?", `unexpected '?'`},
		{"tricopy://primary/a#f", `unexpected '#'`},
		{"tricopy://primary/a#", `unexpected '#'`},
		{"tricopy://primary/%61", `unexpected '%'`},
		{"tricopy://u@primary/a", "user info"},
		{"tricopy://u:p@primary/a", "user info"},
		{"tricopy://primary:80/a", "has a port"},
		{"tricopy://primary:/a", `unknown role "primary:"`},
		{"tricopy:primary/a", "want tricopy://ROLE/NAME"},
		{"https://primary/a", "scheme is not tricopy://"},
		{"tricopy://primary/.", `starts with '.'`},
		{"tricopy://primary/..", `starts with '.'`},
		{"tricopy://primary/a:b", `has byte ':'`},
	} {
		g, err := ParseGrant(tc.in)
		if err == nil {
			t.Errorf("ParseGrant(%q) = %+v, want an error", tc.in, g)
			continue
		}
		if !errors.Is(err, ErrBadGrant) {
			t.Errorf("ParseGrant(%q): %v, does not wrap ErrBadGrant", tc.in, err)
		}
		if !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), tc.in) {
			t.Errorf("ParseGrant(%q): %q, want it to hold %q and the input", tc.in, err, tc.want)
		}
	}
}

func TestParseGrantSchemeCase(t *testing.T) {
	g, err := ParseGrant("TRICOPY://admin/ops")
	if err != nil || g != (Grant{RoleAdmin, "ops"}) {
		t.Fatalf("ParseGrant = %+v, %v", g, err)
	}
}

func mustURL(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestIdentityOf(t *testing.T) {
	cert := &x509.Certificate{Subject: pkix.Name{CommonName: "dr-host"}}
	for _, s := range []string{
		"https://example.com/x", "spiffe://td/ns/a", "urn:uuid:1234",
		"tricopy://secondary/a", "tricopy://primary/a", "TRICOPY://secondary/a", "tricopy://admin/ops",
	} {
		cert.URIs = append(cert.URIs, mustURL(t, s))
	}
	id, err := IdentityOf(cert)
	if err != nil {
		t.Fatal(err)
	}
	want := []Grant{{RoleSecondary, "a"}, {RolePrimary, "a"}, {RoleAdmin, "ops"}}
	if id.Name != "dr-host" || !slices.Equal(id.Grants, want) {
		t.Fatalf("IdentityOf = %+v, want dr-host with %v", id, want)
	}
	if s := id.String(); s != `"dr-host" (secondary/a, primary/a, admin/ops)` {
		t.Errorf("String() = %s", s)
	}
	for _, c := range []struct {
		role Role
		name string
		want bool
	}{
		{RoleSecondary, "a", true}, {RolePrimary, "a", true}, {RolePrimary, "b", false},
		{RoleIntermediate, "a", false}, {RoleAdmin, "ops", true},
	} {
		if got := id.Has(c.role, c.name); got != c.want {
			t.Errorf("Has(%s, %s) = %v", c.role, c.name, got)
		}
	}
	for _, c := range []struct {
		role Role
		want bool
	}{{RolePrimary, true}, {RoleSecondary, true}, {RoleAdmin, true}, {RoleIntermediate, false}, {"", false}} {
		if got := id.HasRole(c.role); got != c.want {
			t.Errorf("HasRole(%s) = %v", c.role, got)
		}
	}

	none, err := IdentityOf(&x509.Certificate{Subject: pkix.Name{CommonName: "x"}})
	if err != nil || none.String() != `"x" (no grants)` || none.HasRole(RolePrimary) {
		t.Errorf("IdentityOf(no URIs) = %s, %v", none, err)
	}
}

func TestIdentityOfMalformed(t *testing.T) {
	for _, s := range []string{
		"tricopy://bogus/a", "tricopy://primary", "tricopy://primary/", "tricopy://primary/a/b",
		"tricopy://primary/a?x", "tricopy://primary/a?", "tricopy://primary/a#x", "tricopy://u@primary/a",
		"tricopy://primary:1/a", "tricopy://primary/%61", "tricopy:primary/a", "tricopy://primary/-a",
	} {
		cert := &x509.Certificate{
			Subject: pkix.Name{CommonName: "n"},
			URIs:    []*url.URL{mustURL(t, "tricopy://primary/ok"), mustURL(t, s)},
		}
		id, err := IdentityOf(cert)
		if err == nil {
			t.Errorf("IdentityOf(%s) = %s, want an error", s, id)
			continue
		}
		if !errors.Is(err, ErrBadGrant) || !strings.Contains(err.Error(), s) {
			t.Errorf("IdentityOf(%s): %v; want ErrBadGrant naming the URI", s, err)
		}
	}
}

func TestPeerIdentityNoCertificate(t *testing.T) {
	if _, err := PeerIdentity(tls.ConnectionState{}); !errors.Is(err, ErrNoCertificate) {
		t.Fatalf("PeerIdentity(no certificates): %v, want ErrNoCertificate", err)
	}
}

func FuzzParseGrant(f *testing.F) {
	for _, s := range []string{
		"primary/a", "secondary/vol.1", "intermediate/n-1", "admin/ops", "tricopy://primary/a",
		"TRICOPY://admin/x", "tricopy://primary/a/b", "tricopy://u@primary:1/a?q#f", "primary/",
		"/", "tricopy:", "tricopy://", "tricopy://[::1]/a", "primary/a%2F", "tricopy://primary/%2e",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		g, err := ParseGrant(s)
		if err != nil {
			if !errors.Is(err, ErrBadGrant) {
				t.Fatalf("ParseGrant(%q): %v, does not wrap ErrBadGrant", s, err)
			}
			return
		}
		if err := g.Check(); err != nil {
			t.Fatalf("ParseGrant(%q) = %+v, which fails Check: %v", s, g, err)
		}
		for _, form := range []string{g.String(), g.URI().String()} {
			back, err := ParseGrant(form)
			if err != nil || back != g {
				t.Fatalf("ParseGrant(%q) = %+v; ParseGrant(%q) = %+v, %v", s, g, form, back, err)
			}
		}
		id, err := IdentityOf(&x509.Certificate{URIs: []*url.URL{g.URI()}})
		if err != nil || !id.Has(g.Role, g.Name) {
			t.Fatalf("IdentityOf(%s) = %s, %v", g.URI(), id, err)
		}
	})
}
