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

// pmNFTDump is `nft -j list table inet plumb_portmap`, reduced: chains by
// name, maps by name.
type pmNFTDump struct {
	chains map[string]map[string]any
	maps   map[string]map[string]any
}

func listPM(t *testing.T) (pmNFTDump, bool) {
	t.Helper()
	d := pmNFTDump{chains: map[string]map[string]any{}, maps: map[string]map[string]any{}}
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
	}
	return d, true
}

// nftConcat reads a {"concat": [...]} value as strings.
func nftConcat(t *testing.T, v any) []string {
	t.Helper()
	if obj, ok := v.(map[string]any); ok {
		if e, ok := obj["elem"]; ok { // an element with a comment
			v = e.(map[string]any)["val"]
		}
	}
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

// nftKeyText renders a shared or owner map key as portKey.String does.
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
		out = append(out, e.([]any))
	}
	return out
}

// pmOwnerMapOf splits "p-<net>-<owner>-a4" into the owner chain and kind.
func pmOwnerMapOf(name string) (chain string, v6 bool, ok bool) {
	i := strings.LastIndex(name, "-")
	if !strings.HasPrefix(name, pmOwnerPrefix) || i < 0 {
		return "", false, false
	}
	switch name[i+1:] {
	case "a4", "h4":
		return name[:i], false, true
	case "a6", "h6":
		return name[:i], true, true
	}
	return "", false, false
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
			for name := range d.chains {
				if strings.HasPrefix(name, pmOwnerPrefix) {
					v.owners[name] = nil
				}
			}
			for name, m := range d.maps {
				if k := strings.TrimSuffix(strings.TrimSuffix(name, "4"), "6"); k == "host" || k == "any" {
					for _, e := range pmElems(m) {
						key := nftKeyText(t, strings.HasSuffix(name, "6"), nftConcat(t, e[0]))
						v.holders[key] = e[1].(map[string]any)["goto"].(map[string]any)["target"].(string)
					}
					continue
				}
				chain, v6, ok := pmOwnerMapOf(name)
				if !ok {
					t.Fatalf("unexpected map %s", name)
				}
				if _, ok := v.owners[chain]; !ok {
					t.Fatalf("map %s without its chain", name)
				}
				for _, e := range pmElems(m) {
					to := nftConcat(t, e[1])
					v.owners[chain] = append(v.owners[chain], nftKeyText(t, v6, nftConcat(t, e[0]))+" -> "+net.JoinHostPort(to[0], to[1]))
				}
			}
			for c := range v.owners {
				sort.Strings(v.owners[c])
			}
			return v
		},
		chainOf: pmOwnerChain,
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
					"ip daddr . meta l4proto . th dport vmap @host4",
					"meta nfproto ipv4 meta l4proto . th dport vmap @any4",
					"ip6 daddr . meta l4proto . th dport vmap @host6",
					"meta nfproto ipv6 meta l4proto . th dport vmap @any6",
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
		flushOwner: func(t *testing.T, o Owner) {
			mustCommand(t, "nft", "flush", "chain", "inet", pmTable, pmOwnerChain(o))
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

// TestNFTPortsLayout pins what nft prints of an owner's chain and maps, so
// an operator reading `nft list ruleset` sees the design.
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
	c := pmOwnerChain(ownerA)
	want := []string{
		"ip saddr 10.88.0.0/24 meta mark set meta mark | 0x00002000",
		"ip saddr 127.0.0.0/8 meta mark set meta mark | 0x00002000",
		"ip6 saddr fd00:88::/64 meta mark set meta mark | 0x00002000",
		"dnat ip to ip daddr . meta l4proto . th dport map @" + c + "-h4",
		"meta nfproto ipv4 dnat ip to meta l4proto . th dport map @" + c + "-a4",
		"meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @" + c + "-a6",
	}
	if got := pmChainRules(t, c); !reflect.DeepEqual(got, want) {
		t.Fatalf("chain %s:\n got %q\nwant %q", c, got, want)
	}
	out := mustCommand(t, "nft", "list", "map", "inet", pmTable, c+"-a4")
	for _, w := range []string{`comment "plumb ` + ownerA.Hash() + ` net1 ctr-a eth0"`, "tcp . 8080 : 10.88.0.2 . 80"} {
		if !strings.Contains(out, w) {
			t.Fatalf("map %s-a4:\n%s\nwant %s", c, out, w)
		}
	}

	// masqAll marks everything; no snat marks nothing.
	r.MasqAll = true
	if err := m.AddPorts(ctx, r); err != nil {
		t.Fatal(err)
	}
	if got := pmChainRules(t, c)[:2]; !reflect.DeepEqual(got, []string{
		"meta nfproto ipv4 meta mark set meta mark | 0x00002000", "meta nfproto ipv6 meta mark set meta mark | 0x00002000"}) {
		t.Fatalf("masqAll marks: %q", got)
	}
	r.SNAT = false
	if err := m.AddPorts(ctx, r); err != nil {
		t.Fatal(err)
	}
	if got := pmChainRules(t, c); len(got) != 3 || strings.Contains(strings.Join(got, "\n"), "mark") {
		t.Fatalf("without snat: %q", got)
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
	last := pmOwnerChain(owners[len(owners)-1])
	out := mustCommand(t, "nft", "list", "map", "inet", pmTable, last+"-a4")
	var prev []string
	for i := len(owners) - 2; i >= len(owners)-1-pmPrevMax; i-- {
		prev = append(prev, pmOwnerChain(owners[i]))
	}
	if want := `comment "prev ` + strings.Join(prev, " ") + `"`; !strings.Contains(out, want) {
		t.Fatalf("map of the newest claimant:\n%s\nwant %s", out, want)
	}
	// The newest goes: the one before takes the key; and so on down.
	for i := len(owners) - 1; i > 0; i-- {
		if _, err := m.DelPorts(ctx, owners[i]); err != nil {
			t.Fatal(err)
		}
		if got := nftPMHarness().view(t).holders["udp 0.0.0.0:53"]; got != pmOwnerChain(owners[i-1]) {
			t.Fatalf("after DEL of %s the key goes to %q, want %s", owners[i].ContainerID, got, pmOwnerChain(owners[i-1]))
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
