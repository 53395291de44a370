package secondary

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/tricopy/tricopy/intermediate/wire"
)

// encodeUnapplied writes batches in the export format, as ExportUnapplied
// does.
func encodeUnapplied(t testing.TB, batches []*wire.CommittedBatch) []byte {
	t.Helper()
	var buf bytes.Buffer
	w := &unappliedWriter{w: &buf}
	w.start()
	for _, cb := range batches {
		if err := w.write(cb); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.finish(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func testExportBatches() []*wire.CommittedBatch {
	var out []*wire.CommittedBatch
	for i := uint64(1); i <= 3; i++ {
		b := wire.Seal(&wire.Batch{Volume: "a", Epoch: 1, VolumeSeq: i,
			Blocks: []*wire.Block{{Index: i, Data: bytes.Repeat([]byte{byte(i)}, wire.BlockSize)}}})
		out = append(out, &wire.CommittedBatch{Seq: 10 * i, Batch: b})
	}
	return out
}

func TestUnappliedRoundTrip(t *testing.T) {
	want := testExportBatches()
	data := encodeUnapplied(t, want)
	var got []*wire.CommittedBatch
	n, err := ReadUnapplied(bytes.NewReader(data), func(cb *wire.CommittedBatch) error {
		got = append(got, cb)
		return nil
	})
	if err != nil || n != len(want) {
		t.Fatalf("read: %d batches, %v", n, err)
	}
	for i := range want {
		if !proto.Equal(got[i], want[i]) {
			t.Fatalf("batch %d differs", i)
		}
	}
	// Every cut and every flipped byte is detected.
	for cut := 0; cut < len(data); cut++ {
		if _, err := ReadUnapplied(bytes.NewReader(data[:cut]), func(*wire.CommittedBatch) error { return nil }); !errors.Is(err, ErrBadExport) {
			t.Fatalf("cut at %d of %d: %v, want ErrBadExport", cut, len(data), err)
		}
	}
	for i := 0; i < len(data); i += 7 {
		bad := bytes.Clone(data)
		bad[i] ^= 0x40
		if _, err := ReadUnapplied(bytes.NewReader(bad), func(*wire.CommittedBatch) error { return nil }); err == nil {
			t.Fatalf("byte %d flipped: no error", i)
		}
	}
}

func FuzzReadUnapplied(f *testing.F) {
	f.Add(encodeUnapplied(f, testExportBatches()))
	f.Add(encodeUnapplied(f, nil))
	f.Add([]byte(unappliedMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		var seqs []uint64
		n, err := ReadUnapplied(bytes.NewReader(data), func(cb *wire.CommittedBatch) error {
			if err := wire.CheckBatch(cb.GetBatch(), 0); err != nil {
				t.Fatalf("an unchecked batch was handed out: %v", err)
			}
			seqs = append(seqs, cb.GetSeq())
			return nil
		})
		if err != nil && !errors.Is(err, ErrBadExport) {
			t.Fatalf("error not wrapping ErrBadExport: %v", err)
		}
		if err == nil && n != len(seqs) {
			t.Fatalf("count %d, handed out %d", n, len(seqs))
		}
		for i := 1; i < len(seqs); i++ {
			if seqs[i] <= seqs[i-1] {
				t.Fatalf("seqs out of order: %v", seqs)
			}
		}
	})
}

// TestExportUnappliedToFile: promote's export streams into a temporary
// file renamed into place once the whole stream checked out; a cut stream
// leaves no file.
func TestExportUnappliedToFile(t *testing.T) {
	good := encodeUnapplied(t, testExportBatches())
	for _, tc := range []struct {
		name string
		body []byte
		ok   bool
	}{
		{"whole", good, true},
		{"cut", good[:len(good)-9], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(tc.body) }))
			defer srv.Close()
			dir := t.TempDir()
			path, err := exportUnapplied(context.Background(), srv.Client(), strings.TrimPrefix(srv.URL, "http://"), dir, "a")
			entries, _ := os.ReadDir(dir)
			if !tc.ok {
				if !errors.Is(err, ErrBadExport) || len(entries) != 0 {
					t.Fatalf("cut export: %v, %d files left; want ErrBadExport and none", err, len(entries))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, good) || len(entries) != 1 || path != filepath.Join(dir, "a.unapplied") {
				t.Fatalf("export in %s (%d files): %v, equal %v", path, len(entries), err, bytes.Equal(got, good))
			}
		})
	}
}
