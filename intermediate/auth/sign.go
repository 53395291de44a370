package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Limits of a signed statement's certificate chain and signature, checked
// before anything is parsed.
const (
	maxChainCerts = 4
	maxCertBytes  = 16 << 10
	maxSigBytes   = 1 << 10
)

// ErrBadSignature marks a signed statement whose chain or signature does
// not verify.
var ErrBadSignature = errors.New("bad signature")

// Sign signs msg with the key of the current certificate and returns the
// certificate chain (DER, leaf first) with the signature. A process that
// acts later on an operator's behalf carries both, and the receiver checks
// them with VerifySigned: the operator's will, not the carrier's
// certificate, authorizes the act. msg should say what it is (a fixed
// prefix naming the statement) so that a signature cannot be taken for
// another statement.
func (m *Material) Sign(msg []byte) (chain [][]byte, sig []byte, err error) {
	cert := m.current().cert
	key, ok := cert.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("sign with %s: the key cannot sign", m.files.Key)
	}
	switch key.Public().(type) {
	case ed25519.PublicKey:
		sig, err = key.Sign(rand.Reader, msg, crypto.Hash(0))
	case *rsa.PublicKey:
		d := sha256.Sum256(msg)
		sig, err = key.Sign(rand.Reader, d[:], &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256})
	default:
		d := sha256.Sum256(msg)
		sig, err = key.Sign(rand.Reader, d[:], crypto.SHA256)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("sign with %s: %w", m.files.Key, err)
	}
	for _, c := range cert.Certificate {
		chain = append(chain, append([]byte(nil), c...))
	}
	return chain, sig, nil
}

// VerifySigned checks a statement signed with Sign: the chain must verify
// against the current CA bundle (for client authentication, now), and sig
// must be its leaf's signature of msg. It returns the signer's identity;
// the caller decides whether that identity may make the statement.
func (m *Material) VerifySigned(chain [][]byte, msg, sig []byte) (Identity, error) {
	switch {
	case len(chain) == 0:
		return Identity{}, fmt.Errorf("%w: no certificate", ErrBadSignature)
	case len(chain) > maxChainCerts:
		return Identity{}, fmt.Errorf("%w: %d certificates, at most %d", ErrBadSignature, len(chain), maxChainCerts)
	case len(sig) == 0 || len(sig) > maxSigBytes:
		return Identity{}, fmt.Errorf("%w: signature of %d bytes", ErrBadSignature, len(sig))
	}
	var certs []*x509.Certificate
	for i, der := range chain {
		if len(der) > maxCertBytes {
			return Identity{}, fmt.Errorf("%w: certificate %d is %d bytes", ErrBadSignature, i, len(der))
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return Identity{}, fmt.Errorf("%w: certificate %d: %w", ErrBadSignature, i, err)
		}
		certs = append(certs, c)
	}
	leaf := certs[0]
	intermediates := x509.NewCertPool()
	for _, c := range certs[1:] {
		intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         m.current().pool,
		Intermediates: intermediates,
		CurrentTime:   time.Now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return Identity{}, fmt.Errorf("%w: certificate %q: %w", ErrBadSignature, leaf.Subject.CommonName, err)
	}
	var err error
	switch pub := leaf.PublicKey.(type) {
	case ed25519.PublicKey:
		if !ed25519.Verify(pub, msg, sig) {
			err = errors.New("ed25519 signature does not match")
		}
	case *rsa.PublicKey:
		d := sha256.Sum256(msg)
		err = rsa.VerifyPSS(pub, crypto.SHA256, d[:], sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		if !ecdsa.VerifyASN1(pub, d[:], sig) {
			err = errors.New("ecdsa signature does not match")
		}
	default:
		err = fmt.Errorf("unsupported key type %T", pub)
	}
	if err != nil {
		return Identity{}, fmt.Errorf("%w: signed by %q: %w", ErrBadSignature, leaf.Subject.CommonName, err)
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	return id, nil
}
