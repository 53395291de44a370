//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package blockdev

import (
	"fmt"
	"os"
	"runtime"
)

// lockFile fails: this platform has no flock(2), and opening a volume
// without excluding other processes would risk its data.
func lockFile(*os.File) error {
	return fmt.Errorf("file locking is not supported on %s", runtime.GOOS)
}
