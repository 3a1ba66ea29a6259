package integration

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/testns"
)

// retire marks a host veth the way bridge DEL does before its reaper runs,
// which is what a reaper that never ran leaves behind.
func retire(t *testing.T, veth string) {
	t.Helper()
	l := hostLink(t, veth)
	if err := netlink.LinkSetAlias(l, "plumb-gone/"+veth); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetDown(l); err != nil {
		t.Fatal(err)
	}
}

// inertWhenDelAnswered checks, straight after DEL, that the masquerade of
// ip and bn's reservations are gone.
func inertWhenDelAnswered(t *testing.T, bn bridgeNet, ip string) {
	t.Helper()
	if rs := ruleset(t); strings.Contains(rs, ip) {
		t.Fatalf("masquerade of %s left when DEL answered:\n%s", ip, rs)
	}
	if got := addrFiles(t, bn.DataDir, bn.Name); len(got) != 0 {
		t.Fatalf("reservations left when DEL answered: %v", got)
	}
}

// TestDelRetiresVethForReaper: when DEL answers, the attachment is inert
// (host veth marked and down, masquerade gone, address free), and the veth
// itself is gone moments later.
func TestDelRetiresVethForReaper(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "reap", Bridge: "plreap", Subnet4: "10.52.0.0/24", DataDir: t.TempDir(),
		Extra: map[string]any{"ipMasq": true}}
	l := e.ConfList(bn.conflist("1.0.0"))
	a := e.add(l, "ctr-reap", testns.NewNS(t))
	veth, ip := a.Res.Interfaces[1].Name, a.ip(true).String()
	if err := e.CNI.DelNetworkList(e.Ctx(), l, a.RT); err != nil {
		t.Fatal(err)
	}
	inertWhenDelAnswered(t, bn, ip) // none of this is left to the reaper
	vethGoneSoon(t, veth)
	netlink.LinkDel(hostLink(t, bn.Bridge))
}

// TestReAddRightAfterDel: an ADD of the same attachment straight after its
// DEL replaces the retired veth, and the first DEL's reaper does not touch
// the new one.
func TestReAddRightAfterDel(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "readd", Bridge: "plreadd", Subnet4: "10.53.0.0/24", DataDir: t.TempDir(),
		Extra: map[string]any{"ipMasq": true}}
	l := e.ConfList(bn.conflist("1.0.0"))
	n := testns.NewNS(t)
	for i := 0; i < 5; i++ {
		a := e.add(l, "ctr-readd", n)
		if err := e.CNI.DelNetworkList(e.Ctx(), l, a.RT); err != nil {
			t.Fatal(err)
		}
	}
	a := e.add(l, "ctr-readd", n)
	veth := a.Res.Interfaces[1].Name
	time.Sleep(300 * time.Millisecond) // every earlier reaper has run by now
	h := hostLink(t, veth)
	if h == nil {
		t.Fatal("the new host veth was deleted")
	}
	if h.Attrs().Alias != "plumb/readd/ctr-readd/eth0" || h.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("new host veth: alias %q, flags %v", h.Attrs().Alias, h.Attrs().Flags)
	}
	if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
		t.Fatalf("CHECK after re-ADD: %v", err)
	}
	if err := e.CNI.DelNetworkList(e.Ctx(), l, a.RT); err != nil {
		t.Fatal(err)
	}
	vethGoneSoon(t, veth)
	netlink.LinkDel(hostLink(t, bn.Bridge))
}

// TestRetiredVethWithoutReaperIsCleaned: a retired veth whose reaper never
// ran is deleted by GC, even for an attachment GC keeps, and replaced by an
// ADD of its attachment.
func TestRetiredVethWithoutReaperIsCleaned(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "noreap", Bridge: "plnoreap", Subnet4: "10.54.0.0/24", DataDir: t.TempDir()}
	l := e.ConfList(bn.conflist("1.1.0"))
	a := e.add(l, "ctr-a", testns.NewNS(t))
	b := e.add(l, "ctr-b", testns.NewNS(t))
	va, vb := a.Res.Interfaces[1].Name, b.Res.Interfaces[1].Name
	retire(t, va)
	keep := []types.GCAttachment{{ContainerID: "ctr-a", IfName: "eth0"}, {ContainerID: "ctr-b", IfName: "eth0"}}
	if err := e.PluginGC(l, keep...); err != nil {
		t.Fatal(err)
	}
	if hostLink(t, va) != nil {
		t.Fatal("GC left the retired veth")
	}
	if hostLink(t, vb) == nil {
		t.Fatal("GC deleted a live veth")
	}

	retire(t, vb)
	b2 := e.add(l, "ctr-b", b.NS)
	h := hostLink(t, vb)
	if h == nil || h.Attrs().Alias != "plumb/noreap/ctr-b/eth0" || h.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("ADD over a retired veth: host veth %v", h)
	}
	if err := e.CNI.CheckNetworkList(e.Ctx(), l, b2.RT); err != nil {
		t.Fatalf("CHECK after ADD over a retired veth: %v", err)
	}
	for _, x := range []*attachment{a, b2} {
		if err := e.CNI.DelNetworkList(e.Ctx(), l, x.RT); err != nil {
			t.Fatal(err)
		}
	}
	vethGoneSoon(t, vb)
	netlink.LinkDel(hostLink(t, bn.Bridge))
}

// TestDelWithReapersOff: with PLUMB_REAPER=off in the runtime's
// environment, DEL starts no reaper and has deleted the veth by the time
// it answers.
func TestDelWithReapersOff(t *testing.T) {
	t.Setenv("PLUMB_REAPER", "off")
	e := NewEnv(t)
	bn := bridgeNet{Name: "noreaper", Bridge: "plnoreaper", Subnet4: "10.55.0.0/24", DataDir: t.TempDir(),
		Extra: map[string]any{"ipMasq": true}}
	l := e.ConfList(bn.conflist("1.0.0"))
	a := e.add(l, "ctr-noreaper", testns.NewNS(t))
	veth, ip := a.Res.Interfaces[1].Name, a.ip(true).String()
	if err := e.CNI.DelNetworkList(e.Ctx(), l, a.RT); err != nil {
		t.Fatal(err)
	}
	if h := hostLink(t, veth); h != nil {
		t.Fatalf("host veth %s (alias %q) still there when DEL answered", veth, h.Attrs().Alias)
	}
	inertWhenDelAnswered(t, bn, ip)
	netlink.LinkDel(hostLink(t, bn.Bridge))
}
