// Package lagbench is `tricopy bench lag`: how long a write that returned
// on a mirrored primary takes to be visible on a secondary's read-only
// mount, under steady loads at fractions of the primary's maximum rate, and
// how fast a secondary catches up after a backlog. Everything runs in this
// process: a one-node intermediate over TCP on 127.0.0.1, the primary's
// FUSE mount and the secondary's.
package lagbench

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tricopy/tricopy/blockdev"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/mirrorbench"
	"github.com/tricopy/tricopy/cmd/tricopy/internal/replbench"
	"github.com/tricopy/tricopy/fusefs"
	"github.com/tricopy/tricopy/intermediate/client"
	"github.com/tricopy/tricopy/secondary"
)

// Targets (issue 5).
const (
	// TargetP99 bounds the lag's p99 at the first load level with a
	// one-node intermediate.
	TargetP99 = 250 * time.Millisecond
	// TargetCatchUp: a secondary catches up a backlog at least this many
	// times faster than the primary wrote it at its maximum rate.
	TargetCatchUp = 2.0
)

// Defaults of Options.
const (
	DefaultDuration   = 15 * time.Second
	DefaultBacklog    = 1 << 30
	DefaultRecordSize = 4 << 10
	DefaultWriters    = 8
)

// DefaultLoads are the load levels, as fractions of the maximum rate.
func DefaultLoads() []float64 { return []float64{0.5, 0.9} }

// Options configure Run.
type Options struct {
	// Dir is the directory the benchmark works in (created if missing), on
	// the disk to measure. Required.
	Dir string
	// Duration is the measured time of each load level and of the
	// maximum-rate run (default DefaultDuration, at least 1s).
	Duration time.Duration
	// Loads are the load levels, fractions of the maximum rate in (0, 1]
	// (default DefaultLoads).
	Loads []float64
	// Backlog is the bytes written while the secondary is down before it
	// catches up (default DefaultBacklog; 0 after defaults skips it: use
	// a negative value in Options to skip).
	Backlog int64
	// RecordSize is the size of each write (default DefaultRecordSize, a
	// multiple of 4 KiB).
	RecordSize int
	// Writers is the number of concurrent writers, each with its own file
	// (default DefaultWriters).
	Writers int
	// ElectionTimeout shortens Raft's timeouts when not 0 (tests).
	ElectionTimeout time.Duration
	// Logger receives progress; nil means slog.Default().
	Logger *slog.Logger
	// JSONPath, if set, names a file Run writes the Results to.
	JSONPath string
}

func (o Options) withDefaults() (Options, error) {
	if o.Dir == "" {
		return o, errors.New("options: Dir is required")
	}
	if o.Duration == 0 {
		o.Duration = DefaultDuration
	}
	if len(o.Loads) == 0 {
		o.Loads = DefaultLoads()
	}
	switch {
	case o.Backlog == 0:
		o.Backlog = DefaultBacklog
	case o.Backlog < 0:
		o.Backlog = 0
	}
	if o.RecordSize == 0 {
		o.RecordSize = DefaultRecordSize
	}
	if o.Writers == 0 {
		o.Writers = DefaultWriters
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case o.Duration < time.Second:
		return o, fmt.Errorf("options: Duration %v is below 1s", o.Duration)
	case o.RecordSize < blockdev.BlockSize || o.RecordSize%blockdev.BlockSize != 0 || o.RecordSize > 1<<20:
		return o, fmt.Errorf("options: RecordSize %d is not a multiple of 4 KiB up to 1 MiB", o.RecordSize)
	case o.Writers < 1 || o.Writers > 64:
		return o, fmt.Errorf("options: Writers %d is not from 1 to 64", o.Writers)
	}
	for _, l := range o.Loads {
		if l <= 0 || l > 1 {
			return o, fmt.Errorf("options: load %v is not in (0, 1]", l)
		}
	}
	return o, nil
}

// LoadResult is the lag measured at one load level.
type LoadResult struct {
	// Load is the fraction of the maximum rate asked for.
	Load float64 `json:"load"`
	// Rate is the write rate achieved, in writes per second.
	Rate float64 `json:"rate_ops"`
	// Writes is the number of writes measured.
	Writes int `json:"writes"`
	// P50, P99 and Max are the lag from a write's return on the primary
	// to its visibility on the secondary's mount.
	P50 time.Duration `json:"lag_p50_ns"`
	P99 time.Duration `json:"lag_p99_ns"`
	Max time.Duration `json:"lag_max_ns"`
	// Hist is the distribution of the lags, for plots.
	Hist benchutil.Histogram `json:"hist,omitzero"`
	// Timeline is the lag over time: the writes that returned in each
	// window of the run, in order.
	Timeline []LagWindow `json:"timeline,omitempty"`
}

// LagWindow is the lag of the writes that returned on the primary in one
// window of a load level's run.
type LagWindow struct {
	// At is the window's start, from the start of the run.
	At time.Duration `json:"at_ns"`
	// Writes is the number of writes that returned in the window.
	Writes int `json:"writes"`
	// P50 and Max are the median and the maximum of their lags.
	P50 time.Duration `json:"lag_p50_ns"`
	Max time.Duration `json:"lag_max_ns"`
}

// timelineWindows is about the number of windows of a Timeline.
const timelineWindows = 150

// timeline returns the lag windows of writes that returned at the given
// times after the start of a run (with the lags at the same index); a
// window is d/timelineWindows long, at least 100ms.
func timeline(at, lags []time.Duration, d time.Duration) []LagWindow {
	window := max(d/timelineWindows, 100*time.Millisecond)
	byWindow := map[int64][]time.Duration{}
	for i, t := range at {
		k := int64(t / window)
		byWindow[k] = append(byWindow[k], lags[i])
	}
	var out []LagWindow
	for k, ls := range byWindow {
		slices.Sort(ls)
		out = append(out, LagWindow{At: time.Duration(k) * window, Writes: len(ls), P50: ls[(len(ls)-1)/2], Max: ls[len(ls)-1]})
	}
	slices.SortFunc(out, func(a, b LagWindow) int { return cmp.Compare(a.At, b.At) })
	return out
}

// CatchUpResult is the backlog measurement.
type CatchUpResult struct {
	// Bytes is the size of the backlog written.
	Bytes int64 `json:"bytes"`
	// WriteRate is the primary's rate writing it (sequential 1 MiB writes
	// by 2 writers, an fsync per 64 MiB file: the mirrored mount's
	// fastest), bytes per second.
	WriteRate float64 `json:"write_bytes_per_s"`
	// CatchUpRate is the secondary's rate applying it (from its restart
	// to the applied point passing the backlog), bytes per second.
	CatchUpRate float64 `json:"catch_up_bytes_per_s"`
	// CatchUp is the time from the secondary's restart to that point.
	CatchUp time.Duration `json:"catch_up_ns"`
}

// Results is what Run measured.
type Results struct {
	Time       time.Time      `json:"time"`
	Kernel     string         `json:"kernel"`
	RecordSize int            `json:"record_size"`
	Writers    int            `json:"writers"`
	MaxRate    float64        `json:"max_rate_ops"`
	Loads      []LoadResult   `json:"loads"`
	CatchUp    *CatchUpResult `json:"catch_up,omitempty"`
	// P99Passed and CatchUpPassed say whether the targets were met.
	P99Passed     bool `json:"p99_passed"`
	CatchUpPassed bool `json:"catch_up_passed"`
}

// Passed reports whether every target was met.
func (r *Results) Passed() bool { return r.P99Passed && r.CatchUpPassed }

// Run runs the benchmark, writes a markdown report to w (and JSON to
// opts.JSONPath) and returns the results. It needs root and /dev/fuse. It
// unmounts everything, stops the cluster and removes its working directory
// before it returns, also on error.
func Run(ctx context.Context, opts Options, w io.Writer) (_ *Results, err error) {
	opts, err = opts.withDefaults()
	if err != nil {
		return nil, err
	}
	runDir, err := benchutil.MakeRunDir(opts.Dir, "lagbench-")
	if err != nil {
		return nil, err
	}
	defer benchutil.RemoveRunDir(runDir, &err)
	b := &bench{opts: opts, log: opts.Logger, dir: runDir}
	defer func() { err = errors.Join(err, b.close()) }()
	if err := b.start(ctx); err != nil {
		return nil, err
	}
	res := &Results{Time: time.Now().UTC(), Kernel: benchutil.KernelRelease(), RecordSize: opts.RecordSize, Writers: opts.Writers}

	b.log.Info("measuring the mirrored mount's maximum write rate", "writers", opts.Writers, "record_size", opts.RecordSize, "duration", opts.Duration)
	n, took, err := b.writeClosed(ctx, opts.Duration)
	if err != nil {
		return nil, err
	}
	res.MaxRate = float64(n) / took.Seconds()
	for _, load := range opts.Loads {
		lr, err := b.measureLoad(ctx, load, res.MaxRate)
		if err != nil {
			return nil, err
		}
		res.Loads = append(res.Loads, lr)
	}
	res.P99Passed = len(res.Loads) > 0 && res.Loads[0].P99 <= TargetP99
	if opts.Backlog > 0 {
		cu, err := b.measureCatchUp(ctx)
		if err != nil {
			return nil, err
		}
		res.CatchUp = cu
		res.CatchUpPassed = cu.CatchUpRate >= TargetCatchUp*cu.WriteRate
	} else {
		res.CatchUpPassed = true
	}
	return res, benchutil.Report(w, res.WriteMarkdown, opts.JSONPath, res)
}

type bench struct {
	opts Options
	log  *slog.Logger
	dir  string

	inter      *replbench.Intermediate
	closePrim  func() error
	primMnt    string
	cl         *client.Client
	sec        *secondary.Secondary
	secMount   *secondary.Mount
	replicaMnt string

	// Each writer appends records to its own file; next[i] is the index of
	// its next record (records written so far).
	next []int64
}

// start starts the intermediate, the mirrored primary and the secondary.
func (b *bench) start(ctx context.Context) error {
	var err error
	b.inter, err = replbench.StartIntermediate(ctx, filepath.Join(b.dir, "intermediate"), 1,
		replbench.Options{Logger: b.log, ElectionTimeout: b.opts.ElectionTimeout})
	if err != nil {
		return err
	}
	// Room for every load level at the maximum rate, the backlog, and the
	// filesystem's metadata (and slack for its block maps).
	bytes := b.opts.Backlog + 4*b.opts.Duration.Milliseconds()*int64(b.opts.RecordSize)*4 + 512<<20
	blocks := uint64(bytes) / blockdev.BlockSize
	b.primMnt, b.closePrim, err = mirrorbench.MountPrimary(ctx, filepath.Join(b.dir, "primary"), blocks, b.inter.Addrs(), b.log)
	if err != nil {
		return err
	}
	b.cl, err = client.New(client.Config{Addrs: b.inter.Addrs(), Logger: b.log})
	if err != nil {
		return err
	}
	b.next = make([]int64, b.opts.Writers)
	b.replicaMnt = filepath.Join(b.dir, "replica")
	return b.startSecondary(ctx)
}

// startSecondary opens (or reopens) the secondary and mounts its replica.
func (b *bench) startSecondary(ctx context.Context) error {
	var err error
	b.sec, err = secondary.Open(ctx, secondary.Config{Volume: "bench", Dir: filepath.Join(b.dir, "secondary"),
		Addr: "lagbench", Intermediate: b.cl, Logger: b.log})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(b.replicaMnt, 0o755); err != nil {
		return err
	}
	b.secMount, err = secondary.NewMount(ctx, b.sec.Replica(), fusefs.MountOptions{Mountpoint: b.replicaMnt, Name: "lagbench", Logger: b.log})
	if err != nil {
		return err
	}
	if err := b.sec.Start(b.secMount); err != nil {
		return err
	}
	select {
	case <-b.secMount.Mounted():
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	case <-time.After(time.Minute):
		return errors.New("the replica was not mounted within a minute")
	}
}

// stopSecondary unmounts the replica and closes the secondary.
func (b *bench) stopSecondary() error {
	var errs []error
	if b.secMount != nil {
		errs = append(errs, b.secMount.Unmount())
		b.secMount = nil
	}
	if b.sec != nil {
		errs = append(errs, b.sec.Close())
		b.sec = nil
	}
	return errors.Join(errs...)
}

func (b *bench) close() error {
	errs := []error{b.stopSecondary()}
	if b.cl != nil {
		errs = append(errs, b.cl.Close())
	}
	if b.closePrim != nil {
		errs = append(errs, b.closePrim())
	}
	if b.inter != nil {
		errs = append(errs, b.inter.Close())
	}
	return errors.Join(errs...)
}

// recordMagic starts every record.
const recordMagic = 0x5452494c41474231 // "TRILAGB1"

// record returns the content of record i of writer w: magic, writer,
// index, then filler, with a CRC-32C of the rest at the end.
func (b *bench) record(w int, i int64) []byte {
	p := make([]byte, b.opts.RecordSize)
	binary.LittleEndian.PutUint64(p, recordMagic)
	binary.LittleEndian.PutUint64(p[8:], uint64(w))
	binary.LittleEndian.PutUint64(p[16:], uint64(i))
	for k := 24; k < len(p)-4; k += 8 {
		binary.LittleEndian.PutUint64(p[k:], uint64(i)*0x9e3779b97f4a7c15+uint64(k))
	}
	binary.LittleEndian.PutUint32(p[len(p)-4:], crc32.Checksum(p[:len(p)-4], crc32.MakeTable(crc32.Castagnoli)))
	return p
}

// isRecord reports whether p holds record i of writer w.
func isRecord(p []byte, w int, i int64) bool {
	return binary.LittleEndian.Uint64(p) == recordMagic && binary.LittleEndian.Uint64(p[8:]) == uint64(w) &&
		binary.LittleEndian.Uint64(p[16:]) == uint64(i) &&
		binary.LittleEndian.Uint32(p[len(p)-4:]) == crc32.Checksum(p[:len(p)-4], crc32.MakeTable(crc32.Castagnoli))
}

func (b *bench) file(mnt string, w int) string {
	return filepath.Join(mnt, fmt.Sprintf("writer-%02d", w))
}

// writeOne writes the next record of writer w and fsyncs it; it returns
// the record's index.
func (b *bench) writeOne(f *os.File, w int) (int64, error) {
	i := b.next[w]
	if _, err := f.WriteAt(b.record(w, i), i*int64(b.opts.RecordSize)); err != nil {
		return 0, err
	}
	if err := f.Sync(); err != nil {
		return 0, err
	}
	b.next[w] = i + 1
	return i, nil
}

// openFiles opens every writer's file on the primary.
func (b *bench) openFiles() ([]*os.File, error) {
	files := make([]*os.File, b.opts.Writers)
	for w := range files {
		f, err := os.OpenFile(b.file(b.primMnt, w), os.O_WRONLY|os.O_CREATE, 0o644)
		if err != nil {
			closeFiles(files)
			return nil, err
		}
		files[w] = f
	}
	return files, nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}

// writeClosed runs every writer as fast as it can, for d, and returns the
// writes done and the time.
func (b *bench) writeClosed(ctx context.Context, d time.Duration) (int64, time.Duration, error) {
	files, err := b.openFiles()
	if err != nil {
		return 0, 0, err
	}
	defer closeFiles(files)
	var (
		done  atomic.Int64
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	start := time.Now()
	deadline := start.Add(d)
	for w := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(deadline) {
				if _, err := b.writeOne(files[w], w); err != nil {
					errMu.Lock()
					first = cmp.Or(first, err)
					errMu.Unlock()
					return
				}
				done.Add(1)
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if first != nil {
		return 0, 0, fmt.Errorf("write on the primary: %w", first)
	}
	if err := ctx.Err(); err != nil {
		return 0, 0, context.Cause(ctx)
	}
	return done.Load(), took, nil
}

// measureLoad writes at load x maxRate for the duration and measures each
// write's lag to the replica mount.
func (b *bench) measureLoad(ctx context.Context, load, maxRate float64) (LoadResult, error) {
	rate := load * maxRate
	b.log.Info("measuring lag", "load", load, "rate_ops", fmt.Sprintf("%.0f", rate))
	files, err := b.openFiles()
	if err != nil {
		return LoadResult{}, err
	}
	defer closeFiles(files)

	var (
		mu       sync.Mutex
		returned = map[[2]int64]time.Time{} // (writer, index) -> return time
		visible  = map[[2]int64]time.Time{}
		first    = slices.Clone(b.next) // the first index this run writes, per writer
	)
	// Writers take tickets from a paced dispatcher.
	tickets := make(chan struct{}, 1024)
	wctx, stopWriters := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var writeErr atomic.Pointer[error]
	for w := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-wctx.Done():
					return
				case <-tickets:
				}
				i, err := b.writeOne(files[w], w)
				if err != nil {
					writeErr.CompareAndSwap(nil, &err)
					return
				}
				now := time.Now()
				mu.Lock()
				returned[[2]int64{int64(w), i}] = now
				mu.Unlock()
			}
		}()
	}
	// The poller reads each writer's next unseen records on the replica.
	pctx, stopPoller := context.WithCancel(ctx)
	pollDone := make(chan error, 1)
	go func() {
		pollDone <- b.poll(pctx, first, func(w int, i int64, at time.Time) {
			mu.Lock()
			visible[[2]int64{int64(w), i}] = at
			mu.Unlock()
		})
	}()

	start := time.Now()
	interval := time.Duration(float64(time.Second) / rate)
	issued := 0
	for time.Since(start) < b.opts.Duration && ctx.Err() == nil && writeErr.Load() == nil {
		due := int(time.Since(start) / interval)
		for ; issued < due; issued++ {
			select {
			case tickets <- struct{}{}:
			default: // the writers cannot keep up: the rate achieved says so
			}
		}
		time.Sleep(min(interval, time.Millisecond))
	}
	stopWriters()
	wg.Wait()
	elapsed := time.Since(start)
	if p := writeErr.Load(); p != nil {
		stopPoller()
		<-pollDone
		return LoadResult{}, fmt.Errorf("write on the primary: %w", *p)
	}
	// Wait for everything written to become visible.
	deadline := time.Now().Add(time.Minute)
	for {
		mu.Lock()
		all := len(visible) >= len(returned)
		mu.Unlock()
		if all {
			break
		}
		if time.Now().After(deadline) {
			stopPoller()
			<-pollDone
			return LoadResult{}, fmt.Errorf("%d of %d writes not visible on the replica a minute after the load stopped", len(returned)-len(visible), len(returned))
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopPoller()
	if err := <-pollDone; err != nil && !errors.Is(err, context.Canceled) {
		return LoadResult{}, err
	}
	var lags, at []time.Duration
	mu.Lock()
	for k, r := range returned {
		lags = append(lags, max(0, visible[k].Sub(r)))
		at = append(at, r.Sub(start))
	}
	mu.Unlock()
	tl := timeline(at, lags, b.opts.Duration)
	slices.Sort(lags)
	res := LoadResult{Load: load, Rate: float64(len(lags)) / elapsed.Seconds(), Writes: len(lags),
		Hist: benchutil.NewHistogram(lags), Timeline: tl}
	if len(lags) > 0 {
		res.P50 = lags[len(lags)/2]
		res.P99 = lags[min(len(lags)-1, len(lags)*99/100)]
		res.Max = lags[len(lags)-1]
	}
	return res, nil
}

// poll reads the writers' files on the replica mount in a loop and calls
// seen for every record the first time it is visible, starting at index
// from[w] of writer w. It returns when ctx ends.
func (b *bench) poll(ctx context.Context, from []int64, seen func(w int, i int64, at time.Time)) error {
	next := slices.Clone(from)
	files := make([]*os.File, len(next))
	defer closeFiles(files)
	const batch = 64
	buf := make([]byte, batch*b.opts.RecordSize)
	for ctx.Err() == nil {
		for w := range files {
			if files[w] == nil {
				f, err := os.Open(b.file(b.replicaMnt, w))
				if err != nil {
					continue // not there yet
				}
				files[w] = f
			}
			n, err := files[w].ReadAt(buf, next[w]*int64(b.opts.RecordSize))
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read the replica: %w", err)
			}
			now := time.Now()
			for k := 0; (k+1)*b.opts.RecordSize <= n; k++ {
				if !isRecord(buf[k*b.opts.RecordSize:(k+1)*b.opts.RecordSize], w, next[w]) {
					break
				}
				seen(w, next[w], now)
				next[w]++
			}
		}
		time.Sleep(500 * time.Microsecond)
	}
	return ctx.Err()
}

// Backlog writing: the mirrored mount's fastest way to take bytes is
// sequential 1 MiB writes with an fsync at the end of each file.
const (
	backlogWriters  = 2
	backlogChunk    = 1 << 20
	backlogFileSize = 64 << 20
)

// writeBacklog writes opts.Backlog bytes on the primary as fast as it takes
// them (backlogWriters writers of sequential 1 MiB writes, an fsync at the
// end of each 64 MiB file) and returns the bytes written and the time.
func (b *bench) writeBacklog(ctx context.Context) (int64, time.Duration, error) {
	var (
		next  atomic.Int64
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	chunk := make([]byte, backlogChunk)
	for i := range chunk {
		chunk[i] = byte(i*7 + 1)
	}
	files := (b.opts.Backlog + backlogFileSize - 1) / backlogFileSize
	start := time.Now()
	for range backlogWriters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				k := next.Add(1) - 1
				if k >= files {
					return
				}
				size := min(backlogFileSize, b.opts.Backlog-k*backlogFileSize)
				if err := writeFileSync(filepath.Join(b.primMnt, fmt.Sprintf("backlog-%03d", k)), chunk, size); err != nil {
					errMu.Lock()
					first = cmp.Or(first, err)
					errMu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	if first != nil {
		return 0, 0, fmt.Errorf("write the backlog on the primary: %w", first)
	}
	if err := ctx.Err(); err != nil {
		return 0, 0, context.Cause(ctx)
	}
	return b.opts.Backlog, took, nil
}

// writeFileSync writes size bytes to a new file at path, chunk after
// chunk, then fsyncs it.
func writeFileSync(path string, chunk []byte, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	for off := int64(0); off < size; off += int64(len(chunk)) {
		if _, err := f.Write(chunk[:min(int64(len(chunk)), size-off)]); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// measureCatchUp stops the secondary, writes the backlog at the maximum
// rate, restarts the secondary and measures how fast it catches up.
func (b *bench) measureCatchUp(ctx context.Context) (*CatchUpResult, error) {
	if err := b.stopSecondary(); err != nil {
		return nil, err
	}
	b.log.Info("writing the backlog with the secondary down", "bytes", b.opts.Backlog)
	bytes, took, err := b.writeBacklog(ctx)
	if err != nil {
		return nil, err
	}
	st, err := b.cl.Status(ctx)
	if err != nil {
		return nil, err
	}
	target := st.GetCommittedSeq()
	b.log.Info("catching up", "bytes", bytes, "committed_seq", target)
	start := time.Now()
	if err := b.startSecondary(ctx); err != nil {
		return nil, err
	}
	if err := b.sec.WaitApplied(ctx, target); err != nil {
		return nil, err
	}
	catchUp := time.Since(start)
	return &CatchUpResult{Bytes: bytes, WriteRate: float64(bytes) / took.Seconds(),
		CatchUpRate: float64(bytes) / catchUp.Seconds(), CatchUp: catchUp}, nil
}

// WriteMarkdown writes the results as markdown.
func (r *Results) WriteMarkdown(w io.Writer) error {
	p := &benchutil.Printer{W: w}
	p.F("## Secondary lag (1-node intermediate, %d writers of %d-byte records, each write fsync'd)\n\n", r.Writers, r.RecordSize)
	p.F("Maximum rate of the mirrored mount: %.0f writes/s.\n\n", r.MaxRate)
	p.F("| load | rate (writes/s) | writes | lag p50 | lag p99 | lag max |\n| --- | --- | --- | --- | --- | --- |\n")
	for _, l := range r.Loads {
		p.F("| %.0f%% | %.0f | %d | %v | %v | %v |\n", 100*l.Load, l.Rate, l.Writes,
			l.P50.Round(10*time.Microsecond), l.P99.Round(10*time.Microsecond), l.Max.Round(10*time.Microsecond))
	}
	verdict := func(ok bool) string {
		if ok {
			return "met"
		}
		return "MISSED"
	}
	if len(r.Loads) > 0 {
		p.F("\nTarget: p99 at %.0f%% load at most %v: %s.\n", 100*r.Loads[0].Load, TargetP99, verdict(r.P99Passed))
	}
	if c := r.CatchUp; c != nil {
		p.F("\nCatch-up: a backlog of %s written at %.1f MB/s with the secondary down was applied in %v: %.1f MB/s, %.2fx the write rate (target at least %.1fx: %s).\n",
			fmt.Sprintf("%.0f MiB", float64(c.Bytes)/(1<<20)), c.WriteRate/1e6, c.CatchUp.Round(time.Millisecond), c.CatchUpRate/1e6,
			c.CatchUpRate/c.WriteRate, TargetCatchUp, verdict(r.CatchUpPassed))
	}
	return p.Err
}
