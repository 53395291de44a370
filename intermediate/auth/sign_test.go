package auth

import (
	"errors"
	"testing"
	"time"
)

func TestSignVerify(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("ca", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCA("other", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	load := func(ca *CA, name string, grants ...Grant) *Material {
		certPEM, keyPEM, err := ca.Issue(name, grants, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		f := Files{Cert: dir + "/" + name + ".pem", Key: dir + "/" + name + ".key", CA: dir + "/" + name + "-ca.pem"}
		for p, b := range map[string][]byte{f.Cert: certPEM, f.Key: keyPEM, f.CA: ca.CertPEM()} {
			if err := WriteFile(p, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		m, err := Load(f, nil)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	admin := load(ca, "ops", Grant{RoleAdmin, "ops"})
	node := load(ca, "i1", Grant{RoleIntermediate, "i1"})
	foreign := load(other, "evil", Grant{RoleAdmin, "evil"})

	msg := []byte("tricopy promote v1\x00default\x00p-1\x00ops\x0042")
	chain, sig, err := admin.Sign(msg)
	if err != nil {
		t.Fatal(err)
	}
	id, err := node.VerifySigned(chain, msg, sig)
	if err != nil || !id.Has(RoleAdmin, "ops") {
		t.Fatalf("verify: %v %v", id, err)
	}
	bad := func(name string, chain [][]byte, msg, sig []byte) {
		t.Helper()
		if _, err := node.VerifySigned(chain, msg, sig); !errors.Is(err, ErrBadSignature) {
			t.Errorf("%s: %v, want ErrBadSignature", name, err)
		}
	}
	bad("other message", chain, []byte("tricopy promote v1\x00default\x00p-1\x00ops\x0043"), sig)
	flipped := append([]byte(nil), sig...)
	flipped[len(flipped)/2] ^= 1
	bad("flipped signature", chain, msg, flipped)
	bad("no chain", nil, msg, sig)
	bad("no signature", chain, msg, nil)
	bad("garbage certificate", [][]byte{[]byte("junk")}, msg, sig)
	fchain, fsig, err := foreign.Sign(msg)
	if err != nil {
		t.Fatal(err)
	}
	bad("another CA", fchain, msg, fsig)
	nchain, _, err := node.Sign(msg)
	if err != nil {
		t.Fatal(err)
	}
	bad("another signer's certificate", nchain, msg, sig)
	bad("too many certificates", [][]byte{chain[0], chain[0], chain[0], chain[0], chain[0]}, msg, sig)
}
