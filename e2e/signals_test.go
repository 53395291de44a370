package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestSignalsDuringWrites writes signalWrites files while it sends a
// signal to the writing thread every signalEvery.
const (
	signalWrites = 2000
	signalEvery  = 50 * time.Microsecond
)

// TestSignalsDuringWrites writes and fsyncs files on a mount from a thread
// that receives a flood of signals, as any process may (timers, SIGCHLD,
// job control, the Go runtime's own preemption signal). A signal that
// arrives while a FUSE request is in flight makes the kernel send
// FUSE_INTERRUPT for it, and go-fuse cancels the request's context. The
// writes and fsyncs must still succeed (Go retries EINTR), and the mount
// must stay writable.
func TestSignalsDuringWrites(t *testing.T) {
	requireFUSE(t)
	data := filepath.Join(t.TempDir(), "volume")
	mnt := t.TempDir()
	format(t, data, "256MiB")
	m := startMount(t, "sig", data, mnt)

	tids := make(chan int)
	errs := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tids <- unix.Gettid()
		errs <- writeSmallFiles(filepath.Join(mnt, "sig"), signalWrites)
	}()
	tid := <-tids
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var sent int
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(signalEvery)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			// SIGURG: the Go runtime's preemption signal, handled
			// (SA_RESTART) and otherwise ignored.
			if err := unix.Tgkill(os.Getpid(), tid, unix.SIGURG); err != nil {
				return
			}
			sent++
		}
	}()
	err := <-errs
	close(stop)
	wg.Wait()
	t.Logf("sent %d signals to the writing thread", sent)
	if err != nil {
		t.Errorf("write files while receiving signals: %v", err)
	}
	if err := os.WriteFile(filepath.Join(mnt, "after"), []byte("still writable\n"), 0o644); err != nil {
		t.Errorf("write a file afterwards: %v (the mount stopped taking changes)", err)
	}
	m.stop(t)
	fsckClean(t, data)
}

// writeSmallFiles creates dir and writes n files of 1 KiB in it, each
// fsynced, stopping at the first error.
func writeSmallFiles(dir string, n int) error {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return err
	}
	buf := make([]byte, 1024)
	for i := 0; i < n; i++ {
		f, err := os.OpenFile(filepath.Join(dir, fmt.Sprintf("f%05d", i)), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return fmt.Errorf("file %d: %w", i, err)
		}
		_, werr := f.Write(buf)
		if err := errors.Join(werr, f.Sync(), f.Close()); err != nil {
			return fmt.Errorf("file %d: %w", i, err)
		}
	}
	return nil
}
