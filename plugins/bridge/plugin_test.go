package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/fw"
	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/testns"
)

func TestMain(m *testing.M) { testns.MainInHostNS(m) }

// fakeIPAM hands every ADD the same address, as host-local does for an
// owner that already holds one, and counts releases.
type fakeIPAM struct{ adds, dels int }

func (f *fakeIPAM) Add(context.Context, string, []byte) (types.Result, error) {
	f.adds++
	_, sub, _ := net.ParseCIDR("10.99.0.0/24")
	return &current.Result{CNIVersion: current.ImplementedSpecVersion, IPs: []*current.IPConfig{{
		Address: net.IPNet{IP: net.ParseIP("10.99.0.5").To4(), Mask: sub.Mask},
	}}}, nil
}
func (f *fakeIPAM) Del(context.Context, string, []byte) error    { f.dels++; return nil }
func (f *fakeIPAM) Check(context.Context, string, []byte) error  { return nil }
func (f *fakeIPAM) GC(context.Context, string, []byte) error     { return nil }
func (f *fakeIPAM) Status(context.Context, string, []byte) error { return nil }

// repairRig is the plugin over fakes for IPAM and masquerade; Masq is
// swapped to play a flushed firewall.
type repairRig struct {
	p    *Plugin
	ipam *fakeIPAM
	masq *fw.Fake
}

func newRepairRig() *repairRig {
	r := &repairRig{ipam: &fakeIPAM{}, masq: fw.NewFake()}
	r.p = &Plugin{IPAM: r.ipam, Masq: func(string) (fw.Masquerader, error) { return r.masq, nil }}
	return r
}

func repairArgs(id string, n *netns.NS, bridge string) *skel.CmdArgs {
	stdin := `{"cniVersion":"1.0.0","name":"repairnet","type":"bridge","bridge":"` + bridge + `",
	  "isGateway":true,"ipMasq":true,"ipam":{"type":"fake"}}`
	return &skel.CmdArgs{ContainerID: id, Netns: n.Path(), IfName: "eth0", StdinData: []byte(stdin)}
}

func linkOf(t *testing.T, n *netns.NS, name string) netlink.Link {
	t.Helper()
	h, err := n.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s in %s: %v", name, n.Path(), err)
	}
	return l
}

func resultJSON(t *testing.T, r types.Result) string {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestAddRepairsOwnAttachment: a second ADD of an attachment whose rules,
// address and bridge were lost keeps the veth pair, restores them and
// returns the first ADD's result; a repair that fails leaves the attachment
// in place and its address reserved.
func TestAddRepairsOwnAttachment(t *testing.T) {
	n := testns.NewNS(t)
	host, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	rig := newRepairRig()
	args := repairArgs("ctr-repair", n, "plrep0")
	t.Cleanup(func() { rig.p.Del(args) })
	first, err := rig.p.Add(args)
	if err != nil {
		t.Fatalf("first ADD: %v", err)
	}
	veth := hostVethName("ctr-repair", "eth0")
	vethIdx, contIdx := linkOf(t, host, veth).Attrs().Index, linkOf(t, n, "eth0").Attrs().Index

	// What a flush and a careless admin leave: no masquerade, no container
	// address, the bridge gone (and with it the veth's master).
	rig.masq = fw.NewFake()
	h, _ := n.Netlink()
	addr, _ := netlink.ParseAddr("10.99.0.5/24")
	if err := h.AddrDel(linkOf(t, n, "eth0"), addr); err != nil {
		t.Fatal(err)
	}
	h.Close()
	if err := netlink.LinkDel(linkOf(t, host, "plrep0")); err != nil {
		t.Fatal(err)
	}

	second, err := rig.p.Add(args)
	if err != nil {
		t.Fatalf("repair ADD: %v", err)
	}
	// The bridge is a new one, with a MAC of its own; the rest is as it was.
	first.(*current.Result).Interfaces[0].Mac = linkOf(t, host, "plrep0").Attrs().HardwareAddr.String()
	if got, want := resultJSON(t, second), resultJSON(t, first); got != want {
		t.Fatalf("repair result differs:\n got %s\nwant %s", got, want)
	}
	hv, cv := linkOf(t, host, veth), linkOf(t, n, "eth0")
	if hv.Attrs().Index != vethIdx || cv.Attrs().Index != contIdx {
		t.Fatal("repair replaced the veth pair")
	}
	if hv.Attrs().MasterIndex != linkOf(t, host, "plrep0").Attrs().Index {
		t.Fatal("repair did not put the veth back on the bridge")
	}
	addrs, _ := netlink.AddrList(linkOf(t, host, "plrep0"), netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != "10.99.0.1/24" {
		t.Fatalf("bridge addresses after repair: %v", addrs)
	}
	prev := second.(*current.Result)
	if err := checkContainer(args, prev); err != nil {
		t.Fatalf("container after repair: %v", err)
	}
	if d := rig.masq.Dump(); !strings.Contains(d, "owner repairnet/ctr-repair/eth0: 10.99.0.5/24") {
		t.Fatalf("masquerade not restored:\n%s", d)
	}

	// A repair that fails (the masquerade backend refuses) undoes nothing.
	rig.masq = &fw.Fake{Err: errors.New("backend down")}
	if _, err := rig.p.Add(args); err == nil || !strings.Contains(err.Error(), "backend down") {
		t.Fatalf("repair with a failing backend: %v", err)
	}
	if linkOf(t, host, veth).Attrs().Index != vethIdx || rig.ipam.dels != 0 {
		t.Fatalf("failed repair tore down the attachment (IPAM DELs: %d)", rig.ipam.dels)
	}
}

// TestAddRefusesForeignInterface: an ADD whose CNI_IFNAME exists but is not
// this attachment's veth fails as before, creating and releasing nothing.
func TestAddRefusesForeignInterface(t *testing.T) {
	cases := map[string]func(t *testing.T, n *netns.NS){
		"bridge": func(t *testing.T, n *netns.NS) {
			if err := n.Do(func() error {
				return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}})
			}); err != nil {
				t.Fatal(err)
			}
		},
		"veth of another host link": func(t *testing.T, n *netns.NS) {
			v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "plforeign0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(n.Fd())}
			if err := netlink.LinkAdd(v); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { netlink.LinkDel(v) })
		},
		"another attachment's veth": func(t *testing.T, n *netns.NS) {
			rig := newRepairRig()
			other := repairArgs("ctr-other", n, "plrep1")
			if _, err := rig.p.Add(other); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { rig.p.Del(other) })
		},
	}
	for name, setup := range cases {
		t.Run(name, func(t *testing.T) {
			n := testns.NewNS(t)
			setup(t, n)
			rig := newRepairRig()
			args := repairArgs("ctr-foreign", n, "plrep1")
			_, err := rig.p.Add(args)
			if err == nil || cniplugin.Code(err) != cniplugin.CodeInvalidEnv || !strings.Contains(err.Error(), "already exists") {
				t.Fatalf("ADD over a foreign eth0: %v (code %d), want code %d", err, cniplugin.Code(err), cniplugin.CodeInvalidEnv)
			}
			if l, _ := netlink.LinkByName(hostVethName("ctr-foreign", "eth0")); l != nil {
				t.Fatal("refused ADD created a host veth")
			}
			if rig.ipam.adds != 0 || rig.ipam.dels != 0 {
				t.Fatalf("refused ADD called IPAM: %d ADDs, %d DELs", rig.ipam.adds, rig.ipam.dels)
			}
		})
	}
}
