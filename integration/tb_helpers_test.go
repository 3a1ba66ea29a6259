package integration

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/netns"
)

// Helpers of the tuning and bandwidth tests; names start with tb.

// tbChain is bn's bridge plugin followed by more plugins in one conflist.
func tbChain(t *testing.T, bn bridgeNet, version string, more ...map[string]any) string {
	t.Helper()
	var list map[string]any
	if err := json.Unmarshal([]byte(bn.conflist(version)), &list); err != nil {
		t.Fatal(err)
	}
	plugins := list["plugins"].([]any)
	for _, p := range more {
		plugins = append(plugins, p)
	}
	list["plugins"] = plugins
	return string(mustJSON(t, list))
}

// tbStdin is one plugin's config as a runtime sends it, with prevResult
// (converted to version) when prev is not nil.
func tbStdin(t *testing.T, version, network string, plugin map[string]any, prev types.Result) []byte {
	t.Helper()
	conf := map[string]any{"cniVersion": version, "name": network}
	for k, v := range plugin {
		conf[k] = v
	}
	if prev != nil {
		r, err := prev.GetAsVersion(version)
		if err != nil {
			t.Fatal(err)
		}
		var raw map[string]any
		if err := json.Unmarshal(mustJSON(t, r), &raw); err != nil {
			t.Fatal(err)
		}
		conf["prevResult"] = raw
	}
	return mustJSON(t, conf)
}

// tbLink is the attributes tuning changes, as one comparable string.
func tbLink(t *testing.T, n *netns.NS, name string) string {
	t.Helper()
	h, err := n.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	a := l.Attrs()
	return fmt.Sprintf("mac %s mtu %d promisc %v allmulti %v txqlen %d", a.HardwareAddr, a.MTU,
		a.RawFlags&unix.IFF_PROMISC != 0, a.RawFlags&unix.IFF_ALLMULTI != 0, a.TxQLen)
}

// tbFiles lists a directory's file names, sorted.
func tbFiles(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// tbSaved reads the value tuning saved under key for an attachment.
func tbSaved(t *testing.T, dataDir, containerID, key string) any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, containerID+"_eth0.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m[key]
}

// tbTC describes the shaping on a host veth (root tbf, ingress qdisc,
// redirect) and the ifb, in the test's host namespace: "" when none.
func tbTC(t *testing.T, veth, ifb string) string {
	t.Helper()
	var out []string
	if l, err := netlink.LinkByName(veth); err == nil {
		qs, _ := netlink.QdiscList(l)
		for _, q := range qs {
			switch q := q.(type) {
			case *netlink.Tbf:
				out = append(out, fmt.Sprintf("tbf %d bytes/s", q.Rate))
			case *netlink.Ingress:
				out = append(out, "ingress")
			}
		}
		fs, _ := netlink.FilterList(l, netlink.MakeHandle(0xffff, 0))
		for _, f := range fs {
			if u, ok := f.(*netlink.U32); ok && u.RedirIndex != 0 {
				out = append(out, "redirect")
			}
		}
	}
	if l, err := netlink.LinkByName(ifb); err == nil {
		out = append(out, "ifb "+l.Attrs().Alias)
		qs, _ := netlink.QdiscList(l)
		for _, q := range qs {
			if tb, ok := q.(*netlink.Tbf); ok {
				out = append(out, fmt.Sprintf("ifb tbf %d bytes/s", tb.Rate))
			}
		}
	}
	return strings.Join(out, ", ")
}

// tbIfb is the ifb bandwidth lists last in its result.
func tbIfb(t *testing.T, res *current.Result) string {
	t.Helper()
	last := res.Interfaces[len(res.Interfaces)-1]
	if !strings.HasPrefix(last.Name, "plbw") || last.Sandbox != "" {
		t.Fatalf("result does not end with the ifb: %+v", res.Interfaces)
	}
	return last.Name
}

// tbThroughput streams TCP from namespace from (nil: the test's host
// namespace) to a server listening on ip in namespace to, and returns the
// rate the server received at in bits/s, measured over window after a
// warm-up that lets TCP leave slow start and drains any burst.
func tbThroughput(t *testing.T, from, to *netns.NS, ip net.IP, window time.Duration) float64 {
	t.Helper()
	var l net.Listener
	if err := inNS(to, func() (err error) {
		l, err = net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
		return err
	}); err != nil {
		t.Fatalf("listen on %s: %v", ip, err)
	}
	defer l.Close()
	var got atomic.Int64
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
		buf := make([]byte, 64<<10)
		for {
			n, err := c.Read(buf)
			got.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	var c net.Conn
	if err := inNS(from, func() (err error) {
		c, err = net.DialTimeout("tcp", l.Addr().String(), 3*time.Second)
		return err
	}); err != nil {
		t.Fatalf("connect to %s: %v", l.Addr(), err)
	}
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	srv := <-accepted
	defer func() {
		c.Close()
		if srv != nil {
			srv.Close()
		}
	}()
	time.Sleep(time.Second)
	start, b0 := time.Now(), got.Load()
	time.Sleep(window)
	return float64(got.Load()-b0) * 8 / time.Since(start).Seconds()
}
