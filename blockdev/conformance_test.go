package blockdev

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
)

// harness makes volumes of one Volume implementation for the conformance
// suite.
type harness struct {
	name string
	// open returns a new, empty volume of blocks blocks.
	open func(t *testing.T, blocks uint64) Volume
	// reopen returns the volume that v (closed by the caller) left behind,
	// open again, as after a clean restart.
	reopen func(t *testing.T, v Volume) Volume
}

func harnesses() []harness {
	fileOnMem := func(checkpoint int64, background bool) harness {
		type state struct {
			fsys *MemFS
			dir  string
		}
		states := map[Volume]state{}
		var mu sync.Mutex
		return harness{
			open: func(t *testing.T, blocks uint64) Volume {
				fsys := NewMemFS()
				v, err := Create("/vols/v", blocks, Options{FS: fsys, Logger: testLogger(t), CheckpointBytes: checkpoint})
				if err != nil {
					t.Fatal(err)
				}
				v.SetBackgroundCheckpoint(background)
				t.Cleanup(func() { v.Close() })
				mu.Lock()
				states[v] = state{fsys, "/vols/v"}
				mu.Unlock()
				return v
			},
			reopen: func(t *testing.T, old Volume) Volume {
				mu.Lock()
				s := states[old]
				mu.Unlock()
				v, err := Open(s.dir, Options{FS: s.fsys, Logger: testLogger(t), CheckpointBytes: checkpoint})
				if err != nil {
					t.Fatal(err)
				}
				v.SetBackgroundCheckpoint(background)
				t.Cleanup(func() { v.Close() })
				mu.Lock()
				states[v] = s
				mu.Unlock()
				return v
			},
		}
	}
	memFS := fileOnMem(0, false)
	memFS.name = "FileVolume/MemFS"
	smallLog := fileOnMem(3*int64(recordSize(2)), false)
	smallLog.name = "FileVolume/MemFS/SmallLog"
	background := fileOnMem(3*int64(recordSize(2)), true)
	background.name = "FileVolume/MemFS/SmallLog/Background"
	return []harness{
		{
			name: "FileVolume/OSFS",
			open: func(t *testing.T, blocks uint64) Volume {
				v, err := Create(t.TempDir(), blocks, Options{Logger: testLogger(t)})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { v.Close() })
				return v
			},
			reopen: func(t *testing.T, old Volume) Volume {
				v, err := Open(old.(*FileVolume).Dir(), Options{Logger: testLogger(t)})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { v.Close() })
				return v
			},
		},
		memFS,
		smallLog,
		background,
		{
			name:   "MemVolume",
			open:   func(t *testing.T, blocks uint64) Volume { return NewMem(blocks) },
			reopen: func(t *testing.T, v Volume) Volume { return v.(*MemVolume).Clone() },
		},
		{
			name: "Faulty/MemVolume",
			open: func(t *testing.T, blocks uint64) Volume { return NewFaulty(NewMem(blocks)) },
			reopen: func(t *testing.T, v Volume) Volume {
				return NewFaulty(v.(*Faulty).Unwrap().(*MemVolume).Clone())
			},
		},
	}
}

func TestConformance(t *testing.T) {
	for _, h := range harnesses() {
		t.Run(h.name, func(t *testing.T) {
			t.Parallel()
			runConformance(t, h)
		})
	}
}

func runConformance(t *testing.T, h harness) {
	ctx := context.Background()
	const blocks = 64

	t.Run("Zeros", func(t *testing.T) {
		v := h.open(t, blocks)
		if got := v.BlockCount(); got != blocks {
			t.Fatalf("BlockCount() = %d, want %d", got, blocks)
		}
		newModel(blocks).check(t, v)
		// A write to one block leaves its neighbours zero.
		if err := v.Apply(ctx, &Batch{Writes: []Write{{Index: 5, Data: stampBlock(1, 5)}}}, ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		m := newModel(blocks)
		m.data[5] = stampBlock(1, 5)
		m.check(t, v)
	})

	t.Run("ReadBack", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(testSeed(t), 1))
		v := h.open(t, blocks)
		m := newModel(blocks)
		for i := range 50 {
			b := randBatch(rng, blocks, 8, uint64(i+1))
			if err := v.Apply(ctx, b, ApplyOptions{Sync: i%7 == 0}); err != nil {
				t.Fatalf("batch %d: %v", i, err)
			}
			m.apply(b)
			m.check(t, v)
			checkRange(t, v, m)
			if i%10 == 9 {
				if err := v.Sync(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
	})

	t.Run("RepeatedBlockLastWins", func(t *testing.T) {
		v := h.open(t, blocks)
		b := &Batch{Writes: []Write{
			{Index: 3, Data: stampBlock(1, 3)},
			{Index: 4, Data: stampBlock(1, 4)},
			{Index: 3, Data: stampBlock(2, 3)},
			{Index: 3, Data: stampBlock(3, 3)},
		}}
		if err := v.Apply(ctx, b, ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		m := newModel(blocks)
		m.apply(b)
		m.check(t, v)
		v.Close()
		m.check(t, h.reopen(t, v))
	})

	t.Run("Errors", func(t *testing.T) {
		v := h.open(t, blocks)
		p := make([]byte, BlockSize)
		if err := v.ReadBlock(blocks, p); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("ReadBlock(%d) = %v, want ErrOutOfRange", uint64(blocks), err)
		}
		if err := v.ReadBlock(0, p[:BlockSize-1]); !errors.Is(err, ErrBadBlock) {
			t.Errorf("ReadBlock with short buffer = %v, want ErrBadBlock", err)
		}
		if err := v.ReadBlock(0, make([]byte, BlockSize+1)); !errors.Is(err, ErrBadBlock) {
			t.Errorf("ReadBlock with long buffer = %v, want ErrBadBlock", err)
		}
		if rr, ok := v.(RangeReader); ok {
			if err := rr.ReadBlocks(blocks-1, make([]byte, 2*BlockSize)); !errors.Is(err, ErrOutOfRange) {
				t.Errorf("ReadBlocks past the end = %v, want ErrOutOfRange", err)
			}
			if err := rr.ReadBlocks(0, make([]byte, BlockSize+1)); !errors.Is(err, ErrBadBlock) {
				t.Errorf("ReadBlocks with ragged buffer = %v, want ErrBadBlock", err)
			}
		}
		good := Write{Index: 1, Data: stampBlock(1, 1)}
		for _, tc := range []struct {
			name string
			bad  Write
			want error
		}{
			{"out of range", Write{Index: blocks, Data: stampBlock(1, blocks)}, ErrOutOfRange},
			{"huge index", Write{Index: ^uint64(0), Data: stampBlock(1, 0)}, ErrOutOfRange},
			{"short data", Write{Index: 2, Data: make([]byte, 100)}, ErrBadBlock},
			{"nil data", Write{Index: 2}, ErrBadBlock},
			{"long data", Write{Index: 2, Data: make([]byte, BlockSize+1)}, ErrBadBlock},
		} {
			err := v.Apply(ctx, &Batch{Writes: []Write{good, tc.bad}}, ApplyOptions{Sync: true})
			if !errors.Is(err, tc.want) {
				t.Errorf("%s: Apply = %v, want %v", tc.name, err, tc.want)
			}
		}
		// Nothing of a refused batch is applied, and the volume still works.
		newModel(blocks).check(t, v)
		if err := v.Apply(ctx, &Batch{Writes: []Write{good}}, ApplyOptions{}); err != nil {
			t.Fatalf("Apply after refused batches: %v", err)
		}
		if err := v.Apply(ctx, &Batch{}, ApplyOptions{Sync: true}); err != nil {
			t.Fatalf("Apply of empty batch: %v", err)
		}
		m := newModel(blocks)
		m.data[1] = good.Data
		m.check(t, v)
	})

	t.Run("CanceledContext", func(t *testing.T) {
		v := h.open(t, blocks)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if err := v.Apply(cctx, &Batch{Writes: []Write{{Index: 0, Data: stampBlock(1, 0)}}}, ApplyOptions{}); !errors.Is(err, context.Canceled) {
			t.Errorf("Apply = %v, want context.Canceled", err)
		}
		if err := v.Sync(cctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Sync = %v, want context.Canceled", err)
		}
		newModel(blocks).check(t, v)
	})

	t.Run("ConcurrentReadersSeeWholeBatches", func(t *testing.T) {
		// Every batch writes blocks [0, span) with its stamp. A reader must
		// find every block uniform (no torn block) and, once it has seen
		// stamp s anywhere, never an older stamp afterwards anywhere (no
		// half-visible batch).
		const span, batches, readers = 16, 300, 4
		v := h.open(t, blocks)
		done := make(chan struct{})
		var wg sync.WaitGroup
		errs := make(chan error, readers)
		for r := range readers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(r), 2))
				p := make([]byte, BlockSize)
				var seen uint64
				for {
					select {
					case <-done:
						return
					default:
					}
					if rr, ok := v.(RangeReader); ok && r%2 == 1 {
						// FileVolume reads a run under one lock: all its
						// blocks come from one batch.
						run := make([]byte, span*BlockSize)
						if err := rr.ReadBlocks(0, run); err != nil {
							errs <- err
							return
						}
						stamp := binary.LittleEndian.Uint64(run)
						for i := 8; i < len(run); i += 8 {
							if binary.LittleEndian.Uint64(run[i:]) != stamp {
								errs <- fmt.Errorf("run torn at byte %d: stamps %d and %d", i, stamp, binary.LittleEndian.Uint64(run[i:]))
								return
							}
						}
						if stamp < seen {
							errs <- fmt.Errorf("run has stamp %d after stamp %d was seen", stamp, seen)
							return
						}
						seen = stamp
						continue
					}
					idx := rng.Uint64N(span)
					if err := v.ReadBlock(idx, p); err != nil {
						errs <- err
						return
					}
					stamp := binary.LittleEndian.Uint64(p)
					for i := 8; i < BlockSize; i += 8 {
						if binary.LittleEndian.Uint64(p[i:]) != stamp {
							errs <- fmt.Errorf("block %d torn: stamps %d and %d", idx, stamp, binary.LittleEndian.Uint64(p[i:]))
							return
						}
					}
					if stamp < seen {
						errs <- fmt.Errorf("block %d has stamp %d after stamp %d was seen", idx, stamp, seen)
						return
					}
					seen = stamp
				}
			}()
		}
		for s := uint64(1); s <= batches; s++ {
			b := &Batch{}
			for i := range uint64(span) {
				b.Writes = append(b.Writes, Write{Index: i, Data: uniformBlock(s)})
			}
			if err := v.Apply(ctx, b, ApplyOptions{}); err != nil {
				t.Fatal(err)
			}
			if s%50 == 0 {
				if err := v.Sync(ctx); err != nil {
					t.Fatal(err)
				}
			}
		}
		close(done)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("ReopenAfterClose", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(testSeed(t), 3))
		v := h.open(t, blocks)
		m := newModel(blocks)
		for i := range 20 {
			b := randBatch(rng, blocks, 4, uint64(i+1))
			if err := v.Apply(ctx, b, ApplyOptions{}); err != nil {
				t.Fatal(err)
			}
			m.apply(b)
		}
		if err := v.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		// Batches applied after the last Sync survive a clean close too.
		for i := range 5 {
			b := randBatch(rng, blocks, 4, uint64(100+i))
			if err := v.Apply(ctx, b, ApplyOptions{}); err != nil {
				t.Fatal(err)
			}
			m.apply(b)
		}
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
		v2 := h.reopen(t, v)
		m.check(t, v2)
		// The reopened volume takes more batches, and keeps them too.
		b := randBatch(rng, blocks, 4, 200)
		if err := v2.Apply(ctx, b, ApplyOptions{Sync: true}); err != nil {
			t.Fatal(err)
		}
		m.apply(b)
		if err := v2.Close(); err != nil {
			t.Fatal(err)
		}
		m.check(t, h.reopen(t, v2))
	})

	t.Run("Closed", func(t *testing.T) {
		v := h.open(t, blocks)
		if err := v.Close(); err != nil {
			t.Fatal(err)
		}
		if err := v.Apply(ctx, &Batch{Writes: []Write{{Index: 0, Data: stampBlock(1, 0)}}}, ApplyOptions{}); !errors.Is(err, ErrClosed) {
			t.Errorf("Apply after Close = %v, want ErrClosed", err)
		}
		if err := v.Sync(ctx); !errors.Is(err, ErrClosed) {
			t.Errorf("Sync after Close = %v, want ErrClosed", err)
		}
		if err := v.ReadBlock(0, make([]byte, BlockSize)); !errors.Is(err, ErrClosed) {
			t.Errorf("ReadBlock after Close = %v, want ErrClosed", err)
		}
		if err := v.Close(); !errors.Is(err, ErrClosed) {
			t.Errorf("second Close = %v, want ErrClosed", err)
		}
	})
}

// checkRange checks, if v implements RangeReader, that runs of blocks read
// with ReadBlocks match the model.
func checkRange(t *testing.T, v Volume, m *model) {
	t.Helper()
	rr, ok := v.(RangeReader)
	if !ok {
		return
	}
	for _, run := range [][2]uint64{{0, m.blocks}, {1, 7}, {m.blocks - 1, 1}} {
		p := make([]byte, run[1]*BlockSize)
		if err := rr.ReadBlocks(run[0], p); err != nil {
			t.Fatalf("ReadBlocks(%d, %d blocks): %v", run[0], run[1], err)
		}
		for i := range run[1] {
			want, ok := m.data[run[0]+i]
			if !ok {
				want = make([]byte, BlockSize)
			}
			if got := p[i*BlockSize : (i+1)*BlockSize]; string(got) != string(want) {
				t.Fatalf("ReadBlocks(%d, %d blocks): block %d = %s, want %s", run[0], run[1], run[0]+i, describe(got), describe(want))
			}
		}
	}
}
