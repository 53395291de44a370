package configs

import (
	"net"
	"strconv"
	"time"
)

// Defaults shared by the commands.
const (
	// DefaultLogLevel is the default of the log-level key.
	DefaultLogLevel = "info"
	// DefaultLogFormat is the default of the log-format key: text when
	// standard error is a terminal, JSON otherwise.
	DefaultLogFormat = "auto"
	// DefaultGroup is the default consistency group.
	DefaultGroup = "default"
	// DefaultFence is the default fence level: fail writes that cannot be
	// mirrored.
	DefaultFence = "data"
	// DefaultFenceTimeout is how long a write waits for its commit at the
	// intermediate before the fence level applies.
	DefaultFenceTimeout = 10 * time.Second
	// MinFenceTimeout is the shortest accepted fence-timeout.
	MinFenceTimeout = 100 * time.Millisecond
	// DefaultRegionSize is the primary bitmap's default region size.
	DefaultRegionSize = 64 * KiB
	// MaxRegionSize is the largest bitmap region size.
	MaxRegionSize = 1 << 30
	// MinVolumeSize is the smallest volume format and mount create.
	MinVolumeSize = 1 * MiB
	// MaxNameLen is the longest volume or group name.
	MaxNameLen = 64
)

// Common holds the keys every command has.
type Common struct {
	// Config names the YAML file read for the other keys.
	Config string `key:"config" meta:"FILE" help:"read settings from this YAML file; its keys are the flag names"`
	// LogLevel is the lowest level logged.
	LogLevel string `key:"log-level" oneof:"debug,info,warn,error" help:"lowest level of the log lines written to standard error"`
	// LogFormat is auto, text or json; auto is text on a terminal and json
	// otherwise.
	LogFormat string `key:"log-format" oneof:"auto,text,json" help:"log line format: text, json, or auto (text when standard error is a terminal, else json)"`
}

// DefaultCommon returns the defaults of the common keys.
func DefaultCommon() Common {
	return Common{LogLevel: DefaultLogLevel, LogFormat: DefaultLogFormat}
}

// CommonConfig returns the common keys; every command struct has it by
// embedding Common.
func (c *Common) CommonConfig() *Common { return c }

// Validate implements Config. The enumerations are checked when loading.
func (c *Common) Validate() error { return nil }

// Format is the configuration of `tricopy format`.
type Format struct {
	// Data is the directory to create the volume in.
	Data string `key:"data" meta:"DIR" help:"directory to create the volume in (created if missing; must not hold a volume); required"`
	// Size is the volume size, rounded down to whole blocks.
	Size Size `key:"size" help:"volume size, like 256MiB, 1GiB, 10GB or 4096; rounded down to whole 4KiB blocks; at least 1MiB; required"`
	// Inodes is the number of inodes; 0 lets the filesystem pick.
	Inodes uint64 `key:"inodes" help:"number of inodes (default: one per 16KiB of volume)"`
	// Common holds the keys every command has.
	Common
}

// DefaultFormat returns the defaults of `tricopy format`.
func DefaultFormat() Format { return Format{Common: DefaultCommon()} }

// Validate implements Config.
func (c *Format) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if c.Data == "" {
		return Required("data")
	}
	if c.Size == 0 {
		return Required("size")
	}
	return validateVolumeSize("size", c.Size)
}

// Fsck is the configuration of `tricopy fsck`.
type Fsck struct {
	// Data is the directory holding the volume.
	Data string `key:"data" meta:"DIR" help:"directory holding the volume to check; required"`
	// JSON prints the report as one JSON object.
	JSON bool `key:"json" help:"print the report as one JSON object on standard output"`
	// Common holds the keys every command has.
	Common
}

// DefaultFsck returns the defaults of `tricopy fsck`.
func DefaultFsck() Fsck { return Fsck{Common: DefaultCommon()} }

// Validate implements Config.
func (c *Fsck) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if c.Data == "" {
		return Required("data")
	}
	return nil
}

// Mount is the configuration of `tricopy mount`.
type Mount struct {
	// Volume names the volume (unique in its group).
	Volume string `key:"volume" meta:"NAME" help:"volume name, unique in its group (letters, digits, '.', '_', '-'); required"`
	// Data is the directory holding the volume.
	Data string `key:"data" meta:"DIR" help:"directory holding the volume; with --size, a volume is created there if it holds none; required"`
	// Mountpoint is the directory to mount on; created if missing.
	Mountpoint string `key:"mountpoint" meta:"MNT" help:"directory to mount the filesystem on (created if missing); required"`
	// Size, when not 0, is the size of the volume to create if Data holds none.
	Size Size `key:"size" help:"create and format a volume of this size if --data holds none (like 1GiB); ignored when a volume exists"`
	// Inodes is the inode count of a volume created by mount; 0 lets the
	// filesystem pick.
	Inodes uint64 `key:"inodes" help:"number of inodes of a volume created with --size (default: one per 16KiB)"`
	// ReadOnly mounts the filesystem read-only.
	ReadOnly bool `key:"read-only" help:"mount read-only"`
	// AllowOther lets other users use the mount.
	AllowOther bool `key:"allow-other" help:"let users other than the mounting one use the mount (FUSE allow_other)"`
	// DebugFUSE logs every FUSE request.
	DebugFUSE bool `key:"debug-fuse" help:"log every FUSE request and reply (very verbose)"`
	// Intermediate lists intermediate client addresses; empty means a
	// local-only mount.
	Intermediate []string `key:"intermediate" meta:"ADDRS" help:"comma-separated host:port addresses of intermediate nodes (any members) to mirror every write to synchronously; empty: a local-only mount"`
	// Group is the consistency group of the volume.
	Group string `key:"group" meta:"G" help:"consistency group of the volume (used with --intermediate)"`
	// Fence is the fence level: data or never.
	Fence string `key:"fence" oneof:"data,never" help:"when a write cannot be committed at the intermediate within --fence-timeout: data fails it (EIO) and refuses writes until the intermediate is back; never suspends mirroring, goes on locally and marks the primary bitmap (used with --intermediate)"`
	// FenceTimeout bounds the wait for a batch's commit at the intermediate.
	FenceTimeout time.Duration `key:"fence-timeout" meta:"DURATION" help:"how long a write may wait for its commit at the intermediate before the fence level applies (used with --intermediate)"`
	// RegionSize is the region size of a new primary bitmap.
	RegionSize Size `key:"region-size" help:"region size of the primary bitmap created with a new mirror (a power of two multiple of 4KiB); resync copies whole regions (used with --intermediate)"`
	// ResyncRate bounds the initial copy and resyncs, in bytes per second.
	ResyncRate Size `key:"resync-rate" meta:"SIZE" help:"most bytes per second the initial copy and each resync send (like 50MiB); the filesystem's own writes are not limited; 0: as fast as the intermediate takes them (used with --intermediate)"`
	// Metrics is the address of the Prometheus metrics server; empty: none.
	Metrics string `key:"metrics" meta:"ADDR" help:"serve Prometheus metrics (tricopy_*) at http://ADDR/metrics; empty: none"`
	// TLS holds the TLS keys (all or none).
	TLS
	// Common holds the keys every command has.
	Common
}

// DefaultMount returns the defaults of `tricopy mount`.
func DefaultMount() Mount {
	return Mount{Common: DefaultCommon(), Group: DefaultGroup, Fence: DefaultFence,
		FenceTimeout: DefaultFenceTimeout, RegionSize: DefaultRegionSize}
}

// Validate implements Config.
func (c *Mount) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	if c.Volume == "" {
		return Required("volume")
	}
	if err := validateName("volume", c.Volume); err != nil {
		return err
	}
	if c.Data == "" {
		return Required("data")
	}
	if c.Mountpoint == "" {
		return Required("mountpoint")
	}
	if c.Size != 0 {
		if err := validateVolumeSize("size", c.Size); err != nil {
			return err
		}
	}
	if err := validateName("group", c.Group); err != nil {
		return err
	}
	for _, a := range c.Intermediate {
		if err := validateAddr("intermediate", a); err != nil {
			return err
		}
	}
	if c.FenceTimeout < MinFenceTimeout {
		return Invalid("fence-timeout", "%v is below the minimum of %v", c.FenceTimeout, MinFenceTimeout)
	}
	if r := c.RegionSize.Bytes(); r < 4096 || r > MaxRegionSize || r&(r-1) != 0 {
		return Invalid("region-size", "%s is not a power of two between 4KiB and %s", c.RegionSize, Size(MaxRegionSize))
	}
	return validateMetrics(c.Metrics, nil)
}

// validateVolumeSize checks a volume size against MinVolumeSize.
func validateVolumeSize(key string, s Size) error {
	if s < MinVolumeSize {
		return Invalid(key, "%s is below the minimum volume size %s", s, MinVolumeSize)
	}
	return nil
}

// validateName checks a volume or group name: 1 to MaxNameLen letters,
// digits, '.', '_' or '-', not starting with '.' or '-'. Names appear in
// mount options, file names and log lines, so nothing else is allowed.
func validateName(key, name string) error {
	if name == "" {
		return Required(key)
	}
	if len(name) > MaxNameLen {
		return Invalid(key, "name %q is longer than %d bytes", name, MaxNameLen)
	}
	for i, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' ||
			r == '_' || (i > 0 && (r == '.' || r == '-'))
		if !ok {
			return Invalid(key, "name %q: character %q at %d not allowed (use letters, digits, '.', '_', '-'; start with a letter, digit or '_')", name, r, i)
		}
	}
	return nil
}

// validateMetrics checks the metrics key: empty, or a host:port address
// that none of the command's other listeners (others, key to address)
// uses.
func validateMetrics(addr string, others map[string]string) error {
	if addr == "" {
		return nil
	}
	if err := validateAddr("metrics", addr); err != nil {
		return err
	}
	for key, other := range others {
		if other == addr {
			return Invalid("metrics", "%s is also the %s address: the metrics server needs a port of its own", addr, key)
		}
	}
	return nil
}

// validateAddr checks a host:port address.
func validateAddr(key, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return Invalid(key, "address %q: want host:port: %v", addr, err)
	}
	if host == "" {
		return Invalid(key, "address %q: empty host", addr)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return Invalid(key, "address %q: port %q is not a number from 1 to 65535", addr, port)
	}
	return nil
}

var (
	_ Config = (*Format)(nil)
	_ Config = (*Fsck)(nil)
	_ Config = (*Mount)(nil)
)

// BenchFS is the configuration of `tricopy bench fs`.
type BenchFS struct {
	// Dir is the scratch directory, on the disk to measure.
	Dir string `key:"dir" meta:"DIR" help:"scratch directory on the disk to measure; required (its contents are created and removed)"`
	// SeqSize is the file size of the sequential fio jobs.
	SeqSize Size `key:"seq-size" meta:"SIZE" help:"file size of the sequential 1 MiB fio jobs"`
	// RandSize is the file size of the random fio jobs.
	RandSize Size `key:"rand-size" meta:"SIZE" help:"file size of the random 4 KiB fio jobs"`
	// Runtime bounds each fio job.
	Runtime time.Duration `key:"runtime" meta:"DURATION" help:"time limit of each fio job"`
	// Files is the number of files of the small-file workload.
	Files uint64 `key:"files" meta:"N" help:"number of files created, stat'ed and unlinked by the small-file workload"`
	// JSON names a file for the raw results.
	JSON string `key:"json" meta:"FILE" help:"also write the raw results as JSON to FILE"`
	// Strict makes a missed target an error (exit 1).
	Strict bool `key:"strict" help:"exit 1 when a performance target is missed"`
	// Common holds the keys every command has.
	Common
}

// DefaultBenchFS returns the defaults of `tricopy bench fs`.
func DefaultBenchFS() BenchFS {
	return BenchFS{SeqSize: 512 << 20, RandSize: 256 << 20, Runtime: 15 * time.Second, Files: 10000, Common: DefaultCommon()}
}

// Validate implements Config.
func (c *BenchFS) Validate() error {
	if err := c.Common.Validate(); err != nil {
		return err
	}
	switch {
	case c.Dir == "":
		return Required("dir")
	case c.SeqSize < 1<<20:
		return Invalid("seq-size", "%s is below the minimum of 1MiB", c.SeqSize)
	case c.RandSize < 1<<20:
		return Invalid("rand-size", "%s is below the minimum of 1MiB", c.RandSize)
	case c.Runtime < time.Second:
		return Invalid("runtime", "%v is below the minimum of 1s", c.Runtime)
	case c.Files == 0 || c.Files > 10_000_000:
		return Invalid("files", "%d is not between 1 and 10000000", c.Files)
	}
	return nil
}
