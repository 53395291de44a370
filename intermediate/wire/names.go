package wire

import "fmt"

// MaxVolumeName is the length limit of a volume name, in bytes.
const MaxVolumeName = 64

// CheckVolumeName reports whether name may name a volume: 1 to
// MaxVolumeName characters of [A-Za-z0-9._-], not starting with '.'. A
// volume name is also the name of a directory on every node (the
// intermediate volume, the staging store of a secondary), so it can hold
// neither a path separator nor "..", and names starting with '.' stay free
// for the nodes' own temporary directories. The error wraps ErrBadRequest.
func CheckVolumeName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty volume name", ErrBadRequest)
	case len(name) > MaxVolumeName:
		return fmt.Errorf("%w: volume name of %d bytes, longer than %d", ErrBadRequest, len(name), MaxVolumeName)
	case name[0] == '.':
		return fmt.Errorf("%w: volume name %q starts with '.'", ErrBadRequest, name)
	}
	for i := 0; i < len(name); i++ {
		if !volumeNameByte(name[i]) {
			return fmt.Errorf("%w: volume name %q has byte %q at offset %d; allowed are A-Z a-z 0-9 . _ -",
				ErrBadRequest, name, name[i], i)
		}
	}
	return nil
}

func volumeNameByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	case c == '.', c == '_', c == '-':
		return true
	}
	return false
}

// PromotionStatement is what an admin signs to let another process record
// a promotion at the intermediate (PromoteRequest.admin): the group, the
// promotion's ID, who asked and its point, after a prefix that makes it
// unusable as any other statement.
func PromotionStatement(group, promotionID, by string, atSeq uint64) []byte {
	return fmt.Appendf(nil, "tricopy promote v1\x00%s\x00%s\x00%s\x00%d", group, promotionID, by, atSeq)
}
