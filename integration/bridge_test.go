package integration

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/testns"
)

// bridgeNet describes one test network.
type bridgeNet struct {
	Name, Bridge, Subnet4, Subnet6, DataDir string
	Extra                                   map[string]any // more bridge fields
	IPAMExtra                               map[string]any
}

func (b bridgeNet) conflist(version string) string {
	ranges := []any{[]any{map[string]any{"subnet": b.Subnet4}}}
	if b.Subnet6 != "" {
		ranges = append(ranges, []any{map[string]any{"subnet": b.Subnet6}})
	}
	ipam := map[string]any{"type": "host-local", "dataDir": b.DataDir, "ranges": ranges}
	for k, v := range b.IPAMExtra {
		ipam[k] = v
	}
	plugin := map[string]any{"type": "bridge", "bridge": b.Bridge, "isGateway": true, "ipam": ipam}
	for k, v := range b.Extra {
		plugin[k] = v
	}
	out, _ := json.Marshal(map[string]any{"cniVersion": version, "name": b.Name, "plugins": []any{plugin}})
	return string(out)
}

// attachment is one container on a test network.
type attachment struct {
	NS  *netns.NS
	RT  *libcni.RuntimeConf
	Res *current.Result
}

func (e *Env) add(l *libcni.NetworkConfigList, id string, n *netns.NS) *attachment {
	e.T.Helper()
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: n.Path(), IfName: "eth0"}
	r, err := e.CNI.AddNetworkList(e.Ctx(), l, rt)
	if err != nil {
		e.T.Fatalf("ADD %s: %v", id, err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		e.T.Fatalf("convert result of %s: %v", id, err)
	}
	return &attachment{NS: n, RT: rt, Res: res}
}

func (a *attachment) ip(v4 bool) net.IP {
	for _, ipc := range a.Res.IPs {
		if (ipc.Address.IP.To4() != nil) == v4 {
			return ipc.Address.IP
		}
	}
	return nil
}

func hostLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	l, err := netlink.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		t.Fatalf("find %s: %v", name, err)
	}
	return l
}

// vethGoneSoon waits for a host veth that DEL retired: DEL marks it and
// sets it down, and its reaper deletes it moments later (internal/reaper).
// It fails the test if the veth is still in use (unmarked or up) or is
// still there after 5 s.
func vethGoneSoon(t *testing.T, name string) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		l := hostLink(t, name)
		if l == nil {
			return
		}
		if a := l.Attrs(); a.Alias != "plumb-gone/"+name || a.Flags&net.FlagUp != 0 {
			t.Fatalf("host veth %s after DEL: alias %q, flags %v: not retired", name, a.Alias, a.Flags)
		}
		if time.Now().After(end) {
			t.Fatalf("host veth %s still there 5 s after DEL", name)
		}
	}
}

// addrFiles lists the address files host-local keeps for a network.
func addrFiles(t *testing.T, dataDir, network string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dataDir, network))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if net.ParseIP(e.Name()) != nil {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestBridgeTwoContainers(t *testing.T) {
	for i, v := range allSpecVersions {
		t.Run(v, func(t *testing.T) {
			e := NewEnv(t)
			bn := bridgeNet{Name: "br-" + v, Bridge: fmt.Sprintf("plbr%d", i), Subnet4: fmt.Sprintf("10.%d.0.0/24", 40+i),
				Subnet6: fmt.Sprintf("fd00:%d::/64", 40+i), DataDir: t.TempDir()}
			l := e.ConfList(bn.conflist(v))
			a := e.add(l, "ctr-a", testns.NewNS(t))
			b := e.add(l, "ctr-b", testns.NewNS(t))

			// Interface order bridge, host veth, container; IPs on the container.
			if len(a.Res.Interfaces) != 3 || a.Res.Interfaces[0].Name != bn.Bridge || a.Res.Interfaces[2].Name != "eth0" || a.Res.Interfaces[2].Sandbox != a.NS.Path() {
				t.Fatalf("interfaces = %+v", a.Res.Interfaces)
			}
			veth := a.Res.Interfaces[1].Name
			hv := hostLink(t, veth)
			if hv == nil {
				t.Fatalf("host veth %s missing", veth)
			}
			// The host end is a bridge port: no IPv6 address of its own
			// (the link-local one would be generated when the carrier came
			// up, during ADD). The container keeps its link-local address.
			if got, _ := netlink.AddrList(hv, netlink.FAMILY_V6); len(got) != 0 {
				t.Fatalf("host veth %s has IPv6 addresses %v", veth, got)
			}
			if !hasLinkLocal6(t, a.NS, "eth0") {
				t.Fatal("container eth0 has no IPv6 link-local address")
			}
			for _, ipc := range a.Res.IPs {
				if ipc.Interface == nil || *ipc.Interface != 2 {
					t.Fatalf("ip %s not indexed to the container interface", ipc.Address.String())
				}
			}
			// Container to container and to the gateway, both families.
			for _, v4 := range []bool{true, false} {
				srv := listenTCP(t, a.NS, net.JoinHostPort(a.ip(v4).String(), "0"))
				if src := mustReach(t, b.NS, srv); src != b.ip(v4).String() {
					t.Fatalf("server saw %s, want %s", src, b.ip(v4))
				}
			}
			// The gateways live on the bridge, in the host namespace.
			for _, ipc := range a.Res.IPs {
				srv := listenTCP(t, nil, net.JoinHostPort(ipc.Gateway.String(), "0"))
				if src := mustReach(t, a.NS, srv); src != ipc.Address.IP.String() {
					t.Fatalf("gateway %s saw %s, want %s", ipc.Gateway, src, ipc.Address.IP)
				}
			}

			if v != "0.3.0" && v != "0.3.1" {
				if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}
			for n := 0; n < 2; n++ {
				if err := e.CNI.DelNetworkList(e.Ctx(), l, a.RT); err != nil {
					t.Fatalf("DEL %d: %v", n+1, err)
				}
			}
			if hostLink(t, veth) != nil {
				t.Fatalf("host veth %s left after DEL", veth)
			}
			if got := addrFiles(t, bn.DataDir, bn.Name); len(got) != 2 { // b's two addresses
				t.Fatalf("reservations after DEL of a: %v", got)
			}
			if err := e.CNI.DelNetworkList(e.Ctx(), l, b.RT); err != nil {
				t.Fatal(err)
			}
			if got := addrFiles(t, bn.DataDir, bn.Name); len(got) != 0 {
				t.Fatalf("reservations left: %v", got)
			}
			netlink.LinkDel(hostLink(t, bn.Bridge))
		})
	}
}

func TestBridgeDelAfterNetnsGone(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "gone", Bridge: "plgone", Subnet4: "10.50.0.0/24", DataDir: t.TempDir(),
		Extra: map[string]any{"ipMasq": true}}
	l := e.ConfList(bn.conflist("1.0.0"))
	n := testns.NewRemovable(t)
	a := e.add(l, "ctr-gone", n.NS)
	veth := a.Res.Interfaces[1].Name
	n.Remove()
	for i := 0; i < 2; i++ {
		if err := e.CNI.DelNetworkList(e.Ctx(), l, a.RT); err != nil {
			t.Fatalf("DEL %d after netns removal: %v", i+1, err)
		}
	}
	if hostLink(t, veth) != nil {
		t.Fatal("veth left")
	}
	if rs := ruleset(t); strings.Contains(rs, a.ip(true).String()) {
		t.Fatalf("masquerade left after DEL:\n%s", rs)
	}
	if got := addrFiles(t, bn.DataDir, bn.Name); len(got) != 0 {
		t.Fatalf("reservations left: %v", got)
	}
}

func TestBridgeCheckDetectsDrift(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "drift", Bridge: "pldrift", Subnet4: "10.51.0.0/24", DataDir: t.TempDir()}
	l := e.ConfList(bn.conflist("1.0.0"))
	a := e.add(l, "ctr-drift", testns.NewNS(t))
	if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
		t.Fatalf("CHECK on a fresh attachment: %v", err)
	}
	// Remove the address by hand.
	if err := a.NS.Do(func() error {
		lk, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		return netlink.AddrDel(lk, &netlink.Addr{IPNet: &a.Res.IPs[0].Address})
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err == nil {
		t.Fatal("CHECK passed after the address was removed")
	}
	e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
}

func TestBridgeGC(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "gc", Bridge: "plgc", Subnet4: "10.52.0.0/24", DataDir: t.TempDir()}
	l := e.ConfList(bn.conflist("1.1.0"))
	keep := e.add(l, "ctr-keep", testns.NewNS(t))
	leak := e.add(l, "ctr-leak", testns.NewNS(t))
	err := e.PluginGC(l, types.GCAttachment{ContainerID: "ctr-keep", IfName: "eth0"})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}
	if hostLink(t, leak.Res.Interfaces[1].Name) != nil {
		t.Fatal("GC left the leaked attachment's veth")
	}
	if hostLink(t, keep.Res.Interfaces[1].Name) == nil {
		t.Fatal("GC removed a valid attachment's veth")
	}
	if got := addrFiles(t, bn.DataDir, bn.Name); len(got) != 1 || got[0] != keep.ip(true).String() {
		t.Fatalf("reservations after GC: %v", got)
	}
	e.CNI.DelNetworkList(e.Ctx(), l, keep.RT)
}

func TestBridgeFailedAddLeavesNothing(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "half", Bridge: "plhalf", Subnet4: "10.53.0.0/24", DataDir: t.TempDir(),
		IPAMExtra: map[string]any{}}
	// One address only: the second ADD fails in IPAM, after the veth exists.
	bn4 := `{"cniVersion":"1.0.0","name":"half","plugins":[{"type":"bridge","bridge":"plhalf","isGateway":true,
	  "ipam":{"type":"host-local","dataDir":"` + bn.DataDir + `","ranges":[[{"subnet":"10.53.0.0/24","rangeStart":"10.53.0.9","rangeEnd":"10.53.0.9"}]]}}]}`
	l := e.ConfList(bn4)
	first := e.add(l, "ctr-1", testns.NewNS(t))
	n2 := testns.NewNS(t)
	rt := &libcni.RuntimeConf{ContainerID: "ctr-2", NetNS: n2.Path(), IfName: "eth0"}
	if _, err := e.CNI.AddNetworkList(e.Ctx(), l, rt); err == nil {
		t.Fatal("ADD succeeded with the range exhausted")
	}
	if hostLink(t, hostVeth(t, "ctr-2")) != nil {
		t.Fatal("failed ADD left its host veth")
	}
	if linkIn(t, n2, "eth0") {
		t.Fatal("failed ADD left eth0 in the container")
	}
	// Interface name taken: a dummy eth0 already in the container.
	n3 := testns.NewNS(t)
	if err := n3.Do(func() error {
		return netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}})
	}); err != nil {
		t.Fatal(err)
	}
	e.CNI.DelNetworkList(e.Ctx(), l, first.RT)
	rt3 := &libcni.RuntimeConf{ContainerID: "ctr-3", NetNS: n3.Path(), IfName: "eth0"}
	if _, err := e.CNI.AddNetworkList(e.Ctx(), l, rt3); err == nil {
		t.Fatal("ADD succeeded with eth0 taken")
	}
	if hostLink(t, hostVeth(t, "ctr-3")) != nil {
		t.Fatal("failed ADD left its host veth")
	}
	if got := addrFiles(t, bn.DataDir, bn.Name); len(got) != 0 {
		t.Fatalf("failed ADDs left reservations: %v", got)
	}
}

func TestBridgeLinkOptions(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "opts", Bridge: "plopts", Subnet4: "10.54.0.0/24", DataDir: t.TempDir(),
		Extra: map[string]any{"mtu": 1400, "hairpinMode": true, "capabilities": map[string]bool{"mac": true}}}
	l := e.ConfList(bn.conflist("1.0.0"))
	n := testns.NewNS(t)
	rt := &libcni.RuntimeConf{ContainerID: "ctr-opts", NetNS: n.Path(), IfName: "eth0",
		CapabilityArgs: map[string]any{"mac": "02:42:ac:11:00:99"}}
	r, err := e.CNI.AddNetworkList(e.Ctx(), l, rt)
	if err != nil {
		t.Fatal(err)
	}
	res, _ := current.NewResultFromResult(r)
	var mtu int
	var mac string
	if err := n.Do(func() error {
		lk, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		mtu, mac = lk.Attrs().MTU, lk.Attrs().HardwareAddr.String()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if mtu != 1400 || mac != "02:42:ac:11:00:99" {
		t.Fatalf("container eth0 mtu %d mac %s", mtu, mac)
	}
	if res.Interfaces[2].Mac != "02:42:ac:11:00:99" {
		t.Fatalf("result mac %s", res.Interfaces[2].Mac)
	}
	veth := hostLink(t, res.Interfaces[1].Name)
	pi, err := netlink.LinkGetProtinfo(veth)
	if err != nil {
		t.Fatal(err)
	}
	if !pi.Hairpin {
		t.Fatal("hairpin not set on the host veth")
	}
	e.CNI.DelNetworkList(e.Ctx(), l, rt)
}

// kernelHasBridgeVlans probes (in the test's host namespace) whether bridges
// can filter VLANs: some kernels are built without it.
func kernelHasBridgeVlans(t *testing.T) bool {
	on := true
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "plvlanprobe"}, VlanFiltering: &on}
	if err := netlink.LinkAdd(br); err != nil {
		return false
	}
	netlink.LinkDel(br)
	return true
}

func TestBridgeVlan(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "vlan", Bridge: "plvlan", Subnet4: "10.55.0.0/24", DataDir: t.TempDir(),
		Extra: map[string]any{"vlan": 100}}
	l := e.ConfList(bn.conflist("1.0.0"))
	n := testns.NewNS(t)
	rt := &libcni.RuntimeConf{ContainerID: "ctr-vlan", NetNS: n.Path(), IfName: "eth0"}
	if !kernelHasBridgeVlans(t) {
		// The plugin must say why instead of failing obscurely, and leave nothing.
		_, err := e.CNI.AddNetworkList(e.Ctx(), l, rt)
		if err == nil || !strings.Contains(err.Error(), "CONFIG_BRIDGE_VLAN_FILTERING") {
			t.Fatalf("ADD with vlan on a kernel without bridge VLAN filtering: %v", err)
		}
		if got := addrFiles(t, bn.DataDir, bn.Name); len(got) != 0 {
			t.Fatalf("reservations left: %v", got)
		}
		t.Skip("kernel has no bridge VLAN filtering: tagging itself cannot be shown here")
	}
	r, err := e.CNI.AddNetworkList(e.Ctx(), l, rt)
	if err != nil {
		t.Fatal(err)
	}
	res, _ := current.NewResultFromResult(r)
	veth := hostLink(t, res.Interfaces[1].Name)
	vl, err := netlink.BridgeVlanList()
	if err != nil {
		t.Fatal(err)
	}
	pvid := false
	for _, info := range vl[int32(veth.Attrs().Index)] {
		if info.Vid == 100 && info.PortVID() {
			pvid = true
		}
	}
	if !pvid {
		t.Fatalf("vlan 100 not the port's pvid: %+v", vl[int32(veth.Attrs().Index)])
	}
	e.CNI.DelNetworkList(e.Ctx(), l, rt)
}

// TestBridgeBadNetns: a CNI_NETNS that is not a network namespace is error
// 8 and creates nothing on the host.
func TestBridgeBadNetns(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "badns", Bridge: "plbadns", Subnet4: "10.56.0.0/24", DataDir: t.TempDir()}
	l := e.ConfList(bn.conflist("1.0.0"))
	notNS := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notNS, nil, 0o600)
	for _, path := range []string{notNS, "/var/run/netns/plumb-does-not-exist"} {
		_, err := e.CNI.AddNetworkList(e.Ctx(), l, &libcni.RuntimeConf{ContainerID: "ctr-bad", NetNS: path, IfName: "eth0"})
		wantCode(t, err, 8)
	}
	if hostLink(t, bn.Bridge) != nil || hostLink(t, hostVeth(t, "ctr-bad")) != nil {
		t.Fatal("a failed ADD created links")
	}
	if got := addrFiles(t, bn.DataDir, bn.Name); len(got) != 0 {
		t.Fatalf("reservations: %v", got)
	}
}

// hasLinkLocal6 reports whether ifname in n has an fe80::/10 address.
func hasLinkLocal6(t *testing.T, n *netns.NS, ifname string) bool {
	t.Helper()
	found := false
	if err := n.Do(func() error {
		l, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
		for _, a := range addrs {
			found = found || a.IP.IsLinkLocalUnicast()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return found
}
