package fw

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// pmNFTDump is `nft -j list table inet plumb_portmap`, reduced: chains,
// maps and sets by name.
type pmNFTDump struct {
	chains map[string]map[string]any
	maps   map[string]map[string]any
	sets   map[string]map[string]any
}

func listPM(t *testing.T) (pmNFTDump, bool) {
	t.Helper()
	d := pmNFTDump{chains: map[string]map[string]any{}, maps: map[string]map[string]any{}, sets: map[string]map[string]any{}}
	out, err := command("nft", "-j", "list", "table", "inet", pmTable)
	if err != nil {
		if strings.Contains(err.Error(), "No such file or directory") {
			return d, false
		}
		t.Fatal(err)
	}
	var doc struct {
		Nftables []map[string]map[string]any `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("parse nft -j output: %v\n%s", err, out)
	}
	for _, obj := range doc.Nftables {
		if c, ok := obj["chain"]; ok {
			d.chains[c["name"].(string)] = c
		}
		if m, ok := obj["map"]; ok {
			d.maps[m["name"].(string)] = m
		}
		if m, ok := obj["set"]; ok {
			d.sets[m["name"].(string)] = m
		}
	}
	return d, true
}

// nftElemVal unwraps an element with a comment: its value and comment.
func nftElemVal(v any) (any, string) {
	if obj, ok := v.(map[string]any); ok {
		if e, ok := obj["elem"]; ok {
			c, _ := e.(map[string]any)["comment"].(string)
			return e.(map[string]any)["val"], c
		}
	}
	return v, ""
}

// nftConcat reads a {"concat": [...]} value as strings.
func nftConcat(t *testing.T, v any) []string {
	t.Helper()
	v, _ = nftElemVal(v)
	parts, ok := v.(map[string]any)["concat"].([]any)
	if !ok {
		t.Fatalf("not a concatenation: %v", v)
	}
	var out []string
	for _, p := range parts {
		switch p := p.(type) {
		case string:
			out = append(out, p)
		case float64:
			out = append(out, strconv.Itoa(int(p)))
		default:
			t.Fatalf("unexpected field %v in %v", p, v)
		}
	}
	return out
}

// nftKeyText renders a shared map key as portKey.String does.
func nftKeyText(t *testing.T, v6 bool, key []string) string {
	t.Helper()
	host := "0.0.0.0"
	if v6 {
		host = "::"
	}
	if len(key) == 3 {
		host, key = key[0], key[1:]
	}
	return key[0] + " " + net.JoinHostPort(host, key[1])
}

func pmElems(m map[string]any) [][]any {
	var out [][]any
	elems, _ := m["elem"].([]any)
	for _, e := range elems {
		if pair, ok := e.([]any); ok {
			out = append(out, pair)
		} else {
			out = append(out, []any{e})
		}
	}
	return out
}

func nftPMHarness() pmHarness {
	return pmHarness{
		name: "nftables",
		fresh: func(t *testing.T) PortMapper {
			resetFirewall(t)
			m, err := NewNFTPorts()
			if err != nil {
				t.Fatal(err)
			}
			m.LockPath = testLock(t)
			return m
		},
		view: func(t *testing.T) pmView {
			v := pmView{owners: map[string][]string{}, holders: map[string]string{}}
			d, ok := listPM(t)
			if !ok {
				return v
			}
			for _, e := range pmElems(d.maps[pmOwnersMap]) {
				id, _ := nftElemVal(e[0])
				v.owners[id.(string)] = nil
			}
			for _, k := range pmKinds {
				v6 := k.fam() == famV6
				for _, e := range pmElems(d.maps[k.String()]) {
					_, holder := nftElemVal(e[0])
					v.holders[nftKeyText(t, v6, nftConcat(t, e[0]))] = holder
				}
				for _, e := range pmElems(d.maps[k.claimsMap()]) {
					key, to := nftConcat(t, e[0]), nftConcat(t, e[1])
					if _, ok := v.owners[key[0]]; !ok {
						t.Fatalf("claim %v of an owner not in map %s", key, pmOwnersMap)
					}
					v.owners[key[0]] = append(v.owners[key[0]], nftKeyText(t, v6, key[1:])+" -> "+net.JoinHostPort(to[0], to[1]))
				}
			}
			for c := range v.owners {
				sort.Strings(v.owners[c])
			}
			return v
		},
		chainOf: pmOwnerID,
		base: func(t *testing.T) {
			d, ok := listPM(t)
			if !ok {
				t.Fatal("table inet plumb_portmap is missing")
			}
			for name, want := range map[string]string{
				pmGuardChain: "filter prerouting -300", pmPreChain: "nat prerouting -100",
				pmOutChain: "nat output -100", pmPostChain: "nat postrouting 90",
			} {
				c := d.chains[name]
				if got := fmt.Sprintf("%v %v %v", c["type"], c["hook"], c["prio"]); got != want {
					t.Fatalf("chain %s is %s, want %s", name, got, want)
				}
			}
			for chain, want := range map[string][]string{
				pmGuardChain: {`iifname != "lo" ip daddr 127.0.0.0/8 drop`},
				pmPreChain:   {"fib daddr type local jump ports"},
				pmOutChain:   {"fib daddr type local jump ports"},
				pmPostChain:  {"meta mark & 0x00002000 == 0x00002000 masquerade"},
				pmPortsChain: {
					"meta nfproto ipv4 jump host4",
					"meta nfproto ipv4 jump any4",
					"meta nfproto ipv6 jump host6",
					"meta nfproto ipv6 jump any6",
				},
			} {
				got := pmChainRules(t, chain)
				if chain == pmPostChain && len(got) > 0 {
					got = got[:1] // other tests add other mark bits
				}
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("chain %s rules %q, want %q", chain, got, want)
				}
			}
			for k, dnat := range map[pmKind]string{
				kindHost4: "dnat ip to ip daddr . meta l4proto . th dport map @host4",
				kindAny4:  "meta nfproto ipv4 dnat ip to meta l4proto . th dport map @any4",
				kindHost6: "dnat ip6 to ip6 daddr . meta l4proto . th dport map @host6",
				kindAny6:  "meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @any6",
			} {
				got := pmChainRules(t, k.String())
				if len(got) == 0 || got[len(got)-1] != dnat {
					t.Fatalf("chain %s rules %q, want %q last", k, got, dnat)
				}
				seen := map[string]bool{}
				for _, r := range got[:len(got)-1] {
					i := strings.Index(r, "@"+k.String()+"-mark")
					if i < 0 || seen[r] || !strings.Contains(r, " meta mark set meta mark | 0x") {
						t.Fatalf("chain %s: rule %q is not one of its mark rules, or twice (%q)", k, r, got)
					}
					seen[r] = true
					if _, ok := d.sets[strings.Fields(r[i+1:])[0]]; !ok {
						t.Fatalf("chain %s: rule %q looks up a missing set", k, r)
					}
				}
			}
			for _, m := range append([]string{pmOwnersMap}, "host4", "any4", "host6", "any6",
				"claims-host4", "claims-any4", "claims-host6", "claims-any6") {
				if _, ok := d.maps[m]; !ok {
					t.Fatalf("map %s is missing", m)
				}
			}
		},
		dropKey: func(t *testing.T, key string, o Owner) {
			proto, hostport, _ := strings.Cut(key, " ")
			host, port, _ := net.SplitHostPort(hostport)
			ip := net.ParseIP(host)
			kind, elem := "any4", proto+" . "+port
			switch {
			case ip.To4() == nil && ip.IsUnspecified():
				kind = "any6"
			case ip.To4() == nil:
				kind, elem = "host6", host+" . "+elem
			case !ip.IsUnspecified():
				kind, elem = "host4", host+" . "+elem
			}
			mustCommand(t, "nft", "delete", "element", "inet", pmTable, kind, "{ "+elem+" }")
		},
		// flushOwner empties what is o's alone: its claims and its
		// masquerade marks (the tests call it with o the only owner).
		flushOwner: func(t *testing.T, o Owner) {
			d, _ := listPM(t)
			for name := range d.sets {
				mustCommand(t, "nft", "flush", "set", "inet", pmTable, name)
			}
			for _, k := range pmKinds {
				mustCommand(t, "nft", "flush", "map", "inet", pmTable, k.claimsMap())
			}
		},
	}
}

// pmChainRules lists a chain's rules as nft prints them.
func pmChainRules(t *testing.T, chain string) []string {
	t.Helper()
	out := mustCommand(t, "nft", "list", "chain", "inet", pmTable, chain)
	var rules []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "", line == "}", strings.HasPrefix(line, "table "),
			strings.HasPrefix(line, "chain "), strings.HasPrefix(line, "type "):
			continue
		}
		rules = append(rules, line)
	}
	return rules
}

func TestNFTPorts(t *testing.T) {
	requireThrowawayNS(t)
	runPortSuite(t, nftPMHarness())
}

// TestNFTPortsLayout pins what nft prints of an owner's elements and the
// chains that use them, so an operator reading `nft list ruleset` sees the
// design.
func TestNFTPortsLayout(t *testing.T) {
	requireThrowawayNS(t)
	ctx := context.Background()
	m := nftPMHarness().fresh(t).(*NFTPorts)
	if _, err := m.DelPorts(ctx, ownerA); err != nil {
		t.Fatal(err)
	}
	if err := m.GCPorts(ctx, "net1", nil); err != nil {
		t.Fatal(err)
	}
	if out := mustCommand(t, "nft", "list", "ruleset"); strings.TrimSpace(out) != "" {
		t.Fatalf("DEL and GC on an empty system created:\n%s", out)
	}
	r := pmRule(t, ownerA, dualA, "tcp 8080:80", "tcp 192.0.2.1:8081:81", "tcp6 8080:80")
	if err := m.AddPorts(ctx, r); err != nil {
		t.Fatal(err)
	}
	id := pmOwnerID(ownerA)
	for chain, want := range map[string][]string{
		"host4": {
			"ip saddr & 255.0.0.0 . ip daddr . meta l4proto . th dport @host4-mark13-8 meta mark set meta mark | 0x00002000",
			"ip saddr & 255.255.255.0 . ip daddr . meta l4proto . th dport @host4-mark13-24 meta mark set meta mark | 0x00002000",
			"dnat ip to ip daddr . meta l4proto . th dport map @host4",
		},
		"any4": {
			"ip saddr & 255.0.0.0 . meta l4proto . th dport @any4-mark13-8 meta mark set meta mark | 0x00002000",
			"ip saddr & 255.255.255.0 . meta l4proto . th dport @any4-mark13-24 meta mark set meta mark | 0x00002000",
			"meta nfproto ipv4 dnat ip to meta l4proto . th dport map @any4",
		},
		"any6": {
			"ip6 saddr & ffff:ffff:ffff:ffff:: . meta l4proto . th dport @any6-mark13-64 meta mark set meta mark | 0x00002000",
			"meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @any6",
		},
		"host6": {"dnat ip6 to ip6 daddr . meta l4proto . th dport map @host6"},
	} {
		if got := pmChainRules(t, chain); !reflect.DeepEqual(got, want) {
			t.Fatalf("chain %s:\n got %q\nwant %q", chain, got, want)
		}
	}
	elems := func(kind, name string) string {
		t.Helper()
		return mustCommand(t, "nft", "list", kind, "inet", pmTable, name)
	}
	for name, want := range map[string][]string{
		"map any4":            {`tcp . 8080 comment "` + id + `" : 10.88.0.2 . 80`},
		"map host4":           {`192.0.2.1 . tcp . 8081 comment "` + id + `" : 10.88.0.2 . 81`},
		"map claims-any4":     {`"` + id + `" . tcp . 8080 comment "mark 13 10.88.0.0/24 127.0.0.0/8" : 10.88.0.2 . 80`},
		"map claims-any6":     {`"` + id + `" . tcp . 8080 comment "mark 13 fd00:88::/64" : fd00:88::2 . 80`},
		"map owners":          {`"` + id + `" comment "plumb ` + ownerA.Hash() + ` net1 ctr-a eth0" : 0x00000003`},
		"set any4-mark13-24":  {"10.88.0.0 . tcp . 8080"},
		"set any4-mark13-8":   {"127.0.0.0 . tcp . 8080"},
		"set host4-mark13-24": {"10.88.0.0 . 192.0.2.1 . tcp . 8081"},
		"set any6-mark13-64":  {"fd00:88:: . tcp . 8080"},
	} {
		kind, set, _ := strings.Cut(name, " ")
		out := elems(kind, set)
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Fatalf("%s:\n%s\nwant %s", name, out, w)
			}
		}
	}

	// masqAll marks everything; no snat marks nothing.
	r.MasqAll = true
	if err := m.AddPorts(ctx, r); err != nil {
		t.Fatal(err)
	}
	if out := elems("map", "claims-any4"); !strings.Contains(out, `comment "mark 13 0.0.0.0/0"`) {
		t.Fatalf("masqAll claim:\n%s", out)
	}
	if out := elems("set", "any4-mark13-0"); !strings.Contains(out, "0.0.0.0 . tcp . 8080") {
		t.Fatalf("masqAll marks:\n%s", out)
	}
	if out := elems("set", "any4-mark13-24"); strings.Contains(out, "8080") {
		t.Fatalf("the subnet mark stayed with masqAll:\n%s", out)
	}
	r.SNAT = false
	if err := m.AddPorts(ctx, r); err != nil {
		t.Fatal(err)
	}
	if out := elems("map", "claims-any4"); strings.Contains(out, "mark") {
		t.Fatalf("claim without snat:\n%s", out)
	}
	d, _ := listPM(t)
	for name, set := range d.sets {
		if len(pmElems(set)) > 0 {
			t.Fatalf("without snat, set %s still has %v", name, pmElems(set))
		}
	}
}

// TestNFTPortsTakeoverComment: a key taken over names whom it was taken
// from, newest first, at most pmPrevMax of them.
func TestNFTPortsTakeoverComment(t *testing.T) {
	requireThrowawayNS(t)
	ctx := context.Background()
	m := nftPMHarness().fresh(t).(*NFTPorts)
	var owners []Owner
	for i := range pmPrevMax + 2 {
		o := Owner{Network: "net1", ContainerID: fmt.Sprintf("ctr-%d", i), IfName: "eth0"}
		owners = append(owners, o)
		if err := m.AddPorts(ctx, pmRule(t, o, []string{fmt.Sprintf("10.88.0.%d/24", i+2)}, "udp 53:53")); err != nil {
			t.Fatal(err)
		}
	}
	last := pmOwnerID(owners[len(owners)-1])
	out := mustCommand(t, "nft", "list", "map", "inet", pmTable, "claims-any4")
	var prev []string
	for i := len(owners) - 2; i >= len(owners)-1-pmPrevMax; i-- {
		prev = append(prev, pmOwnerID(owners[i]))
	}
	if want := `"` + last + `" . udp . 53 comment "mark 13 10.88.0.0/24 127.0.0.0/8 prev ` + strings.Join(prev, " ") + `"`; !strings.Contains(out, want) {
		t.Fatalf("claims of the newest claimant:\n%s\nwant %s", out, want)
	}
	// The newest goes: the one before takes the key; and so on down.
	for i := len(owners) - 1; i > 0; i-- {
		if _, err := m.DelPorts(ctx, owners[i]); err != nil {
			t.Fatal(err)
		}
		if got := nftPMHarness().view(t).holders["udp 0.0.0.0:53"]; got != pmOwnerID(owners[i-1]) {
			t.Fatalf("after DEL of %s the key goes to %q, want %s", owners[i].ContainerID, got, pmOwnerID(owners[i-1]))
		}
	}
}

// TestNFTPortsUnsupported: options of the iptables backend are refused
// before anything changes.
func TestNFTPortsUnsupported(t *testing.T) {
	requireThrowawayNS(t)
	m := nftPMHarness().fresh(t)
	for name, edit := range map[string]func(*PortRule){
		"externalSetMarkChain": func(r *PortRule) { r.ExternalSetMarkChain = "KUBE-MARK-MASQ" },
		"conditionsV4":         func(r *PortRule) { r.ConditionsV4 = []string{"-s", "10.0.0.0/8"} },
		"conditionsV6":         func(r *PortRule) { r.ConditionsV6 = []string{"-s", "fd00::/8"} },
	} {
		r := pmRule(t, ownerA, v4A, "tcp 8080:80")
		edit(&r)
		err := m.AddPorts(context.Background(), r)
		if err == nil || !strings.Contains(err.Error(), name+" is not supported with the nftables backend") {
			t.Errorf("%s: AddPorts = %v", name, err)
		}
	}
	if out := mustCommand(t, "nft", "list", "ruleset"); strings.TrimSpace(out) != "" {
		t.Fatalf("refused ADDs created:\n%s", out)
	}
}

// pmSkeleton is plumb_portmap without set elements: every chain, rule
// (with its handle) and set or map (with its types), as nft prints them.
func pmSkeleton(t *testing.T) []string {
	t.Helper()
	out := mustCommand(t, "nft", "-j", "list", "table", "inet", pmTable)
	var doc struct {
		Nftables []map[string]map[string]any `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("parse nft -j output: %v", err)
	}
	var skel []string
	for _, obj := range doc.Nftables {
		for kind, o := range obj {
			if kind == "metainfo" {
				continue
			}
			if kind == "map" && o["map"] == "verdict" {
				t.Fatalf("map %s has verdicts: adding one revalidates the table", o["name"])
			}
			delete(o, "elem")
			b, err := json.Marshal(o)
			if err != nil {
				t.Fatal(err)
			}
			skel = append(skel, kind+" "+string(b))
		}
	}
	sort.Strings(skel)
	return skel
}

// TestNFTPortsSteadyStateOnlyElements guards what keeps ADD and DEL flat
// in the number of containers: once the table and the masquerade classes
// in use exist, an ADD (taking a key over), a DEL (giving it back) and a
// DEL without mappings known add or delete no chain, no rule and no set,
// and no map holds verdicts (a jump or goto element, or a new rule with a
// lookup or NAT, makes the kernel revalidate every chain and map element).
func TestNFTPortsSteadyStateOnlyElements(t *testing.T) {
	requireThrowawayNS(t)
	ctx := context.Background()
	m := nftPMHarness().fresh(t).(*NFTPorts)
	for i := range 50 {
		o := Owner{Network: "net1", ContainerID: fmt.Sprintf("fill-%d", i), IfName: "eth0"}
		if err := m.AddPorts(ctx, pmRule(t, o, []string{fmt.Sprintf("10.88.1.%d/16", i+2), fmt.Sprintf("fd00:88::1:%d/64", i+2)},
			fmt.Sprintf("tcp %d:80", 10000+i), fmt.Sprintf("udp6 %d:53", 10000+i), "tcp 8080:80")); err != nil {
			t.Fatal(err)
		}
	}
	r := pmRule(t, ownerA, dualA, "tcp 8080:80", "udp 5353:53", "tcp6 8080:80", "tcp 192.0.2.1:8081:81")
	// The first ADD of a class (mark bit, source prefix) adds its set and rules.
	if err := m.AddPorts(ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err := DelPortsKnown(ctx, m, ownerA, r.Mappings); err != nil {
		t.Fatal(err)
	}
	before := pmSkeleton(t)
	same := func(what string) {
		t.Helper()
		if after := pmSkeleton(t); !reflect.DeepEqual(before, after) {
			t.Fatalf("%s changed more than elements:\nbefore %q\nafter  %q", what, before, after)
		}
	}
	holder := func() string { return nftPMHarness().view(t).holders["tcp 0.0.0.0:8080"] }
	for _, known := range []bool{true, false} {
		if err := m.AddPorts(ctx, r); err != nil {
			t.Fatal(err)
		}
		same("ADD")
		if got := holder(); got != pmOwnerID(ownerA) {
			t.Fatalf("after ADD tcp 8080 goes to %q, want ownerA", got)
		}
		var hint []PortMapping
		if known {
			hint = r.Mappings
		}
		got, err := DelPortsKnown(ctx, m, ownerA, hint)
		if err != nil || len(got) != 4 {
			t.Fatalf("DEL (mappings known %t) = %v, %v", known, got, err)
		}
		same("DEL")
		if got := holder(); got != pmOwnerID(Owner{Network: "net1", ContainerID: "fill-49", IfName: "eth0"}) {
			t.Fatalf("after DEL tcp 8080 goes to %q, want fill-49", got)
		}
	}
}
