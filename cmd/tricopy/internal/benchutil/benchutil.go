// Package benchutil holds what tricopy's benchmarks (bench fs, bench
// submit) share for their reports: the machine facts they print, figure
// formatting, and the JSON results file.
package benchutil

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// KernelRelease returns the running kernel's release, or "" if unknown.
func KernelRelease() string {
	b, err := os.ReadFile("/proc/sys/kernel/osrelease")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// Number formats a figure with three significant digits or more.
func Number(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// WriteJSON writes results to path as indented JSON.
func WriteJSON(path string, results any) error {
	b, err := json.MarshalIndent(results, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results to %s: %w", path, err)
	}
	return nil
}

// Printer writes formatted text to W and keeps the first error in Err, so
// that a report is written without checking every line.
type Printer struct {
	W   io.Writer
	Err error
}

// F writes one formatted piece unless an earlier write failed.
func (p *Printer) F(format string, args ...any) {
	if p.Err == nil {
		_, p.Err = fmt.Fprintf(p.W, format, args...)
	}
}

// MakeRunDir creates dir if needed and a fresh directory in it, named
// with prefix, for one run of a benchmark.
func MakeRunDir(dir, prefix string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("create benchmark dir: %w", err)
	}
	runDir, err := os.MkdirTemp(dir, prefix)
	if err != nil {
		return "", fmt.Errorf("create benchmark dir: %w", err)
	}
	return runDir, nil
}

// RemoveRunDir removes a run directory made by MakeRunDir and joins a
// failure to *err; defer it.
func RemoveRunDir(runDir string, err *error) {
	if rerr := os.RemoveAll(runDir); rerr != nil {
		*err = errors.Join(*err, fmt.Errorf("remove benchmark dir: %w", rerr))
	}
}

// Report writes a benchmark's markdown to w with markdown, and its results
// as JSON to jsonPath when it is set.
func Report(w io.Writer, markdown func(io.Writer) error, jsonPath string, results any) error {
	if err := markdown(w); err != nil {
		return fmt.Errorf("write results: %w", err)
	}
	if jsonPath != "" {
		return WriteJSON(jsonPath, results)
	}
	return nil
}
