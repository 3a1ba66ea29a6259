package fw

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/google/nftables"
)

// Owned is one piece of packet-filter state plumb made, with the owner hash
// it carries, for `plumb inspect` and `plumb doctor`.
type Owned struct {
	Backend string // "nftables" or "iptables"
	What    string // "masquerade", ...
	// Noun is what Object is: "chain" (when empty), or "owner" for the
	// elements of an owner in shared maps.
	Noun      string
	Object    string   // the owner's chain, or its name in shared maps
	OwnerHash string   // Owner.Hash(), or its prefix where names are short
	Addrs     []string // addresses pointing at the chain, or the owner's published ports
}

// Text is "nftables published ports owner 0123456789abcde tcp 0.0.0.0:8080 -> 10.88.0.2:80".
func (o Owned) Text() string {
	noun := o.Noun
	if noun == "" {
		noun = "chain"
	}
	return strings.TrimSpace(fmt.Sprintf("%s %s %s %s %s", o.Backend, o.What, noun, o.Object, strings.Join(o.Addrs, ",")))
}

// OwnedBy reports whether o carries owner's hash.
func (o Owned) OwnedBy(owner Owner) bool {
	return o.OwnerHash != "" && strings.HasPrefix(owner.Hash(), o.OwnerHash)
}

// Inspect lists the masquerade chains of network and the addresses that
// jump to them.
func (m *NFTMasq) Inspect(ctx context.Context, network string) ([]Owned, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, noNFTables(err)
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	prefix := nftNetPrefix(network)
	byChain := map[string]*Owned{}
	for _, ch := range chains {
		if ch.Table.Name != nftTable || !strings.HasPrefix(ch.Name, prefix) {
			continue
		}
		byChain[ch.Name] = &Owned{Backend: "nftables", What: "masquerade", Object: ch.Name, OwnerHash: strings.TrimPrefix(ch.Name, prefix)}
	}
	rd, err := dialNFTReader()
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	for _, set := range nftMaps {
		elems, err := rd.elements(nftTable, set)
		if err != nil {
			return nil, fmt.Errorf("list map %s: %w", set, err)
		}
		for _, e := range elems {
			if o := byChain[e.chain]; o != nil {
				o.Addrs = append(o.Addrs, net.IP(e.key).String())
			}
		}
	}
	return sortedOwned(byChain), nil
}

// Inspect lists the masquerade chains of network and the addresses that
// jump to them, in both families.
func (m *IPTMasq) Inspect(ctx context.Context, network string) ([]Owned, error) {
	prefix := iptNetPrefix(network)
	byChain := map[string]*Owned{}
	for _, f := range m.available() {
		rules, _, err := f.listChain(ctx, iptMasqChain)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", iptMasqChain, err)
		}
		for _, r := range rules {
			if !strings.HasPrefix(r.target, prefix) {
				continue
			}
			o := byChain[r.target]
			if o == nil {
				o = &Owned{Backend: "iptables", What: "masquerade", Object: r.target, OwnerHash: strings.TrimPrefix(r.target, prefix)}
				byChain[r.target] = o
			}
			if r.src != "" {
				o.Addrs = append(o.Addrs, strings.Split(r.src, "/")[0])
			}
		}
	}
	return sortedOwned(byChain), nil
}

func sortedOwned(m map[string]*Owned) []Owned {
	out := make([]Owned, 0, len(m))
	for _, o := range m {
		sort.Strings(o.Addrs)
		out = append(out, *o)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Object < out[j].Object })
	return out
}

// InspectChains lists the per-owner port-publishing and firewall state of
// network in both backends (masquerade has its own Inspect, with
// addresses): the nftables port owners with the ports they publish (dumps
// of the owners and claims maps), chains otherwise (one netlink dump, and
// one iptables listing per table where iptables exists).
func InspectChains(ctx context.Context, network string) []Owned {
	byChain := map[string]*Owned{}
	add := func(backend, what, prefix, name string) {
		if h, ok := strings.CutPrefix(name, prefix); ok {
			byChain[backend+" "+name] = &Owned{Backend: backend, What: what, Object: name, OwnerHash: h}
		}
	}
	if c, err := nftables.New(); err == nil {
		if chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet); err == nil {
			for _, ch := range chains {
				switch ch.Table.Name {
				case fltNFTTable:
					add("nftables", "firewall", fltNFTNetPrefix(network), ch.Name)
				}
			}
		}
	}
	for _, o := range inspectPMOwners(network) {
		o := o
		byChain["nftables owner "+o.Object] = &o
	}
	if m, err := NewIPTMasq(); err == nil {
		for _, f := range m.available() {
			lib, err := f.library()
			if err != nil {
				continue
			}
			if chains, err := lib.ListChains("nat"); err == nil {
				for _, ch := range chains {
					add("iptables", "published ports", iptPMNetPrefix(network), ch)
				}
			}
			if chains, err := lib.ListChains("filter"); err == nil {
				for _, ch := range chains {
					add("iptables", "firewall", fltIPTNetPrefix(network), ch)
				}
			}
		}
	}
	return sortedOwned(byChain)
}

// inspectPMOwners lists the owners of network in plumb_portmap with the
// ports they claim; none when the table is absent or unreadable.
func inspectPMOwners(network string) []Owned {
	rd, err := dialNFTReader()
	if err != nil {
		return nil
	}
	defer rd.Close()
	s := &nftSession{rd: rd}
	owners, err := s.listOwners()
	if err != nil {
		return nil
	}
	ids := map[string]bool{}
	for _, o := range owners {
		if o.network == network {
			ids[o.id] = true
		}
	}
	if len(ids) == 0 {
		return nil
	}
	claims, err := s.listClaims(ids)
	if err != nil {
		claims = nil
	}
	var out []Owned
	for _, id := range sortedKeys(ids) {
		o := Owned{Backend: "nftables", What: "published ports", Noun: "owner", Object: id, OwnerHash: id}
		for _, m := range claimMappings(derefClaims(claims[id])) {
			o.Addrs = append(o.Addrs, m.String())
		}
		out = append(out, o)
	}
	return out
}

func derefClaims(cs []*pmClaim) []pmClaim {
	out := make([]pmClaim, len(cs))
	for i, c := range cs {
		out[i] = *c
	}
	return out
}
