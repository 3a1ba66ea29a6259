package allocator

import (
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// subnet parses a CIDR keeping the host bits, as config parsing does.
func subnet(s string) types.IPNet {
	n, err := types.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return types.IPNet(*n)
}

func ip(s string) net.IP {
	if s == "" {
		return nil
	}
	p := net.ParseIP(s)
	if p == nil {
		panic("bad test IP " + s)
	}
	return p // 16-byte form on purpose: Canonicalize must shorten IPv4
}

func TestRangeCanonicalize(t *testing.T) {
	cases := []struct {
		name                    string
		subnet                  string
		start, end, gw          string
		wantStart, wantEnd, gwW string // want after canonicalization
		wantErr                 string
	}{
		{name: "v4 /24 defaults", subnet: "192.0.2.0/24",
			wantStart: "192.0.2.1", wantEnd: "192.0.2.254", gwW: "192.0.2.1"},
		{name: "v4 /25 defaults", subnet: "192.0.2.0/25",
			wantStart: "192.0.2.1", wantEnd: "192.0.2.126", gwW: "192.0.2.1"},
		{name: "v4 /30 smallest", subnet: "192.0.2.0/30",
			wantStart: "192.0.2.1", wantEnd: "192.0.2.2", gwW: "192.0.2.1"},
		{name: "v6 /64 defaults", subnet: "2001:db8:1::/64",
			wantStart: "2001:db8:1::1", wantEnd: "2001:db8:1:0:ffff:ffff:ffff:ffff", gwW: "2001:db8:1::1"},
		{name: "v6 /126 smallest", subnet: "2001:db8::/126",
			wantStart: "2001:db8::1", wantEnd: "2001:db8::3", gwW: "2001:db8::1"},
		{name: "all fields", subnet: "192.0.2.0/24", start: "192.0.2.40", end: "192.0.2.50", gw: "192.0.2.254",
			wantStart: "192.0.2.40", wantEnd: "192.0.2.50", gwW: "192.0.2.254"},
		{name: "single address range", subnet: "192.0.2.0/24", start: "192.0.2.9", end: "192.0.2.9",
			wantStart: "192.0.2.9", wantEnd: "192.0.2.9", gwW: "192.0.2.1"},
		{name: "gateway may be the network address as in the reference", subnet: "192.0.2.0/24", gw: "192.0.2.0",
			wantStart: "192.0.2.1", wantEnd: "192.0.2.254", gwW: "192.0.2.0"},

		{name: "v4 host bits", subnet: "192.0.2.12/24",
			wantErr: "Network has host bits set. For a subnet mask of length 24 the network address is 192.0.2.0"},
		{name: "v6 host bits", subnet: "2001:db8:24:19ff::/63",
			wantErr: "Network has host bits set. For a subnet mask of length 63 the network address is 2001:db8:24:19fe::"},
		{name: "v4 /31", subnet: "192.0.2.0/31", wantErr: "Network 192.0.2.0/31 too small to allocate from"},
		{name: "v4 /32", subnet: "192.0.2.7/32", wantErr: "too small"},
		{name: "v6 /127", subnet: "2001:db8::/127", wantErr: "too small"},
		{name: "start outside subnet", subnet: "192.0.2.0/24", start: "192.0.3.0",
			wantErr: "RangeStart 192.0.3.0 not in network 192.0.2.0/24"},
		{name: "end outside subnet", subnet: "192.0.2.0/24", end: "192.0.4.0",
			wantErr: "RangeEnd 192.0.4.0 not in network 192.0.2.0/24"},
		{name: "start after end", subnet: "192.0.2.0/24", start: "192.0.2.50", end: "192.0.2.40",
			wantErr: "RangeStart 192.0.2.50 is after RangeEnd 192.0.2.40"},
		{name: "default start after end", subnet: "192.0.2.0/24", end: "192.0.2.0",
			wantErr: "RangeStart 192.0.2.1 is after RangeEnd 192.0.2.0"},
		{name: "gateway outside subnet", subnet: "192.0.2.0/24", gw: "192.0.3.1",
			wantErr: "gateway 192.0.3.1 not in network 192.0.2.0/24"},
		{name: "v6 gateway in v4 subnet", subnet: "192.0.2.0/24", gw: "2001:db8::1",
			wantErr: "gateway 2001:db8::1 not in network"},
		{name: "v4 start in v6 subnet", subnet: "2001:db8::/64", start: "192.0.2.1",
			wantErr: "RangeStart 192.0.2.1 not in network"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := Range{Subnet: subnet(c.subnet), RangeStart: ip(c.start), RangeEnd: ip(c.end), Gateway: ip(c.gw)}
			err := r.Canonicalize()
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Canonicalize = %v, want error containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Canonicalize: %v", err)
			}
			got := []string{r.RangeStart.String(), r.RangeEnd.String(), r.Gateway.String()}
			want := []string{c.wantStart, c.wantEnd, c.gwW}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("start end gateway = %v, want %v", got, want)
			}
			fam := net.IPv6len
			if strings.Contains(c.subnet, ".") {
				fam = net.IPv4len
			}
			for _, p := range []net.IP{r.Subnet.IP, r.RangeStart, r.RangeEnd, r.Gateway} {
				if len(p) != fam {
					t.Errorf("%s has %d bytes, want %d", p, len(p), fam)
				}
			}
			// Canonical input stays as it is.
			before := r
			if err := r.Canonicalize(); err != nil || r.String() != before.String() || !r.Gateway.Equal(before.Gateway) {
				t.Errorf("second Canonicalize changed %v to %v (%v)", before, r, err)
			}
		})
	}
}

func TestRangeCanonicalizeBadSubnet(t *testing.T) {
	for name, r := range map[string]Range{
		"missing subnet":   {},
		"mask mismatch":    {Subnet: types.IPNet{IP: net.IP{10, 0, 0, 0}, Mask: net.CIDRMask(120, 128)}},
		"non-contiguous":   {Subnet: types.IPNet{IP: net.IP{10, 0, 0, 0}, Mask: net.IPMask{255, 0, 255, 0}}},
		"three-byte IP":    {Subnet: types.IPNet{IP: net.IP{10, 0, 0}, Mask: net.CIDRMask(24, 32)}},
		"bad gateway size": {Subnet: subnet("10.0.0.0/24"), Gateway: net.IP{1, 2}},
	} {
		if err := r.Canonicalize(); err == nil {
			t.Errorf("%s: Canonicalize succeeded", name)
		}
	}
}

func mustRange(t *testing.T, cidr, start, end, gw string) Range {
	t.Helper()
	r := Range{Subnet: subnet(cidr), RangeStart: ip(start), RangeEnd: ip(end), Gateway: ip(gw)}
	if err := r.Canonicalize(); err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRangeContains(t *testing.T) {
	v4 := mustRange(t, "192.0.2.0/24", "192.0.2.40", "192.0.2.50", "192.0.2.254")
	v6 := mustRange(t, "2001:db8:1::/64", "2001:db8:1::40", "2001:db8:1::50", "")
	cases := []struct {
		r    Range
		ip   string
		want bool
	}{
		{v4, "192.0.3.0", false},
		{v4, "192.0.2.39", false},
		{v4, "192.0.2.40", true},
		{v4, "192.0.2.45", true},
		{v4, "192.0.2.50", true},
		{v4, "192.0.2.51", false},
		{v4, "::ffff:192.0.2.45", true}, // same address in v4-mapped form
		{v4, "2001:db8:1::45", false},
		{v6, "2001:db8:2::", false},
		{v6, "2001:db8:1::39", false},
		{v6, "2001:db8:1::40", true},
		{v6, "2001:db8:1::50", true},
		{v6, "2001:db8:1::51", false},
		{v6, "192.0.2.45", false},
	}
	for _, c := range cases {
		if got := c.r.Contains(ip(c.ip)); got != c.want {
			t.Errorf("%s Contains(%s) = %v, want %v", c.r.String(), c.ip, got, c.want)
		}
	}
	if v4.Contains(nil) || v4.Contains(net.IP{1, 2, 3}) {
		t.Error("Contains accepted a malformed address")
	}
}

func TestRangeOverlaps(t *testing.T) {
	cases := []struct {
		name string
		a, b Range
		want bool
	}{
		{"disjoint subnets", mustRange(t, "10.0.0.0/24", "", "", ""), mustRange(t, "10.0.1.0/24", "", "", ""), false},
		{"different families", mustRange(t, "0.0.0.0/24", "", "", ""), mustRange(t, "::/24", "", "", ""), false},
		{"identical", mustRange(t, "10.0.0.0/24", "", "", ""), mustRange(t, "10.0.0.0/24", "", "", ""), true},
		{"containing", mustRange(t, "10.0.0.0/20", "", "", ""), mustRange(t, "10.0.1.0/24", "", "", ""), true},
		{"same subnet, adjacent", mustRange(t, "10.0.0.0/24", "", "10.0.0.127", ""), mustRange(t, "10.0.0.0/24", "10.0.0.128", "", ""), false},
		{"same subnet, touching", mustRange(t, "10.0.0.0/24", "", "10.0.0.127", ""), mustRange(t, "10.0.0.0/24", "10.0.0.127", "", ""), true},
	}
	for _, c := range cases {
		if got := c.a.Overlaps(&c.b); got != c.want {
			t.Errorf("%s: a.Overlaps(b) = %v, want %v", c.name, got, c.want)
		}
		if got := c.b.Overlaps(&c.a); got != c.want {
			t.Errorf("%s: b.Overlaps(a) = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestRangeSetCanonicalize(t *testing.T) {
	r := func(cidr string) Range { return Range{Subnet: subnet(cidr)} }
	cases := []struct {
		name    string
		set     RangeSet
		wantStr string
		wantErr string
	}{
		{"one range", RangeSet{r("10.0.0.0/24")}, "10.0.0.1-10.0.0.254", ""},
		{"two ranges", RangeSet{r("10.0.0.0/30"), r("10.0.1.0/30")}, "10.0.0.1-10.0.0.2,10.0.1.1-10.0.1.2", ""},
		{"split subnet", RangeSet{
			{Subnet: subnet("10.0.0.0/24"), RangeEnd: ip("10.0.0.99")},
			{Subnet: subnet("10.0.0.0/24"), RangeStart: ip("10.0.0.100")},
		}, "10.0.0.1-10.0.0.99,10.0.0.100-10.0.0.254", ""},
		{"empty", RangeSet{}, "", "empty range set"},
		{"mixed families", RangeSet{r("10.0.0.0/24"), r("2001:db8::/64")}, "", "mixed address families"},
		{"overlap", RangeSet{r("10.0.0.0/24"), r("10.0.0.0/25")}, "", "subnets 10.0.0.1-10.0.0.254 and 10.0.0.1-10.0.0.126 overlap"},
		{"bad member", RangeSet{r("10.0.0.0/24"), r("10.0.1.0/31")}, "", "too small"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.set.Canonicalize()
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("Canonicalize = %v, want error containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.set.String(); got != c.wantStr {
				t.Errorf("String() = %q, want %q", got, c.wantStr)
			}
		})
	}
}

func TestRangeSetContainsAndOverlaps(t *testing.T) {
	set := RangeSet{
		mustRange(t, "10.0.0.0/24", "", "10.0.0.99", ""),
		mustRange(t, "10.0.0.0/24", "10.0.0.100", "", ""),
	}
	got, ok := set.Contains(ip("10.0.0.150"))
	if !ok || got != &set[1] {
		t.Errorf("Contains(10.0.0.150) = %v, %v; want the second range", got, ok)
	}
	got, ok = set.Contains(ip("10.0.0.5"))
	if !ok || got != &set[0] {
		t.Errorf("Contains(10.0.0.5) = %v, %v; want the first range", got, ok)
	}
	if _, ok := set.Contains(ip("10.0.0.255")); ok {
		t.Error("Contains(broadcast outside the ranges) = true")
	}
	other := RangeSet{mustRange(t, "10.0.1.0/24", "", "", ""), mustRange(t, "10.0.0.0/24", "10.0.0.250", "", "")}
	if !set.Overlaps(other) || !other.Overlaps(set) {
		t.Error("Overlaps missed a shared range")
	}
	if set.Overlaps(other[:1]) {
		t.Error("Overlaps found overlap between disjoint sets")
	}
}
