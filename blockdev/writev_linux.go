//go:build linux

package blockdev

import (
	"io/fs"
	"syscall"
	"unsafe"
)

// maxIovecs is the largest iovec count of one pwritev(2) (IOV_MAX).
const maxIovecs = 1024

// halfLongBits is half the width of a C long: pwritev(2) takes the offset
// as two such halves shifted apart (the kernel's pos_from_hilo).
const halfLongBits = 4 * unsafe.Sizeof(uintptr(0))

// WriteAtv writes the concatenation of bufs at off with pwritev(2), as
// WriteAt would write it from one buffer. It may change the elements of
// bufs.
func (f osFile) WriteAtv(bufs [][]byte, off int64) (int, error) {
	iov := make([]syscall.Iovec, 0, min(len(bufs), maxIovecs))
	total := 0
	for len(bufs) > 0 {
		iov = iov[:0]
		for _, b := range bufs {
			if len(iov) == maxIovecs {
				break
			}
			if len(b) > 0 {
				iov = append(iov, syscall.Iovec{Base: &b[0]})
				iov[len(iov)-1].SetLen(len(b))
			}
		}
		if len(iov) == 0 {
			return total, nil
		}
		sc, err := f.SyscallConn()
		if err != nil {
			return total, err
		}
		var n uintptr
		var errno syscall.Errno
		cerr := sc.Write(func(fd uintptr) bool {
			for {
				n, _, errno = syscall.Syscall6(syscall.SYS_PWRITEV, fd, uintptr(unsafe.Pointer(&iov[0])), uintptr(len(iov)), uintptr(off), uintptr(uint64(off)>>halfLongBits>>halfLongBits), 0)
				if errno != syscall.EINTR {
					return true
				}
			}
		})
		if cerr != nil {
			return total, cerr
		}
		if errno != 0 {
			return total, &fs.PathError{Op: "pwritev", Path: f.Name(), Err: errno}
		}
		if n == 0 {
			return total, syscall.EIO
		}
		total += int(n)
		off += int64(n)
		// Drop what was written.
		for k := int(n); k > 0; {
			if k >= len(bufs[0]) {
				k -= len(bufs[0])
				bufs = bufs[1:]
				continue
			}
			bufs[0] = bufs[0][k:]
			k = 0
		}
		for len(bufs) > 0 && len(bufs[0]) == 0 {
			bufs = bufs[1:]
		}
	}
	return total, nil
}
