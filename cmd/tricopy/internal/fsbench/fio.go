package fsbench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/tricopy/tricopy/cmd/tricopy/internal/benchutil"
)

// fioJob is one fio job on one file of a target.
type fioJob struct {
	name     string // job name, also the name of its output file
	file     string // file name in the target's directory
	rw       string // fio rw: write, read, randwrite, randread
	bs       int64  // block size in bytes
	size     int64  // file size in bytes
	endFsync bool   // fsync the file at the end, inside the runtime
	fsync    bool   // fsync after every write
	numJobs  int    // parallel jobs, each on its own file (file.N); 0 or 1 for one
}

// args returns the fio command line of j in dir, bounded by runtime,
// writing its JSON report to out.
func (j fioJob) args(dir string, runtime time.Duration, out string) []string {
	flag := func(b bool) string {
		if b {
			return "1"
		}
		return "0"
	}
	file := "--filename=" + j.file
	jobs := []string{"--numjobs=1"}
	if j.numJobs > 1 {
		file = "--filename_format=" + j.file + ".$jobnum"
		jobs = []string{"--numjobs=" + strconv.Itoa(j.numJobs), "--group_reporting=1"}
	}
	args := []string{
		"--name=" + j.name,
		"--directory=" + dir,
		file,
		"--rw=" + j.rw,
		"--bs=" + strconv.FormatInt(j.bs, 10),
		"--size=" + strconv.FormatInt(j.size, 10),
		"--ioengine=psync",
		"--direct=0",
		"--iodepth=1",
		"--fallocate=none",
		"--invalidate=1",
		"--end_fsync=" + flag(j.endFsync),
		"--fsync=" + flag(j.fsync),
		"--runtime=" + strconv.FormatInt(runtime.Milliseconds(), 10) + "ms",
		"--output-format=json+", // json with the latency histograms (bins)
		"--output=" + out,
	}
	return append(args, jobs...)
}

// runFio runs job on t and returns what it measured. Cancelling ctx kills
// fio.
func (b *bench) runFio(ctx context.Context, t *target, job fioJob) (*FioResult, error) {
	r, err := runFioIn(ctx, b.fio, t.dir, b.runDir, b.opts.Runtime, job)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.name, err)
	}
	return r, nil
}

// Job is a fio job for other benchmarks: RW (write, read, randwrite,
// randread) in blocks of BS bytes over a file of Size bytes named File in
// the target directory; EndFsync fsyncs the file at the end (inside the
// runtime), Fsync after every write; NumJobs > 1 runs that many jobs in
// parallel, each on its own file, reported together.
type Job struct {
	Name, File, RW  string
	BS, Size        int64
	EndFsync, Fsync bool
	NumJobs         int
}

// RunJob runs job with the fio binary at fio in dir, bounded by runtime,
// keeping its report in outDir while it runs.
func RunJob(ctx context.Context, fio, dir, outDir string, runtime time.Duration, job Job) (*FioResult, error) {
	return runFioIn(ctx, fio, dir, outDir, runtime, fioJob{name: job.Name, file: job.File, rw: job.RW, bs: job.BS,
		size: job.Size, endFsync: job.EndFsync, fsync: job.Fsync, numJobs: job.NumJobs})
}

// LookFio finds fio and returns its path and version, or ErrNoFio.
func LookFio(ctx context.Context) (path, version string, err error) {
	path, err = exec.LookPath("fio")
	if err != nil {
		return "", "", fmt.Errorf("%w (%w)", ErrNoFio, err)
	}
	version, err = fioVersion(ctx, path)
	return path, version, err
}

// runFioIn runs job in dir and returns what it measured.
func runFioIn(ctx context.Context, fio, dir, outDir string, runtime time.Duration, job fioJob) (*FioResult, error) {
	out := filepath.Join(outDir, "fio-"+filepath.Base(dir)+"-"+job.name+".json")
	cmd := exec.CommandContext(ctx, fio, job.args(dir, runtime, out)...)
	var stderr bytes.Buffer
	cmd.Stdout = &stderr
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("fio %s: %w", job.name, context.Cause(ctx))
		}
		return nil, fmt.Errorf("fio %s: %w: %s", job.name, err, lastLines(stderr.String(), 5))
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("fio %s: read report: %w", job.name, err)
	}
	if err := os.Remove(out); err != nil {
		return nil, fmt.Errorf("fio %s: remove report: %w", job.name, err)
	}
	r, err := parseFio(data, job.rw)
	if err != nil {
		return nil, fmt.Errorf("fio %s: %w", job.name, err)
	}
	return r, nil
}

// fioVersion returns the output of fio --version.
func fioVersion(ctx context.Context, fio string) (string, error) {
	out, err := exec.CommandContext(ctx, fio, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("run fio --version: %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

// lastLines returns the last n lines of s, joined by " | ".
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// fioReport is the part of fio's JSON output (--output-format=json) that
// fsbench reads.
type fioReport struct {
	Version string         `json:"fio version"`
	Jobs    []fioJobReport `json:"jobs"`
}

type fioJobReport struct {
	Name  string      `json:"jobname"`
	Error int         `json:"error"`
	Read  fioIOReport `json:"read"`
	Write fioIOReport `json:"write"`
	Sync  struct {
		TotalIOs int64      `json:"total_ios"`
		Lat      fioLatency `json:"lat_ns"`
	} `json:"sync"`
}

type fioIOReport struct {
	IOBytes   int64      `json:"io_bytes"`
	RuntimeMS int64      `json:"runtime"`
	TotalIOs  int64      `json:"total_ios"`
	Clat      fioLatency `json:"clat_ns"`
}

// fioLatency is a latency distribution in nanoseconds. Bins, in json+
// output only, counts the operations of each latency (fio's histogram
// buckets, keyed by their latency in nanoseconds).
type fioLatency struct {
	N          int64              `json:"N"`
	Mean       float64            `json:"mean"`
	Percentile map[string]float64 `json:"percentile"`
	Bins       map[string]int64   `json:"bins"`
}

// histogram returns l's histogram, empty without bins. A key that is not
// a number is ignored.
func (l fioLatency) histogram() benchutil.Histogram {
	counts := make(map[time.Duration]int64, len(l.Bins))
	for k, n := range l.Bins {
		if ns, err := strconv.ParseInt(k, 10, 64); err == nil {
			counts[time.Duration(ns)] += n
		}
	}
	return benchutil.HistogramOfCounts(counts)
}

// percentile returns the p-th percentile (like 99) as a duration, or 0
// if fio did not report it.
func (l fioLatency) percentile(p float64) time.Duration {
	for k, v := range l.Percentile {
		q, err := strconv.ParseFloat(k, 64)
		if err == nil && math.Abs(q-p) < 1e-6 {
			return time.Duration(v)
		}
	}
	return 0
}

// errFioReport means fio's JSON output is not what fsbench expects.
var errFioReport = errors.New("unexpected fio report")

// parseFio reads the JSON report of a single fio job whose rw was rw
// (read, write, randread or randwrite).
func parseFio(data []byte, rw string) (*FioResult, error) {
	// fio may print warnings before the JSON document.
	if i := bytes.IndexByte(data, '{'); i > 0 {
		data = data[i:]
	}
	var rep fioReport
	if err := json.Unmarshal(data, &rep); err != nil {
		return nil, fmt.Errorf("decode fio report: %w", err)
	}
	if len(rep.Jobs) != 1 {
		return nil, fmt.Errorf("%w: %d jobs, want 1", errFioReport, len(rep.Jobs))
	}
	j := rep.Jobs[0]
	if j.Error != 0 {
		return nil, fmt.Errorf("fio job %s failed with error %d", j.Name, j.Error)
	}
	dir := j.Write
	if strings.Contains(rw, "read") {
		dir = j.Read
	}
	if dir.TotalIOs == 0 {
		return nil, fmt.Errorf("%w: job %s did no %s", errFioReport, j.Name, rw)
	}
	// fio reports whole milliseconds; a job shorter than that counts as 1ms.
	runtime := time.Duration(max(dir.RuntimeMS, 1)) * time.Millisecond
	return &FioResult{
		Bytes:       dir.IOBytes,
		Ops:         dir.TotalIOs,
		Runtime:     runtime,
		BytesPerSec: float64(dir.IOBytes) / runtime.Seconds(),
		IOPS:        float64(dir.TotalIOs) / runtime.Seconds(),
		ClatMean:    time.Duration(dir.Clat.Mean),
		ClatP50:     dir.Clat.percentile(50),
		ClatP99:     dir.Clat.percentile(99),
		SyncOps:     j.Sync.TotalIOs,
		SyncMean:    time.Duration(j.Sync.Lat.Mean),
		SyncP50:     j.Sync.Lat.percentile(50),
		SyncP99:     j.Sync.Lat.percentile(99),
		ClatHist:    dir.Clat.histogram(),
		SyncHist:    j.Sync.Lat.histogram(),
	}, nil
}
