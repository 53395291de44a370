package intermediate_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// testPKI issues certificates from a CA made for the test.
type testPKI struct {
	t   *testing.T
	dir string
	ca  *auth.CA
}

func newTestPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	ca, err := auth.NewCA(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{t: t, dir: t.TempDir(), ca: ca}
	if err := auth.WriteFile(filepath.Join(p.dir, "ca.pem"), ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// material issues a certificate named name with grants (like
// "primary/a") and loads it.
func (p *testPKI) material(name string, grants ...string) *auth.Material {
	p.t.Helper()
	var gs []auth.Grant
	for _, s := range grants {
		g, err := auth.ParseGrant(s)
		if err != nil {
			p.t.Fatal(err)
		}
		gs = append(gs, g)
	}
	certPEM, keyPEM, err := p.ca.Issue(name, gs, time.Hour)
	if err != nil {
		p.t.Fatal(err)
	}
	f := auth.Files{Cert: filepath.Join(p.dir, name+".pem"), Key: filepath.Join(p.dir, name+".key"), CA: filepath.Join(p.dir, "ca.pem")}
	if err := auth.WriteFile(f.Key, keyPEM, 0o600); err != nil {
		p.t.Fatal(err)
	}
	if err := auth.WriteFile(f.Cert, certPEM, 0o644); err != nil {
		p.t.Fatal(err)
	}
	m, err := auth.Load(f, nil)
	if err != nil {
		p.t.Fatal(err)
	}
	return m
}

// rawStub dials addr with creds and returns the wire stub.
func rawStub(t *testing.T, addr string, creds credentials.TransportCredentials) wire.IntermediateClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return wire.NewIntermediateClient(cc)
}

// callAll calls every RPC of the service on stub as an attacker would for
// volume a, and returns each call's error by method.
func callAll(ctx context.Context, stub wire.IntermediateClient) map[string]error {
	errs := map[string]error{}
	first := func(err error, recv func() error) error {
		if err != nil {
			return err
		}
		return recv()
	}
	errs["Status"] = func() error { _, err := stub.Status(ctx, &wire.StatusRequest{}); return err }()
	errs["Submit"] = func() error {
		s, err := stub.Submit(ctx)
		if err != nil {
			return err
		}
		if err := s.Send(&wire.SubmitRequest{Msg: &wire.SubmitRequest_Open{Open: &wire.SubmitOpen{Group: "default", Volume: "a", Epoch: 1, BlockCount: 16}}}); err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}()
	errs["Fetch"] = func() error {
		s, err := stub.Fetch(ctx, &wire.FetchRequest{Group: "default", Volume: "a"})
		return first(err, func() error { _, err := s.Recv(); return err })
	}()
	errs["ReadVolume"] = func() error {
		s, err := stub.ReadVolume(ctx, &wire.ReadVolumeRequest{Group: "default", Volume: "a"})
		return first(err, func() error { _, err := s.Recv(); return err })
	}()
	errs["Coordinate"] = func() error {
		s, err := stub.Coordinate(ctx)
		if err != nil {
			return err
		}
		if err := s.Send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Hello{Hello: &wire.SecondaryHello{
			Group: "default", Secondary: "evil", Volume: "a", Addr: "127.0.0.1:1"}}}); err != nil {
			return err
		}
		_, err = s.Recv()
		return err
	}()
	errs["Join"] = func() error {
		_, err := stub.Join(ctx, &wire.JoinRequest{Id: "i9", RaftAddr: "127.0.0.1:1"})
		return err
	}()
	errs["Remove"] = func() error { _, err := stub.Remove(ctx, &wire.RemoveRequest{Id: "i2"}); return err }()
	errs["RemoveSecondary"] = func() error {
		_, err := stub.RemoveSecondary(ctx, &wire.RemoveSecondaryRequest{Group: "default", Id: "a"})
		return err
	}()
	errs["Promote"] = func() error {
		_, err := stub.Promote(ctx, &wire.PromoteRequest{Group: "default", PromotionId: "p-evil", By: "evil"})
		return err
	}()
	errs["Failback"] = func() error {
		_, err := stub.Failback(ctx, &wire.FailbackRequest{Group: "default", Secondary: "evil", Volume: "a"})
		return err
	}()
	return errs
}

// TestTLSClusterAuthorization runs a three-node cluster with TLS on every
// link (Raft too) and checks that callers without a certificate, with one
// from another CA, or with one for another volume are refused on every
// endpoint, and that nothing changes.
func TestTLSClusterAuthorization(t *testing.T) {
	pki := newTestPKI(t, "test CA")
	other := newTestPKI(t, "other CA")
	reg := prometheus.NewRegistry()
	c := newTestCluster(t, 3, nil)
	for _, tn := range c.nodes {
		cfg := c.config(tn)
		cfg.TLS = pki.material(tn.id, "intermediate/"+tn.id)
		if tn.id == "i1" {
			cfg.Metrics = reg
		}
		c.startWith(tn, cfg)
	}
	c.leader(20 * time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	prim := pki.material("pri", "primary/a")
	cl, err := client.New(client.Config{Addrs: c.addrs(), TLS: prim.ClientConfig(auth.RoleIntermediate), Logger: c.logger})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	v, err := cl.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 1, BlockCount: 16})
	if err != nil {
		t.Fatalf("open volume a with its primary's certificate: %v", err)
	}
	for i := range 10 {
		if _, err := v.Submit(ctx, []*wire.Block{{Index: uint64(i), Data: blockData("a", 0, i)}}); err != nil {
			t.Fatal(err)
		}
	}
	v.Close()
	c.waitConverged(30 * time.Second) // Raft carried the batches over TLS
	before := c.nodes[0].node.FSM().Stats()

	// The primary of a may not open b.
	if _, err := cl.OpenVolume(ctx, client.VolumeOptions{Name: "b", Epoch: 1, BlockCount: 16}); !errors.Is(err, wire.ErrPermissionDenied) {
		t.Errorf("primary/a opening volume b: %v, want permission denied", err)
	}

	leaderAddr := c.leader(10 * time.Second).clientAddr
	wrongVolume := pki.material("wrong", "primary/b", "secondary/c")
	for _, tc := range []struct {
		name  string
		creds credentials.TransportCredentials
		// denied: the call reaches the node and is refused by its grants;
		// else the connection itself is refused.
		denied bool
	}{
		{"no TLS", insecure.NewCredentials(), false},
		{"no certificate", credentials.NewTLS(noCertConfig()), false},
		{"another CA", credentials.NewTLS(other.material("pri", "primary/a", "secondary/a", "admin/x").ClientConfig(auth.RoleIntermediate)), false},
		{"wrong volume", credentials.NewTLS(wrongVolume.ClientConfig(auth.RoleIntermediate)), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
			defer ccancel()
			errs := callAll(cctx, rawStub(t, leaderAddr, tc.creds))
			for method, err := range errs {
				switch {
				case tc.denied && method == "Status":
					if err != nil {
						t.Errorf("%s: %v (any certificate of the CA may ask the status)", method, err)
					}
				case tc.denied:
					if status.Code(err) != codes.PermissionDenied || !errors.Is(wire.FromStatus(err), wire.ErrPermissionDenied) {
						t.Errorf("%s: %v, want permission denied", method, err)
					} else if !strings.Contains(err.Error(), `"wrong"`) {
						t.Errorf("%s: %v: the refusal does not name the caller", method, err)
					}
				default:
					if status.Code(err) != codes.Unavailable {
						t.Errorf("%s: %v, want the connection refused (unavailable)", method, err)
					}
				}
			}
		})
	}

	// Raft: only intermediate nodes of the CA.
	raftAddr := c.nodes[0].raftAddr
	for _, tc := range []struct {
		name string
		cfg  *tls.Config
	}{
		{"primary certificate", prim.ClientConfig(auth.RoleIntermediate)},
		{"another CA", other.material("i9", "intermediate/i9").ClientConfig(auth.RoleIntermediate)},
		{"no TLS", nil},
	} {
		was := refusedCount(t, reg, "raft_handshake")
		if err := raftExchange(raftAddr, tc.cfg); err == nil {
			t.Errorf("raft connection with %s was served", tc.name)
		}
		waitFor(t, 5*time.Second, "the refused raft connection counted", func() bool {
			return refusedCount(t, reg, "raft_handshake") == was+1
		})
	}
	// A node's own certificate is served (the exchange waits for the rest
	// of the request).
	if err := raftExchange(raftAddr, pki.material("i2b", "intermediate/i2").ClientConfig(auth.RoleIntermediate)); err != nil {
		t.Errorf("raft connection with a node's certificate: %v", err)
	}

	c.waitConverged(30 * time.Second)
	after := c.nodes[0].node.FSM().Stats()
	if after.CommittedSeq != before.CommittedSeq {
		t.Errorf("committed seq moved from %d to %d during the refused calls", before.CommittedSeq, after.CommittedSeq)
	}
	if n := len(c.nodes[0].node.FSM().Secondaries()); n != 0 {
		t.Errorf("%d secondaries registered by refused calls", n)
	}
	cf := c.nodes[0].node.Raft().GetConfiguration()
	if err := cf.Error(); err != nil {
		t.Fatal(err)
	}
	if n := len(cf.Configuration().Servers); n != 3 {
		t.Errorf("cluster has %d members after refused joins and removes, want 3", n)
	}
	if n, err := testutil.GatherAndCount(reg, "tricopy_intermediate_auth_refused_total"); err != nil || n == 0 {
		t.Errorf("tricopy_intermediate_auth_refused_total: %d series, %v", n, err)
	}

	// A secondary records a promotion an admin made without the
	// intermediate: only with the admin's signature of exactly that
	// promotion.
	admin := pki.material("ops", "admin/ops")
	sec := pki.material("far", "secondary/a", "primary/a")
	scl, err := client.New(client.Config{Addrs: c.addrs(), Group: "default", TLS: sec.ClientConfig(auth.RoleIntermediate), Logger: c.logger})
	if err != nil {
		t.Fatal(err)
	}
	defer scl.Close()
	n := after.CommittedSeq
	proof := func(m *auth.Material, id, by string, at uint64) *wire.AdminProof {
		chain, sig, err := m.Sign(wire.PromotionStatement("default", id, by, at))
		if err != nil {
			t.Fatal(err)
		}
		return &wire.AdminProof{Chain: chain, Signature: sig}
	}
	for name, p := range map[string]*wire.AdminProof{
		"no proof":                nil,
		"signed by a non-admin":   proof(sec, "p-1", "far host", n),
		"signed for another seq":  proof(admin, "p-1", "far host", n-1),
		"signed for another id":   proof(admin, "p-2", "far host", n),
		"signed by another CA":    proof(other.material("ops", "admin/ops"), "p-1", "far host", n),
		"signed for another host": proof(admin, "p-1", "near host", n),
	} {
		if _, err := scl.PromoteAtFor(ctx, "p-1", "far host", n, 1, p); !errors.Is(err, wire.ErrPermissionDenied) {
			t.Errorf("promote with %s: %v, want permission denied", name, err)
		}
	}
	if st := c.nodes[0].node.FSM().Stats(); st.CommittedSeq != n {
		t.Fatalf("refused promotions moved the committed seq to %d", st.CommittedSeq)
	}
	resp, err := scl.PromoteAtFor(ctx, "p-1", "far host", n, 1, proof(admin, "p-1", "far host", n))
	if err != nil {
		t.Fatalf("promote with the admin's signature: %v", err)
	}
	if len(resp.GetVolumes()) != 1 || resp.GetVolumes()[0].GetEpoch() != 2 {
		t.Errorf("signed promotion: %v, want volume a at epoch 2", resp)
	}
}

// refusedCount is the value of tricopy_intermediate_auth_refused_total
// for method in reg.
func refusedCount(t *testing.T, reg *prometheus.Registry, method string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tricopy_intermediate_auth_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "method" && l.GetValue() == method {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// noCertConfig is a TLS client that trusts any server and presents no
// certificate.
func noCertConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true} //nolint:gosec // the attacker's side
}

// raftExchange connects to a Raft transport (with TLS when cfg is set),
// sends a request header and reads an answer; a refused connection is an
// error.
func raftExchange(addr string, cfg *tls.Config) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	var c net.Conn = conn
	if cfg != nil {
		tc := tls.Client(conn, cfg)
		if err := tc.Handshake(); err != nil {
			return err
		}
		c = tc
	}
	// rpcAppendEntries with a truncated msgpack body: a served connection
	// answers or waits; a refused one is closed with an error.
	if _, err := c.Write([]byte{0, 0x80, 0, 0, 0, 0, 0, 0}); err != nil {
		return err
	}
	buf := make([]byte, 1)
	_, err = c.Read(buf)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return nil // the transport waits for the rest of the request: served
	}
	if err == nil {
		return nil
	}
	return err
}
