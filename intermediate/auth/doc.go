// Package auth holds the TLS setup of tricopy: TLS 1.3 with client
// certificates on every link (primary to intermediate, secondary to
// intermediate, intermediate to intermediate for Raft, CLI to either), and
// the identities that authorize calls.
//
// # Grants
//
// A certificate carries grants as URI subject alternative names of the form
// tricopy://ROLE/NAME:
//
//   - tricopy://primary/VOLUME – may Submit for VOLUME (and read it back);
//   - tricopy://secondary/VOLUME – may fetch/coordinate/read VOLUME as a
//     secondary;
//   - tricopy://intermediate/NODEID – an intermediate node (Raft transport,
//     may join itself);
//   - tricopy://admin/NAME – an operator: promote, failback, join/remove
//     nodes.
//
// A certificate may hold several grants (a DR-site host may hold both
// secondary/a and primary/a). The subject common name is only a display name
// for logs; it grants nothing. URI SANs with another scheme are ignored. A
// tricopy:// URI that is malformed (unknown role, empty or invalid name,
// extra path segments, a query, fragment, user info or port) makes the whole
// identity invalid: IdentityOf fails, Load refuses such a certificate and a
// handshake with a peer presenting one fails with an error naming the URI.
// Volume names and node ids (the NAME of a grant) are 1 to 64 characters of
// [A-Za-z0-9._-], not starting with '.' or '-'. The CLI writes a grant as
// ROLE/NAME (ParseGrant takes both forms).
//
// # Connections
//
// Load reads the three PEM files named by Files (the --tls-cert, --tls-key
// and --tls-ca keys) into a Material. Material.ServerConfig and
// Material.ClientConfig build the tls.Config of each side: TLS 1.3 only, the
// client must present a certificate that verifies against the CA bundle, and
// the server is verified by chain against the CA bundle and by the role of
// its grants, never by host name (addresses are often IPs and change). The
// server may require a role of its clients (the Raft transport requires
// RoleIntermediate); otherwise the gRPC server authorizes each method with
// the Identity of its caller (PeerIdentity).
//
// # Rotation
//
// A Material looks at its files at most once per DefaultReloadInterval, when
// a handshake needs it, and reloads them when they changed, so certificates
// and CA bundles rotate without a restart: write the new files (WriteFile
// replaces a file atomically) and new connections use them. A CA is rotated by
// bundling the old and the new CA certificate while certificates of both are
// in use. When a reload fails (a half-written pair, an expired certificate)
// the old material stays in use, a warning is logged, and the reload is
// retried at the next check. No goroutine is started: the checks run on the
// goroutines doing handshakes, one at a time; the others meanwhile use the
// current material.
//
// # Issuing
//
// NewCA, LoadCA and CA.Issue make the certificates (ECDSA P-256) for the
// tricopy certs command and for tests.
package auth
