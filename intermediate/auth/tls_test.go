package auth

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestHandshake(t *testing.T) {
	ca := newTestCA(t, "ca", nil, 0)
	srv := newMaterial(t, ca, "n1", []Grant{{RoleIntermediate, "n1"}})
	cli := newMaterial(t, ca, "dr-host", []Grant{{RoleSecondary, "a"}, {RolePrimary, "a"}})

	r := handshake(t, srv.ServerConfig(), cli.ClientConfig(RoleIntermediate))
	r.wantOK(t)
	if r.srvSaw.String() != `"dr-host" (secondary/a, primary/a)` {
		t.Errorf("server saw %s", r.srvSaw)
	}
	if r.cliSaw.String() != `"n1" (intermediate/n1)` {
		t.Errorf("client saw %s", r.cliSaw)
	}
}

// TestHandshakeRequiredRole: ServerConfig(RoleIntermediate) accepts only
// intermediates (the Raft transport).
func TestHandshakeRequiredRole(t *testing.T) {
	ca := newTestCA(t, "ca", nil, 0)
	srv := newMaterial(t, ca, "n1", []Grant{{RoleIntermediate, "n1"}})
	peer := newMaterial(t, ca, "n2", []Grant{{RoleAdmin, "x"}, {RoleIntermediate, "n2"}})
	handshake(t, srv.ServerConfig(RoleIntermediate), peer.ClientConfig(RoleIntermediate)).wantOK(t)

	prim := newMaterial(t, ca, "p", []Grant{{RolePrimary, "a"}})
	r := handshake(t, srv.ServerConfig(RoleIntermediate), prim.ClientConfig(RoleIntermediate))
	if !errors.Is(r.srvErr, ErrNotAuthorized) {
		t.Fatalf("server: %v, want ErrNotAuthorized", r.srvErr)
	}
	if want := `not authorized: client "p" (primary/a) holds no intermediate grant`; r.srvErr.Error() != want {
		t.Errorf("server: %q, want %q", r.srvErr, want)
	}
	if r.cliErr == nil {
		t.Error("client did not learn of the refusal")
	}
	r = handshake(t, srv.ServerConfig(RoleIntermediate, RoleAdmin), prim.ClientConfig(RoleIntermediate))
	if r.srvErr == nil || !strings.Contains(r.srvErr.Error(), "holds no intermediate or admin grant") {
		t.Errorf("server with two roles: %v", r.srvErr)
	}
	handshake(t, srv.ServerConfig(RolePrimary, RoleAdmin), prim.ClientConfig(RoleIntermediate)).wantOK(t)
}

func TestHandshakeRefused(t *testing.T) {
	ca := newTestCA(t, "ca", nil, 0)
	other := newTestCA(t, "other", nil, 0)
	srv := newMaterial(t, ca, "n1", []Grant{{RoleIntermediate, "n1"}})
	cli := newMaterial(t, ca, "c", []Grant{{RolePrimary, "a"}})

	t.Run("client without certificate", func(t *testing.T) {
		r := handshake(t, srv.ServerConfig(), &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true})
		if r.srvErr == nil || !strings.Contains(r.srvErr.Error(), "certificate") {
			t.Fatalf("server: %v", r.srvErr)
		}
		if r.cliErr == nil {
			t.Error("client did not learn of the refusal")
		}
	})
	t.Run("client from another CA", func(t *testing.T) {
		// The client trusts both CAs, so only the server refuses.
		stranger := newMaterial(t, other, "s", []Grant{{RolePrimary, "a"}}, ca, other)
		r := handshake(t, srv.ServerConfig(), stranger.ClientConfig(RoleIntermediate))
		if r.srvErr == nil || !strings.Contains(r.srvErr.Error(), "unknown authority") {
			t.Fatalf("server: %v", r.srvErr)
		}
		if r.cliErr == nil {
			t.Error("client did not learn of the refusal")
		}
	})
	t.Run("server without the role", func(t *testing.T) {
		sec := newMaterial(t, ca, "sec-host", []Grant{{RoleSecondary, "a"}})
		r := handshake(t, sec.ServerConfig(), cli.ClientConfig(RoleIntermediate))
		if !errors.Is(r.cliErr, ErrNotAuthorized) {
			t.Fatalf("client: %v, want ErrNotAuthorized", r.cliErr)
		}
		if want := `not authorized: server "sec-host" (secondary/a) holds no intermediate grant`; r.cliErr.Error() != want {
			t.Errorf("client: %q, want %q", r.cliErr, want)
		}
		if r.srvErr == nil {
			t.Error("server handshake succeeded")
		}
		handshake(t, sec.ServerConfig(), cli.ClientConfig(RoleSecondary)).wantOK(t)
	})
	t.Run("server from another CA", func(t *testing.T) {
		stranger := newMaterial(t, other, "n9", []Grant{{RoleIntermediate, "n9"}}, ca, other)
		r := handshake(t, stranger.ServerConfig(), cli.ClientConfig(RoleIntermediate))
		if r.cliErr == nil || !strings.Contains(r.cliErr.Error(), "unknown authority") {
			t.Fatalf("client: %v", r.cliErr)
		}
		if !strings.Contains(r.cliErr.Error(), `verify server certificate "n9"`) {
			t.Errorf("client: %v, want it to name the server", r.cliErr)
		}
	})
	t.Run("server expired", func(t *testing.T) {
		c, k := issueRaw(t, ca, "old", time.Now().Add(-48*time.Hour), withGrantURIs(t, "tricopy://intermediate/old"))
		r := handshake(t, rawServer(t, c, k), cli.ClientConfig(RoleIntermediate))
		if r.cliErr == nil || !strings.Contains(r.cliErr.Error(), "expired") {
			t.Fatalf("client: %v", r.cliErr)
		}
	})
	t.Run("server not for server auth", func(t *testing.T) {
		c, k := issueRaw(t, ca, "odd", time.Now().Add(-time.Minute), func(c *x509.Certificate) {
			withGrantURIs(t, "tricopy://intermediate/odd")(c)
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
		})
		r := handshake(t, rawServer(t, c, k), cli.ClientConfig(RoleIntermediate))
		if r.cliErr == nil || !strings.Contains(r.cliErr.Error(), "incompatible key usage") {
			t.Fatalf("client: %v", r.cliErr)
		}
	})
	t.Run("client not for client auth", func(t *testing.T) {
		c, k := issueRaw(t, ca, "odd", time.Now().Add(-time.Minute), func(c *x509.Certificate) {
			withGrantURIs(t, "tricopy://primary/a")(c)
			c.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		})
		r := handshake(t, srv.ServerConfig(), rawClient(t, c, k))
		if r.srvErr == nil || !strings.Contains(r.srvErr.Error(), "incompatible key usage") {
			t.Fatalf("server: %v", r.srvErr)
		}
	})
	t.Run("client with a bad grant", func(t *testing.T) {
		c, k := issueRaw(t, ca, "bad", time.Now().Add(-time.Minute),
			withGrantURIs(t, "tricopy://primary/a", "tricopy://primary/a/b"))
		r := handshake(t, srv.ServerConfig(), rawClient(t, c, k))
		if !errors.Is(r.srvErr, ErrBadGrant) || !strings.Contains(r.srvErr.Error(), `"tricopy://primary/a/b"`) {
			t.Fatalf("server: %v, want ErrBadGrant naming the URI", r.srvErr)
		}
	})
	t.Run("server with a bad grant", func(t *testing.T) {
		c, k := issueRaw(t, ca, "bad", time.Now().Add(-time.Minute),
			withGrantURIs(t, "tricopy://intermediate/n1", "tricopy://intermediate/n1?x"))
		r := handshake(t, rawServer(t, c, k), cli.ClientConfig(RoleIntermediate))
		if !errors.Is(r.cliErr, ErrBadGrant) || !strings.Contains(r.cliErr.Error(), `"tricopy://intermediate/n1?x"`) {
			t.Fatalf("client: %v, want ErrBadGrant naming the URI", r.cliErr)
		}
	})
	t.Run("TLS 1.2", func(t *testing.T) {
		cfg := cli.ClientConfig(RoleIntermediate)
		cfg.MaxVersion = tls.VersionTLS12
		cfg.MinVersion = tls.VersionTLS12
		r := handshake(t, srv.ServerConfig(), cfg)
		if r.srvErr == nil || r.cliErr == nil {
			t.Fatalf("TLS 1.2 accepted: server %v, client %v", r.srvErr, r.cliErr)
		}
	})
}

// TestHandshakeChain verifies a server and a client whose certificates are
// issued by an intermediate CA, sent along in the handshake.
func TestHandshakeChain(t *testing.T) {
	root := newTestCA(t, "root", nil, 1)
	inter := newTestCA(t, "inter", root, 0)
	load := func(name string, g Grant) *Material {
		c, k := issue(t, inter, name, g)
		m, err := Load(writeFiles(t, append(c, inter.CertPEM()...), k, bundle(root)), nil)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	srv := load("n1", Grant{RoleIntermediate, "n1"})
	cli := load("n2", Grant{RoleIntermediate, "n2"})
	r := handshake(t, srv.ServerConfig(RoleIntermediate), cli.ClientConfig(RoleIntermediate))
	r.wantOK(t)
	if !r.srvSaw.Has(RoleIntermediate, "n2") || !r.cliSaw.Has(RoleIntermediate, "n1") {
		t.Fatalf("server saw %s, client saw %s", r.srvSaw, r.cliSaw)
	}
}

// TestHandshakeALPN negotiates an application protocol set on the returned
// configuration, and one set the way grpc-go's credentials.NewTLS does: on a
// clone, with GetConfigForClient wrapped to add it to the per-connection
// configuration.
func TestHandshakeALPN(t *testing.T) {
	ca := newTestCA(t, "ca", nil, 0)
	srv := newMaterial(t, ca, "n1", []Grant{{RoleIntermediate, "n1"}})
	cli := newMaterial(t, ca, "c", []Grant{{RolePrimary, "a"}})
	ccfg := cli.ClientConfig(RoleIntermediate).Clone()
	ccfg.NextProtos = []string{"h2"}

	scfg := srv.ServerConfig()
	scfg.NextProtos = []string{"h2"}
	r := handshake(t, scfg, ccfg)
	r.wantOK(t)
	if r.proto != "h2" {
		t.Errorf("negotiated %q, want h2", r.proto)
	}

	grpcLike := srv.ServerConfig().Clone()
	next := grpcLike.GetConfigForClient
	grpcLike.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		c, err := next(hello)
		if err != nil || c == nil {
			return c, err
		}
		c = c.Clone()
		c.NextProtos = append(c.NextProtos, "h2")
		return c, nil
	}
	r = handshake(t, grpcLike, ccfg)
	r.wantOK(t)
	if r.proto != "h2" {
		t.Errorf("negotiated %q through a wrapped GetConfigForClient, want h2", r.proto)
	}
}

// issueRaw issues a certificate valid from notBefore for a day, with the
// template changed by edit.
func issueRaw(t testing.TB, ca *CA, name string, notBefore time.Time, edit func(*x509.Certificate)) (c, k []byte) {
	t.Helper()
	c, k, err := ca.issue(name, nil, notBefore, testValidity, edit)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

// withGrantURIs sets the URI SANs of a template, well-formed or not.
func withGrantURIs(t testing.TB, uris ...string) func(*x509.Certificate) {
	return func(c *x509.Certificate) {
		c.URIs = nil
		for _, s := range uris {
			c.URIs = append(c.URIs, mustURL(t, s))
		}
	}
}

// rawServer is a server that presents c and k without any checks of its own
// and asks for any client certificate.
func rawServer(t testing.TB, c, k []byte) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{keyPair(t, c, k)},
		ClientAuth:   tls.RequireAnyClientCert,
	}
}

// rawClient is a client that presents c and k and checks nothing.
func rawClient(t testing.TB, c, k []byte) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{keyPair(t, c, k)},
		InsecureSkipVerify: true,
	}
}

// TestConcurrentRotation runs handshakes from several goroutines while the
// client's files rotate; every handshake must succeed with one of the
// certificates. Run it with -race.
func TestConcurrentRotation(t *testing.T) {
	ca := newTestCA(t, "ca", nil, 0)
	srv := newMaterial(t, ca, "n1", []Grant{{RoleIntermediate, "n1"}})
	cli := newMaterial(t, ca, "c0", []Grant{{RolePrimary, "a"}})
	cli.interval = time.Millisecond
	srv.interval = time.Millisecond
	scfg, ccfg := srv.ServerConfig(), cli.ClientConfig(RoleIntermediate)

	stop := make(chan struct{})
	errs := make(chan error, 8)
	for range cap(errs) {
		go func() {
			for {
				select {
				case <-stop:
					errs <- nil
					return
				default:
				}
				r := handshake(t, scfg, ccfg)
				if r.srvErr != nil || r.cliErr != nil {
					errs <- fmt.Errorf("server: %v; client: %v", r.srvErr, r.cliErr)
					return
				}
				if !strings.HasPrefix(r.srvSaw.Name, "c") {
					errs <- fmt.Errorf("server saw %s", r.srvSaw)
					return
				}
			}
		}()
	}
	for i := 1; i <= 10; i++ {
		c, k := issue(t, ca, fmt.Sprintf("c%d", i), Grant{RolePrimary, "a"})
		rewrite(t, cli.Files(), c, k)
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}
