package benchutil

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Machine describes the computer and filesystem a benchmark ran on, for
// a report.
type Machine struct {
	// CPUModel is the model name of the first CPU in /proc/cpuinfo.
	CPUModel string `json:"cpu_model,omitempty"`
	// CPUs is the number of logical CPUs; GOMAXPROCS the Go scheduler's.
	CPUs       int `json:"cpus"`
	GOMAXPROCS int `json:"gomaxprocs"`
	// MemoryBytes is the MemTotal of /proc/meminfo, 0 if unknown.
	MemoryBytes uint64 `json:"memory_bytes,omitempty"`
	// Kernel is the running kernel's release.
	Kernel string `json:"kernel,omitempty"`
	// GoVersion is the Go release the binary was built with.
	GoVersion string `json:"go_version"`
	// Dir is the benchmark's scratch directory; Device, FSType and
	// DiskBytes describe the filesystem holding it.
	Dir       string `json:"dir"`
	Device    string `json:"device,omitempty"`
	FSType    string `json:"fs_type,omitempty"`
	DiskBytes uint64 `json:"disk_bytes,omitempty"`
	// LoadAverage is the 1-minute load average when described, -1 if
	// unknown.
	LoadAverage float64 `json:"load_average"`
	// Time is when the machine was described.
	Time time.Time `json:"time"`
}

// DescribeMachine describes this computer and the filesystem holding dir
// (which need not exist yet: its nearest existing parent is described).
// Facts it cannot read are left empty.
func DescribeMachine(dir string) Machine {
	m := Machine{
		CPUModel:    CPUModel(),
		CPUs:        runtime.NumCPU(),
		GOMAXPROCS:  runtime.GOMAXPROCS(0),
		MemoryBytes: memTotal(),
		Kernel:      KernelRelease(),
		GoVersion:   runtime.Version(),
		Dir:         dir,
		LoadAverage: LoadAverage(),
		Time:        time.Now().UTC(),
	}
	existing := dir
	for {
		if _, err := os.Stat(existing); err == nil {
			break
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	m.Device, m.FSType = MountOf(existing)
	var st syscall.Statfs_t
	if err := syscall.Statfs(existing, &st); err == nil {
		m.DiskBytes = st.Blocks * uint64(st.Bsize)
	}
	return m
}

// Markdown returns m as a markdown list.
func (m Machine) Markdown() string {
	var b strings.Builder
	cpu := fmt.Sprintf("%d logical CPUs", m.CPUs)
	if m.CPUModel != "" {
		cpu = m.CPUModel + ", " + cpu
	}
	if m.GOMAXPROCS != m.CPUs {
		cpu += fmt.Sprintf(" (GOMAXPROCS %d)", m.GOMAXPROCS)
	}
	fmt.Fprintf(&b, "- CPU: %s\n", cpu)
	fmt.Fprintf(&b, "- memory: %s\n", orUnknown(gib(m.MemoryBytes)))
	fmt.Fprintf(&b, "- kernel: %s\n", orUnknown(m.Kernel))
	fs := orUnknown(m.FSType)
	if m.Device != "" {
		fs += " on " + m.Device
	}
	if m.DiskBytes > 0 {
		fs += ", " + gib(m.DiskBytes)
	}
	fmt.Fprintf(&b, "- scratch directory: %s (%s)\n", m.Dir, fs)
	fmt.Fprintf(&b, "- Go: %s\n", m.GoVersion)
	load := "unknown"
	if m.LoadAverage >= 0 {
		load = fmt.Sprintf("%.2f", m.LoadAverage)
	}
	fmt.Fprintf(&b, "- 1-minute load average at the start: %s\n", load)
	fmt.Fprintf(&b, "- date: %s\n", m.Time.Format(time.RFC3339))
	return b.String()
}

func gib(n uint64) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

// CPUModel returns the model name of the first CPU in /proc/cpuinfo, or
// "" if unknown.
func CPUModel() string {
	return procField("/proc/cpuinfo", "model name")
}

// memTotal returns MemTotal of /proc/meminfo in bytes, or 0.
func memTotal() uint64 {
	f := strings.Fields(procField("/proc/meminfo", "MemTotal"))
	if len(f) != 2 || f[1] != "kB" {
		return 0
	}
	kb, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return 0
	}
	return kb << 10
}

// procField returns the value of the first "key: value" line of the file
// at path whose key is key, or "".
func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// LoadAverage returns the 1-minute load average, or -1 if unknown.
func LoadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return -1
	}
	return v
}

// MountOf returns the device and filesystem type of the mount holding
// dir, from the longest matching mount point in /proc/self/mounts, or
// empty strings if unknown.
func MountOf(dir string) (device, fsType string) {
	path, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return "", ""
	}
	path, err = filepath.Abs(path)
	if err != nil {
		return "", ""
	}
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "", ""
	}
	defer f.Close()
	best := -1
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		mnt := unescapeMount(fields[1])
		if !underMount(path, mnt) || len(mnt) <= best {
			continue
		}
		best, device, fsType = len(mnt), fields[0], fields[2]
	}
	return device, fsType
}

// underMount reports whether path is mnt or below it.
func underMount(path, mnt string) bool {
	if mnt == "/" || path == mnt {
		return true
	}
	return strings.HasPrefix(path, mnt+"/")
}

// unescapeMount undoes the octal escapes (\040 for a space) of a path in
// /proc/self/mounts.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if c, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(c))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
