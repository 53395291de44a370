package replbench

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// system is one side's running cluster, ready for writes.
type system interface {
	// write makes write number seq of writer w (both from 0), of the
	// scenario's size, and returns when it is acknowledged. All writers
	// call it concurrently.
	write(ctx context.Context, w int, seq uint64) error
	// counters returns the leader's cumulative write-path counters.
	counters() counters
	// close stops everything the system started. The caller removes its
	// directory.
	close() error
}

// counters are a leader's cumulative write-path counts.
type counters struct {
	logWrites, logEntries        uint64 // Raft log store calls and entries
	submitEntries, submitBatches uint64 // Submit entries proposed and batches in them
}

// sub returns c - o, field by field.
func (c counters) sub(o counters) counters {
	return counters{
		logWrites:     c.logWrites - o.logWrites,
		logEntries:    c.logEntries - o.logEntries,
		submitEntries: c.submitEntries - o.submitEntries,
		submitBatches: c.submitBatches - o.submitBatches,
	}
}

// drive runs sc.Writers writers on sys for warmup, then measures for
// duration: it counts the writes acknowledged in the window, their
// latencies, and the change of the leader's counters over it. Each writer
// waits for the acknowledgement of its write before making the next, and
// starts no write after the window. The first failed write stops all
// writers and is returned, naming the writer.
func drive(ctx context.Context, sys system, sc Scenario, warmup, duration time.Duration) (RunResult, error) {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	start := time.Now()
	from, to := start.Add(warmup), start.Add(warmup+duration)
	lat := make([][]time.Duration, sc.Writers)
	var wg sync.WaitGroup
	for w := range sc.Writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var samples []time.Duration
			for seq := uint64(0); ctx.Err() == nil; seq++ {
				t0 := time.Now()
				if !t0.Before(to) {
					break
				}
				if err := sys.write(ctx, w, seq); err != nil {
					cancel(fmt.Errorf("writer %d, write %d: %w", w, seq, err))
					return
				}
				if t1 := time.Now(); !t1.Before(from) && t1.Before(to) {
					samples = append(samples, t1.Sub(t0))
				}
			}
			lat[w] = samples
		}()
	}
	var before, after counters
	if sleepUntil(ctx, from) {
		before = sys.counters()
		if sleepUntil(ctx, to) {
			after = sys.counters()
		}
	}
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return RunResult{}, err
	}
	var all []time.Duration
	for _, s := range lat {
		all = append(all, s...)
	}
	d := after.sub(before)
	r := RunResult{
		Scenario:      sc.Name(),
		Nodes:         sc.Nodes,
		Writers:       sc.Writers,
		WriteBytes:    sc.WriteBytes(),
		Elapsed:       to.Sub(from),
		Ops:           int64(len(all)),
		Bytes:         int64(len(all)) * int64(sc.WriteBytes()),
		Latency:       summarize(all),
		LogWrites:     d.logWrites,
		LogEntries:    d.logEntries,
		SubmitEntries: d.submitEntries,
		SubmitBatches: d.submitBatches,
	}
	r.setRates()
	return r, nil
}

// sleepUntil sleeps until t and reports true, or returns false as soon as
// ctx ends.
func sleepUntil(ctx context.Context, t time.Time) bool {
	timer := time.NewTimer(time.Until(t))
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}
