package benchutil

import (
	"os"
	"path/filepath"
	"testing"
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
