package blockdev

import (
	"strings"
	"testing"
)

// TestSaveStateFileRefusesOversized: a state file LoadStateFile could not
// read back is never written.
func TestSaveStateFileRefusesOversized(t *testing.T) {
	fsys := NewMemFS()
	big := strings.Repeat("x", MaxStateFile)
	if err := SaveStateFile(fsys, "test", "/state", "test v1\n", big); err == nil {
		t.Fatal("an oversized state file was saved")
	}
	if _, err := fsys.Stat("test", "/state"); err == nil {
		t.Fatal("an oversized state file was written")
	}
}
