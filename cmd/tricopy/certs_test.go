package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tricopy/tricopy/intermediate/auth"
)

// TestCerts makes the default set, checks what each certificate grants,
// refuses to overwrite without --renew, renews with the same CA, and issues
// a listed set.
func TestCerts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	r := runCmd(t, nil, "certs", "--dir", dir, "--nodes", "i1,i2", "--volumes", "a,b")
	r.expect(t, exitOK)
	if !strings.Contains(r.stdout, "made CA") {
		t.Errorf("certs output: %s", r.stdout)
	}
	want := map[string][]string{
		"intermediate-i1": {"intermediate/i1"},
		"intermediate-i2": {"intermediate/i2"},
		"primary":         {"primary/a", "primary/b", "secondary/a", "secondary/b"},
		"secondary":       {"secondary/a", "secondary/b", "primary/a", "primary/b"},
		"admin":           {"admin/admin"},
	}
	for name, grants := range want {
		m, err := auth.Load(auth.Files{Cert: filepath.Join(dir, name+".pem"), Key: filepath.Join(dir, name+".key"), CA: filepath.Join(dir, "ca.pem")}, nil)
		if err != nil {
			t.Fatalf("load %s: %v", name, err)
		}
		id := m.Identity()
		if len(id.Grants) != len(grants) {
			t.Errorf("%s holds %s, want %v", name, id, grants)
		}
		for _, g := range grants {
			gr, _ := auth.ParseGrant(g)
			if !id.Has(gr.Role, gr.Name) {
				t.Errorf("%s holds %s, lacks %s", name, id, g)
			}
		}
		if st, err := os.Stat(filepath.Join(dir, name+".key")); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s.key: %v, mode %v, want 0600", name, err, st.Mode().Perm())
		}
	}
	caBefore, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	keyBefore, _ := os.ReadFile(filepath.Join(dir, "admin.key"))

	runCmd(t, nil, "certs", "--dir", dir).expect(t, exitFailed, "exists: pass --renew")
	r = runCmd(t, nil, "certs", "--dir", dir, "--renew")
	r.expect(t, exitOK)
	if !strings.Contains(r.stdout, "issued") {
		t.Errorf("certs --renew output: %s", r.stdout)
	}
	caAfter, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	keyAfter, _ := os.ReadFile(filepath.Join(dir, "admin.key"))
	if string(caAfter) != string(caBefore) {
		t.Error("--renew replaced the CA")
	}
	if string(keyAfter) == string(keyBefore) {
		t.Error("--renew kept the old key")
	}

	r = runCmd(t, nil, "certs", "--dir", dir, "--issue", "pri1=primary/a+secondary/a,ops=admin/ops")
	r.expect(t, exitOK)
	if !strings.Contains(r.stdout, "pri1.pem (primary/a, secondary/a)") || !strings.Contains(r.stdout, "ops.pem (admin/ops)") {
		t.Errorf("certs --issue output: %s", r.stdout)
	}
	runCmd(t, nil, "certs", "--dir", dir, "--issue", "x=boss/a").expect(t, exitUsage, "issue")
	runCmd(t, nil, "certs", "--dir", dir, "--issue", "x").expect(t, exitUsage, "NAME=GRANT")
}

// TestTLSKeysAllOrNone checks that a partial TLS setup is a configuration
// error naming the missing key, and a certificate without the grant the
// command needs is refused at start.
func TestTLSKeysAllOrNone(t *testing.T) {
	dir := t.TempDir()
	runCmd(t, nil, "status", "--intermediate", "127.0.0.1:1", "--tls-cert", "x.pem").expect(t, exitUsage, "tls-key", "partly configured")
	runCmd(t, map[string]string{"TRICOPY_TLS_CA": "ca.pem"}, "status", "--intermediate", "127.0.0.1:1").expect(t, exitUsage, "tls-cert")

	tls := filepath.Join(dir, "tls")
	runCmd(t, nil, "certs", "--dir", tls).expect(t, exitOK)
	flags := func(name string) []string {
		return []string{"--tls-cert", filepath.Join(tls, name+".pem"), "--tls-key", filepath.Join(tls, name+".key"), "--tls-ca", filepath.Join(tls, "ca.pem")}
	}
	args := append([]string{"intermediate", "--node", "i2", "--data", filepath.Join(dir, "i2"), "--listen", "127.0.0.1:1", "--raft", "127.0.0.1:2"}, flags("intermediate-i1")...)
	runCmd(t, nil, args...).expect(t, exitUsage, "tricopy://intermediate/i2")
	args = append([]string{"promote", "--secondary", "127.0.0.1:1"}, flags("primary")...)
	runCmd(t, nil, args...).expect(t, exitUsage, "tricopy://admin/NAME")
	args = []string{"status", "--intermediate", "127.0.0.1:1", "--tls-cert", filepath.Join(tls, "nope.pem"),
		"--tls-key", filepath.Join(tls, "admin.key"), "--tls-ca", filepath.Join(tls, "ca.pem")}
	runCmd(t, nil, args...).expect(t, exitUsage, "nope.pem")
}
