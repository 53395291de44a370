package configs

import (
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// Size is a number of bytes. Its text form is a number with an optional unit:
// "4096", "4096B", "256MiB", "1GiB", "1.5GiB", "10GB", "64K". Units are case
// insensitive; KiB, MiB, GiB, TiB, PiB and the one-letter K, M, G, T, P are
// powers of 1024 (as in dd and fio), KB, MB, GB, TB, PB powers of 1000.
type Size uint64

// Binary and decimal size units.
const (
	B   Size = 1
	KiB Size = 1 << 10
	MiB Size = 1 << 20
	GiB Size = 1 << 30
	TiB Size = 1 << 40
	PiB Size = 1 << 50
	KB  Size = 1e3
	MB  Size = 1e6
	GB  Size = 1e9
	TB  Size = 1e12
	PB  Size = 1e15
)

// ErrBadSize is returned (wrapped) by ParseSize for text that is not a size.
var ErrBadSize = errors.New("invalid size")

// sizeUnits maps lower-case unit names to their value.
var sizeUnits = map[string]Size{
	"": B, "b": B,
	"k": KiB, "kib": KiB, "kb": KB,
	"m": MiB, "mib": MiB, "mb": MB,
	"g": GiB, "gib": GiB, "gb": GB,
	"t": TiB, "tib": TiB, "tb": TB,
	"p": PiB, "pib": PiB, "pb": PB,
}

// sizeFormatUnits are the units Size.String may use, binary first so that
// they win ties.
var sizeFormatUnits = []struct {
	name string
	unit Size
}{
	{"PiB", PiB}, {"TiB", TiB}, {"GiB", GiB}, {"MiB", MiB}, {"KiB", KiB},
	{"PB", PB}, {"TB", TB}, {"GB", GB}, {"MB", MB}, {"KB", KB},
}

// ParseSize parses the text form of a Size. The result must be a whole number
// of bytes that fits in 64 bits: "1.5KiB" is 1536 bytes, "0.1KiB" is an error.
func ParseSize(s string) (Size, error) {
	text := strings.TrimSpace(s)
	i := 0
	dots := 0
	for ; i < len(text); i++ {
		c := text[i]
		if c == '.' {
			dots++
			continue
		}
		if c < '0' || c > '9' {
			break
		}
	}
	num, unit := text[:i], strings.TrimSpace(text[i:])
	if num == "" || num == "." || dots > 1 {
		return 0, fmt.Errorf("%w %q: want a number with an optional unit, like 4096, 256MiB or 10GB", ErrBadSize, s)
	}
	mult, ok := sizeUnits[strings.ToLower(unit)]
	if !ok {
		return 0, fmt.Errorf("%w %q: unknown unit %q (want B, KiB, MiB, GiB, TiB, PiB, KB, MB, GB, TB or PB)", ErrBadSize, s, unit)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("%w %q: bad number %q", ErrBadSize, s, num)
	}
	r.Mul(r, new(big.Rat).SetUint64(uint64(mult)))
	if !r.IsInt() {
		return 0, fmt.Errorf("%w %q: not a whole number of bytes", ErrBadSize, s)
	}
	if !r.Num().IsUint64() {
		return 0, fmt.Errorf("%w %q: too large", ErrBadSize, s)
	}
	return Size(r.Num().Uint64()), nil
}

// String formats s exactly with the unit that gives the smallest number,
// binary units winning ties: 1GiB, 10GB, 2000KiB, 4097B.
// ParseSize(s.String()) == s.
func (s Size) String() string {
	if s == 0 {
		return "0"
	}
	best, name := s, "B"
	for _, u := range sizeFormatUnits {
		if s%u.unit == 0 && s/u.unit < best {
			best, name = s/u.unit, u.name
		}
	}
	return fmt.Sprintf("%d%s", uint64(best), name)
}

// Bytes returns s as a plain byte count.
func (s Size) Bytes() uint64 { return uint64(s) }

// MarshalText implements encoding.TextMarshaler with the String form.
func (s Size) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler with ParseSize.
func (s *Size) UnmarshalText(text []byte) error {
	v, err := ParseSize(string(text))
	if err != nil {
		return err
	}
	*s = v
	return nil
}
