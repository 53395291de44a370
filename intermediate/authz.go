package intermediate

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// Log keys of the authorization checks.
const (
	logKeyIdentity = "identity"
	logKeyMethod   = "method"
	logKeyNeed     = "need"
)

// Who may call what when the node runs with TLS (Config.TLS). Without TLS
// every caller may call everything: the deployment has chosen plain TCP.
//
//	Submit                     primary/VOLUME of the stream's volume
//	Fetch, ReadVolume          primary/VOLUME or secondary/VOLUME
//	Coordinate                 secondary/VOLUME of the hello's volume
//	ReadRegions                secondary/VOLUME of the secondary's volume, or admin
//	Failback                   secondary/VOLUME of the request's volume, or admin
//	Promote                    admin, or any caller carrying an admin's
//	                           signature of exactly this promotion (a promoted
//	                           secondary recording the promotion an admin made
//	                           without the intermediate)
//	Join                       admin, or intermediate/ID joining itself as ID
//	Remove, RemoveSecondary    admin
//	Status                     any certificate of the CA

// callerIdentity returns the identity of the certificate of the gRPC
// caller of ctx.
func callerIdentity(ctx context.Context) (auth.Identity, string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return auth.Identity{}, "", fmt.Errorf("no peer in the call's context")
	}
	addr := ""
	if p.Addr != nil {
		addr = p.Addr.String()
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return auth.Identity{}, addr, fmt.Errorf("the call did not come over TLS")
	}
	id, err := auth.PeerIdentity(info.State)
	return id, addr, err
}

// authorize returns nil when the node runs without TLS or the caller's
// identity passes allowed, else a PERMISSION_DENIED error that says what
// the call needs (need), logged with the caller's identity and counted.
func (n *Node) authorize(ctx context.Context, method, need string, allowed func(auth.Identity) bool) error {
	if n.cfg.TLS == nil {
		return nil
	}
	id, addr, err := callerIdentity(ctx)
	if err == nil && allowed(id) {
		return nil
	}
	who := id.String()
	if err != nil {
		who = "(" + err.Error() + ")"
	}
	n.metrics.authRefused(method)
	n.log.Warn("refused a call: the caller's certificate does not allow it", logKeyMethod, method,
		logKeyIdentity, who, logKeyPeer, addr, logKeyNeed, need)
	return wire.Errorf(wire.ErrorCode_ERROR_CODE_PERMISSION_DENIED, "%s needs a certificate with %s; %s has none", method, need, who)
}

// allowVolume passes an identity holding a grant of one of roles for volume.
func allowVolume(volume string, roles ...auth.Role) func(auth.Identity) bool {
	return func(id auth.Identity) bool {
		for _, r := range roles {
			if id.Has(r, volume) {
				return true
			}
		}
		return false
	}
}

// allowAdmin passes an admin identity, or one that other passes.
func allowAdmin(other func(auth.Identity) bool) func(auth.Identity) bool {
	return func(id auth.Identity) bool {
		return id.HasRole(auth.RoleAdmin) || (other != nil && other(id))
	}
}

// signedByAdmin passes a caller of Promote whose request carries an
// admin's valid signature of this very promotion (its group, ID, by and
// point). The signer is logged: the admin is the one who promoted.
func (n *Node) signedByAdmin(req *wire.PromoteRequest) func(auth.Identity) bool {
	return func(caller auth.Identity) bool {
		p := req.GetAdmin()
		if p == nil {
			return false
		}
		stmt := wire.PromotionStatement(req.GetGroup(), req.GetPromotionId(), req.GetBy(), req.GetAtSeq())
		signer, err := n.cfg.TLS.VerifySigned(p.GetChain(), stmt, p.GetSignature())
		if err != nil {
			n.log.Warn("refused an admin proof of a promotion", logKeyIdentity, caller.String(), logKeyErr, err)
			return false
		}
		if !signer.HasRole(auth.RoleAdmin) {
			n.log.Warn("refused an admin proof of a promotion: the signer holds no admin grant",
				logKeyIdentity, caller.String(), "signer", signer.String())
			return false
		}
		n.log.Info("promotion signed by an admin, recorded for a caller without an admin grant",
			logKeyIdentity, caller.String(), "signer", signer.String(), "promotion", req.GetPromotionId())
		return true
	}
}

// needVolume is the need of a call allowed to roles of volume, for the
// refusal message.
func needVolume(volume string, roles ...auth.Role) string {
	s := ""
	for i, r := range roles {
		if i > 0 {
			s += " or "
		}
		s += auth.Grant{Role: r, Name: volume}.URI().String()
	}
	return s
}

// raftHandshakeTimeout bounds the TLS handshake of a Raft connection.
const raftHandshakeTimeout = 10 * time.Second

// tlsStreamLayer puts TLS under the Raft transport: both ends must hold
// an intermediate/ID grant from the CA.
type tlsStreamLayer struct {
	inner  *streamLayer
	server *tls.Config
	client *tls.Config
	// refused logs and counts a connection refused at its handshake.
	refused func(addr string, err error)
}

// Accept implements raft.StreamLayer. The handshake runs at the
// connection's first read or write (in the transport's goroutine for the
// connection, not in the accept loop), bounded by raftHandshakeTimeout.
func (s *tlsStreamLayer) Accept() (net.Conn, error) {
	c, err := s.inner.Accept()
	if err != nil {
		return nil, err
	}
	return &handshakeConn{Conn: tls.Server(c, s.server), refused: s.refused}, nil
}

// Close implements raft.StreamLayer.
func (s *tlsStreamLayer) Close() error { return s.inner.Close() }

// Addr implements raft.StreamLayer.
func (s *tlsStreamLayer) Addr() net.Addr { return s.inner.Addr() }

// Dial implements raft.StreamLayer: the connection is returned after a
// complete handshake.
func (s *tlsStreamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := s.inner.Dial(addr, timeout)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, s.client)
	ctx, cancel := context.WithTimeout(context.Background(), min(timeout, raftHandshakeTimeout))
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("raft TLS handshake with %s: %w", addr, err)
	}
	return tc, nil
}

// handshakeConn is an accepted Raft connection whose TLS handshake runs
// once, at its first read or write, with a deadline.
type handshakeConn struct {
	*tls.Conn
	refused func(addr string, err error)
	once    sync.Once
	err     error
}

func (c *handshakeConn) handshake() error {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), raftHandshakeTimeout)
		defer cancel()
		if err := c.HandshakeContext(ctx); err != nil {
			c.err = fmt.Errorf("raft TLS handshake with %s: %w", c.RemoteAddr(), err)
			c.refused(c.RemoteAddr().String(), err)
			c.Conn.Close()
		}
	})
	return c.err
}

// Read implements net.Conn.
func (c *handshakeConn) Read(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Read(b)
}

// Write implements net.Conn.
func (c *handshakeConn) Write(b []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

// loggedCreds are gRPC transport credentials that log and count the
// connections refused at the TLS handshake (no certificate, another CA,
// plain TCP), which gRPC itself drops silently.
type loggedCreds struct {
	credentials.TransportCredentials
	refused func(addr string, err error)
}

// ServerHandshake implements credentials.TransportCredentials.
func (c loggedCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	nc, info, err := c.TransportCredentials.ServerHandshake(conn)
	if err != nil {
		c.refused(conn.RemoteAddr().String(), err)
	}
	return nc, info, err
}

// Clone implements credentials.TransportCredentials.
func (c loggedCreds) Clone() credentials.TransportCredentials {
	return loggedCreds{TransportCredentials: c.TransportCredentials.Clone(), refused: c.refused}
}
