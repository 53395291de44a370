package configs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// clearEnv hides every TRICOPY_* variable of the test process from Load
// (viper ignores empty variables).
func clearEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, EnvPrefix) {
			t.Setenv(k, "")
		}
	}
}

// loadCase loads cfg from args, env and, when file is not empty, a config
// file with that content passed as --config.
func loadCase(t *testing.T, cfg Config, args []string, env map[string]string, file string) error {
	t.Helper()
	clearEnv(t)
	for k, v := range env {
		t.Setenv(k, v)
	}
	if file != "" {
		p := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(p, []byte(file), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", p)
	}
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	Bind(fs, cfg)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return Load(fs, cfg)
}

var mountArgs = []string{"--volume", "a", "--data", "/d", "--mountpoint", "/m"}

func TestLoadMount(t *testing.T) {
	def := DefaultMount()
	def.Volume, def.Data, def.Mountpoint = "a", "/d", "/m"
	with := func(f func(*Mount)) Mount { m := def; f(&m); return m }

	tests := []struct {
		name string
		args []string
		env  map[string]string
		file string
		want Mount
	}{
		{name: "defaults", args: mountArgs, want: def},
		{name: "config file over default", args: mountArgs, file: "group: g1\nfence: never\nsize: 2GiB\n",
			want: with(func(m *Mount) { m.Group, m.Fence, m.Size = "g1", "never", 2*GiB })},
		{name: "env over config file", args: mountArgs, env: map[string]string{"TRICOPY_SIZE": "3GiB"}, file: "size: 2GiB\n",
			want: with(func(m *Mount) { m.Size = 3 * GiB })},
		{name: "flag over env", args: append([]string{"--size", "4GiB"}, mountArgs...), env: map[string]string{"TRICOPY_SIZE": "3GiB"}, file: "size: 2GiB\n",
			want: with(func(m *Mount) { m.Size = 4 * GiB })},
		{name: "env sets required keys", env: map[string]string{"TRICOPY_VOLUME": "b", "TRICOPY_DATA": "/e", "TRICOPY_MOUNTPOINT": "/n"},
			want: with(func(m *Mount) { m.Volume, m.Data, m.Mountpoint = "b", "/e", "/n" })},
		{name: "file sets required keys", file: "volume: c\ndata: /f\nmountpoint: /o\n",
			want: with(func(m *Mount) { m.Volume, m.Data, m.Mountpoint = "c", "/f", "/o" })},
		{name: "empty env ignored", args: mountArgs, env: map[string]string{"TRICOPY_GROUP": ""}, file: "group: g2\n",
			want: with(func(m *Mount) { m.Group = "g2" })},
		{name: "dashed key env", args: mountArgs, env: map[string]string{"TRICOPY_READ_ONLY": "true", "TRICOPY_ALLOW_OTHER": "1"},
			want: with(func(m *Mount) { m.ReadOnly, m.AllowOther = true, true })},
		{name: "bool flag without value", args: append([]string{"--read-only", "--debug-fuse"}, mountArgs...),
			want: with(func(m *Mount) { m.ReadOnly, m.DebugFUSE = true, true })},
		{name: "bool flag false over env true", args: append([]string{"--read-only=false"}, mountArgs...), env: map[string]string{"TRICOPY_READ_ONLY": "true"},
			want: def},
		{name: "bool in file", args: mountArgs, file: "read-only: true\nallow-other: false\n",
			want: with(func(m *Mount) { m.ReadOnly = true })},
		{name: "plain byte size in file", args: mountArgs, file: "size: 1048576\n",
			want: with(func(m *Mount) { m.Size = MiB })},
		{name: "inodes in file and flag", args: append([]string{"--inodes", "500"}, mountArgs...), file: "inodes: 100\n",
			want: with(func(m *Mount) { m.Inodes = 500 })},
		{name: "enum case-insensitive", args: append([]string{"--fence", "NEVER", "--log-level", "Debug"}, mountArgs...),
			want: with(func(m *Mount) { m.Fence, m.LogLevel = "never", "debug" })},
		{name: "list flag", args: append([]string{"--intermediate", "h1:7000, h2:7000"}, mountArgs...),
			want: with(func(m *Mount) { m.Intermediate = []string{"h1:7000", "h2:7000"} })},
		{name: "list env", args: mountArgs, env: map[string]string{"TRICOPY_INTERMEDIATE": "h1:1,[::1]:2"},
			want: with(func(m *Mount) { m.Intermediate = []string{"h1:1", "[::1]:2"} })},
		{name: "list file", args: mountArgs, file: "intermediate:\n  - h1:7000\n  - h2:7001\n",
			want: with(func(m *Mount) { m.Intermediate = []string{"h1:7000", "h2:7001"} })},
		{name: "list file as string", args: mountArgs, file: "intermediate: h1:7000,h2:7001\n",
			want: with(func(m *Mount) { m.Intermediate = []string{"h1:7000", "h2:7001"} })},
		{name: "empty list file", args: mountArgs, file: "intermediate: []\n", want: def},
		{name: "key without value keeps default", args: mountArgs, file: "group:\n", want: def},
		{name: "comment-only file", args: mountArgs, file: "# nothing\n", want: def},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := DefaultMount()
			if err := loadCase(t, &got, tt.args, tt.env, tt.file); err != nil {
				t.Fatalf("Load: %v", err)
			}
			got.Config = "" // the temporary file's name
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Load:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name    string
		cfg     func() Config
		args    []string
		env     map[string]string
		file    string
		key     string
		is      error  // the sentinel the error wraps, if any
		source  string // a substring of Error.Source, if any
		message string // a substring of the message
	}{
		{name: "unknown key in file", cfg: mountCfg, args: mountArgs, file: "mountpont: /m\n",
			key: "mountpont", is: ErrUnknownKey, source: "config file", message: "this command knows: "},
		{name: "nested unknown key", cfg: mountCfg, args: mountArgs, file: "volume: a\ntls:\n  cert: x\n",
			key: "tls.cert", is: ErrUnknownKey},
		{name: "key of another command", cfg: fsckCfg, args: []string{"--data", "/d"}, file: "mountpoint: /m\n",
			key: "mountpoint", is: ErrUnknownKey},
		{name: "config key in file", cfg: mountCfg, args: mountArgs, file: "config: other.yaml\n",
			key: "config", is: ErrInvalid},
		{name: "missing config file", cfg: mountCfg, args: append([]string{"--config", "/nonexistent/c.yaml"}, mountArgs...),
			key: "config", source: "flag --config", message: "/nonexistent/c.yaml"},
		{name: "missing config file from env", cfg: mountCfg, args: mountArgs, env: map[string]string{"TRICOPY_CONFIG": "/nonexistent/e.yaml"},
			key: "config", source: "env TRICOPY_CONFIG"},
		{name: "yaml syntax error", cfg: mountCfg, args: mountArgs, file: "volume: [a\n", key: "config"},
		{name: "bad size flag", cfg: mountCfg, args: append([]string{"--size", "12XB"}, mountArgs...),
			key: "size", is: ErrBadSize, source: "flag --size", message: `unknown unit "XB"`},
		{name: "bad size env", cfg: mountCfg, args: mountArgs, env: map[string]string{"TRICOPY_SIZE": "big"},
			key: "size", is: ErrBadSize, source: "env TRICOPY_SIZE"},
		{name: "bad size file", cfg: mountCfg, args: mountArgs, file: "size: 1.5\n", key: "size", is: ErrInvalid, source: "config file"},
		{name: "size list in file", cfg: mountCfg, args: mountArgs, file: "size: [1, 2]\n", key: "size", is: ErrInvalid, message: "got a list"},
		{name: "negative size file", cfg: mountCfg, args: mountArgs, file: "size: -5\n", key: "size", is: ErrInvalid},
		{name: "size below minimum", cfg: mountCfg, args: append([]string{"--size", "512KiB"}, mountArgs...),
			key: "size", is: ErrInvalid, message: "below the minimum volume size 1MiB"},
		{name: "bad inodes", cfg: mountCfg, args: append([]string{"--inodes", "-3"}, mountArgs...), key: "inodes", is: ErrInvalid},
		{name: "bad bool env", cfg: mountCfg, args: mountArgs, env: map[string]string{"TRICOPY_READ_ONLY": "maybe"},
			key: "read-only", is: ErrInvalid, source: "env TRICOPY_READ_ONLY"},
		{name: "bad bool file", cfg: mountCfg, args: mountArgs, file: "read-only: yes please\n", key: "read-only", is: ErrInvalid},
		{name: "bad fence", cfg: mountCfg, args: append([]string{"--fence", "sometimes"}, mountArgs...),
			key: "fence", is: ErrInvalid, message: "want one of data, never"},
		{name: "bad log level", cfg: fsckCfg, args: []string{"--data", "/d"}, env: map[string]string{"TRICOPY_LOG_LEVEL": "loud"},
			key: "log-level", is: ErrInvalid},
		{name: "bad log format file", cfg: fsckCfg, args: []string{"--data", "/d"}, file: "log-format: xml\n", key: "log-format", is: ErrInvalid},
		{name: "missing volume", cfg: mountCfg, args: []string{"--data", "/d", "--mountpoint", "/m"},
			key: "volume", is: ErrRequired, message: "TRICOPY_VOLUME"},
		{name: "missing mountpoint", cfg: mountCfg, args: []string{"--volume", "a", "--data", "/d"}, key: "mountpoint", is: ErrRequired},
		{name: "bad volume name", cfg: mountCfg, args: []string{"--volume", "a,b", "--data", "/d", "--mountpoint", "/m"},
			key: "volume", is: ErrInvalid},
		{name: "volume name too long", cfg: mountCfg, args: []string{"--volume", strings.Repeat("v", 65), "--data", "/d", "--mountpoint", "/m"},
			key: "volume", is: ErrInvalid},
		{name: "empty group", cfg: mountCfg, args: append([]string{"--group", ""}, mountArgs...), key: "group", is: ErrRequired},
		{name: "bad intermediate address", cfg: mountCfg, args: append([]string{"--intermediate", "h1:7000,nohost"}, mountArgs...),
			key: "intermediate", is: ErrInvalid, message: `"nohost"`},
		{name: "bad intermediate port", cfg: mountCfg, args: mountArgs, file: "intermediate: [h1:99999]\n", key: "intermediate", is: ErrInvalid},
		{name: "intermediate of maps", cfg: mountCfg, args: mountArgs, file: "intermediate:\n  - {a: 1}\n", key: "intermediate", is: ErrInvalid},
		{name: "format without size", cfg: formatCfg, args: []string{"--data", "/d"}, key: "size", is: ErrRequired},
		{name: "format without data", cfg: formatCfg, args: []string{"--size", "1GiB"}, key: "data", is: ErrRequired},
		{name: "format tiny size", cfg: formatCfg, args: []string{"--data", "/d", "--size", "4096"}, key: "size", is: ErrInvalid},
		{name: "fsck without data", cfg: fsckCfg, key: "data", is: ErrRequired},
		{name: "bad metrics address", cfg: mountCfg, args: append([]string{"--metrics", "nohost"}, mountArgs...),
			key: "metrics", is: ErrInvalid, message: `"nohost"`},
		{name: "metrics port zero", cfg: mountCfg, args: mountArgs, env: map[string]string{"TRICOPY_METRICS": "127.0.0.1:0"},
			key: "metrics", is: ErrInvalid},
		{name: "intermediate metrics on raft", cfg: intermediateCfg,
			args: []string{"--node", "i1", "--data", "/d", "--listen", "127.0.0.1:7100", "--raft", "127.0.0.1:7200", "--metrics", "127.0.0.1:7200"},
			key:  "metrics", is: ErrInvalid, message: "also the raft address"},
		{name: "secondary metrics on listen", cfg: secondaryCfg,
			args: []string{"--volume", "a", "--data", "/d", "--mountpoint", "/m", "--intermediate", "h:1", "--listen", "h:2"},
			file: "metrics: h:2\n", key: "metrics", is: ErrInvalid, message: "also the listen address"},
		{name: "up bad metrics", cfg: upCfg, args: []string{"--dir", "/d", "--metrics", "127.0.0.1:http"}, key: "metrics", is: ErrInvalid},
		{name: "up metrics on secondary-listen", cfg: upCfg, args: []string{"--dir", "/d", "--metrics", DefaultUpSecondaryListen},
			key: "metrics", is: ErrInvalid, message: "also the secondary-listen address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := loadCase(t, tt.cfg(), tt.args, tt.env, tt.file)
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("Load error %v (%T) is not a *configs.Error", err, err)
			}
			if ce.Key != tt.key {
				t.Errorf("error key %q, want %q (error: %v)", ce.Key, tt.key, err)
			}
			if !strings.Contains(err.Error(), `"`+tt.key+`"`) {
				t.Errorf("message %q does not name key %q", err, tt.key)
			}
			if tt.is != nil && !errors.Is(err, tt.is) {
				t.Errorf("error %v does not wrap %v", err, tt.is)
			}
			if !strings.Contains(ce.Source, tt.source) {
				t.Errorf("error source %q does not contain %q", ce.Source, tt.source)
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("message %q does not contain %q", err, tt.message)
			}
		})
	}
}

func mountCfg() Config  { c := DefaultMount(); return &c }
func fsckCfg() Config   { c := DefaultFsck(); return &c }
func formatCfg() Config { c := DefaultFormat(); return &c }

func intermediateCfg() Config { c := DefaultIntermediate(); return &c }
func secondaryCfg() Config    { c := DefaultSecondary(); return &c }
func upCfg() Config           { c := DefaultUp(); return &c }

// TestMetricsKey loads the metrics key of every command that has it.
func TestMetricsKey(t *testing.T) {
	for _, tt := range []struct {
		cfg  Config
		args []string
		get  func(Config) string
	}{
		{mountCfg(), mountArgs, func(c Config) string { return c.(*Mount).Metrics }},
		{intermediateCfg(), []string{"--node", "i1", "--data", "/d", "--listen", "127.0.0.1:7100", "--raft", "127.0.0.1:7200"},
			func(c Config) string { return c.(*Intermediate).Metrics }},
		{secondaryCfg(), []string{"--volume", "a", "--data", "/d", "--mountpoint", "/m", "--intermediate", "h:1", "--listen", "h:2"},
			func(c Config) string { return c.(*Secondary).Metrics }},
		{upCfg(), []string{"--dir", "/d"}, func(c Config) string { return c.(*Up).Metrics }},
	} {
		if err := loadCase(t, tt.cfg, tt.args, nil, ""); err != nil {
			t.Fatalf("%T without metrics: %v", tt.cfg, err)
		}
		if got := tt.get(tt.cfg); got != "" {
			t.Errorf("%T: metrics defaults to %q, want empty", tt.cfg, got)
		}
		if err := loadCase(t, tt.cfg, append(tt.args, "--metrics", "0.0.0.0:9100"), nil, ""); err != nil {
			t.Fatalf("%T with metrics: %v", tt.cfg, err)
		}
		if got := tt.get(tt.cfg); got != "0.0.0.0:9100" {
			t.Errorf("%T: metrics %q, want 0.0.0.0:9100", tt.cfg, got)
		}
	}
}

// allTypes exercises every supported field type.
type allTypes struct {
	Common
	S  string        `key:"s"`
	B  bool          `key:"b"`
	N  uint64        `key:"n"`
	Z  Size          `key:"z"`
	D  time.Duration `key:"d"`
	L  []string      `key:"l"`
	No string        // no key: not configurable
}

func (*allTypes) Validate() error { return nil }

func TestLoadTypes(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		file    string
		want    allTypes
		wantKey string // when not empty, Load must fail on this key
	}{
		{name: "defaults", want: allTypes{D: 5 * time.Second, Z: 4 * KiB, N: 7}},
		{name: "flags", args: []string{"--s", "x", "--b", "--n", "9", "--z", "10GB", "--d", "500ms", "--l", "p,q"},
			want: allTypes{S: "x", B: true, N: 9, Z: 10 * GB, D: 500 * time.Millisecond, L: []string{"p", "q"}}},
		{name: "env", env: map[string]string{"TRICOPY_S": "y", "TRICOPY_B": "true", "TRICOPY_N": "3", "TRICOPY_Z": "256MiB", "TRICOPY_D": "1m30s", "TRICOPY_L": "r"},
			want: allTypes{S: "y", B: true, N: 3, Z: 256 * MiB, D: 90 * time.Second, L: []string{"r"}}},
		{name: "file", file: "s: 42\nb: true\nn: 8\nz: 1GiB\nd: 2s\nl: [a, b]\n",
			want: allTypes{S: "42", B: true, N: 8, Z: GiB, D: 2 * time.Second, L: []string{"a", "b"}}},
		{name: "zero duration without unit", file: "d: 0\n", want: allTypes{Z: 4 * KiB, N: 7}},
		{name: "duration without unit", file: "d: 5\n", wantKey: "d"},
		{name: "bad duration", env: map[string]string{"TRICOPY_D": "soon"}, wantKey: "d"},
		{name: "negative duration", args: []string{"--d", "-1s"}, wantKey: "d"},
		{name: "map for string", file: "s: {a: b}\n", wantKey: "s"},
		{name: "no key field is unknown", file: "no: x\n", wantKey: "no"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := allTypes{Common: DefaultCommon(), D: 5 * time.Second, Z: 4 * KiB, N: 7}
			err := loadCase(t, &got, tt.args, tt.env, tt.file)
			if tt.wantKey != "" {
				var ce *Error
				if !errors.As(err, &ce) || ce.Key != tt.wantKey {
					t.Fatalf("Load error %v, want a *configs.Error on key %q", err, tt.wantKey)
				}
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			tt.want.Common = DefaultCommon()
			got.Config = ""
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("Load:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestBindHelp(t *testing.T) {
	cfg := DefaultMount()
	fs := pflag.NewFlagSet("mount", pflag.ContinueOnError)
	Bind(fs, &cfg)
	for _, key := range Keys(&cfg) {
		f := fs.Lookup(key)
		if f == nil {
			t.Errorf("key %q has no flag", key)
			continue
		}
		if !strings.Contains(f.Usage, EnvName(key)) {
			t.Errorf("usage of --%s %q does not name %s", key, f.Usage, EnvName(key))
		}
		if strings.HasPrefix(f.Usage, " [env") {
			t.Errorf("--%s has no help text", key)
		}
	}
	if got := fs.Lookup("fence").DefValue; got != "data" {
		t.Errorf("--fence default %q, want data", got)
	}
	if got := fs.Lookup("fence").Value.Type(); got != "data|never" {
		t.Errorf("--fence value name %q, want data|never", got)
	}
	usage := fs.FlagUsages()
	for _, want := range []string{"--data DIR", "--size SIZE", "--intermediate ADDRS", "--read-only ", "(default info)"} {
		if !strings.Contains(usage, want) {
			t.Errorf("flag usage lacks %q:\n%s", want, usage)
		}
	}
}

func TestEnvName(t *testing.T) {
	for key, want := range map[string]string{
		"mountpoint": "TRICOPY_MOUNTPOINT", "read-only": "TRICOPY_READ_ONLY", "log-level": "TRICOPY_LOG_LEVEL",
	} {
		if got := EnvName(key); got != want {
			t.Errorf("EnvName(%q) = %q, want %q", key, got, want)
		}
	}
}

func TestErrorMessage(t *testing.T) {
	e := &Error{Key: "size", Source: "env TRICOPY_SIZE", Err: ErrInvalid}
	if got, want := e.Error(), `config key "size" (from env TRICOPY_SIZE): invalid value`; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got, want := Required("data").Error(), `config key "data": required: pass --data, set TRICOPY_DATA, or set data in the --config file`; got != want {
		t.Errorf("Required: %q, want %q", got, want)
	}
}

// TestLoadRefusesHugeFile: a config file over MaxConfigFile is refused
// before it is read.
func TestLoadRefusesHugeFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "huge.yaml")
	if err := os.WriteFile(path, bytes.Repeat([]byte("# comment line\n"), MaxConfigFile/15+1), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultFormat()
	fs := pflag.NewFlagSet("format", pflag.ContinueOnError)
	Bind(fs, &cfg)
	if err := fs.Parse([]string{"--config", path}); err != nil {
		t.Fatal(err)
	}
	err := Load(fs, &cfg)
	var ce *Error
	if !errors.As(err, &ce) || ce.Key != ConfigKey || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("load of a %d-byte config file: %v", MaxConfigFile+15, err)
	}
}
