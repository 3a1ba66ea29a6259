package fw

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/testns"
)

// trafficNet is a container behind the test's host namespace, and an
// external host on the other side:
//
//	container 10.88.0.2/24 --veth-- 10.88.0.1/24 host 192.0.2.1/24 --veth-- 192.0.2.2/24 external
//
// The external host routes 10.88.0.0/24 back via the host, so unmasqueraded
// traffic gets answers too and the server sees the container's own address.
type trafficNet struct {
	ctr, ext *netns.NS
}

func newTrafficNet(t *testing.T) *trafficNet {
	t.Helper()
	requireThrowawayNS(t)
	n := &trafficNet{ctr: testns.NewNS(t), ext: testns.NewNS(t)}
	hostSide := func(name, peer string, in *netns.NS, hostAddr, peerAddr string, peerRoute *netlink.Route) {
		t.Helper()
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}
		if err := netlink.LinkAdd(veth); err != nil {
			t.Fatalf("add veth %s: %v", name, err)
		}
		t.Cleanup(func() { netlink.LinkDel(veth) })
		pl, err := netlink.LinkByName(peer)
		if err != nil {
			t.Fatal(err)
		}
		if err := netlink.LinkSetNsFd(pl, in.Fd()); err != nil {
			t.Fatalf("move %s: %v", peer, err)
		}
		a, _ := netlink.ParseAddr(hostAddr)
		if err := netlink.AddrAdd(veth, a); err != nil {
			t.Fatalf("address %s: %v", hostAddr, err)
		}
		if err := netlink.LinkSetUp(veth); err != nil {
			t.Fatal(err)
		}
		h, err := in.Netlink()
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		for _, name := range []string{"lo", peer} {
			l, err := h.LinkByName(name)
			if err != nil {
				t.Fatal(err)
			}
			if name == peer {
				a, _ := netlink.ParseAddr(peerAddr)
				if err := h.AddrAdd(l, a); err != nil {
					t.Fatalf("address %s: %v", peerAddr, err)
				}
				peerRoute.LinkIndex = l.Attrs().Index
			}
			if err := h.LinkSetUp(l); err != nil {
				t.Fatal(err)
			}
		}
		if err := h.RouteAdd(peerRoute); err != nil {
			t.Fatalf("route in %s: %v", in.Path(), err)
		}
	}
	_, ctrNet, _ := net.ParseCIDR("10.88.0.0/24")
	hostSide("plm-ext0", "plm-ext1", n.ext, "192.0.2.1/24", "192.0.2.2/24",
		&netlink.Route{Dst: ctrNet, Gw: net.ParseIP("192.0.2.1")})
	hostSide("plm-ctr0", "plm-ctr1", n.ctr, "10.88.0.1/24", "10.88.0.2/24",
		&netlink.Route{Gw: net.ParseIP("10.88.0.1")}) // default route
	// Per namespace: this is the throwaway host namespace's own switch.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644); err != nil {
		t.Fatalf("enable forwarding: %v", err)
	}
	return n
}

// listen starts a TCP server at addr (inside ns when not nil) whose
// accepted connections' remote IPs come out of the returned channel.
func listen(t *testing.T, ns *netns.NS, addr string) (string, <-chan string) {
	t.Helper()
	var ln net.Listener
	open := func() (err error) { ln, err = net.Listen("tcp4", addr); return err }
	var err error
	if ns != nil {
		err = ns.Do(open)
	} else {
		err = open()
	}
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { ln.Close() })
	seen := make(chan string, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			seen <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			c.Close()
		}
	}()
	return ln.Addr().String(), seen
}

// sourceSeen connects from the container to addr and returns the source
// address the server saw.
func (n *trafficNet) sourceSeen(t *testing.T, addr string, seen <-chan string) string {
	t.Helper()
	err := n.ctr.Do(func() error {
		c, err := net.DialTimeout("tcp4", addr, 3*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		t.Fatalf("connect from the container to %s: %v", addr, err)
	}
	select {
	case ip := <-seen:
		return ip
	case <-time.After(3 * time.Second):
		t.Fatalf("server at %s saw no connection", addr)
	}
	return ""
}

func TestMasqTraffic(t *testing.T) {
	n := newTrafficNet(t)
	extAddr, extSeen := listen(t, n.ext, "192.0.2.2:0")
	hostAddr, hostSeen := listen(t, nil, "10.88.0.1:0")
	ctx := context.Background()
	rule := masqRule(t, ownerA, "10.88.0.2/24")

	for _, h := range []masqHarness{nftHarness(), iptHarness()} {
		t.Run(h.name, func(t *testing.T) {
			m := h.fresh(t)
			if got := n.sourceSeen(t, extAddr, extSeen); got != "10.88.0.2" {
				t.Fatalf("without masquerade the server saw %s, want 10.88.0.2", got)
			}
			if err := m.AddMasq(ctx, rule); err != nil {
				t.Fatal(err)
			}
			if got := n.sourceSeen(t, extAddr, extSeen); got != "192.0.2.1" {
				t.Fatalf("with masquerade the server saw %s, want 192.0.2.1", got)
			}
			// Traffic within the container's own subnet keeps its source.
			if got := n.sourceSeen(t, hostAddr, hostSeen); got != "10.88.0.2" {
				t.Fatalf("in-subnet traffic was seen from %s, want 10.88.0.2", got)
			}
			if err := m.DelMasq(ctx, ownerA, nil); err != nil {
				t.Fatal(err)
			}
			if got := n.sourceSeen(t, extAddr, extSeen); got != "10.88.0.2" {
				t.Fatalf("after DEL the server saw %s, want 10.88.0.2", got)
			}
		})
	}
}
