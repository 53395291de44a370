//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package blockdev

import (
	"errors"
	"os"
	"syscall"
)

// lockFile takes an exclusive flock(2) on f without blocking.
func lockFile(f *os.File) error {
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if errors.Is(err, syscall.EINTR) {
			continue
		}
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return ErrInUse
		}
		return err
	}
}
