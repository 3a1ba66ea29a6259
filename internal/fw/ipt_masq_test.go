package fw

import (
	"context"
	"fmt"
	"net"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// iptSave is `iptables-save -t nat` (or ip6tables-save) of the test's
// namespace: chain headers and rules per chain.
type iptSave struct {
	chains map[string]bool
	rules  map[string][]string // chain -> specs in order
}

func saveNAT(t *testing.T, f family) iptSave {
	t.Helper()
	cmd := "iptables-save"
	if f == famV6 {
		cmd = "ip6tables-save"
	}
	s := iptSave{chains: map[string]bool{}, rules: map[string][]string{}}
	for _, line := range strings.Split(mustCommand(t, cmd, "-t", "nat"), "\n") {
		switch {
		case strings.HasPrefix(line, ":"):
			s.chains[strings.Fields(line[1:])[0]] = true
		case strings.HasPrefix(line, "-A "):
			chain, spec, _ := strings.Cut(line[3:], " ")
			s.rules[chain] = append(s.rules[chain], spec)
		}
	}
	return s
}

func iptHarness() masqHarness {
	return masqHarness{
		name: "iptables",
		fresh: func(t *testing.T) Masquerader {
			resetFirewall(t)
			m, err := NewIPTMasq()
			if err != nil {
				t.Fatal(err)
			}
			m.LockPath = testLock(t)
			return m
		},
		view: func(t *testing.T) masqView {
			v := masqView{chains: map[string][]string{}}
			for _, f := range families {
				s := saveNAT(t, f)
				for c := range s.chains {
					if strings.HasPrefix(c, "PLM-") {
						v.chains[c] = append(v.chains[c], s.rules[c]...)
					}
				}
				for _, spec := range s.rules[iptMasqChain] {
					r := parseRules(iptMasqChain, "-A "+iptMasqChain+" "+spec)[0]
					ip, _, _ := strings.Cut(r.src, "/")
					v.jumps = append(v.jumps, ip+" -> "+r.target)
				}
			}
			return v
		},
		chainOf: iptOwnerChain,
		wantRules: func(r MasqRule) []string {
			var v4, v6 []string
			for _, a := range r.Addrs {
				ones, bits := a.Mask.Size()
				rule := fmt.Sprintf("-s %s/%d -d %s/%d -j RETURN", a.IP, bits, a.IP.Mask(a.Mask), ones)
				if bits == 32 {
					v4 = append(v4, rule)
				} else {
					v6 = append(v6, rule)
				}
			}
			if len(v4) > 0 {
				v4 = append(v4, "-d 224.0.0.0/4 -j RETURN", "-j MASQUERADE")
			}
			if len(v6) > 0 {
				v6 = append(v6, "-d ff00::/8 -j RETURN", "-j MASQUERADE")
			}
			return append(v4, v6...)
		},
		base: func(t *testing.T) {
			for _, f := range families {
				s := saveNAT(t, f)
				if !s.chains[iptMasqChain] {
					if f == famV4 {
						t.Fatalf("%s: nat chain %s is missing", f, iptMasqChain)
					}
					continue
				}
				n := 0
				for _, spec := range s.rules["POSTROUTING"] {
					if spec == "-j "+iptMasqChain {
						n++
					}
				}
				if n != 1 {
					t.Fatalf("%s: POSTROUTING jumps to %s %d times, want once: %q", f, iptMasqChain, n, s.rules["POSTROUTING"])
				}
			}
		},
		dropJump: func(t *testing.T, ip, chain string) {
			cmd, bits := "iptables", 32
			if net.ParseIP(ip).To4() == nil {
				cmd, bits = "ip6tables", 128
			}
			rules := parseRules(iptMasqChain, mustCommand(t, cmd, "-t", "nat", "-S", iptMasqChain))
			for i, r := range rules {
				if r.src == fmt.Sprintf("%s/%d", ip, bits) && r.target == chain {
					mustCommand(t, cmd, "-t", "nat", "-D", iptMasqChain, strconv.Itoa(i+1))
					return
				}
			}
			t.Fatalf("no rule sends %s to %s: %+v", ip, chain, rules)
		},
		dropRule: func(t *testing.T, chain string) {
			mustCommand(t, "iptables", "-t", "nat", "-D", chain, "1")
		},
	}
}

func TestIPTMasq(t *testing.T) {
	requireThrowawayNS(t)
	runMasqSuite(t, iptHarness())
}

// TestIPTMasqDetails checks what only the iptables layout has: the comment
// naming the owner, the newest owner matched first, and that DEL and GC of
// nothing create nothing.
func TestIPTMasqDetails(t *testing.T) {
	requireThrowawayNS(t)
	ctx := context.Background()
	m := iptHarness().fresh(t).(*IPTMasq)

	if err := m.DelMasq(ctx, ownerA, ips("10.88.0.2")); err != nil {
		t.Fatal(err)
	}
	if err := m.DelMasq(ctx, ownerA, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.GCMasq(ctx, "net1", nil); err != nil {
		t.Fatal(err)
	}
	if out := mustCommand(t, "iptables-save", "-t", "nat"); strings.Contains(out, "PLM-") || strings.Contains(out, iptMasqChain) {
		t.Fatalf("DEL and GC on an empty system created:\n%s", out)
	}

	for _, o := range []Owner{ownerA, ownerB} {
		if err := m.AddMasq(ctx, masqRule(t, o, "10.88.0.2/24")); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{
		`-s 10.88.0.2/32 -m comment --comment "plumb ` + ownerB.Hash() + ` net1 ctr-b eth0" -j ` + iptOwnerChain(ownerB),
		`-s 10.88.0.2/32 -m comment --comment "plumb ` + ownerA.Hash() + ` net1 ctr-a eth0" -j ` + iptOwnerChain(ownerA),
	}
	if got := saveNAT(t, famV4).rules[iptMasqChain]; !reflect.DeepEqual(got, want) {
		t.Fatalf("%s:\n got %q\nwant %q", iptMasqChain, got, want)
	}
	if n := len(iptOwnerChain(ownerA)); n > 28 {
		t.Fatalf("chain name %s is %d characters, iptables allows 28", iptOwnerChain(ownerA), n)
	}
}

// TestRestoreHeaderFlushes pins the iptables-restore --noflush behaviour the
// backend relies on: ":CHAIN - [0:0]" creates a missing chain and empties an
// existing one (so it is used for owner chains, never for PLUMB-MASQ), and
// -N of an existing chain fails the whole batch.
func TestRestoreHeaderFlushes(t *testing.T) {
	resetFirewall(t)
	m, err := NewIPTMasq()
	if err != nil {
		t.Fatal(err)
	}
	f, ctx := m.fams[famV4], context.Background()
	if err := f.apply(ctx, []string{":T1 - [0:0]", "-A T1 -j RETURN"}); err != nil {
		t.Fatal(err)
	}
	if err := f.apply(ctx, []string{":T1 - [0:0]", "-A T1 -d 10.0.0.0/8 -j RETURN"}); err != nil {
		t.Fatal(err)
	}
	if got := saveNAT(t, famV4).rules["T1"]; !reflect.DeepEqual(got, []string{"-d 10.0.0.0/8 -j RETURN"}) {
		t.Fatalf("after a second header T1 holds %q, want only the new rule", got)
	}
	if err := f.apply(ctx, []string{"-N T1", "-A T1 -j MASQUERADE"}); err == nil {
		t.Fatal("-N of an existing chain succeeded")
	}
	if got := saveNAT(t, famV4).rules["T1"]; len(got) != 1 {
		t.Fatalf("failed batch changed T1: %q", got)
	}
}
