package fw

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func mustFilterReq(t *testing.T, r FilterRule) filterReq {
	t.Helper()
	req, err := parseFilterRule(r)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// The iptables batch as data: what a first ADD writes on an empty table,
// and what is left out once the shared parts exist.
func TestFilterIPTAddLines(t *testing.T) {
	r := mustFilterReq(t, filterRule(ownerA, PolicyIsolated, "plbr0", "10.88.0.2"))
	chain := fltIPTOwnerChain(ownerA)
	comment := `"plumb ` + ownerA.Hash() + ` net1 ctr-a eth0"`
	empty := parseIPTTable("-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n")
	got := fltIPTAddLines(empty, r, r.addrs, false)
	want := []string{
		"-N PLUMB-FORWARD",
		"-N CNI-ADMIN",
		"-N PLUMB-BRIDGES",
		"-A PLUMB-BRIDGES -i plbr0 -j DROP",
		":" + chain + " - [0:0]",
		"-A " + chain + " -d 10.88.0.2/32 ! -i plbr0 -j PLUMB-BRIDGES",
		"-A " + chain + " -d 10.88.0.2/32 -i plbr0 -o plbr0 -j DROP",
		"-A " + chain + " -d 10.88.0.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
		"-A " + chain + " -d 10.88.0.2/32 -m conntrack --ctstate DNAT -j ACCEPT",
		"-A " + chain + " -s 10.88.0.2/32 -j ACCEPT",
		"-I PLUMB-FORWARD 1 -d 10.88.0.2/32 -m comment --comment " + comment + " -j " + chain,
		"-A PLUMB-FORWARD -s 10.88.0.2/32 -m comment --comment " + comment + " -j " + chain,
		`-I FORWARD 1 -m comment --comment "plumb firewall" -j PLUMB-FORWARD`,
		`-I FORWARD 1 -m comment --comment "plumb firewall: admin rules" -j CNI-ADMIN`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("first ADD:\n got %q\nwant %q", got, want)
	}

	// Docker's rule first, then ours; the bridge is known: only the owner's
	// chain and jumps are written, and the old jumps to it go.
	existing := parseIPTTable(strings.Join([]string{
		"-P FORWARD DROP", "-N DOCKER-USER", "-N CNI-ADMIN", "-N PLUMB-FORWARD", "-N PLUMB-BRIDGES", "-N " + chain,
		"-A FORWARD -j DOCKER-USER",
		`-A FORWARD -m comment --comment "plumb firewall: admin rules" -j CNI-ADMIN`,
		`-A FORWARD -m comment --comment "plumb firewall" -j PLUMB-FORWARD`,
		"-A PLUMB-BRIDGES -i plbr0 -j DROP",
		"-A PLUMB-FORWARD -d 10.88.0.9/32 -m comment --comment " + comment + " -j " + chain,
	}, "\n"))
	got = fltIPTAddLines(existing, r, r.addrs, false)
	want = append([]string{":" + chain + " - [0:0]"}, want[5:10]...)
	want = append(want, "-D PLUMB-FORWARD -d 10.88.0.9/32 -m comment --comment "+comment+" -j "+chain)
	want = append(want, fltIPTAddLines(empty, r, r.addrs, false)[10:12]...)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("ADD over existing state:\n got %q\nwant %q", got, want)
	}
	if d := fltIPTCheck(existing, r, r.addrs, false); d == "" {
		t.Fatal("CHECK passed on a table without the owner's rules")
	}

	// The admin jump missing while plumb's exists: it goes first. The
	// plumb jump missing while the admin's exists: right after it.
	onlyPlumb := parseIPTTable("-P FORWARD ACCEPT\n-N PLUMB-FORWARD\n-A FORWARD -j X\n" + `-A FORWARD -m comment --comment "plumb firewall" -j PLUMB-FORWARD`)
	if l := fltIPTAddLines(onlyPlumb, r, r.addrs, false); l[len(l)-1] != `-I FORWARD 1 -m comment --comment "plumb firewall: admin rules" -j CNI-ADMIN` {
		t.Fatalf("admin jump: %q", l[len(l)-1])
	}
	onlyAdmin := parseIPTTable("-P FORWARD ACCEPT\n-N CNI-ADMIN\n-A FORWARD -j X\n" + `-A FORWARD -m comment --comment "plumb firewall: admin rules" -j CNI-ADMIN`)
	if l := fltIPTAddLines(onlyAdmin, r, r.addrs, false); l[len(l)-1] != `-I FORWARD 3 -m comment --comment "plumb firewall" -j PLUMB-FORWARD` {
		t.Fatalf("plumb jump: %q", l[len(l)-1])
	}

	// Compat mode writes accepts only: no admin chain, no bridges, no drops.
	got = fltIPTAddLines(empty, r, r.addrs, true)
	for _, l := range got {
		if strings.Contains(l, "CNI-ADMIN") || strings.Contains(l, "BRIDGES") || strings.Contains(l, "DROP") {
			t.Fatalf("compat batch has %q", l)
		}
	}
}

func TestFilterFakeDump(t *testing.T) {
	ctx := context.Background()
	f := &FakeFilter{}
	if err := f.AddFilter(ctx, filterRule(ownerA, PolicySameBridge, "plbr0", "10.88.0.2", "fd00::2")); err != nil {
		t.Fatal(err)
	}
	if err := f.AddFilter(ctx, FilterRule{Owner: ownerC, Addrs: ips("10.89.0.2"), AdminChain: "MY-ADMIN"}); err != nil {
		t.Fatal(err)
	}
	want := `admin CNI-ADMIN
admin MY-ADMIN
bridge plbr0
owner net1/ctr-a/eth0: same-bridge on plbr0, admin CNI-ADMIN: 10.88.0.2 fd00::2
owner net2/ctr-c/eth0: open, admin MY-ADMIN: 10.89.0.2
addr 10.88.0.2 -> net1/ctr-a/eth0
addr 10.89.0.2 -> net2/ctr-c/eth0
addr fd00::2 -> net1/ctr-a/eth0
`
	if got := f.Dump(); got != want {
		t.Fatalf("dump:\n%s\nwant:\n%s", got, want)
	}
	f.Err = errors.New("boom")
	if err := f.Usable(ctx); err == nil {
		t.Fatal("Usable ignores Err")
	}
}

// On a host where iptables-nft filters FORWARD (here with policy drop, as
// Docker leaves it), the nftables backend also writes the owner's accepts
// into iptables, checks them, and removes them on DEL and GC.
func TestFilterNFTWritesIPTablesAccepts(t *testing.T) {
	ctx := context.Background()
	resetFirewall(t)
	x := &NFTFilter{LockPath: testLock(t)}
	r := filterRule(ownerA, PolicySameBridge, "plbr0", "10.88.0.2", "fd00:88::2")

	// Without an iptables FORWARD chain nothing is written to iptables.
	if err := x.AddFilter(ctx, r); err != nil {
		t.Fatal(err)
	}
	if out := mustCommand(t, "nft", "list", "tables"); strings.Contains(out, "ip filter") || strings.Contains(out, "ip6 filter") {
		t.Fatalf("ADD created iptables' tables:\n%s", out)
	}
	mustCommand(t, "iptables", "-P", "FORWARD", "DROP")
	// CHECK now sees the missing accepts; re-ADD writes them (IPv4 only:
	// ip6tables has no FORWARD chain here).
	if err := x.CheckFilter(ctx, r); !errors.Is(err, ErrFilterMismatch) || !strings.Contains(err.Error(), "iptables") {
		t.Fatalf("CHECK without the iptables accepts: %v", err)
	}
	if err := x.AddFilter(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := x.CheckFilter(ctx, r); err != nil {
		t.Fatal(err)
	}
	chain := fltIPTOwnerChain(ownerA)
	if out := mustCommand(t, "iptables", "-S", chain); !strings.Contains(out, "-s 10.88.0.2/32 -j ACCEPT") {
		t.Fatalf("no accept in %s:\n%s", chain, out)
	}
	if out := mustCommand(t, "nft", "list", "tables"); strings.Contains(out, "ip6 filter") {
		t.Fatalf("ADD created ip6tables' table:\n%s", out)
	}
	mustCommand(t, "iptables", "-D", chain, "1")
	if err := x.CheckFilter(ctx, r); !errors.Is(err, ErrFilterMismatch) {
		t.Fatalf("CHECK after an accept was deleted by hand: %v", err)
	}
	// DEL without prevResult removes both.
	if err := x.DelFilter(ctx, ownerA, nil); err != nil {
		t.Fatal(err)
	}
	if out := mustCommand(t, "iptables", "-S"); strings.Contains(out, "PLF-") || strings.Contains(out, "10.88.0.2") {
		t.Fatalf("iptables rules left after DEL:\n%s", out)
	}
	// GC finds a leaked owner's accepts in iptables too.
	if err := x.AddFilter(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := x.GCFilter(ctx, "net1", nil); err != nil {
		t.Fatal(err)
	}
	if out := mustCommand(t, "iptables", "-S"); strings.Contains(out, "PLF-") {
		t.Fatalf("iptables rules left after GC:\n%s", out)
	}
	if out := mustCommand(t, "nft", "list", "table", "inet", fltNFTTable); strings.Contains(out, "10.88.0.2") {
		t.Fatalf("nftables rules left after GC:\n%s", out)
	}
}

func TestFilterUsable(t *testing.T) {
	requireThrowawayNS(t)
	ctx := context.Background()
	if _, err := NewNFTFilter(); err != nil {
		t.Fatal(err)
	}
	x, err := NewIPTFilter()
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Usable(ctx); err != nil {
		t.Fatal(err)
	}
}
