package fw

import (
	"context"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// saveTable is `iptables-save -t table` (or ip6tables-save): chains and
// rules per chain.
func saveTable(t *testing.T, f family, table string) iptSave {
	t.Helper()
	cmd := "iptables-save"
	if f == famV6 {
		cmd = "ip6tables-save"
	}
	s := iptSave{chains: map[string]bool{}, rules: map[string][]string{}}
	for _, line := range strings.Split(mustCommand(t, cmd, "-t", table), "\n") {
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

func iptRulesOf(chain string, specs []string) []iptRule {
	var out []iptRule
	for _, s := range specs {
		out = append(out, parseRules(chain, "-A "+chain+" "+s)...)
	}
	return out
}

func iptPMHarness() pmHarness {
	return pmHarness{
		name: "iptables",
		fresh: func(t *testing.T) PortMapper {
			resetFirewall(t)
			m, err := NewIPTPorts()
			if err != nil {
				t.Fatal(err)
			}
			m.LockPath = testLock(t)
			return m
		},
		view: func(t *testing.T) pmView {
			v := pmView{owners: map[string][]string{}, holders: map[string]string{}}
			for _, f := range families {
				s := saveTable(t, f, "nat")
				for c := range s.chains {
					if !strings.HasPrefix(c, iptPMPrefix) {
						continue
					}
					if _, ok := v.owners[c]; !ok {
						v.owners[c] = nil
					}
					for _, m := range iptPMParseOwner(f, iptRulesOf(c, s.rules[c])) {
						v.owners[c] = append(v.owners[c], m.mapping().String())
						d := iptPMAny
						if !m.key.any() {
							d = iptPMHost
						}
						if h := iptPMFirstMatch(iptRulesOf(d, s.rules[d]), m.key); h != "" {
							v.holders[m.key.String()] = h
						}
					}
				}
			}
			for c := range v.owners {
				sort.Strings(v.owners[c])
			}
			return v
		},
		chainOf: iptPMOwnerChain,
		base: func(t *testing.T) {
			for _, f := range families {
				s := saveTable(t, f, "nat")
				if !s.chains[iptPMEntry] {
					t.Fatalf("%s: nat chain %s is missing", f, iptPMEntry)
				}
				if got := s.rules[iptPMEntry]; !reflect.DeepEqual(got, iptPMEntryRules) {
					t.Fatalf("%s: %s holds %q", f, iptPMEntry, got)
				}
				count := func(chain, spec string) int {
					n := 0
					for _, r := range s.rules[chain] {
						if r == spec {
							n++
						}
					}
					return n
				}
				for _, c := range []string{"PREROUTING", "OUTPUT"} {
					if n := count(c, iptPMLocal); n != 1 {
						t.Fatalf("%s: %s jumps to %s %d times: %q", f, c, iptPMEntry, n, s.rules[c])
					}
				}
				if n := count("POSTROUTING", iptPMMasq(1<<DefaultMarkMasqBit)); n != 1 {
					t.Fatalf("%s: POSTROUTING masquerades mark 0x2000 %d times: %q", f, n, s.rules["POSTROUTING"])
				}
				if f == famV4 {
					raw := saveTable(t, f, "raw")
					if n := len(raw.rules["PREROUTING"]); n != 1 || raw.rules["PREROUTING"][0] != iptPMGuard {
						t.Fatalf("raw PREROUTING: %q", raw.rules["PREROUTING"])
					}
				}
			}
		},
		dropKey: func(t *testing.T, key string, o Owner) {
			chain := iptPMOwnerChain(o)
			for _, f := range families {
				cmd := "iptables"
				if f == famV6 {
					cmd = "ip6tables"
				}
				for _, d := range []string{iptPMHost, iptPMAny} {
					rules := parseRules(d, mustCommand(t, cmd, "-t", "nat", "-S", d))
					for i, r := range rules {
						if r.target != chain {
							continue
						}
						if iptPMCovers(r, key) {
							mustCommand(t, cmd, "-t", "nat", "-D", d, strconv.Itoa(i+1))
							return
						}
					}
				}
			}
			t.Fatalf("no rule sends %s to %s", key, chain)
		},
		flushOwner: func(t *testing.T, o Owner) {
			for _, cmd := range []string{"iptables", "ip6tables"} {
				command(cmd, "-t", "nat", "-F", iptPMOwnerChain(o))
			}
		},
	}
}

// iptPMCovers reports whether dispatch rule r matches key ("tcp 0.0.0.0:8080").
func iptPMCovers(r iptRule, key string) bool {
	toks := tokens(r.spec)
	host, proto := "", ""
	var ports []string
	for i := 0; i+1 < len(toks); i++ {
		switch toks[i] {
		case "-d":
			host, _, _ = strings.Cut(toks[i+1], "/")
		case "-p":
			proto = toks[i+1]
		case "--dports":
			ports = strings.Split(toks[i+1], ",")
		}
	}
	kproto, hostport, _ := strings.Cut(key, " ")
	i := strings.LastIndex(hostport, ":")
	khost, kport := strings.Trim(hostport[:i], "[]"), hostport[i+1:]
	if khost == "0.0.0.0" || khost == "::" {
		khost = ""
	}
	if khost != host || kproto != proto {
		return false
	}
	n, _ := strconv.Atoi(kport)
	for _, p := range ports {
		lo, hi, isRange := strings.Cut(p, ":")
		a, _ := strconv.Atoi(lo)
		b := a
		if isRange {
			b, _ = strconv.Atoi(hi)
		}
		if n >= a && n <= b {
			return true
		}
	}
	return false
}

func TestIPTPorts(t *testing.T) {
	requireThrowawayNS(t)
	runPortSuite(t, iptPMHarness())
}

// TestIPTPortsLayout pins the rules as iptables-save prints them.
func TestIPTPortsLayout(t *testing.T) {
	requireThrowawayNS(t)
	ctx := context.Background()
	m := iptPMHarness().fresh(t).(*IPTPorts)
	if _, err := m.DelPorts(ctx, ownerA); err != nil {
		t.Fatal(err)
	}
	if err := m.GCPorts(ctx, "net1", nil); err != nil {
		t.Fatal(err)
	}
	if out := mustCommand(t, "iptables-save"); strings.Contains(out, "PLUMB") || strings.Contains(out, iptPMPrefix) {
		t.Fatalf("DEL and GC on an empty system created:\n%s", out)
	}
	var maps []string
	for p := 9000; p < 9020; p++ {
		maps = append(maps, "udp "+strconv.Itoa(p)+":"+strconv.Itoa(p))
	}
	r := pmRule(t, ownerA, dualA, append(maps, "tcp 8080:80", "tcp 8443:443", "tcp 192.0.2.1:8081:81", "tcp6 8080:80")...)
	if err := m.AddPorts(ctx, r); err != nil {
		t.Fatal(err)
	}
	c := iptPMOwnerChain(ownerA)
	comment := `-m comment --comment "plumb ` + ownerA.Hash() + ` net1 ctr-a eth0" -j ` + c
	s := saveTable(t, famV4, "nat")
	for chain, want := range map[string][]string{
		iptPMHost: {"-d 192.0.2.1/32 -p tcp -m multiport --dports 8081 " + comment},
		iptPMAny:  {"-p tcp -m multiport --dports 8080,8443 " + comment, "-p udp -m multiport --dports 9000:9019 " + comment},
	} {
		if got := s.rules[chain]; !reflect.DeepEqual(got, want) {
			t.Fatalf("%s:\n got %q\nwant %q", chain, got, want)
		}
	}
	if got := s.rules[c][:4]; !reflect.DeepEqual(got, []string{
		"-s 10.88.0.0/24 -j MARK --set-xmark 0x2000/0x2000",
		"-s 127.0.0.0/8 -j MARK --set-xmark 0x2000/0x2000",
		"-d 192.0.2.1/32 -p tcp -m tcp --dport 8081 -j DNAT --to-destination 10.88.0.2:81",
		"-p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80",
	}) {
		t.Fatalf("%s: %q", c, got)
	}
	if got := saveTable(t, famV6, "nat").rules[c]; !reflect.DeepEqual(got, []string{
		"-s fd00:88::/64 -j MARK --set-xmark 0x2000/0x2000",
		"-p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:88::2]:80",
	}) {
		t.Fatalf("ip6tables %s: %q", c, got)
	}
	if n := len(c); n > 28 {
		t.Fatalf("chain name %s is %d characters, iptables allows 28", c, n)
	}
}

// TestIPTPortsOptions: conditions narrow the dispatch rules, an external
// mark chain replaces plumb's marks, and DEL finds rules whose conditions
// changed since the ADD.
func TestIPTPortsOptions(t *testing.T) {
	requireThrowawayNS(t)
	ctx := context.Background()
	m := iptPMHarness().fresh(t).(*IPTPorts)
	mustCommand(t, "iptables", "-t", "nat", "-N", "KUBE-MARK-MASQ")
	r := pmRule(t, ownerA, v4A, "tcp 8080:80")
	r.ConditionsV4 = []string{"-s", "192.0.2.0/24", "!", "-i", "plext0"}
	r.ExternalSetMarkChain = "KUBE-MARK-MASQ"
	if err := m.AddPorts(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := m.CheckPorts(ctx, r); err != nil {
		t.Fatal(err)
	}
	s := saveTable(t, famV4, "nat")
	c := iptPMOwnerChain(ownerA)
	if got := s.rules[iptPMAny]; len(got) != 1 || !strings.HasPrefix(got[0], "-s 192.0.2.0/24 ! -i plext0 -p tcp -m multiport --dports 8080 ") {
		t.Fatalf("%s: %q", iptPMAny, got)
	}
	if got := s.rules[c][:2]; !reflect.DeepEqual(got, []string{"-s 10.88.0.0/24 -j KUBE-MARK-MASQ", "-s 127.0.0.0/8 -j KUBE-MARK-MASQ"}) {
		t.Fatalf("%s: %q", c, got)
	}
	for _, spec := range s.rules["POSTROUTING"] {
		if strings.Contains(spec, "plumb portmap masquerade") {
			t.Fatalf("masquerade rule with an external mark chain: %q", spec)
		}
	}
	// Re-ADD with other conditions replaces the old rule.
	r.ConditionsV4 = []string{"-s", "198.51.100.0/24"}
	if err := m.AddPorts(ctx, r); err != nil {
		t.Fatal(err)
	}
	if got := saveTable(t, famV4, "nat").rules[iptPMAny]; len(got) != 1 || !strings.HasPrefix(got[0], "-s 198.51.100.0/24 -p tcp") {
		t.Fatalf("after re-ADD %s: %q", iptPMAny, got)
	}
	// DEL knows no conditions: it finds the rule by its target.
	got, err := m.DelPorts(ctx, ownerA)
	if err != nil || len(got) != 1 {
		t.Fatalf("DelPorts = %v, %v", got, err)
	}
	s = saveTable(t, famV4, "nat")
	if len(s.rules[iptPMAny]) != 0 || s.chains[c] {
		t.Fatalf("left after DEL: %q, chain %v", s.rules[iptPMAny], s.chains[c])
	}
}
