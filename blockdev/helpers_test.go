package blockdev

import (
	"crypto/sha256"
	"encoding/binary"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var seedFlag = flag.Uint64("seed", 0, "seed of the randomised tests; 0 picks one from the clock")

// testSeed returns the seed of a randomised test and arranges for a failure
// to print how to run the test again with it.
func testSeed(t testing.TB) uint64 {
	t.Helper()
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("reproduce with: go test -run '%s' ./blockdev/ -seed=%d", runPattern(t.Name()), seed)
		}
	})
	return seed
}

// runPattern turns a test name into a -run pattern matching only it.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + p + "$"
	}
	return strings.Join(parts, "/")
}

// testLogger returns a logger writing to the test's log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tLogWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tLogWriter struct{ t testing.TB }

func (w tLogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// quietLogger discards everything: for tests that open volumes thousands of
// times.
var quietLogger = slog.New(slog.DiscardHandler)

// stampBlock returns a block naming stamp and idx: its first 16 bytes hold
// them, the rest a pattern derived from them.
func stampBlock(stamp, idx uint64) []byte {
	p := make([]byte, BlockSize)
	binary.LittleEndian.PutUint64(p, stamp)
	binary.LittleEndian.PutUint64(p[8:], idx)
	for i := 16; i < BlockSize; i++ {
		p[i] = byte(stamp*131 + idx*7 + uint64(i))
	}
	return p
}

// uniformBlock returns a block made of the 8-byte stamp repeated.
func uniformBlock(stamp uint64) []byte {
	p := make([]byte, BlockSize)
	for i := 0; i < BlockSize; i += 8 {
		binary.LittleEndian.PutUint64(p[i:], stamp)
	}
	return p
}

// randBatch returns a batch of 1 to maxWrites writes to blocks below blocks,
// repeated blocks included, stamped with stamp.
func randBatch(rng *rand.Rand, blocks uint64, maxWrites int, stamp uint64) *Batch {
	b := &Batch{}
	for range 1 + rng.IntN(maxWrites) {
		idx := rng.Uint64N(blocks)
		b.Writes = append(b.Writes, Write{Index: idx, Data: stampBlock(stamp*1000+uint64(len(b.Writes)), idx)})
	}
	return b
}

// model is the expected content of a volume.
type model struct {
	blocks uint64
	data   map[uint64][]byte
}

func newModel(blocks uint64) *model { return &model{blocks: blocks, data: map[uint64][]byte{}} }

func (m *model) apply(b *Batch) {
	for _, w := range b.Writes {
		m.data[w.Index] = w.Data
	}
}

func (m *model) clone() *model {
	c := newModel(m.blocks)
	for k, v := range m.data {
		c.data[k] = v
	}
	return c
}

func (m *model) digest() [32]byte {
	h := sha256.New()
	zero := make([]byte, BlockSize)
	for i := range m.blocks {
		if d, ok := m.data[i]; ok {
			h.Write(d)
		} else {
			h.Write(zero)
		}
	}
	return [32]byte(h.Sum(nil))
}

// check fails t unless r holds the model's content.
func (m *model) check(t testing.TB, r Reader) {
	t.Helper()
	if r.BlockCount() != m.blocks {
		t.Fatalf("BlockCount() = %d, want %d", r.BlockCount(), m.blocks)
	}
	p := make([]byte, BlockSize)
	zero := make([]byte, BlockSize)
	for i := range m.blocks {
		if err := r.ReadBlock(i, p); err != nil {
			t.Fatalf("ReadBlock(%d): %v", i, err)
		}
		want, ok := m.data[i]
		if !ok {
			want = zero
		}
		if string(p) != string(want) {
			t.Fatalf("block %d = %s, want %s", i, describe(p), describe(want))
		}
	}
}

// describe summarises a block for a failure message.
func describe(p []byte) string {
	return fmt.Sprintf("stamp %d index %d", binary.LittleEndian.Uint64(p), binary.LittleEndian.Uint64(p[8:]))
}

// digestOf returns the digest of the content of r, comparable with
// model.digest.
func digestOf(t testing.TB, r Reader) [32]byte {
	t.Helper()
	h := sha256.New()
	p := make([]byte, BlockSize)
	for i := range r.BlockCount() {
		if err := r.ReadBlock(i, p); err != nil {
			t.Fatalf("ReadBlock(%d): %v", i, err)
		}
		h.Write(p)
	}
	return [32]byte(h.Sum(nil))
}
