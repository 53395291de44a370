package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestNewCA(t *testing.T) {
	before := time.Now()
	ca, err := NewCA("tricopy CA", 10*24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c := ca.Cert
	if c.Subject.CommonName != "tricopy CA" || !c.IsCA || !c.BasicConstraintsValid || c.MaxPathLen != 0 || !c.MaxPathLenZero {
		t.Errorf("CA certificate: CN %q, IsCA %v, MaxPathLen %d (zero %v)", c.Subject.CommonName, c.IsCA, c.MaxPathLen, c.MaxPathLenZero)
	}
	if c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("KeyUsage %v", c.KeyUsage)
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", c.PublicKey)
	}
	if err := c.CheckSignatureFrom(c); err != nil {
		t.Errorf("not self-signed: %v", err)
	}
	if c.NotBefore.After(before) || c.NotAfter.Sub(c.NotBefore) != 10*24*time.Hour {
		t.Errorf("valid from %v to %v", c.NotBefore, c.NotAfter)
	}
	if _, err := NewCA("x", 0); err == nil {
		t.Error("NewCA with no validity succeeded")
	}
}

func TestIssue(t *testing.T) {
	ca := newTestCA(t, "ca", nil, 0)
	grants := []Grant{{RoleSecondary, "a"}, {RolePrimary, "a"}}
	certPEM, keyPEM, err := ca.Issue("dr-host", grants, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("certificate PEM %q", certPEM)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if kb, _ := pem.Decode(keyPEM); kb == nil || kb.Type != "PRIVATE KEY" {
		t.Fatalf("key PEM %q", keyPEM)
	}
	if c.Subject.CommonName != "dr-host" || c.IsCA {
		t.Errorf("CN %q, IsCA %v", c.Subject.CommonName, c.IsCA)
	}
	var uris []string
	for _, u := range c.URIs {
		uris = append(uris, u.String())
	}
	if want := []string{"tricopy://secondary/a", "tricopy://primary/a"}; !slices.Equal(uris, want) {
		t.Errorf("URIs %v, want %v", uris, want)
	}
	if want := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}; !slices.Equal(c.ExtKeyUsage, want) {
		t.Errorf("ExtKeyUsage %v", c.ExtKeyUsage)
	}
	if c.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage %v", c.KeyUsage)
	}
	if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %v", c.SerialNumber)
	}
	if pub, ok := c.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T, want ECDSA P-256", c.PublicKey)
	}
	if d := time.Until(c.NotBefore); d > -30*time.Second || d < -2*time.Minute {
		t.Errorf("NotBefore %v, want about a minute ago", c.NotBefore)
	}
	if c.NotAfter.Sub(c.NotBefore) != time.Hour {
		t.Errorf("valid from %v to %v, want an hour", c.NotBefore, c.NotAfter)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	if _, err := c.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Error(err)
	}
	id, err := IdentityOf(c)
	if err != nil || !slices.Equal(id.Grants, grants) {
		t.Errorf("IdentityOf = %s, %v", id, err)
	}

	if _, _, err := ca.Issue("x", []Grant{{"bogus", "a"}}, time.Hour); !errors.Is(err, ErrBadGrant) {
		t.Errorf("Issue with a bad grant: %v, want ErrBadGrant", err)
	}
	if _, _, err := ca.Issue("x", []Grant{{RolePrimary, "a/b"}}, time.Hour); !errors.Is(err, ErrBadGrant) {
		t.Errorf("Issue with a bad name: %v, want ErrBadGrant", err)
	}
	if _, _, err := ca.Issue("x", nil, -time.Hour); err == nil {
		t.Error("Issue with a negative validity succeeded")
	}
}

func TestLoadCA(t *testing.T) {
	ca := newTestCA(t, "ca", nil, 0)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
	keyPEM, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(certFile, ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(keyFile, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(ca.Cert) {
		t.Fatal("LoadCA returned another certificate")
	}
	// A certificate issued by the loaded CA is trusted by the original bundle.
	c, k := issue(t, loaded, "n1", Grant{RoleIntermediate, "n1"})
	if _, err := Load(writeFiles(t, c, k, ca.CertPEM()), nil); err != nil {
		t.Fatal(err)
	}

	other := newTestCA(t, "other", nil, 0)
	otherKey, err := other.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	leafFile, wrongKeyFile := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "other-key.pem")
	if err := WriteFile(leafFile, c, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(wrongKeyFile, otherKey, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cert, key, want string
	}{
		{filepath.Join(dir, "missing.pem"), keyFile, `load CA certificate "` + filepath.Join(dir, "missing.pem") + `"`},
		{certFile, filepath.Join(dir, "missing.pem"), `load CA key "` + filepath.Join(dir, "missing.pem") + `"`},
		{leafFile, keyFile, `load CA certificate "` + leafFile + `": "n1" is not a CA`},
		{certFile, wrongKeyFile, `load CA key "` + wrongKeyFile + `": does not match the certificate`},
		{certFile, certFile, `load CA key "` + certFile + `": no PEM PRIVATE KEY block`},
	} {
		if _, err := LoadCA(tc.cert, tc.key); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("LoadCA(%s, %s): %v, want %q", tc.cert, tc.key, err, tc.want)
		}
	}
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(path, []byte("old"), 0o666); err != nil {
		t.Fatal(err)
	}
	for _, mode := range []os.FileMode{0o600, 0o644} {
		if err := WriteFile(path, []byte("new"), mode); err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("mode %v, want %v", fi.Mode().Perm(), mode)
		}
		if data, err := os.ReadFile(path); err != nil || string(data) != "new" {
			t.Errorf("content %q, %v", data, err)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only key.pem", len(entries))
	}
	if err := WriteFile(filepath.Join(dir, "no", "such", "dir"), nil, 0o600); err == nil {
		t.Error("WriteFile into a missing directory succeeded")
	}
}
