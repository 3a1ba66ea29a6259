package clients

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// podman is one private podman installation: its containers.conf (CNI
// backend, plumb's plugins, a private network config dir), storage.conf
// (root and runroot), all under a temp dir, run by the test process inside
// its throwaway host namespace.
type podman struct {
	t      *testing.T
	bin    string
	dir    string
	netDir string // network_config_dir: the conflists podman writes
	env    []string
}

func newPodman(t *testing.T) *podman {
	t.Helper()
	p := &podman{t: t, bin: tool(t, "podman"), dir: t.TempDir()}
	tool(t, "conmon")
	runc := tool(t, "runc") // crun refuses the mixed cgroup v1/v2 layout of these machines
	p.netDir = filepath.Join(p.dir, "net.d")
	if err := os.MkdirAll(p.netDir, 0o755); err != nil {
		t.Fatal(err)
	}
	containersConf := fmt.Sprintf(`# podman with its CNI backend on plumb's plugins
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
log_driver = "k8s-file"

[network]
network_backend = "cni"
cni_plugin_dirs = [%q]
network_config_dir = %q

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = %q
runtime = "runc"
tmp_dir = %q

[engine.runtimes]
runc = [%q]
`, binDir, p.netDir, filepath.Join(p.dir, "events.log"), filepath.Join(p.dir, "libpod-tmp"), runc)
	storageConf := fmt.Sprintf(`[storage]
driver = "vfs"
graphroot = %q
runroot = %q
`, filepath.Join(p.dir, "root"), filepath.Join(p.dir, "runroot"))
	for name, text := range map[string]string{"containers.conf": containersConf, "storage.conf": storageConf} {
		if err := os.WriteFile(filepath.Join(p.dir, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p.env = []string{
		"CONTAINERS_CONF=" + filepath.Join(p.dir, "containers.conf"),
		"CONTAINERS_STORAGE_CONF=" + filepath.Join(p.dir, "storage.conf"),
	}
	// Whatever the test leaves running goes (the PID namespace of the run
	// would end it anyway, but later tests share the host namespace).
	t.Cleanup(func() {
		runCmd(time.Minute, p.env, p.bin, "rm", "--all", "--force", "--time", "0")
		runCmd(time.Minute, p.env, p.bin, "network", "prune", "--force")
	})
	if _, err := runCmd(time.Minute, p.env, p.bin, "info"); err != nil {
		t.Skipf("podman cannot start here: %v", err)
	}
	return p
}

// run runs a podman command, failing the test with its output on error.
func (p *podman) run(args ...string) string {
	p.t.Helper()
	return strings.TrimSpace(mustRun(p.t, 2*time.Minute, p.env, p.bin, args...))
}

// busyboxRootfs is a root filesystem directory with a static busybox and a
// CGI script that answers with the client address httpd saw.
func busyboxRootfs(t *testing.T) string {
	t.Helper()
	const busybox = "/bin/busybox"
	if _, err := os.Stat(busybox); err != nil {
		t.Skipf("busybox-static is not installed (scripts/clients-setup.sh installs it): %v", err)
	}
	root := t.TempDir()
	for _, d := range []string{"bin", "etc", "www/cgi-bin", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"bin/busybox":    string(b),
		"etc/passwd":     "root:x:0:0:root:/:/bin/sh\n",
		"etc/group":      "root:x:0:\n",
		"www/index.html": "plumb\n",
		"www/cgi-bin/who": "#!/bin/sh\n" +
			"echo 'Content-Type: text/plain'\necho\necho \"$REMOTE_ADDR\"\n",
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(root, name), []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, applet := range []string{"sh", "httpd", "wget", "sleep"} {
		if err := os.Symlink("busybox", filepath.Join(root, "bin", applet)); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// remoteAddr normalises the client address busybox httpd reports
// ("[::ffff:10.77.0.3]" for IPv4 clients).
func remoteAddr(s string) string {
	s = strings.Trim(strings.TrimSpace(s), "[]")
	return strings.TrimPrefix(s, "::ffff:")
}

// podmanContainer is what the suite reads from `podman inspect`.
type podmanContainer struct {
	ID              string
	State           struct{ Running bool }
	NetworkSettings struct {
		SandboxKey string
		Networks   map[string]struct {
			IPAddress string
			Gateway   string
		}
	}
}

func (p *podman) inspect(name string) podmanContainer {
	p.t.Helper()
	var out []podmanContainer
	if err := json.Unmarshal([]byte(p.run("inspect", "--type", "container", name)), &out); err != nil || len(out) != 1 {
		p.t.Fatalf("podman inspect %s: %v", name, err)
	}
	return out[0]
}

// TestPodman: podman (CNI backend) creates a network (its own conflist:
// bridge, portmap, firewall, tuning), runs two busybox containers from a
// local root filesystem with published ports, and every path works; stop,
// start, rm and network rm leave nothing behind.
func TestPodman(t *testing.T) {
	requireClients(t)
	p := newPodman(t)
	rootfs := busyboxRootfs(t)
	ext := external(t)
	extSrv := serveWho(t, ext, externalIP+":0")
	keep := namedNetns(t)
	const network, subnet = "plumbnet", "10.77.0.0/24"

	p.run("network", "create", "--disable-dns", "--subnet", subnet, network)
	conf := readNetConf(t, filepath.Join(p.netDir, network+".conflist"))
	t.Logf("podman's conflist (cniVersion %s) chains %v", conf.version(), conf.types())
	needPlugins(t, conf.types()...)
	for _, want := range []string{"bridge", "host-local", "portmap", "firewall", "tuning"} {
		if !slices.Contains(conf.types(), want) {
			t.Errorf("podman's conflist does not chain %s: %v", want, conf.types())
		}
	}
	bridge := ""
	for _, pl := range conf.plugins() {
		if pl["type"] == "bridge" {
			bridge, _ = pl["bridge"].(string)
		}
	}
	const dataDir = "/var/lib/cni/networks" // podman's conflists keep host-local's default

	start := func(name string, hostPort int, extra ...string) podmanContainer {
		args := []string{"run", "--detach", "--name", name, "--network", network,
			"--publish", fmt.Sprintf("%d:80", hostPort)}
		args = append(append(args, extra...), "--rootfs", rootfs, "/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www")
		p.run(args...)
		c := p.inspect(name)
		if !c.State.Running {
			t.Fatalf("container %s is not running", name)
		}
		wantIn(t, "container "+name, c.NetworkSettings.Networks[network].IPAddress, subnet)
		return c
	}
	ip := func(c podmanContainer) string { return c.NetworkSettings.Networks[network].IPAddress }
	// who asks container `from` to fetch url and returns the address the
	// server saw.
	who := func(from, url string) string {
		t.Helper()
		// (no -T: busybox 1.35 wget crashes with it; the command has a timeout)
		return remoteAddr(p.run("exec", from, "wget", "-q", "-O", "-", url))
	}
	fromExternal := func(hostPort int) (string, error) {
		return eventually(5*time.Second, func() (string, error) {
			s, err := httpGet(ext, fmt.Sprintf("%s:%d", hostUplinkIP, hostPort), "/cgi-bin/who")
			return remoteAddr(s), err
		})
	}

	a, b := start("a", 18500), start("b", 18501)
	if ip(a) == ip(b) {
		t.Fatalf("both containers got %s", ip(a))
	}
	if got := reservations(t, dataDir, network); !slices.Contains(got, ip(a)) || !slices.Contains(got, ip(b)) {
		t.Fatalf("host-local reservations %v, want %s and %s", got, ip(a), ip(b))
	}
	wantMention(t, "container a: published port, masquerade", ip(a))
	wantPlumbVeth(t, network, a.ID)
	if v := hostVeths(t); len(v) != 2 {
		t.Fatalf("host veths %v, want the two containers'", v)
	}
	// Container to container over the bridge.
	if got := who("b", "http://"+ip(a)+"/cgi-bin/who"); got != ip(b) {
		t.Fatalf("a saw b as %q, want %s", got, ip(b))
	}
	// Container to the outside: masqueraded to the host's address.
	if got := who("a", "http://"+extSrv+"/"); got != hostUplinkIP {
		t.Fatalf("the external server saw a as %q, want the host's %s", got, hostUplinkIP)
	}
	// The outside through each published port; the containers see the
	// external address.
	for port, name := range map[int]string{18500: "a", 18501: "b"} {
		if got, err := fromExternal(port); err != nil || got != externalIP {
			t.Fatalf("external -> %s:%d (%s:80): saw %q, %v (want %s)", hostUplinkIP, port, name, got, err, externalIP)
		}
	}

	// A requested address (podman run --ip: host-local's ips capability).
	c := start("c", 18502, "--ip", "10.77.0.200")
	if ip(c) != "10.77.0.200" {
		t.Fatalf("podman run --ip 10.77.0.200 got %s", ip(c))
	}
	if got := who("c", "http://"+ip(a)+"/cgi-bin/who"); got != ip(c) {
		t.Fatalf("a saw c as %q, want %s", got, ip(c))
	}
	p.run("rm", "--force", "--time", "0", "c")
	wantNoMention(t, "podman rm -f c", ip(c), c.ID)
	if v := hostVethsSoon(t, 2); len(v) != 2 || slices.Contains(reservations(t, dataDir, network), ip(c)) {
		t.Fatalf("after podman rm -f c: veths %v, reservations %v", v, reservations(t, dataDir, network))
	}

	// stop: a's attachment goes, b's stays.
	p.run("stop", "--time", "0", "a")
	wantNoMention(t, "podman stop a", ip(a), a.ID)
	if _, err := os.Stat(a.NetworkSettings.SandboxKey); err == nil {
		t.Fatalf("podman stop a left its netns %s", a.NetworkSettings.SandboxKey)
	}
	if slices.Contains(reservations(t, dataDir, network), ip(a)) {
		t.Fatalf("a's reservation %s is left after podman stop", ip(a))
	}
	if v := hostVethsSoon(t, 1); len(v) != 1 {
		t.Fatalf("veths after stopping a: %v, want only b's", v)
	}
	if _, err := httpGet(ext, fmt.Sprintf("%s:18500", hostUplinkIP), "/cgi-bin/who"); err == nil {
		t.Fatal("port 18500 still answers after podman stop a")
	}
	if got, err := fromExternal(18501); err != nil || got != externalIP {
		t.Fatalf("b's published port after stopping a: %q, %v", got, err)
	}

	// start: a is attached again and published again.
	p.run("start", "a")
	a = p.inspect("a")
	wantIn(t, "restarted a", ip(a), subnet)
	if got, err := fromExternal(18500); err != nil || got != externalIP {
		t.Fatalf("external -> 18500 after podman start a: %q, %v", got, err)
	}
	if got := who("a", "http://"+ip(b)+"/cgi-bin/who"); got != ip(a) {
		t.Fatalf("b saw restarted a as %q, want %s", got, ip(a))
	}

	// rm: a running container (force) and a stopped one.
	p.run("rm", "--force", "--time", "0", "a")
	p.run("stop", "--time", "0", "b")
	p.run("rm", "b")
	leftoverCheck{DataDir: dataDir, Network: network, KeepNetns: keep,
		Mentions: []string{ip(a), ip(b), a.ID, b.ID}}.wantClean(t, "podman rm")

	p.run("network", "rm", network)
	if _, err := os.Stat(filepath.Join(p.netDir, network+".conflist")); err == nil {
		t.Fatal("podman network rm left the conflist")
	}
	if bridge != "" && hostLinkExists(bridge) {
		t.Fatalf("podman network rm left the bridge %s", bridge)
	}
	leftoverCheck{DataDir: dataDir, Network: network, KeepNetns: keep,
		Mentions: []string{ip(a), ip(b), a.ID, b.ID}}.wantClean(t, "podman network rm")
}
