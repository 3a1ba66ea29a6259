package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/testns"
)

// fwBackends are the firewall backends every firewall test runs with.
var fwBackends = []string{"nftables", "iptables"}

// withPlugins is the network's conflist with more plugins after the bridge.
func (b bridgeNet) withPlugins(t *testing.T, version string, plugins ...map[string]any) string {
	t.Helper()
	var l map[string]any
	if err := json.Unmarshal([]byte(b.conflist(version)), &l); err != nil {
		t.Fatal(err)
	}
	for _, p := range plugins {
		l["plugins"] = append(l["plugins"].([]any), p)
	}
	return string(mustJSON(t, l))
}

func firewallPlugin(backend string, extra ...any) map[string]any {
	p := map[string]any{"type": "firewall", "backend": backend}
	for i := 0; i+1 < len(extra); i += 2 {
		p[extra[i].(string)] = extra[i+1]
	}
	return p
}

// fwRuleset prints the filter rules of the test's host namespace: plumb's
// nftables table and iptables' filter tables (not the masquerade).
func fwRuleset(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, cmd := range [][]string{{"nft", "list", "table", "inet", "plumb_filter"}, {"iptables-save", "-t", "filter"}, {"ip6tables-save", "-t", "filter"}} {
		out, _ := exec.Command(cmd[0], cmd[1:]...).CombinedOutput()
		b.Write(out)
	}
	return b.String()
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// fwEnv is NewEnv for a firewall test: when the test ends, the shared
// state the firewall plugin keeps (plumb's nftables table, iptables' jumps
// and chains, the admin chains) goes too, so later tests in the same host
// namespace start from a clean FORWARD.
func fwEnv(t *testing.T) *Env {
	t.Helper()
	e := NewEnv(t)
	t.Cleanup(func() {
		exec.Command("nft", "delete", "table", "inet", "plumb_filter").Run()
		for _, ipt := range []string{"iptables", "ip6tables"} {
			out, _ := exec.Command(ipt, "-w", "-S", "FORWARD").Output()
			for _, line := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(line, "-A FORWARD ") && strings.Contains(line, `"plumb firewall`) {
					cmd := exec.Command(ipt+"-restore", "--noflush", "--wait")
					cmd.Stdin = strings.NewReader("*filter\n-D" + strings.TrimPrefix(line, "-A") + "\nCOMMIT\n")
					cmd.Run()
				}
			}
			for _, chain := range []string{"PLUMB-FORWARD", "PLUMB-BRIDGES", "CNI-ADMIN"} {
				exec.Command(ipt, "-w", "-F", chain).Run()
				exec.Command(ipt, "-w", "-X", chain).Run()
			}
		}
	})
	return e
}

// forwardDrop sets the test host's iptables FORWARD policy to DROP, as
// Docker leaves it, until the test ends.
func forwardDrop(t *testing.T) {
	t.Helper()
	mustRun(t, "iptables", "-w", "-P", "FORWARD", "DROP")
	t.Cleanup(func() { exec.Command("iptables", "-w", "-P", "FORWARD", "ACCEPT").Run() })
}

// cannotReach asserts that a TCP connection from n to addr fails.
func cannotReach(t *testing.T, n *netns.NS, addr string) {
	t.Helper()
	err := inNS(n, func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err == nil {
		t.Fatalf("connected to %s, want the firewall to drop it", addr)
	}
}

// rulesOf lists the firewall rules naming ip, leaving out the
// administrator's drop rule for it.
func rulesOf(t *testing.T, ip string) []string {
	t.Helper()
	var out []string
	for _, line := range strings.Split(fwRuleset(t), "\n") {
		line = strings.TrimSpace(line)
		if !strings.Contains(line, ip+" ") && !strings.Contains(line, ip+"/") {
			continue
		}
		if strings.HasPrefix(line, "-A CNI-ADMIN ") || line == "ip saddr "+ip+" drop" {
			continue
		}
		out = append(out, line)
	}
	return out
}

func serve(t *testing.T, a *attachment) string {
	t.Helper()
	return listenTCP(t, a.NS, net.JoinHostPort(a.ip(true).String(), "0"))
}

// TestFirewallVersionLine: nerdctl runs the firewall binary with no
// CNI_COMMAND and reads the plugin's version from a stderr line starting
// with "CNI firewall plugin "; the rest must parse as semver, and "isolated"
// is used only when it is >= 1.7.1.
func TestFirewallVersionLine(t *testing.T) {
	e := fwEnv(t)
	cmd := exec.Command(filepath.Join(e.BinDir(), "firewall"))
	cmd.Env = []string{}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("run firewall without environment: %v (stderr %q)", err, stderr.String())
	}
	semver := regexp.MustCompile(`^v?(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?(\+[0-9A-Za-z-]+(\.[0-9A-Za-z-]+)*)?$`)
	for _, line := range strings.Split(stderr.String(), "\n") {
		rest, ok := strings.CutPrefix(line, "CNI firewall plugin ")
		if !ok {
			continue
		}
		if !regexp.MustCompile(`^CNI firewall plugin v(\d+\.\d+\.\d+)`).MatchString(line) {
			t.Fatalf("version line %q", line)
		}
		m := semver.FindStringSubmatch(rest)
		if m == nil {
			t.Fatalf("%q after the prefix is not semver (nerdctl parses all of it)", rest)
		}
		v := [3]int{}
		for i := range v {
			v[i], _ = strconv.Atoi(m[i+1])
		}
		if v[0] < 1 || v[0] == 1 && (v[1] < 7 || v[1] == 7 && v[2] < 1) {
			t.Fatalf("version %s < 1.7.1: nerdctl would not use ingressPolicy isolated", rest)
		}
		return
	}
	t.Fatalf("no line starting with \"CNI firewall plugin \" on stderr: %q", stderr.String())
}

// TestFirewallForwardDrop: on a host whose FORWARD policy is DROP,
// containers reach the outside and each other (same bridge and across
// bridges) with the firewall plugin in the chain, and, the control, do not
// without it.
func TestFirewallForwardDrop(t *testing.T) {
	for i, backend := range fwBackends {
		t.Run(backend, func(t *testing.T) {
			e := fwEnv(t)
			ext := external(t)
			srv := listenTCP(t, ext, "192.0.2.2:0")
			forwardDrop(t)
			net := func(n int, withFW bool) *libcni.NetworkConfigList {
				bn := bridgeNet{Name: fmt.Sprintf("fwd%d-%d", i, n), Bridge: fmt.Sprintf("plfwd%d%d", i, n),
					Subnet4: fmt.Sprintf("10.13%d.%d.0/24", i, n), DataDir: t.TempDir(),
					Extra: map[string]any{"ipMasq": true, "isDefaultGateway": true}}
				if !withFW {
					return e.ConfList(bn.conflist("1.0.0"))
				}
				return e.ConfList(bn.withPlugins(t, "1.0.0", firewallPlugin(backend)))
			}
			plain := net(0, false)
			c := e.add(plain, "ctr-nofw", testns.NewNS(t))
			cannotReach(t, c.NS, srv) // the control: the DROP policy is in force
			e.CNI.DelNetworkList(e.Ctx(), plain, c.RT)

			l1, l2 := net(1, true), net(2, true)
			a := e.add(l1, "ctr-a", testns.NewNS(t))
			b := e.add(l1, "ctr-b", testns.NewNS(t))
			x := e.add(l2, "ctr-x", testns.NewNS(t))
			for _, at := range []*attachment{a, b, x} {
				mustReach(t, at.NS, srv)
			}
			mustReach(t, a.NS, serve(t, b))
			mustReach(t, x.NS, serve(t, a))
			mustReach(t, a.NS, serve(t, x))
			for _, at := range []*attachment{a, b} {
				if err := e.CNI.CheckNetworkList(e.Ctx(), l1, at.RT); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}
			for _, at := range []*attachment{a, b} {
				if err := e.CNI.DelNetworkList(e.Ctx(), l1, at.RT); err != nil {
					t.Fatal(err)
				}
			}
			e.CNI.DelNetworkList(e.Ctx(), l2, x.RT)
			for _, at := range []*attachment{a, b, x} {
				if left := rulesOf(t, at.ip(true).String()); len(left) > 0 {
					t.Fatalf("rules of %s left after DEL: %q", at.ip(true), left)
				}
			}
		})
	}
}

// TestFirewallSameBridge: containers on one bridge reach each other, a
// container on another bridge network cannot reach them, and all still
// reach the outside.
func TestFirewallSameBridge(t *testing.T) {
	for i, backend := range fwBackends {
		t.Run(backend, func(t *testing.T) {
			e := fwEnv(t)
			ext := external(t)
			srv := listenTCP(t, ext, "192.0.2.2:0")
			list := func(n int, policy string) *libcni.NetworkConfigList {
				bn := bridgeNet{Name: fmt.Sprintf("sb%d-%d", i, n), Bridge: fmt.Sprintf("plsb%d%d", i, n),
					Subnet4: fmt.Sprintf("10.13%d.%d.0/24", 4+i, n), DataDir: t.TempDir(),
					Extra: map[string]any{"ipMasq": true, "isDefaultGateway": true}}
				return e.ConfList(bn.withPlugins(t, "1.1.0", firewallPlugin(backend, "ingressPolicy", policy)))
			}
			l1, l2 := list(1, "same-bridge"), list(2, "same-bridge")
			a := e.add(l1, "ctr-a", testns.NewNS(t))
			b := e.add(l1, "ctr-b", testns.NewNS(t))
			x := e.add(l2, "ctr-x", testns.NewNS(t))
			mustReach(t, b.NS, serve(t, a))
			cannotReach(t, x.NS, serve(t, a))
			cannotReach(t, a.NS, serve(t, x))
			for _, at := range []*attachment{a, b, x} {
				mustReach(t, at.NS, srv)
			}
			// An open network's bridge is a container bridge too: its
			// containers cannot reach same-bridge ones either.
			lo := list(3, "open")
			o := e.add(lo, "ctr-open", testns.NewNS(t))
			cannotReach(t, o.NS, serve(t, a))
			for _, at := range []*attachment{a, b} {
				if err := e.CNI.CheckNetworkList(e.Ctx(), l1, at.RT); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}
			for _, d := range []struct {
				l  *libcni.NetworkConfigList
				at *attachment
			}{{l1, a}, {l1, b}, {l2, x}, {lo, o}} {
				if err := e.CNI.DelNetworkList(e.Ctx(), d.l, d.at.RT); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestFirewallIsolated: containers on one bridge cannot reach each other
// (the ports are isolated), and both still reach the outside; CHECK sees a
// port whose isolation was turned off by hand.
func TestFirewallIsolated(t *testing.T) {
	for i, backend := range fwBackends {
		t.Run(backend, func(t *testing.T) {
			e := fwEnv(t)
			ext := external(t)
			srv := listenTCP(t, ext, "192.0.2.2:0")
			bn := bridgeNet{Name: fmt.Sprintf("iso%d", i), Bridge: fmt.Sprintf("pliso%d", i),
				Subnet4: fmt.Sprintf("10.13%d.0.0/24", 6+i), DataDir: t.TempDir(),
				Extra: map[string]any{"ipMasq": true, "isDefaultGateway": true}}
			l := e.ConfList(bn.withPlugins(t, "1.1.0", firewallPlugin(backend, "ingressPolicy", "isolated")))
			a := e.add(l, "ctr-a", testns.NewNS(t))
			b := e.add(l, "ctr-b", testns.NewNS(t))
			cannotReach(t, b.NS, serve(t, a))
			cannotReach(t, a.NS, serve(t, b))
			mustReach(t, a.NS, srv)
			mustReach(t, b.NS, srv)
			if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			port := hostLink(t, a.Res.Interfaces[1].Name)
			if err := netlink.LinkSetIsolated(port, false); err != nil {
				t.Fatal(err)
			}
			if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err == nil || !strings.Contains(err.Error(), "isolated") {
				t.Fatalf("CHECK with the port's isolation off: %v", err)
			}
			for _, at := range []*attachment{a, b} {
				if err := e.CNI.DelNetworkList(e.Ctx(), l, at.RT); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// fwAdmin is how a test drives the admin chain of a backend.
type fwAdmin struct {
	add   func(t *testing.T, src string) // a drop rule of the administrator's
	list  func(t *testing.T) string
	first func(t *testing.T) bool // jumped to before plumb's rules
	// breakRule deletes by hand what sends traffic to ip to its chain.
	breakRule func(t *testing.T, ip string)
}

var fwAdmins = map[string]fwAdmin{
	"nftables": {
		add: func(t *testing.T, src string) {
			mustRun(t, "nft", "add", "rule", "inet", "plumb_filter", "CNI-ADMIN", "ip", "saddr", src, "drop")
		},
		list: func(t *testing.T) string {
			return mustRun(t, "nft", "list", "chain", "inet", "plumb_filter", "CNI-ADMIN")
		},
		first: func(t *testing.T) bool {
			out := mustRun(t, "nft", "list", "chain", "inet", "plumb_filter", "forward")
			return strings.Contains(out, "jump CNI-ADMIN") && strings.Index(out, "jump CNI-ADMIN") < strings.Index(out, "vmap")
		},
		breakRule: func(t *testing.T, ip string) {
			mustRun(t, "nft", "delete", "element", "inet", "plumb_filter", "in4", "{", ip, "}")
		},
	},
	"iptables": {
		add: func(t *testing.T, src string) {
			mustRun(t, "iptables", "-w", "-A", "CNI-ADMIN", "-s", src, "-j", "DROP")
		},
		list: func(t *testing.T) string { return mustRun(t, "iptables", "-w", "-S", "CNI-ADMIN") },
		first: func(t *testing.T) bool {
			for _, line := range strings.Split(mustRun(t, "iptables", "-w", "-S", "FORWARD"), "\n") {
				if strings.HasPrefix(line, "-A FORWARD ") {
					return strings.HasSuffix(line, "-j CNI-ADMIN")
				}
			}
			return false
		},
		breakRule: func(t *testing.T, ip string) {
			for _, line := range strings.Split(mustRun(t, "iptables", "-w", "-S", "PLUMB-FORWARD"), "\n") {
				if strings.HasPrefix(line, "-A PLUMB-FORWARD -d "+ip+"/32 ") {
					cmd := exec.Command("iptables-restore", "--noflush", "--wait")
					cmd.Stdin = strings.NewReader("*filter\n-D" + strings.TrimPrefix(line, "-A") + "\nCOMMIT\n")
					if out, err := cmd.CombinedOutput(); err != nil {
						t.Fatalf("delete %q: %v %s", line, err, out)
					}
					return
				}
			}
			t.Fatalf("no PLUMB-FORWARD rule for %s", ip)
		},
	},
}

// TestFirewallLifecycle: the admin chain exists, is jumped to first and an
// administrator's rule in it applies and survives ADD and DEL of
// containers; CHECK fails after a rule is deleted by hand; DEL leaves none
// of the container's rules, works without prevResult and twice; GC removes
// a leaked container's rules; STATUS succeeds.
func TestFirewallLifecycle(t *testing.T) {
	for i, backend := range fwBackends {
		t.Run(backend, func(t *testing.T) {
			e := fwEnv(t)
			adm := fwAdmins[backend]
			ext := external(t)
			srv := listenTCP(t, ext, "192.0.2.2:0")
			forwardDrop(t)
			bn := bridgeNet{Name: fmt.Sprintf("fwlife%d", i), Bridge: fmt.Sprintf("plfwl%d", i),
				Subnet4: fmt.Sprintf("10.13%d.0.0/24", 8+i), DataDir: t.TempDir(),
				Extra: map[string]any{"ipMasq": true, "isDefaultGateway": true}}
			fwConf := firewallPlugin(backend)
			l := e.ConfList(bn.withPlugins(t, "1.1.0", fwConf))
			if err := e.CNI.GetStatusNetworkList(e.Ctx(), l); err != nil {
				t.Fatalf("STATUS: %v", err)
			}
			a := e.add(l, "ctr-a", testns.NewNS(t))
			if !adm.first(t) {
				t.Fatal("the admin chain is not jumped to first")
			}
			mustReach(t, a.NS, srv)
			adm.add(t, a.ip(true).String())
			cannotReach(t, a.NS, srv) // the administrator's rule applies
			before := adm.list(t)

			b := e.add(l, "ctr-b", testns.NewNS(t))
			mustReach(t, b.NS, srv)
			if err := e.CNI.CheckNetworkList(e.Ctx(), l, b.RT); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			adm.breakRule(t, b.ip(true).String())
			if err := e.CNI.CheckNetworkList(e.Ctx(), l, b.RT); err == nil {
				t.Fatal("CHECK passed after a rule was deleted by hand")
			}
			if err := e.CNI.DelNetworkList(e.Ctx(), l, b.RT); err != nil {
				t.Fatal(err)
			}
			if err := e.CNI.DelNetworkList(e.Ctx(), l, b.RT); err != nil {
				t.Fatalf("second DEL: %v", err)
			}
			if left := rulesOf(t, b.ip(true).String()); len(left) > 0 {
				t.Fatalf("rules of %s left after DEL: %q", b.ip(true), left)
			}

			// DEL without prevResult, straight to the plugin, twice.
			conf := mustJSON(t, map[string]any{"cniVersion": "1.1.0", "name": bn.Name, "type": "firewall", "backend": backend})
			for n := 0; n < 2; n++ {
				o := runPlugin(t, "firewall", call{Command: "DEL", ContainerID: "ctr-a", Netns: a.NS.Path(), IfName: "eth0", Stdin: conf})
				if o.Exit != 0 {
					t.Fatalf("DEL without prevResult: %s", o)
				}
			}
			if left := rulesOf(t, a.ip(true).String()); len(left) > 0 {
				t.Fatalf("rules of %s left after DEL without prevResult: %q", a.ip(true), left)
			}
			e.CNI.DelNetworkList(e.Ctx(), l, a.RT)

			// GC removes a leaked container's rules.
			leak := e.add(l, "ctr-leak", testns.NewNS(t))
			if err := e.PluginGC(l); err != nil {
				t.Fatalf("GC: %v", err)
			}
			if left := rulesOf(t, leak.ip(true).String()); len(left) > 0 {
				t.Fatalf("GC left the leaked attachment's rules: %q", left)
			}
			if after := adm.list(t); after != before {
				t.Fatalf("admin chain changed by ADD/DEL/GC:\nbefore %s\nafter %s", before, after)
			}
		})
	}
}
