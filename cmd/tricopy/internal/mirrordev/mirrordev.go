// Package mirrordev adapts a mirror.Mirror to the filesystem's Device.
package mirrordev

import (
	"context"
	"errors"
	"fmt"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/blockdev/mirror"
	"github.com/tricopy/tricopy/fusefs"
)

// Device is the fusefs.Device of a mirrored volume. It maps the mirror's
// refusals to the filesystem's: mirror.ErrUnavailable to
// fusefs.ErrDeviceUnavailable (EIO, the filesystem goes on) and
// mirror.ErrFenced to fusefs.ErrDeviceReadOnly (EROFS from then on).
type Device struct{ M *mirror.Mirror }

var _ fusefs.Device = Device{}

// BlockCount implements fusefs.Device.
func (d Device) BlockCount() uint64 { return d.M.BlockCount() }

// ReadBlock implements fusefs.Device.
func (d Device) ReadBlock(i uint64, p []byte) error { return d.M.ReadBlock(i, p) }

// ReadBlocks reads consecutive blocks with one call.
func (d Device) ReadBlocks(first uint64, p []byte) error { return d.M.ReadBlocks(first, p) }

// Sync implements fusefs.Device.
func (d Device) Sync(ctx context.Context) error { return d.M.Sync(ctx) }

// Commit implements fusefs.Device.
func (d Device) Commit(ctx context.Context, b *blockdev.Batch) (fusefs.Ack, error) {
	ack, err := d.M.Commit(ctx, b)
	switch {
	case err == nil:
		if ack == nil {
			return nil, nil
		}
		return fusefs.Ack(ack), nil
	case errors.Is(err, mirror.ErrUnavailable):
		return nil, fmt.Errorf("%w: %w", fusefs.ErrDeviceUnavailable, err)
	case errors.Is(err, mirror.ErrFenced):
		return nil, fmt.Errorf("%w: %w", fusefs.ErrDeviceReadOnly, err)
	}
	return nil, err
}
