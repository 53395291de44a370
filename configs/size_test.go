package configs

import (
	"errors"
	"testing"
)

func TestParseSize(t *testing.T) {
	tests := []struct {
		in   string
		want Size
	}{
		{"0", 0},
		{"4096", 4096},
		{"4096B", 4096},
		{"4096 B", 4096},
		{" 1GiB ", GiB},
		{"256MiB", 256 * MiB},
		{"256mib", 256 * MiB},
		{"256MIB", 256 * MiB},
		{"1.5GiB", GiB + GiB/2},
		{"1.5KiB", 1536},
		{"10GB", 10 * GB},
		{"10gb", 10 * GB},
		{"1KB", 1000},
		{"64K", 64 * KiB},
		{"1M", MiB},
		{"2G", 2 * GiB},
		{"3T", 3 * TiB},
		{"1TiB", TiB},
		{"1PiB", PiB},
		{"1PB", PB},
		{"15PiB", 15 * PiB},
		{"18446744073709551615", 1<<64 - 1},
	}
	for _, tt := range tests {
		got, err := ParseSize(tt.in)
		if err != nil {
			t.Errorf("ParseSize(%q): %v", tt.in, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseSize(%q) = %d, want %d", tt.in, got, tt.want)
		}
	}
}

func TestParseSizeErrors(t *testing.T) {
	for _, in := range []string{
		"", " ", "abc", "GiB", "-1", "-1GiB", "1XB", "1 G i B", "1..5GiB", "1.2.3", ".", "0.1KiB",
		"1.5", "18446744073709551616", "20000PiB", "1e3", "1/2", "0x10", "1GiB2",
	} {
		got, err := ParseSize(in)
		if err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
			continue
		}
		if !errors.Is(err, ErrBadSize) {
			t.Errorf("ParseSize(%q) error %v does not wrap ErrBadSize", in, err)
		}
	}
}

func TestSizeString(t *testing.T) {
	tests := []struct {
		in   Size
		want string
	}{
		{0, "0"},
		{1, "1B"},
		{4096, "4KiB"},
		{4097, "4097B"},
		{MiB, "1MiB"},
		{GiB, "1GiB"},
		{GiB + GiB/2, "1536MiB"},
		{10 * GB, "10GB"},
		{1000, "1KB"},
		{2048000, "2000KiB"},
		{PiB, "1PiB"},
	}
	for _, tt := range tests {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("Size(%d).String() = %q, want %q", uint64(tt.in), got, tt.want)
		}
	}
}

func TestSizeText(t *testing.T) {
	var s Size
	if err := s.UnmarshalText([]byte("256MiB")); err != nil {
		t.Fatal(err)
	}
	b, err := s.MarshalText()
	if err != nil || string(b) != "256MiB" {
		t.Fatalf("MarshalText = %q, %v; want 256MiB", b, err)
	}
	if err := s.UnmarshalText([]byte("lots")); !errors.Is(err, ErrBadSize) {
		t.Fatalf("UnmarshalText(lots) = %v, want ErrBadSize", err)
	}
	if s != 256*MiB {
		t.Fatalf("failed UnmarshalText changed the size to %d", s)
	}
}

// FuzzSize checks that every size ParseSize accepts formats back to text
// that parses to the same size.
func FuzzSize(f *testing.F) {
	for _, s := range []string{"4096", "1GiB", "1.5GiB", "10GB", "64k", "0", "4097B"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := ParseSize(in)
		if err != nil {
			return
		}
		back, err := ParseSize(s.String())
		if err != nil {
			t.Fatalf("ParseSize(%q) = %d, whose String %q does not parse: %v", in, s, s.String(), err)
		}
		if back != s {
			t.Fatalf("ParseSize(%q) = %d, String %q parses to %d", in, s, s.String(), back)
		}
	})
}
