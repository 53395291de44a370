package fusefs

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"testing"

	"github.com/tricopy/tricopy/blockdev"
)

// refusingDevice is a local device whose Commit refuses with err while err
// is set.
type refusingDevice struct {
	Device
	err error
}

func (d *refusingDevice) Commit(ctx context.Context, b *blockdev.Batch) (Ack, error) {
	if d.err != nil {
		return nil, d.err
	}
	return d.Device.Commit(ctx, b)
}

// TestDeviceRefusals checks the two refusals a device may give: an
// unavailable device fails the operation with EIO and leaves the filesystem
// working and unchanged; a read-only device makes it read-only for good.
func TestDeviceRefusals(t *testing.T) {
	ctx := context.Background()
	v := newMemVolume(t, 4096)
	dev := &refusingDevice{Device: LocalDevice(v)}
	fs, err := openFS(ctx, dev, engineOptions{log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ino, _, err := fs.mknod(ctx, rootIno, "f", s_IFREG|0o644, 0, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	freeBefore := fs.statfs()

	dev.err = fmt.Errorf("mirror: %w", ErrDeviceUnavailable)
	if _, _, err := fs.mknod(ctx, rootIno, "g", s_IFREG|0o644, 0, 0, 0); !errors.Is(err, ErrDeviceUnavailable) {
		t.Fatalf("create on an unavailable device: %v", err)
	}
	if _, err := fs.write(ctx, ino, make([]byte, 64<<10), 0); !errors.Is(err, ErrDeviceUnavailable) {
		t.Fatalf("write on an unavailable device: %v", err)
	}
	if got := fs.statfs(); got != freeBefore {
		t.Fatalf("refused operations changed the free counts: %+v, want %+v", got, freeBefore)
	}
	if _, _, err := fs.lookupName(rootIno, "g"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("the refused create left an entry: %v", err)
	}
	dev.err = nil
	if _, _, err := fs.mknod(ctx, rootIno, "g", s_IFREG|0o644, 0, 0, 0); err != nil {
		t.Fatalf("create once the device is back: %v", err)
	}
	if _, err := fs.write(ctx, ino, make([]byte, 64<<10), 0); err != nil {
		t.Fatalf("write once the device is back: %v", err)
	}
	checkCleanLive(t, v)

	dev.err = fmt.Errorf("mirror: %w", ErrDeviceReadOnly)
	if _, _, err := fs.mknod(ctx, rootIno, "h", s_IFREG|0o644, 0, 0, 0); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("create on a read-only device: %v, want EROFS", err)
	}
	dev.err = nil
	if err := fs.unlink(ctx, rootIno, "g"); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("unlink after the device went read-only: %v, want EROFS", err)
	}
	if _, err := fs.read(ino, make([]byte, 4096), 0); err != nil {
		t.Fatalf("read on the read-only filesystem: %v", err)
	}
	checkCleanLive(t, v)
}
