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
	Backend   string   // "nftables" or "iptables"
	What      string   // "masquerade", ...
	Object    string   // the owner's chain
	OwnerHash string   // Owner.Hash(), or its prefix where names are short (iptables)
	Addrs     []string // addresses pointing at the chain
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

// InspectChains lists the per-owner port-publishing and firewall chains of
// network in both backends (masquerade has its own Inspect, with
// addresses). One netlink dump, and one iptables listing per table where
// iptables exists.
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
				case pmTable:
					add("nftables", "published ports", pmNetPrefix(network), ch.Name)
				case fltNFTTable:
					add("nftables", "firewall", fltNFTNetPrefix(network), ch.Name)
				}
			}
		}
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
