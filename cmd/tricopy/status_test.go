package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/intermediate/wire"
)

// freeAddr returns a free 127.0.0.1 address.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// background is a command running in this process.
type background struct {
	cancel         context.CancelFunc
	done           chan int
	stdout, stderr *syncBuffer
}

// startBackground runs `tricopy args...` until the test ends, and returns
// once its standard output contains ready.
func startBackground(t *testing.T, ready string, args ...string) *background {
	t.Helper()
	clearEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	b := &background{cancel: cancel, done: make(chan int, 1), stdout: &syncBuffer{}, stderr: &syncBuffer{}}
	go func() { b.done <- run(ctx, args, strings.NewReader(""), b.stdout, b.stderr) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-b.done:
		case <-time.After(30 * time.Second):
			t.Errorf("%s did not exit 30s after cancel; stderr:\n%s", args[0], b.stderr)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(b.stdout.String(), ready) {
		select {
		case code := <-b.done:
			t.Fatalf("%s exited with %d; stderr:\n%s", args[0], code, b.stderr)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not print %q within 20s; stderr:\n%s", args[0], ready, b.stderr)
		}
	}
	return b
}

// startIntermediate runs a single-node intermediate and returns its client
// address.
func startIntermediate(t *testing.T) string {
	t.Helper()
	listen, raftAddr := freeAddr(t), freeAddr(t)
	startBackground(t, "serving at", "intermediate", "--node", "i1", "--data", t.TempDir(),
		"--listen", listen, "--raft", raftAddr, "--cluster", "i1="+raftAddr, "--log-level", "warn")
	return listen
}

// documentedFields returns the field paths in the table of docs/STATUS.md
// ("volumes[].name", ...), split on commas.
func documentedFields(t *testing.T) []string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/STATUS.md")
	if err != nil {
		t.Fatal(err)
	}
	// The status schema is the document's first section; the next ones
	// document other commands' output.
	text, _, _ := strings.Cut(string(doc), "\n## ")
	row := regexp.MustCompile("(?m)^\\| (`[^|]*`) \\|")
	field := regexp.MustCompile("`([a-z_\\[\\].]+)`")
	var out []string
	for _, m := range row.FindAllStringSubmatch(text, -1) {
		for _, f := range field.FindAllStringSubmatch(m[1], -1) {
			out = append(out, f[1])
		}
	}
	if len(out) < 20 {
		t.Fatalf("found only %d fields in docs/STATUS.md: %v", len(out), out)
	}
	return out
}

// lookup finds a field path in a decoded JSON document; "x[]" descends into
// the first element of array x.
func lookup(doc any, path string) (any, bool) {
	cur := doc
	for _, part := range strings.Split(path, ".") {
		name, isArray := strings.CutSuffix(part, "[]")
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[name]; !ok {
			return nil, false
		}
		if isArray {
			arr, ok := cur.([]any)
			if !ok {
				return nil, false
			}
			if len(arr) == 0 {
				return arr, true
			}
			cur = arr[0]
		}
	}
	return cur, true
}

// TestStatusJSONSchema: every field docs/STATUS.md documents is in the
// output (fields may be added, never removed), and the figures are right.
func TestStatusJSONSchema(t *testing.T) {
	addr := startIntermediate(t)
	cl, err := client.New(client.Config{Addrs: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := cl.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 1, BlockCount: 8})
	if err != nil {
		t.Fatal(err)
	}
	submit := func(i int) {
		t.Helper()
		if _, err := v.Submit(ctx, []*wire.Block{{Index: uint64(i), Data: make([]byte, wire.BlockSize)}}); err != nil {
			t.Fatal(err)
		}
	}
	// runStatusJSON runs status --json and checks its exit code (unless code
	// is negative).
	runStatusJSON := func(code int) map[string]any {
		t.Helper()
		r := runCmd(t, nil, "status", "--intermediate", addr, "--json")
		if code >= 0 {
			r.expect(t, code)
		}
		var doc map[string]any
		if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
			t.Fatalf("status --json is not one JSON object: %v\n%s", err, r.stdout)
		}
		return doc
	}
	volume := func(doc map[string]any) map[string]any {
		vol, _ := lookup(doc, "volumes[]")
		m, _ := vol.(map[string]any)
		return m
	}
	// A primary reporting a resync: the group is not healthy.
	v.Report(&wire.PrimaryReport{State: "RESYNC", DirtyRegions: 5, ResyncDone: 1, ResyncTotal: 6, Reason: "catching up"})
	submit(0) // reports go out ahead of the next batch
	doc := runStatusJSON(1)
	if vol := volume(doc); vol["state"] != "RESYNC" || vol["primary_connected"] != true || vol["dirty_regions"].(float64) != 5 ||
		vol["resync_done_regions"].(float64) != 1 || vol["resync_total_regions"].(float64) != 6 || vol["reason"] != "catching up" {
		t.Errorf("volume of a resyncing primary: %v", vol)
	}
	if fmt.Sprint(doc["problems"]) != "[volume a is RESYNC: catching up]" {
		t.Errorf("problems: %v", doc["problems"])
	}
	v.Report(&wire.PrimaryReport{State: "PAIR"})
	// A secondary of a that stages everything it is asked at once.
	var linkp atomic.Pointer[client.Link]
	send := func(m *wire.CoordinateRequest) {
		for linkp.Load() == nil {
			time.Sleep(time.Millisecond)
		}
		linkp.Load().Send(m)
	}
	link, err := cl.Coordinate(ctx, client.CoordinateOptions{
		Hello: func() *wire.SecondaryHello {
			return &wire.SecondaryHello{Group: client.DefaultGroup, Secondary: "sa", Volume: "a", Addr: "127.0.0.1:7399"}
		},
		OnMessage: func(m *wire.CoordinateResponse) {
			switch {
			case m.GetPrepare() != nil:
				send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Prepared{Prepared: m.GetPrepare()}})
			case m.GetValidate() != nil:
				send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Applied{Applied: m.GetValidate()}})
			case m.GetOpened() != nil:
				send(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Report{Report: &wire.SecondaryReport{State: "PAIR"}}})
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	linkp.Store(link)
	defer link.Close()
	submit(1)
	submit(2)
	var doc2 map[string]any
	for deadline := time.Now().Add(10 * time.Second); ; {
		doc2 = runStatusJSON(-1)
		if doc2["validated_seq"] == float64(3) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the secondary never applied seq 3: %v", doc2)
		}
		time.Sleep(50 * time.Millisecond)
	}
	doc = runStatusJSON(0)
	if sec, _ := lookup(doc, "volumes[].secondaries[]"); fmt.Sprint(sec) != fmt.Sprint(map[string]any{
		"id": "sa", "addr": "127.0.0.1:7399", "state": "PAIR", "connected": true, "fetched_seq": 0.0,
		"prepared_seq": 3.0, "applied_seq": 3.0, "lag_batches": 0.0, "lag_bytes": 0.0, "lag_seconds": 0.0, "suspended": false, "dirty_regions": 0.0,
	}) {
		t.Errorf("the secondary in status: %v", sec)
	}
	for _, f := range documentedFields(t) {
		if f == "nodes[].error" || f == "volumes[].reason" || f == "volumes[].secondaries[].reason" || f == "volumes[].stale_primary" {
			continue // documented as omitted when empty
		}
		if strings.HasPrefix(f, "volumes[].promotions[].") {
			continue // nothing promoted yet: TestStatusPromotions checks them
		}
		if _, ok := lookup(doc, f); !ok {
			t.Errorf("documented field %q missing from status --json", f)
		}
	}
	if doc["committed_seq"].(float64) != 3 || doc["leader"] != "i1" || doc["healthy"] != true {
		t.Errorf("status: committed_seq %v leader %v healthy %v; want 3, i1, true", doc["committed_seq"], doc["leader"], doc["healthy"])
	}
	if vol := volume(doc); vol["volume_seq"].(float64) != 3 || vol["state"] != "PAIR" {
		t.Errorf("volume a: %v, want volume_seq 3 in PAIR", vol)
	}
	v.Close()
	for deadline := time.Now().Add(10 * time.Second); volume(runStatusJSON(-1))["state"] != "DISCONNECTED"; {
		if time.Now().After(deadline) {
			t.Fatal("status does not show the closed stream of volume a as DISCONNECTED")
		}
		time.Sleep(50 * time.Millisecond)
	}
	runStatusJSON(1) // a disconnected primary makes the group unhealthy

	v, err = cl.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 1, BlockCount: 8})
	if err != nil {
		t.Fatal(err)
	}
	v.Report(&wire.PrimaryReport{State: "PAIR"})
	submit(3)
	defer v.Close()
	r := runCmd(t, nil, "status", "--intermediate", addr)
	r.expect(t, 0)
	if !strings.Contains(r.stdout, "leader i1, committed seq 4") || !strings.Contains(r.stdout, "PAIR") {
		t.Errorf("status text:\n%s", r.stdout)
	}
}

// TestStatusPromotions: after a promotion, status shows each volume's
// promotion history with every documented field, and the text output a
// line per promoted volume.
func TestStatusPromotions(t *testing.T) {
	addr := startIntermediate(t)
	cl, err := client.New(client.Config{Addrs: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v, err := cl.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 1, BlockCount: 40}) // 3 regions
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for i := range 3 {
		if _, err := v.Submit(ctx, []*wire.Block{{Index: uint64(i), Data: make([]byte, wire.BlockSize)}}); err != nil {
			t.Fatal(err)
		}
	}
	before := time.Now()
	resp, err := cl.Promote(ctx, "p-test", "test-host")
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetSeq() != 3 || len(resp.GetVolumes()) != 1 || resp.GetVolumes()[0].GetEpoch() != 2 {
		t.Fatalf("promote: %v", resp)
	}
	r := runCmd(t, nil, "status", "--intermediate", addr, "--json")
	var doc map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("status --json is not one JSON object: %v\n%s", err, r.stdout)
	}
	for _, f := range documentedFields(t) {
		if !strings.HasPrefix(f, "volumes[].promotions[]") {
			continue
		}
		if _, ok := lookup(doc, f); !ok {
			t.Errorf("documented field %q missing from status --json after a promotion", f)
		}
	}
	p, _ := lookup(doc, "volumes[].promotions[]")
	pm, _ := p.(map[string]any)
	if pm["promotion_id"] != "p-test" || pm["epoch"] != 2.0 || pm["seq"] != 3.0 || pm["by"] != "test-host" {
		t.Errorf("promotion in status: %v", p)
	}
	at, err := time.Parse(time.RFC3339Nano, fmt.Sprint(pm["time"]))
	if err != nil || at.Before(before.Add(-time.Minute)) || at.After(time.Now().Add(time.Minute)) {
		t.Errorf("promotion time %v (%v), want about %v", pm["time"], err, before)
	}
	// The journal held the old primary's batches (blocks 0 to 2: region 0)
	// at the promotion: the old primary may lack them.
	if vol, _ := lookup(doc, "volumes[]"); vol.(map[string]any)["epoch"] != 2.0 || vol.(map[string]any)["changed_since_promotion_regions"] != 1.0 {
		t.Errorf("volume after the promotion: %v, want epoch 2 and 1 region changed since", vol)
	}
	r = runCmd(t, nil, "status", "--intermediate", addr)
	if want := "a: promoted at seq 3 to epoch 2 at " + fmt.Sprint(pm["time"]) + " by test-host (promotion p-test); regions changed since: 1"; !strings.Contains(r.stdout, want) {
		t.Errorf("status text lacks %q:\n%s", want, r.stdout)
	}

	// The new primary's batches mark the regions they write (block 39:
	// region 2).
	ncl, err := client.New(client.Config{Addrs: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer ncl.Close()
	nv, err := ncl.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 2, BlockCount: 40})
	if err != nil {
		t.Fatal(err)
	}
	defer nv.Close()
	if _, err := nv.Submit(ctx, []*wire.Block{{Index: 39, Data: make([]byte, wire.BlockSize)}}); err != nil {
		t.Fatal(err)
	}
	r = runCmd(t, nil, "status", "--intermediate", addr, "--json")
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("status --json is not one JSON object: %v\n%s", err, r.stdout)
	}
	if vol, _ := lookup(doc, "volumes[]"); vol.(map[string]any)["changed_since_promotion_regions"] != 2.0 {
		t.Errorf("volume after the new primary's batch: %v, want 2 regions changed since the promotion", vol)
	}

	// The old primary comes back at epoch 1: refused, and status says so.
	ocl, err := client.New(client.Config{Addrs: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer ocl.Close()
	if _, err := ocl.OpenVolume(ctx, client.VolumeOptions{Name: "a", Epoch: 1, BlockCount: 40}); !errors.Is(err, wire.ErrStaleEpoch) {
		t.Fatalf("open at the old epoch: %v, want ErrStaleEpoch", err)
	}
	r = runCmd(t, nil, "status", "--intermediate", addr, "--json")
	r.expect(t, 1)
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("status --json is not one JSON object: %v\n%s", err, r.stdout)
	}
	sp, ok := lookup(doc, "volumes[].stale_primary")
	if spm, _ := sp.(map[string]any); !ok || spm["epoch"] != 1.0 || spm["peer"] == "" || spm["time"] == "" {
		t.Errorf("stale primary in status: %v", sp)
	}
	if probs := fmt.Sprint(doc["problems"]); !strings.Contains(probs, "stale epoch 1") {
		t.Errorf("problems %s do not name the stale primary", probs)
	}
	r = runCmd(t, nil, "status", "--intermediate", addr)
	if !strings.Contains(r.stdout, "a: STALE primary at epoch 1") {
		t.Errorf("status text does not show the stale primary:\n%s", r.stdout)
	}
}

// TestSecondaryRemoveCLI: removing a secondary that is not registered
// succeeds and says so; a missing --name is a usage error.
func TestSecondaryRemoveCLI(t *testing.T) {
	addr := startIntermediate(t)
	r := runCmd(t, nil, "secondary", "remove", "--intermediate", addr, "--name", "ghost")
	r.expect(t, 0)
	if !strings.Contains(r.stdout, "no secondary ghost") {
		t.Errorf("secondary remove of an unknown secondary: %q", r.stdout)
	}
	runCmd(t, nil, "secondary", "remove", "--intermediate", addr).expect(t, 2, "name")
	r = runCmd(t, nil, "wait", "--intermediate", addr, "--timeout", "5s")
	r.expect(t, 0)
	if !strings.Contains(r.stdout, "no secondary") {
		t.Errorf("wait without secondaries: %q", r.stdout)
	}
}

// TestStatusUnreachable: no node answers: exit 1, the JSON says why.
func TestStatusUnreachable(t *testing.T) {
	r := runCmd(t, nil, "status", "--intermediate", freeAddr(t), "--json", "--timeout", "2s")
	r.expect(t, 1, "not healthy")
	var doc map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &doc); err != nil {
		t.Fatalf("status --json: %v\n%s", err, r.stdout)
	}
	if doc["healthy"] != false || len(doc["problems"].([]any)) == 0 {
		t.Errorf("unreachable cluster: healthy %v problems %v", doc["healthy"], doc["problems"])
	}
}

// TestIntermediateConfigErrors: bad cluster settings are usage errors that
// name the key.
func TestIntermediateConfigErrors(t *testing.T) {
	dir := t.TempDir()
	base := []string{"intermediate", "--node", "i1", "--data", dir, "--listen", "127.0.0.1:7100", "--raft", "127.0.0.1:7200"}
	runCmd(t, nil, append(base, "--cluster", "i1")...).expect(t, 2, "cluster", "ID=RAFTADDR")
	runCmd(t, nil, append(base, "--cluster", "i2=127.0.0.1:7200")...).expect(t, 2, "cluster", "not in the list")
	runCmd(t, nil, append(base, "--cluster", "i1=127.0.0.1:7201")...).expect(t, 2, "cluster", "--raft")
	runCmd(t, nil, append(base, "--cluster", "i1=127.0.0.1:7200", "--join", "127.0.0.1:7100")...).expect(t, 2, "join")
	runCmd(t, nil, append(base, "--cluster", "i1=127.0.0.1:7200", "--max-message", "1KiB")...).expect(t, 2, "max-message")
	runCmd(t, nil, "intermediate", "remove", "--node", "i3").expect(t, 2, "intermediate")
	runCmd(t, nil, "status").expect(t, 2, "intermediate")
}

// TestIntermediateRemoveCommand removes a node that is not a member (a
// no-op) from a running single-node cluster, started without --cluster (the
// embedded default).
func TestIntermediateRemoveCommand(t *testing.T) {
	addr, raftAddr := freeAddr(t), freeAddr(t)
	startBackground(t, "serving at", "intermediate", "--node", "i1", "--data", t.TempDir(),
		"--listen", addr, "--raft", raftAddr, "--log-level", "warn")
	r := runCmd(t, nil, "intermediate", "remove", "--intermediate", addr, "--node", "i9")
	r.expect(t, 0)
	if !strings.Contains(r.stdout, "removed node i9") {
		t.Errorf("stdout: %s", r.stdout)
	}
}

// TestStatusMaxLag: a secondary lagging more than --max-lag is a problem.
func TestStatusMaxLag(t *testing.T) {
	doc := &statusJSON{Healthy: true, Volumes: []volumeJSON{{Name: "a", Secondaries: []secondaryJSON{
		{ID: "a1", LagSeconds: 0.2}, {ID: "a2", LagSeconds: 45},
	}}}}
	checkMaxLag(doc, 0)
	if !doc.Healthy || len(doc.Problems) != 0 {
		t.Fatalf("no --max-lag: %+v", doc)
	}
	checkMaxLag(doc, 30*time.Second)
	if doc.Healthy || len(doc.Problems) != 1 || !strings.Contains(doc.Problems[0], "secondary a2 of volume a lags 45s") {
		t.Fatalf("--max-lag 30s: healthy %v, problems %v", doc.Healthy, doc.Problems)
	}
}

// TestStatusWatch: --watch prints the status again every interval until
// the context ends, one JSON object per line with --json.
func TestStatusWatch(t *testing.T) {
	addr := startIntermediate(t)
	clearEnv(t)
	for deadline := time.Now().Add(15 * time.Second); ; {
		var out, errOut syncBuffer
		if run(context.Background(), []string{"status", "--intermediate", addr}, strings.NewReader(""), &out, &errOut) == 0 {
			break // a leader
		}
		if time.Now().After(deadline) {
			t.Fatalf("no healthy status after 15s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	var stdout, stderr syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	code := run(ctx, []string{"status", "--intermediate", addr, "--json", "--watch", "100ms"}, strings.NewReader(""), &stdout, &stderr)
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if code != 0 || len(lines) < 3 {
		t.Fatalf("status --watch: exit %d, %d lines (want at least 3)\nstdout:\n%s\nstderr:\n%s", code, len(lines), stdout.String(), stderr.String())
	}
	for _, l := range lines {
		var doc map[string]any
		if err := json.Unmarshal([]byte(l), &doc); err != nil || doc["leader"] != "i1" {
			t.Fatalf("a line of status --watch --json is not a status object: %v: %q", err, l)
		}
	}
	r := runCmd(t, nil, "status", "--intermediate", addr, "--watch", "10ms")
	r.expect(t, 2, "watch")
}
