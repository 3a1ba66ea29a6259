package integration

import (
	"net"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/testns"
)

// external makes an "outside world" namespace linked to the test's host
// namespace by a veth: host 192.0.2.1/24, external 192.0.2.2/24. The
// external side has no route to container subnets, so only masqueraded
// traffic can be answered.
func external(t *testing.T) *netns.NS {
	t.Helper()
	ext := testns.NewNS(t)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "plext0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(ext.Fd())}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("create veth to external: %v", err)
	}
	t.Cleanup(func() { netlink.LinkDel(veth) })
	host, _ := netlink.LinkByName("plext0")
	addr, _ := netlink.ParseAddr("192.0.2.1/24")
	if err := netlink.AddrAdd(host, addr); err != nil {
		t.Fatal(err)
	}
	netlink.LinkSetUp(host)
	if err := ext.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr("192.0.2.2/24")
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		lo, _ := netlink.LinkByName("lo")
		return netlink.LinkSetUp(lo)
	}); err != nil {
		t.Fatalf("configure external: %v", err)
	}
	return ext
}

// ruleset prints the host namespace's NAT state in both backends.
func ruleset(t *testing.T) string {
	t.Helper()
	nft, _ := exec.Command("nft", "list", "ruleset").CombinedOutput()
	ipt, _ := exec.Command("iptables-save", "-t", "nat").CombinedOutput()
	return string(nft) + "\n" + string(ipt)
}

func TestBridgeMasquerade(t *testing.T) {
	for i, backend := range []string{"nftables", "iptables"} {
		t.Run(backend, func(t *testing.T) {
			e := NewEnv(t)
			ext := external(t)
			srv := listenTCP(t, ext, "192.0.2.2:0")
			bn := bridgeNet{Name: "masq-" + backend, Bridge: "plmasq" + backend[:3], Subnet4: "10.6" + string(rune('0'+i)) + ".0.0/24", DataDir: t.TempDir(),
				Extra: map[string]any{"ipMasq": true, "ipMasqBackend": backend, "isDefaultGateway": true}}
			l := e.ConfList(bn.conflist("1.1.0"))
			a := e.add(l, "ctr-masq", testns.NewNS(t))
			if src := mustReach(t, a.NS, srv); src != "192.0.2.1" {
				t.Fatalf("external server saw %s, want the host's 192.0.2.1", src)
			}
			// Traffic inside the subnet keeps its source.
			b := e.add(l, "ctr-peer", testns.NewNS(t))
			inner := listenTCP(t, b.NS, net.JoinHostPort(b.ip(true).String(), "0"))
			if src := mustReach(t, a.NS, inner); src != a.ip(true).String() {
				t.Fatalf("peer saw %s, want %s (no masquerade inside the subnet)", src, a.ip(true))
			}
			if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			if !strings.Contains(ruleset(t), a.ip(true).String()) {
				t.Fatalf("no rule names %s:\n%s", a.ip(true), ruleset(t))
			}
			for _, at := range []*attachment{a, b} {
				if err := e.CNI.DelNetworkList(e.Ctx(), l, at.RT); err != nil {
					t.Fatal(err)
				}
			}
			if rs := ruleset(t); strings.Contains(rs, a.ip(true).String()) || strings.Contains(rs, b.ip(true).String()) {
				t.Fatalf("rules left after DEL:\n%s", rs)
			}
		})
	}
}

// TestBridgeMasqueradeCheckAndSwitch: CHECK sees a rule deleted by hand, and
// a DEL whose config names the other backend still removes the rules.
func TestBridgeMasqueradeCheckAndSwitch(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "switch", Bridge: "plswitch", Subnet4: "10.63.0.0/24", DataDir: t.TempDir(),
		Extra: map[string]any{"ipMasq": true, "ipMasqBackend": "nftables"}}
	l := e.ConfList(bn.conflist("1.1.0"))
	a := e.add(l, "ctr-switch", testns.NewNS(t))
	if out, err := exec.Command("nft", "flush", "map", "inet", "plumb_masq", "masq4").CombinedOutput(); err != nil {
		t.Fatalf("flush map by hand: %v %s", err, out)
	}
	if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err == nil {
		t.Fatal("CHECK passed after the masquerade map was flushed")
	}
	// Re-ADD the same attachment repairs it.
	e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
	a = e.add(l, "ctr-switch", a.NS)
	if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
		t.Fatalf("CHECK after re-ADD: %v", err)
	}
	bn.Extra["ipMasqBackend"] = "iptables"
	l2 := e.ConfList(bn.conflist("1.1.0"))
	if err := e.CNI.DelNetworkList(e.Ctx(), l2, a.RT); err != nil {
		t.Fatalf("DEL with the other backend: %v", err)
	}
	if rs := ruleset(t); strings.Contains(rs, a.ip(true).String()) {
		t.Fatalf("nftables rules left after DEL through the iptables config:\n%s", rs)
	}
}

// TestBridgeMasqueradeGC: GC removes the masquerade of an attachment the
// runtime forgot.
func TestBridgeMasqueradeGC(t *testing.T) {
	for _, backend := range []string{"nftables", "iptables"} {
		t.Run(backend, func(t *testing.T) {
			e := NewEnv(t)
			bn := bridgeNet{Name: "mgc-" + backend, Bridge: "plmgc" + backend[:3], Subnet4: "10.64.0.0/24", DataDir: t.TempDir(),
				Extra: map[string]any{"ipMasq": true, "ipMasqBackend": backend}}
			l := e.ConfList(bn.conflist("1.1.0"))
			leak := e.add(l, "ctr-leak", testns.NewNS(t))
			if err := e.PluginGC(l); err != nil {
				t.Fatalf("GC: %v", err)
			}
			if rs := ruleset(t); strings.Contains(rs, leak.ip(true).String()) {
				t.Fatalf("GC left the leaked attachment's rules:\n%s", rs)
			}
			if hostLink(t, leak.Res.Interfaces[1].Name) != nil {
				t.Fatal("GC left the leaked veth")
			}
		})
	}
}
