package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/testns"
)

func TestMain(m *testing.M) { testns.MainInHostNS(m) }

// pair makes a veth pair: hostName in the test's (throwaway) host namespace,
// eth0 in a new container namespace.
func pair(t *testing.T, hostName string) *netns.NS {
	t.Helper()
	c := testns.NewNS(t)
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName, TxQLen: -1, Flags: 1}, PeerName: "eth0", PeerNamespace: netlink.NsFd(c.Fd())}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatalf("create veth %s: %v", hostName, err)
	}
	t.Cleanup(func() { netlink.LinkDel(v) })
	return c
}

func bwArgs(c *netns.NS, id, hostName, extra string) *skel.CmdArgs {
	prev := fmt.Sprintf(`"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"br0"},{"name":%q},{"name":"eth0","sandbox":%q}]}`, hostName, c.Path())
	if extra != "" {
		prev += "," + extra
	}
	return &skel.CmdArgs{ContainerID: id, Netns: c.Path(), IfName: "eth0", StdinData: conf(prev)}
}

const limits = `"ingressRate":8000000,"ingressBurst":80000,"egressRate":4000000,"egressBurst":40000`

// tcState describes what plumb's shaping left on a host veth and whether
// the attachment's ifb exists, for comparisons.
func tcState(t *testing.T, veth, ifb string) string {
	t.Helper()
	l, err := netlink.LinkByName(veth)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	qs, _ := netlink.QdiscList(l)
	for _, q := range qs {
		switch q := q.(type) {
		case *netlink.Tbf:
			out = append(out, fmt.Sprintf("tbf rate %d", q.Rate))
		case *netlink.Ingress:
			out = append(out, "ingress")
		}
	}
	fs, _ := netlink.FilterList(l, ingressHandle)
	for _, f := range fs {
		if u, ok := f.(*netlink.U32); ok && u.RedirIndex != 0 {
			out = append(out, "redirect")
		}
	}
	if il, err := netlink.LinkByName(ifb); err == nil {
		out = append(out, "ifb "+il.Attrs().Alias)
		if qs, _ := netlink.QdiscList(il); len(qs) > 0 {
			if tb, ok := qs[0].(*netlink.Tbf); ok {
				out = append(out, fmt.Sprintf("ifb tbf rate %d", tb.Rate))
			}
		}
	}
	return strings.Join(out, ", ")
}

func TestBandwidthRealShaping(t *testing.T) {
	c := pair(t, "vbw0")
	p := New()
	args := bwArgs(c, "ctr1", "vbw0", limits)
	ifb := ifbName("ctr1", "eth0")
	r, err := p.Add(args)
	if err != nil {
		t.Fatal(err)
	}
	want := "tbf rate 1000000, ingress, redirect, ifb plumb-bw/net1/ctr1/eth0, ifb tbf rate 500000"
	if got := tcState(t, "vbw0", ifb); got != want {
		t.Fatalf("after ADD: %s\nwant %s", got, want)
	}
	res := r.(*current.Result)
	if n := len(res.Interfaces); n != 4 || res.Interfaces[3].Name != ifb || res.Interfaces[3].Sandbox != "" {
		t.Fatalf("result interfaces: %+v", res.Interfaces)
	}
	if err := p.Check(args); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	// A retried ADD replaces its own leftovers.
	if _, err := p.Add(args); err != nil {
		t.Fatalf("second ADD: %v", err)
	}
	if got := tcState(t, "vbw0", ifb); got != want {
		t.Fatalf("after second ADD: %s", got)
	}
	for i := 0; i < 2; i++ {
		if err := p.Del(args); err != nil {
			t.Fatalf("DEL %d: %v", i+1, err)
		}
		if got := tcState(t, "vbw0", ifb); got != "" {
			t.Fatalf("after DEL %d: %s", i+1, got)
		}
	}

	// DEL with neither prevResult nor namespace: found through the redirect.
	if _, err := p.Add(args); err != nil {
		t.Fatal(err)
	}
	bare := &skel.CmdArgs{ContainerID: "ctr1", IfName: "eth0", StdinData: conf("")}
	if err := p.Del(bare); err != nil {
		t.Fatal(err)
	}
	if got := tcState(t, "vbw0", ifb); got != "" {
		t.Fatalf("after DEL without prevResult: %s", got)
	}

	// Ingress only: no ifb.
	in := bwArgs(c, "ctr1", "vbw0", `"ingressRate":8000000,"ingressBurst":80000`)
	if _, err := p.Add(in); err != nil {
		t.Fatal(err)
	}
	if got := tcState(t, "vbw0", ifb); got != "tbf rate 1000000" {
		t.Fatalf("ingress only: %s", got)
	}
	if err := p.Del(&skel.CmdArgs{ContainerID: "ctr1", Netns: c.Path(), IfName: "eth0", StdinData: conf("")}); err != nil {
		t.Fatal(err)
	}
	if got := tcState(t, "vbw0", ifb); got != "" {
		t.Fatalf("after DEL through the namespace: %s", got)
	}
}

func TestBandwidthRealCheckDetectsDrift(t *testing.T) {
	c := pair(t, "vbw1")
	p := New()
	args := bwArgs(c, "ctr2", "vbw1", limits)
	if _, err := p.Add(args); err != nil {
		t.Fatal(err)
	}
	defer p.Del(args)
	l, _ := netlink.LinkByName("vbw1")
	h, err := openHost()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.setRootTbf(l, tbfParams{Rate: 1234, Buffer: 100000, Limit: 10000}); err != nil {
		t.Fatal(err)
	}
	if err := p.Check(args); err == nil || !strings.Contains(err.Error(), "rate 1234") {
		t.Fatalf("CHECK after the tbf changed: %v", err)
	}
	p.Add(args)
	netlink.LinkDel(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: ifbName("ctr2", "eth0")}})
	if err := p.Check(args); err == nil || !strings.Contains(err.Error(), "missing") {
		t.Fatalf("CHECK after the ifb was deleted: %v", err)
	}
}

func TestBandwidthRealAddRefusesUnlistedVeth(t *testing.T) {
	c := pair(t, "vbw2")
	args := bwArgs(c, "ctr3", "other0", limits)
	_, err := New().Add(args)
	if err == nil || !strings.Contains(err.Error(), "not among prevResult") {
		t.Fatalf("ADD: %v", err)
	}
	if got := tcState(t, "vbw2", ifbName("ctr3", "eth0")); got != "" {
		t.Fatalf("failed ADD left %s", got)
	}
	gone := bwArgs(c, "ctr3", "vbw2", limits)
	gone.Netns = "/var/run/netns/plumb-no-such-ns"
	if _, err := New().Add(gone); cniplugin.Code(err) != cniplugin.CodeInvalidNetNS {
		t.Fatalf("ADD in a missing namespace: %v", err)
	}
}

func TestBandwidthRealGC(t *testing.T) {
	ca, cb := pair(t, "vbw3"), pair(t, "vbw4")
	p := New()
	keep, leak := bwArgs(ca, "keep", "vbw3", limits), bwArgs(cb, "leak", "vbw4", limits)
	for _, a := range []*skel.CmdArgs{keep, leak} {
		if _, err := p.Add(a); err != nil {
			t.Fatal(err)
		}
	}
	defer p.Del(keep)
	other := &skel.CmdArgs{ContainerID: "leak", IfName: "eth0", StdinData: []byte(`{"cniVersion":"1.1.0","name":"net2","type":"bandwidth"}`)}
	if err := p.GC(other); err != nil {
		t.Fatal(err)
	}
	if tcState(t, "vbw4", ifbName("leak", "eth0")) == "" {
		t.Fatal("GC of another network removed net1's shaping")
	}
	gc := &skel.CmdArgs{StdinData: conf(`"cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]`)}
	if err := p.GC(gc); err != nil {
		t.Fatal(err)
	}
	if got := tcState(t, "vbw4", ifbName("leak", "eth0")); got != "" {
		t.Fatalf("GC left %s", got)
	}
	if got := tcState(t, "vbw3", ifbName("keep", "eth0")); !strings.Contains(got, "ifb plumb-bw/net1/keep/eth0") {
		t.Fatalf("GC removed a valid attachment's shaping: %s", got)
	}
}
