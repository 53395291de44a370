package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const testValidity = 24 * time.Hour

// newTestCA makes a CA; with a parent it is an intermediate CA signed by the
// parent, and pathLen is its MaxPathLen.
func newTestCA(t testing.TB, name string, parent *CA, pathLen int) *CA {
	t.Helper()
	if parent == nil && pathLen == 0 {
		ca, err := NewCA(name, testValidity)
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(testValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            pathLen,
		MaxPathLenZero:        pathLen == 0,
	}
	signer, signerKey := tmpl, any(key)
	if parent != nil {
		signer, signerKey = parent.Cert, parent.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, key.Public(), signerKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, Key: key}
}

// bundle returns the CA bundle of cas.
func bundle(cas ...*CA) []byte {
	var b []byte
	for _, ca := range cas {
		b = append(b, ca.CertPEM()...)
	}
	return b
}

// issue issues a certificate for name with grants from ca.
func issue(t testing.TB, ca *CA, name string, grants ...Grant) (certPEM, keyPEM []byte) {
	t.Helper()
	c, k, err := ca.Issue(name, grants, testValidity)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

// writeFiles writes a certificate, key and CA bundle into a new directory.
func writeFiles(t testing.TB, certPEM, keyPEM, caPEM []byte) Files {
	t.Helper()
	dir := t.TempDir()
	f := Files{
		Cert: filepath.Join(dir, "cert.pem"),
		Key:  filepath.Join(dir, "key.pem"),
		CA:   filepath.Join(dir, "ca.pem"),
	}
	for _, w := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{{f.Cert, certPEM, 0o644}, {f.Key, keyPEM, 0o600}, {f.CA, caPEM, 0o644}} {
		if err := WriteFile(w.path, w.data, w.mode); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// rewrite replaces the certificate and key of f, key first.
func rewrite(t testing.TB, f Files, certPEM, keyPEM []byte) {
	t.Helper()
	if err := WriteFile(f.Key, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := WriteFile(f.Cert, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
}

// newMaterial issues a certificate from ca and loads it with the CA bundle
// of trusted (ca alone if none).
func newMaterial(t testing.TB, ca *CA, name string, grants []Grant, trusted ...*CA) *Material {
	t.Helper()
	if len(trusted) == 0 {
		trusted = []*CA{ca}
	}
	c, k := issue(t, ca, name, grants...)
	m, err := Load(writeFiles(t, c, k, bundle(trusted...)), testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// keyPair returns c and k as a tls.Certificate.
func keyPair(t testing.TB, c, k []byte) tls.Certificate {
	t.Helper()
	kp, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

// logBuffer collects log output of several goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testLogger logs to the test log; with -v, at debug level.
func testLogger(t testing.TB) *slog.Logger {
	level := slog.LevelInfo
	if testing.Verbose() {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: level}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// hsResult is the outcome of one handshake.
type hsResult struct {
	srvErr, cliErr error
	srvSaw         Identity // the client, as the server saw it
	cliSaw         Identity // the server, as the client saw it
	proto          string   // the negotiated application protocol
}

// handshake connects a client with cli to a server with srv over loopback
// TCP (any failure is in the result, so it may run on any goroutine), and
// exchanges one byte after the handshake, so that the client learns
// when the server refused its certificate (in TLS 1.3 the client finishes
// its handshake before the server has verified it).
func handshake(t testing.TB, srv, cli *tls.Config) hsResult {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return hsResult{srvErr: err, cliErr: err}
	}
	defer ln.Close()
	type srvOut struct {
		err error
		id  Identity
	}
	done := make(chan srvOut, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- srvOut{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, srv)
		if err := tc.Handshake(); err != nil {
			done <- srvOut{err: err}
			return
		}
		id, err := PeerIdentity(tc.ConnectionState())
		var b [1]byte
		if _, err := io.ReadFull(tc, b[:]); err != nil {
			done <- srvOut{err: err}
			return
		}
		if _, err := tc.Write(b[:]); err != nil {
			done <- srvOut{err: err}
			return
		}
		done <- srvOut{id: id, err: err}
	}()

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		ln.Close()
		s := <-done
		return hsResult{srvErr: s.err, cliErr: err}
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, cli)
	var r hsResult
	if r.cliErr = tc.Handshake(); r.cliErr == nil {
		cs := tc.ConnectionState()
		r.proto = cs.NegotiatedProtocol
		if r.cliSaw, r.cliErr = PeerIdentity(cs); r.cliErr == nil {
			b := []byte{42}
			if _, r.cliErr = tc.Write(b); r.cliErr == nil {
				_, r.cliErr = io.ReadFull(tc, b)
			}
		}
	}
	tc.Close()
	s := <-done
	r.srvErr, r.srvSaw = s.err, s.id
	return r
}

// wantOK fails t unless both sides of r succeeded.
func (r hsResult) wantOK(t testing.TB) {
	t.Helper()
	if r.srvErr != nil || r.cliErr != nil {
		t.Fatalf("handshake failed: server: %v; client: %v", r.srvErr, r.cliErr)
	}
}
