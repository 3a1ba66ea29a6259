package fw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Tests of the pure parts: validation, names, the iptables batches and the
// nftables rules as data. No root needed.

func TestParseMasqRule(t *testing.T) {
	v4in16 := net.IPNet{IP: net.ParseIP("10.88.0.2"), Mask: net.CIDRMask(96+24, 128)} // 16-byte IP and mask
	addrs, err := parseMasqRule(MasqRule{Owner: ownerA, Addrs: []net.IPNet{
		v4in16, cidr(t, "fd00:88::2/64"), cidr(t, "10.88.0.2/24"), // the last repeats the first
	}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range addrs {
		got = append(got, a.ip.String()+" "+a.subnet.String()+" "+a.fam.String()+" "+a.hostCIDR())
	}
	want := []string{"10.88.0.2 10.88.0.0/24 IPv4 10.88.0.2/32", "fd00:88::2 fd00:88::/64 IPv6 fd00:88::2/128"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
	if len(addrs[0].ip) != 4 || len(addrs[0].subnet.IP) != 4 {
		t.Fatalf("IPv4 address not in 4-byte form: %v", addrs[0])
	}

	for name, r := range map[string]MasqRule{
		"nil IP":          {Owner: ownerA, Addrs: []net.IPNet{{Mask: net.CIDRMask(24, 32)}}},
		"no mask":         {Owner: ownerA, Addrs: []net.IPNet{{IP: net.ParseIP("10.88.0.2").To4()}}},
		"v6 mask on v4":   {Owner: ownerA, Addrs: []net.IPNet{{IP: net.ParseIP("10.88.0.2").To4(), Mask: net.CIDRMask(64, 128)}}},
		"v4 mask on v6":   {Owner: ownerA, Addrs: []net.IPNet{{IP: net.ParseIP("fd00::2"), Mask: net.CIDRMask(24, 32)}}},
		"holey mask":      {Owner: ownerA, Addrs: []net.IPNet{{IP: net.ParseIP("10.88.0.2").To4(), Mask: net.IPv4Mask(255, 0, 255, 0)}}},
		"tab in ifname":   masqRule(t, Owner{Network: "n", ContainerID: "c", IfName: "e\t0"}, "10.88.0.2/24"),
		"single quote":    masqRule(t, Owner{Network: "n'", ContainerID: "c", IfName: "eth0"}, "10.88.0.2/24"),
		"no network name": masqRule(t, Owner{ContainerID: "c", IfName: "eth0"}, "10.88.0.2/24"),
	} {
		if _, err := parseMasqRule(r); !errors.Is(err, ErrInvalidMasq) {
			t.Errorf("%s: err = %v, want ErrInvalidMasq", name, err)
		}
	}
	if _, err := parseIPs([]net.IP{{1, 2, 3}}); !errors.Is(err, ErrInvalidMasq) {
		t.Errorf("parseIPs of a 3-byte IP: %v", err)
	}
}

func TestNames(t *testing.T) {
	long := Owner{Network: strings.Repeat("n", 200), ContainerID: strings.Repeat("c", 64), IfName: "eth0"}
	if c := iptOwnerChain(long); len(c) > 28 || !strings.HasPrefix(c, "PLM-"+NetHash(long.Network)+"-") {
		t.Fatalf("iptables chain %q", c)
	}
	if c := nftOwnerChain(long); c != "m-"+NetHash(long.Network)+"-"+long.Hash() {
		t.Fatalf("nft chain %q", c)
	}
	if c := ownerComment(long, iptCommentMax); len(c) > iptCommentMax || !strings.HasPrefix(c, "plumb "+long.Hash()+" ") {
		t.Fatalf("comment %q (%d bytes)", c, len(c))
	}
	if c := ownerComment(ownerA, nftCommentMax); c != "plumb "+ownerA.Hash()+" net1 ctr-a eth0" {
		t.Fatalf("comment %q", c)
	}
}

func TestIPTBatches(t *testing.T) {
	addrs, err := parseMasqRule(masqRule(t, ownerA, "10.88.0.2/24", "10.88.0.3/24"))
	if err != nil {
		t.Fatal(err)
	}
	plan := iptAddPlan{
		createMasqChain: true, addJump: true, chain: "PLM-x", comment: "plumb h n c eth0", addrs: addrs,
		stale: []iptRule{{spec: `-s 10.88.0.9/32 -m comment --comment "plumb h n c eth0" -j PLM-x`}},
	}
	want := `:PLM-x - [0:0]
-N PLUMB-MASQ
-A POSTROUTING -j PLUMB-MASQ
-A PLM-x -s 10.88.0.2/32 -d 10.88.0.0/24 -j RETURN
-A PLM-x -s 10.88.0.3/32 -d 10.88.0.0/24 -j RETURN
-A PLM-x -d 224.0.0.0/4 -j RETURN
-A PLM-x -j MASQUERADE
-D PLUMB-MASQ -s 10.88.0.9/32 -m comment --comment "plumb h n c eth0" -j PLM-x
-I PLUMB-MASQ 1 -s 10.88.0.3/32 -m comment --comment "plumb h n c eth0" -j PLM-x
-I PLUMB-MASQ 1 -s 10.88.0.2/32 -m comment --comment "plumb h n c eth0" -j PLM-x`
	if got := strings.Join(plan.lines(), "\n"); got != want {
		t.Fatalf("add batch:\n%s\nwant:\n%s", got, want)
	}
	plan.createMasqChain, plan.addJump, plan.stale = false, false, nil
	if got := plan.lines(); len(got) != 7 || got[1] != "-A PLM-x -s 10.88.0.2/32 -d 10.88.0.0/24 -j RETURN" {
		t.Fatalf("add batch without base: %q", got)
	}

	want = `:PLM-a - [0:0]
:PLM-b - [0:0]
-D PLUMB-MASQ -s 10.88.0.2/32 -j PLM-a
-X PLM-a
-X PLM-b`
	if got := strings.Join(iptDelLines([]string{"PLM-a", "PLM-b"}, []iptRule{{spec: "-s 10.88.0.2/32 -j PLM-a"}}), "\n"); got != want {
		t.Fatalf("del batch:\n%s\nwant:\n%s", got, want)
	}
}

func TestParseRules(t *testing.T) {
	out := `-N PLUMB-MASQ
-A PLUMB-MASQ -s 10.88.0.2/32 -m comment --comment "plumb h net1 a eth0" -j PLM-1
-A PLUMB-MASQ -s fd00::2/128 -m comment --comment "say \"hi\"" -j PLM-2
-A OTHER -j PLM-3
`
	got := parseRules("PLUMB-MASQ", out)
	want := []iptRule{
		{spec: `-s 10.88.0.2/32 -m comment --comment "plumb h net1 a eth0" -j PLM-1`, src: "10.88.0.2/32", target: "PLM-1"},
		{spec: `-s fd00::2/128 -m comment --comment "say \"hi\"" -j PLM-2`, src: "fd00::2/128", target: "PLM-2"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
	if got := tokens(`-m comment --comment "a \"b\" c" -j X`); !reflect.DeepEqual(got, []string{"-m", "comment", "--comment", `a "b" c`, "-j", "X"}) {
		t.Fatalf("tokens: %q", got)
	}
}

func TestNFTRules(t *testing.T) {
	addrs, err := parseMasqRule(masqRule(t, ownerA, "10.88.0.2/24", "fd00:88::2/64", "10.99.0.2/32"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"meta nfproto ipv4 ip saddr 10.88.0.2 ip daddr 10.88.0.0/24 return",
		"meta nfproto ipv6 ip6 saddr fd00:88::2 ip6 daddr fd00:88::/64 return",
		"meta nfproto ipv4 ip saddr 10.99.0.2 ip daddr 10.99.0.2 return",
		"meta nfproto ipv4 ip daddr 224.0.0.0/4 return",
		"meta nfproto ipv6 ip6 daddr ff00::/8 return",
		"masquerade",
	}
	if got := textsOf(ownerRules(addrs)); !reflect.DeepEqual(got, want) {
		t.Fatalf("owner rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	s := &nftSession{}
	s.maps[famV4], s.maps[famV6] = nftMapSet(famV4), nftMapSet(famV6)
	want = []string{"meta nfproto ipv4 ip saddr vmap @masq4", "meta nfproto ipv6 ip6 saddr vmap @masq6"}
	if got := textsOf(s.baseRules()); !reflect.DeepEqual(got, want) {
		t.Fatalf("base rules %q, want %q", got, want)
	}
}

func TestDiffRules(t *testing.T) {
	for _, c := range []struct {
		want, got []string
		diff      string
	}{
		{[]string{"a", "b"}, []string{"a", "b"}, ""},
		{[]string{"a", "b"}, []string{"a"}, `rule "b" is missing`},
		{[]string{"a"}, []string{"a", "x"}, `unexpected rule "x"`},
		{[]string{"a", "b"}, []string{"b", "a"}, `rule 1 is "b", want "a"`},
		{[]string{"a"}, []string{"a", "a"}, "2 rules, want 1"},
	} {
		if got := diffRules(c.want, c.got); got != c.diff {
			t.Errorf("diffRules(%q, %q) = %q, want %q", c.want, c.got, got, c.diff)
		}
	}
}

func TestLockWaitEndsWithContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "fw.lock")
	release, err := lockFile(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := lockFile(ctx, path); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second lock = %v, want a deadline error", err)
	}
	release()
	release2, err := lockFile(context.Background(), path)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	release2()
}

func TestNoNFTables(t *testing.T) {
	for _, errno := range []unix.Errno{unix.EPROTONOSUPPORT, unix.EAFNOSUPPORT, unix.EOPNOTSUPP} {
		err := noNFTables(fmt.Errorf("open: %w", &netlink.OpError{Op: "receive", Err: errno}))
		if !errors.Is(err, ErrNoNFTables) || !errors.Is(err, errno) {
			t.Errorf("%v: got %v, want ErrNoNFTables wrapping the errno", errno, err)
		}
	}
	if err := noNFTables(fmt.Errorf("x: %w", unix.ENOENT)); errors.Is(err, ErrNoNFTables) {
		t.Errorf("ENOENT classified as no nf_tables: %v", err)
	}
	if noNFTables(nil) != nil {
		t.Error("noNFTables(nil) != nil")
	}
}
