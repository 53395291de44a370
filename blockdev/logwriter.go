package blockdev

import (
	"fmt"
	"sync"
)

// logWriter writes the records of a FileVolume's Applies to the intent log
// in a goroutine, in seq order, so that an Apply in background mode (see
// FileVolume.SetBackgroundCheckpoint) returns once its batch is queued and
// visible; a small record, when nothing is queued, Apply writes itself
// (idle, wrote). Sync, and the checkpoint of a frozen generation, wait for
// the records they cover to be written before they fsync.
//
// The goroutine is started by FileVolume.SetBackgroundCheckpoint(true) and
// stopped, after it has written every queued record, by
// SetBackgroundCheckpoint(false) and Close. After a failed write it stops
// and reports the error to every later call.
type logWriter struct {
	mu      sync.Mutex
	cond    sync.Cond // signalled on new jobs, progress, stop and exit
	jobs    []logJob  // queued records, in seq order
	written uint64    // every record with seq <= written was written
	err     error     // the write that failed, if one did
	busy    bool      // the goroutine is writing a record
	stop    bool      // exit once jobs is empty
	exited  chan struct{}
}

// logJob is one record to write: the batch's writes, encoded by the
// goroutine, at off in log f of generation gen.
type logJob struct {
	f      File
	name   string
	off    int64
	gen    uint64
	seq    uint64
	synced uint64
	writes []Write
}

// startLogWriter starts the goroutine of a log writer whose next record
// will have seq next.
func startLogWriter(next uint64) *logWriter {
	w := &logWriter{written: next - 1, exited: make(chan struct{})}
	w.cond.L = &w.mu
	go w.run()
	return w
}

// enqueue queues a record; it returns the error of a failed write instead,
// if there was one.
func (w *logWriter) enqueue(j logJob) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	w.jobs = append(w.jobs, j)
	w.cond.Broadcast()
	return nil
}

// idle reports whether nothing is queued or being written, so that the
// caller, which holds FileVolume.mu (no record can be queued meanwhile),
// may write the next record itself, then report it with wrote. It returns
// the error of a failed write, if there was one.
func (w *logWriter) idle() (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.jobs) == 0 && !w.busy, w.err
}

// wrote records that the caller wrote record seq itself (see idle), or
// failed to with err.
func (w *logWriter) wrote(seq uint64, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.err = err
	} else {
		w.written = seq
	}
	w.cond.Broadcast()
}

// wait blocks until every record with seq <= seq was written, and returns
// the error of a failed write, if there was one.
func (w *logWriter) wait(seq uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for w.written < seq && w.err == nil {
		w.cond.Wait()
	}
	return w.err
}

// close makes the goroutine exit once it has written every queued record,
// waits for it, and returns the error of a failed write, if there was one.
func (w *logWriter) close() error {
	w.mu.Lock()
	w.stop = true
	w.cond.Broadcast()
	w.mu.Unlock()
	<-w.exited
	return w.err
}

func (w *logWriter) run() {
	defer close(w.exited)
	var rec recordWriter
	w.mu.Lock()
	defer w.mu.Unlock()
	for {
		for len(w.jobs) == 0 && !w.stop {
			w.cond.Wait()
		}
		if len(w.jobs) == 0 {
			return
		}
		j := w.jobs[0]
		w.jobs[0] = logJob{}
		w.jobs = w.jobs[1:]
		w.busy = true
		w.mu.Unlock()
		_, err := rec.write(j.f, j.off, j.gen, j.seq, j.synced, j.writes)
		w.mu.Lock()
		w.busy = false
		if err != nil {
			w.err = fmt.Errorf("intent log %q record seq %d: write at offset %d: %w", j.name, j.seq, j.off, err)
			w.jobs = nil
			w.cond.Broadcast()
			return
		}
		w.written = j.seq
		w.cond.Broadcast()
	}
}
