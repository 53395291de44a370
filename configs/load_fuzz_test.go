package configs

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// fuzzConfig is a command's configuration for FuzzLoad.
type fuzzConfig struct {
	command string
	new     func() Config
}

// fuzzConfigs are the configurations FuzzLoad loads files into, picked by
// the input's first byte; "types" has a key of every supported type.
var fuzzConfigs = []fuzzConfig{
	{"mount", mountCfg},
	{"fsck", fsckCfg},
	{"format", formatCfg},
	{"intermediate", intermediateCfg},
	{"secondary", secondaryCfg},
	{"up", upCfg},
	{"wait", func() Config { c := DefaultWait(); return &c }},
	{"promote", func() Config { c := DefaultPromote(); return &c }},
	{"types", func() Config { c := allTypes{Common: DefaultCommon()}; return &c }},
}

// FuzzLoad loads arbitrary bytes as the --config YAML file of a command
// (no flag, no environment variable). Load must never panic; it returns
// either an *Error naming a key, or a configuration that passes Validate
// and that the same values given as flags load to exactly again (every
// accepted value has a text form that parses back to it).
func FuzzLoad(f *testing.F) {
	for _, g := range exampleGlobs {
		files, err := filepath.Glob(g)
		if err != nil {
			f.Fatal(err)
		}
		for _, file := range files {
			text, err := os.ReadFile(file)
			if err != nil {
				f.Fatal(err)
			}
			if m := usedBy.FindSubmatch(text); m != nil {
				if i := slices.IndexFunc(fuzzConfigs, func(c fuzzConfig) bool { return c.command == string(m[1]) }); i >= 0 {
					f.Add(byte(i), text)
				}
			}
		}
	}
	types := byte(len(fuzzConfigs) - 1)
	for _, seed := range []string{
		"",
		"s: x\nb: true\nn: 18446744073709551615\nz: 16EiB\nd: 2562047h47m16.854775807s\nl: [a, ' b ', 'c,d']\n",
		"s: 1e3\nb: 'false'\nn: '7'\nz: 1024\nd: 0\nl: a,b\n",
		"s: [x]\n",
		"n: -1\n",
		"z: 1.5GiB\n",
		"d: 5\n",
		"l: [{a: 1}]\n",
		"s: &a x\nl: [*a, *a]\n",
		"config: other.yaml\n",
		"log-level: DEBUG\nlog-format: json\n",
		"unknown: 1\n",
		"s:\n  nested: 1\n",
		"tls-cert: c.pem\n",
		"- a\n- b\n",
		"\t\x00\xff",
	} {
		f.Add(types, []byte(seed))
	}
	f.Add(byte(0), []byte("volume: a\ndata: /d\nmountpoint: /m\nsize: 2GiB\nfence: NEVER\nintermediate: [h1:7000, '[::1]:7001']\n"))
	f.Add(byte(4), []byte("volume: a\ndata: /d\nmountpoint: /m\nintermediate: h:1\nlisten: h:2\nname: s-1\n"))
	clearFuzzEnv(f)
	path := filepath.Join(f.TempDir(), "c.yaml")
	f.Fuzz(func(t *testing.T, kind byte, file []byte) {
		fc := fuzzConfigs[int(kind)%len(fuzzConfigs)]
		if err := os.WriteFile(path, file, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg := fc.new()
		if err := loadArgs(cfg, []string{"--" + ConfigKey, path}); err != nil {
			var ce *Error
			if !errors.As(err, &ce) || ce.Key == "" || !strings.Contains(err.Error(), strconv.Quote(ce.Key)) {
				t.Fatalf("%s: Load error %v (%T) is not a *configs.Error naming its key", fc.command, err, err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("%s: loaded, then Validate: %v", fc.command, err)
		}
		// The same values as flags load to the same configuration.
		var args []string
		for _, fl := range fields(cfg) {
			if fl.key != ConfigKey {
				args = append(args, "--"+fl.key+"="+fl.format())
			}
		}
		again := fc.new()
		if err := loadArgs(again, args); err != nil {
			t.Fatalf("%s: the loaded values as flags %q: %v", fc.command, args, err)
		}
		clearConfigKey(cfg)
		if !reflect.DeepEqual(cfg, again) {
			t.Fatalf("%s: loaded %+v from the file, %+v from the same values as flags %q", fc.command, cfg, again, args)
		}
	})
}

// loadArgs binds cfg's flags, parses args and loads cfg.
func loadArgs(cfg Config, args []string) error {
	fs := pflag.NewFlagSet("fuzz", pflag.ContinueOnError)
	fs.SetOutput(discard{})
	Bind(fs, cfg)
	if err := fs.Parse(args); err != nil {
		return err
	}
	return Load(fs, cfg)
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// clearConfigKey empties the config key of cfg (the file's name).
func clearConfigKey(cfg Config) {
	for _, fl := range fields(cfg) {
		if fl.key == ConfigKey {
			fl.value.SetString("")
		}
	}
}

// clearFuzzEnv hides every TRICOPY_* variable of the process from Load.
func clearFuzzEnv(f *testing.F) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, EnvPrefix) {
			f.Setenv(k, "")
		}
	}
}
