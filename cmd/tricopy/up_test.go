package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/intermediate/auth"
	"github.com/tricopy/tricopy/intermediate/client"
)

// TestUpConfigErrors: bad settings of up are usage errors naming the key.
func TestUpConfigErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"missing dir", nil, []string{`config key "dir"`, "required", "TRICOPY_DIR"}},
		{"no volumes", []string{"--dir", dir, "--volumes", ""}, []string{`config key "volumes"`, "required"}},
		{"bad volume name", []string{"--dir", dir, "--volumes", "a,b/c"}, []string{`config key "volumes"`, `"b/c"`}},
		{"volume twice", []string{"--dir", dir, "--volumes", "a,b,a"}, []string{`config key "volumes"`, `volume "a" listed twice`}},
		{"bad group", []string{"--dir", dir, "--group=-g"}, []string{`config key "group"`}},
		{"size below minimum", []string{"--dir", dir, "--size", "100KiB"}, []string{`config key "size"`, "minimum volume size 1MiB"}},
		{"no size", []string{"--dir", dir, "--size", ""}, []string{`config key "size"`, "required"}},
		{"bad fence", []string{"--dir", dir, "--fence", "maybe"}, []string{`config key "fence"`, "data, never"}},
		{"fence timeout too short", []string{"--dir", dir, "--fence-timeout", "1ms"}, []string{`config key "fence-timeout"`, "minimum of 100ms"}},
		{"bad listen", []string{"--dir", dir, "--listen", "nohost"}, []string{`config key "listen"`, "host:port"}},
		{"bad raft port", []string{"--dir", dir, "--raft", "127.0.0.1:99999"}, []string{`config key "raft"`, "port"}},
		{"raft is listen", []string{"--dir", dir, "--listen", "127.0.0.1:7100", "--raft", "127.0.0.1:7100"},
			[]string{`config key "raft"`, "listen address"}},
		{"bad log level", []string{"--dir", dir, "--log-level", "chatty"}, []string{`config key "log-level"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runCmd(t, nil, append([]string{"up"}, tt.args...)...).expect(t, exitUsage, tt.want...)
		})
	}
	t.Run("unknown key in file", func(t *testing.T) {
		cfg := writeFile(t, "up.yaml", "dir: "+dir+"\nvolume: a\n")
		runCmd(t, nil, "up", "--config", cfg).expect(t, exitUsage, `config key "volume"`, "unknown key", "volumes")
	})
	t.Run("bad size in env", func(t *testing.T) {
		runCmd(t, map[string]string{"TRICOPY_SIZE": "lots"}, "up", "--dir", dir).
			expect(t, exitUsage, `config key "size"`, "env TRICOPY_SIZE")
	})
	if entries, err := os.ReadDir(dir); err != nil || len(entries) != 0 {
		t.Errorf("refused up left %v in --dir (%v)", entries, err)
	}
}

// TestUpHelp: the help of up names every key, its variable and the layout.
func TestUpHelp(t *testing.T) {
	r := runCmd(t, nil, "up", "--help")
	if r.code != exitOK {
		t.Fatalf("exit code %d, want 0", r.code)
	}
	want := []string{"Run the local deployment", "Examples:", "tricopy up --config configs/local.yaml",
		"DIR/intermediate/i1", "DIR/data/NAME", "DIR/primary/NAME", "SIGINT", "mounted volume NAME at MNT",
		"TRICOPY_KEY", "Precedence: flag > environment variable > config file > default", "Exit codes:",
		"(default a,b)", "(default 1GiB)", "(default 127.0.0.1:7100)", "(default 127.0.0.1:7200)"}
	for _, key := range configs.Keys(new(configs.Up)) {
		want = append(want, "--"+key, configs.EnvName(key))
	}
	text := strings.Join(strings.Fields(r.stdout), " ")
	for _, w := range want {
		if !strings.Contains(text, strings.Join(strings.Fields(w), " ")) {
			t.Errorf("help of up lacks %q:\n%s", w, r.stdout)
		}
	}
	r = runCmd(t, nil, "--help")
	if !strings.Contains(r.stdout, "  up ") {
		t.Errorf("root help lacks command up:\n%s", r.stdout)
	}
}

// mountsUnder returns the mountpoints of this mount namespace at or below
// dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	return out
}

// detachMountsUnder unmounts (lazily) whatever a failed test left mounted
// below dir, at the end of the test.
func detachMountsUnder(t *testing.T, dir string) {
	t.Cleanup(func() {
		for _, m := range mountsUnder(t, dir) {
			t.Errorf("%s still mounted at the end of the test: detaching it", m)
			syscall.Unmount(m, syscall.MNT_DETACH)
		}
	})
}

// startUp runs `tricopy up --dir dir args...` in this process and returns
// once it printed its status.
func startUp(t *testing.T, dir string, args ...string) *background {
	t.Helper()
	requireFUSE(t)
	detachMountsUnder(t, dir)
	return startBackground(t, "watch the group with", append([]string{"up", "--dir", dir, "--log-format", "text"}, args...)...)
}

// exit returns the exit code of b, failing the test if it does not exit
// within 30 seconds.
func (b *background) exit(t *testing.T) int {
	t.Helper()
	select {
	case code := <-b.done:
		b.done <- code // for Cleanup
		return code
	case <-time.After(30 * time.Second):
		t.Fatalf("did not exit 30s after cancel; stderr:\n%s", b.stderr)
		return -1
	}
}

// groupStatus polls the status of the group at addr (of the up in dir,
// with the admin's certificate up made there) until ok accepts it, failing
// the test after 20 seconds.
func groupStatus(t *testing.T, addr, dir string, ok func(*statusJSON) bool) *statusJSON {
	t.Helper()
	u := &upCerts{dir: filepath.Join(dir, "certs")}
	m, err := auth.Load(u.files("admin"), nil)
	if err != nil {
		t.Fatalf("the admin's certificate up made: %v", err)
	}
	cl, err := client.New(client.Config{Addrs: []string{addr}, TLS: m.ClientConfig(auth.RoleIntermediate)})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		doc := collectStatus(ctx, cl, "default")
		cancel()
		if ok(doc) {
			return doc
		}
		if time.Now().After(deadline) {
			t.Fatalf("status not as expected after 20s: %+v", doc)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// volumeStatus returns the status of volume name in doc, or a zero value.
func volumeStatus(doc *statusJSON, name string) volumeJSON {
	for _, v := range doc.Volumes {
		if v.Name == name {
			return v
		}
	}
	return volumeJSON{}
}

// TestUpRun runs the local deployment with two volumes: both mount, are
// mirrored (PAIR, batches committed at the intermediate), unmount on
// cancel (as on SIGINT) with exit 0 and pass fsck; a second run finds them.
func TestUpRun(t *testing.T) {
	requireFUSE(t)
	dir := t.TempDir()
	listen, raftAddr, metrics := freeAddr(t), freeAddr(t), freeAddr(t)
	args := []string{"--size", "64MiB", "--listen", listen, "--raft", raftAddr, "--metrics", metrics}
	up := startUp(t, dir, args...)

	out := up.stdout.String()
	for _, w := range []string{
		"intermediate node i1 serving at " + listen + "\n",
		"mounted volume a at " + filepath.Join(dir, "primary", "a") + "\n",
		"mounted volume b at " + filepath.Join(dir, "primary", "b") + "\n",
		"group default: leader i1",
		"VOLUME", "NODE",
		"watch the group with: tricopy status --intermediate " + listen,
	} {
		if !strings.Contains(out, w) {
			t.Errorf("stdout lacks %q:\n%s", w, out)
		}
	}
	before := groupStatus(t, listen, dir, func(d *statusJSON) bool { return allPaired(d, []string{"a", "b"}) })

	for _, name := range []string{"a", "b"} {
		p := filepath.Join(dir, "primary", name, "hello-"+name)
		if err := os.WriteFile(p, []byte("hello "+name+"\n"), 0o644); err != nil {
			t.Fatalf("write on volume %s: %v", name, err)
		}
	}
	after := groupStatus(t, listen, dir, func(d *statusJSON) bool {
		if !allPaired(d, []string{"a", "b"}) {
			return false
		}
		for _, name := range []string{"a", "b"} {
			if volumeStatus(d, name).VolumeSeq <= volumeStatus(before, name).VolumeSeq {
				return false
			}
		}
		return true
	})
	for _, name := range []string{"a", "b"} {
		v := volumeStatus(after, name)
		if v.State != "PAIR" || !v.PrimaryConnected || v.CommittedSeq == 0 || v.CommittedSeq > after.CommittedSeq || v.DirtyRegions != 0 {
			t.Errorf("volume %s: %+v (group committed seq %d), want PAIR, connected, committed batches, no dirty regions",
				name, v, after.CommittedSeq)
		}
	}
	if after.Leader != "i1" || !after.Healthy {
		t.Errorf("group: leader %q healthy %v problems %v", after.Leader, after.Healthy, after.Problems)
	}
	// One metrics server for every part: the node, and a mirror and a
	// secondary of each volume, told apart by their volume label.
	body := getMetrics(t, metrics)
	for _, w := range []string{
		"\ntricopy_intermediate_leader 1\n",
		"\ntricopy_mirror_state{state=\"PAIR\",volume=\"a\"} 1\n",
		"\ntricopy_mirror_state{state=\"PAIR\",volume=\"b\"} 1\n",
		"\ntricopy_secondary_applied_seq{secondary=\"a\",volume=\"a\"} ",
		"\ntricopy_secondary_applied_seq{secondary=\"b\",volume=\"b\"} ",
		"\ngo_goroutines ",
	} {
		if !strings.Contains(body, w) {
			t.Errorf("metrics of up lack %q:\n%s", w, body)
		}
	}

	// The volumes are locked while up runs.
	runCmd(t, nil, "fsck", "--data", filepath.Join(dir, "data", "a")).expect(t, exitFailed, "in use")

	up.cancel() // as SIGINT does
	if code := up.exit(t); code != exitOK {
		t.Fatalf("up exited with %d after cancel, want 0; stderr:\n%s", code, up.stderr)
	}
	if m := mountsUnder(t, dir); len(m) > 0 {
		t.Errorf("still mounted after up exited: %v", m)
	}
	for _, w := range []string{"msg=unmounted cmd=up volume=a", "msg=unmounted cmd=up volume=b", `msg="stopped intermediate node"`} {
		if !strings.Contains(up.stderr.String(), w) {
			t.Errorf("stderr lacks %q:\n%s", w, up.stderr)
		}
	}
	for _, name := range []string{"a", "b"} {
		r := runCmd(t, nil, "fsck", "--data", filepath.Join(dir, "data", name))
		r.expect(t, exitOK)
		if !strings.Contains(r.stdout, "clean") || !strings.Contains(r.stdout, "files: 1,") {
			t.Errorf("fsck of volume %s: %s", name, r.stdout)
		}
	}
	// The node released its ports.
	for _, a := range []string{listen, raftAddr, metrics} {
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Errorf("address %s still in use after up exited: %v", a, err)
			continue
		}
		l.Close()
	}

	// A second run goes on with the same node state and volumes.
	up = startUp(t, dir, args...)
	if strings.Contains(up.stderr.String(), "created and formatted volume") {
		t.Errorf("second run created a volume:\n%s", up.stderr)
	}
	for _, name := range []string{"a", "b"} {
		b, err := os.ReadFile(filepath.Join(dir, "primary", name, "hello-"+name))
		if err != nil || string(b) != "hello "+name+"\n" {
			t.Errorf("volume %s after restart: %q, %v", name, b, err)
		}
	}
	again := groupStatus(t, listen, dir, func(d *statusJSON) bool { return allPaired(d, []string{"a", "b"}) })
	if again.CommittedSeq < after.CommittedSeq {
		t.Errorf("committed seq went back from %d to %d across a restart", after.CommittedSeq, again.CommittedSeq)
	}
	up.cancel()
	if code := up.exit(t); code != exitOK {
		t.Fatalf("second up exited with %d, want 0; stderr:\n%s", code, up.stderr)
	}
}

// TestUpFailedStartTearsDown: when a volume cannot be mounted, up exits 1
// naming the cause, after unmounting and closing the volumes it started
// and stopping the node.
func TestUpFailedStartTearsDown(t *testing.T) {
	requireFUSE(t)
	dir := t.TempDir()
	detachMountsUnder(t, dir)
	// The mountpoint of volume b cannot be made: a file is in the way.
	if err := os.MkdirAll(filepath.Join(dir, "primary"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "primary", "b"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	listen, raftAddr := freeAddr(t), freeAddr(t)
	r := runCmd(t, nil, "up", "--dir", dir, "--size", "16MiB", "--listen", listen, "--raft", raftAddr, "--log-format", "text")
	r.expect(t, exitFailed, "create mountpoint "+filepath.Join(dir, "primary", "b"), "msg=unmounted cmd=up volume=a")
	if !strings.Contains(r.stdout, "mounted volume a at ") {
		t.Errorf("volume a was not mounted first: %s", r.stdout)
	}
	if m := mountsUnder(t, dir); len(m) > 0 {
		t.Errorf("still mounted after a failed start: %v", m)
	}
	runCmd(t, nil, "fsck", "--data", filepath.Join(dir, "data", "a")).expect(t, exitOK)
	l, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("intermediate address %s still in use after a failed start: %v", listen, err)
	}
	l.Close()
}
