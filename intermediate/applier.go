package intermediate

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/tricopy/tricopy/blockdev"
)

// The applier writes committed batches to the intermediate volumes off the
// apply goroutine.
//
// FSM.Apply decides everything about an entry (seqs, dedupe, the journal,
// the results) in memory, then hands the entry's volume writes to the
// applier as one job and returns: Raft resolves the entry's future without
// waiting for the intent log write, nor for a FileVolume checkpoint. Jobs
// are numbered from 1 in log order (FSM.jobs, under FSM.mu) and applied
// one at a time in that order; applied is the number of the last job
// applied, so "applied >= n" means every job up to n is on the volumes.
//
// Who waits for the applier, and why:
//
//   - Persist waits for the jobs enqueued when Snapshot ran, so that the
//     volumes hold every batch <= the snapshot point before it reads their
//     headers (see fsm_snapshot.go).
//   - ReadVolumeBlock waits for the jobs decided before the call, so that
//     it reads the volume as of the FSM's state.
//   - The apply goroutine drains the queue before it touches a volume
//     itself (RegisterVolume creating one, Restore), and Close drains it
//     before it stops the applier and closes the volumes.
//   - Apply blocks when the queue is full (back-pressure): when the queue
//     holds maxJobs jobs or maxBytes bytes of block data, the next job
//     waits until the applier has made room. A job larger than maxBytes is
//     admitted alone into an empty queue. While Apply blocks, Raft's apply
//     goroutine stops, and so do the results of later entries: the
//     intermediate cannot acknowledge batches faster than its volumes take
//     them for longer than the queue lasts.
//
// Crash semantics are those of the synchronous writes the applier
// replaces: Apply never synced the volumes, so a crash loses what the
// FileVolume had not synced, queued or not; on restart the Raft log (after
// the snapshot, whose Persist synced the volumes) is replayed, and the
// header's applied seq makes the replay skip every batch a volume holds.
//
// An error writing a volume is fatal, as it was in Apply: the applier
// records it, drops the queue, wakes every waiter, calls the FSM's fatal
// (OnFatal, once) and exits. Later enqueues return the error, and Apply
// turns it into FAILED.

// Bounds of the applier's queue.
const (
	// DefaultApplyQueueBytes is the default bound on the block data the
	// applier's queue holds (FSMConfig.ApplyQueueBytes). The blocks are
	// shared with the journal, so the bound is mostly on how far the
	// volumes may lag the state, not on memory.
	DefaultApplyQueueBytes = 256 << 20
	// DefaultApplyQueueEntries is the default bound on the entries the
	// applier's queue holds (FSMConfig.ApplyQueueEntries).
	DefaultApplyQueueEntries = 4096
)

// errApplierStopped is returned by the applier's waits and enqueues once it
// was stopped.
var errApplierStopped = errors.New("intermediate volume applier stopped")

// volumeJob is one entry's writes to the intermediate volumes: one atomic
// blockdev Apply per volume, in order.
type volumeJob struct {
	n      uint64 // the job's number: jobs are numbered from 1, in log order
	index  uint64 // the Raft index of the entry, for errors
	writes []*volumeWrite
	bytes  int64 // block data in writes, headers included
}

// volumeWrite gathers the blocks one entry writes to one intermediate
// volume, with the header recording the entry's last seq in the volume.
type volumeWrite struct {
	iv     *ivolume
	writes []blockdev.Write
	hdr    ivolHeader
}

// apply writes the job's blocks, volume by volume.
func (j *volumeJob) apply() error {
	for _, w := range j.writes {
		if err := w.iv.write(w.writes, w.hdr); err != nil {
			return fmt.Errorf("raft entry %d: %w", j.index, err)
		}
	}
	return nil
}

// applier is the queue of volume jobs and the goroutine that applies them.
// enqueue is called by the apply goroutine only; wait by any goroutine.
type applier struct {
	maxBytes int64
	maxJobs  int
	onFatal  func(error)

	// applied is the number of the last job applied. It is written under
	// mu and read without it by the fast path of wait.
	applied atomic.Uint64

	// mu guards the fields below.
	mu       sync.Mutex
	queue    []*volumeJob // the job being applied is queue[0] until it is done
	bytes    int64        // bytes of the queued jobs
	err      error        // the error that stopped the applier
	stopped  bool
	progress chan struct{} // closed and replaced when applied moves, the applier fails or stops
	waiting  bool          // someone took progress
	// hook, when set (by tests), is called by the applier goroutine
	// before it applies each job.
	hook func(j *volumeJob)

	kick   chan struct{} // wakes the goroutine when a job arrives
	cancel context.CancelCauseFunc
	done   chan struct{} // closed when the goroutine has returned
}

// newApplier starts the applier goroutine; stop stops it.
func newApplier(maxBytes int64, maxJobs int, onFatal func(error)) *applier {
	a := &applier{
		maxBytes: maxBytes,
		maxJobs:  maxJobs,
		onFatal:  onFatal,
		progress: make(chan struct{}),
		kick:     make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	ctx, cancel := context.WithCancelCause(context.Background())
	a.cancel = cancel
	go a.run(ctx)
	return a
}

// run is the applier goroutine: it applies the jobs in order until it is
// stopped or a job fails.
func (a *applier) run(ctx context.Context) {
	defer close(a.done)
	for {
		j, hook := a.next(ctx)
		if j == nil {
			return
		}
		if hook != nil {
			hook(j)
		}
		err := j.apply()
		a.finish(j, err)
		if err != nil {
			a.onFatal(err)
			return
		}
	}
}

// next returns the next job to apply (left at the head of the queue) and
// the test hook, or nil once ctx is cancelled.
func (a *applier) next(ctx context.Context) (*volumeJob, func(*volumeJob)) {
	for {
		if ctx.Err() != nil {
			return nil, nil
		}
		a.mu.Lock()
		if len(a.queue) > 0 {
			j, hook := a.queue[0], a.hook
			a.mu.Unlock()
			return j, hook
		}
		a.mu.Unlock()
		select {
		case <-a.kick:
		case <-ctx.Done():
		}
	}
}

// finish removes the applied (or failed) job from the queue and wakes the
// waiters. On an error it records it and drops the queue.
func (a *applier) finish(j *volumeJob, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		a.err = err
		clear(a.queue)
		a.queue, a.bytes = nil, 0
	} else {
		a.queue[0] = nil
		a.queue = a.queue[1:]
		a.bytes -= j.bytes
		a.applied.Store(j.n)
	}
	a.wakeLocked()
}

// enqueue queues job j, whose number must follow the last one queued. When
// the queue is full it blocks until the applier makes room (back-pressure).
// It returns the applier's error once it failed, errApplierStopped once it
// was stopped.
func (a *applier) enqueue(j *volumeJob) error {
	a.mu.Lock()
	for a.err == nil && !a.stopped && len(a.queue) > 0 &&
		(len(a.queue) >= a.maxJobs || a.bytes+j.bytes > a.maxBytes) {
		ch := a.progressLocked()
		a.mu.Unlock()
		<-ch
		a.mu.Lock()
	}
	switch {
	case a.err != nil:
		a.mu.Unlock()
		return a.err
	case a.stopped:
		a.mu.Unlock()
		return errApplierStopped
	}
	a.queue = append(a.queue, j)
	a.bytes += j.bytes
	a.mu.Unlock()
	select {
	case a.kick <- struct{}{}:
	default:
	}
	return nil
}

// wait returns once every job numbered up to n is applied. It returns an
// error if the applier failed or was stopped before that, or when ctx is
// done. When the jobs are applied already it costs one atomic load.
func (a *applier) wait(ctx context.Context, n uint64) error {
	if a.applied.Load() >= n {
		return nil
	}
	for {
		a.mu.Lock()
		switch {
		case a.applied.Load() >= n:
			a.mu.Unlock()
			return nil
		case a.err != nil:
			err := a.err
			a.mu.Unlock()
			return fmt.Errorf("wait for the intermediate volume writes: %w", err)
		case a.stopped:
			a.mu.Unlock()
			return fmt.Errorf("wait for the intermediate volume writes: %w", errApplierStopped)
		}
		ch := a.progressLocked()
		a.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("wait for the intermediate volume writes: %w", context.Cause(ctx))
		}
	}
}

// stop stops the goroutine, dropping the jobs not applied yet (the caller
// drains first), and waits for it to return. Later enqueues and waits
// return errApplierStopped. It may be called more than once.
func (a *applier) stop() {
	a.mu.Lock()
	a.stopped = true
	a.wakeLocked()
	a.mu.Unlock()
	a.cancel(errApplierStopped)
	<-a.done
}

// setHook sets the test hook.
func (a *applier) setHook(hook func(*volumeJob)) {
	a.mu.Lock()
	a.hook = hook
	a.mu.Unlock()
}

// progressLocked returns the channel closed at the next progress. The
// caller holds mu.
func (a *applier) progressLocked() <-chan struct{} {
	a.waiting = true
	return a.progress
}

// wakeLocked wakes whoever waits on progress. The caller holds mu.
func (a *applier) wakeLocked() {
	if a.waiting {
		close(a.progress)
		a.progress = make(chan struct{})
		a.waiting = false
	}
}
