package clients

import (
	"crypto/sha512"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/version"

	"github.com/plumbnet/plumb/internal/testns"
)

// cnitool runs the cnitool binary against one config directory, as a user
// does: NETCONFPATH, CNI_PATH, CAP_ARGS and CNI_IFNAME in the environment,
// libcni's cache in /var/lib/cni (the private tmpfs of this run).
type cnitool struct {
	t       *testing.T
	bin     string
	confDir string
}

func newCnitool(t *testing.T) *cnitool {
	t.Helper()
	return &cnitool{t: t, bin: tool(t, "cnitool"), confDir: t.TempDir()}
}

// run runs `cnitool VERB NETWORK NETNS` with capability args (JSON, or "").
func (c *cnitool) run(verb, network, nsPath, capArgs string) (string, error) {
	env := []string{"NETCONFPATH=" + c.confDir, "CNI_PATH=" + binDir, "CNI_IFNAME=eth0"}
	if capArgs != "" {
		env = append(env, "CAP_ARGS="+capArgs)
	}
	return runCmd(30*time.Second, env, c.bin, verb, network, nsPath)
}

func (c *cnitool) must(verb, network, nsPath, capArgs string) string {
	c.t.Helper()
	out, err := c.run(verb, network, nsPath, capArgs)
	if err != nil {
		c.t.Fatalf("cnitool %s: %v", verb, err)
	}
	return out
}

// cnitoolID is the container ID cnitool derives from the netns path.
func cnitoolID(nsPath string) string {
	sum := sha512.Sum512([]byte(nsPath))
	return fmt.Sprintf("cnitool-%x", sum[:10])
}

// cniResult is the part of a CNI result (any version from 0.3.0) the suites read.
type cniResult struct {
	Interfaces []struct {
		Name    string `json:"name"`
		Sandbox string `json:"sandbox"`
	} `json:"interfaces"`
	IPs []struct {
		Address string `json:"address"`
		Gateway string `json:"gateway"`
	} `json:"ips"`
}

func parseResult(t *testing.T, out string) cniResult {
	t.Helper()
	var r cniResult
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("parse CNI result: %v\n%s", err, out)
	}
	return r
}

// ipv4 is the result's first IPv4 address (without prefix) and its gateway.
func (r cniResult) ipv4(t *testing.T) (ip, gw string) {
	t.Helper()
	for _, a := range r.IPs {
		p, _, err := net.ParseCIDR(a.Address)
		if err == nil && p.To4() != nil {
			return p.String(), a.Gateway
		}
	}
	t.Fatalf("result has no IPv4 address: %+v", r)
	return "", ""
}

// netConf is a conflist read as plain JSON, to be edited for a test.
type netConf map[string]any

func readNetConf(t *testing.T, path string) netConf {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var c netConf
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	return c
}

func (c netConf) name() string { s, _ := c["name"].(string); return s }

func (c netConf) version() string { s, _ := c["cniVersion"].(string); return s }

func (c netConf) plugins() []map[string]any {
	var out []map[string]any
	list, _ := c["plugins"].([]any)
	for _, p := range list {
		if m, ok := p.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}

// types lists the plugin binaries the list runs (IPAM plugins included).
func (c netConf) types() []string {
	var out []string
	for _, p := range c.plugins() {
		if s, ok := p["type"].(string); ok {
			out = append(out, s)
		}
		if ipam, ok := p["ipam"].(map[string]any); ok {
			if s, ok := ipam["type"].(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}

// subnets lists every subnet the list's host-local ranges hand out from.
func (c netConf) subnets() []string {
	var out []string
	for _, p := range c.plugins() {
		ipam, _ := p["ipam"].(map[string]any)
		if s, ok := ipam["subnet"].(string); ok {
			out = append(out, s)
		}
		sets, _ := ipam["ranges"].([]any)
		for _, set := range sets {
			rs, _ := set.([]any)
			for _, r := range rs {
				if m, ok := r.(map[string]any); ok {
					if s, ok := m["subnet"].(string); ok {
						out = append(out, s)
					}
				}
			}
		}
	}
	return out
}

// bridgeOpt is a boolean option of the list's bridge plugin.
func (c netConf) bridgeOpt(key string) bool {
	for _, p := range c.plugins() {
		if p["type"] == "bridge" {
			v, _ := p[key].(bool)
			return v
		}
	}
	return false
}

// setDataDir points every host-local of the list at dir.
func (c netConf) setDataDir(dir string) {
	for _, p := range c.plugins() {
		if ipam, ok := p["ipam"].(map[string]any); ok {
			ipam["dataDir"] = dir
		}
	}
}

func (c netConf) write(t *testing.T, path string) {
	t.Helper()
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// publishedPort is the CAP_ARGS of one TCP port published on the host.
func publishedPort(hostPort, containerPort int) string {
	return fmt.Sprintf(`{"portMappings":[{"hostPort":%d,"containerPort":%d,"protocol":"tcp"}]}`, hostPort, containerPort)
}

// TestCnitool runs every conf/*.conflist through cnitool: add with a
// published port, check, status, traffic (container to container, to the
// outside through NAT, from the outside through the published port), del,
// then gc, both of an attachment libcni still knows and of one whose
// cache entry is lost (the plugins' own GC).
func TestCnitool(t *testing.T) {
	requireClients(t)
	files, err := filepath.Glob("../conf/*.conflist")
	if err != nil || len(files) == 0 {
		t.Fatalf("no conf/*.conflist: %v", err)
	}
	for i, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c := newCnitool(t)
			conf := readNetConf(t, f)
			if !slices.Contains(conf.types(), "portmap") {
				needPlugins(t, "portmap")
				// The conf file publishes no ports: chain portmap as podman
				// and containerd configs do, so CAP_ARGS port mappings apply.
				t.Logf("%s chains no portmap plugin; appending one for the test", filepath.Base(f))
				conf["plugins"] = append(conf["plugins"].([]any), map[string]any{"type": "portmap", "capabilities": map[string]any{"portMappings": true}})
			}
			needPlugins(t, conf.types()...)
			data := t.TempDir()
			conf.setDataDir(data)
			conf.write(t, filepath.Join(c.confDir, filepath.Base(f)))
			cnitoolSuite(t, c, conf, data, 18080+10*i)
		})
	}
}

func cnitoolSuite(t *testing.T, c *cnitool, conf netConf, data string, hostPort int) {
	network := conf.name()
	ext := external(t)
	extSrv := serveWho(t, ext, externalIP+":0")
	keep := namedNetns(t)

	a, b := testns.NewRemovable(t), testns.NewRemovable(t)
	keep = append(keep, a.Path(), b.Path())
	serveWho(t, a.NS, ":80")
	resA := parseResult(t, c.must("add", network, a.Path(), publishedPort(hostPort, 80)))
	resB := parseResult(t, c.must("add", network, b.Path(), ""))
	ipA, gwA := resA.ipv4(t)
	ipB, _ := resB.ipv4(t)
	for _, ip := range []string{ipA, ipB} {
		in := false
		for _, s := range conf.subnets() {
			if _, n, err := net.ParseCIDR(s); err == nil && n.Contains(net.ParseIP(ip)) {
				in = true
			}
		}
		if !in {
			t.Fatalf("address %s is in none of the configured subnets %v", ip, conf.subnets())
		}
	}
	if ipA == ipB {
		t.Fatalf("two containers got the same address %s", ipA)
	}
	if got := reservations(t, data, network); len(got) < 2 {
		t.Fatalf("reservations after two adds: %v", got)
	}

	wantMention(t, "container A: published port", ipA)
	wantPlumbVeth(t, network, cnitoolID(a.Path()))
	if !hostLinkExists(resA.Interfaces[1].Name) {
		t.Fatalf("A's host veth %s (from the result) does not exist", resA.Interfaces[1].Name)
	}

	if atLeast(conf.version(), "0.4.0") {
		c.must("check", network, a.Path(), publishedPort(hostPort, 80))
	}
	if atLeast(conf.version(), "1.1.0") {
		c.must("status", network, a.Path(), "")
	}

	// Container to container over the bridge: the server sees B's address.
	if got, err := httpGet(b.NS, ipA+":80", "/"); err != nil || got != ipB {
		t.Fatalf("B -> A over the bridge: saw %q, %v (want %s)", got, err, ipB)
	}
	// Container to the gateway (the host namespace).
	if gwA != "" {
		hostSrv := serveWho(t, nil, gwA+":0")
		if _, err := httpGet(a.NS, hostSrv, "/"); err != nil {
			t.Fatalf("A -> host at its gateway %s: %v", gwA, err)
		}
	}
	// Container to the outside: masqueraded to the host's address.
	if got, err := httpGet(a.NS, extSrv, "/"); err != nil {
		t.Fatalf("A -> external %s: %v", extSrv, err)
	} else if conf.bridgeOpt("ipMasq") && got != hostUplinkIP {
		t.Fatalf("external server saw %s, want the host's %s (ipMasq)", got, hostUplinkIP)
	}
	// The outside to A through the published port: A sees the external address.
	published := fmt.Sprintf("%s:%d", hostUplinkIP, hostPort)
	if got, err := eventually(3*time.Second, func() (string, error) { return httpGet(ext, published, "/") }); err != nil || got != externalIP {
		t.Fatalf("external -> %s (published to A:80): saw %q, %v (want %s)", published, got, err, externalIP)
	}
	// Another container through the host's published port.
	if _, err := httpGet(b.NS, published, "/"); err != nil {
		t.Fatalf("B -> %s (published to A:80): %v", published, err)
	}

	c.must("del", network, a.Path(), publishedPort(hostPort, 80))
	if !hostLinkGoneSoon(resA.Interfaces[1].Name) {
		t.Fatalf("del left A's veth %s", resA.Interfaces[1].Name)
	}
	if _, err := httpGet(ext, published, "/"); err == nil {
		t.Fatalf("%s still answers after del", published)
	}
	wantNoMention(t, "cnitool del A", ipA, cnitoolID(a.Path()))
	if got := reservations(t, data, network); slices.Contains(got, ipA) {
		t.Fatalf("del left A's reservation %s: %v", ipA, got)
	}
	// A second del is a success.
	c.must("del", network, a.Path(), publishedPort(hostPort, 80))

	// gc of an attachment libcni's cache still knows (cnitool gc keeps
	// nothing): libcni deletes it.
	c.must("gc", network, b.Path(), "")
	leftoverCheck{DataDir: data, Network: network, KeepNetns: keep,
		Mentions: []string{ipA, ipB, cnitoolID(a.Path()), cnitoolID(b.Path())}}.wantClean(t, "del and gc")

	if !atLeast(conf.version(), "1.1.0") {
		t.Logf("cniVersion %s: no plugin GC to exercise (needs 1.1.0)", conf.version())
		return
	}
	// gc of an attachment the runtime forgot: only the plugins' GC can
	// remove its veth, reservation and rules.
	d := testns.NewRemovable(t)
	keep = append(keep, d.Path())
	resD := parseResult(t, c.must("add", network, d.Path(), publishedPort(hostPort+1, 80)))
	ipD, _ := resD.ipv4(t)
	forgetCache(t, network, cnitoolID(d.Path()))
	d.Remove() // the container is gone too
	c.must("gc", network, a.Path(), "")
	leftoverCheck{DataDir: data, Network: network, KeepNetns: keep,
		Mentions: []string{ipD, cnitoolID(d.Path())}}.wantClean(t, "gc of a forgotten attachment")
}

// forgetCache removes libcni's cache entries of a container, as a runtime
// that lost its state would have.
func forgetCache(t *testing.T, network, id string) {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join("/var/lib/cni/results", network+"-"+id+"-*"))
	if len(matches) == 0 {
		t.Fatalf("no libcni cache entry for %s in /var/lib/cni/results", id)
	}
	for _, m := range matches {
		if err := os.Remove(m); err != nil {
			t.Fatal(err)
		}
	}
}

// TestCnitoolIPRanges: a node's pod CIDR handed to host-local through the
// ipRanges capability (CAP_ARGS), as Kubernetes runtimes that use the
// capability do, replaces the configured range; port mappings ride along.
func TestCnitoolIPRanges(t *testing.T) {
	requireClients(t)
	needPlugins(t, "bridge", "host-local", "portmap", "loopback")
	c := newCnitool(t)
	data := t.TempDir()
	conf := netConf{
		"cniVersion": "1.0.0",
		"name":       "node-pods",
		"plugins": []any{
			map[string]any{"type": "bridge", "bridge": "plnode0", "isGateway": true, "ipMasq": true,
				"capabilities": map[string]any{"ipRanges": true},
				"ipam": map[string]any{"type": "host-local", "dataDir": data,
					"ranges": []any{[]any{map[string]any{"subnet": "10.250.0.0/24"}}}, "routes": []any{map[string]any{"dst": "0.0.0.0/0"}}}},
			map[string]any{"type": "portmap", "capabilities": map[string]any{"portMappings": true}},
			map[string]any{"type": "loopback"},
		},
	}
	conf.write(t, filepath.Join(c.confDir, "10-node.conflist"))
	ext := external(t)
	keep := namedNetns(t)
	a := testns.NewRemovable(t)
	keep = append(keep, a.Path())
	serveWho(t, a.NS, ":8000")
	podCIDR := "10.251.7.0/24"
	capArgs := fmt.Sprintf(`{"ipRanges":[[{"subnet":%q}]],"portMappings":[{"hostPort":18400,"containerPort":8000,"protocol":"tcp"}]}`, podCIDR)
	res := parseResult(t, c.must("add", "node-pods", a.Path(), capArgs))
	ip, gw := res.ipv4(t)
	wantIn(t, "the pod", ip, podCIDR)
	if gw != "10.251.7.1" {
		t.Fatalf("gateway %s, want the pod CIDR's first address 10.251.7.1", gw)
	}
	c.must("check", "node-pods", a.Path(), capArgs)
	if got, err := eventually(3*time.Second, func() (string, error) { return httpGet(ext, hostUplinkIP+":18400", "/") }); err != nil || got != externalIP {
		t.Fatalf("external -> published 18400: saw %q, %v", got, err)
	}
	c.must("del", "node-pods", a.Path(), capArgs)
	leftoverCheck{DataDir: data, Network: "node-pods", KeepNetns: keep,
		Mentions: []string{ip, cnitoolID(a.Path())}}.wantClean(t, "del")
}

// atLeast reports whether CNI spec version v is min or later.
func atLeast(v, min string) bool {
	ok, err := version.GreaterThanOrEqualTo(v, min)
	return err == nil && ok
}
