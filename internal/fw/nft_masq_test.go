package fw

import (
	"context"
	"encoding/json"
	"net"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// nftDump is `nft -j list table inet plumb_masq`, reduced.
type nftDump struct {
	chains map[string]map[string]any // name -> JSON object
	maps   map[string]map[string]any
}

func listNFT(t *testing.T) (nftDump, bool) {
	t.Helper()
	d := nftDump{chains: map[string]map[string]any{}, maps: map[string]map[string]any{}}
	out, err := command("nft", "-j", "list", "table", "inet", nftTable)
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

// nftChainRules lists a chain's rules as nft prints them.
func nftChainRules(t *testing.T, chain string) []string {
	t.Helper()
	out := mustCommand(t, "nft", "list", "chain", "inet", nftTable, chain)
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

// nftElems returns "ip -> chain" for a map's elements.
func nftElems(t *testing.T, m map[string]any) []string {
	t.Helper()
	var out []string
	elems, _ := m["elem"].([]any)
	for _, e := range elems {
		pair := e.([]any)
		key := pair[0]
		if obj, ok := key.(map[string]any); ok { // element with a comment
			key = obj["elem"].(map[string]any)["val"]
		}
		target := pair[1].(map[string]any)["jump"].(map[string]any)["target"].(string)
		out = append(out, key.(string)+" -> "+target)
	}
	return out
}

func nftHarness() masqHarness {
	return masqHarness{
		name: "nftables",
		fresh: func(t *testing.T) Masquerader {
			resetFirewall(t)
			m, err := NewNFTMasq()
			if err != nil {
				t.Fatal(err)
			}
			m.LockPath = testLock(t)
			return m
		},
		view: func(t *testing.T) masqView {
			v := masqView{chains: map[string][]string{}}
			d, ok := listNFT(t)
			if !ok {
				return v
			}
			for name := range d.chains {
				if name != nftBaseChain {
					v.chains[name] = nftChainRules(t, name)
				}
			}
			for _, name := range nftMaps {
				if m, ok := d.maps[name]; ok {
					v.jumps = append(v.jumps, nftElems(t, m)...)
				}
			}
			sort.Strings(v.jumps)
			return v
		},
		chainOf: nftOwnerChain,
		wantRules: func(r MasqRule) []string {
			var rules, mcast []string
			seen := map[string]bool{}
			for _, a := range r.Addrs {
				ip, n := "ip", a.IP.Mask(a.Mask)
				if a.IP.To4() == nil {
					ip = "ip6"
				}
				ones, _ := a.Mask.Size()
				rules = append(rules, ip+" saddr "+a.IP.String()+" "+ip+" daddr "+n.String()+"/"+strconv.Itoa(ones)+" return")
				seen[ip] = true
			}
			if seen["ip"] {
				mcast = append(mcast, "ip daddr 224.0.0.0/4 return")
			}
			if seen["ip6"] {
				mcast = append(mcast, "ip6 daddr ff00::/8 return")
			}
			return append(append(rules, mcast...), "masquerade")
		},
		base: func(t *testing.T) {
			d, ok := listNFT(t)
			if !ok {
				t.Fatal("table inet plumb_masq is missing")
			}
			c := d.chains[nftBaseChain]
			if c["type"] != "nat" || c["hook"] != "postrouting" || c["prio"] != float64(100) {
				t.Fatalf("base chain is %v, want type nat hook postrouting priority 100", c)
			}
			want := []string{"ip saddr vmap @masq4", "ip6 saddr vmap @masq6"}
			if got := nftChainRules(t, nftBaseChain); !reflect.DeepEqual(got, want) {
				t.Fatalf("base chain rules %q, want %q", got, want)
			}
			for name, typ := range map[string]string{"masq4": "ipv4_addr", "masq6": "ipv6_addr"} {
				if m := d.maps[name]; m["type"] != typ || m["map"] != "verdict" {
					t.Fatalf("map %s is %v, want %s : verdict", name, m, typ)
				}
			}
		},
		dropJump: func(t *testing.T, ip, chain string) {
			set := "masq4"
			if net.ParseIP(ip).To4() == nil {
				set = "masq6"
			}
			mustCommand(t, "nft", "delete", "element", "inet", nftTable, set, "{ "+ip+" }")
		},
		dropRule: func(t *testing.T, chain string) {
			out := mustCommand(t, "nft", "-a", "list", "chain", "inet", nftTable, chain)
			m := regexp.MustCompile(`# handle (\d+)`).FindAllStringSubmatch(out, -1)
			if len(m) < 2 { // the chain's own handle comes first
				t.Fatalf("no rule handle in\n%s", out)
			}
			mustCommand(t, "nft", "delete", "rule", "inet", nftTable, chain, "handle", m[1][1])
		},
	}
}

func TestNFTMasq(t *testing.T) {
	requireThrowawayNS(t)
	runMasqSuite(t, nftHarness())
}

// TestNFTMasqDetails checks what only the nftables layout has: element
// comments naming the owner, and that DEL of an unknown owner creates no
// table.
func TestNFTMasqDetails(t *testing.T) {
	requireThrowawayNS(t)
	ctx := context.Background()
	m := nftHarness().fresh(t).(*NFTMasq)

	if err := m.DelMasq(ctx, ownerA, ips("10.88.0.2")); err != nil {
		t.Fatal(err)
	}
	if err := m.DelMasq(ctx, ownerA, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.GCMasq(ctx, "net1", nil); err != nil {
		t.Fatal(err)
	}
	if out := mustCommand(t, "nft", "list", "ruleset"); strings.TrimSpace(out) != "" {
		t.Fatalf("DEL and GC on an empty system created:\n%s", out)
	}

	if err := m.AddMasq(ctx, masqRule(t, ownerA, "10.88.0.2/24")); err != nil {
		t.Fatal(err)
	}
	out := mustCommand(t, "nft", "list", "map", "inet", nftTable, "masq4")
	want := `10.88.0.2 comment "plumb ` + ownerA.Hash() + ` net1 ctr-a eth0" : jump ` + nftOwnerChain(ownerA)
	if !strings.Contains(out, want) {
		t.Fatalf("map masq4:\n%s\nwant element %s", out, want)
	}
}
