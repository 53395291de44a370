package auth

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultReloadInterval is how often, at most, a Material looks at its files
// for changes.
const DefaultReloadInterval = time.Second

// Attribute keys of the log records of this package.
const (
	logKeyErr      = "err"
	logKeyIdentity = "identity"
	logKeyCert     = "cert"
	logKeyNotAfter = "not_after"
)

// Material is a loaded key pair and CA bundle that reloads itself when the
// files change (checked at most once per DefaultReloadInterval, at
// handshakes), so certificates and CAs rotate without a restart. Its methods
// and the configurations it returns may be used concurrently.
type Material struct {
	files    Files
	log      *slog.Logger
	interval time.Duration // between two checks of the files; tests shorten it

	cur       atomic.Pointer[loaded]
	lastCheck atomic.Int64 // when the files were last looked at, in Unix nanoseconds

	// mu is held while the files are checked or reloaded; a handshake that
	// finds it held uses the current material instead of waiting.
	mu     sync.Mutex
	stamps stamps  // of the files cur was loaded from
	failed *stamps // of the files the last failed reload read, nil after a success
}

// loaded is one immutable generation of a Material.
type loaded struct {
	cert tls.Certificate // the chain and key, with Leaf set
	pool *x509.CertPool  // the CA bundle
	id   Identity        // of cert.Leaf
}

// stamps identify the versions of the three files: a change of inode (a
// rename over the file), size or modification time is a new version. A nil
// entry is a file that could not be looked at.
type stamps [3]os.FileInfo

func statFiles(f Files) stamps {
	var s stamps
	for i, path := range []string{f.Cert, f.Key, f.CA} {
		if fi, err := os.Stat(path); err == nil {
			s[i] = fi
		}
	}
	return s
}

func (s stamps) equal(o stamps) bool {
	for i := range s {
		a, b := s[i], o[i]
		if a == nil || b == nil {
			if a != b {
				return false
			}
			continue
		}
		if !os.SameFile(a, b) || a.Size() != b.Size() || !a.ModTime().Equal(b.ModTime()) {
			return false
		}
	}
	return true
}

// Load reads the files named by f: the certificate chain and its key, and
// the CA bundle. It checks that the key matches the certificate, that the
// certificate verifies against the CA bundle now for both server and client
// authentication, and that its grants parse. Every error names the file at
// fault. log receives the reloads (Info) and failed reloads (Warn); nil
// discards them.
func Load(f Files, log *slog.Logger) (*Material, error) {
	if err := f.Check(); err != nil {
		return nil, err
	}
	if !f.Enabled() {
		return nil, errors.New("load TLS material: no files set")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Material{files: f, log: log, interval: DefaultReloadInterval}
	now := time.Now()
	st := statFiles(f)
	l, err := load(f, now)
	if err != nil {
		return nil, err
	}
	m.cur.Store(l)
	m.stamps = st
	m.lastCheck.Store(now.UnixNano())
	return m, nil
}

// load reads and checks the files of f.
func load(f Files, now time.Time) (*loaded, error) {
	data, err := readFile(f.Cert)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %q: %w", f.Cert, err)
	}
	chain, err := parseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %q: %w", f.Cert, err)
	}
	leaf := chain[0]

	data, err = readFile(f.Key)
	if err != nil {
		return nil, fmt.Errorf("load TLS key %q: %w", f.Key, err)
	}
	key, err := parseKey(data)
	if err != nil {
		return nil, fmt.Errorf("load TLS key %q: %w", f.Key, err)
	}
	if !matches(leaf, key) {
		return nil, fmt.Errorf("load TLS key %q: does not match the certificate %q", f.Key, f.Cert)
	}

	data, err = readFile(f.CA)
	if err != nil {
		return nil, fmt.Errorf("load TLS CA bundle %q: %w", f.CA, err)
	}
	cas, err := parseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("load TLS CA bundle %q: %w", f.CA, err)
	}
	pool := x509.NewCertPool()
	for i, ca := range cas {
		if !ca.BasicConstraintsValid || !ca.IsCA {
			return nil, fmt.Errorf("load TLS CA bundle %q: certificate %d (%q) is not a CA", f.CA, i+1, ca.Subject.CommonName)
		}
		pool.AddCert(ca)
	}

	intermediates := x509.NewCertPool()
	for _, c := range chain[1:] {
		intermediates.AddCert(c)
	}
	for _, usage := range []struct {
		name string
		eku  x509.ExtKeyUsage
	}{{"server", x509.ExtKeyUsageServerAuth}, {"client", x509.ExtKeyUsageClientAuth}} {
		_, err := leaf.Verify(x509.VerifyOptions{
			Roots:         pool,
			Intermediates: intermediates,
			CurrentTime:   now,
			KeyUsages:     []x509.ExtKeyUsage{usage.eku},
		})
		if err != nil {
			return nil, fmt.Errorf("load TLS certificate %q: verify as a %s certificate against the CA bundle %q: %w",
				f.Cert, usage.name, f.CA, err)
		}
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return nil, fmt.Errorf("load TLS certificate %q: %w", f.Cert, err)
	}

	ders := make([][]byte, len(chain))
	for i, c := range chain {
		ders[i] = c.Raw
	}
	return &loaded{
		cert: tls.Certificate{Certificate: ders, PrivateKey: key, Leaf: leaf},
		pool: pool,
		id:   id,
	}, nil
}

// current returns the current material, after reloading the files if the
// interval since the last check has passed and they changed. Only one
// goroutine checks at a time; the others take the current material.
func (m *Material) current() *loaded {
	if m.due(time.Now()) && m.mu.TryLock() {
		m.checkLocked()
		m.mu.Unlock()
	}
	return m.cur.Load()
}

// due reports whether the files are due to be looked at again at now.
func (m *Material) due(now time.Time) bool {
	return now.UnixNano()-m.lastCheck.Load() >= int64(m.interval)
}

// checkLocked reloads the files if they changed since they were loaded.
// A failed reload is retried at every check, but logged as a warning only
// once per version of the files.
func (m *Material) checkLocked() {
	now := time.Now()
	if !m.due(now) {
		return // checked by another goroutine meanwhile
	}
	m.lastCheck.Store(now.UnixNano())
	st := statFiles(m.files)
	if st.equal(m.stamps) {
		return
	}
	if err := m.reloadLocked(now, st); err != nil {
		level := slog.LevelWarn
		if m.failed != nil && m.failed.equal(st) {
			level = slog.LevelDebug
		}
		m.failed = &st
		m.log.Log(context.Background(), level, "reload TLS material failed; keeping the current one",
			logKeyErr, err, logKeyIdentity, m.cur.Load().id.String())
	}
}

// reloadLocked loads the files, whose versions are st, and makes them
// current.
func (m *Material) reloadLocked(now time.Time, st stamps) error {
	l, err := load(m.files, now)
	if err != nil {
		return err
	}
	m.cur.Store(l)
	m.stamps = st
	m.failed = nil
	m.log.Info("reloaded TLS material", logKeyCert, m.files.Cert,
		logKeyIdentity, l.id.String(), logKeyNotAfter, l.cert.Leaf.NotAfter)
	return nil
}

// Reload reads the files now, whether or not they changed, and makes them
// current. On error the current material stays in use.
func (m *Material) Reload() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	m.lastCheck.Store(now.UnixNano())
	return m.reloadLocked(now, statFiles(m.files))
}

// Identity returns the identity of the current certificate.
func (m *Material) Identity() Identity {
	id := m.current().id
	id.Grants = slices.Clone(id.Grants)
	return id
}

// Files returns the files m was loaded from.
func (m *Material) Files() Files {
	return m.files
}

// ServerConfig returns the configuration of a TLS server: TLS 1.3 at least,
// the current certificate, and a client certificate required and verified
// against the current CA bundle (for client authentication). The peer's
// grants must parse, and when roles are given the client must hold a grant
// of at least one of them (the Raft transport passes RoleIntermediate); with
// none, any verified client is accepted (the gRPC server authorizes each
// method with PeerIdentity). A refusal for want of a grant wraps
// ErrNotAuthorized.
//
// The certificate and CA bundle are taken per connection by
// GetConfigForClient, so a rotation takes effect for new connections. The
// per-connection configuration copies NextProtos from the returned
// configuration at each handshake (grpc-go's credentials.NewTLS adds "h2"
// to the per-connection configuration itself). Session tickets are
// disabled, so every connection is verified against the current CA bundle.
func (m *Material) ServerConfig(roles ...Role) *tls.Config {
	roles = slices.Clone(roles)
	verify := func(cs tls.ConnectionState) error {
		id, err := PeerIdentity(cs)
		if err != nil {
			return fmt.Errorf("client: %w", err)
		}
		return authorize("client", id, roles)
	}
	cfg := &tls.Config{
		MinVersion:             tls.VersionTLS13,
		ClientAuth:             tls.RequireAndVerifyClientCert,
		SessionTicketsDisabled: true,
		VerifyConnection:       verify,
	}
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		l := m.current()
		return &tls.Config{
			MinVersion:             tls.VersionTLS13,
			Certificates:           []tls.Certificate{l.cert},
			ClientAuth:             tls.RequireAndVerifyClientCert,
			ClientCAs:              l.pool,
			NextProtos:             cfg.NextProtos,
			SessionTicketsDisabled: true,
			VerifyConnection:       verify,
		}, nil
	}
	return cfg
}

// ClientConfig returns the configuration of a TLS client: TLS 1.3 at least,
// the current certificate presented, and the server verified by chain
// against the current CA bundle (for server authentication, at the current
// time), not by host name: addresses are often IPs and change. The server
// must hold a grant of role server (RoleIntermediate when dialing an
// intermediate node, RoleSecondary when dialing a secondary's admin API);
// the error for a server without one wraps ErrNotAuthorized and names the
// role expected and the server's identity.
func (m *Material) ClientConfig(server Role) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The standard verification checks the host name, which is not what
		// identifies a node here; VerifyConnection verifies the chain and the
		// grants instead.
		InsecureSkipVerify: true,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &m.current().cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return m.verifyServer(cs, server)
		},
	}
}

// verifyServer verifies the chain of the server of cs against the current
// CA bundle and its grants against role.
func (m *Material) verifyServer(cs tls.ConnectionState, role Role) error {
	if len(cs.PeerCertificates) == 0 {
		return fmt.Errorf("server: %w", ErrNoCertificate)
	}
	leaf := cs.PeerCertificates[0]
	intermediates := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		intermediates.AddCert(c)
	}
	_, err := leaf.Verify(x509.VerifyOptions{
		Roots:         m.current().pool,
		Intermediates: intermediates,
		CurrentTime:   time.Now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return fmt.Errorf("verify server certificate %q: %w", leaf.Subject.CommonName, err)
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return fmt.Errorf("server: %w", err)
	}
	return authorize("server", id, []Role{role})
}
