package main

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/tricopy/tricopy/configs"
)

// TestBenchReportFlag checks that every benchmark and bench all take
// --report, with its environment variable named in the help.
func TestBenchReportFlag(t *testing.T) {
	for _, name := range append([]string{"all"}, configs.BenchNames...) {
		r := runCmd(t, nil, "bench", name, "--help")
		if r.code != 0 {
			t.Fatalf("bench %s --help: exit %d", name, r.code)
		}
		for _, want := range []string{"--report DIR", "TRICOPY_REPORT"} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("bench %s --help lacks %q", name, want)
			}
		}
	}
	if r := runCmd(t, nil, "bench", "all", "--help"); !strings.Contains(r.stdout, "--quick") || !strings.Contains(r.stdout, "--skip") {
		t.Errorf("bench all --help lacks --quick or --skip")
	}
}

func TestBenchAllUsage(t *testing.T) {
	runCmd(t, nil, "bench", "all", "--report", t.TempDir()).expect(t, 2, `"dir"`)
	runCmd(t, nil, "bench", "all", "--dir", t.TempDir(), "--skip", "fio").expect(t, 2, `"skip"`, "not a benchmark")
}

// TestBenchAllSteps checks that the configurations bench all gives the
// benchmarks, default and quick, are valid.
func TestBenchAllSteps(t *testing.T) {
	a := &app{stdout: io.Discard, stderr: io.Discard}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, quick := range []bool{false, true} {
		cfg := configs.DefaultBenchAll()
		cfg.Dir, cfg.Quick = t.TempDir(), quick
		steps, err := benchAllSteps(a, log, &cfg)
		if err != nil {
			t.Fatalf("quick %v: %v", quick, err)
		}
		for _, name := range configs.BenchNames {
			if steps[name] == nil {
				t.Errorf("quick %v: no step %s", quick, name)
			}
		}
	}
}
