package integration

import (
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/testns"
)

// sysctlIn reads a sysctl inside n.
func sysctlIn(t *testing.T, n *netns.NS, key string) string {
	t.Helper()
	var v []byte
	if err := n.Do(func() (err error) {
		v, err = os.ReadFile("/proc/sys/" + key)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

func TestBridgePortOptions(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "portopts", Bridge: "plport", Subnet4: "10.58.0.0/24", Subnet6: "fd00:58::/64", DataDir: t.TempDir(),
		Extra: map[string]any{"promiscMode": true, "portIsolation": true, "disableContainerInterface": true, "enabledad": true}}
	l := e.ConfList(bn.conflist("1.0.0"))
	a := e.add(l, "ctr-port", testns.NewNS(t))
	if br := hostLink(t, bn.Bridge); br.Attrs().Promisc == 0 {
		t.Fatal("bridge not promiscuous")
	}
	pi, err := netlink.LinkGetProtinfo(hostLink(t, a.Res.Interfaces[1].Name))
	if err != nil || !pi.Isolated {
		t.Fatalf("port not isolated: %+v %v", pi, err)
	}
	var up bool
	a.NS.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err == nil {
			up = l.Attrs().Flags&net.FlagUp != 0
		}
		return err
	})
	if up {
		t.Fatal("disableContainerInterface left eth0 up")
	}
	if v := sysctlIn(t, a.NS, "net/ipv6/conf/eth0/accept_dad"); v != "1" {
		t.Fatalf("enabledad: accept_dad = %s", v)
	}
	e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
}

// TestBridgeAnnouncesAddress: when a container comes up with an address a
// peer still maps to an old MAC (a reused address), the peer learns the new
// MAC at once, without waiting for its entry to go stale and be probed.
func TestBridgeAnnouncesAddress(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "garp", Bridge: "plgarp", Subnet4: "10.59.0.0/24", DataDir: t.TempDir()}
	l := e.ConfList(bn.conflist("1.0.0"))
	peer := e.add(l, "ctr-garp-1", testns.NewNS(t)) // 10.59.0.2
	defer e.CNI.DelNetworkList(e.Ctx(), l, peer.RT)
	reused := net.ParseIP("10.59.0.3").To4() // the next address handed out
	old, _ := net.ParseMAC("02:00:00:00:00:99")
	neighOf := func() (mac string) {
		peer.NS.Do(func() error {
			lk, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			list, _ := netlink.NeighList(lk.Attrs().Index, netlink.FAMILY_V4)
			for _, n := range list {
				if n.IP.Equal(reused) {
					mac = n.HardwareAddr.String()
				}
			}
			return nil
		})
		return mac
	}
	if err := peer.NS.Do(func() error {
		lk, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.NeighSet(&netlink.Neigh{LinkIndex: lk.Attrs().Index, IP: reused, HardwareAddr: old, State: netlink.NUD_STALE})
	}); err != nil {
		t.Fatal(err)
	}
	if got := neighOf(); got != old.String() {
		t.Fatalf("stale entry not set: %q", got)
	}
	time.Sleep(1100 * time.Millisecond) // past the kernel's ARP locktime (1 s)
	c := e.add(l, "ctr-garp-2", testns.NewNS(t))
	defer e.CNI.DelNetworkList(e.Ctx(), l, c.RT)
	if !c.ip(true).Equal(reused) {
		t.Fatalf("new container got %s, want %s", c.ip(true), reused)
	}
	// And the kernel announces it again if its MAC ever changes.
	if v := sysctlIn(t, c.NS, "net/ipv4/conf/eth0/arp_notify"); v != "1" {
		t.Errorf("arp_notify = %s on the container interface, want 1", v)
	}
	want := c.Res.Interfaces[2].Mac
	for i := 0; i < 20; i++ {
		if neighOf() == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("peer still maps %s to %s, not the new container's %s", reused, neighOf(), want)
}

// TestBridgeRemovedWhenEmpty: with removeBridgeWhenEmpty the last DEL
// removes a bridge plumb created, not before, and never one it did not.
func TestBridgeRemovedWhenEmpty(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "empty", Bridge: "plempty", Subnet4: "10.74.0.0/24", DataDir: t.TempDir(),
		Extra: map[string]any{"removeBridgeWhenEmpty": true}}
	l := e.ConfList(bn.conflist("1.0.0"))
	a := e.add(l, "ctr-e1", testns.NewNS(t))
	b := e.add(l, "ctr-e2", testns.NewNS(t))
	e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
	if hostLink(t, bn.Bridge) == nil {
		t.Fatal("bridge removed while a container is still on it")
	}
	e.CNI.DelNetworkList(e.Ctx(), l, b.RT)
	if hostLink(t, bn.Bridge) != nil {
		t.Fatal("bridge left after its last container left")
	}
	// A bridge someone else made stays.
	mine := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "plnotmine"}}
	if err := netlink.LinkAdd(mine); err != nil {
		t.Fatal(err)
	}
	defer netlink.LinkDel(mine)
	bn2 := bn
	bn2.Name, bn2.Bridge = "notmine", "plnotmine"
	l2 := e.ConfList(bn2.conflist("1.0.0"))
	c := e.add(l2, "ctr-e3", testns.NewNS(t))
	e.CNI.DelNetworkList(e.Ctx(), l2, c.RT)
	if hostLink(t, "plnotmine") == nil {
		t.Fatal("removed a bridge plumb did not create")
	}
}

// TestBridgeKeepsRouterAdvertisements: turning IPv6 forwarding on must not
// make the uplink drop router advertisements (accept_ra 1 becomes 2).
func TestBridgeKeepsRouterAdvertisements(t *testing.T) {
	e := NewEnv(t)
	writeProcSys(t, "net/ipv6/conf/all/forwarding", "0")
	up := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pluplink"}, PeerName: "pluplink-p"}
	if err := netlink.LinkAdd(up); err != nil {
		t.Fatal(err)
	}
	defer netlink.LinkDel(up)
	writeProcSys(t, "net/ipv6/conf/pluplink/accept_ra", "1")
	bn := bridgeNet{Name: "ra", Bridge: "plra", Subnet4: "10.75.0.0/24", Subnet6: "fd00:75::/64", DataDir: t.TempDir()}
	l := e.ConfList(bn.conflist("1.0.0"))
	a := e.add(l, "ctr-ra", testns.NewNS(t))
	defer e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
	if v, _ := os.ReadFile("/proc/sys/net/ipv6/conf/all/forwarding"); strings.TrimSpace(string(v)) != "1" {
		t.Fatal("IPv6 forwarding not turned on")
	}
	if v, _ := os.ReadFile("/proc/sys/net/ipv6/conf/pluplink/accept_ra"); strings.TrimSpace(string(v)) != "2" {
		t.Fatalf("uplink accept_ra = %s, want 2", v)
	}
}
