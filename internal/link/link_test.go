package link

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/testns"
)

func TestMain(m *testing.M) { testns.MainInHostNS(m) }

// TestAddVethFailureLeavesNothing: when the kernel creates the pair but
// refuses the rest of the request (here a master that takes no ports; on a
// real host a bridge at its 1024-port limit answers EXFULL the same way),
// neither end may stay behind: the container would keep an eth0 that
// blocks every later ADD.
func TestAddVethFailureLeavesNothing(t *testing.T) {
	host := openHost(t)
	cns := testns.NewNS(t)
	cont, err := Open(cns, cns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer cont.Close()
	lo, err := host.Get("lo")
	if err != nil || lo == nil {
		t.Fatal("no lo:", err)
	}
	_, err = host.AddVeth(VethSpec{HostName: "vfail0", MasterIndex: lo.Attrs().Index, PeerName: "eth0", PeerNS: cns})
	if err == nil {
		t.Fatal("AddVeth with lo as master succeeded")
	}
	for _, c := range []struct {
		ns   *NS
		name string
	}{{host, "vfail0"}, {cont, "eth0"}} {
		if l, err := c.ns.Get(c.name); err != nil || l != nil {
			t.Errorf("%s left in %s after the failed AddVeth (%v)", c.name, c.ns.Name, err)
		}
	}
}

// TestAddrsOfAndEnsureAddr: AddrsOf lists one link's addresses only, and
// EnsureAddr keeps an address that is there, refuses another one in the
// same subnet unless forced, and then replaces it.
func TestAddrsOfAndEnsureAddr(t *testing.T) {
	_, ns, links := bridgesIn(t, "br-a", "br-b")
	mustCIDR := func(s string) net.IPNet {
		ip, n, err := net.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		n.IP = ip
		return *n
	}
	list := func(l netlink.Link, fam int) string {
		t.Helper()
		got, err := ns.AddrsOf(l, fam)
		if err != nil {
			t.Fatal(err)
		}
		var s []string
		for _, a := range got {
			s = append(s, a.String())
		}
		return strings.Join(s, " ")
	}
	for _, c := range []struct {
		l    netlink.Link
		addr string
	}{{links[0], "10.1.0.1/24"}, {links[1], "10.2.0.1/24"}, {links[0], "fd00:1::1/64"}, {links[1], "fd00:2::1/64"}} {
		if err := ns.EnsureAddr(c.l, mustCIDR(c.addr), false); err != nil {
			t.Fatalf("EnsureAddr %s: %v", c.addr, err)
		}
	}
	if got := list(links[0], netlink.FAMILY_V4); got != "10.1.0.1/24" {
		t.Errorf("AddrsOf(br-a, v4) = %q", got)
	}
	if got := list(links[1], netlink.FAMILY_V6); got != "fd00:2::1/64" {
		t.Errorf("AddrsOf(br-b, v6) = %q", got)
	}
	if err := ns.EnsureAddr(links[0], mustCIDR("10.1.0.1/24"), false); err != nil {
		t.Errorf("EnsureAddr of a present address: %v", err)
	}
	if err := ns.EnsureAddr(links[0], mustCIDR("10.1.0.254/24"), false); err == nil || !strings.Contains(err.Error(), "forceAddress") {
		t.Errorf("EnsureAddr of another address in the subnet = %v, want a forceAddress error", err)
	}
	if err := ns.EnsureAddr(links[0], mustCIDR("10.1.0.254/24"), true); err != nil {
		t.Fatalf("forced EnsureAddr: %v", err)
	}
	if got := list(links[0], netlink.FAMILY_V4); got != "10.1.0.254/24" {
		t.Errorf("after the forced replace, AddrsOf(br-a, v4) = %q", got)
	}
}

// TestSetIPv4Conf: the netlink write lands where sysctl reads it.
func TestSetIPv4Conf(t *testing.T) {
	n, ns, links := bridgesIn(t, "d0")
	l := links[0]
	read := func() string {
		var v []byte
		if err := n.Do(func() (err error) {
			v, err = os.ReadFile("/proc/sys/net/ipv4/conf/d0/arp_notify")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(v))
	}
	for _, want := range []uint32{1, 0} {
		if err := ns.SetIPv4Conf(l, IPv4ConfARPNotify, want); err != nil {
			t.Fatal(err)
		}
		if got := read(); got != fmt.Sprint(want) {
			t.Errorf("arp_notify = %s after setting %d", got, want)
		}
	}
}

// TestConfReads: IPv4Conf and Forwarding read what sysctl writes.
func TestConfReads(t *testing.T) {
	n, ns, links := bridgesIn(t, "b0")
	l := links[0]
	write := func(key, v string) {
		t.Helper()
		if err := n.Do(func() error { return os.WriteFile("/proc/sys/"+key, []byte(v), 0o644) }); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range []uint32{1, 0} {
		write("net/ipv4/conf/b0/route_localnet", fmt.Sprint(v))
		if got, err := ns.IPv4Conf(l, IPv4ConfRouteLocalnet); err != nil || got != v {
			t.Errorf("IPv4Conf(route_localnet) = %d, %v; want %d", got, err, v)
		}
		write("net/ipv4/ip_forward", fmt.Sprint(v))
		write("net/ipv6/conf/all/forwarding", fmt.Sprint(v))
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			if got, err := ns.Forwarding(fam); err != nil || got != (v == 1) {
				t.Errorf("Forwarding(%d) = %v, %v; want %v", fam, got, err, v == 1)
			}
		}
	}
	if err := ns.SetIPv4Conf(l, IPv4ConfRouteLocalnet, 1); err != nil {
		t.Fatal(err)
	}
	if got, err := ns.IPv4Conf(l, IPv4ConfRouteLocalnet); err != nil || got != 1 {
		t.Errorf("after SetIPv4Conf, IPv4Conf(route_localnet) = %d, %v", got, err)
	}
}

// bridgesIn opens a fresh namespace with a bridge per name (this kernel has
// no dummy module) and returns it with the links.
func bridgesIn(t *testing.T, names ...string) (*netns.NS, *NS, []netlink.Link) {
	t.Helper()
	testns.RequireRoot(t)
	n := testns.NewNS(t)
	ns, err := Open(n, n.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ns.Close)
	var links []netlink.Link
	for _, name := range names {
		if err := ns.H.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatal(err)
		}
		l, err := ns.Get(name)
		if err != nil || l == nil {
			t.Fatal(name, err)
		}
		links = append(links, l)
	}
	return n, ns, links
}

// TestAddVethTagsPort: the host end gets its alias, and no IPv6 address
// generation (a bridge port uses no address of its own); with an MTU below
// IPv6's minimum the link has no IPv6 at all, and the alias is still set.
func TestAddVethTagsPort(t *testing.T) {
	host := openHost(t)
	br, _, err := host.EnsureBridge(BridgeSpec{Name: "brtag0"})
	if err != nil {
		t.Fatal(err)
	}
	defer host.H.LinkDel(br)
	for i, mtu := range []int{0, 1200} {
		name := fmt.Sprintf("vtag%d", i)
		cns := testns.NewNS(t)
		v, err := host.AddVeth(VethSpec{HostName: name, Alias: "plumb/test/" + name, MasterIndex: br.Index, MTU: mtu, PeerName: "eth0", PeerNS: cns})
		if err != nil {
			t.Fatalf("MTU %d: %v", mtu, err)
		}
		got, err := host.Get(name)
		if err != nil || got == nil {
			t.Fatalf("MTU %d: %s not found: %v", mtu, name, err)
		}
		if got.Attrs().Alias != "plumb/test/"+name {
			t.Errorf("MTU %d: alias %q", mtu, got.Attrs().Alias)
		}
		// Bring the peer up: with generation on, the host end would now
		// get its link-local address.
		if err := cns.Do(func() error {
			l, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			return netlink.LinkSetUp(l)
		}); err != nil {
			t.Fatal(err)
		}
		host.WaitOperUp(name, time.Second)
		if a, _ := host.H.AddrList(v, netlink.FAMILY_V6); len(a) != 0 {
			t.Errorf("MTU %d: host end has IPv6 addresses %v", mtu, a)
		}
		// Where the link has IPv6, the mode itself says so (ip prints it).
		out, err := exec.Command("ip", "-d", "-o", "link", "show", "dev", name).CombinedOutput()
		if err != nil {
			t.Fatalf("ip link show %s: %v\n%s", name, err, out)
		}
		if mtu == 0 && !strings.Contains(string(out), "addrgenmode none") {
			t.Errorf("host end %s: %s", name, out)
		}
		host.H.LinkDel(v)
	}
}

// openHost opens the test's host namespace (this process's own).
func openHost(t *testing.T) *NS {
	t.Helper()
	testns.RequireRoot(t)
	hns, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer hns.Close()
	host, err := Open(hns, "host")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(host.Close)
	return host
}
