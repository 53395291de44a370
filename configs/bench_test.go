package configs

import (
	"errors"
	"slices"
	"testing"
)

// benchConfigs returns a fresh default configuration of every `tricopy
// bench` subcommand, by name.
func benchConfigs() map[string]func() Config {
	return map[string]func() Config{
		"fs":       func() Config { c := DefaultBenchFSCommand(); return &c },
		"submit":   func() Config { c := DefaultBenchSubmit(); return &c },
		"mirror":   func() Config { c := DefaultBenchMirror(); return &c },
		"lag":      func() Config { c := DefaultBenchLag(); return &c },
		"failover": func() Config { c := DefaultBenchFailover(); return &c },
		"all":      func() Config { c := DefaultBenchAll(); return &c },
	}
}

// reportOf returns the report key's value of a bench configuration.
func reportOf(t *testing.T, cfg Config) string {
	t.Helper()
	switch c := cfg.(type) {
	case *BenchFSCommand:
		return c.Report
	case *BenchSubmit:
		return c.Report
	case *BenchMirror:
		return c.Report
	case *BenchLag:
		return c.Report
	case *BenchFailover:
		return c.Report
	case *BenchAll:
		return c.Report
	}
	t.Fatalf("unknown configuration %T", cfg)
	return ""
}

// TestBenchReportKey checks that every benchmark takes the report key
// from its flag, its environment variable and the config file.
func TestBenchReportKey(t *testing.T) {
	if got := EnvName("report"); got != "TRICOPY_REPORT" {
		t.Fatalf("EnvName(report) = %s", got)
	}
	for name, newCfg := range benchConfigs() {
		t.Run(name, func(t *testing.T) {
			if keys := Keys(newCfg()); !slices.Contains(keys, "report") || !slices.Contains(keys, "dir") {
				t.Fatalf("keys %v lack report or dir", keys)
			}
			for _, tc := range []struct {
				name string
				args []string
				env  map[string]string
				file string
			}{
				{"flag", []string{"--dir", "/d", "--report", "/r"}, nil, ""},
				{"env", []string{"--dir", "/d"}, map[string]string{"TRICOPY_REPORT": "/r"}, ""},
				{"file", []string{"--dir", "/d"}, nil, "report: /r\n"},
			} {
				cfg := newCfg()
				if err := loadCase(t, cfg, tc.args, tc.env, tc.file); err != nil {
					t.Fatalf("%s: %v", tc.name, err)
				}
				if got := reportOf(t, cfg); got != "/r" {
					t.Errorf("%s: report = %q, want /r", tc.name, got)
				}
			}
			cfg := newCfg()
			if err := loadCase(t, cfg, []string{"--dir", "/d"}, nil, ""); err != nil {
				t.Fatal(err)
			}
			if got := reportOf(t, cfg); got != "" {
				t.Errorf("default report = %q, want none", got)
			}
		})
	}
}

func TestBenchAll(t *testing.T) {
	cfg := DefaultBenchAll()
	if err := loadCase(t, &cfg, []string{"--dir", "/d", "--quick", "--skip", "submit,failover"}, nil, ""); err != nil {
		t.Fatal(err)
	}
	if got := cfg.Runs(); !slices.Equal(got, []string{"fs", "mirror", "lag"}) || !cfg.Quick {
		t.Errorf("runs %v (quick %v), want fs, mirror, lag (quick)", got, cfg.Quick)
	}
	for _, args := range [][]string{
		{"--dir", "/d", "--skip", "fio"},
		{"--dir", "/d", "--skip", "fs,submit,mirror,lag,failover"},
		{"--report", "/r"},
	} {
		cfg := DefaultBenchAll()
		err := loadCase(t, &cfg, args, nil, "")
		var e *Error
		if !errors.As(err, &e) {
			t.Errorf("%q: got %v, want an *Error", args, err)
		}
	}
	// The fs command keeps BenchFS's validation.
	fs := DefaultBenchFSCommand()
	if err := loadCase(t, &fs, []string{"--dir", "/d", "--files", "0"}, nil, ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("bench fs --files 0: got %v, want ErrInvalid", err)
	}
}
