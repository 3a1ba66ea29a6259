package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/plumbnet/plumb/internal/testns"
)

// cliEnv is a config directory, data directory and libcni cache for the
// plumb command, all in the test's temp dirs.
type cliEnv struct {
	t                         *testing.T
	netDir, dataDir, cacheDir string
	extraEnv                  []string
}

func newCLI(t *testing.T, name, bridge, subnet string, extra string) *cliEnv {
	NewEnv(t)
	c := &cliEnv{t: t, netDir: t.TempDir(), dataDir: t.TempDir(), cacheDir: t.TempDir()}
	conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[{"type":"bridge","bridge":%q,"isGateway":true%s,
	  "ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":%q}]],"routes":[{"dst":"0.0.0.0/0"}]}}]}`, name, bridge, extra, c.dataDir, subnet)
	if err := os.WriteFile(filepath.Join(c.netDir, "10-"+name+".conflist"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *cliEnv) cmd(args ...string) *exec.Cmd {
	verb, rest := args[0], args[1:]
	full := append([]string{verb, "--cache-dir", c.cacheDir}, rest...)
	cmd := exec.Command(filepath.Join(binDir, "plumb"), full...)
	cmd.Env = append(os.Environ(), "NETCONFPATH="+c.netDir, "CNI_PATH="+binDir)
	cmd.Env = append(cmd.Env, c.extraEnv...)
	return cmd
}

// plumb runs the command and returns stdout, stderr and the exit code.
func (c *cliEnv) plumb(args ...string) (string, string, int) {
	c.t.Helper()
	cmd := c.cmd(args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		c.t.Fatalf("run plumb %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func (c *cliEnv) reservations(network string) []string { return addrFiles(c.t, c.dataDir, network) }

func plumbNamespaces(t *testing.T) []string {
	entries, _ := os.ReadDir("/run/netns")
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "plumb-") {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestPlumbRunExitStatusAndCleanup(t *testing.T) {
	c := newCLI(t, "clirun", "plclirun", "10.70.0.0/24", "")
	out, errOut, code := c.plumb("run", "--net", "clirun", "--", "sh", "-c", "ip -o -4 addr show dev eth0; exit 7")
	if code != 7 {
		t.Fatalf("exit %d, want the command's 7; stderr: %s", code, errOut)
	}
	if !strings.Contains(out, "10.70.0.2/24") {
		t.Fatalf("the command did not run in the attached namespace: %q", out)
	}
	if !strings.Contains(errOut, "attached: network clirun: eth0 10.70.0.2/24") {
		t.Fatalf("no readable summary on stderr: %q", errOut)
	}
	if ns := plumbNamespaces(t); len(ns) != 0 {
		t.Fatalf("namespaces left: %v", ns)
	}
	if r := c.reservations("clirun"); len(r) != 0 {
		t.Fatalf("reservations left: %v", r)
	}
}

// TestPlumbRunInterrupted: SIGINT during run ends the command, then plumb
// detaches and removes the namespace; ls and inspect see the attachment
// while it lives.
func TestPlumbRunInterrupted(t *testing.T) {
	c := newCLI(t, "cliint", "plcliint", "10.71.0.0/24", `,"ipMasq":true`)
	cmd := c.cmd("run", "--net", "cliint", "--", "sleep", "30")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var ls string
	for i := 0; i < 100 && !strings.Contains(ls, "10.71.0.2/24"); i++ {
		time.Sleep(50 * time.Millisecond)
		ls, _, _ = c.plumb("ls")
	}
	if !strings.Contains(ls, "cliint") || !strings.Contains(ls, "10.71.0.2/24") {
		t.Fatalf("ls does not show the running attachment:\n%s\nrun stderr: %s", ls, stderr.String())
	}
	insp, _, code := c.plumb("inspect", "cliint")
	if code != 0 || !strings.Contains(insp, "veth") || !strings.Contains(insp, "address 10.71.0.2 (host-local)") ||
		!strings.Contains(insp, "masquerade chain") || strings.Contains(insp, "LEAKED") {
		t.Fatalf("inspect:\n%s", insp)
	}
	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 130 {
		t.Fatalf("run after SIGINT: %v (want exit 130, 128+SIGINT)", err)
	}
	if ns := plumbNamespaces(t); len(ns) != 0 {
		t.Fatalf("namespaces left: %v", ns)
	}
	if r := c.reservations("cliint"); len(r) != 0 {
		t.Fatalf("reservations left: %v", r)
	}
	if rs := ruleset(t); strings.Contains(rs, "10.71.0.2") {
		t.Fatalf("rules left:\n%s", rs)
	}
	for _, l := range testns.Links(t) {
		if strings.HasPrefix(l.Attrs().Alias, "plumb/cliint/") {
			t.Fatalf("veth left: %s", l.Attrs().Name)
		}
	}
}

func TestPlumbAddCheckDel(t *testing.T) {
	c := newCLI(t, "cliadd", "plcliadd", "10.72.0.0/24", "")
	n := testns.NewNS(t)
	out, errOut, code := c.plumb("add", "--json", "cliadd", n.Path())
	if code != 0 || !strings.Contains(out, `"cniVersion": "1.1.0"`) || !strings.Contains(out, "10.72.0.2/24") {
		t.Fatalf("add: %d %s %s", code, out, errOut)
	}
	if out, errOut, code = c.plumb("check", "cliadd", n.Path()); code != 0 {
		t.Fatalf("check: %d %s %s", code, out, errOut)
	}
	if _, _, code = c.plumb("status", "cliadd"); code != 0 {
		t.Fatal("status failed")
	}
	for i := 0; i < 2; i++ {
		if out, errOut, code = c.plumb("del", "cliadd", n.Path()); code != 0 {
			t.Fatalf("del %d: %d %s %s", i, code, out, errOut)
		}
	}
	if r := c.reservations("cliadd"); len(r) != 0 {
		t.Fatalf("reservations left: %v", r)
	}
	// Errors are one line, and CNI error JSON with --json.
	out, errOut, code = c.plumb("add", "--json", "cliadd", "/run/netns/plumb-no-such-ns")
	if code == 0 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 || !strings.Contains(out, `"code": 8`) {
		t.Fatalf("error output: code %d stdout %q stderr %q", code, out, errOut)
	}
	if _, errOut, code = c.plumb("add", "--help"); code != 0 || !strings.Contains(errOut, "Usage: plumb add") {
		t.Fatalf("--help: %d %q", code, errOut)
	}
}

func writeProcSys(t *testing.T, key, v string) {
	t.Helper()
	if err := os.WriteFile("/proc/sys/"+key, []byte(v), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestPlumbDoctor creates each problem doctor names, in the test's host
// namespace, and checks doctor finds it (and nothing on a clean host).
func TestPlumbDoctor(t *testing.T) {
	c := newCLI(t, "doc", "pldoc", "10.73.0.0/24", "")
	n := testns.NewNS(t)
	if _, errOut, code := c.plumb("add", "doc", n.Path()); code != 0 { // makes the bridge, turns forwarding on
		t.Fatal(errOut)
	}
	defer c.plumb("del", "doc", n.Path())
	writeProcSys(t, "net/ipv4/conf/all/rp_filter", "0")
	writeProcSys(t, "net/ipv4/conf/pldoc/rp_filter", "0")
	if out, _, code := c.plumb("doctor", "doc"); code != 0 || !strings.Contains(out, "no problems") {
		t.Fatalf("doctor on a clean host: %d\n%s", code, out)
	}
	problems := []struct {
		check       string
		make, undo  func()
		fixable     bool
		env         []string
		otherCache  bool
		brokenStore bool
	}{
		{check: "forwarding", make: func() { writeProcSys(t, "net/ipv4/ip_forward", "0") }, fixable: true},
		{check: "forward-policy", make: func() { exec.Command("iptables", "-P", "FORWARD", "DROP").Run() },
			undo: func() {
				exec.Command("iptables", "-P", "FORWARD", "ACCEPT").Run()
				exec.Command("iptables", "-F", "FORWARD").Run()
			}, fixable: true},
		{check: "rp_filter", make: func() { writeProcSys(t, "net/ipv4/conf/pldoc/rp_filter", "1") },
			undo: func() {
				writeProcSys(t, "net/ipv4/conf/pldoc/rp_filter", "0")
				writeProcSys(t, "net/ipv4/conf/all/rp_filter", "0")
			}, fixable: true},
		{check: "overlap", make: func() { exec.Command("ip", "route", "add", "10.73.0.0/25", "dev", "lo").Run() },
			undo: func() { exec.Command("ip", "route", "del", "10.73.0.0/25", "dev", "lo").Run() }},
		{check: "leak", otherCache: true},
		{check: "data-dir", brokenStore: true},
		{check: "backend", env: []string{"PATH=/nonexistent"}},
	}
	for _, p := range problems {
		t.Run(p.check, func(t *testing.T) {
			if p.make != nil {
				p.make()
			}
			if p.undo != nil {
				defer p.undo()
			}
			d := *c
			d.t = t
			if p.otherCache {
				d.cacheDir = t.TempDir() // a runtime that lost (or never had) this attachment
			}
			if p.env != nil {
				d.extraEnv = p.env
				d.netDir = t.TempDir()
				os.WriteFile(filepath.Join(d.netDir, "doc.conflist"), []byte(`{"cniVersion":"1.1.0","name":"doc","plugins":[{"type":"bridge","bridge":"pldoc",
				  "ipMasq":true,"ipMasqBackend":"iptables","ipam":{"type":"host-local","dataDir":"`+c.dataDir+`","subnet":"10.73.0.0/24"}}]}`), 0o600)
			}
			if p.brokenStore {
				d.netDir = t.TempDir()
				os.WriteFile(filepath.Join(d.netDir, "doc.conflist"), []byte(`{"cniVersion":"1.1.0","name":"doc","plugins":[{"type":"bridge","bridge":"pldoc",
				  "ipam":{"type":"host-local","dataDir":"/proc/version/x","subnet":"10.73.0.0/24"}}]}`), 0o600)
			}
			out, _, code := d.plumb("doctor", "doc")
			if code != 1 || !strings.Contains(out, "["+p.check+"]") {
				t.Fatalf("doctor did not report %s: exit %d\n%s", p.check, code, out)
			}
			if !p.fixable {
				return
			}
			if out, _, code := d.plumb("doctor", "--fix", "doc"); code != 0 || !strings.Contains(out, "fixed") {
				t.Fatalf("doctor --fix: exit %d\n%s", code, out)
			}
			if out, _, code := d.plumb("doctor", "doc"); code != 0 {
				t.Fatalf("doctor after --fix: exit %d\n%s", code, out)
			}
		})
	}
}

// TestPlumbInspectAllRules: inspect groups masquerade, published-port and
// firewall chains under their attachment, marks them leaked when the
// runtime forgets it, and plumb gc removes them.
func TestPlumbInspectAllRules(t *testing.T) {
	NewEnv(t)
	for _, backend := range []string{"nftables", "iptables"} {
		t.Run(backend, func(t *testing.T) {
			c := &cliEnv{t: t, netDir: t.TempDir(), dataDir: t.TempDir(), cacheDir: t.TempDir()}
			conf := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"insp","plugins":[
			  {"type":"bridge","bridge":"plinsp","isGateway":true,"ipMasq":true,"ipMasqBackend":%[1]q,
			   "ipam":{"type":"host-local","dataDir":%[2]q,"subnet":"10.85.0.0/24"}},
			  {"type":"portmap","backend":%[1]q,"capabilities":{"portMappings":true}},
			  {"type":"firewall","backend":%[1]q}]}`, backend, c.dataDir)
			os.WriteFile(filepath.Join(c.netDir, "insp.conflist"), []byte(conf), 0o600)
			n := testns.NewNS(t)
			if _, errOut, code := c.plumb("add", "--cap", `{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}`, "insp", n.Path()); code != 0 {
				t.Fatal(errOut)
			}
			out, _, _ := c.plumb("inspect", "insp")
			// nftables publishes ports in shared maps: its owners show
			// as "published ports owner <id> <mappings>".
			ports := "published ports chain"
			if backend == "nftables" {
				ports = "published ports owner"
			}
			wants := []string{"masquerade chain", ports, "firewall chain", "address 10.85.0.2"}
			if backend == "nftables" {
				wants = append(wants, "tcp 0.0.0.0:8080 -> 10.85.0.2:80")
			}
			for _, want := range wants {
				if !strings.Contains(out, want) {
					t.Fatalf("inspect lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(out, "LEAKED") {
				t.Fatalf("a live attachment marked leaked:\n%s", out)
			}
			c.cacheDir = t.TempDir() // the runtime forgot it
			out, _, _ = c.plumb("inspect", "insp")
			if !strings.Contains(out, "LEAKED") || !strings.Contains(out, ports) {
				t.Fatalf("inspect after the cache was lost:\n%s", out)
			}
			if _, errOut, code := c.plumb("gc", "insp"); code != 0 {
				t.Fatal(errOut)
			}
			out, _, _ = c.plumb("inspect", "insp")
			if strings.Contains(out, "chain") || strings.Contains(out, "address") || strings.Contains(out, "published ports") {
				t.Fatalf("left after gc:\n%s", out)
			}
		})
	}
}
