package benchutil

import (
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestNumber(t *testing.T) {
	for v, want := range map[float64]string{1234.6: "1235", 42.25: "42.2", 0.384: "0.38", 100: "100"} {
		if got := Number(v); got != want {
			t.Errorf("Number(%v) = %q, want %q", v, got, want)
		}
	}
}

func TestWriteJSON(t *testing.T) {
	p := filepath.Join(t.TempDir(), "r.json")
	if err := WriteJSON(p, map[string]int{"ops": 3}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "{\n  \"ops\": 3\n}\n" {
		t.Errorf("wrote %q", b)
	}
	if err := WriteJSON(filepath.Join(p, "x"), 1); err == nil {
		t.Error("writing under a file succeeded")
	}
}
func TestMountParsing(t *testing.T) {
	if got := unescapeMount(`/mnt/with\040space`); got != "/mnt/with space" {
		t.Errorf("unescapeMount = %q", got)
	}
	for _, tc := range []struct {
		path, mnt string
		want      bool
	}{
		{"/a/b", "/", true},
		{"/a/b", "/a", true},
		{"/a", "/a", true},
		{"/ab", "/a", false},
	} {
		if got := underMount(tc.path, tc.mnt); got != tc.want {
			t.Errorf("underMount(%q, %q) = %v, want %v", tc.path, tc.mnt, got, tc.want)
		}
	}
}

func TestHistogram(t *testing.T) {
	var samples []time.Duration
	for i := 1; i <= 1000; i++ {
		samples = append(samples, time.Duration(i)*time.Microsecond)
	}
	h := NewHistogram(samples)
	if h.Count() != 1000 {
		t.Fatalf("Count = %d, want 1000", h.Count())
	}
	for i := 1; i < len(h.Bins); i++ {
		if h.Bins[i].Value <= h.Bins[i-1].Value {
			t.Fatalf("bins not increasing at %d: %v then %v", i, h.Bins[i-1].Value, h.Bins[i].Value)
		}
		// From 100µs on the samples (1µs apart) fill every bin.
		if r := float64(h.Bins[i].Value) / float64(h.Bins[i-1].Value); h.Bins[i-1].Value >= 100*time.Microsecond && r > 1.021 {
			t.Fatalf("bins %v and %v are %.3f apart, want about 2%%", h.Bins[i-1].Value, h.Bins[i].Value, r)
		}
	}
	for q, want := range map[float64]time.Duration{0.5: 500 * time.Microsecond, 0.99: 990 * time.Microsecond} {
		got := h.Quantile(q)
		if d := math.Abs(float64(got-want)) / float64(want); d > 0.011 {
			t.Errorf("Quantile(%v) = %v, want %v ± 1.1%%", q, got, want)
		}
	}
	if got := (Histogram{}).Quantile(0.5); got != 0 {
		t.Errorf("empty Quantile = %v", got)
	}
	fio := HistogramOfCounts(map[time.Duration]int64{1000: 3, 1001: 2, 5000: 1, 7: 0})
	if fio.Count() != 6 || len(fio.Bins) != 2 || fio.Bins[0].Count != 5 {
		t.Errorf("HistogramOfCounts = %+v, want 5 near 1µs and 1 near 5µs", fio.Bins)
	}
}

func TestDescribeMachine(t *testing.T) {
	m := DescribeMachine(filepath.Join(t.TempDir(), "not", "yet"))
	if m.CPUs < 1 || m.GoVersion == "" {
		t.Errorf("DescribeMachine = %+v", m)
	}
	md := m.Markdown()
	for _, want := range []string{"- CPU: ", "- memory: ", "- kernel: ", "- scratch directory: ", "- Go: go", "- date: "} {
		if !strings.Contains(md, want) {
			t.Errorf("Markdown lacks %q:\n%s", want, md)
		}
	}
}
