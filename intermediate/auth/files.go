package auth

import (
	"fmt"
	"strings"
)

// Files names the three PEM files of a TLS setup (the --tls-cert, --tls-key
// and --tls-ca keys).
type Files struct {
	// Cert is the certificate chain: the leaf first, then any intermediate
	// CA certificates.
	Cert string
	// Key is the private key of the leaf certificate (PKCS#8, SEC 1 or
	// PKCS#1; ECDSA, Ed25519 or RSA).
	Key string
	// CA is the CA bundle, one or more CA certificates; peers must verify
	// against one of them.
	CA string
}

// Enabled reports whether all three files are set.
func (f Files) Enabled() bool {
	return f.Cert != "" && f.Key != "" && f.CA != ""
}

// Check returns nil when all three files or none are set, and else an error
// naming the keys that are set and the ones missing.
func (f Files) Check() error {
	var set, missing []string
	for _, k := range []struct {
		key, value string
	}{{"tls-cert", f.Cert}, {"tls-key", f.Key}, {"tls-ca", f.CA}} {
		if k.value != "" {
			set = append(set, k.key)
		} else {
			missing = append(missing, k.key)
		}
	}
	if len(set) == 0 || len(missing) == 0 {
		return nil
	}
	return fmt.Errorf("TLS is partly configured: %s %s set, %s %s not; set all three or none",
		strings.Join(set, " and "), isAre(set), strings.Join(missing, " and "), isAre(missing))
}

func isAre(keys []string) string {
	if len(keys) == 1 {
		return "is"
	}
	return "are"
}
