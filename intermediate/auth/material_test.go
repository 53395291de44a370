package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestLoad(t *testing.T) {
	ca := newTestCA(t, "ca", nil, 0)
	grants := []Grant{{RoleSecondary, "a"}, {RolePrimary, "a"}}
	c, k := issue(t, ca, "dr-host", grants...)
	f := writeFiles(t, c, k, bundle(ca))
	m, err := Load(f, nil)
	if err != nil {
		t.Fatal(err)
	}
	id := m.Identity()
	if id.Name != "dr-host" || !slices.Equal(id.Grants, grants) {
		t.Fatalf("Identity() = %s", id)
	}
	id.Grants[0] = Grant{RoleAdmin, "x"}
	if m.Identity().HasRole(RoleAdmin) {
		t.Error("Identity() shares its grants with the caller")
	}
	if m.Files() != f {
		t.Errorf("Files() = %+v, want %+v", m.Files(), f)
	}
}

// TestLoadKeys loads keys of every supported type and encoding.
func TestLoadKeys(t *testing.T) {
	ca := newTestCA(t, "ca", nil, 0)
	ecKey, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		key    crypto.Signer
		legacy []byte // the key in its legacy encoding, or nil to keep PKCS#8
	}{
		{"ecdsa-pkcs8", ecKey, nil},
		{"ecdsa-sec1", ecKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER})},
		{"ed25519", edKey, nil},
		{"rsa-pkcs8", rsaKey, nil},
		{"rsa-pkcs1", rsaKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			uris := []*url.URL{Grant{RoleAdmin, tc.name}.URI()}
			c, k, err := ca.issue(tc.name, tc.key, time.Now().Add(-time.Minute), testValidity,
				func(c *x509.Certificate) { c.URIs = uris })
			if err != nil {
				t.Fatal(err)
			}
			if tc.legacy != nil {
				k = tc.legacy
			}
			m, err := Load(writeFiles(t, c, k, bundle(ca)), nil)
			if err != nil {
				t.Fatal(err)
			}
			if !m.Identity().Has(RoleAdmin, tc.name) {
				t.Fatalf("Identity() = %s", m.Identity())
			}
		})
	}
}

// TestLoadChain loads a certificate issued by an intermediate CA, with the
// intermediate in the certificate file and the root in the CA bundle.
func TestLoadChain(t *testing.T) {
	root := newTestCA(t, "root", nil, 1)
	inter := newTestCA(t, "inter", root, 0)
	c, k := issue(t, inter, "n1", Grant{RoleIntermediate, "n1"})
	f := writeFiles(t, append(c, inter.CertPEM()...), k, bundle(root))
	if _, err := Load(f, nil); err != nil {
		t.Fatal(err)
	}
	// Without the intermediate, the chain does not verify.
	if err := WriteFile(f.Cert, c, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(f, nil); err == nil || !strings.Contains(err.Error(), f.Cert) {
		t.Fatalf("Load without the intermediate: %v, want an error naming %s", err, f.Cert)
	}
}

func TestLoadErrors(t *testing.T) {
	ca := newTestCA(t, "ca", nil, 0)
	other := newTestCA(t, "other", nil, 0)
	g := Grant{RoleIntermediate, "n1"}
	good, goodKey := issue(t, ca, "n1", g)
	_, otherKey := issue(t, ca, "n2", g)
	withURIs := func(uris ...string) func(*x509.Certificate) {
		return func(c *x509.Certificate) {
			for _, s := range uris {
				c.URIs = append(c.URIs, mustURL(t, s))
			}
		}
	}
	issueWith := func(notBefore time.Time, validity time.Duration, edit func(*x509.Certificate)) (c, k []byte) {
		c, k, err := ca.issue("n1", nil, notBefore, validity, edit)
		if err != nil {
			t.Fatal(err)
		}
		return c, k
	}
	expired, expiredKey := issueWith(time.Now().Add(-48*time.Hour), 24*time.Hour, withURIs(g.URI().String()))
	future, futureKey := issueWith(time.Now().Add(time.Hour), 24*time.Hour, withURIs(g.URI().String()))
	badGrant, badGrantKey := issueWith(time.Now().Add(-time.Minute), testValidity,
		withURIs("tricopy://intermediate/n1", "tricopy://bogus/x"))
	serverOnly, serverOnlyKey := issueWith(time.Now().Add(-time.Minute), testValidity, func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	})
	clientOnly, clientOnlyKey := issueWith(time.Now().Add(-time.Minute), testValidity, func(c *x509.Certificate) {
		c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	})
	garbage := []byte("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")

	for _, tc := range []struct {
		name         string
		cert, key    []byte
		ca           []byte
		remove       string // "cert", "key" or "ca": delete that file
		file, detail string // the file the error must name ("cert", "key", "ca") and a fragment
	}{
		{name: "missing cert", cert: good, key: goodKey, ca: bundle(ca), remove: "cert", file: "cert", detail: "load TLS certificate"},
		{name: "missing key", cert: good, key: goodKey, ca: bundle(ca), remove: "key", file: "key", detail: "load TLS key"},
		{name: "missing ca", cert: good, key: goodKey, ca: bundle(ca), remove: "ca", file: "ca", detail: "load TLS CA bundle"},
		{name: "empty cert", cert: nil, key: goodKey, ca: bundle(ca), file: "cert", detail: "no PEM CERTIFICATE block"},
		{name: "text cert", cert: []byte("hello"), key: goodKey, ca: bundle(ca), file: "cert", detail: "no PEM CERTIFICATE block"},
		{name: "garbage cert", cert: garbage, key: goodKey, ca: bundle(ca), file: "cert", detail: "no PEM CERTIFICATE block"},
		{name: "bad DER cert", cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}), key: goodKey, ca: bundle(ca), file: "cert", detail: "parse certificate 1"},
		{name: "garbage key", cert: good, key: []byte("hello"), ca: bundle(ca), file: "key", detail: "no PEM PRIVATE KEY block"},
		{name: "bad DER key", cert: good, key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}}), ca: bundle(ca), file: "key", detail: "parse PRIVATE KEY"},
		{name: "key is a cert", cert: good, key: good, ca: bundle(ca), file: "key", detail: "no PEM PRIVATE KEY block"},
		{name: "key not matching", cert: good, key: otherKey, ca: bundle(ca), file: "key", detail: "does not match the certificate"},
		{name: "garbage ca", cert: good, key: goodKey, ca: garbage, file: "ca", detail: "no PEM CERTIFICATE block"},
		{name: "leaf in ca bundle", cert: good, key: goodKey, ca: append(bundle(ca), good...), file: "ca", detail: `certificate 2 ("n1") is not a CA`},
		{name: "another CA", cert: good, key: goodKey, ca: bundle(other), file: "cert", detail: "certificate signed by unknown authority"},
		{name: "expired", cert: expired, key: expiredKey, ca: bundle(ca), file: "cert", detail: "expired"},
		{name: "not yet valid", cert: future, key: futureKey, ca: bundle(ca), file: "cert", detail: "not yet valid"},
		{name: "bad grant", cert: badGrant, key: badGrantKey, ca: bundle(ca), file: "cert", detail: `"tricopy://bogus/x": unknown role "bogus"`},
		{name: "server auth only", cert: serverOnly, key: serverOnlyKey, ca: bundle(ca), file: "cert", detail: "as a client certificate"},
		{name: "client auth only", cert: clientOnly, key: clientOnlyKey, ca: bundle(ca), file: "cert", detail: "as a server certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := writeFiles(t, tc.cert, tc.key, tc.ca)
			paths := map[string]string{"cert": f.Cert, "key": f.Key, "ca": f.CA}
			if tc.remove != "" {
				if err := os.Remove(paths[tc.remove]); err != nil {
					t.Fatal(err)
				}
			}
			m, err := Load(f, nil)
			if err == nil {
				t.Fatalf("Load = %s, want an error", m.Identity())
			}
			want := map[string]string{"cert": "load TLS certificate", "key": "load TLS key", "ca": "load TLS CA bundle"}[tc.file]
			if prefix := want + " " + `"` + paths[tc.file] + `": `; !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("Load: %q, want it to start with %q", err, prefix)
			}
			if !strings.Contains(err.Error(), tc.detail) {
				t.Errorf("Load: %q, want it to hold %q", err, tc.detail)
			}
			if tc.remove != "" && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("Load: %v, does not wrap fs.ErrNotExist", err)
			}
		})
	}
}

func TestLoadPartial(t *testing.T) {
	if _, err := Load(Files{Cert: "c", CA: "a"}, nil); err == nil || !strings.Contains(err.Error(), "partly configured") {
		t.Errorf("Load(partial): %v", err)
	}
	if _, err := Load(Files{}, nil); err == nil {
		t.Error("Load(no files) succeeded")
	}
}

// TestRotation rewrites the files of a client and expects the next
// handshake after the reload interval to present the new certificate.
func TestRotation(t *testing.T) {
	ca := newTestCA(t, "ca", nil, 0)
	srv := newMaterial(t, ca, "n1", []Grant{{RoleIntermediate, "n1"}})
	cli := newMaterial(t, ca, "old", []Grant{{RolePrimary, "a"}})
	cli.interval = 20 * time.Millisecond

	r := handshake(t, srv.ServerConfig(), cli.ClientConfig(RoleIntermediate))
	r.wantOK(t)
	if r.srvSaw.Name != "old" {
		t.Fatalf("server saw %s, want old", r.srvSaw)
	}

	c, k := issue(t, ca, "new", Grant{RolePrimary, "b"})
	rewrite(t, cli.Files(), c, k)
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := handshake(t, srv.ServerConfig(), cli.ClientConfig(RoleIntermediate))
		r.wantOK(t)
		if r.srvSaw.Name == "new" {
			if !r.srvSaw.Has(RolePrimary, "b") || r.srvSaw.Has(RolePrimary, "a") {
				t.Fatalf("server saw %s, want primary/b only", r.srvSaw)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the client still presents %s 10s after its files were rewritten", r.srvSaw)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if id := cli.Identity(); id.Name != "new" {
		t.Errorf("Identity() = %s after the rotation", id)
	}
}

// TestRotationInterval checks that the files are not looked at before the
// reload interval has passed.
func TestRotationInterval(t *testing.T) {
	ca := newTestCA(t, "ca", nil, 0)
	srv := newMaterial(t, ca, "n1", []Grant{{RoleIntermediate, "n1"}})
	cli := newMaterial(t, ca, "old", []Grant{{RolePrimary, "a"}})
	cli.interval = time.Hour
	c, k := issue(t, ca, "new", Grant{RolePrimary, "b"})
	rewrite(t, cli.Files(), c, k)
	r := handshake(t, srv.ServerConfig(), cli.ClientConfig(RoleIntermediate))
	r.wantOK(t)
	if r.srvSaw.Name != "old" {
		t.Fatalf("server saw %s before the reload interval passed, want old", r.srvSaw)
	}
	if err := cli.Reload(); err != nil {
		t.Fatal(err)
	}
	r = handshake(t, srv.ServerConfig(), cli.ClientConfig(RoleIntermediate))
	r.wantOK(t)
	if r.srvSaw.Name != "new" {
		t.Fatalf("server saw %s after Reload, want new", r.srvSaw)
	}
}

// TestRotateCA moves a deployment from one CA to another: the bundles hold
// both CAs while certificates of both are in use, then only the new one.
func TestRotateCA(t *testing.T) {
	oldCA := newTestCA(t, "old-ca", nil, 0)
	newCA := newTestCA(t, "new-ca", nil, 0)
	srv := newMaterial(t, oldCA, "n1", []Grant{{RoleIntermediate, "n1"}})
	srv.interval = 0
	cli := newMaterial(t, newCA, "c", []Grant{{RolePrimary, "a"}}, oldCA, newCA)

	r := handshake(t, srv.ServerConfig(), cli.ClientConfig(RoleIntermediate))
	if r.srvErr == nil || !strings.Contains(r.srvErr.Error(), "unknown authority") {
		t.Fatalf("server with the old bundle accepted a client of the new CA: %v", r.srvErr)
	}

	if err := WriteFile(srv.Files().CA, bundle(oldCA, newCA), 0o644); err != nil {
		t.Fatal(err)
	}
	handshake(t, srv.ServerConfig(), cli.ClientConfig(RoleIntermediate)).wantOK(t)

	// The server moves to a certificate of the new CA and drops the old one.
	c, k := issue(t, newCA, "n1", Grant{RoleIntermediate, "n1"})
	rewrite(t, srv.Files(), c, k)
	if err := WriteFile(srv.Files().CA, bundle(newCA), 0o644); err != nil {
		t.Fatal(err)
	}
	handshake(t, srv.ServerConfig(), cli.ClientConfig(RoleIntermediate)).wantOK(t)
	if got := srv.Identity(); got.Name != "n1" {
		t.Fatalf("server identity %s", got)
	}
	old := newMaterial(t, oldCA, "legacy", []Grant{{RolePrimary, "a"}}, oldCA, newCA)
	r = handshake(t, srv.ServerConfig(), old.ClientConfig(RoleIntermediate))
	if r.srvErr == nil {
		t.Fatal("server accepted a client of the dropped CA")
	}
}

// TestReloadBroken breaks the files of a client and of a server: both keep
// their material, warn once, and pick up the files once they are fixed.
func TestReloadBroken(t *testing.T) {
	ca := newTestCA(t, "ca", nil, 0)
	var logs logBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	load := func(name string, g Grant) *Material {
		c, k := issue(t, ca, name, g)
		m, err := Load(writeFiles(t, c, k, bundle(ca)), log)
		if err != nil {
			t.Fatal(err)
		}
		m.interval = 0
		return m
	}
	srv := load("srv", Grant{RoleIntermediate, "n1"})
	cli := load("cli", Grant{RolePrimary, "a"})

	if err := WriteFile(cli.Files().Cert, []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, otherKey := issue(t, ca, "other", Grant{RoleIntermediate, "n1"})
	if err := WriteFile(srv.Files().Key, otherKey, 0o600); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		r := handshake(t, srv.ServerConfig(), cli.ClientConfig(RoleIntermediate))
		r.wantOK(t)
		if r.srvSaw.Name != "cli" || r.cliSaw.Name != "srv" {
			t.Fatalf("server saw %s, client saw %s; want the old certificates", r.srvSaw, r.cliSaw)
		}
	}
	if cli.Identity().Name != "cli" {
		t.Errorf("client Identity() = %s", cli.Identity())
	}
	if err := cli.Reload(); err == nil || !strings.Contains(err.Error(), cli.Files().Cert) {
		t.Errorf("Reload of a broken file: %v, want an error naming %s", err, cli.Files().Cert)
	}
	out := logs.String()
	if n := strings.Count(out, "level=WARN"); n != 2 {
		t.Errorf("%d warnings, want one per broken material:\n%s", n, out)
	}
	for _, want := range []string{
		"reload TLS material failed",
		`load TLS certificate \"` + cli.Files().Cert + `\"`,
		`load TLS key \"` + srv.Files().Key + `\"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("log does not hold %q:\n%s", want, out)
		}
	}

	c, k := issue(t, ca, "cli2", Grant{RolePrimary, "a"})
	rewrite(t, cli.Files(), c, k)
	c, k = issue(t, ca, "srv2", Grant{RoleIntermediate, "n1"})
	rewrite(t, srv.Files(), c, k)
	r := handshake(t, srv.ServerConfig(), cli.ClientConfig(RoleIntermediate))
	r.wantOK(t)
	if r.srvSaw.Name != "cli2" || r.cliSaw.Name != "srv2" {
		t.Fatalf("server saw %s, client saw %s after the files were fixed", r.srvSaw, r.cliSaw)
	}
	if !strings.Contains(logs.String(), "reloaded TLS material") {
		t.Errorf("no reload logged:\n%s", logs.String())
	}
}

// TestReloadRetries checks that a failed reload is retried even when the
// files do not change again: a certificate that is not yet valid becomes
// valid.
func TestReloadRetries(t *testing.T) {
	ca := newTestCA(t, "ca", nil, 0)
	cli := newMaterial(t, ca, "cli", []Grant{{RolePrimary, "a"}})
	cli.interval = 10 * time.Millisecond
	c, k, err := ca.issue("soon", nil, time.Now().Add(1500*time.Millisecond), testValidity, nil)
	if err != nil {
		t.Fatal(err)
	}
	rewrite(t, cli.Files(), c, k)
	deadline := time.Now().Add(10 * time.Second)
	for cli.Identity().Name != "soon" {
		if time.Now().After(deadline) {
			t.Fatal("the certificate was not reloaded once it became valid")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestStamps(t *testing.T) {
	dir := t.TempDir()
	f := Files{filepath.Join(dir, "c"), filepath.Join(dir, "k"), filepath.Join(dir, "a")}
	for _, p := range []string{f.Cert, f.Key, f.CA} {
		if err := WriteFile(p, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	a := statFiles(f)
	if !a.equal(statFiles(f)) {
		t.Fatal("unchanged files differ")
	}
	// The same content under a new inode is a new version.
	if err := WriteFile(f.Key, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := statFiles(f)
	if a.equal(b) {
		t.Fatal("a replaced file is unchanged")
	}
	if err := os.Remove(f.CA); err != nil {
		t.Fatal(err)
	}
	c := statFiles(f)
	if c[2] != nil || b.equal(c) || !c.equal(statFiles(f)) {
		t.Fatal("a removed file is not a version of its own")
	}
}
