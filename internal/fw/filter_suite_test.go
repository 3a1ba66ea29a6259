package fw

import (
	"context"
	"errors"
	"net"
	"sort"
	"strings"
	"testing"

	"github.com/google/nftables"
)

// One suite runs against every Filter: the fake (no root) and both kernel
// backends (root, in TestMain's throwaway namespace). Each harness reduces
// its backend's state to a filterView so the suite asserts the same
// behaviour on all three.

type filterView struct {
	chains []string // owner chains present, sorted
	jumps  []string // "ip -> chain" for traffic to ip, in match order
}

func (v filterView) effective(ip string) string {
	for _, j := range v.jumps {
		if a, c, _ := strings.Cut(j, " -> "); a == ip {
			return c
		}
	}
	return ""
}

func (v filterView) has(chain string) bool {
	for _, c := range v.chains {
		if c == chain {
			return true
		}
	}
	return false
}

type filterHarness struct {
	name    string
	fresh   func(t *testing.T) Filter
	view    func(t *testing.T) filterView
	chainOf func(Owner) string
	// dropRule deletes the first rule of chain by hand; dropJump the entry
	// sending traffic to ip to its chain.
	dropRule func(t *testing.T, chain string)
	dropJump func(t *testing.T, ip string)
	// adminRule puts a rule of the administrator's into the admin chain;
	// adminRules lists what is there; adminFirst asserts the admin chain
	// is jumped to before plumb's rules.
	adminRule  func(t *testing.T, admin string)
	adminRules func(t *testing.T, admin string) string
	adminFirst func(t *testing.T, admin string)
}

func filterRule(o Owner, policy IngressPolicy, bridge string, addrs ...string) FilterRule {
	return FilterRule{Owner: o, Policy: policy, Bridge: bridge, Addrs: ips(addrs...)}
}

func runFilterSuite(t *testing.T, h filterHarness) {
	ctx := context.Background()
	mustAdd := func(t *testing.T, f Filter, r FilterRule) {
		t.Helper()
		if err := f.AddFilter(ctx, r); err != nil {
			t.Fatalf("AddFilter(%s): %v", r.Owner.label(), err)
		}
	}
	mustDel := func(t *testing.T, f Filter, o Owner, addrs []net.IP) {
		t.Helper()
		if err := f.DelFilter(ctx, o, addrs); err != nil {
			t.Fatalf("DelFilter(%s, %v): %v", o.label(), addrs, err)
		}
	}
	mustCheck := func(t *testing.T, f Filter, r FilterRule) {
		t.Helper()
		if err := f.CheckFilter(ctx, r); err != nil {
			t.Fatalf("CheckFilter(%s): %v", r.Owner.label(), err)
		}
	}
	checkFails := func(t *testing.T, f Filter, r FilterRule) {
		t.Helper()
		if err := f.CheckFilter(ctx, r); !errors.Is(err, ErrFilterMismatch) {
			t.Fatalf("CheckFilter(%s) = %v, want ErrFilterMismatch", r.Owner.label(), err)
		}
	}
	owns := func(t *testing.T, v filterView, r FilterRule) {
		t.Helper()
		c := h.chainOf(r.Owner)
		if !v.has(c) {
			t.Fatalf("chain %s of %s is missing: %+v", c, r.Owner.label(), v)
		}
		for _, a := range r.Addrs {
			if got := v.effective(a.String()); got != c {
				t.Fatalf("traffic to %s goes to %q, want %q (%+v)", a, got, c, v)
			}
		}
	}
	gone := func(t *testing.T, v filterView, o Owner) {
		t.Helper()
		c := h.chainOf(o)
		if v.has(c) {
			t.Fatalf("chain %s of %s still exists", c, o.label())
		}
		for _, j := range v.jumps {
			if strings.HasSuffix(j, " -> "+c) {
				t.Fatalf("%s still sent to the chain of %s", j, o.label())
			}
		}
	}
	empty := func(t *testing.T, v filterView) {
		t.Helper()
		if len(v.chains) != 0 || len(v.jumps) != 0 {
			t.Fatalf("state not empty: %+v", v)
		}
	}

	t.Run("every policy: add, check, del", func(t *testing.T) {
		for _, p := range []IngressPolicy{"", PolicyOpen, PolicySameBridge, PolicyIsolated} {
			f := h.fresh(t)
			r := filterRule(ownerA, p, "plbr0", "10.88.0.2", "fd00:88::2")
			mustAdd(t, f, r)
			owns(t, h.view(t), r)
			mustCheck(t, f, r)
			// Another policy is another set of rules.
			other := r
			other.Policy = PolicyIsolated
			if p == PolicyIsolated {
				other.Policy = PolicyOpen
			}
			checkFails(t, f, other)
			mustAdd(t, f, r) // idempotent
			mustCheck(t, f, r)
			if v := h.view(t); len(v.chains) != 1 || len(v.jumps) != 2 {
				t.Fatalf("policy %q: second ADD left %+v", p, v)
			}
			mustDel(t, f, ownerA, ips("10.88.0.2", "fd00:88::2"))
			empty(t, h.view(t))
		}
	})

	t.Run("DEL without prevResult, twice, and of an unknown owner", func(t *testing.T) {
		f := h.fresh(t)
		mustDel(t, f, ownerA, nil)
		ra := filterRule(ownerA, PolicySameBridge, "plbr0", "10.88.0.2", "fd00:88::2")
		rb := filterRule(ownerB, PolicySameBridge, "plbr0", "10.88.0.3")
		mustAdd(t, f, ra)
		mustAdd(t, f, rb)
		mustDel(t, f, ownerA, nil)
		v := h.view(t)
		gone(t, v, ownerA)
		owns(t, v, rb)
		mustCheck(t, f, rb)
		mustDel(t, f, ownerA, nil)
		mustDel(t, f, ownerA, ips("10.88.0.2"))
		mustDel(t, f, ownerB, ips("10.88.0.3"))
		empty(t, h.view(t))
	})

	t.Run("ADD A, ADD B same IP, DEL A keeps B", func(t *testing.T) {
		f := h.fresh(t)
		ra := filterRule(ownerA, "", "", "10.88.0.2", "10.88.0.4")
		rb := filterRule(ownerB, "", "", "10.88.0.2")
		mustAdd(t, f, ra)
		mustAdd(t, f, rb)
		checkFails(t, f, ra)
		mustDel(t, f, ownerA, ips("10.88.0.2", "10.88.0.4"))
		v := h.view(t)
		gone(t, v, ownerA)
		owns(t, v, rb)
		mustCheck(t, f, rb)
		if got := v.effective("10.88.0.4"); got != "" {
			t.Fatalf("10.88.0.4 still sent to %s", got)
		}
	})

	t.Run("re-ADD with other addresses leaves only the new ones", func(t *testing.T) {
		f := h.fresh(t)
		mustAdd(t, f, filterRule(ownerA, "", "", "10.88.0.2"))
		r := filterRule(ownerA, "", "", "10.88.0.3")
		mustAdd(t, f, r)
		mustCheck(t, f, r)
		v := h.view(t)
		owns(t, v, r)
		if got := v.effective("10.88.0.2"); got != "" {
			t.Fatalf("old address still sent to %s", got)
		}
	})

	t.Run("GC removes owners not kept, in this network only", func(t *testing.T) {
		f := h.fresh(t)
		ra := filterRule(ownerA, "", "", "10.88.0.2")
		rb := filterRule(ownerB, "", "", "10.88.0.3")
		rc := filterRule(ownerC, "", "", "10.89.0.2")
		for _, r := range []FilterRule{ra, rb, rc} {
			mustAdd(t, f, r)
		}
		if err := f.GCFilter(ctx, "net1", []Owner{{ContainerID: ownerB.ContainerID, IfName: ownerB.IfName}}); err != nil {
			t.Fatal(err)
		}
		v := h.view(t)
		gone(t, v, ownerA)
		owns(t, v, rb)
		owns(t, v, rc)
		mustCheck(t, f, rb)
		mustCheck(t, f, rc)
	})

	t.Run("CHECK sees rules deleted by hand", func(t *testing.T) {
		if h.dropRule == nil {
			t.Skip("no kernel state")
		}
		f := h.fresh(t)
		r := filterRule(ownerA, PolicyIsolated, "plbr0", "10.88.0.2")
		mustAdd(t, f, r)
		h.dropRule(t, h.chainOf(ownerA))
		checkFails(t, f, r)
		mustAdd(t, f, r) // re-ADD repairs
		mustCheck(t, f, r)
		h.dropJump(t, "10.88.0.2")
		checkFails(t, f, r)
		mustAdd(t, f, r)
		mustCheck(t, f, r)
	})

	t.Run("admin chain: created once, jumped first, its rules survive", func(t *testing.T) {
		if h.adminRule == nil {
			t.Skip("no kernel state")
		}
		f := h.fresh(t)
		mustAdd(t, f, filterRule(ownerA, "", "plbr0", "10.88.0.2"))
		h.adminFirst(t, DefaultAdminChain)
		h.adminRule(t, DefaultAdminChain)
		before := h.adminRules(t, DefaultAdminChain)
		if !strings.Contains(before, "192.0.2.9") {
			t.Fatalf("admin rule not listed: %q", before)
		}
		r := filterRule(ownerB, PolicySameBridge, "plbr1", "10.88.0.3")
		mustAdd(t, f, r)
		mustDel(t, f, ownerA, nil)
		if err := f.GCFilter(ctx, "net1", nil); err != nil {
			t.Fatal(err)
		}
		if after := h.adminRules(t, DefaultAdminChain); after != before {
			t.Fatalf("admin chain changed:\nbefore %q\nafter  %q", before, after)
		}
		h.adminFirst(t, DefaultAdminChain)
		// A second admin chain name is jumped too, also before plumb's rules.
		r2 := filterRule(ownerC, "", "", "10.89.0.2")
		r2.AdminChain = "MY-ADMIN"
		mustAdd(t, f, r2)
		mustCheck(t, f, r2)
		h.adminFirst(t, "MY-ADMIN")
		if after := h.adminRules(t, DefaultAdminChain); after != before {
			t.Fatalf("admin chain changed by another admin chain's ADD: %q", after)
		}
	})

	t.Run("invalid requests change nothing", func(t *testing.T) {
		f := h.fresh(t)
		for _, r := range []FilterRule{
			filterRule(ownerA, PolicySameBridge, "", "10.88.0.2"),
			filterRule(ownerA, "closed", "plbr0", "10.88.0.2"),
			filterRule(ownerA, "", "bad name", "10.88.0.2"),
			filterRule(ownerA, "", "plbr0"),
			filterRule(Owner{Network: "net1"}, "", "", "10.88.0.2"),
			{Owner: ownerA, Addrs: ips("10.88.0.2"), AdminChain: "FORWARD"},
			{Owner: ownerA, Addrs: ips("10.88.0.2"), AdminChain: "PLUMB-FORWARD"},
			{Owner: ownerA, Addrs: ips("10.88.0.2"), AdminChain: "has space"},
			{Owner: ownerA, Addrs: []net.IP{{1, 2, 3}}},
		} {
			if err := f.AddFilter(ctx, r); !errors.Is(err, ErrInvalidFilter) {
				t.Fatalf("AddFilter(%+v) = %v, want ErrInvalidFilter", r, err)
			}
		}
		empty(t, h.view(t))
	})
}

func TestFilterSuiteFake(t *testing.T) {
	var f *FakeFilter
	runFilterSuite(t, filterHarness{
		name:    "fake",
		fresh:   func(t *testing.T) Filter { f = &FakeFilter{}; return f },
		chainOf: func(o Owner) string { return o.Hash() },
		view: func(t *testing.T) filterView {
			var v filterView
			for _, line := range strings.Split(f.Dump(), "\n") {
				if rest, ok := strings.CutPrefix(line, "addr "); ok {
					ip, label, _ := strings.Cut(rest, " -> ")
					var o Owner
					parts := strings.Split(label, "/")
					o.Network, o.ContainerID, o.IfName = parts[0], parts[1], parts[2]
					v.jumps = append(v.jumps, ip+" -> "+o.Hash())
				}
			}
			for h := range f.owners {
				v.chains = append(v.chains, h)
			}
			sort.Strings(v.chains)
			return v
		},
	})
}

func TestFilterSuiteNFT(t *testing.T) {
	lock := ""
	runFilterSuite(t, filterHarness{
		name: "nftables",
		fresh: func(t *testing.T) Filter {
			resetFirewall(t)
			lock = testLock(t)
			return &NFTFilter{LockPath: lock}
		},
		chainOf: fltNFTOwnerChain,
		view: func(t *testing.T) filterView {
			s, err := openFilterNFT()
			if err != nil {
				t.Fatal(err)
			}
			defer s.close()
			var v filterView
			chains, _ := s.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
			for _, c := range chains {
				if c.Table.Name == fltNFTTable && strings.HasPrefix(c.Name, fltNFTChainPrefix) {
					v.chains = append(v.chains, c.Name)
				}
			}
			sort.Strings(v.chains)
			for _, f := range families {
				elems, err := s.rd.elements(fltNFTTable, fltNFTMaps[f])
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range elems {
					v.jumps = append(v.jumps, net.IP(e.key).String()+" -> "+e.chain)
				}
			}
			sort.Strings(v.jumps)
			return v
		},
		dropRule: func(t *testing.T, chain string) {
			out := mustCommand(t, "nft", "-a", "list", "chain", "inet", fltNFTTable, chain)
			for _, line := range strings.Split(out, "\n") {
				line = strings.TrimSpace(line)
				_, handle, ok := strings.Cut(line, "# handle ")
				if ok && !strings.HasPrefix(line, "table ") && !strings.HasPrefix(line, "chain ") {
					mustCommand(t, "nft", "delete", "rule", "inet", fltNFTTable, chain, "handle", handle)
					return
				}
			}
			t.Fatalf("no rule in %s:\n%s", chain, out)
		},
		dropJump: func(t *testing.T, ip string) {
			mustCommand(t, "nft", "delete", "element", "inet", fltNFTTable, "in4", "{", ip, "}")
		},
		adminRule: func(t *testing.T, admin string) {
			mustCommand(t, "nft", "add", "rule", "inet", fltNFTTable, admin, "ip", "saddr", "192.0.2.9", "drop")
		},
		adminRules: func(t *testing.T, admin string) string {
			return mustCommand(t, "nft", "list", "chain", "inet", fltNFTTable, admin)
		},
		adminFirst: func(t *testing.T, admin string) {
			out := mustCommand(t, "nft", "list", "chain", "inet", fltNFTTable, fltNFTBase)
			a, m := strings.Index(out, "jump "+admin), strings.Index(out, "vmap")
			if a < 0 || m < 0 || a > m || !strings.Contains(out, "policy accept") {
				t.Fatalf("base chain does not jump to %s before the lookups:\n%s", admin, out)
			}
		},
	})
}

func TestFilterSuiteIPT(t *testing.T) {
	runFilterSuite(t, filterHarness{
		name: "iptables",
		fresh: func(t *testing.T) Filter {
			resetFirewall(t)
			x, err := NewIPTFilter()
			if err != nil {
				t.Fatal(err)
			}
			x.LockPath = testLock(t)
			return x
		},
		chainOf: fltIPTOwnerChain,
		view: func(t *testing.T) filterView {
			var v filterView
			for _, cmd := range []string{"iptables", "ip6tables"} {
				tb := parseIPTTable(mustCommand(t, cmd, "-w", "-t", "filter", "-S"))
				for c := range tb.chains {
					if strings.HasPrefix(c, fltIPTChainPrefix) && !v.has(c) {
						v.chains = append(v.chains, c)
					}
				}
				for _, r := range tb.rules[fltIPTChain] {
					if d := r.dst(); d != "" {
						ip, _, _ := strings.Cut(d, "/")
						v.jumps = append(v.jumps, ip+" -> "+r.target)
					}
				}
			}
			sort.Strings(v.chains)
			return v
		},
		dropRule: func(t *testing.T, chain string) {
			mustCommand(t, "iptables", "-w", "-D", chain, "1")
		},
		dropJump: func(t *testing.T, ip string) {
			tb := parseIPTTable(mustCommand(t, "iptables", "-w", "-S"))
			for _, r := range tb.rules[fltIPTChain] {
				if r.dst() == ip+"/32" {
					mustCommand(t, "iptables", append([]string{"-w", "-D", fltIPTChain}, tokens(r.spec)...)...)
					return
				}
			}
			t.Fatalf("no rule for %s", ip)
		},
		adminRule: func(t *testing.T, admin string) {
			mustCommand(t, "iptables", "-w", "-A", admin, "-s", "192.0.2.9", "-j", "DROP")
		},
		adminRules: func(t *testing.T, admin string) string {
			return mustCommand(t, "iptables", "-w", "-S", admin)
		},
		adminFirst: func(t *testing.T, admin string) {
			tb := parseIPTTable(mustCommand(t, "iptables", "-w", "-S"))
			a, p := 0, 0
			for i, r := range tb.rules["FORWARD"] {
				switch r.target {
				case admin:
					a = i + 1
				case fltIPTChain:
					p = i + 1
				}
			}
			if a == 0 || p == 0 || a > p {
				t.Fatalf("FORWARD does not jump to %s before %s: %+v", admin, fltIPTChain, tb.rules["FORWARD"])
			}
		},
	})
}
