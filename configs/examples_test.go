package configs

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/spf13/pflag"
)

// exampleConfigs maps a command name to a fresh default configuration, for
// every command an example file may be written for.
var exampleConfigs = map[string]func() Config{
	"format": formatCfg,
	"fsck":   fsckCfg,
	"mount":  mountCfg,
	"intermediate": func() Config {
		c := DefaultIntermediate()
		return &c
	},
	"up": func() Config {
		c := DefaultUp()
		return &c
	},
	"secondary": func() Config {
		c := DefaultSecondary()
		return &c
	},
}

// usedBy finds the command of an example file in its header line
// "# Used by: tricopy COMMAND --config ...".
var usedBy = regexp.MustCompile(`(?m)^# Used by: tricopy ([a-z-]+) --config `)

// TestExamples loads every YAML file of this directory with the command its
// header names, so that the examples cannot rot.
func TestExamples(t *testing.T) {
	files, err := filepath.Glob("*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no example files found")
	}
	for _, file := range files {
		t.Run(file, func(t *testing.T) {
			text, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			m := usedBy.FindSubmatch(text)
			if m == nil {
				t.Fatalf("%s has no header line %q", file, "# Used by: tricopy COMMAND --config "+file)
			}
			newCfg, ok := exampleConfigs[string(m[1])]
			if !ok {
				t.Fatalf("%s is for command %q, which the test does not know; add it to exampleConfigs", file, m[1])
			}
			clearEnv(t)
			cfg := newCfg()
			fs := pflag.NewFlagSet(string(m[1]), pflag.ContinueOnError)
			Bind(fs, cfg)
			if err := fs.Parse([]string{"--config", file}); err != nil {
				t.Fatal(err)
			}
			if err := Load(fs, cfg); err != nil {
				t.Fatalf("%s does not load: %v", file, err)
			}
		})
	}
}

// TestExamplesSetEveryKey checks that the files meant to document every key
// of their command do: mount.example.yaml for `tricopy mount`, local.yaml
// for `tricopy up`.
func TestExamplesSetEveryKey(t *testing.T) {
	for file, newCfg := range map[string]func() Config{
		"mount.example.yaml":     mountCfg,
		"local.yaml":             exampleConfigs["up"],
		"secondary.example.yaml": exampleConfigs["secondary"],
	} {
		t.Run(file, func(t *testing.T) {
			text, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			for _, key := range Keys(newCfg()) {
				if key == ConfigKey {
					continue
				}
				if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(key) + `:`).Match(text) {
					t.Errorf("%s does not set key %q", file, key)
				}
			}
		})
	}
}
