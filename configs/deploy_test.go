package configs

import (
	"net"
	"path/filepath"
	"slices"
	"testing"
)

// deployDir holds the example deployment: one directory per host, holding
// the configuration files of the tricopy processes of that host.
const deployDir = "deploy"

// etcDir is where the deployment's configuration files are installed.
const etcDir = "/etc/tricopy/"

// deployFile is one loaded configuration file of the example deployment.
type deployFile struct {
	path    string // relative to this package, like deploy/int1/intermediate.yaml
	host    string // its directory under deploy/
	command string
	cfg     Config
}

// loadDeploy loads every configuration file of the example deployment.
func loadDeploy(t *testing.T) []deployFile {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(deployDir, "*", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no configuration files under %s/HOST/", deployDir)
	}
	var out []deployFile
	for _, f := range files {
		command, cfg, header := loadExample(t, f)
		if want := etcDir + filepath.Base(f); header != want {
			t.Errorf("%s: header says --config %s, want %s (where DEPLOYMENT.md installs it)", f, header, want)
		}
		out = append(out, deployFile{path: f, host: filepath.Base(filepath.Dir(f)), command: command, cfg: cfg})
	}
	return out
}

// TestDeployCoherent checks that the example deployment's files describe
// one working deployment: a cluster whose nodes agree, primaries and
// secondaries that reach every node, a secondary for every volume, one
// address per host and no address used twice.
func TestDeployCoherent(t *testing.T) {
	files := loadDeploy(t)
	var (
		nodes       []*Intermediate
		clientAddrs []string
		group       string
		volumes     = map[string]string{} // volume -> file of its primary
		followed    = map[string]bool{}   // volumes with a secondary
		names       = map[string]string{} // secondary name -> file
		addrs       = map[string]string{} // host:port -> file and key
		hostIP      = map[string]string{} // host directory -> its address
	)
	sameGroup := func(f deployFile, g string) {
		if group == "" {
			group = g
		}
		if g != group {
			t.Errorf("%s: group %q, but other files use %q", f.path, g, group)
		}
	}
	useAddr := func(f deployFile, key, addr string) {
		if addr == "" {
			return
		}
		if prev, ok := addrs[addr]; ok {
			t.Errorf("%s: %s %s is also %s", f.path, key, addr, prev)
		}
		addrs[addr] = f.path + " " + key
		ip, _, err := net.SplitHostPort(addr)
		if err != nil {
			t.Errorf("%s: %s %q: %v", f.path, key, addr, err)
			return
		}
		if prev, ok := hostIP[f.host]; ok && prev != ip {
			t.Errorf("%s: %s %s is not on host %s's address %s", f.path, key, addr, f.host, prev)
		}
		hostIP[f.host] = ip
	}
	var intermediateLists []deployFile
	for _, f := range files {
		switch c := f.cfg.(type) {
		case *Intermediate:
			nodes = append(nodes, c)
			clientAddrs = append(clientAddrs, c.Listen)
			sameGroup(f, c.Group)
			useAddr(f, "listen", c.Listen)
			useAddr(f, "raft", c.Raft)
			useAddr(f, "metrics", c.Metrics)
		case *Mount:
			if prev, ok := volumes[c.Volume]; ok {
				t.Errorf("%s: volume %s has a primary in %s already", f.path, c.Volume, prev)
			}
			volumes[c.Volume] = f.path
			if filepath.Base(f.path) != "mount-"+c.Volume+".yaml" {
				t.Errorf("%s: the file of volume %s must be mount-%s.yaml (the unit instance is the volume)", f.path, c.Volume, c.Volume)
			}
			sameGroup(f, c.Group)
			useAddr(f, "metrics", c.Metrics)
			intermediateLists = append(intermediateLists, f)
		case *Secondary:
			followed[c.Volume] = true
			name := c.Name
			if name == "" {
				name = c.Volume
			}
			if prev, ok := names[name]; ok {
				t.Errorf("%s: secondary name %s is used by %s too", f.path, name, prev)
			}
			names[name] = f.path
			if filepath.Base(f.path) != "secondary-"+c.Volume+".yaml" {
				t.Errorf("%s: the file of volume %s's secondary must be secondary-%s.yaml", f.path, c.Volume, c.Volume)
			}
			sameGroup(f, c.Group)
			useAddr(f, "listen", c.Listen)
			useAddr(f, "metrics", c.Metrics)
			intermediateLists = append(intermediateLists, f)
		default:
			t.Errorf("%s: command %s has no place in the example deployment", f.path, f.command)
		}
	}

	if len(nodes) < 3 {
		t.Fatalf("%d intermediate nodes, want 3", len(nodes))
	}
	ids := map[string]bool{}
	for _, n := range nodes {
		if ids[n.Node] {
			t.Errorf("intermediate node %s configured twice", n.Node)
		}
		ids[n.Node] = true
		if !slices.Equal(n.Cluster, nodes[0].Cluster) {
			t.Errorf("node %s: cluster %v, node %s: %v; every node must list the same cluster", n.Node, n.Cluster, nodes[0].Node, nodes[0].Cluster)
		}
		if !slices.Contains(n.Cluster, n.Node+"="+n.Raft) {
			t.Errorf("node %s: cluster %v does not list %s=%s", n.Node, n.Cluster, n.Node, n.Raft)
		}
		if len(n.Join) > 0 {
			t.Errorf("node %s: join is for adding a node to a running cluster, not for the bootstrap", n.Node)
		}
	}
	if len(nodes[0].Cluster) != len(nodes) {
		t.Errorf("cluster %v lists %d nodes, %d are configured", nodes[0].Cluster, len(nodes[0].Cluster), len(nodes))
	}

	slices.Sort(clientAddrs)
	for _, f := range intermediateLists {
		var list []string
		switch c := f.cfg.(type) {
		case *Mount:
			list = c.Intermediate
		case *Secondary:
			list = c.Intermediate
		}
		list = slices.Sorted(slices.Values(list))
		if !slices.Equal(list, clientAddrs) {
			t.Errorf("%s: intermediate %v, want every node's listen address %v", f.path, list, clientAddrs)
		}
	}

	if len(volumes) == 0 {
		t.Error("no primary in the example deployment")
	}
	for v, f := range volumes {
		if !followed[v] {
			t.Errorf("volume %s (%s) has no secondary: promote refuses a group with a volume without one", v, f)
		}
	}
	for v := range followed {
		if _, ok := volumes[v]; !ok {
			t.Errorf("a secondary follows volume %s, which has no primary", v)
		}
	}
}

// TestDeployUsesTLS checks that every process of the example deployment
// uses TLS, with its host's certificate: a deployment uses TLS everywhere
// or nowhere.
func TestDeployUsesTLS(t *testing.T) {
	for _, f := range loadDeploy(t) {
		tc, ok := f.cfg.(interface{ TLSConfig() *TLS })
		if !ok {
			t.Errorf("%s: %s has no TLS keys", f.path, f.command)
			continue
		}
		c := tc.TLSConfig()
		if !c.TLSEnabled() {
			t.Errorf("%s: TLS is off", f.path)
			continue
		}
		if want := etcDir + "tls/" + f.host + ".pem"; c.TLSCert != want {
			t.Errorf("%s: tls-cert %s, want the host's %s", f.path, c.TLSCert, want)
		}
		if c.TLSCA != etcDir+"tls/ca.pem" {
			t.Errorf("%s: tls-ca %s, want %stls/ca.pem", f.path, c.TLSCA, etcDir)
		}
	}
}
