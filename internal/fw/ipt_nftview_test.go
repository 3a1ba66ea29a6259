package fw

import (
	"context"
	"os/exec"
	"strings"
	"testing"
)

// TestIPTAddOnCompleteBase: once the shared objects are in place, an ADD
// of a new owner starts no listing iptables process (iptNFTView confirms
// the base through netlink) and the result passes CHECK; with part of the
// base flushed, the ADD lists, repairs, and every owner passes CHECK again.
func TestIPTAddOnCompleteBase(t *testing.T) {
	requireThrowawayNS(t)
	ctx := context.Background()
	listings := func(fn func()) int64 {
		t.Helper()
		before := iptListings.Load()
		fn()
		return iptListings.Load() - before
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}

	t.Run("portmap", func(t *testing.T) {
		m := iptPMHarness().fresh(t).(*IPTPorts)
		ra := pmRule(t, ownerA, dualA, "tcp 8080:80", "udp 5353:53")
		rb := pmRule(t, ownerB, []string{"10.88.0.3/24", "fd00:88::3/64"}, "tcp 8081:80")
		must(m.AddPorts(ctx, ra))
		if n := listings(func() { must(m.AddPorts(ctx, rb)) }); n != 0 {
			t.Errorf("ADD of a new owner on a complete base ran %d listing iptables processes, want 0", n)
		}
		must(m.CheckPorts(ctx, rb))
		for _, cmd := range [][]string{{"iptables", "-t", "nat", "-F", "PREROUTING"}, {"iptables", "-t", "raw", "-F", "PREROUTING"}} {
			mustCommand(t, cmd[0], cmd[1:]...)
			rc := pmRule(t, ownerC, []string{"10.99.0.2/24"}, "tcp 9090:80")
			if n := listings(func() { must(m.AddPorts(ctx, rc)) }); n == 0 {
				t.Errorf("after %v, the ADD listed nothing", cmd)
			}
			for _, r := range []PortRule{ra, rb, rc} {
				must(m.CheckPorts(ctx, r))
			}
			_, err := m.DelPorts(ctx, ownerC)
			must(err)
		}
	})

	t.Run("masquerade", func(t *testing.T) {
		m := iptHarness().fresh(t).(*IPTMasq)
		ra, rb := masqRule(t, ownerA, "10.88.0.2/24", "fd00:88::2/64"), masqRule(t, ownerB, "10.88.0.3/24")
		must(m.AddMasq(ctx, ra))
		if n := listings(func() { must(m.AddMasq(ctx, rb)) }); n != 0 {
			t.Errorf("ADD of a new owner on a complete base ran %d listing iptables processes, want 0", n)
		}
		must(m.CheckMasq(ctx, rb))
		mustCommand(t, "iptables", "-t", "nat", "-F", "POSTROUTING")
		rc := masqRule(t, ownerC, "10.99.0.2/24")
		if n := listings(func() { must(m.AddMasq(ctx, rc)) }); n == 0 {
			t.Error("after flushing POSTROUTING, the ADD listed nothing")
		}
		for _, r := range []MasqRule{ra, rb, rc} {
			must(m.CheckMasq(ctx, r))
		}
		// DEL with the addresses known lists nothing; with a partial hint
		// it falls back to listing and still removes everything.
		if n := listings(func() { must(m.DelMasq(ctx, ownerB, ips("10.88.0.3"))) }); n != 0 {
			t.Errorf("DEL with its addresses known ran %d listing iptables processes, want 0", n)
		}
		must(m.DelMasq(ctx, ownerA, ips("10.88.0.2")))
		for _, o := range []Owner{ownerA, ownerB} {
			for _, f := range families {
				if s := saveTable(t, f, "nat"); len(s.rules[iptOwnerChain(o)]) > 0 || s.chains[iptOwnerChain(o)] {
					t.Errorf("%s: chain of %s left after DEL", f, o.label())
				}
			}
		}
		must(m.CheckMasq(ctx, rc))
	})
}

// TestIPTDelDropsThroughNetlink: on iptables-nft a DEL removes the owner's
// chain and the rules jumping to it through netlink (dropChains), starting
// no iptables process at all, in both families; the other owner's chain
// and jumps stay and pass CHECK.
func TestIPTDelDropsThroughNetlink(t *testing.T) {
	requireThrowawayNS(t)
	if p, err := exec.LookPath("iptables"); err != nil || !iptablesIsNFT(p) {
		t.Skip("iptables is not iptables-nft")
	}
	ctx := context.Background()
	processes := func(fn func()) int64 {
		t.Helper()
		before := iptListings.Load() + iptRestores.Load()
		fn()
		return iptListings.Load() + iptRestores.Load() - before
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	gone := func(table, chain string) {
		t.Helper()
		for _, f := range families {
			s := saveTable(t, f, table)
			if s.chains[chain] {
				t.Errorf("%s: chain %s left after DEL", f, chain)
			}
			for c, rules := range s.rules {
				for _, r := range rules {
					if strings.Contains(r, chain) {
						t.Errorf("%s: rule of %s jumping to %s left after DEL: %s", f, c, chain, r)
					}
				}
			}
		}
	}

	t.Run("masquerade", func(t *testing.T) {
		m := iptHarness().fresh(t).(*IPTMasq)
		ra, rb := masqRule(t, ownerA, "10.88.0.2/24", "fd00:88::2/64"), masqRule(t, ownerB, "10.88.0.3/24", "fd00:88::3/64")
		must(m.AddMasq(ctx, ra))
		must(m.AddMasq(ctx, rb))
		if n := processes(func() { must(m.DelMasq(ctx, ownerA, ips("10.88.0.2", "fd00:88::2"))) }); n != 0 {
			t.Errorf("DEL started %d iptables processes, want 0", n)
		}
		gone("nat", iptOwnerChain(ownerA))
		must(m.CheckMasq(ctx, rb))
	})

	t.Run("portmap", func(t *testing.T) {
		m := iptPMHarness().fresh(t).(*IPTPorts)
		ra := pmRule(t, ownerA, dualA, "tcp 8080:80", "udp 5353:53")
		rb := pmRule(t, ownerB, []string{"10.88.0.3/24", "fd00:88::3/64"}, "tcp 8081:80")
		must(m.AddPorts(ctx, ra))
		must(m.AddPorts(ctx, rb))
		var removed []PortMapping
		if n := processes(func() {
			var err error
			removed, err = m.DelKnownPorts(ctx, ownerA, ra.Mappings)
			must(err)
		}); n != 0 {
			t.Errorf("DEL started %d iptables processes, want 0", n)
		}
		if len(removed) == 0 {
			t.Error("DEL reported nothing removed")
		}
		gone("nat", iptPMOwnerChain(ownerA))
		must(m.CheckPorts(ctx, rb))
	})
}
