package integration

import (
	"encoding/binary"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

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

// TestBridgeGratuitousARP: when a container comes up, the bridge sees an ARP
// announcing its address, so peers learn the new MAC at once.
func TestBridgeGratuitousARP(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "garp", Bridge: "plgarp", Subnet4: "10.59.0.0/24", DataDir: t.TempDir()}
	l := e.ConfList(bn.conflist("1.0.0"))
	first := e.add(l, "ctr-garp-1", testns.NewNS(t)) // creates the bridge
	defer e.CNI.DelNetworkList(e.Ctx(), l, first.RT)

	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ARP)))
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	br := hostLink(t, bn.Bridge)
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ARP), Ifindex: br.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1})

	n := testns.NewNS(t)
	rt := &libcni.RuntimeConf{ContainerID: "ctr-garp-2", NetNS: n.Path(), IfName: "eth0"}
	if _, err := e.CNI.AddNetworkList(e.Ctx(), l, rt); err != nil {
		t.Fatal(err)
	}
	defer e.CNI.DelNetworkList(e.Ctx(), l, rt)
	want := net.ParseIP("10.59.0.3").To4() // the second address handed out
	buf := make([]byte, 1500)
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		k, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil || k < 42 {
			continue
		}
		// Ethernet (14) + ARP: sender IP at 14+14, target IP at 14+24.
		spa, tpa := net.IP(buf[28:32]), net.IP(buf[38:42])
		if spa.Equal(want) && tpa.Equal(want) {
			return
		}
	}
	t.Fatalf("no gratuitous ARP for %s seen on %s", want, bn.Bridge)
}

func htons(v uint16) uint16 {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, v)
	return binary.NativeEndian.Uint16(b)
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
