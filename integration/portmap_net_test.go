package integration

import (
	"errors"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/netns"
)

// Traffic helpers for the port publishing tests: UDP twins of listenTCP and
// dialTCP, a short-timeout probe for what must not connect, and an external
// namespace with IPv6.

// listenUDP serves on network ("udp4", "udp6") addr inside n; each
// datagram is answered with the peer address the server saw, which also
// goes to seen (dropped when nobody reads).
func listenUDP(t *testing.T, n *netns.NS, network, addr string, seen chan<- string) {
	t.Helper()
	var c net.PacketConn
	if err := inNS(n, func() (err error) {
		c, err = net.ListenPacket(network, addr)
		return err
	}); err != nil {
		t.Fatalf("listen on %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			_, peer, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(peer.String())
			select {
			case seen <- host:
			default:
			}
			c.WriteTo([]byte(host), peer)
		}
	}()
}

// listenTCPOn is listenTCP on an explicit network ("tcp4", "tcp6"): a
// wildcard "tcp" listener is dual-stack only if Go's one-time probe of the
// process found IPv6 usable, which depends on where it first ran.
func listenTCPOn(t *testing.T, n *netns.NS, network, addr string) {
	t.Helper()
	var l net.Listener
	if err := inNS(n, func() (err error) {
		l, err = net.Listen(network, addr)
		return err
	}); err != nil {
		t.Fatalf("listen on %s %s: %v", network, addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			c.Write([]byte(host + "\n"))
			c.Close()
		}
	}()
}

// dialUDP sends from n to addr until an answer comes (three tries, a
// second each) and returns the source address the server saw.
func dialUDP(n *netns.NS, addr string) (string, error) {
	var c net.Conn
	if err := inNS(n, func() (err error) {
		c, err = net.Dial("udp", addr)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	buf := make([]byte, 1500)
	var last error
	for range 3 {
		if _, err := c.Write([]byte("ping")); err != nil {
			last = err
			continue
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		last = err
	}
	return "", last
}

func mustReachUDP(t *testing.T, n *netns.NS, addr string) string {
	t.Helper()
	src, err := dialUDP(n, addr)
	if err != nil {
		t.Fatalf("udp to %s: %v", addr, err)
	}
	return src
}

// mustNotConnect fails if a TCP connection from n to addr succeeds within
// a short while.
func mustNotConnect(t *testing.T, n *netns.NS, addr string) {
	t.Helper()
	err := inNS(n, func() error {
		c, err := net.DialTimeout("tcp", addr, 700*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	})
	if err == nil {
		t.Fatalf("connected to %s, want no connection", addr)
	}
}

// udpStream sends a datagram from n to addr every 20 ms, always from the
// same source port (one long-lived flow), until the test ends.
func udpStream(t *testing.T, n *netns.NS, addr string) {
	t.Helper()
	var c net.Conn
	if err := inNS(n, func() (err error) {
		c, err = net.Dial("udp", addr)
		return err
	}); err != nil {
		t.Fatalf("dial udp %s: %v", addr, err)
	}
	var stop atomic.Bool
	done := make(chan struct{})
	t.Cleanup(func() { stop.Store(true); <-done; c.Close() })
	go func() {
		defer close(done)
		for !stop.Load() {
			c.Write([]byte("stream")) // errors (ICMP unreachable) are expected
			time.Sleep(20 * time.Millisecond)
		}
	}()
}

// receives reports whether seen gets a datagram within d (0: has one now).
func receives(seen <-chan string, d time.Duration) bool {
	if d == 0 {
		select {
		case <-seen:
			return true
		default:
			return false
		}
	}
	deadline := time.After(d)
	for {
		select {
		case <-seen:
			return true
		case <-deadline:
			return false
		}
	}
}

// drain empties seen.
func drain(seen <-chan string) {
	for {
		select {
		case <-seen:
		default:
			return
		}
	}
}

// Addresses of the host and the external namespace on their link.
const (
	hostExt4  = "192.0.2.1"
	hostExt4b = "192.0.2.3" // a second host address on the same link
	extAddr4  = "192.0.2.2"
	hostExt6  = "2001:db8:e::1"
	extAddr6  = "2001:db8:e::2"
)

// pmExternal is external() with IPv6 on both ends (no DAD) and a second
// IPv4 address on the host's end.
func pmExternal(t *testing.T) *netns.NS {
	t.Helper()
	ext := external(t)
	host, err := netlink.LinkByName("plext0")
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{hostExt6 + "/64", hostExt4b + "/24"} {
		addr, _ := netlink.ParseAddr(a)
		addr.Flags = unix.IFA_F_NODAD
		if err := netlink.AddrAdd(host, addr); err != nil {
			t.Fatalf("add %s to plext0: %v", a, err)
		}
	}
	if err := ext.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr(extAddr6 + "/64")
		addr.Flags = unix.IFA_F_NODAD
		return netlink.AddrAdd(l, addr)
	}); err != nil {
		t.Fatalf("IPv6 in the external namespace: %v", err)
	}
	return ext
}

// routeVia adds, in n, a route to dst through the host's external address.
func routeVia(t *testing.T, n *netns.NS, dst string) {
	t.Helper()
	_, d, err := net.ParseCIDR(dst)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Do(func() error {
		return netlink.RouteAdd(&netlink.Route{Dst: d, Gw: net.ParseIP(hostExt4)})
	}); err != nil {
		t.Fatalf("route %s via %s: %v", dst, hostExt4, err)
	}
}

// inExt runs a command inside n (for the few settings netlink lacks).
func inExt(t *testing.T, n *netns.NS, name string, args ...string) {
	t.Helper()
	if err := n.Do(func() error {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return errors.New(strings.TrimSpace(string(out)) + ": " + err.Error())
		}
		return nil
	}); err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
}
