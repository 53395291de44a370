package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/intermediate/auth"
)

// upCerts are the TLS materials of the parts of `tricopy up`, each with
// its own certificate from the CA in DIR/certs.
type upCerts struct {
	dir         string
	node, admin *auth.Material
	primaries   map[string]*auth.Material
	secondaries map[string]*auth.Material
}

// upCertSpecs are the certificates of up's parts for volumes: the node's,
// the admin's (status, the web page), and for each volume its primary's
// and its secondary's (each with both grants of the volume: a primary
// fails back as a secondary, a secondary is promoted to a primary).
func upCertSpecs(volumes []string) []certSpec {
	specs := []certSpec{
		{name: "intermediate-" + upNode, grants: []auth.Grant{{Role: auth.RoleIntermediate, Name: upNode}}},
		{name: "admin", grants: []auth.Grant{{Role: auth.RoleAdmin, Name: "admin"}}},
	}
	for _, v := range volumes {
		p, s := auth.Grant{Role: auth.RolePrimary, Name: v}, auth.Grant{Role: auth.RoleSecondary, Name: v}
		specs = append(specs, certSpec{name: "primary-" + v, grants: []auth.Grant{p, s}},
			certSpec{name: "secondary-" + v, grants: []auth.Grant{s, p}})
	}
	return specs
}

// setupUpTLS makes what is missing of the CA and the certificates of up's
// parts in dir/certs, and loads them.
func setupUpTLS(dir string, volumes []string, log *slog.Logger) (*upCerts, error) {
	cdir := filepath.Join(dir, "certs")
	if err := os.MkdirAll(cdir, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", cdir, err)
	}
	ca, made, err := loadOrMakeCA(cdir, configs.DefaultCAValidity)
	if err != nil {
		return nil, err
	}
	if made {
		log.Info("made a CA for the deployment's TLS", "ca", filepath.Join(cdir, caCertFile))
	}
	u := &upCerts{dir: cdir, primaries: map[string]*auth.Material{}, secondaries: map[string]*auth.Material{}}
	for _, s := range upCertSpecs(volumes) {
		certPath := filepath.Join(cdir, s.name+".pem")
		if _, err := os.Stat(certPath); errors.Is(err, fs.ErrNotExist) {
			if _, err := issueCert(ca, cdir, s, configs.DefaultCertValidity); err != nil {
				return nil, err
			}
			log.Info("issued a certificate", "cert", certPath)
		} else if err != nil {
			return nil, fmt.Errorf("certificate %s: %w", certPath, err)
		}
		m, err := auth.Load(u.files(s.name), log)
		if err != nil {
			return nil, err
		}
		switch s.grants[0].Role {
		case auth.RoleIntermediate:
			u.node = m
		case auth.RoleAdmin:
			u.admin = m
		case auth.RolePrimary:
			u.primaries[s.grants[0].Name] = m
		case auth.RoleSecondary:
			u.secondaries[s.grants[0].Name] = m
		}
	}
	return u, nil
}

// files are the files of certificate name.
func (u *upCerts) files(name string) auth.Files {
	return auth.Files{Cert: filepath.Join(u.dir, name+".pem"), Key: filepath.Join(u.dir, name+".key"), CA: filepath.Join(u.dir, caCertFile)}
}

// statusFlags are the TLS flags tricopy status needs, "" without TLS.
func (u *upCerts) statusFlags() string {
	if u == nil {
		return ""
	}
	f := u.files("admin")
	return fmt.Sprintf(" --tls-cert %s --tls-key %s --tls-ca %s", f.Cert, f.Key, f.CA)
}

// The parts' materials; all nil when up runs without TLS (u nil).

func (u *upCerts) nodeTLS() *auth.Material {
	if u == nil {
		return nil
	}
	return u.node
}

func (u *upCerts) adminTLS() *auth.Material {
	if u == nil {
		return nil
	}
	return u.admin
}

func (u *upCerts) primaryTLS(v string) *auth.Material {
	if u == nil {
		return nil
	}
	return u.primaries[v]
}

func (u *upCerts) secondaryTLS(v string) *auth.Material {
	if u == nil {
		return nil
	}
	return u.secondaries[v]
}
