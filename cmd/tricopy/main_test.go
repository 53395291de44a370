package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/tricopy/tricopy/configs"
	"github.com/tricopy/tricopy/fusefs"
)

// syncBuffer is a bytes.Buffer safe for a writer and a concurrent reader.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// result is what one run of the binary produced.
type result struct {
	code           int
	stdout, stderr string
}

// clearEnv hides the TRICOPY_* variables of the test process from run.
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, configs.EnvPrefix) {
			t.Setenv(k, "")
		}
	}
}

// runCmd runs the command line args in process, with the TRICOPY_*
// variables of env set (and every other TRICOPY_* variable hidden).
func runCmd(t *testing.T, env map[string]string, args ...string) result {
	t.Helper()
	clearEnv(t)
	for k, v := range env {
		t.Setenv(k, v)
	}
	var stdout, stderr syncBuffer
	code := run(context.Background(), args, strings.NewReader(""), &stdout, &stderr)
	r := result{code: code, stdout: stdout.String(), stderr: stderr.String()}
	t.Logf("tricopy %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	return r
}

// expect fails the test unless r exited with code and its stderr contains
// every one of want.
func (r result) expect(t *testing.T, code int, want ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit code %d, want %d (stderr: %s)", r.code, code, r.stderr)
	}
	for _, w := range want {
		if !strings.Contains(r.stderr, w) {
			t.Errorf("stderr does not contain %q:\n%s", w, r.stderr)
		}
	}
}

// writeFile writes content to a new file in a temporary directory and
// returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"no command", nil, []string{"a command is required", "Usage:"}},
		{"unknown command", []string{"frobnicate"}, []string{`unknown command "frobnicate"`}},
		{"unknown command suggests", []string{"fsk"}, []string{`did you mean fsck?`}},
		{"unknown flag", []string{"fsck", "--data", "/x", "--bogus"}, []string{"unknown flag: --bogus", "tricopy fsck --help"}},
		{"unknown root flag", []string{"--bogus"}, []string{"unknown flag: --bogus"}},
		{"flag without value", []string{"fsck", "--data"}, []string{"flag needs an argument"}},
		{"argument", []string{"fsck", "--data", "/x", "extra"}, []string{`unexpected argument "extra"`}},
		{"missing required", []string{"format", "--size", "1GiB"}, []string{`config key "data"`, "required", "TRICOPY_DATA"}},
		{"bad size", []string{"format", "--data", "/x", "--size", "12XB"}, []string{`config key "size"`, "flag --size", `unknown unit "XB"`}},
		{"size below minimum", []string{"format", "--data", "/x", "--size", "100KiB"}, []string{`config key "size"`, "minimum volume size 1MiB"}},
		{"bad log level", []string{"fsck", "--data", "/x", "--log-level", "chatty"}, []string{`config key "log-level"`, "debug, info, warn, error"}},
		{"bad fence", []string{"mount", "--volume", "a", "--data", "/x", "--mountpoint", "/m", "--fence", "maybe"},
			[]string{`config key "fence"`, "data, never"}},
		{"bad volume name", []string{"mount", "--volume", "a b", "--data", "/x", "--mountpoint", "/m"}, []string{`config key "volume"`}},
		{"bad intermediate", []string{"mount", "--volume", "a", "--data", "/x", "--mountpoint", "/m", "--intermediate", "nohost"},
			[]string{`config key "intermediate"`, "host:port"}},
		{"fence timeout too short", []string{"mount", "--volume", "a", "--data", "/x", "--mountpoint", "/m", "--fence-timeout", "1ms"},
			[]string{`config key "fence-timeout"`, "minimum of 100ms"}},
		{"bad region size", []string{"mount", "--volume", "a", "--data", "/x", "--mountpoint", "/m", "--region-size", "48KiB"},
			[]string{`config key "region-size"`, "power of two"}},
		{"missing config file", []string{"fsck", "--config", "/nonexistent/tricopy.yaml"}, []string{`config key "config"`, "/nonexistent/tricopy.yaml"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runCmd(t, nil, tt.args...).expect(t, exitUsage, tt.want...)
		})
	}
}

func TestUnknownConfigKey(t *testing.T) {
	cfg := writeFile(t, "mount.yaml", "volume: a\ndata: /x\nmountpoint: /m\nmountpont: /typo\n")
	r := runCmd(t, nil, "mount", "--config", cfg)
	r.expect(t, exitUsage, `config key "mountpont"`, "unknown key", cfg)
}

func TestBadSizeInEnvAndFile(t *testing.T) {
	runCmd(t, map[string]string{"TRICOPY_SIZE": "lots"}, "format", "--data", "/x").
		expect(t, exitUsage, `config key "size"`, "env TRICOPY_SIZE", `"lots"`)
	cfg := writeFile(t, "format.yaml", "data: /x\nsize: 1.5\n")
	runCmd(t, nil, "format", "--config", cfg).expect(t, exitUsage, `config key "size"`, "config file")
}

func TestHelp(t *testing.T) {
	for _, tt := range []struct {
		cmd  string
		cfg  configs.Config
		want []string
	}{
		{"format", new(configs.Format), []string{"Create a volume", "Examples:", "tricopy format --data"}},
		{"fsck", new(configs.Fsck), []string{"Check the filesystem", "Examples:", "--json"}},
		{"mount", new(configs.Mount), []string{"Mount a volume", "Examples:", "SIGINT", "--fence never suspends", "FENCED"}},
	} {
		t.Run(tt.cmd, func(t *testing.T) {
			r := runCmd(t, nil, tt.cmd, "--help")
			if r.code != exitOK {
				t.Fatalf("exit code %d, want 0", r.code)
			}
			want := append(tt.want, "TRICOPY_KEY", "Precedence: flag > environment variable > config file > default", "Exit codes:")
			for _, key := range configs.Keys(tt.cfg) {
				want = append(want, "--"+key, configs.EnvName(key))
			}
			// Help text is wrapped: compare with the line breaks removed.
			text := strings.Join(strings.Fields(r.stdout), " ")
			for _, w := range want {
				if !strings.Contains(text, w) {
					t.Errorf("help of %s lacks %q:\n%s", tt.cmd, w, r.stdout)
				}
			}
		})
	}
	r := runCmd(t, nil, "--help")
	for _, c := range []string{"format", "fsck", "mount"} {
		if !strings.Contains(r.stdout, "  "+c+" ") {
			t.Errorf("root help lacks command %s:\n%s", c, r.stdout)
		}
	}
}

func TestFsckMissingDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nothing-here")
	runCmd(t, nil, "fsck", "--data", dir).expect(t, exitFailed, "no volume in "+dir)
}

func TestFsckEmptyDir(t *testing.T) {
	dir := t.TempDir()
	runCmd(t, nil, "fsck", "--data", dir).expect(t, exitFailed, "no volume in "+dir)
}

func TestEnvApplied(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "from-env")
	runCmd(t, map[string]string{"TRICOPY_DATA": dir}, "fsck").expect(t, exitFailed, "no volume in "+dir)
}

func TestFlagOverEnvOverFile(t *testing.T) {
	fileDir := filepath.Join(t.TempDir(), "from-file")
	envDir := filepath.Join(t.TempDir(), "from-env")
	flagDir := filepath.Join(t.TempDir(), "from-flag")
	cfg := writeFile(t, "fsck.yaml", "data: "+fileDir+"\n")
	runCmd(t, nil, "fsck", "--config", cfg).expect(t, exitFailed, "no volume in "+fileDir)
	runCmd(t, map[string]string{"TRICOPY_CONFIG": cfg}, "fsck").expect(t, exitFailed, "no volume in "+fileDir)
	runCmd(t, map[string]string{"TRICOPY_DATA": envDir}, "fsck", "--config", cfg).expect(t, exitFailed, "no volume in "+envDir)
	runCmd(t, map[string]string{"TRICOPY_DATA": envDir}, "fsck", "--config", cfg, "--data", flagDir).
		expect(t, exitFailed, "no volume in "+flagDir)
}

func TestLogFormatJSON(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "v")
	r := runCmd(t, nil, "format", "--data", dir, "--size", "4MiB", "--log-format", "json", "--log-level", "debug")
	r.expect(t, exitOK)
	lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
	if len(lines) == 0 || lines[0] == "" {
		t.Fatal("no log lines at debug level")
	}
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Errorf("log line is not JSON: %q: %v", l, err)
		}
	}
	r = runCmd(t, nil, "fsck", "--data", dir, "--log-format", "text", "--log-level", "error")
	r.expect(t, exitOK)
	if r.stderr != "" {
		t.Errorf("log-level error logged: %q", r.stderr)
	}
}

func TestFormatAndFsck(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	r := runCmd(t, nil, "format", "--data", dir, "--size", "8MiB", "--inodes", "1000")
	r.expect(t, exitOK)
	for _, w := range []string{"formatted volume", dir, "8MiB", "2048 blocks", "1000 inodes"} {
		if !strings.Contains(r.stdout, w) {
			t.Errorf("format output lacks %q: %s", w, r.stdout)
		}
	}

	runCmd(t, nil, "format", "--data", dir, "--size", "8MiB").expect(t, exitFailed, "already holds a volume")

	r = runCmd(t, nil, "fsck", "--data", dir)
	r.expect(t, exitOK)
	if !strings.Contains(r.stdout, dir+": clean") || !strings.Contains(r.stdout, "inodes: 1000") {
		t.Errorf("fsck report: %s", r.stdout)
	}

	r = runCmd(t, nil, "fsck", "--data", dir, "--json")
	r.expect(t, exitOK)
	var rep fusefs.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("fsck --json output is not a Report: %v", err)
	}
	if !rep.Clean || rep.Blocks != 2048 || rep.Inodes != 1000 || rep.Directories == 0 {
		t.Errorf("fsck --json report %+v", rep)
	}
	if !strings.Contains(r.stdout, `"problems": []`) {
		t.Errorf("clean report should list problems as []: %s", r.stdout)
	}
}

func TestFormatRoundsDown(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	r := runCmd(t, nil, "format", "--data", dir, "--size", "1050000") // 256.35 blocks
	r.expect(t, exitOK, "rounded down")
	if !strings.Contains(r.stdout, "256 blocks") || !strings.Contains(r.stdout, "1MiB") {
		t.Errorf("format output: %s", r.stdout)
	}
}

func TestFormatFromConfigFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	cfg := writeFile(t, "format.yaml", "data: "+dir+"\nsize: 2MiB\n")
	r := runCmd(t, map[string]string{"TRICOPY_SIZE": "3MiB"}, "format", "--config", cfg)
	r.expect(t, exitOK)
	if !strings.Contains(r.stdout, "3MiB") {
		t.Errorf("the environment's size should win over the file's: %s", r.stdout)
	}
}

// TestFormatFailureCleansUp checks that a format that fails leaves the
// directory as it found it, so that it can be retried.
func TestFormatFailureCleansUp(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "new")
	// Far more inodes than blocks: the filesystem layout cannot fit.
	runCmd(t, nil, "format", "--data", dir, "--size", "1MiB", "--inodes", "100000000").expect(t, exitFailed, "format filesystem")
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("failed format left %s behind (stat: %v)", dir, err)
	}

	existing := filepath.Join(parent, "existing")
	if err := os.MkdirAll(existing, 0o755); err != nil {
		t.Fatal(err)
	}
	keep := filepath.Join(existing, "keep.txt")
	if err := os.WriteFile(keep, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	runCmd(t, nil, "format", "--data", existing, "--size", "1MiB", "--inodes", "100000000").expect(t, exitFailed)
	entries, err := os.ReadDir(existing)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "keep.txt" {
		t.Errorf("failed format left %v in %s, want only keep.txt", entries, existing)
	}
	runCmd(t, nil, "format", "--data", existing, "--size", "1MiB").expect(t, exitOK)
}

func TestMountNeedsVolumeOrSize(t *testing.T) {
	base := t.TempDir()
	data := filepath.Join(base, "data")
	mnt := filepath.Join(base, "mnt")
	runCmd(t, nil, "mount", "--volume", "a", "--data", data, "--mountpoint", mnt).
		expect(t, exitUsage, `config key "data"`, data+" holds no volume", "--size")
	runCmd(t, nil, "mount", "--volume", "a", "--data", data, "--mountpoint", mnt, "--size", "1GiB", "--read-only").
		expect(t, exitUsage, `config key "read-only"`)
	if _, err := os.Stat(data); !os.IsNotExist(err) {
		t.Errorf("refused mount created %s (stat: %v)", data, err)
	}
	if _, err := os.Stat(mnt); !os.IsNotExist(err) {
		t.Errorf("refused mount created %s (stat: %v)", mnt, err)
	}
}
