package secondary_test

import (
	"crypto/tls"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/secondary"
)

// issueMaterial makes a certificate of ca with grants in dir and loads it.
func issueMaterial(t *testing.T, ca *auth.CA, dir, name string, grants ...auth.Grant) *auth.Material {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(name, grants, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f := auth.Files{Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+".key"), CA: filepath.Join(dir, "ca.pem")}
	for _, w := range []struct {
		path string
		data []byte
	}{{f.CA, ca.CertPEM()}, {f.Key, keyPEM}, {f.Cert, certPEM}} {
		if err := auth.WriteFile(w.path, w.data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m, err := auth.Load(f, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestAdminAPIOverTLS serves a secondary's admin API with TLS and checks
// who may do what: status for any certificate of the CA; promote, the
// unapplied export and fsck for admins only; nothing without a
// certificate of the CA.
func TestAdminAPIOverTLS(t *testing.T) {
	_, addr := startNode(t)
	cl := newClient(t, addr)
	v := openVolume(t, cl, "a")
	n := submitRandom(t, v, rand.New(rand.NewPCG(1, 2)), 5)
	s := openSecondary(t, cl, t.TempDir(), "a")
	defer s.Close()
	waitApplied(t, s, n)

	ca, err := auth.NewCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := auth.NewCA("other CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir, odir := t.TempDir(), t.TempDir()
	srvM := issueMaterial(t, ca, dir, "sec", auth.Grant{Role: auth.RoleSecondary, Name: "a"})
	admin := issueMaterial(t, ca, dir, "admin", auth.Grant{Role: auth.RoleAdmin, Name: "ops"})
	peer := issueMaterial(t, ca, dir, "peer", auth.Grant{Role: auth.RoleSecondary, Name: "b"}, auth.Grant{Role: auth.RolePrimary, Name: "a"})
	foreign := issueMaterial(t, other, odir, "admin", auth.Grant{Role: auth.RoleAdmin, Name: "ops"})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(tls.NewListener(ln, srvM.ServerConfig()))
	defer srv.Close()
	hostport := ln.Addr().String()

	do := func(m *auth.Material, cfg *tls.Config, method, path, body string) (int, string, error) {
		if cfg == nil {
			cfg = m.ClientConfig(auth.RoleSecondary)
		}
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
		req, err := http.NewRequest(method, secondary.AdminURL(hc, hostport, path), strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := hc.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}

	for _, path := range []string{secondary.StatusPath, secondary.CheckPath} {
		if code, body, err := do(admin, nil, http.MethodGet, path, ""); err != nil || code != http.StatusOK {
			t.Errorf("admin GET %s: %d %s %v", path, code, body, err)
		}
	}
	if code, body, err := do(peer, nil, http.MethodGet, secondary.StatusPath, ""); err != nil || code != http.StatusOK {
		t.Errorf("peer GET status: %d %s %v", code, body, err)
	}
	for _, c := range []struct{ method, path, body string }{
		{http.MethodPost, secondary.PromotePath, `{"id":"p-evil","by":"evil"}`},
		{http.MethodGet, secondary.UnappliedPath, ""},
		{http.MethodGet, secondary.CheckPath, ""},
	} {
		code, body, err := do(peer, nil, c.method, c.path, c.body)
		if err != nil || code != http.StatusForbidden || !strings.Contains(body, `"peer"`) || !strings.Contains(body, "admin") {
			t.Errorf("non-admin %s %s: %d %q %v, want 403 naming the caller and the admin grant", c.method, c.path, code, body, err)
		}
	}
	if s.Promotion() != nil {
		t.Fatal("a refused promote promoted the secondary")
	}
	for name, cfg := range map[string]*tls.Config{
		"another CA":     foreign.ClientConfig(auth.RoleSecondary),
		"no certificate": {MinVersion: tls.VersionTLS13, InsecureSkipVerify: true},
	} {
		if code, _, err := do(nil, cfg, http.MethodGet, secondary.StatusPath, ""); err == nil {
			t.Errorf("%s: GET status answered %d, want the connection refused", name, code)
		}
	}
	// A client expecting a secondary refuses a server that is not one.
	notSecondary := issueMaterial(t, ca, dir, "impostor", auth.Grant{Role: auth.RolePrimary, Name: "a"})
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv2 := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 5 * time.Second}
	go srv2.Serve(tls.NewListener(ln2, notSecondary.ServerConfig()))
	defer srv2.Close()
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: admin.ClientConfig(auth.RoleSecondary)}, Timeout: 10 * time.Second}
	if resp, err := hc.Get(secondary.AdminURL(hc, ln2.Addr().String(), secondary.StatusPath)); err == nil {
		resp.Body.Close()
		t.Error("the admin's client talked to a server without a secondary grant")
	} else if !strings.Contains(err.Error(), "secondary") {
		t.Errorf("refusal of an impostor server: %v, want it to name the role expected", err)
	}
}
