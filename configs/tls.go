package configs

import "strings"

// TLS holds the keys of a TLS setup. Every command that talks to another
// process embeds it: with all three keys set, every link it opens or serves
// uses TLS 1.3 with client certificates; with none, plain TCP; anything in
// between is an error (a deployment uses TLS everywhere or nowhere).
type TLS struct {
	// TLSCert is the PEM certificate (chain) this process presents.
	TLSCert string `key:"tls-cert" meta:"FILE" help:"PEM certificate this process presents on every link; its tricopy:// URI SANs say what it may do (see docs/SECURITY.md); with --tls-key and --tls-ca, every link uses TLS 1.3 with client certificates"`
	// TLSKey is the PEM private key of TLSCert.
	TLSKey string `key:"tls-key" meta:"FILE" help:"PEM private key of --tls-cert"`
	// TLSCA is the PEM bundle of the CAs whose certificates are trusted.
	TLSCA string `key:"tls-ca" meta:"FILE" help:"PEM bundle of the CA certificates peers must chain to (old and new during a CA rotation)"`
}

// TLSConfig returns the TLS keys; Load checks them in every configuration
// that embeds TLS.
func (t *TLS) TLSConfig() *TLS { return t }

// TLSEnabled reports whether all three TLS keys are set.
func (t *TLS) TLSEnabled() bool { return t.TLSCert != "" && t.TLSKey != "" && t.TLSCA != "" }

// Validate implements Config: all three keys or none.
func (t *TLS) Validate() error {
	keys := []struct{ key, val string }{{"tls-cert", t.TLSCert}, {"tls-key", t.TLSKey}, {"tls-ca", t.TLSCA}}
	var set, missing []string
	for _, k := range keys {
		if k.val == "" {
			missing = append(missing, k.key)
		} else {
			set = append(set, k.key)
		}
	}
	if len(set) == 0 || len(missing) == 0 {
		return nil
	}
	return Invalid(missing[0], "TLS is partly configured: %s set, %s not; set all three keys or none",
		strings.Join(set, " and "), strings.Join(missing, " and "))
}
