package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// backdate is how long before its issue a certificate becomes valid, to
// allow for clocks running behind.
const backdate = time.Minute

// CA is a certificate authority that issues the certificates of a tricopy
// deployment.
type CA struct {
	// Cert is the self-signed CA certificate.
	Cert *x509.Certificate
	// Key is its private key.
	Key crypto.Signer
}

// NewCA makes a self-signed CA named name (the subject common name): an
// ECDSA P-256 key, usable only to sign certificates and CRLs, with no
// intermediate CA below it, valid from a minute ago for validity.
func NewCA(name string, validity time.Duration) (*CA, error) {
	if validity <= 0 {
		return nil, fmt.Errorf("new CA: validity %v is not positive", validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("new CA: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	notBefore := time.Now().Add(-backdate)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLen:            0,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("new CA: create certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new CA: parse certificate: %w", err)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// LoadCA reads a CA from its PEM certificate and key files (as written by
// CertPEM and KeyPEM). The certificate must be a CA's and the key its own.
func LoadCA(certFile, keyFile string) (*CA, error) {
	data, err := readFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("load CA certificate %q: %w", certFile, err)
	}
	certs, err := parseCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("load CA certificate %q: %w", certFile, err)
	}
	cert := certs[0]
	if !cert.BasicConstraintsValid || !cert.IsCA {
		return nil, fmt.Errorf("load CA certificate %q: %q is not a CA", certFile, cert.Subject.CommonName)
	}
	data, err = readFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("load CA key %q: %w", keyFile, err)
	}
	key, err := parseKey(data)
	if err != nil {
		return nil, fmt.Errorf("load CA key %q: %w", keyFile, err)
	}
	if !matches(cert, key) {
		return nil, fmt.Errorf("load CA key %q: does not match the certificate %q", keyFile, certFile)
	}
	return &CA{Cert: cert, Key: key}, nil
}

// CertPEM returns the CA certificate in PEM, the content of a CA bundle.
func (ca *CA) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}

// KeyPEM returns the CA key in PEM (PKCS#8, "PRIVATE KEY").
func (ca *CA) KeyPEM() ([]byte, error) {
	return marshalKeyPEM(ca.Key)
}

// Issue makes a leaf certificate signed by ca: an ECDSA P-256 key, a random
// 128-bit serial, usable for server and client authentication (digital
// signature), with common name name and one URI SAN per grant, valid from a
// minute ago for validity. It returns the certificate and its key (PKCS#8)
// in PEM. A malformed grant fails with an error wrapping ErrBadGrant. The
// validity is not cut to the CA's: a certificate that outlives its CA stops
// verifying with it.
func (ca *CA) Issue(name string, grants []Grant, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if validity <= 0 {
		return nil, nil, fmt.Errorf("issue %q: validity %v is not positive", name, validity)
	}
	uris := make([]*url.URL, len(grants))
	for i, g := range grants {
		if err := g.Check(); err != nil {
			return nil, nil, fmt.Errorf("issue %q: %w", name, err)
		}
		uris[i] = g.URI()
	}
	return ca.issue(name, nil, time.Now().Add(-backdate), validity, func(c *x509.Certificate) { c.URIs = uris })
}

// issue makes a leaf certificate for key (a new ECDSA P-256 key if nil),
// valid from notBefore for validity; edit, unless nil, may change the
// template before it is signed.
func (ca *CA) issue(name string, key crypto.Signer, notBefore time.Time, validity time.Duration, edit func(*x509.Certificate)) (certPEM, keyPEM []byte, err error) {
	if key == nil {
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, fmt.Errorf("issue %q: generate key: %w", name, err)
		}
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("issue %q: %w", name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             notBefore,
		NotAfter:              notBefore.Add(validity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	if edit != nil {
		edit(tmpl)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %q: create certificate: %w", name, err)
	}
	kp, err := marshalKeyPEM(key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %q: %w", name, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), kp, nil
}

// newSerial returns a random positive 128-bit serial number.
func newSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("generate serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func marshalKeyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WriteFile writes data to path atomically: to a temporary file in the same
// directory, synced, then renamed over path, and the directory synced. The
// file gets mode (use 0600 for keys, 0644 for certificates) whatever the
// umask. A Material watching path sees either the old or the new content.
func WriteFile(path string, data []byte, mode os.FileMode) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return fmt.Errorf("write %q: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("write %q: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %q: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %q: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %q: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %q: %w", path, err)
	}
	if err := syncDir(dir); err != nil {
		return fmt.Errorf("write %q: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	return nil
}
