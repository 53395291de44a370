//go:build linux

package blockdev

import "syscall"

// posixFadvWillNeed is POSIX_FADV_WILLNEED of posix_fadvise(2).
const posixFadvWillNeed = 3

// WillNeed asks the kernel to start reading n bytes at off into the page
// cache (posix_fadvise WILLNEED) and returns at once. It is a hint: an
// error is ignored.
func (f osFile) WillNeed(off, n int64) {
	syscall.Syscall6(syscall.SYS_FADVISE64, f.Fd(), uintptr(off), uintptr(n), posixFadvWillNeed, 0, 0)
}
