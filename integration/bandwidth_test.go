package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/testns"
)

// Rates far enough apart that a swapped direction cannot pass for the
// other within the tolerance band.
const (
	bwEgress  = 8_000_000  // bits/s, container -> outside
	bwIngress = 32_000_000 // bits/s, outside -> container
)

func bwPlugin() map[string]any {
	return map[string]any{"type": "bandwidth",
		"egressRate": bwEgress, "egressBurst": 80_000, // 10 ms worth
		"ingressRate": bwIngress, "ingressBurst": 320_000}
}

// TestBandwidthShapesTraffic measures TCP throughput both ways between the
// container and its gateway in the host namespace.
func TestBandwidthShapesTraffic(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "bw-traffic", Bridge: "plbwtr", Subnet4: "10.170.0.0/24", DataDir: t.TempDir()}
	l := e.ConfList(tbChain(t, bn, "1.0.0", bwPlugin()))
	n := testns.NewNS(t)
	a := e.add(l, "ctr-bw", n)
	defer e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
	gw := a.Res.IPs[0].Gateway
	cases := []struct {
		name string
		want float64
		rate func() float64
	}{
		{"egress (container to host)", bwEgress, func() float64 { return tbThroughput(t, n, nil, gw, 2500*time.Millisecond) }},
		{"ingress (host to container)", bwIngress, func() float64 { return tbThroughput(t, nil, n, a.ip(true), 2500*time.Millisecond) }},
	}
	for _, c := range cases {
		got := c.rate()
		t.Logf("%s: %.2f Mbit/s, configured %.0f Mbit/s", c.name, got/1e6, c.want/1e6)
		if got < 0.5*c.want || got > 1.5*c.want {
			t.Errorf("%s: %.2f Mbit/s, want %.0f Mbit/s +-50%%", c.name, got/1e6, c.want/1e6)
		}
	}
}

// TestBandwidthRuntimeConfig: the limits come as Kubernetes passes them, in
// runtimeConfig (capability "bandwidth"), over every spec version.
func TestBandwidthRuntimeConfig(t *testing.T) {
	for i, v := range allSpecVersions {
		t.Run(v, func(t *testing.T) {
			e := NewEnv(t)
			bn := bridgeNet{Name: "bw-rt-" + v, Bridge: fmt.Sprintf("plbwrt%d", i), Subnet4: fmt.Sprintf("10.171.%d.0/24", i), DataDir: t.TempDir()}
			// No static limits: the pod's own apply (static ones would win, as in the reference).
			bp := map[string]any{"type": "bandwidth", "capabilities": map[string]bool{"bandwidth": true}}
			l := e.ConfList(tbChain(t, bn, v, bp))
			n := testns.NewNS(t)
			rt := &libcni.RuntimeConf{ContainerID: "ctr-rt", NetNS: n.Path(), IfName: "eth0",
				CapabilityArgs: map[string]any{"bandwidth": map[string]any{
					"ingressRate": 16_000_000, "ingressBurst": 4294967295, "egressRate": 4_000_000, "egressBurst": 4294967295}}}
			r, err := e.CNI.AddNetworkList(e.Ctx(), l, rt)
			if err != nil {
				t.Fatal(err)
			}
			res, err := current.NewResultFromResult(r)
			if err != nil {
				t.Fatal(err)
			}
			veth, ifb := res.Interfaces[1].Name, tbIfb(t, res)
			want := fmt.Sprintf("tbf 2000000 bytes/s, ingress, redirect, ifb plumb-bw/%s/ctr-rt/eth0, ifb tbf 500000 bytes/s", bn.Name)
			if got := tbTC(t, veth, ifb); got != want {
				t.Fatalf("after ADD: %s\nwant %s", got, want)
			}
			if atLeast(t, v, checkSince) {
				if err := e.CNI.CheckNetworkList(e.Ctx(), l, rt); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}
			for k := 0; k < 2; k++ {
				if err := e.CNI.DelNetworkList(e.Ctx(), l, rt); err != nil {
					t.Fatalf("DEL %d: %v", k+1, err)
				}
			}
			if hostLink(t, ifb) != nil {
				t.Fatal("ifb left after DEL")
			}
			netlink.LinkDel(hostLink(t, bn.Bridge))
		})
	}
}

// TestBandwidthDel: DEL of bandwidth alone removes its qdiscs and ifb from a
// host veth that stays, with prevResult, without it, and without the
// container namespace; twice is fine.
func TestBandwidthDel(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "bw-del", Bridge: "plbwdel", Subnet4: "10.172.0.0/24", DataDir: t.TempDir()}
	bp := bwPlugin()
	l := e.ConfList(tbChain(t, bn, "1.0.0", bp))
	n := testns.NewNS(t)
	a := e.add(l, "ctr-del", n)
	defer e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
	veth, ifb := a.Res.Interfaces[1].Name, tbIfb(t, a.Res)
	shaped := tbTC(t, veth, ifb)
	if !strings.Contains(shaped, "redirect") || !strings.Contains(shaped, "ifb tbf") {
		t.Fatalf("after ADD: %s", shaped)
	}
	withPrev := call{Command: "DEL", ContainerID: "ctr-del", Netns: n.Path(), IfName: "eth0", Stdin: tbStdin(t, "1.0.0", bn.Name, bp, a.Res)}
	add := withPrev
	add.Command = "ADD"
	noPrev := withPrev
	noPrev.Stdin = tbStdin(t, "1.0.0", bn.Name, map[string]any{"type": "bandwidth"}, nil)
	noNetns := noPrev
	noNetns.Netns = ""
	for _, del := range []struct {
		name string
		c    call
	}{{"with prevResult", withPrev}, {"without prevResult", noPrev}, {"without prevResult or netns", noNetns}} {
		if o := runPlugin(t, "bandwidth", add); o.Exit != 0 {
			t.Fatalf("bandwidth ADD: %s", o)
		}
		if got := tbTC(t, veth, ifb); got != shaped {
			t.Fatalf("ADD again: %s, want %s", got, shaped)
		}
		for k := 0; k < 2; k++ {
			if o := runPlugin(t, "bandwidth", del.c); o.Exit != 0 {
				t.Fatalf("DEL %s (%d): %s", del.name, k+1, o)
			}
			if got := tbTC(t, veth, ifb); got != "" {
				t.Fatalf("after DEL %s: %s", del.name, got)
			}
		}
		if hostLink(t, veth) == nil {
			t.Fatal("bandwidth DEL removed the host veth")
		}
	}
	// Unshaped, the container still reaches its gateway.
	srv := listenTCP(t, nil, a.Res.IPs[0].Gateway.String()+":0")
	mustReach(t, n, srv)
}

func TestBandwidthDelAfterNetnsGone(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "bw-gone", Bridge: "plbwgone", Subnet4: "10.173.0.0/24", DataDir: t.TempDir()}
	l := e.ConfList(tbChain(t, bn, "1.0.0", bwPlugin()))
	n := testns.NewRemovable(t)
	a := e.add(l, "ctr-gone", n.NS)
	ifb := tbIfb(t, a.Res)
	n.Remove()
	for k := 0; k < 2; k++ {
		if err := e.CNI.DelNetworkList(e.Ctx(), l, a.RT); err != nil {
			t.Fatalf("DEL %d after the netns was removed: %v", k+1, err)
		}
	}
	if hostLink(t, ifb) != nil {
		t.Fatal("ifb left")
	}
}

func TestBandwidthGC(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "bw-gc", Bridge: "plbwgc", Subnet4: "10.174.0.0/24", DataDir: t.TempDir()}
	l := e.ConfList(tbChain(t, bn, "1.1.0", bwPlugin()))
	keep := e.add(l, "ctr-keep", testns.NewNS(t))
	defer e.CNI.DelNetworkList(e.Ctx(), l, keep.RT)
	leak := e.add(l, "ctr-leak", testns.NewNS(t))
	if err := e.PluginGC(l, types.GCAttachment{ContainerID: "ctr-keep", IfName: "eth0"}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if hostLink(t, tbIfb(t, leak.Res)) != nil {
		t.Fatal("GC left the leaked attachment's ifb")
	}
	if hostLink(t, tbIfb(t, keep.Res)) == nil {
		t.Fatal("GC removed a valid attachment's ifb")
	}
	if err := e.CNI.CheckNetworkList(e.Ctx(), l, keep.RT); err != nil {
		t.Fatalf("CHECK of the kept attachment after GC: %v", err)
	}
}

func TestBandwidthCheckDetectsDrift(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "bw-drift", Bridge: "plbwdr", Subnet4: "10.175.0.0/24", DataDir: t.TempDir()}
	l := e.ConfList(tbChain(t, bn, "1.0.0", bwPlugin()))
	a := e.add(l, "ctr-drift", testns.NewNS(t))
	defer e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
	if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	// Someone takes the redirect away by hand.
	veth := hostLink(t, a.Res.Interfaces[1].Name)
	if err := netlink.QdiscDel(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: veth.Attrs().Index,
		Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}); err != nil {
		t.Fatal(err)
	}
	if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err == nil || !strings.Contains(err.Error(), "redirect") {
		t.Fatalf("CHECK without the redirect: %v", err)
	}
}

// TestBandwidthRejects: invalid limits are config errors before anything is
// created; subnet selection is refused as unsupported.
func TestBandwidthRejects(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "bw-bad", Bridge: "plbwbad", Subnet4: "10.176.0.0/24", DataDir: t.TempDir()}
	cases := []struct {
		name   string
		plugin map[string]any
		code   uint
		msg    string
	}{
		{"rate without burst", map[string]any{"type": "bandwidth", "egressRate": 1000}, 7, "egressRate is set without egressBurst"},
		{"burst too big", map[string]any{"type": "bandwidth", "ingressRate": 1000, "ingressBurst": 1 << 40}, 7, "ingressBurst"},
		{"negative rate", map[string]any{"type": "bandwidth", "ingressRate": -1, "ingressBurst": 1000}, 7, "ingressRate"},
		{"unshapedSubnets", map[string]any{"type": "bandwidth", "ingressRate": 1000, "ingressBurst": 1000, "unshapedSubnets": []string{"10.0.0.0/8"}}, 2, "not supported"},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := e.ConfList(tbChain(t, bn, "1.0.0", c.plugin))
			rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("ctr-bad%d", i), NetNS: testns.NewNS(t).Path(), IfName: "eth0"}
			_, err := e.CNI.AddNetworkList(e.Ctx(), l, rt)
			if te := wantCode(t, err, c.code); !strings.Contains(te.Msg, c.msg) {
				t.Fatalf("message %q does not say %q", te.Msg, c.msg)
			}
			if got := tbTC(t, hostVeth(t, rt.ContainerID), ""); got != "" {
				t.Fatalf("rejected config shaped the veth: %s", got)
			}
			e.CNI.DelNetworkList(e.Ctx(), l, rt)
		})
	}
}
