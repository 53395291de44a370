package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// netnsNet runs each site in a network namespace of its own, made with
// ip-netns(8) and joined to the others by a veth pair on a bridge in the
// test's namespace (which has an address on it too, so that the test
// reaches every site). The processes enter their namespace with
// nsenter(1) --net only: they share the test's mount namespace, so the
// test sees their FUSE mounts. A partition is a blackhole route in each of
// the two namespaces (connections stall, new ones fail, as across a cut
// link); a slow link is a netem qdisc on the site's interface. The
// addresses are private (10.199.0.0/24) and exist only on the bridge.
type netnsNet struct {
	prefix string
	ips    map[string]string
	ns     map[string]string // site → namespace
	bridge string

	mu   sync.Mutex
	cuts map[[2]string]bool
	port int // the last port addr gave out
}

// netnsSubnet is the first three octets of the sites' addresses; the
// test's own address on the bridge is .254.
const netnsSubnet = "10.199.0"

// netnsAvailable returns why network namespaces cannot be used here, or
// nil.
func netnsAvailable() error {
	if os.Geteuid() != 0 {
		return errors.New("network namespaces need root")
	}
	for _, p := range []string{"ip", "nsenter", "tc"} {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("network namespaces need %s: %w", p, err)
		}
	}
	return nil
}

// ipCmd runs a command of iproute2 and returns its error with its output.
func ipCmd(name string, args ...string) error {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// newNetnsNet makes a namespace per site, named prefix-site, and the
// bridge prefix+"br". On an error it removes what it made.
func newNetnsNet(prefix string, sites []string) (n *netnsNet, err error) {
	if err := netnsAvailable(); err != nil {
		return nil, err
	}
	n = &netnsNet{prefix: prefix, ips: map[string]string{}, ns: map[string]string{}, bridge: prefix + "br", cuts: map[[2]string]bool{}, port: 7100}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.close())
			n = nil
		}
	}()
	steps := [][]string{
		{"ip", "link", "add", n.bridge, "type", "bridge"},
		{"ip", "addr", "add", netnsSubnet + ".254/24", "dev", n.bridge},
		{"ip", "link", "set", n.bridge, "up"},
	}
	for k, site := range sites {
		ns, host := prefix+"-"+site, prefix+site
		n.ns[site], n.ips[site] = ns, fmt.Sprintf("%s.%d", netnsSubnet, k+1)
		steps = append(steps,
			[]string{"ip", "netns", "add", ns},
			[]string{"ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns},
			[]string{"ip", "link", "set", host, "master", n.bridge},
			[]string{"ip", "link", "set", host, "up"},
			[]string{"ip", "-n", ns, "addr", "add", n.ips[site] + "/24", "dev", "eth0"},
			[]string{"ip", "-n", ns, "link", "set", "eth0", "up"},
			[]string{"ip", "-n", ns, "link", "set", "lo", "up"},
		)
	}
	for _, s := range steps {
		if err := ipCmd(s[0], s[1:]...); err != nil {
			return n, err
		}
	}
	return n, nil
}

// addr returns the site's address with the next port: every site has
// its own address in a namespace of its own, so every port is free.
func (n *netnsNet) addr(site string) (string, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.port++
	return fmt.Sprintf("%s:%d", n.ips[site], n.port), nil
}

func (n *netnsNet) command(site, name string, args ...string) []string {
	return append([]string{"nsenter", "--net=/run/netns/" + n.ns[site], "--", name}, args...)
}

func (n *netnsNet) partition(a, b string, cut bool) error {
	op := "add"
	if !cut {
		op = "del"
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	key := [2]string{min(a, b), max(a, b)}
	if n.cuts[key] == cut {
		return nil
	}
	err := errors.Join(
		ipCmd("ip", "-n", n.ns[a], "route", op, "blackhole", n.ips[b]+"/32"),
		ipCmd("ip", "-n", n.ns[b], "route", op, "blackhole", n.ips[a]+"/32"))
	if err == nil {
		n.cuts[key] = cut
	}
	return err
}

// slow limits what the site sends to a rate whose 64 KiB take d (a token
// bucket, tc-tbf: netem, which would delay every packet, is not in every
// kernel), queueing up to a second of it; d == 0 removes the limit.
func (n *netnsNet) slow(site string, d time.Duration) error {
	if d == 0 {
		return ipCmd("tc", "-n", n.ns[site], "qdisc", "del", "dev", "eth0", "root")
	}
	kbit := max(64*8*1000/d.Milliseconds(), 100) // 64 KiB in d
	return ipCmd("tc", "-n", n.ns[site], "qdisc", "replace", "dev", "eth0", "root", "tbf",
		"rate", fmt.Sprintf("%dkbit", kbit), "burst", "32kb", "latency", "1s")
}

func (n *netnsNet) canCut() bool { return true }

// close removes the namespaces (their veth pairs go with them) and the
// bridge.
func (n *netnsNet) close() error {
	var err error
	for _, ns := range n.ns {
		if e := ipCmd("ip", "netns", "del", ns); e != nil && !strings.Contains(e.Error(), "No such file") {
			err = errors.Join(err, e)
		}
	}
	if e := ipCmd("ip", "link", "del", n.bridge); e != nil && !strings.Contains(e.Error(), "Cannot find device") {
		err = errors.Join(err, e)
	}
	return err
}
