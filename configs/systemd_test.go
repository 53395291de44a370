package configs

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// systemdDir holds the example systemd units.
const systemdDir = "systemd"

// unitFile is a parsed systemd unit: section -> key -> values in order.
type unitFile map[string]map[string][]string

// get returns the last value of key in section ("" when unset).
func (u unitFile) get(section, key string) string {
	v := u[section][key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// all returns the space-separated words of every value of key in section.
func (u unitFile) all(section, key string) []string {
	var out []string
	for _, v := range u[section][key] {
		out = append(out, strings.Fields(v)...)
	}
	return out
}

// parseUnit reads a unit file: [Section] headers, Key=Value lines, '#' and
// ';' comments, backslash continuations.
func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(f)
	var cont string
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if cont != "" {
			line = cont + " " + line
			cont = ""
		}
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";") {
			continue
		}
		if l, ok := strings.CutSuffix(line, `\`); ok {
			cont = strings.TrimSpace(l)
			continue
		}
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			t.Fatalf("%s:%d: not a section header or Key=Value: %q", path, n, line)
		}
		u[section][strings.TrimSpace(k)] = append(u[section][strings.TrimSpace(k)], strings.TrimSpace(v))
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// commandUse finds the commands the CLI declares (use: "NAME" in
// cmd/tricopy); configs does not import cmd, so the test reads its sources.
var commandUse = regexp.MustCompile(`use:\s+"([a-z-]+)"`)

// cliCommands returns the names of the commands declared in cmd/tricopy.
func cliCommands(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(repoRoot, "cmd", "tricopy", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range commandUse.FindAllStringSubmatch(string(src), -1) {
			out = append(out, m[1])
		}
	}
	if len(out) == 0 {
		t.Fatal("no command declarations (use: \"NAME\") found in cmd/tricopy")
	}
	return out
}

// sdNotifySupported reports whether any Go source of the repository talks
// to systemd's notification socket.
func sdNotifySupported(t *testing.T) bool {
	t.Helper()
	found := false
	err := filepath.WalkDir(repoRoot, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path != repoRoot && strings.HasPrefix(d.Name(), ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if found || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		found = strings.Contains(string(src), "NOTIFY_SOCKET")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// instancePath matches an absolute path holding the instance specifier %i
// in a unit's helper commands, like /srv/%i.
var instancePath = regexp.MustCompile(`/[^\s;'"]*%i`)

// TestSystemdUnits checks the example units: each runs a real command with
// a --config file of the example deployment (the same basename under
// deploy/HOST/, a template's %i standing for each file's volume), restarts
// on failure, stops with SIGTERM and time to unmount, starts after the
// network is online, and is Type=notify only if the code speaks sd_notify.
// Paths with %i in the units' helper commands must be the mountpoint of each
// instance's configuration.
func TestSystemdUnits(t *testing.T) {
	units, err := filepath.Glob(filepath.Join(systemdDir, "*.service"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"tricopy-intermediate.service", "tricopy-mount@.service", "tricopy-secondary@.service"} {
		if !slices.Contains(units, filepath.Join(systemdDir, want)) {
			t.Errorf("%s/%s is missing", systemdDir, want)
		}
	}
	commands := cliCommands(t)
	notify := sdNotifySupported(t)
	for _, path := range units {
		t.Run(filepath.Base(path), func(t *testing.T) {
			u := parseUnit(t, path)
			template := strings.Contains(filepath.Base(path), "@.")

			execs := u["Service"]["ExecStart"]
			if len(execs) != 1 {
				t.Fatalf("%d ExecStart= lines, want 1", len(execs))
			}
			args := strings.Fields(execs[0])
			if len(args) < 4 || filepath.Base(args[0]) != "tricopy" || !filepath.IsAbs(args[0]) {
				t.Fatalf("ExecStart=%s: want /PATH/tricopy COMMAND --config FILE", execs[0])
			}
			command := args[1]
			if !slices.Contains(commands, command) {
				t.Errorf("ExecStart runs `tricopy %s`: no such command in cmd/tricopy (%v)", command, commands)
			}
			if _, ok := exampleConfigs[command]; !ok {
				t.Errorf("ExecStart runs `tricopy %s`, which has no configuration the test can load; add it to exampleConfigs", command)
			}
			i := slices.Index(args, "--config")
			if i < 0 || i+1 >= len(args) {
				t.Fatalf("ExecStart=%s has no --config FILE", execs[0])
			}
			cfgPath := args[i+1]
			fuse := command == "mount" || command == "secondary"

			switch typ := u.get("Service", "Type"); typ {
			case "exec", "simple":
			case "notify", "notify-reload":
				if !notify {
					t.Errorf("Type=%s, but no Go source uses NOTIFY_SOCKET: systemd would wait for a READY=1 that never comes", typ)
				}
			default:
				t.Errorf("Type=%q, want exec or simple", typ)
			}
			if got := u.get("Service", "Restart"); got != "on-failure" {
				t.Errorf("Restart=%q, want on-failure", got)
			}
			if got := u.get("Service", "KillSignal"); got != "SIGTERM" {
				t.Errorf("KillSignal=%q, want SIGTERM (the clean shutdown)", got)
			}
			if got := u.get("Service", "TimeoutStopSec"); got == "" || got == "0" {
				t.Errorf("TimeoutStopSec=%q: set one long enough for a clean unmount", got)
			}
			if u.get("Service", "LimitNOFILE") == "" {
				t.Error("LimitNOFILE is not set")
			}
			for _, key := range []string{"After", "Wants"} {
				if !slices.Contains(u.all("Unit", key), "network-online.target") {
					t.Errorf("%s= does not name network-online.target", key)
				}
			}
			if policy := u.get("Service", "DevicePolicy"); policy != "" && policy != "auto" {
				if fuse && !slices.Contains(u.all("Service", "DeviceAllow"), "/dev/fuse") {
					t.Errorf("DevicePolicy=%s without DeviceAllow=/dev/fuse: the FUSE mount would fail", policy)
				}
			}
			for _, key := range []string{"ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "ReadWritePaths", "ReadOnlyPaths", "TemporaryFileSystem", "PrivateMounts", "MountFlags"} {
				if fuse && u.get("Service", key) != "" {
					t.Errorf("%s= gives the service its own mount namespace: its FUSE mount would not be seen by the host", key)
				}
			}

			if !strings.HasSuffix(cfgPath, ".yaml") || !strings.HasPrefix(cfgPath, etcDir) {
				t.Errorf("--config %s: want %sNAME.yaml", cfgPath, etcDir)
			}
			if template != strings.Contains(cfgPath, "%i") {
				t.Errorf("--config %s: a template unit (NAME@.service) names its instance's file with %%i, a plain unit a fixed one", cfgPath)
			}

			// The example configuration files this unit runs.
			base := filepath.Base(cfgPath)
			pattern := strings.ReplaceAll(base, "%i", "*")
			examples, err := filepath.Glob(filepath.Join(deployDir, "*", pattern))
			if err != nil {
				t.Fatal(err)
			}
			if len(examples) == 0 {
				t.Fatalf("--config %s: no example %s/HOST/%s", cfgPath, deployDir, pattern)
			}
			prefix, suffix, _ := strings.Cut(base, "%i")
			for _, ex := range examples {
				instance := ""
				if template {
					instance = strings.TrimSuffix(strings.TrimPrefix(filepath.Base(ex), prefix), suffix)
				}
				exCommand, cfg, header := loadExample(t, ex)
				if exCommand != command {
					t.Errorf("%s is for `tricopy %s`, the unit runs `tricopy %s`", ex, exCommand, command)
				}
				if want := strings.ReplaceAll(cfgPath, "%i", instance); header != want {
					t.Errorf("%s: header names --config %s, the unit passes %s", ex, header, want)
				}
				mountpoint := ""
				switch c := cfg.(type) {
				case *Mount:
					mountpoint = c.Mountpoint
					if c.Volume != instance {
						t.Errorf("%s: volume %s, but it runs as instance %s", ex, c.Volume, instance)
					}
				case *Secondary:
					mountpoint = c.Mountpoint
					if c.Volume != instance {
						t.Errorf("%s: volume %s, but it runs as instance %s", ex, c.Volume, instance)
					}
				case *Intermediate:
					if dir := u.get("Service", "StateDirectory"); dir != "" && c.Data != "/var/lib/"+dir {
						t.Errorf("%s: data %s is not the unit's StateDirectory /var/lib/%s", ex, c.Data, dir)
					}
				}
				for _, key := range []string{"ExecStartPre", "ExecStartPost", "ExecStopPost"} {
					for _, v := range u["Service"][key] {
						for _, p := range instancePath.FindAllString(v, -1) {
							if got := strings.ReplaceAll(p, "%i", instance); got != mountpoint {
								t.Errorf("%s= uses %s, but %s mounts at %s", key, got, ex, mountpoint)
							}
						}
					}
				}
			}
		})
	}
}
