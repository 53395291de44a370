package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/intermediate/auth"
)

// CA file names in a certs directory.
const (
	caCertFile = "ca.pem"
	caKeyFile  = "ca.key"
)

func newCertsCmd(a *app) *cobra.Command {
	cfg := configs.DefaultCerts()
	return newCommand(a, commandSpec{
		use:   "certs",
		short: "Make a CA and the certificates of a deployment",
		long: `Certs makes a certificate authority (ca.pem, ca.key) in --dir, unless one is
there already, and certificates signed by it (NAME.pem, NAME.key), for the
--tls-cert, --tls-key and --tls-ca keys of the other commands.

A certificate's URI SANs, tricopy://ROLE/NAME, say what its holder may do:
  primary/VOLUME       submit the volume's writes (and read it back)
  secondary/VOLUME     follow the volume as a secondary
  intermediate/ID      be intermediate node ID (Raft between the nodes)
  admin/NAME           promote, fail back, join and remove nodes
A secondary that may be promoted needs primary/VOLUME too: it writes the volume
once promoted. See docs/SECURITY.md.

Without --issue, certs makes the set of the local deployment (tricopy up):
intermediate-ID for each of --nodes, primary (primary/V and secondary/V of each
of --volumes: a primary fails back as a secondary), secondary (secondary/V and
primary/V of each volume), and admin (admin/admin). With --issue, only the
certificates listed. Keys are ECDSA P-256, written with mode 0600.

An existing certificate is an error unless --renew is given, which replaces it
with a new key and certificate from the same CA: the processes using it pick
the new files up by themselves within seconds (rotation without a restart).`,
		example: `  tricopy certs --dir /etc/tricopy/tls
  tricopy certs --dir ./tls --nodes i1,i2,i3 --volumes a,b
  tricopy certs --dir ./tls --issue pri1=primary/a+secondary/a,far1=secondary/a+primary/a,ops=admin/ops
  tricopy certs --dir ./tls --issue pri1=primary/a+secondary/a --renew`,
	}, &cfg, runCerts)
}

// certSpec is one certificate to make.
type certSpec struct {
	name   string
	grants []auth.Grant
}

// runCerts is `tricopy certs`.
func runCerts(_ context.Context, a *app, log *slog.Logger, cfg *configs.Certs) error {
	specs, err := certSpecs(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", cfg.Dir, err)
	}
	if !cfg.Renew {
		for _, s := range specs {
			p := filepath.Join(cfg.Dir, s.name+".pem")
			if _, err := os.Stat(p); err == nil {
				return fmt.Errorf("certificate %s exists: pass --renew to replace it", p)
			}
		}
	}
	ca, made, err := loadOrMakeCA(cfg.Dir, cfg.CAValidity)
	if err != nil {
		return err
	}
	if made {
		fmt.Fprintf(a.stdout, "made CA %s (%s)\n", filepath.Join(cfg.Dir, caCertFile), ca.Cert.Subject.CommonName)
	} else {
		log.Info("using the CA there", "ca", filepath.Join(cfg.Dir, caCertFile))
	}
	for _, s := range specs {
		certPath, err := issueCert(ca, cfg.Dir, s, cfg.Validity)
		if err != nil {
			return err
		}
		grants := make([]string, len(s.grants))
		for i, g := range s.grants {
			grants[i] = g.String()
		}
		fmt.Fprintf(a.stdout, "issued %s (%s)\n", certPath, strings.Join(grants, ", "))
	}
	return nil
}

// issueCert writes s's key and certificate from ca into dir and returns
// the certificate's path.
func issueCert(ca *auth.CA, dir string, s certSpec, validity time.Duration) (string, error) {
	cert, key, err := ca.Issue(s.name, s.grants, validity)
	if err != nil {
		return "", fmt.Errorf("issue certificate %s: %w", s.name, err)
	}
	certPath, keyPath := filepath.Join(dir, s.name+".pem"), filepath.Join(dir, s.name+".key")
	// The key first: a process reloading the pair sees either the old
	// pair or the key ahead of its certificate, which it refuses and
	// retries, never a new certificate with the old key.
	if err := auth.WriteFile(keyPath, key, 0o600); err != nil {
		return "", err
	}
	if err := auth.WriteFile(certPath, cert, 0o644); err != nil {
		return "", err
	}
	return certPath, nil
}

// certSpecs returns the certificates cfg asks for.
func certSpecs(cfg *configs.Certs) ([]certSpec, error) {
	var specs []certSpec
	if len(cfg.Issue) > 0 {
		for _, e := range cfg.Issue {
			name, list, _ := strings.Cut(e, "=")
			s := certSpec{name: name}
			for _, g := range strings.Split(list, "+") {
				grant, err := auth.ParseGrant(g)
				if err != nil {
					return nil, &configs.Error{Key: "issue", Err: fmt.Errorf("%w: entry %q: %w", configs.ErrInvalid, e, err)}
				}
				s.grants = append(s.grants, grant)
			}
			specs = append(specs, s)
		}
		return specs, nil
	}
	for _, n := range cfg.Nodes {
		specs = append(specs, certSpec{name: "intermediate-" + n, grants: []auth.Grant{{Role: auth.RoleIntermediate, Name: n}}})
	}
	var prim, sec []auth.Grant
	for _, v := range cfg.Volumes {
		prim = append(prim, auth.Grant{Role: auth.RolePrimary, Name: v})
		sec = append(sec, auth.Grant{Role: auth.RoleSecondary, Name: v})
	}
	if len(cfg.Volumes) > 0 {
		specs = append(specs,
			certSpec{name: "primary", grants: append(append([]auth.Grant(nil), prim...), sec...)},
			certSpec{name: "secondary", grants: append(append([]auth.Grant(nil), sec...), prim...)})
	}
	specs = append(specs, certSpec{name: "admin", grants: []auth.Grant{{Role: auth.RoleAdmin, Name: "admin"}}})
	return specs, nil
}

// loadOrMakeCA loads the CA in dir or makes one there, valid for validity.
func loadOrMakeCA(dir string, validity time.Duration) (ca *auth.CA, made bool, err error) {
	certPath, keyPath := filepath.Join(dir, caCertFile), filepath.Join(dir, caKeyFile)
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		ca, err := auth.LoadCA(certPath, keyPath)
		return ca, false, err
	case certErr == nil || keyErr == nil:
		return nil, false, fmt.Errorf("CA in %s is half there (%s and %s must both exist or neither)", dir, caCertFile, caKeyFile)
	case !errors.Is(certErr, fs.ErrNotExist):
		return nil, false, fmt.Errorf("CA certificate %s: %w", certPath, certErr)
	}
	ca, err = auth.NewCA("tricopy CA "+filepath.Base(mustAbs(dir)), validity)
	if err != nil {
		return nil, false, fmt.Errorf("make CA: %w", err)
	}
	key, err := ca.KeyPEM()
	if err != nil {
		return nil, false, fmt.Errorf("encode CA key: %w", err)
	}
	if err := auth.WriteFile(keyPath, key, 0o600); err != nil {
		return nil, false, err
	}
	if err := auth.WriteFile(certPath, ca.CertPEM(), 0o644); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

// mustAbs is filepath.Abs, or p when that fails.
func mustAbs(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}
