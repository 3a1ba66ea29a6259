package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/plumbnet/plumb/internal/netns"
)

// inNS runs fn in n, or in the test's host namespace when n is nil.
func inNS(n *netns.NS, fn func() error) error {
	if n == nil {
		return fn()
	}
	return n.Do(fn)
}

// listenTCP serves on addr inside n; each connection is answered with the
// peer address the server saw, then closed.
func listenTCP(t *testing.T, n *netns.NS, addr string) string {
	t.Helper()
	var l net.Listener
	if err := inNS(n, func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			fmt.Fprintln(c, host)
			c.Close()
		}
	}()
	return l.Addr().String()
}

// dialTCP connects from n to addr and returns the source address the
// server reported.
func dialTCP(n *netns.NS, addr string) (string, error) {
	var c net.Conn
	if err := inNS(n, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 3*time.Second)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// mustReach asserts a TCP connection from n to addr works.
func mustReach(t *testing.T, n *netns.NS, addr string) string {
	t.Helper()
	src, err := dialTCP(n, addr)
	if err != nil {
		t.Fatalf("connect to %s: %v", addr, err)
	}
	return src
}

// hostVeth is the host-side veth name plumb's bridge gives an attachment
// with ifname eth0 (kept in sync with plugins/bridge by TestBridgeTwoContainers,
// which reads it from the result).
func hostVeth(t *testing.T, containerID string) string {
	t.Helper()
	sum := sha256.Sum256([]byte(containerID + "\x00eth0"))
	return "veth" + hex.EncodeToString(sum[:])[:11]
}

// linkIn reports whether name exists in n.
func linkIn(t *testing.T, n *netns.NS, name string) bool {
	t.Helper()
	h, err := n.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	_, err = h.LinkByName(name)
	return err == nil
}
