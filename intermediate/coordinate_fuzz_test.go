package intermediate

import (
	"errors"
	"regexp"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// secondaryIDPattern is what a secondary ID may be, stated apart from
// checkSecondaryID.
var secondaryIDPattern = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// checkHello runs the checks the Coordinate handler makes of a stream's
// first message before it registers the secondary, in its order: the
// message size, a hello, the group, the secondary's ID, volume name and
// address. It returns the hello and the refusal, if any.
func checkHello(req *wire.CoordinateRequest) (*wire.SecondaryHello, error) {
	if err := checkCoordinateSize(req); err != nil {
		return nil, err
	}
	hello := req.GetHello()
	switch {
	case hello == nil:
		return nil, wire.ErrBadRequest
	case hello.GetGroup() != ftGroup:
		return nil, wire.ErrWrongGroup
	}
	if err := checkSecondaryID(hello.GetSecondary()); err != nil {
		return hello, err
	}
	if err := wire.CheckVolumeName(hello.GetVolume()); err != nil {
		return hello, err
	}
	return hello, checkSecondaryAddr(hello.GetAddr())
}

// FuzzCoordinateHello decodes arbitrary bytes as the first message of a
// Coordinate stream, and builds one from arbitrary fields, and checks it as
// the handler does. Nothing panics; an accepted hello is small, names a
// well-formed secondary, and registers in the state machine (for a
// registered volume) exactly as it came; a hello refused for its ID,
// volume or address is refused by the state machine too, so that neither
// check can let through what the other would not.
func FuzzCoordinateHello(f *testing.F) {
	hello := func(group, id, volume, addr string) []byte {
		p, err := proto.Marshal(&wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Hello{Hello: &wire.SecondaryHello{
			Group: group, Secondary: id, Volume: volume, Addr: addr, AppliedSeq: 3, DurableSeq: 5}}})
		if err != nil {
			f.Fatal(err)
		}
		return p
	}
	f.Add(hello(ftGroup, "s1", "a", "127.0.0.1:7301"), "s1", "a", "127.0.0.1:7301")
	f.Add(hello(ftGroup, "s-1.x_y", "b", ""), "s 1", "b", "")
	f.Add(hello("other", "s1", "a", ""), "", "a", "")
	f.Add(hello(ftGroup, "s/1", "a/b", ""), "s1", "a/b", "")
	f.Add(hello(ftGroup, "s1", "a", string(make([]byte, 300))), "s1", "c", string(make([]byte, 300)))
	f.Add(hello(ftGroup, string(make([]byte, 65)), "a", ""), "é", "a", "h:1")
	f.Add([]byte{0x0a, 0x00}, "s1", "zz", "")
	f.Add([]byte{}, "s1", "a", "\xff")
	f.Fuzz(func(t *testing.T, raw []byte, id, volume, addr string) {
		var reqs []*wire.CoordinateRequest
		if utf8.ValidString(id) && utf8.ValidString(volume) && utf8.ValidString(addr) { // else it cannot arrive: gRPC refuses it
			reqs = append(reqs, &wire.CoordinateRequest{Msg: &wire.CoordinateRequest_Hello{Hello: &wire.SecondaryHello{
				Group: ftGroup, Secondary: id, Volume: volume, Addr: addr}}})
		}
		var decoded wire.CoordinateRequest
		if proto.Unmarshal(raw, &decoded) == nil {
			reqs = append(reqs, &decoded)
		}
		for _, req := range reqs {
			h, err := checkHello(req)
			if h == nil {
				continue // not a hello of the group, or too large: nothing to register
			}
			if err == nil {
				if size := proto.Size(req); size > maxCoordinateMessage {
					t.Fatalf("accepted a hello of %d bytes", size)
				}
				if !secondaryIDPattern.MatchString(h.GetSecondary()) || len(h.GetAddr()) > MaxSecondaryAddr {
					t.Fatalf("accepted hello %v", h)
				}
			}
			if errors.Is(err, wire.ErrTooLarge) {
				continue
			}
			v := h.GetVolume()
			if err == nil && v != "a" && v != "b" {
				continue // the handler refuses an unregistered volume before it registers
			}
			hs := ftNew(t, nil, "/vols")
			hs.register("a", 8, 1)
			hs.register("b", 4, 1)
			res, ok := hs.apply(ftRegisterSecondary(h.GetSecondary(), v, h.GetAddr())).(*SecondaryResult)
			if !ok {
				t.Fatalf("register: result %T", res)
			}
			if err != nil {
				if res.Err == nil {
					t.Fatalf("hello %v refused by the handler (%v), registered by the state machine", h, err)
				}
				continue
			}
			if res.Err != nil {
				t.Fatalf("hello %v accepted by the handler, refused by the state machine: %v", h, res.Err)
			}
			got, ok := hs.f.Secondary(h.GetSecondary())
			if !ok || got.ID != h.GetSecondary() || got.Volume != v || got.Addr != h.GetAddr() {
				t.Fatalf("hello %v registered as %+v (%t)", h, got, ok)
			}
		}
	})
}
