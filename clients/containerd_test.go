package clients

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plumbnet/plumb/internal/netns"
)

// pauseImage is the pod sandbox image the suite builds and imports.
const pauseImage = "plumb.test/pause:1"

// containerd is one private containerd (root, state, socket, runc root and
// CNI config dir under a temp dir, bin_dir = the built plugins), started by
// the test process inside its throwaway host namespace, and driven through
// crictl like a kubelet drives it.
type containerd struct {
	t       *testing.T
	dir     string
	sock    string
	confDir string // CRI's cni conf_dir
	crictl  string
	ctr     string
	cfg     string // crictl's config file
	cmd     *exec.Cmd
	log     string
}

// containerdConfig is config.toml (version 2). The CRI settings are the
// ones these machines need: no cgroups for sandboxes and a clamped
// oom_score_adj (the test runs in a container itself), no AppArmor.
const containerdConfig = `version = 2
root = "{{dir}}/root"
state = "{{dir}}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{{sock}}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{{dir}}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{{image}}"
  disable_cgroup = true
  restrict_oom_score_adj = true
  disable_apparmor = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{{runc}}"
        Root = "{{dir}}/runc"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{{bin}}"
    conf_dir = "{{dir}}/net.d"
    conf_template = "{{template}}"
`

func startContainerd(t *testing.T, template string) *containerd {
	t.Helper()
	bin := tool(t, "containerd")
	runc := tool(t, "runc")
	c := &containerd{t: t, dir: t.TempDir(), crictl: tool(t, "crictl"), ctr: tool(t, "ctr")}
	tool(t, "containerd-shim-runc-v2")
	c.sock = filepath.Join(c.dir, "containerd.sock")
	c.confDir = filepath.Join(c.dir, "net.d")
	c.log = filepath.Join(c.dir, "containerd.log")
	if err := os.MkdirAll(c.confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := strings.NewReplacer("{{dir}}", c.dir, "{{sock}}", c.sock, "{{image}}", pauseImage,
		"{{runc}}", runc, "{{bin}}", binDir, "{{template}}", template).Replace(containerdConfig)
	cfgPath := filepath.Join(c.dir, "config.toml")
	c.cfg = filepath.Join(c.dir, "crictl.yaml")
	crictlConf := fmt.Sprintf("runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 60\n", c.sock, c.sock)
	for p, text := range map[string]string{cfgPath: conf, c.cfg: crictlConf} {
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	logf, err := os.Create(c.log)
	if err != nil {
		t.Fatal(err)
	}
	c.cmd = exec.Command(bin, "--config", cfgPath)
	// No Pdeathsig: it fires when the forking OS thread exits, and netns.Do
	// retires the threads it locks. If the test dies, the end of this run's
	// PID namespace ends containerd and its shims.
	c.cmd.Stdout, c.cmd.Stderr = logf, logf
	if err := c.cmd.Start(); err != nil {
		logf.Close()
		t.Skipf("containerd cannot start here: %v", err)
	}
	logf.Close()
	t.Cleanup(c.stop)
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := c.crictlRun(10*time.Second, "info")
		if err == nil {
			break
		}
		if time.Now().After(deadline) || c.cmd.ProcessState != nil {
			log, _ := os.ReadFile(c.log)
			t.Skipf("containerd's CRI did not come up here: %v\ncontainerd log:\n%s", err, tail(log, 40))
		}
		time.Sleep(200 * time.Millisecond)
	}
	return c
}

// stop removes every pod left, stops containerd and kills the shims it
// started (they outlive containerd by design).
func (c *containerd) stop() {
	if out, err := c.crictlRun(time.Minute, "pods", "-q"); err == nil {
		for _, id := range strings.Fields(out) {
			c.crictlRun(time.Minute, "stopp", id)
			c.crictlRun(time.Minute, "rmp", "--force", id)
		}
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- c.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
	// /proc is this run's own PID namespace: every process listed is ours.
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, _ := os.ReadFile(p)
		if strings.Contains(string(b), "containerd-shim") && strings.Contains(string(b), c.sock) {
			var pid int
			fmt.Sscanf(filepath.Base(filepath.Dir(p)), "%d", &pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	if c.t.Failed() {
		log, _ := os.ReadFile(c.log)
		c.t.Logf("containerd log (tail):\n%s", tail(log, 60))
	}
}

func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func (c *containerd) crictlRun(timeout time.Duration, args ...string) (string, error) {
	out, err := runCmd(timeout, nil, c.crictl, append([]string{"--config", c.cfg}, args...)...)
	return strings.TrimSpace(out), err
}

// crictl runs a crictl command, failing the test with its output on error.
func (c *containerd) crictlMust(args ...string) string {
	c.t.Helper()
	out, err := c.crictlRun(2*time.Minute, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// importPause builds the pause image and imports it for the CRI (namespace k8s.io).
func (c *containerd) importPause() {
	c.t.Helper()
	archive := filepath.Join(c.dir, "pause.tar")
	if err := ociArchive(archive, pauseImage, pauseBin); err != nil {
		c.t.Fatal(err)
	}
	mustRun(c.t, time.Minute, nil, c.ctr, "--address", c.sock, "--namespace", "k8s.io",
		"images", "import", "--snapshotter", "native", archive)
	c.crictlMust("inspecti", pauseImage)
}

// pod is one CRI pod sandbox.
type pod struct {
	Name, ID, IP string
	NetNS        *netns.NS
	NetNSPath    string
}

// runPod starts a pod sandbox publishing hostPort to its port 8000 and
// serves on that port inside the pod's namespace (sandboxes run only the
// pause process: the test answers for it).
func (c *containerd) runPod(name string, hostPort int) *pod {
	c.t.Helper()
	cfg := map[string]any{
		"metadata":      map[string]any{"name": name, "namespace": "plumb-test", "uid": "uid-" + name, "attempt": 0},
		"hostname":      name,
		"log_directory": filepath.Join(c.dir, "logs", name),
		"port_mappings": []any{map[string]any{"protocol": 0, "container_port": 8000, "host_port": hostPort}},
		"linux":         map[string]any{},
	}
	b, _ := json.Marshal(cfg)
	path := filepath.Join(c.dir, name+".json")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		c.t.Fatal(err)
	}
	id := c.crictlMust("runp", path)
	var info struct {
		Status struct {
			Network struct{ IP string }
		}
		Info struct {
			RuntimeSpec struct {
				Linux struct {
					Namespaces []struct{ Type, Path string }
				}
			}
		}
	}
	if err := json.Unmarshal([]byte(c.crictlMust("inspectp", "-o", "json", id)), &info); err != nil {
		c.t.Fatalf("parse crictl inspectp %s: %v", id, err)
	}
	p := &pod{Name: name, ID: id, IP: info.Status.Network.IP}
	for _, n := range info.Info.RuntimeSpec.Linux.Namespaces {
		if n.Type == "network" {
			p.NetNSPath = n.Path
		}
	}
	if p.IP == "" || p.NetNSPath == "" {
		c.t.Fatalf("pod %s has no address or netns: %+v", name, info)
	}
	ns, err := netns.Open(p.NetNSPath)
	if err != nil {
		c.t.Fatalf("open pod %s netns: %v", name, err)
	}
	c.t.Cleanup(func() { ns.Close() })
	p.NetNS = ns
	serveWho(c.t, ns, ":8000")
	return p
}

// stopRemove is the kubelet's teardown: StopPodSandbox (twice: kubelet
// retries, and the second must be a no-op) then RemovePodSandbox; after it
// nothing of the pod's attachment may be left.
func (c *containerd) stopRemove(p *pod, keepVeths int) {
	c.t.Helper()
	c.crictlMust("stopp", p.ID)
	c.crictlMust("stopp", p.ID)
	if v := hostVethsSoon(c.t, keepVeths); len(v) != keepVeths {
		c.t.Fatalf("veths after stopp %s: %v, want %d", p.Name, v, keepVeths)
	}
	wantNoMention(c.t, "crictl stopp "+p.Name, p.IP, p.ID)
	if _, err := os.Stat(p.NetNSPath); err == nil {
		c.t.Fatalf("crictl stopp left %s's netns %s", p.Name, p.NetNSPath)
	}
	c.crictlMust("rmp", p.ID)
	if out := c.crictlMust("pods", "-q", "--id", p.ID); out != "" {
		c.t.Fatalf("pod %s still listed after rmp: %s", p.Name, out)
	}
}

// containerdTemplate is the CRI's conf_template: the kubelet hands the
// node's pod CIDR over UpdateRuntimeConfig and containerd writes the
// conflist with it (containerd 1.6 passes no ipRanges capability).
const containerdTemplate = "../conf/containerd-net.conflist.tmpl"

// TestContainerdCRI: containerd's CRI plugin with bin_dir = plumb's plugins
// runs pod sandboxes (crictl runp) on a plumb conflist; they get addresses
// from its range, reach each other and the outside, publish ports; stopp
// twice and rmp leave nothing. Then the node's pod CIDR arrives as a
// kubelet sends it (UpdateRuntimeConfig), containerd renders
// conf/containerd-net.conflist.tmpl with it, and the next pods get
// addresses from it and work the same.
func TestContainerdCRI(t *testing.T) {
	requireClients(t)
	needPlugins(t, "bridge", "host-local", "portmap", "loopback")
	template, err := filepath.Abs(containerdTemplate)
	if err != nil {
		t.Fatal(err)
	}
	c := startContainerd(t, template)
	c.importPause()
	ext := external(t)
	extSrv := serveWho(t, ext, externalIP+":0")
	keep := namedNetns(t)

	const network, subnet = "plumb-cri", "10.78.0.0/24"
	data := t.TempDir()
	conf := netConf{
		"cniVersion": "1.0.0",
		"name":       network,
		"plugins": []any{
			map[string]any{"type": "bridge", "bridge": "plcri0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
				"ipam": map[string]any{"type": "host-local", "dataDir": data,
					"ranges": []any{[]any{map[string]any{"subnet": subnet}}}, "routes": []any{map[string]any{"dst": "0.0.0.0/0"}}}},
			map[string]any{"type": "portmap", "capabilities": map[string]any{"portMappings": true}},
		},
	}
	conf.write(t, filepath.Join(c.confDir, "20-plumb.conflist"))

	waitFor(t, 15*time.Second, "the CRI to load the plumb conflist", func() bool {
		// The CRI watches conf_dir; runp fails until it has loaded the file.
		out, err := c.crictlRun(10*time.Second, "info")
		return err == nil && strings.Contains(out, network)
	})
	a, b := c.runPod("pod-a", 18600), c.runPod("pod-b", 18601)
	wantIn(t, "pod-a", a.IP, subnet)
	wantIn(t, "pod-b", b.IP, subnet)
	if a.IP == b.IP {
		t.Fatalf("both pods got %s", a.IP)
	}
	if got := reservations(t, data, network); len(got) != 2 {
		t.Fatalf("reservations %v, want the two pods'", got)
	}
	wantMention(t, "pod-a: published port, masquerade", a.IP, a.ID)
	wantPlumbVeth(t, network, a.ID)
	if got, err := httpGet(b.NetNS, a.IP+":8000", "/"); err != nil || got != b.IP {
		t.Fatalf("pod-b -> pod-a: saw %q, %v (want %s)", got, err, b.IP)
	}
	if got, err := httpGet(a.NetNS, extSrv, "/"); err != nil || got != hostUplinkIP {
		t.Fatalf("pod-a -> external: saw %q, %v (want the host's %s)", got, err, hostUplinkIP)
	}
	for port, p := range map[int]*pod{18600: a, 18601: b} {
		got, err := eventually(5*time.Second, func() (string, error) {
			return httpGet(ext, fmt.Sprintf("%s:%d", hostUplinkIP, port), "/")
		})
		if err != nil || got != externalIP {
			t.Fatalf("external -> %s:%d (%s:8000): saw %q, %v (want %s)", hostUplinkIP, port, p.Name, got, err, externalIP)
		}
	}
	if _, err := httpGet(b.NetNS, fmt.Sprintf("%s:18600", hostUplinkIP), "/"); err != nil {
		t.Fatalf("pod-b -> pod-a through the host's published port: %v", err)
	}

	c.stopRemove(a, 1)
	if _, err := httpGet(ext, fmt.Sprintf("%s:18600", hostUplinkIP), "/"); err == nil {
		t.Fatal("port 18600 still answers after pod-a was removed")
	}
	if got, err := httpGet(ext, fmt.Sprintf("%s:18601", hostUplinkIP), "/"); err != nil || got != externalIP {
		t.Fatalf("pod-b's published port after pod-a was removed: %q, %v", got, err)
	}

	c.stopRemove(b, 0)
	leftoverCheck{DataDir: data, Network: network, KeepNetns: keep,
		Mentions: []string{a.IP, b.IP, a.ID, b.ID}}.wantClean(t, "stopp and rmp of every pod")

	// A node whose CNI config comes from the conf template: containerd
	// renders it only while it has no network config, when the kubelet
	// sends the node's pod CIDR (UpdateRuntimeConfig).
	if err := os.Remove(filepath.Join(c.confDir, "20-plumb.conflist")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the CRI to drop the removed conflist", func() bool { return !c.networkReady() })
	const podCIDR = "10.79.3.0/24"
	c.crictlMust("update-runtime-config", "--pod-cidr", podCIDR)
	generated := filepath.Join(c.confDir, "10-containerd-net.conflist")
	waitFor(t, 15*time.Second, "containerd to write "+generated+" and load it", func() bool {
		_, err := os.Stat(generated)
		return err == nil && c.networkReady()
	})
	k8s := readNetConf(t, generated)
	if got := k8s.subnets(); len(got) != 1 || got[0] != podCIDR {
		t.Fatalf("containerd rendered the template with subnets %v, want [%s]", got, podCIDR)
	}
	d, e := c.runPod("pod-d", 18602), c.runPod("pod-e", 18603)
	wantIn(t, "pod-d", d.IP, podCIDR)
	wantIn(t, "pod-e", e.IP, podCIDR)
	if got, err := httpGet(e.NetNS, d.IP+":8000", "/"); err != nil || got != e.IP {
		t.Fatalf("pod-e -> pod-d: saw %q, %v (want %s)", got, err, e.IP)
	}
	if got, err := httpGet(d.NetNS, extSrv, "/"); err != nil || got != hostUplinkIP {
		t.Fatalf("pod-d -> external: saw %q, %v (want the host's %s)", got, err, hostUplinkIP)
	}
	if got, err := eventually(5*time.Second, func() (string, error) {
		return httpGet(ext, fmt.Sprintf("%s:18602", hostUplinkIP), "/")
	}); err != nil || got != externalIP {
		t.Fatalf("external -> 18602 (pod-d): saw %q, %v (want %s)", got, err, externalIP)
	}
	c.stopRemove(d, 1)
	c.stopRemove(e, 0)
	// The template keeps host-local's default data dir (this run's private /var/lib/cni).
	leftoverCheck{DataDir: "/var/lib/cni/networks", Network: k8s.name(), KeepNetns: keep,
		Mentions: []string{d.IP, e.IP, d.ID, e.ID}}.wantClean(t, "stopp and rmp of the pod-CIDR pods")
}

// networkReady reports the CRI's NetworkReady condition (a CNI config is loaded).
func (c *containerd) networkReady() bool {
	out, err := c.crictlRun(10*time.Second, "info")
	if err != nil {
		return false
	}
	var info struct {
		Status struct {
			Conditions []struct {
				Type   string
				Status bool
			}
		}
	}
	if json.Unmarshal([]byte(out), &info) != nil {
		return false
	}
	for _, cond := range info.Status.Conditions {
		if cond.Type == "NetworkReady" {
			return cond.Status
		}
	}
	return false
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
