package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/testns"
)

// The port publishing tests: bridge + host-local + portmap through libcni,
// for both backends, with real traffic from an "external" namespace linked
// to the test's host namespace, from the host itself and from containers.

var pmBackends = []string{"nftables", "iptables"}

// pmNet is a dual-stack bridge network with portmap chained after it.
type pmNet struct {
	bridgeNet
	Backend string
	Portmap map[string]any // more portmap fields
}

func newPMNet(t *testing.T, name string, n int, backend string) pmNet {
	return pmNet{
		bridgeNet: bridgeNet{Name: name, Bridge: fmt.Sprintf("plpm%d%s", n, backend[:3]),
			// 10.200.0.0/16 and up: other tests' bridges (which may outlive
			// them) use lower ranges.
			Subnet4: fmt.Sprintf("10.%d.0.0/24", 200+n), Subnet6: fmt.Sprintf("fd77:%d::/64", n), DataDir: t.TempDir(),
			Extra: map[string]any{"isDefaultGateway": true, "hairpinMode": true}},
		Backend: backend,
	}
}

func (p pmNet) conflist(t *testing.T, version string) string {
	var list map[string]any
	if err := json.Unmarshal([]byte(p.bridgeNet.conflist(version)), &list); err != nil {
		t.Fatal(err)
	}
	pm := map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "backend": p.Backend}
	for k, v := range p.Portmap {
		pm[k] = v
	}
	list["plugins"] = append(list["plugins"].([]any), pm)
	return string(mustJSON(t, list))
}

// pm is a port mapping as runtimes pass it ("tcp 8080:80", "udp 192.0.2.1:53:53").
func pm(s string) map[string]any {
	proto, rest, _ := strings.Cut(s, " ")
	parts := strings.Split(rest, ":")
	m := map[string]any{"protocol": proto}
	if len(parts) == 3 {
		m["hostIP"] = parts[0]
		parts = parts[1:]
	}
	var hp, cp int
	fmt.Sscan(parts[0], &hp)
	fmt.Sscan(parts[1], &cp)
	m["hostPort"], m["containerPort"] = hp, cp
	return m
}

// addPM adds a container publishing maps.
func (e *Env) addPM(l *libcni.NetworkConfigList, id string, n *netns.NS, maps ...string) *attachment {
	e.T.Helper()
	var entries []map[string]any
	for _, m := range maps {
		entries = append(entries, pm(m))
	}
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: n.Path(), IfName: "eth0",
		CapabilityArgs: map[string]any{"portMappings": entries}}
	r, err := e.CNI.AddNetworkList(e.Ctx(), l, rt)
	if err != nil {
		e.T.Fatalf("ADD %s: %v", id, err)
	}
	// A test that fails halfway must not leave rules that redirect the
	// next test's traffic to a container that is gone.
	e.T.Cleanup(func() { e.CNI.DelNetworkList(e.Ctx(), l, rt) })
	res, err := current.NewResultFromResult(r)
	if err != nil {
		e.T.Fatal(err)
	}
	return &attachment{NS: n, RT: rt, Res: res}
}

// gateway is the bridge's address of the container's family.
func (a *attachment) gateway(v4 bool) string {
	for _, ipc := range a.Res.IPs {
		if (ipc.Address.IP.To4() != nil) == v4 {
			return ipc.Gateway.String()
		}
	}
	return ""
}

// servers starts, in the container, TCP servers on port 80 and UDP
// servers on port 53, both families; the UDP servers report each peer on
// the returned channel.
func servers(t *testing.T, n *netns.NS) <-chan string {
	t.Helper()
	seen := make(chan string, 64)
	listenTCPOn(t, n, "tcp4", "0.0.0.0:80")
	listenTCPOn(t, n, "tcp6", "[::]:80")
	listenUDP(t, n, "udp4", "0.0.0.0:53", seen)
	listenUDP(t, n, "udp6", "[::]:53", seen)
	return seen
}

func hp(host string, port int) string { return net.JoinHostPort(host, fmt.Sprint(port)) }

// portmapCall runs the portmap binary alone, as libcni would in a chain.
func portmapCall(t *testing.T, verb string, p pmNet, a *attachment, prev *current.Result, maps ...string) outcome {
	t.Helper()
	conf := map[string]any{"type": "portmap", "backend": p.Backend, "capabilities": map[string]bool{"portMappings": true}}
	var entries []map[string]any
	for _, m := range maps {
		entries = append(entries, pm(m))
	}
	if len(entries) > 0 {
		conf["runtimeConfig"] = map[string]any{"portMappings": entries}
	}
	if prev != nil {
		conf["prevResult"] = prev
	}
	conf["name"] = p.Name
	conf["cniVersion"] = "1.1.0"
	return runPlugin(t, "portmap", call{Command: verb, ContainerID: a.RT.ContainerID, Netns: a.NS.Path(), IfName: "eth0",
		Stdin: mustJSON(t, conf)})
}

func pmOK(t *testing.T, o outcome) {
	t.Helper()
	if o.Exit != 0 {
		t.Fatalf("portmap: %s", o)
	}
}

// TestPortmapTraffic: published TCP and UDP ports on every host address,
// both families, reached from outside, from the host, from another
// container on the bridge, from the container itself (hairpin) and through
// 127.0.0.1; CHECK passes; DEL removes every rule.
func TestPortmapTraffic(t *testing.T) {
	for i, backend := range pmBackends {
		t.Run(backend, func(t *testing.T) {
			e := NewEnv(t)
			ext := pmExternal(t)
			p := newPMNet(t, "pm-"+backend, i, backend)
			l := e.ConfList(p.conflist(t, "1.1.0"))
			ns := testns.NewNS(t)
			seen := servers(t, ns)
			a := e.addPM(l, "ctr-pm-"+backend, ns, "tcp 8080:80", "udp 5353:53")
			gw4, gw6 := a.gateway(true), a.gateway(false)

			// From outside: the server sees the external address.
			for _, c := range []struct{ host, src string }{{hostExt4, extAddr4}, {hostExt6, extAddr6}} {
				if src := mustReach(t, ext, hp(c.host, 8080)); src != c.src {
					t.Errorf("tcp from outside to %s: server saw %s, want %s", c.host, src, c.src)
				}
				if src := mustReachUDP(t, ext, hp(c.host, 5353)); src != c.src {
					t.Errorf("udp from outside to %s: server saw %s, want %s", c.host, src, c.src)
				}
			}
			// From the host, to its own addresses.
			for _, host := range []string{hostExt4, hostExt6, gw4} {
				mustReach(t, nil, hp(host, 8080))
				mustReachUDP(t, nil, hp(host, 5353))
			}
			// From another container on the bridge: masqueraded, so the
			// answer comes back through the host.
			b := e.add(e.ConfList(p.bridgeNet.conflist("1.1.0")), "ctr-pm-peer-"+backend, testns.NewNS(t))
			for _, c := range []struct{ host, gw string }{{hostExt4, gw4}, {hostExt6, gw6}} {
				if src := mustReach(t, b.NS, hp(c.host, 8080)); src != c.gw {
					t.Errorf("tcp from a peer to %s: server saw %s, want the bridge's %s", c.host, src, c.gw)
				}
				if src := mustReachUDP(t, b.NS, hp(c.host, 5353)); src != c.gw {
					t.Errorf("udp from a peer to %s: server saw %s, want the bridge's %s", c.host, src, c.gw)
				}
			}
			// Hairpin: the container reaches itself through the host.
			for _, c := range []struct{ host, gw string }{{hostExt4, gw4}, {hostExt6, gw6}} {
				if src := mustReach(t, a.NS, hp(c.host, 8080)); src != c.gw {
					t.Errorf("hairpin tcp to %s: server saw %s, want %s", c.host, src, c.gw)
				}
			}
			// 127.0.0.1 from the host: masqueraded to the bridge address.
			if src := mustReach(t, nil, hp("127.0.0.1", 8080)); src != gw4 {
				t.Errorf("tcp to 127.0.0.1: server saw %s, want %s", src, gw4)
			}
			if src := mustReachUDP(t, nil, hp("127.0.0.1", 5353)); src != gw4 {
				t.Errorf("udp to 127.0.0.1: server saw %s, want %s", src, gw4)
			}
			// ::1 is not published: the kernel never lets an IPv6 loopback
			// source leave the loopback interface, and IPv6 has no
			// route_localnet.
			mustNotConnect(t, nil, hp("::1", 8080))
			if on := sysctl(t, "net/ipv4/conf/"+p.Bridge+"/route_localnet"); on != "1" {
				t.Errorf("route_localnet on %s is %s", p.Bridge, on)
			}
			if all := sysctl(t, "net/ipv4/conf/all/route_localnet"); all != "0" {
				t.Errorf("route_localnet was turned on host-wide")
			}
			drain(seen)
			if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
				t.Fatalf("CHECK: %v", err)
			}

			if err := e.CNI.DelNetworkList(e.Ctx(), l, a.RT); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			mustNotConnect(t, ext, hp(hostExt4, 8080))
			if rs := ruleset(t); strings.Contains(rs, a.ip(true).String()) || strings.Contains(rs, a.ip(false).String()) {
				t.Fatalf("rules left after DEL:\n%s", rs)
			}
			e.CNI.DelNetworkList(e.Ctx(), e.ConfList(p.bridgeNet.conflist("1.1.0")), b.RT)
		})
	}
}

func sysctl(t *testing.T, key string) string {
	t.Helper()
	out, err := exec.Command("cat", "/proc/sys/"+key).Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

// TestPortmapHostIP: a mapping with hostIP answers on that address only,
// and the result passes through in every spec version.
func TestPortmapHostIP(t *testing.T) {
	for i, backend := range pmBackends {
		t.Run(backend, func(t *testing.T) {
			e := NewEnv(t)
			ext := pmExternal(t)
			p := newPMNet(t, "pmhost-"+backend, 2+i, backend)
			l := e.ConfList(p.conflist(t, "1.0.0"))
			ns := testns.NewNS(t)
			servers(t, ns)
			a := e.addPM(l, "ctr-pmhost-"+backend, ns, "tcp "+hostExt4+":8081:80", "tcp 127.0.0.1:8082:80")
			mustReach(t, ext, hp(hostExt4, 8081))
			mustNotConnect(t, ext, hp(hostExt4b, 8081))
			mustNotConnect(t, nil, hp("127.0.0.1", 8081))
			mustNotConnect(t, ext, hp(hostExt4, 8082))
			mustReach(t, nil, hp("127.0.0.1", 8082))
			if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
		})
	}
}

// TestPortmapResultVersions: the chain's result is the bridge's, in the
// config's version.
func TestPortmapResultVersions(t *testing.T) {
	for i, v := range allSpecVersions {
		t.Run(v, func(t *testing.T) {
			e := NewEnv(t)
			p := newPMNet(t, "pmver-"+v, 10+i, "nftables")
			l := e.ConfList(p.conflist(t, v))
			rt := &libcni.RuntimeConf{ContainerID: "ctr-ver", NetNS: testns.NewNS(t).Path(), IfName: "eth0",
				CapabilityArgs: map[string]any{"portMappings": []map[string]any{pm("tcp 8080:80")}}}
			r, err := e.CNI.AddNetworkList(e.Ctx(), l, rt)
			if err != nil {
				t.Fatal(err)
			}
			if r.Version() != v {
				t.Fatalf("result version %s, want %s", r.Version(), v)
			}
			if ips := resultIPs(t, r); len(ips) != 2 {
				t.Fatalf("result IPs %v", ips)
			}
			if err := e.CNI.DelNetworkList(e.Ctx(), l, rt); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestPortmapOnlyLocalDestinations: a packet to an address that is not the
// host's, routed through the host, is not redirected even though its port
// is published.
func TestPortmapOnlyLocalDestinations(t *testing.T) {
	for i, backend := range pmBackends {
		t.Run(backend, func(t *testing.T) {
			e := NewEnv(t)
			ext := pmExternal(t)
			routeVia(t, ext, "198.51.100.0/24")
			p := newPMNet(t, "pmlocal-"+backend, 20+i, backend)
			l := e.ConfList(p.conflist(t, "1.1.0"))
			ns := testns.NewNS(t)
			servers(t, ns)
			a := e.addPM(l, "ctr-pmlocal-"+backend, ns, "tcp 8080:80")
			mustReach(t, ext, hp(hostExt4, 8080))
			mustNotConnect(t, ext, hp("198.51.100.7", 8080))
			e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
		})
	}
}

// TestPortmapLoopbackGuard: 127.0.0.1:hostPort is not reachable from
// another host that routes 127.0.0.0/8 to this one; without the guard rule
// it would be (the control that shows the test can fail).
func TestPortmapLoopbackGuard(t *testing.T) {
	for i, backend := range pmBackends {
		t.Run(backend, func(t *testing.T) {
			e := NewEnv(t)
			ext := pmExternal(t)
			// The external host sends 127.0.0.0/8 to us: no local route for
			// it, a route via the host, and route_localnet so its own kernel
			// lets such packets out.
			inExt(t, ext, "ip", "route", "del", "127.0.0.0/8", "dev", "lo", "table", "local")
			inExt(t, ext, "ip", "route", "add", "127.0.0.0/8", "via", hostExt4)
			inExt(t, ext, "sysctl", "-qw", "net.ipv4.conf.eth0.route_localnet=1", "net.ipv4.conf.all.route_localnet=1")
			p := newPMNet(t, "pmguard-"+backend, 22+i, backend)
			l := e.ConfList(p.conflist(t, "1.1.0"))
			ns := testns.NewNS(t)
			servers(t, ns)
			a := e.addPM(l, "ctr-pmguard-"+backend, ns, "tcp 8080:80")
			mustReach(t, ext, hp(hostExt4, 8080))
			// 127.0.0.2: the external host still has 127.0.0.1 on its lo.
			mustNotConnect(t, ext, hp("127.0.0.2", 8080))

			// Control: without the guard (of either backend: earlier tests
			// may have left the other's) the packet is redirected.
			exec.Command("nft", "flush", "chain", "inet", "plumb_portmap", "guard").Run()
			pmRun(t, "iptables", "-t", "raw", "-F", "PREROUTING")
			if _, err := dialTCP(ext, hp("127.0.0.2", 8080)); err != nil {
				t.Fatalf("without the guard 127.0.0.2:8080 is not reachable either (%v): the test shows nothing", err)
			}
			if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err == nil {
				t.Fatal("CHECK passed without the guard")
			}
			pmOK(t, portmapCall(t, "ADD", p, a, a.Res, "tcp 8080:80")) // re-ADD repairs
			mustNotConnect(t, ext, hp("127.0.0.2", 8080))
			e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
		})
	}
}

func pmRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
}

// TestPortmapOwners: ADD A, ADD B with the same container address (the
// runtime reused it without a DEL), DEL A: B's mappings keep working.
func TestPortmapOwners(t *testing.T) {
	for i, backend := range pmBackends {
		t.Run(backend, func(t *testing.T) {
			e := NewEnv(t)
			ext := pmExternal(t)
			p := newPMNet(t, "pmown-"+backend, 24+i, backend)
			l := e.ConfList(p.conflist(t, "1.1.0"))
			ns := testns.NewNS(t)
			servers(t, ns)
			a := e.addPM(l, "ctr-pmown-a-"+backend, ns, "tcp 8080:80")
			bAtt := &attachment{NS: ns, RT: &libcni.RuntimeConf{ContainerID: "ctr-pmown-b-" + backend, NetNS: ns.Path(), IfName: "eth0"}, Res: a.Res}
			pmOK(t, portmapCall(t, "ADD", p, bAtt, a.Res, "tcp 8080:80", "udp 5353:53"))
			t.Cleanup(func() { portmapCall(t, "DEL", p, bAtt, nil) })
			pmOK(t, portmapCall(t, "DEL", p, a, nil))
			mustReach(t, ext, hp(hostExt4, 8080))
			mustReachUDP(t, ext, hp(hostExt4, 5353))
			pmOK(t, portmapCall(t, "CHECK", p, bAtt, a.Res, "tcp 8080:80", "udp 5353:53"))
			pmOK(t, portmapCall(t, "DEL", p, bAtt, nil))
			mustNotConnect(t, ext, hp(hostExt4, 8080))
			e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
		})
	}
}

// TestPortmapSameHostPort: two containers publishing one host port: the
// later one gets the traffic while it lives, CHECK of the earlier one says
// who holds the port, and the earlier one gets it back when the later one
// goes.
func TestPortmapSameHostPort(t *testing.T) {
	for i, backend := range pmBackends {
		t.Run(backend, func(t *testing.T) {
			e := NewEnv(t)
			ext := pmExternal(t)
			p := newPMNet(t, "pmdup-"+backend, 26+i, backend)
			l := e.ConfList(p.conflist(t, "1.1.0"))
			first, second := testns.NewNS(t), testns.NewNS(t)
			seenA, seenB := servers(t, first), servers(t, second)
			a := e.addPM(l, "ctr-pmdup-a-"+backend, first, "udp 5353:53")
			b := e.addPM(l, "ctr-pmdup-b-"+backend, second, "udp 5353:53")
			answering := func() string {
				t.Helper()
				drain(seenA)
				drain(seenB)
				mustReachUDP(t, ext, hp(hostExt4, 5353))
				switch {
				case receives(seenA, 0) && !receives(seenB, 0):
					return "a"
				case receives(seenB, 0) && !receives(seenA, 0):
					return "b"
				}
				return "both or neither"
			}
			if got := answering(); got != "b" {
				t.Fatalf("port 5353 answered by %s, want the later container", got)
			}
			err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT)
			if err == nil || !strings.Contains(err.Error(), "ctr-pmdup-b-"+backend) {
				t.Fatalf("CHECK of the earlier container: %v, want it to name the later one", err)
			}
			if err := e.CNI.DelNetworkList(e.Ctx(), l, b.RT); err != nil {
				t.Fatal(err)
			}
			if got := answering(); got != "a" {
				t.Fatalf("after DEL of the later container port 5353 answered by %s, want the earlier one", got)
			}
			if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
				t.Fatalf("CHECK of the earlier container after DEL of the later: %v", err)
			}
			e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
		})
	}
}

// TestPortmapUDPConntrack: a long-lived UDP flow that started before the
// port was published reaches the container once it is (ADD flushes the
// flow's conntrack entry), stops reaching it when it is removed (DEL), and
// reaches the container that publishes the port next.
func TestPortmapUDPConntrack(t *testing.T) {
	for i, backend := range pmBackends {
		t.Run(backend, func(t *testing.T) {
			e := NewEnv(t)
			ext := pmExternal(t)
			p := newPMNet(t, "pmct-"+backend, 28+i, backend)
			l := e.ConfList(p.conflist(t, "1.1.0"))
			first, second := testns.NewNS(t), testns.NewNS(t)
			seenA, seenB := servers(t, first), servers(t, second)
			udpStream(t, ext, hp(hostExt4, 5353))
			time.Sleep(200 * time.Millisecond) // the flow has its conntrack entry, without NAT

			a := e.addPM(l, "ctr-pmct-a-"+backend, first, "udp 5353:53")
			if !receives(seenA, 2*time.Second) {
				t.Fatal("the flow did not reach the container after ADD")
			}
			if err := e.CNI.DelNetworkList(e.Ctx(), l, a.RT); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			drain(seenA)
			if receives(seenA, 500*time.Millisecond) {
				t.Fatal("the flow still reaches the container after DEL")
			}
			b := e.addPM(l, "ctr-pmct-b-"+backend, second, "udp 5353:53")
			if !receives(seenB, 2*time.Second) {
				t.Fatal("the flow did not reach the next container")
			}
			e.CNI.DelNetworkList(e.Ctx(), l, b.RT)
		})
	}
}

// TestPortmapDelWithoutCache: a runtime that lost its cache DELs without
// prevResult and without the mappings: nothing is left.
func TestPortmapDelWithoutCache(t *testing.T) {
	for i, backend := range pmBackends {
		t.Run(backend, func(t *testing.T) {
			e := NewEnv(t)
			p := newPMNet(t, "pmnocache-"+backend, 30+i, backend)
			l := e.ConfList(p.conflist(t, "1.1.0"))
			a := e.addPM(l, "ctr-pmnocache-"+backend, testns.NewNS(t), "tcp 8080:80", "udp 5353:53")
			lost := libcni.NewCNIConfigWithCacheDir([]string{e.BinDir()}, t.TempDir(), nil)
			rt := &libcni.RuntimeConf{ContainerID: a.RT.ContainerID, NetNS: a.RT.NetNS, IfName: "eth0"}
			for n := 0; n < 2; n++ {
				if err := lost.DelNetworkList(e.Ctx(), l, rt); err != nil {
					t.Fatalf("DEL %d without cache: %v", n+1, err)
				}
			}
			if rs := ruleset(t); strings.Contains(rs, a.ip(true).String()) || strings.Contains(rs, a.ip(false).String()) {
				t.Fatalf("rules left after DEL without cache:\n%s", rs)
			}
			// Directly, with an empty prevResult too.
			pmOK(t, portmapCall(t, "DEL", p, a, &current.Result{CNIVersion: "1.1.0"}))
		})
	}
}

// TestPortmapCheckAfterFlush: CHECK reports rules someone flushed, and a
// re-ADD restores them (and the traffic).
func TestPortmapCheckAfterFlush(t *testing.T) {
	for i, backend := range pmBackends {
		t.Run(backend, func(t *testing.T) {
			e := NewEnv(t)
			ext := pmExternal(t)
			p := newPMNet(t, "pmflush-"+backend, 32+i, backend)
			l := e.ConfList(p.conflist(t, "1.1.0"))
			ns := testns.NewNS(t)
			servers(t, ns)
			a := e.addPM(l, "ctr-pmflush-"+backend, ns, "tcp 8080:80")
			if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			if backend == "nftables" {
				pmRun(t, "nft", "flush", "map", "inet", "plumb_portmap", "any4")
			} else {
				pmRun(t, "iptables", "-t", "nat", "-F", "PLUMB-HP-ANY")
			}
			mustNotConnect(t, ext, hp(hostExt4, 8080))
			err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT)
			if err == nil || !strings.Contains(err.Error(), "8080") {
				t.Fatalf("CHECK after the flush: %v", err)
			}
			pmOK(t, portmapCall(t, "ADD", p, a, a.Res, "tcp 8080:80"))
			mustReach(t, ext, hp(hostExt4, 8080))
			if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
				t.Fatalf("CHECK after re-ADD: %v", err)
			}
			e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
		})
	}
}

// TestPortmapGC: GC removes what a leaked container published and keeps
// what a valid one did.
func TestPortmapGC(t *testing.T) {
	for i, backend := range pmBackends {
		t.Run(backend, func(t *testing.T) {
			e := NewEnv(t)
			ext := pmExternal(t)
			p := newPMNet(t, "pmgc-"+backend, 34+i, backend)
			l := e.ConfList(p.conflist(t, "1.1.0"))
			keepNS := testns.NewNS(t)
			servers(t, keepNS)
			keep := e.addPM(l, "ctr-pmgc-keep-"+backend, keepNS, "tcp 8080:80")
			leak := e.addPM(l, "ctr-pmgc-leak-"+backend, testns.NewNS(t), "tcp 9090:80")
			if err := e.PluginGC(l, types.GCAttachment{ContainerID: keep.RT.ContainerID, IfName: "eth0"}); err != nil {
				t.Fatalf("GC: %v", err)
			}
			if rs := ruleset(t); strings.Contains(rs, leak.ip(true).String()) {
				t.Fatalf("GC left the leaked container's rules:\n%s", rs)
			}
			mustReach(t, ext, hp(hostExt4, 8080))
			pmOK(t, portmapCall(t, "CHECK", p, keep, keep.Res, "tcp 8080:80"))
			e.CNI.DelNetworkList(e.Ctx(), l, keep.RT)
		})
	}
}

// TestPortmapStatusAndBadInput: STATUS succeeds on this host for both
// backends; bad input is a CNI error 7 that changes nothing.
func TestPortmapStatusAndBadInput(t *testing.T) {
	e := NewEnv(t)
	for i, backend := range pmBackends {
		p := newPMNet(t, "pmbad-"+backend, 36+i, backend)
		l := e.ConfList(p.conflist(t, "1.1.0"))
		if err := e.CNI.GetStatusNetworkList(e.Ctx(), l); err != nil {
			t.Fatalf("%s: STATUS: %v", backend, err)
		}
		a := e.add(e.ConfList(p.bridgeNet.conflist("1.1.0")), "ctr-pmbad-"+backend, testns.NewNS(t))
		before := strings.Join(rulesetLines(t), "\n") // without counters: traffic moves them
		for name, maps := range map[string][]string{
			"host port 0":      {"tcp 0:80"},
			"port 65536":       {"tcp 65536:80"},
			"container port 0": {"tcp 8080:0"},
			"unknown protocol": {"icmp 8080:80"},
			"host IP":          {"tcp 300.1.1.1:8080:80"},
			"second one bad":   {"tcp 8080:80", "udp 70000:53"},
		} {
			o := portmapCall(t, "ADD", p, a, a.Res, maps...)
			if o.Err == nil || o.Err.Code != 7 {
				t.Errorf("%s %s: %s, want CNI error 7", backend, name, o)
			}
		}
		o := portmapCall(t, "ADD", p, a, &current.Result{CNIVersion: "1.1.0"}, "tcp 8080:80")
		if o.Err == nil || o.Err.Code != 7 || !strings.Contains(o.Err.Msg, "no address") {
			t.Errorf("%s: prevResult without addresses: %s", backend, o)
		}
		if after := strings.Join(rulesetLines(t), "\n"); after != before {
			t.Errorf("%s: refused ADDs changed the rules:\n%s\nbefore:\n%s", backend, after, before)
		}
	}
}
