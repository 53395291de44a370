package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// The chaos workloads run against the primaries' mounts while faults
// happen: every error (a primary killed or fenced) is expected, so they
// keep going, and they remember what was acknowledged, what may or may not
// have happened, and every violation of what was acknowledged.

// chaosRetry is the pause of a workload after a failed operation.
const chaosRetry = 200 * time.Millisecond

// chaosStopper is the stop and done channels of a workload goroutine.
type chaosStopper struct {
	stop chan struct{}
	done chan struct{}
}

func newChaosStopper() chaosStopper {
	return chaosStopper{stop: make(chan struct{}), done: make(chan struct{})}
}

// stopped reports whether the workload was told to stop.
func (s chaosStopper) stopped() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// pause waits d, or less when the workload is told to stop.
func (s chaosStopper) pause(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-s.stop:
	case <-t.C:
	}
}

// halt tells the workload to stop and waits for it, at most timeout.
func (s chaosStopper) halt(timeout time.Duration) error {
	close(s.stop)
	select {
	case <-s.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("still in a file system call after %v", timeout)
	}
}

// chaosDependent is the dependent-writes workload across the two volumes:
// a blob on a, fsync'd, then a line naming it with its checksum appended to
// the index on b, fsync'd. The replicas must never show an index line
// whose blob is missing or different (readCut checks that); the primaries
// must keep every acknowledged blob and line.
type chaosDependent struct {
	chaosStopper
	aDir, bDir string
	seed       uint64

	mu    sync.Mutex
	blobs map[string]string // acknowledged blobs: name → sha256 hex
	sizes map[string]int    // and their sizes
	lines []string          // acknowledged index lines, in order
	maybe map[string]bool   // lines whose append failed: may be there or not
	fails int               // failed operations
}

// startChaosDependent makes the blob directory on a and the index on b,
// then starts the writer. It never creates either again: while a primary
// restarts, its mountpoint is a plain directory, and a file made there
// would be acknowledged by the host's filesystem, not by tricopy.
func startChaosDependent(aDir, bDir string, seed uint64) (*chaosDependent, error) {
	if err := os.Mkdir(filepath.Join(aDir, "blobs"), 0o755); err != nil {
		return nil, err
	}
	if err := writeSynced(filepath.Join(bDir, "index"), nil); err != nil {
		return nil, err
	}
	w := &chaosDependent{chaosStopper: newChaosStopper(), aDir: aDir, bDir: bDir, seed: seed,
		blobs: map[string]string{}, sizes: map[string]int{}, maybe: map[string]bool{}}
	go w.run()
	return w, nil
}

func (w *chaosDependent) failed() {
	w.mu.Lock()
	w.fails++
	w.mu.Unlock()
	w.pause(chaosRetry)
}

func (w *chaosDependent) run() {
	defer close(w.done)
	rng := rand.New(rand.NewPCG(w.seed, 1))
	var idx *os.File
	defer func() {
		if idx != nil {
			idx.Close()
		}
	}()
	for i := 0; !w.stopped(); i++ {
		name := fmt.Sprintf("blob-%06d", i)
		data := fileData(w.seed, name, 1024+rng.IntN(7<<10))
		if err := writeSynced(filepath.Join(w.aDir, "blobs", name), data); err != nil {
			w.failed()
			continue
		}
		sum := sha256.Sum256(data)
		line := name + " " + hex.EncodeToString(sum[:])
		w.mu.Lock()
		w.blobs[name] = line[len(name)+1:]
		w.sizes[name] = len(data)
		w.mu.Unlock()
		for idx == nil && !w.stopped() {
			if err := w.repairIndex(); err != nil {
				w.failed()
				continue
			}
			f, err := os.OpenFile(filepath.Join(w.bDir, "index"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				w.failed()
				continue
			}
			idx = f
		}
		if idx == nil {
			return
		}
		_, err := idx.WriteString(line + "\n")
		if err == nil {
			err = idx.Sync()
		}
		w.mu.Lock()
		if err != nil {
			w.maybe[line] = true
		} else {
			w.lines = append(w.lines, line)
		}
		w.mu.Unlock()
		if err != nil {
			idx.Close()
			idx = nil
			w.failed()
			continue
		}
		w.pause(dependentPause)
	}
}

// repairIndex cuts a torn last line off the index, as an application
// recovering its log does: an append that failed may have landed in part
// (the kernel splits a write(2) that crosses a page boundary into two FUSE
// writes, and the primary may die between them).
func (w *chaosDependent) repairIndex() error {
	path := filepath.Join(w.bDir, "index")
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	keep := bytes.LastIndexByte(b, '\n') + 1
	if keep == len(b) {
		return nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(int64(keep)); err != nil {
		return err
	}
	return f.Sync()
}

// counts returns how many pairs were acknowledged and how many operations
// failed.
func (w *chaosDependent) counts() (acked, fails int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.lines), w.fails
}

// check compares the primaries' (or, after they converged, the replicas')
// a and b with what was acknowledged: every acknowledged line in order,
// no line that was never written, every line's blob with its checksum,
// every acknowledged blob.
func (w *chaosDependent) check(aDir, bDir string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var bad []string
	index, err := os.ReadFile(filepath.Join(bDir, "index"))
	if err != nil && !(errors.Is(err, fs.ErrNotExist) && len(w.lines) == 0) {
		return []string{fmt.Sprintf("read index on %s: %v", bDir, err)}
	}
	// A torn last line is the part of an append that failed, cut off at a
	// page boundary (see repairIndex).
	if complete := bytes.LastIndexByte(index, '\n') + 1; complete < len(index) {
		tail := string(index[complete:])
		if !slices.ContainsFunc(slices.Collect(maps.Keys(w.maybe)), func(l string) bool { return strings.HasPrefix(l, tail) }) {
			bad = append(bad, fmt.Sprintf("index on %s ends in %q, part of no append that failed", bDir, tail))
		}
		index = index[:complete]
	}
	sc := bufio.NewScanner(bytes.NewReader(index))
	next := 0 // the next acknowledged line expected
	for sc.Scan() {
		line := sc.Text()
		switch {
		case next < len(w.lines) && line == w.lines[next]:
			next++
		case w.maybe[line]:
		default:
			bad = append(bad, fmt.Sprintf("index on %s has line %q, never acknowledged nor attempted at this place (next acknowledged: %d of %d)", bDir, line, next, len(w.lines)))
			continue
		}
		name, sum, _ := strings.Cut(line, " ")
		if got, err := fileSum(filepath.Join(aDir, "blobs", name)); err != nil || got != sum {
			bad = append(bad, fmt.Sprintf("index on %s names %s, whose blob on %s is %q (err %v)", bDir, name, aDir, got, err))
		}
	}
	if next < len(w.lines) {
		bad = append(bad, fmt.Sprintf("index on %s lost acknowledged lines: %d of %d found in order; the first missing: %q", bDir, next, len(w.lines), w.lines[next]))
	}
	for name, sum := range w.blobs {
		if got, err := fileSum(filepath.Join(aDir, "blobs", name)); err != nil || got != sum {
			bad = append(bad, fmt.Sprintf("acknowledged blob %s on %s: checksum %q, want %q (err %v)", name, aDir, got, sum, err))
		}
	}
	return bad
}

// expected returns the checksum and size of an acknowledged blob.
func (w *chaosDependent) expected(name string) (sum string, size int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.blobs[name], w.sizes[name]
}

// fileSum returns the sha256 of a file, in hex.
func fileSum(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}

// chaosFile is what the model allows one file to be: any of options. An
// option with absent set means the file does not exist.
type chaosFile struct {
	options []chaosContent
}

// chaosContent is one possible state of a file.
type chaosContent struct {
	absent bool
	data   []byte
}

func (c chaosContent) equal(o chaosContent) bool {
	return c.absent == o.absent && bytes.Equal(c.data, o.data)
}

func (c chaosContent) String() string {
	if c.absent {
		return "absent"
	}
	s := sha256.Sum256(c.data)
	return fmt.Sprintf("%d bytes %x", len(c.data), s[:4])
}

// chaosOps is the random file-operation workload with a model of expected
// contents on one volume: whole-file replaces (write a temporary file,
// fsync, rename over, fsync the directory), in-place writes, truncates,
// removes and renames, each followed by fsync. An acknowledged operation
// makes the model certain; a failed one leaves the file either as it was
// or as the operation would have left it, and the next time the volume
// answers the workload reads the file, checks it is one of those, and
// continues from what it found.
type chaosOps struct {
	chaosStopper
	dir  string
	seed uint64

	mu         sync.Mutex
	files      map[string]*chaosFile // by name relative to dir
	violations []string
	acked      atomic.Int64
	fails      atomic.Int64
}

// chaosOpsFiles are the names the ops workload uses.
var chaosOpsFiles = func() []string {
	var out []string
	for d := range 3 {
		for f := range 6 {
			out = append(out, fmt.Sprintf("d%d/f%d", d, f))
		}
	}
	return out
}()

// startChaosOps makes the workload's directories under dir (on the
// mount: never again, see startChaosDependent) and starts it.
func startChaosOps(dir string, seed uint64) (*chaosOps, error) {
	w := &chaosOps{chaosStopper: newChaosStopper(), dir: dir, seed: seed, files: map[string]*chaosFile{}}
	for _, n := range chaosOpsFiles {
		w.files[n] = &chaosFile{options: []chaosContent{{absent: true}}}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, n)), 0o755); err != nil {
			return nil, err
		}
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	go w.run()
	return w, nil
}

// current returns the file's only possible content; resolve made it
// certain.
func (w *chaosOps) current(name string) chaosContent {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.files[name].options[0]
}

// set makes name's possible contents opts.
func (w *chaosOps) set(name string, opts ...chaosContent) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.files[name].options = opts
}

// violate records a violation.
func (w *chaosOps) violate(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.violations = append(w.violations, fmt.Sprintf(format, args...))
}

// read returns the state of a file on the volume; ok is false when the
// volume did not answer.
func (w *chaosOps) read(name string) (c chaosContent, ok bool) {
	path := filepath.Join(w.dir, name)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		// The directories are never removed: without its directory
		// the file is missing because the volume is not mounted.
		if _, err := os.Stat(filepath.Dir(path)); err != nil {
			return c, false
		}
		return chaosContent{absent: true}, true
	}
	if err != nil {
		return c, false
	}
	return chaosContent{data: b}, true
}

// resolve makes every uncertain file certain by reading it, recording a
// violation when what it finds is none of the possible contents. It
// returns false when the volume did not answer.
func (w *chaosOps) resolve() bool {
	for _, name := range chaosOpsFiles {
		w.mu.Lock()
		opts := w.files[name].options
		w.mu.Unlock()
		if len(opts) == 1 {
			continue
		}
		got, ok := w.read(name)
		if !ok {
			return false
		}
		if !slices.ContainsFunc(opts, got.equal) {
			w.violate("%s/%s is %v, none of the %d states its last operation may have left: %v", w.dir, name, got, len(opts), opts)
		}
		w.set(name, got)
	}
	return true
}

// syncDir fsyncs a directory.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

func (w *chaosOps) run() {
	defer close(w.done)
	rng := rand.New(rand.NewPCG(w.seed, 2))
	for i := 0; !w.stopped(); i++ {
		if !w.resolve() {
			w.fails.Add(1)
			w.pause(chaosRetry)
			continue
		}
		name := chaosOpsFiles[rng.IntN(len(chaosOpsFiles))]
		path := filepath.Join(w.dir, name)
		old := w.current(name)
		var err error
		switch op := rng.IntN(10); {
		case op < 4 || old.absent: // replace the whole file
			data := fileData(w.seed, fmt.Sprintf("%s#%d", name, i), rng.IntN(48<<10))
			tmp := filepath.Join(filepath.Dir(path), fmt.Sprintf(".tmp-%d", i))
			if err = writeSynced(tmp, data); err == nil {
				if err = os.Rename(tmp, path); err == nil {
					err = syncDir(filepath.Dir(path))
				}
			}
			w.outcome(name, err, old, chaosContent{data: data})
		case op < 6: // overwrite a range in place
			off := rng.IntN(len(old.data) + 1)
			patch := fileData(w.seed, fmt.Sprintf("%s@%d", name, i), 1+rng.IntN(8<<10))
			data := append([]byte(nil), old.data...)
			if end := off + len(patch); end > len(data) {
				data = append(data, make([]byte, end-len(data))...)
			}
			copy(data[off:], patch)
			var f *os.File
			if f, err = os.OpenFile(path, os.O_WRONLY, 0); err == nil {
				if _, err = f.WriteAt(patch, int64(off)); err == nil {
					err = f.Sync()
				}
				f.Close()
			}
			w.outcome(name, err, old, chaosContent{data: data})
			if err != nil {
				w.mu.Lock()
				w.files[name].options = append(w.files[name].options, tornWrites(old.data, off, patch)...)
				w.mu.Unlock()
			}
		case op < 7: // truncate
			n := rng.IntN(len(old.data) + 1)
			var f *os.File
			if f, err = os.OpenFile(path, os.O_WRONLY, 0); err == nil {
				if err = f.Truncate(int64(n)); err == nil {
					err = f.Sync()
				}
				f.Close()
			}
			w.outcome(name, err, old, chaosContent{data: old.data[:n]})
		case op < 8: // remove
			if err = os.Remove(path); err == nil {
				err = syncDir(filepath.Dir(path))
			}
			w.outcome(name, err, old, chaosContent{absent: true})
		default: // rename over another name
			to := chaosOpsFiles[rng.IntN(len(chaosOpsFiles))]
			if to == name {
				continue
			}
			toOld := w.current(to)
			if err = os.Rename(path, filepath.Join(w.dir, to)); err == nil {
				if err = syncDir(filepath.Dir(path)); err == nil {
					err = syncDir(filepath.Dir(filepath.Join(w.dir, to)))
				}
			}
			w.outcome(to, err, toOld, old)
			w.outcome(name, err, old, chaosContent{absent: true})
		}
		if err != nil {
			w.fails.Add(1)
			w.pause(chaosRetry)
		}
	}
}

// tornWrites returns what a file holding old may hold after a write of
// patch at off that failed part way: the kernel sends a write(2) as one
// FUSE write per run of pages, so any prefix of patch that ends at a page
// boundary may have landed.
func tornWrites(old []byte, off int, patch []byte) []chaosContent {
	var out []chaosContent
	for end := (off/pageSize + 1) * pageSize; end < off+len(patch); end += pageSize {
		data := append([]byte(nil), old...)
		if end > len(data) {
			data = append(data, make([]byte, end-len(data))...)
		}
		copy(data[off:end], patch[:end-off])
		out = append(out, chaosContent{data: data})
	}
	return out
}

// pageSize is the kernel's page size on the test machines.
const pageSize = 4096

// outcome records the result of an operation that turns name from old
// into after.
func (w *chaosOps) outcome(name string, err error, old, after chaosContent) {
	if err == nil {
		w.acked.Add(1)
		w.set(name, after)
		return
	}
	w.set(name, old, after)
}

// check compares dir (the primary's ops directory, or the replica's after
// they converged) with the model: every file as the model says, and no
// file the workload did not make but its leftover temporary files.
func (w *chaosOps) check(dir string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	bad := append([]string(nil), w.violations...)
	names := make([]string, 0, len(w.files))
	for n := range w.files {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		got := chaosContent{data: b}
		if errors.Is(err, fs.ErrNotExist) {
			got = chaosContent{absent: true}
		} else if err != nil {
			bad = append(bad, fmt.Sprintf("read %s/%s: %v", dir, n, err))
			continue
		}
		if opts := w.files[n].options; !slices.ContainsFunc(opts, got.equal) {
			bad = append(bad, fmt.Sprintf("%s/%s is %v, want one of %v", dir, n, got, opts))
		}
	}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		if d.IsDir() || strings.HasPrefix(d.Name(), ".tmp-") {
			return nil
		}
		if _, ok := w.files[rel]; !ok {
			bad = append(bad, fmt.Sprintf("%s holds %s, which the workload never made", dir, rel))
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		bad = append(bad, fmt.Sprintf("walk %s: %v", dir, err))
	}
	return bad
}

// chaosWatch samples the replica mounts all the time: a consistent cut of
// the dependent writes whenever a's replica shows a validated point at or
// after b's (both the same, most of the time), and each
// replica's validated point, which must only move forward (across
// restarts too).
type chaosWatch struct {
	chaosStopper
	aMnt, bMnt string
	dep        *chaosDependent // what was written, for a diagnosis
	anyPoint   bool            // check samples whatever the two points

	mu         sync.Mutex
	samples    int
	applied    [2]uint64
	violations []string
	torn       int // torn cuts seen; the first chaosMaxTorn are in violations
}

// chaosMaxTorn is how many torn cuts the watcher describes.
const chaosMaxTorn = 50

func startChaosWatch(aMnt, bMnt string, dep *chaosDependent, anyPoint bool) *chaosWatch {
	w := &chaosWatch{chaosStopper: newChaosStopper(), aMnt: aMnt, bMnt: bMnt, dep: dep, anyPoint: anyPoint}
	go w.run()
	return w
}

func (w *chaosWatch) run() {
	defer close(w.done)
	for !w.stopped() {
		c := readCut(w.aMnt, w.bMnt)
		w.mu.Lock()
		for i, mnt := range []string{w.aMnt, w.bMnt} {
			for _, n := range []uint64{c.before[i], c.after[i]} {
				if n == 0 {
					continue // not read (a mount restarting)
				}
				if n < w.applied[i] {
					w.violations = append(w.violations, fmt.Sprintf("%s went back from validated point %d to %d", mnt, w.applied[i], n))
				}
				w.applied[i] = max(w.applied[i], n)
			}
		}
		// a's replica at or past b's point must hold every blob b's
		// index names; with anyPoint (an invariant broken on purpose)
		// every stable sample is checked, as the broken run needs.
		if c.stable() && c.lines > 0 && (w.anyPoint || c.before[0] >= c.before[1]) {
			w.samples++
			for _, v := range c.violations {
				if w.torn++; w.torn > chaosMaxTorn {
					continue
				}
				w.violations = append(w.violations, fmt.Sprintf("torn cut at validated points a %d, b %d: %s; %s", c.before[0], c.before[1], v, w.diagnose(v)))
			}
		}
		w.mu.Unlock()
		if c.err != nil {
			w.pause(chaosRetry)
		}
	}
}

// blobNamed finds the blob name in a readCut violation.
var blobNamed = regexp.MustCompile(`blob-[0-9]+`)

// diagnose reads again what a violation names, after dropping the page
// cache of the file (posix_fadvise DONTNEED), and says what it finds and
// which validated points the mounts show now: a second read that matches
// points at the kernel's caches, one that does not at the replica's data.
func (w *chaosWatch) diagnose(violation string) string {
	if w.dep == nil {
		return ""
	}
	name := blobNamed.FindString(violation)
	if name == "" {
		return ""
	}
	path := filepath.Join(w.aMnt, "blobs", name)
	want, size := w.dep.expected(name)
	first, ferr := os.ReadFile(path)
	var dropped []byte
	var derr error
	if f, err := os.Open(path); err == nil {
		derr = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
		f.Close()
		dropped, err = os.ReadFile(path)
		derr = errors.Join(derr, err)
	}
	line := "not found"
	if index, err := os.ReadFile(filepath.Join(w.bMnt, "index")); err != nil {
		line = err.Error()
	} else if i := bytes.Index(index, []byte(name+" ")); i >= 0 {
		end := bytes.IndexByte(index[i:], '\n')
		if end < 0 {
			end = len(index) - i
		}
		line = fmt.Sprintf("at offset %d of %d: %q", i, len(index), index[i:i+end])
	}
	a, _ := readApplied(w.aMnt)
	b, _ := readApplied(w.bMnt)
	zeros := bytes.Count(first, []byte{0})
	got := func(d []byte) string {
		s := sha256.Sum256(d)
		return fmt.Sprintf("%d bytes, matches %v", len(d), hex.EncodeToString(s[:]) == want)
	}
	return fmt.Sprintf("diagnosis: want %d bytes, checksum %.16s; read again: %s (%d zero bytes, err %v); after dropping its cache: %s (err %v); index line now %s; points now a %d b %d",
		size, want, got(first), zeros, ferr, got(dropped), derr, line, a, b)
}

// result returns the samples taken, the highest points seen and the
// violations.
func (w *chaosWatch) result() (samples int, applied [2]uint64, violations []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	v := append([]string(nil), w.violations...)
	if w.torn > chaosMaxTorn {
		v = append(v, fmt.Sprintf("torn cut: %d more", w.torn-chaosMaxTorn))
	}
	return w.samples, w.applied, v
}

// chaosSQL runs sqlite3 transactions on a database on a primary: each
// session is one sqlite3 process that inserts rows, one transaction per
// row, and prints each id once its COMMIT returned; a session that fails
// (the primary died) ends, and the next starts when the volume answers.
// The database must pass integrity_check and hold every id whose commit
// returned, and no id never attempted.
type chaosSQL struct {
	chaosStopper
	db string

	mu        sync.Mutex
	committed map[int]bool // ids whose COMMIT returned
	attempted int          // ids up to this were sent to sqlite3
	sessions  int
	fails     int
}

// chaosSQLBatch is how many transactions one sqlite3 session runs.
const chaosSQLBatch = 50

// startChaosSQL makes the database (in rollback-journal mode, so that a
// read-only replica can be opened) and starts the workload.
func startChaosSQL(dir string) (*chaosSQL, error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	w := &chaosSQL{chaosStopper: newChaosStopper(), db: filepath.Join(dir, "chaos.db"), committed: map[int]bool{}}
	out, err := exec.Command("sqlite3", "-bail", "-batch", w.db,
		"PRAGMA journal_mode=DELETE; CREATE TABLE t(id INTEGER PRIMARY KEY, pad BLOB);").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("create %s: %w: %s", w.db, err, out)
	}
	go w.run()
	return w, nil
}

func (w *chaosSQL) run() {
	defer close(w.done)
	for !w.stopped() {
		// Only on the mount: its directory exists only there.
		if _, err := os.Stat(filepath.Dir(w.db)); err != nil {
			w.pause(chaosRetry)
			continue
		}
		w.mu.Lock()
		first := w.attempted + 1
		w.attempted += chaosSQLBatch
		w.sessions++
		w.mu.Unlock()
		var script strings.Builder
		script.WriteString("PRAGMA synchronous=FULL;\n")
		for id := first; id < first+chaosSQLBatch; id++ {
			fmt.Fprintf(&script, "BEGIN; INSERT INTO t VALUES (%d, randomblob(%d)); COMMIT; SELECT 'committed ' || %d;\n", id, 200+id%5000, id)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, "sqlite3", "-bail", "-batch", w.db)
		cmd.Stdin = strings.NewReader(script.String())
		out, err := cmd.Output()
		cancel()
		w.mu.Lock()
		for line := range strings.Lines(string(out)) {
			var id int
			if _, serr := fmt.Sscanf(line, "committed %d", &id); serr == nil {
				w.committed[id] = true
			}
		}
		if err != nil {
			w.fails++
		}
		w.mu.Unlock()
		if err != nil {
			w.pause(chaosRetry)
		}
	}
}

// counts returns the committed transactions, sessions and failed sessions.
func (w *chaosSQL) counts() (committed, sessions, fails int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.committed), w.sessions, w.fails
}

// check runs integrity_check on the database at db (readOnly: a replica)
// and compares its ids with what was committed and attempted.
func (w *chaosSQL) check(db string, readOnly bool) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	args := []string{"-bail", "-batch"}
	if readOnly {
		args = append(args, "-readonly")
	}
	args = append(args, db, "PRAGMA integrity_check; SELECT id FROM t ORDER BY id;")
	out, err := exec.Command("sqlite3", args...).CombinedOutput()
	if err != nil {
		return []string{fmt.Sprintf("sqlite3 %s: %v: %s", db, err, clip(string(out)))}
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) == 0 || lines[0] != "ok" {
		return []string{fmt.Sprintf("integrity_check of %s: %s", db, clip(string(out)))}
	}
	var bad []string
	found := map[int]bool{}
	for _, l := range lines[1:] {
		id, err := strconv.Atoi(l)
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: row id %q", db, l))
			continue
		}
		found[id] = true
		if id > w.attempted {
			bad = append(bad, fmt.Sprintf("%s holds id %d, never attempted (attempted up to %d)", db, id, w.attempted))
		}
	}
	for id := range w.committed {
		if !found[id] {
			bad = append(bad, fmt.Sprintf("%s lost committed transaction %d", db, id))
		}
	}
	return bad
}
