package secondary

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"path"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/tricopy/tricopy/blockdev"
)

// fuzzStateDir is where the state file fuzz targets put the file.
const fuzzStateDir = "/data"

// loadFuzzedState writes data as file in a fresh MemFS and loads it with
// load.
func loadFuzzedState[T any](t *testing.T, file string, data []byte, load func(blockdev.FS, string) (T, error)) (T, error) {
	t.Helper()
	fsys := blockdev.NewMemFS()
	if err := blockdev.MkdirAllDurable(fsys, "fuzz", fuzzStateDir); err != nil {
		t.Fatal(err)
	}
	if err := blockdev.WriteFileAtomic(fsys, "fuzz", path.Join(fuzzStateDir, file), data); err != nil {
		t.Fatal(err)
	}
	return load(fsys, fuzzStateDir)
}

// withSum returns body as the JSON line of a state file under magic with a
// matching checksum line, so that the checks past the checksum get
// explored.
func withSum(magic string, body []byte) []byte {
	body = bytes.ReplaceAll(body, []byte("\n"), nil)
	return fmt.Appendf([]byte(magic), "%s\n%08x\n", body, crc32.Checksum(body, castagnoli))
}

// FuzzGroupView loads arbitrary bytes as a secondary's group state file
// (group.state), as they are and as a JSON line with a matching checksum.
// Loading never panics and refuses with blockdev.ErrBadStateFile only; a
// view it accepts saves and loads back to the same view.
func FuzzGroupView(f *testing.F) {
	view := GroupView{
		Peers:   []Peer{{ID: "a", Volume: "a", Addr: "127.0.0.1:7301"}, {ID: "b-2", Volume: "b", Addr: ""}},
		Epoch:   3,
		Volumes: []string{"a", "b"},
	}
	good := blockdev.EncodeStateFile(peersMagic, view)
	f.Add(good)
	f.Add(blockdev.EncodeStateFile(peersMagic, GroupView{}))
	f.Add(good[:len(good)-3])
	f.Add(bytes.Replace(good, []byte(`"epoch":3`), []byte(`"epoch":4`), 1))
	f.Add(withSum(peersMagic, []byte(`{"peers":null,"epoch":1,"volumes":[]}`)))
	f.Add(withSum(peersMagic, []byte(`{"peers":[{"id":"x","volume":"y","addr":"z","extra":1}]}`)))
	f.Add(withSum(peersMagic, []byte(`{"epoch":-1}`)))
	f.Add(withSum(peersMagic, []byte(`{} {}`)))
	f.Add(withSum(peersMagic, []byte(`{"peers":[{"id":"\ud800"}]}`)))
	f.Add([]byte(peersMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, file := range [][]byte{data, withSum(peersMagic, data)} {
			v, err := loadFuzzedState(t, peersFile, file, loadGroupView)
			if err != nil {
				if !errors.Is(err, blockdev.ErrBadStateFile) {
					t.Fatalf("load: %v, not %v", err, blockdev.ErrBadStateFile)
				}
				continue
			}
			again, err := loadFuzzedState(t, peersFile, blockdev.EncodeStateFile(peersMagic, v), loadGroupView)
			if err != nil || !again.equal(v) {
				t.Fatalf("view %+v saved and loaded back: %+v, %v", v, again, err)
			}
		}
	})
}

// FuzzPromotion loads arbitrary bytes as a secondary's promotion record
// (promotion.state), as they are and as a JSON line with a matching
// checksum. Loading never panics; a record it accepts is a valid request
// (checked here on its own terms, not with check) and saves and loads back
// to the same record.
func FuzzPromotion(f *testing.F) {
	p := Promotion{
		PromoteRequest: PromoteRequest{ID: "20250101T000000Z-0011223344556677", N: 9, Epoch: 2, Drained: true, VolumeSeq: 4, Seq: 8, By: "host/user",
			Group: []Peer{{ID: "a", Volume: "a", Addr: "h:1"}}},
		Started: time.Date(2025, 1, 1, 0, 0, 0, 5, time.FixedZone("x", 3600)), Unapplied: 2, UnappliedBytes: 8192, Done: true,
	}
	good := blockdev.EncodeStateFile(promotionMagic, p)
	f.Add(good)
	f.Add(good[1:])
	f.Add(withSum(promotionMagic, []byte(`{"id":"p","n":1,"epoch":1}`)))
	f.Add(withSum(promotionMagic, []byte(`{"id":"","n":1,"epoch":1}`)))
	f.Add(withSum(promotionMagic, []byte(`{"id":"a b","n":1,"epoch":1}`)))
	f.Add(withSum(promotionMagic, []byte(`{"id":"p","n":1,"epoch":0}`)))
	f.Add(withSum(promotionMagic, []byte(`{"id":"p","n":1,"epoch":1,"drained":true,"seq":5}`)))
	f.Add(withSum(promotionMagic, []byte(`{"id":"p","epoch":1,"volume_seq":5,"seq":4}`)))
	f.Add(withSum(promotionMagic, []byte(`{"id":"p","epoch":1,"started":"not a time"}`)))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, file := range [][]byte{data, withSum(promotionMagic, data)} {
			p, err := loadFuzzedState(t, promotionFile, file, loadPromotion)
			if err != nil || p == nil {
				continue
			}
			if err := validRequest(p.PromoteRequest); err != nil {
				t.Fatalf("accepted record %+v: %v", p, err)
			}
			again, err := loadFuzzedState(t, promotionFile, blockdev.EncodeStateFile(promotionMagic, p), loadPromotion)
			if err != nil || again == nil {
				t.Fatalf("record %+v saved and loaded back: %v", p, err)
			}
			a, _ := json.Marshal(p)
			b, _ := json.Marshal(again)
			if !bytes.Equal(a, b) {
				t.Fatalf("record saved and loaded back:\n%s\n%s", a, b)
			}
		}
	})
}

// FuzzPromoteRequest decodes arbitrary bytes as the body of a POST to the
// admin API's PromotePath (JSON, unknown fields refused, as the handler
// does) and checks the request: nothing panics, and a request check
// accepts is valid on its own terms and survives a JSON round trip.
func FuzzPromoteRequest(f *testing.F) {
	for _, s := range []string{
		`{"id":"p1","n":5,"epoch":2}`,
		`{"id":"p1","n":5,"epoch":2,"drained":true,"volume_seq":3,"seq":5,"by":"h","group":[{"id":"a","volume":"a","addr":"h:1"}]}`,
		`{"id":"p1","n":5,"epoch":2,"drained":true,"volume_seq":3,"seq":6}`,
		`{"id":"p\u00a01","n":5,"epoch":2}`,
		`{"id":"p1","epoch":2,"unknown":1}`,
		`{"id":"` + string(bytes.Repeat([]byte("x"), 65)) + `","epoch":1}`,
		`[]`, `null`, `{"n":-1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var req PromoteRequest
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		if dec.Decode(&req) != nil || req.check() != nil {
			return
		}
		if err := validRequest(req); err != nil {
			t.Fatalf("accepted request %+v: %v", req, err)
		}
		b, err := json.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		var again PromoteRequest
		if err := json.Unmarshal(b, &again); err != nil || again.check() != nil {
			t.Fatalf("request %s decoded again: %+v, %v (check %v)", b, again, err, again.check())
		}
		if b2, _ := json.Marshal(again); !bytes.Equal(b, b2) {
			t.Fatalf("request %s decoded and encoded again: %s", b, b2)
		}
	})
}

// validRequest states what a promote request must be, independently of
// PromoteRequest.check.
func validRequest(r PromoteRequest) error {
	if n := len(r.ID); n == 0 || n > 64 {
		return fmt.Errorf("id of %d bytes", n)
	}
	if !utf8.ValidString(r.ID) {
		// It travels in protobuf strings (the intermediate's Promote).
		return fmt.Errorf("id %q is not UTF-8", r.ID)
	}
	for _, c := range r.ID {
		if c == ' ' || !unicode.IsPrint(c) {
			return fmt.Errorf("id %q has character %q", r.ID, c)
		}
	}
	switch {
	case r.Epoch == 0:
		return errors.New("epoch 0")
	case r.Seq < r.VolumeSeq:
		return fmt.Errorf("seq %d below volume seq %d", r.Seq, r.VolumeSeq)
	}
	return nil
}
