package configs

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
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

// usedBy finds the command and the configuration path of an example file
// in its header line "# Used by: tricopy COMMAND --config FILE".
var usedBy = regexp.MustCompile(`(?m)^# Used by: tricopy ([a-z-]+) --config (\S+)`)

// exampleGlobs match the example files: this directory's, and the
// deployment's under deploy/, one directory per host.
var exampleGlobs = []string{"*.yaml", "deploy/*.yaml", "deploy/*/*.yaml"}

// exampleFiles returns the files exampleGlobs match.
func exampleFiles(t *testing.T) []string {
	t.Helper()
	var files []string
	for _, g := range exampleGlobs {
		m, err := filepath.Glob(g)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	return files
}

// TestExamples loads every YAML file of this directory and of deploy/ with
// the command its header names, so that the examples cannot rot.
func TestExamples(t *testing.T) {
	files := exampleFiles(t)
	if len(files) == 0 {
		t.Fatal("no example files found")
	}
	if !slices.ContainsFunc(files, func(f string) bool { return strings.HasPrefix(f, "deploy/") }) {
		t.Fatal("no example files found under deploy/")
	}
	for _, file := range files {
		t.Run(file, func(t *testing.T) {
			loadExample(t, file)
		})
	}
}

// loadExample loads the example file with the command its header names,
// as that command would, and returns the command and the loaded
// configuration and header path (the FILE of "--config FILE").
func loadExample(t *testing.T, file string) (command string, cfg Config, headerPath string) {
	t.Helper()
	text, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	m := usedBy.FindSubmatch(text)
	if m == nil {
		t.Fatalf("%s has no header line %q", file, "# Used by: tricopy COMMAND --config "+file)
	}
	command, headerPath = string(m[1]), string(m[2])
	newCfg, ok := exampleConfigs[command]
	if !ok {
		t.Fatalf("%s is for command %q, which the test does not know; add it to exampleConfigs", file, command)
	}
	clearEnv(t)
	cfg = newCfg()
	fs := pflag.NewFlagSet(command, pflag.ContinueOnError)
	Bind(fs, cfg)
	if err := fs.Parse([]string{"--config", file}); err != nil {
		t.Fatal(err)
	}
	if err := Load(fs, cfg); err != nil {
		t.Fatalf("%s does not load: %v", file, err)
	}
	return command, cfg, headerPath
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
