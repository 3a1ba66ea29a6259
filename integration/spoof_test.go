package integration

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/testns"
)

// dialFrom connects from n to addr with the given source address.
func dialFrom(n *netns.NS, src, addr string) error {
	return n.Do(func() error {
		d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err
	})
}

func setMAC(t *testing.T, n *netns.NS, mac string) {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	if err := n.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.LinkSetHardwareAddr(l, hw)
	}); err != nil {
		t.Fatal(err)
	}
}

func addAddr(t *testing.T, n *netns.NS, cidr string) {
	t.Helper()
	if err := n.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr(cidr)
		return netlink.AddrAdd(l, a)
	}); err != nil {
		t.Fatal(err)
	}
}

// TestBridgeSpoofCheck: with macspoofchk a container that forges its MAC or
// source IP is cut off; without it (the control) the same forgery passes,
// so the test shows the check, not a broken network.
func TestBridgeSpoofCheck(t *testing.T) {
	for i, check := range []bool{true, false} {
		name := "macspoofchk"
		if !check {
			name = "control"
		}
		t.Run(name, func(t *testing.T) {
			e := NewEnv(t)
			bn := bridgeNet{Name: "spoof-" + name, Bridge: "plsp" + name[:3], Subnet4: fmt.Sprintf("10.%d.0.0/24", 57+i), DataDir: t.TempDir(),
				Extra: map[string]any{"macspoofchk": check}}
			l := e.ConfList(bn.conflist("1.1.0"))
			a := e.add(l, "ctr-a-"+name, testns.NewNS(t))
			b := e.add(l, "ctr-b-"+name, testns.NewNS(t))
			srv := listenTCP(t, b.NS, net.JoinHostPort(b.ip(true).String(), "0"))
			mustReach(t, a.NS, srv)
			if check {
				if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}

			// A forged source IP from inside the subnet.
			forged := fmt.Sprintf("10.%d.0.99", 57+i)
			addAddr(t, a.NS, forged+"/24")
			err := dialFrom(a.NS, forged, srv)
			if check && err == nil {
				t.Fatalf("forged source %s reached the peer", forged)
			}
			if !check && err != nil {
				t.Fatalf("control: forged source did not pass without the check: %v", err)
			}
			// A forged MAC.
			setMAC(t, a.NS, "02:00:00:00:66:66")
			_, err = dialTCP(a.NS, srv)
			if check && err == nil {
				t.Fatal("a forged MAC reached the peer")
			}
			if !check && err != nil {
				t.Fatalf("control: forged MAC did not pass without the check: %v", err)
			}
			for _, at := range []*attachment{a, b} {
				if err := e.CNI.DelNetworkList(e.Ctx(), l, at.RT); err != nil {
					t.Fatal(err)
				}
			}
			if rs := ruleset(t); strings.Contains(rs, "s-"+a.Res.Interfaces[1].Name) {
				t.Fatalf("spoof chain left after DEL:\n%s", rs)
			}
		})
	}
}
