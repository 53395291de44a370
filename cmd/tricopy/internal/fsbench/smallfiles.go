package fsbench

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// smallFileSize is the size of each file of the small-file workload.
const smallFileSize = 1 << 10

// smallFiles creates n files of smallFileSize bytes in a new directory
// under dir (open with O_CREAT|O_EXCL, write, close), then stats every
// one, then unlinks every one, timing each phase. Before the stat phase it
// waits attrTimeout, so that the kernel's attribute and entry caches of a
// FUSE target have expired and every stat reaches the filesystem.
func smallFiles(ctx context.Context, dir string, n int, attrTimeout time.Duration) (SmallFileResult, error) {
	res := SmallFileResult{Files: n}
	d := filepath.Join(dir, "small")
	if err := os.Mkdir(d, 0o755); err != nil {
		return res, fmt.Errorf("create dir: %w", err)
	}
	names := make([]string, n)
	for i := range names {
		names[i] = filepath.Join(d, fmt.Sprintf("f%06d", i))
	}
	data := make([]byte, smallFileSize)
	for i := range data {
		data[i] = byte(i*7 + 1)
	}

	var err error
	res.Create, err = phase(ctx, names, func(name string) error {
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		if _, err := f.Write(data); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	})
	if err != nil {
		return res, fmt.Errorf("create: %w", err)
	}

	if attrTimeout > 0 {
		t := time.NewTimer(attrTimeout + attrTimeout/10)
		select {
		case <-ctx.Done():
			t.Stop()
			return res, context.Cause(ctx)
		case <-t.C:
		}
	}

	res.Stat, err = phase(ctx, names, func(name string) error {
		fi, err := os.Lstat(name)
		if err != nil {
			return err
		}
		if fi.Size() != smallFileSize {
			return fmt.Errorf("stat %s: size %d, want %d", name, fi.Size(), smallFileSize)
		}
		return nil
	})
	if err != nil {
		return res, fmt.Errorf("stat: %w", err)
	}

	res.Unlink, err = phase(ctx, names, os.Remove)
	if err != nil {
		return res, fmt.Errorf("unlink: %w", err)
	}
	if err := os.Remove(d); err != nil {
		return res, fmt.Errorf("remove dir: %w", err)
	}
	res.setRates()
	return res, nil
}

// phase calls fn on every name and returns the time it took. It checks ctx
// every few hundred calls.
func phase(ctx context.Context, names []string, fn func(string) error) (time.Duration, error) {
	start := time.Now()
	for i, name := range names {
		if i%256 == 0 && ctx.Err() != nil {
			return 0, context.Cause(ctx)
		}
		if err := fn(name); err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}
