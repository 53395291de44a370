package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// tlsPKI is a directory made by `tricopy certs`: the CA (ca.pem) and the
// certificates NAME.pem with their keys NAME.key.
type tlsPKI struct{ dir string }

// makeCerts runs `tricopy certs --dir dir` with args and returns the
// directory's PKI.
func makeCerts(t testing.TB, dir string, args ...string) tlsPKI {
	t.Helper()
	out := run(t, "", tricopyBin, append([]string{"certs", "--dir", dir, "--log-format", "text"}, args...)...)
	t.Logf("tricopy certs --dir %s %s:\n%s", filepath.Base(dir), strings.Join(args, " "), strings.TrimSpace(out))
	return tlsPKI{dir: dir}
}

// files returns the files of the certificate name.
func (p tlsPKI) files(name string) auth.Files {
	return auth.Files{Cert: filepath.Join(p.dir, name+".pem"), Key: filepath.Join(p.dir, name+".key"), CA: filepath.Join(p.dir, "ca.pem")}
}

// flags returns the --tls-* flags of a process holding the certificate name.
func (p tlsPKI) flags(name string) []string {
	f := p.files(name)
	return []string{"--tls-cert", f.Cert, "--tls-key", f.Key, "--tls-ca", f.CA}
}

// material loads the certificate name with the CA of p.
func (p tlsPKI) material(t testing.TB, name string) *auth.Material {
	t.Helper()
	m, err := auth.Load(p.files(name), nil)
	if err != nil {
		t.Fatalf("load certificate %s: %v", name, err)
	}
	return m
}

// rogueConfig is a TLS client that presents the certificate name of p
// (whatever CA signed it) and trusts any server: an attacker's side, which
// wants to see the server refuse it rather than refuse the server itself.
func (p tlsPKI) rogueConfig(t testing.TB, name string) *tls.Config {
	t.Helper()
	f := p.files(name)
	kp, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		t.Fatalf("load key pair %s: %v", name, err)
	}
	return &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, Certificates: []tls.Certificate{kp}} //nolint:gosec // the attacker's side
}

// noCertConfig is a TLS client that presents no certificate and trusts any
// server.
func noCertConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true} //nolint:gosec // the attacker's side
}

// tlsStatusDoc is the part of `tricopy status --json` the TLS tests read.
type tlsStatusDoc struct {
	Leader       string      `json:"leader"`
	CommittedSeq uint64      `json:"committed_seq"`
	ValidatedSeq uint64      `json:"validated_seq"`
	Volumes      []tlsVolume `json:"volumes"`
	Nodes        []struct {
		ID           string `json:"id"`
		Reachable    bool   `json:"reachable"`
		CommittedSeq uint64 `json:"committed_seq"`
	} `json:"nodes"`
	Healthy  bool     `json:"healthy"`
	Problems []string `json:"problems"`
}

// tlsVolume is one volume of tlsStatusDoc.
type tlsVolume struct {
	Name        string `json:"name"`
	State       string `json:"state"`
	Epoch       uint64 `json:"epoch"`
	Secondaries []struct {
		ID         string `json:"id"`
		State      string `json:"state"`
		Connected  bool   `json:"connected"`
		AppliedSeq uint64 `json:"applied_seq"`
	} `json:"secondaries"`
	Promotions []struct {
		PromotionID string `json:"promotion_id"`
	} `json:"promotions"`
}

// volumeState returns the state and epoch of volume name in d, and the
// state of its secondary id ("" when missing).
func (d tlsStatusDoc) volumeState(name, id string) (state string, epoch uint64, secState string) {
	for _, v := range d.Volumes {
		if v.Name != name {
			continue
		}
		for _, s := range v.Secondaries {
			if s.ID == id {
				secState = s.State
			}
		}
		return v.State, v.Epoch, secState
	}
	return "", 0, ""
}

// hasVolume reports whether d lists volume name.
func (d tlsStatusDoc) hasVolume(name string) bool {
	return slices.ContainsFunc(d.Volumes, func(v tlsVolume) bool { return v.Name == name })
}

// tlsStatus runs `tricopy status --json` with the TLS flags and returns its
// document and exit code.
func tlsStatus(t testing.TB, addrs, flags []string) (tlsStatusDoc, int) {
	t.Helper()
	out, code := statusExit(t, addrs, append([]string{"--json"}, flags...)...)
	var doc tlsStatusDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("tricopy status --json (exit %d): %v\n%s", code, err, clip(out))
	}
	return doc, code
}

// pollTLSStatus polls tlsStatus until cond holds, failing t after timeout
// with the last document.
func pollTLSStatus(t testing.TB, timeout time.Duration, what string, addrs, flags []string, cond func(tlsStatusDoc, int) bool) tlsStatusDoc {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		doc, code := tlsStatus(t, addrs, flags)
		if cond(doc, code) {
			return doc
		}
		if time.Now().After(deadline) {
			js, _ := json.MarshalIndent(doc, "", "  ")
			t.Fatalf("timed out after %v waiting for %s; last status (exit %d):\n%s", timeout, what, code, js)
		}
		time.Sleep(statusPoll)
	}
}

// tlsWait runs `tricopy wait` with the TLS flags and fails t unless it
// exits 0.
func tlsWait(t testing.TB, addrs, flags []string) {
	t.Helper()
	args := append([]string{"wait", "--intermediate", strings.Join(addrs, ","), "--timeout", "60s", "--log-format", "text"}, flags...)
	t.Logf("tricopy wait: %s", strings.TrimSpace(run(t, "", tricopyBin, args...)))
}

// startTLSIntermediates starts n intermediate nodes with their data under
// base, each with its certificate intermediate-ID of pki and a metrics
// listener: one single-node cluster for n == 1, a bootstrapped --cluster
// of n nodes otherwise. It returns the nodes and their metrics addresses
// once every node serves and status (asked with the flags admin) shows a
// leader.
func startTLSIntermediates(t *testing.T, base string, n int, pki tlsPKI, admin []string) ([]*interNode, []string) {
	t.Helper()
	var nodes []*interNode
	var cluster, metrics []string
	for i := 1; i <= n; i++ {
		nd := &interNode{id: fmt.Sprintf("i%d", i), listen: freeAddr(t), raft: freeAddr(t)}
		nd.data = filepath.Join(base, nd.id)
		nodes = append(nodes, nd)
		cluster = append(cluster, nd.id+"="+nd.raft)
		metrics = append(metrics, freeAddr(t))
	}
	for i, nd := range nodes {
		args := []string{"intermediate", "--node", nd.id, "--data", nd.data, "--listen", nd.listen, "--raft", nd.raft,
			"--metrics", metrics[i], "--log-format", "text"}
		args = append(args, pki.flags("intermediate-"+nd.id)...)
		if n > 1 {
			args = append(args, "--cluster", strings.Join(cluster, ","))
		}
		nd.p = startProcess(t, nd.id, "serving at", args...)
	}
	pollTLSStatus(t, 60*time.Second, "an intermediate leader", nodeAddrs(nodes), admin, func(d tlsStatusDoc, _ int) bool { return d.Leader != "" })
	return nodes, metrics
}

// tricopyExit runs `tricopy args...` (at most 30 s) and returns its
// outputs and exit code.
func tricopyExit(t testing.TB, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, tricopyBin, args...)
	cmd.Env = childEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("tricopy %s: %v\nstderr:\n%s", strings.Join(args, " "), err, clip(errb.String()))
	}
	return out.String(), errb.String(), code
}

// dirDigest returns a digest of the names and contents of the files under
// dir.
func dirDigest(t testing.TB, dir string) string {
	t.Helper()
	h := sha256.New()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		rel, _ := filepath.Rel(dir, p)
		fmt.Fprintf(h, "%s\x00", rel)
		_, err = io.Copy(h, f)
		return err
	})
	if err != nil {
		t.Fatalf("digest %s: %v", dir, err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// stableDigests returns the digests of dirs once two in a row, half a
// second apart, are the same (the nodes' appliers are done).
func stableDigests(t testing.TB, dirs []string) []string {
	t.Helper()
	digests := func() []string {
		var ds []string
		for _, d := range dirs {
			ds = append(ds, dirDigest(t, d))
		}
		return ds
	}
	prev := digests()
	deadline := time.Now().Add(30 * time.Second)
	for {
		time.Sleep(500 * time.Millisecond)
		cur := digests()
		if slices.Equal(prev, cur) {
			return cur
		}
		if time.Now().After(deadline) {
			t.Fatalf("the intermediate volumes %v keep changing with nothing written", dirs)
		}
		prev = cur
	}
}

// sameTree fails t unless the files of got and want are the same; what
// names the comparison.
func sameTree(t testing.TB, what string, got, want map[string][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d files, want %d", what, len(got), len(want))
	}
	for name, data := range want {
		if g, ok := got[name]; !ok {
			t.Errorf("%s: %s missing", what, name)
		} else if !bytes.Equal(g, data) {
			t.Errorf("%s: %s: %d bytes, want %d (first difference at %d)", what, name, len(g), len(data), firstDiff(g, data))
		}
	}
}

// sumSeries returns the sum of the samples of metric (any labels) in m,
// and whether there is one.
func sumSeries(m map[string]float64, metric string) (float64, bool) {
	var sum float64
	found := false
	for series, v := range m {
		if series == metric || strings.HasPrefix(series, metric+"{") {
			sum += v
			found = true
		}
	}
	return sum, found
}

// logLines returns the lines of log that contain every one of subs.
func logLines(log string, subs ...string) []string {
	var out []string
	for line := range strings.Lines(log) {
		ok := true
		for _, s := range subs {
			if !strings.Contains(line, s) {
				ok = false
				break
			}
		}
		if ok {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// attacker is a client of the TLS deployment that must be refused.
type attacker struct {
	name string
	// creds are its gRPC transport credentials.
	creds credentials.TransportCredentials
	// raft is its TLS configuration for the Raft port (nil: plain TCP): it
	// presents its certificate, if any, and does not verify the server, so
	// that the server is the one to refuse.
	raft *tls.Config
	// tls is its TLS configuration for the admin API; nil: plain HTTP.
	tls *tls.Config
	// denied: it holds a certificate of the deployment's CA, so its
	// connections are served and its calls refused one by one by their
	// grants; otherwise its connections are refused at the handshake.
	denied bool
	// identity is the certificate name the refusals must name (denied
	// only).
	identity string
}

// grpcAttacks calls every method of the intermediate service at addr as
// the attacker, for volume a, and returns each call's error by method.
// joinRaft is the Raft address a Join names.
func grpcAttacks(ctx context.Context, t testing.TB, addr string, creds credentials.TransportCredentials, joinRaft string) map[string]error {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	stub := wire.NewIntermediateClient(cc)
	errs := map[string]error{}
	recvFirst := func(err error, recv func() error) error {
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
		open := &wire.SubmitOpen{Group: "default", Volume: "a", Epoch: 1, BlockCount: 8192}
		if err := s.Send(&wire.SubmitRequest{Msg: &wire.SubmitRequest_Open{Open: open}}); err != nil {
			_, err = s.Recv() // the status says why the stream ended
			return err
		}
		_, err = s.Recv()
		return err
	}()
	errs["Fetch"] = func() error {
		s, err := stub.Fetch(ctx, &wire.FetchRequest{Group: "default", Volume: "a"})
		return recvFirst(err, func() error { _, err := s.Recv(); return err })
	}()
	errs["ReadVolume"] = func() error {
		s, err := stub.ReadVolume(ctx, &wire.ReadVolumeRequest{Group: "default", Volume: "a"})
		return recvFirst(err, func() error { _, err := s.Recv(); return err })
	}()
	errs["ReadRegions"] = func() error {
		s, err := stub.ReadRegions(ctx, &wire.ReadRegionsRequest{Group: "default", Secondary: "a"})
		return recvFirst(err, func() error { _, err := s.Recv(); return err })
	}()
	errs["Coordinate"] = func() error {
		s, err := stub.Coordinate(ctx)
		if err != nil {
			return err
		}
		hello := &wire.SecondaryHello{Group: "default", Secondary: "evil", Volume: "a", Addr: "127.0.0.1:1"}
		if err := s.Send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Hello{Hello: hello}}); err != nil {
			_, err = s.Recv()
			return err
		}
		_, err = s.Recv()
		return err
	}()
	errs["Promote"] = func() error {
		_, err := stub.Promote(ctx, &wire.PromoteRequest{Group: "default", PromotionId: "p-evil", By: "evil"})
		return err
	}()
	errs["Failback"] = func() error {
		_, err := stub.Failback(ctx, &wire.FailbackRequest{Group: "default", Secondary: "a", Volume: "a"})
		return err
	}()
	errs["Join"] = func() error { _, err := stub.Join(ctx, &wire.JoinRequest{Id: "i9", RaftAddr: joinRaft}); return err }()
	errs["Remove"] = func() error { _, err := stub.Remove(ctx, &wire.RemoveRequest{Id: "i3"}); return err }()
	errs["RemoveSecondary"] = func() error {
		_, err := stub.RemoveSecondary(ctx, &wire.RemoveSecondaryRequest{Group: "default", Id: "a"})
		return err
	}()
	return errs
}

// raftProbe connects to a Raft transport (with TLS when cfg is set), sends
// the start of an AppendEntries request and reads. It returns nil when the
// connection is served (the transport waits for the rest of the request)
// and the error that refused it otherwise.
func raftProbe(addr string, cfg *tls.Config) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	var c net.Conn = conn
	if cfg != nil {
		tc := tls.Client(conn, cfg)
		if err := tc.Handshake(); err != nil {
			return fmt.Errorf("handshake: %w", err)
		}
		c = tc
	}
	// rpcAppendEntries and the start of a msgpack map.
	if _, err := c.Write([]byte{0, 0x80, 0, 0, 0, 0, 0, 0}); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	_, err = c.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		return nil
	}
	return fmt.Errorf("read: %w", err)
}

// adminAnswer is the answer of a secondary's admin API to one request.
type adminAnswer struct {
	code int    // HTTP status, 0 when the request failed
	body string // the answer's start
	err  error
}

func (a adminAnswer) String() string {
	if a.err != nil {
		return a.err.Error()
	}
	body := strings.Join(strings.Fields(a.body), " ")
	if len(body) > 200 {
		body = body[:200] + "..."
	}
	return fmt.Sprintf("%d %s", a.code, body)
}

// adminClient is an HTTP client of a secondary's admin API: HTTPS with cfg,
// plain HTTP without.
func adminClient(cfg *tls.Config) *http.Client {
	return &http.Client{
		Timeout:       10 * time.Second,
		Transport:     &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// adminCall sends method path (with body, if not nil, as JSON) to the
// admin API at addr with hc; HTTPS when https.
func adminCall(ctx context.Context, hc *http.Client, https bool, method, addr, path string, body []byte) adminAnswer {
	scheme := "http"
	if https {
		scheme = "https"
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, scheme+"://"+addr+path, rd)
	if err != nil {
		return adminAnswer{err: err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := hc.Do(req)
	if err != nil {
		return adminAnswer{err: err}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return adminAnswer{code: resp.StatusCode, body: string(b)}
}

// adminRequests are the requests to a secondary's admin API that the
// attackers send: status (open to any certificate of the CA) and the
// admin's endpoints.
var adminRequests = []struct {
	name, method, path string
	body               []byte
	admin              bool // needs an admin grant
}{
	{"status", http.MethodGet, "/v1/status", nil, false},
	{"promote", http.MethodPost, "/v1/promote", []byte(`{"id":"p-evil","n":1,"epoch":7,"by":"evil"}`), true},
	{"unapplied", http.MethodGet, "/v1/unapplied", nil, true},
	{"fsck", http.MethodGet, "/v1/fsck", nil, true},
}

// TestTLSDeployment runs a TLS deployment from `tricopy certs`: three
// intermediate nodes (Raft over TLS between the processes), a mirrored
// primary of volume a and its secondary, each with its certificate, and
// checks that it replicates. Then attackers (no TLS, TLS without a
// certificate, a certificate of another CA holding every grant, a valid
// certificate for volume b) call every gRPC method of every node, the Raft
// port of every node, and the secondary's admin API; the CLI is run
// without TLS and with the wrong certificate. Every attempt must be
// refused with a clear error, logged and counted, and nothing may change:
// the committed seq, the trees on both sides, the intermediate volumes'
// files, the secondary in PAIR, three members, the epoch. Last, the admin
// promotes the secondary, which becomes writable.
func TestTLSDeployment(t *testing.T) {
	requireFUSE(t)
	start := time.Now()
	base := t.TempDir()
	pki := makeCerts(t, filepath.Join(base, "certs"), "--nodes", "i1,i2,i3", "--volumes", "a")
	makeCerts(t, pki.dir, "--issue", "wrongvol=primary/b+secondary/b")
	other := makeCerts(t, filepath.Join(base, "other-ca"),
		"--issue", "evil=primary/a+secondary/a+primary/b+secondary/b+intermediate/i1+intermediate/i2+intermediate/i3+admin/admin")
	admin := pki.flags("admin")

	nodes, nodeMetrics := startTLSIntermediates(t, filepath.Join(base, "inter"), 3, pki, admin)
	addrs := nodeAddrs(nodes)
	prim := mirrorSpec{volume: "a", data: filepath.Join(base, "data", "a"), mnt: filepath.Join(base, "primary", "a"),
		addrs: addrs, size: "32MiB", extra: pki.flags("primary")}
	pm := startMirrored(t, prim)
	pollTLSStatus(t, pairTimeout, "volume a in PAIR", addrs, admin, func(d tlsStatusDoc, _ int) bool {
		st, _, _ := d.volumeState("a", "")
		return st == "PAIR"
	})
	secMetrics := freeAddr(t)
	sec := secondarySpec{volume: "a", data: filepath.Join(base, "secdata", "a"), mnt: filepath.Join(base, "secondary", "a"),
		listen: freeAddr(t), addrs: addrs, extra: append(pki.flags("secondary"), "--metrics", secMetrics)}
	sm := startSecondary(t, sec)
	t.Logf("deployment up in %v", time.Since(start).Round(time.Millisecond))

	// Replication over TLS: files written on the primary reach the
	// secondary's mount.
	if err := os.Mkdir(filepath.Join(prim.mnt, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := range 12 {
		name := fmt.Sprintf("d/f%02d", i)
		if err := writeSynced(filepath.Join(prim.mnt, name), fileData(21, name, 1+i*9000)); err != nil {
			t.Fatalf("write %s on the primary: %v", name, err)
		}
	}
	tlsWait(t, addrs, admin)
	primTree := readTree(t, prim.mnt)
	sameTree(t, "the secondary's mount after tricopy wait", readTree(t, sec.mnt), primTree)
	// The secondary's link to the leader may still be coming up (state
	// "" until it says hello): wait for a healthy group.
	before := pollTLSStatus(t, 30*time.Second, "a healthy group (exit 0)", addrs, admin, func(d tlsStatusDoc, code int) bool {
		v, _, s := d.volumeState("a", "a")
		return code == 0 && v == "PAIR" && s == "PAIR"
	})
	vstate, epoch, secState := before.volumeState("a", "a")
	if vstate != "PAIR" || secState != "PAIR" || len(before.Nodes) != 3 || before.Leader == "" {
		t.Fatalf("status with the admin certificate: volume a %q, its secondary %q, %d nodes, leader %q; want PAIR, PAIR, 3 and a leader",
			vstate, secState, len(before.Nodes), before.Leader)
	}
	applied, err := readApplied(sec.mnt)
	if err != nil {
		t.Fatal(err)
	}
	// Every node applied everything (followers too) before the volumes'
	// files are taken as the reference.
	pollTLSStatus(t, 30*time.Second, "every node at the committed seq", addrs, admin, func(d tlsStatusDoc, _ int) bool {
		for _, n := range d.Nodes {
			if !n.Reachable || n.CommittedSeq != before.CommittedSeq {
				return false
			}
		}
		return len(d.Nodes) == 3
	})
	var volDirs []string
	for _, nd := range nodes {
		volDirs = append(volDirs, nd.volumeDir("a"))
	}
	volDigests := stableDigests(t, volDirs)
	t.Logf("before the attacks: committed seq %d, epoch %d, secondary applied %d, %d files", before.CommittedSeq, epoch, applied, len(primTree))

	attackers := []attacker{
		{name: "no TLS", creds: insecure.NewCredentials()},
		{name: "no certificate", creds: credentials.NewTLS(noCertConfig()), raft: noCertConfig(), tls: noCertConfig()},
		{name: "another CA", creds: credentials.NewTLS(other.rogueConfig(t, "evil")), raft: other.rogueConfig(t, "evil"), tls: other.rogueConfig(t, "evil")},
		{name: "wrong volume", creds: credentials.NewTLS(pki.material(t, "wrongvol").ClientConfig(auth.RoleIntermediate)), raft: pki.rogueConfig(t, "wrongvol"),
			tls: pki.material(t, "wrongvol").ClientConfig(auth.RoleSecondary), denied: true, identity: "wrongvol"},
	}
	leader := before.Leader
	attackStart := time.Now()
	for _, a := range attackers {
		t.Run(strings.ReplaceAll(a.name, " ", "_"), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			for _, nd := range nodes {
				cctx, ccancel := context.WithTimeout(ctx, 15*time.Second)
				errs := grpcAttacks(cctx, t, nd.listen, a.creds, freeAddr(t))
				ccancel()
				for _, method := range slices.Sorted(maps.Keys(errs)) {
					err := errs[method]
					switch {
					case a.denied && method == "Status":
						if err != nil {
							t.Errorf("%s %s: %v (any certificate of the CA may ask the status)", nd.id, method, err)
						}
					case a.denied && method == "ReadRegions" && nd.id != leader && errors.Is(wire.FromStatus(err), wire.ErrNotLeader):
						// A follower sends a resync to the leader before it
						// looks the secondary up (and so its volume's grant).
					case a.denied:
						if grpcstatus.Code(err) != codes.PermissionDenied || !errors.Is(wire.FromStatus(err), wire.ErrPermissionDenied) {
							t.Errorf("%s %s: %v; want permission denied", nd.id, method, err)
						} else if !strings.Contains(err.Error(), a.identity) || !strings.Contains(err.Error(), "needs") {
							t.Errorf("%s %s: %v: the refusal does not say who was refused and what is needed", nd.id, method, err)
						}
					default:
						if grpcstatus.Code(err) != codes.Unavailable || grpcstatus.Convert(err).Message() == "" {
							t.Errorf("%s %s: %v; want the connection refused (unavailable)", nd.id, method, err)
						}
					}
					if nd == nodes[0] {
						t.Logf("%s %s: %v", nd.id, method, err)
					}
				}
				err := raftProbe(nd.raft, a.raft)
				t.Logf("%s raft port: %v", nd.id, err)
				if err == nil {
					t.Errorf("%s: the Raft port served a connection of %s", nd.id, a.name)
				}
			}
			hc := adminClient(a.tls)
			for _, r := range adminRequests {
				ans := adminCall(ctx, hc, a.tls != nil, r.method, sec.listen, r.path, r.body)
				t.Logf("admin API %s %s: %v", r.method, r.path, ans)
				switch {
				case a.denied && !r.admin:
					if ans.code != http.StatusOK {
						t.Errorf("admin API %s %s: %v; want 200 (any certificate of the CA may ask the status)", r.method, r.path, ans)
					}
				case a.denied:
					if ans.code != http.StatusForbidden || !strings.Contains(ans.body, "tricopy://admin/NAME") || !strings.Contains(ans.body, a.identity) {
						t.Errorf("admin API %s %s: %v; want 403 naming the admin grant and the caller", r.method, r.path, ans)
					}
				case a.tls == nil:
					// Plain HTTP to the HTTPS listener: Go's server answers 400.
					if ans.err == nil && (ans.code != http.StatusBadRequest || !strings.Contains(ans.body, "HTTPS")) {
						t.Errorf("admin API over plain HTTP %s %s: %v; want 400 or a failure", r.method, r.path, ans)
					}
				default:
					if ans.err == nil {
						t.Errorf("admin API %s %s: %v; want the TLS handshake refused", r.method, r.path, ans)
					}
				}
			}
		})
	}
	// A node's own certificate is served on the Raft port: the probe can
	// tell a served connection from a refused one.
	if err := raftProbe(nodes[0].raft, pki.material(t, "intermediate-i2").ClientConfig(auth.RoleIntermediate)); err != nil {
		t.Errorf("raft port with a node's certificate: %v, want served", err)
	}

	// The CLI: without TLS flags, and with the wrong certificate.
	_, stderr, code := tricopyExit(t, "status", "--intermediate", strings.Join(addrs, ","), "--timeout", "3s", "--log-format", "text")
	t.Logf("tricopy status without TLS: exit %d: %s", code, firstLine(stderr, "tricopy status:"))
	if code == 0 || !strings.Contains(stderr, "tricopy status:") {
		t.Errorf("tricopy status without TLS against the TLS cluster: exit %d, stderr %q; want a failure with an error", code, clip(stderr))
	}
	_, stderr, code = tricopyExit(t, append([]string{"promote", "--secondary", sec.listen, "--log-format", "text"}, pki.flags("wrongvol")...)...)
	t.Logf("tricopy promote with the wrongvol certificate: exit %d: %s", code, firstLine(stderr, "tricopy://"))
	if code != 2 || !strings.Contains(stderr, "tricopy://admin/NAME") {
		t.Errorf("tricopy promote with the wrongvol certificate: exit %d, stderr %q; want 2 naming tricopy://admin/NAME", code, clip(stderr))
	}
	evilMnt := filepath.Join(base, "evil-mnt")
	_, stderr, code = tricopyExit(t, append([]string{"mount", "--volume", "a", "--data", filepath.Join(base, "evil-data"), "--mountpoint", evilMnt,
		"--size", "32MiB", "--intermediate", strings.Join(addrs, ","), "--log-format", "text"}, pki.flags("wrongvol")...)...)
	t.Logf("tricopy mount --volume a with the wrongvol certificate: exit %d: %s", code, firstLine(stderr, "tricopy://"))
	if code != 2 || !strings.Contains(stderr, "tricopy://primary/a") {
		t.Errorf("tricopy mount --volume a with the wrongvol certificate: exit %d, stderr %q; want 2 naming tricopy://primary/a", code, clip(stderr))
	}
	if _, err := os.Stat(evilMnt); err == nil && isMounted(t, evilMnt) {
		t.Errorf("tricopy mount with the wrongvol certificate mounted %s", evilMnt)
		_ = lazyUnmount(evilMnt)
	}
	t.Logf("attacks done in %v", time.Since(attackStart).Round(time.Millisecond))

	// Nothing changed.
	after := pollTLSStatus(t, 30*time.Second, "every node reachable", addrs, admin, func(d tlsStatusDoc, _ int) bool {
		for _, n := range d.Nodes {
			if !n.Reachable {
				return false
			}
		}
		return len(d.Nodes) > 0
	})
	vstate, epochAfter, secState := after.volumeState("a", "a")
	if after.CommittedSeq != before.CommittedSeq || epochAfter != epoch || vstate != "PAIR" || secState != "PAIR" || len(after.Nodes) != 3 {
		t.Errorf("after the attacks: committed seq %d (was %d), epoch %d (was %d), volume a %q, secondary %q, %d members; want all unchanged, PAIR and 3",
			after.CommittedSeq, before.CommittedSeq, epochAfter, epoch, vstate, secState, len(after.Nodes))
	}
	if after.hasVolume("b") {
		t.Errorf("volume b was registered by the attacks")
	}
	for _, v := range after.Volumes {
		for _, s := range v.Secondaries {
			if s.ID != "a" {
				t.Errorf("the attacks registered secondary %q of volume %s", s.ID, v.Name)
			}
		}
		if len(v.Promotions) > 0 {
			t.Errorf("volume %s was promoted by the attacks: %+v", v.Name, v.Promotions)
		}
	}
	if n, err := readApplied(sec.mnt); err != nil || n != applied {
		t.Errorf("the secondary's applied point after the attacks: %d, %v; want %d", n, err, applied)
	}
	sameTree(t, "the primary's tree after the attacks", readTree(t, prim.mnt), primTree)
	sameTree(t, "the secondary's tree after the attacks", readTree(t, sec.mnt), primTree)
	for i, d := range volDirs {
		if got := dirDigest(t, d); got != volDigests[i] {
			t.Errorf("the files of intermediate volume a on %s changed during the attacks", nodes[i].id)
		}
	}

	// The refusals were logged, with the caller, and counted.
	for i, nd := range nodes {
		log := nd.p.stderr.String()
		calls := logLines(log, "refused a call", "wrongvol")
		shakes := logLines(log, "refused a connection at its TLS handshake")
		if len(calls) == 0 || len(shakes) == 0 {
			t.Errorf("%s logged %d refused calls of wrongvol and %d refused handshakes; want some of each", nd.id, len(calls), len(shakes))
		} else if i == 0 {
			t.Logf("%s logged %d refused calls of wrongvol, e.g.\n%s\nand %d refused handshakes, e.g.\n%s", nd.id, len(calls), calls[0], len(shakes), shakes[0])
		}
		m := mustScrape(t, nodeMetrics[i])
		total, _ := sumSeries(m, "tricopy_intermediate_auth_refused_total")
		for _, method := range []string{"Submit", "tls_handshake", "raft_handshake"} {
			if m[`tricopy_intermediate_auth_refused_total{method="`+method+`"}`] == 0 {
				t.Errorf("%s: tricopy_intermediate_auth_refused_total{method=%q} is 0", nd.id, method)
			}
		}
		if i == 0 {
			t.Logf("%s: tricopy_intermediate_auth_refused_total sums to %v", nd.id, total)
		}
	}
	if total, ok := sumSeries(mustScrape(t, secMetrics), "tricopy_secondary_auth_refused_total"); !ok || total == 0 {
		t.Errorf("the secondary's tricopy_secondary_auth_refused_total is %v (exported: %v); want > 0", total, ok)
	}
	if lines := logLines(sm.stderr.String(), "refused an admin API request", "wrongvol"); len(lines) == 0 {
		t.Errorf("the secondary logged no refused admin API request of wrongvol")
	}
	if t.Failed() {
		return
	}

	// The admin promotes the far site (a planned failover: the primary
	// stops first); the secondary's mount becomes writable.
	pm.stop(t)
	doc := promote(t, sec.listen, admin...)
	if !doc.Drained || len(doc.Volumes) != 1 || doc.Volumes[0].Epoch != epoch+1 {
		t.Fatalf("promote with the admin certificate: %+v; want a drained promotion of volume a at epoch %d", doc, epoch+1)
	}
	for name, data := range primTree {
		checkFile(t, filepath.Join(sec.mnt, name), data)
	}
	if err := writeSynced(filepath.Join(sec.mnt, "after-promote"), fileData(21, "after-promote", 50_000)); err != nil {
		t.Fatalf("write on the promoted secondary: %v", err)
	}
	t.Logf("done in %v", time.Since(start).Round(time.Millisecond))
}

// firstLine returns the first line of s holding sub, or "".
func firstLine(s, sub string) string {
	if lines := logLines(s, sub); len(lines) > 0 {
		return lines[0]
	}
	return ""
}

// TestTLSPromoteWithoutIntermediate promotes the far site while the
// intermediate is down, with TLS everywhere: the promoted secondary, whose
// certificate holds no admin grant, records the promotion at the
// intermediate once it is back by carrying the admin's signature, and the
// volume mirrors to it again.
func TestTLSPromoteWithoutIntermediate(t *testing.T) {
	requireFUSE(t)
	base := t.TempDir()
	pki := makeCerts(t, filepath.Join(base, "certs"), "--nodes", "i1", "--volumes", "a")
	admin := pki.flags("admin")
	nodes, _ := startTLSIntermediates(t, filepath.Join(base, "inter"), 1, pki, admin)
	addrs := nodeAddrs(nodes)
	prim := mirrorSpec{volume: "a", data: filepath.Join(base, "data", "a"), mnt: filepath.Join(base, "primary", "a"),
		addrs: addrs, size: "32MiB", extra: pki.flags("primary")}
	pm := startMirrored(t, prim)
	sec := secondarySpec{volume: "a", data: filepath.Join(base, "secdata", "a"), mnt: filepath.Join(base, "secondary", "a"),
		listen: freeAddr(t), addrs: addrs, extra: pki.flags("secondary")}
	sm := startSecondary(t, sec)
	for i := range 5 {
		name := fmt.Sprintf("f%d", i)
		if err := writeSynced(filepath.Join(prim.mnt, name), fileData(31, name, 20_000)); err != nil {
			t.Fatal(err)
		}
	}
	tlsWait(t, addrs, admin)
	pollTLSStatus(t, 30*time.Second, "a healthy group", addrs, admin, func(d tlsStatusDoc, code int) bool {
		v, _, s := d.volumeState("a", "a")
		return code == 0 && v == "PAIR" && s == "PAIR"
	})

	// The disaster: the primary site and the intermediate are gone.
	pm.kill(t)
	nodes[0].p.kill(t)
	doc := promote(t, sec.listen, append(admin, "--intermediate-timeout", "2s")...)
	if doc.Drained || len(doc.Volumes) != 1 || doc.Volumes[0].Epoch != 2 {
		t.Fatalf("promote without the intermediate: %+v; want volume a at epoch 2, not drained", doc)
	}
	if err := writeSynced(filepath.Join(sec.mnt, "after"), fileData(31, "after", 30_000)); err != nil {
		t.Fatalf("write on the promoted volume: %v", err)
	}

	// The intermediate returns: the promoted secondary records the
	// promotion there with the admin's signature, and mirrors again.
	nodes[0].restart(t)
	d := pollTLSStatus(t, 90*time.Second, "volume a at epoch 2 in PAIR at the intermediate", addrs, admin, func(d tlsStatusDoc, _ int) bool {
		v, epoch, _ := d.volumeState("a", "")
		return v == "PAIR" && epoch == 2
	})
	if v := d.Volumes; len(v) != 1 || len(v[0].Promotions) == 0 || v[0].Promotions[0].PromotionID != doc.PromotionID {
		t.Errorf("the intermediate's record of volume a: %+v; want promotion %s", v, doc.PromotionID)
	}
	nodeLog := nodes[0].p.stderr.String()
	if !strings.Contains(nodeLog, "promotion signed by an admin") {
		t.Errorf("the node did not log the admin-signed promotion:\n%s", clip(nodeLog))
	}
	if strings.Contains(sm.stderr.String(), "PermissionDenied") || strings.Contains(sm.stderr.String(), "permission denied") {
		t.Errorf("the promoted secondary was refused:\n%s", clip(sm.stderr.String()))
	}
}
