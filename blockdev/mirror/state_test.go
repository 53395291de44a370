package mirror

import (
	"errors"
	"testing"

	"github.com/tricopy/tricopy/blockdev"
)

func TestStateRoundTrip(t *testing.T) {
	p := persisted{Version: stateVersion, Volume: "a", Group: "default", Epoch: 3, State: StateResync,
		AppliedVolumeSeq: 7, AppliedSeq: 20, Reason: "why"}
	got, err := decodeState(encodeState(p))
	if err != nil || got != p {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	data := encodeState(p)
	data[len(stateMagic)+3] ^= 1
	if _, err := decodeState(data); !errors.Is(err, blockdev.ErrCorrupt) {
		t.Fatalf("flipped bit: %v, want ErrCorrupt", err)
	}
}

// FuzzDecodeState feeds arbitrary bytes to the state file decoder: it must
// not panic, and whatever it accepts must encode back to the same bytes.
func FuzzDecodeState(f *testing.F) {
	f.Add(encodeState(persisted{Version: stateVersion, Volume: "a", Group: "g", Epoch: 1, State: StatePair}))
	f.Add(encodeState(persisted{Version: stateVersion, Volume: "b", Epoch: 2, State: StateSusp, AppliedVolumeSeq: 1, AppliedSeq: 9, Clean: true}))
	f.Add(encodeState(persisted{Version: 2, Volume: "a", Epoch: 1, State: "X"}))
	f.Add([]byte(stateMagic + "{}\n00000000\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := decodeState(data)
		if err != nil {
			return
		}
		if !p.State.valid() || p.Volume == "" || p.Epoch == 0 {
			t.Fatalf("accepted an invalid state: %+v", p)
		}
		if q, err := decodeState(encodeState(p)); err != nil || q != p {
			t.Fatalf("re-encoding %+v: %+v, %v", p, q, err)
		}
	})
}
