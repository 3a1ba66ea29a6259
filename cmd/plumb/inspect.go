package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"sort"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/fw"
	"github.com/plumbnet/plumb/ipam/store"
)

// ownerState is everything plumb finds for one attachment of a network.
type ownerState struct {
	ContainerID string   `json:"containerID"`
	IfName      string   `json:"ifname"`
	NetNS       string   `json:"netns,omitempty"`
	Leaked      bool     `json:"leaked"` // the runtime's cache does not know it
	Veths       []string `json:"veths,omitempty"`
	Addresses   []string `json:"addresses,omitempty"`
	Rules       []string `json:"rules,omitempty"`
}

// inventory is what plumb created for a network, grouped by owner.
type inventory struct {
	Network  string        `json:"network"`
	Bridges  []string      `json:"bridges"`
	Owners   []*ownerState `json:"owners"`
	Unowned  []string      `json:"unowned,omitempty"` // rules whose owner hash matches nothing known
	Problems []string      `json:"problems,omitempty"`
}

func (inv *inventory) leaked() []*ownerState {
	var out []*ownerState
	for _, o := range inv.Owners {
		if o.Leaked {
			out = append(out, o)
		}
	}
	return out
}

// takeInventory gathers veths (by their owner alias), host-local
// reservations, and masquerade, port-publishing and firewall chains of network, and marks owners the
// libcni cache does not know as leaked.
func (e *env) takeInventory(ctx context.Context, ni *netInfo) (*inventory, error) {
	inv := &inventory{Network: ni.Name, Bridges: ni.Bridges, Owners: []*ownerState{}}
	owners := map[[2]string]*ownerState{}
	get := func(id, ifname string) *ownerState {
		k := [2]string{id, ifname}
		if owners[k] == nil {
			owners[k] = &ownerState{ContainerID: id, IfName: ifname, Leaked: true}
		}
		return owners[k]
	}
	atts, err := e.cachedAttachments()
	if err != nil {
		return nil, err
	}
	for _, a := range atts {
		if a.Network == ni.Name {
			o := get(a.ContainerID, a.IfName)
			o.Leaked, o.NetNS = false, a.NetNS
		}
	}
	links, err := listLinks()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	prefix := "plumb/" + ni.Name + "/"
	for _, l := range links {
		if rest, ok := strings.CutPrefix(l.Attrs().Alias, prefix); ok {
			id, ifname, _ := strings.Cut(rest, "/")
			o := get(id, ifname)
			o.Veths = append(o.Veths, l.Attrs().Name)
		}
	}
	for _, dir := range ni.DataDirs {
		st, err := store.NewDisk(dir, ni.Name)
		if err != nil {
			inv.Problems = append(inv.Problems, fmt.Sprintf("host-local store %s: %v", dir, err))
			continue
		}
		rs, err := st.List()
		st.Close()
		if err != nil {
			inv.Problems = append(inv.Problems, fmt.Sprintf("host-local store %s: %v", dir, err))
			continue
		}
		for _, r := range rs {
			o := get(r.Owner.ContainerID, r.Owner.IfName)
			o.Addresses = append(o.Addresses, r.IP.String())
		}
	}
	var rules []fw.Owned
	if m, err := fw.NewNFTMasq(); err == nil {
		if got, err := m.Inspect(ctx, ni.Name); err == nil {
			rules = append(rules, got...)
		}
	}
	if m, err := fw.NewIPTMasq(); err == nil {
		if got, err := m.Inspect(ctx, ni.Name); err == nil {
			rules = append(rules, got...)
		}
	}
	rules = append(rules, fw.InspectChains(ctx, ni.Name)...)
	for _, r := range rules {
		text := r.Text()
		matched := false
		for _, o := range owners {
			if r.OwnedBy(fw.Owner{Network: ni.Name, ContainerID: o.ContainerID, IfName: o.IfName}) {
				o.Rules = append(o.Rules, text)
				matched = true
				break
			}
		}
		if !matched {
			inv.Unowned = append(inv.Unowned, text)
		}
	}
	for _, o := range owners {
		inv.Owners = append(inv.Owners, o)
	}
	sort.Slice(inv.Owners, func(i, j int) bool {
		a, b := inv.Owners[i], inv.Owners[j]
		return a.ContainerID+"/"+a.IfName < b.ContainerID+"/"+b.IfName
	})
	return inv, nil
}

func cmdInspect(e *env, args []string) int {
	fs := flag.NewFlagSet("inspect", flag.ContinueOnError)
	rest, code, ok := e.parse(fs, args, 1, "inspect [flags] NETWORK")
	if !ok {
		return code
	}
	list, err := e.network(rest[0])
	if err != nil {
		return e.fail(err)
	}
	ni, err := readNetInfo(list)
	if err != nil {
		return e.fail(err)
	}
	inv, err := e.takeInventory(context.Background(), ni)
	if err != nil {
		return e.fail(err)
	}
	if e.json {
		b, _ := json.MarshalIndent(inv, "", "  ")
		fmt.Fprintln(e.stdout, string(b))
		return 0
	}
	w := e.stdout
	fmt.Fprintf(w, "network %s\n", inv.Network)
	for _, br := range inv.Bridges {
		state := "absent"
		if l, err := netlink.LinkByName(br); err == nil {
			state = "down"
			if l.Attrs().OperState == netlink.OperUp || l.Attrs().Flags&1 != 0 {
				state = "up"
			}
			if addrs, err := netlink.AddrList(l, netlink.FAMILY_ALL); err == nil {
				for _, a := range addrs {
					if !a.IP.IsLinkLocalUnicast() {
						state += " " + a.IPNet.String()
					}
				}
			}
		}
		fmt.Fprintf(w, "  bridge %s: %s\n", br, state)
	}
	for _, o := range inv.Owners {
		label := "attached"
		if o.NetNS != "" {
			label += " in " + o.NetNS
		}
		if o.Leaked {
			label = "LEAKED: the runtime's cache does not know this attachment (plumb gc " + inv.Network + " removes it)"
		}
		fmt.Fprintf(w, "  %s/%s  %s\n", o.ContainerID, o.IfName, label)
		for _, v := range o.Veths {
			fmt.Fprintf(w, "    veth %s\n", v)
		}
		for _, a := range o.Addresses {
			fmt.Fprintf(w, "    address %s (host-local)\n", a)
		}
		for _, r := range o.Rules {
			fmt.Fprintf(w, "    rule %s\n", r)
		}
	}
	for _, r := range inv.Unowned {
		fmt.Fprintf(w, "  LEAKED rule with no known owner: %s\n", r)
	}
	for _, p := range inv.Problems {
		fmt.Fprintf(w, "  problem: %s\n", p)
	}
	return 0
}

// listLinks lists the host's links, again when a concurrent change (a
// DEL's reaper deleting a veth, say) interrupted the kernel's dump.
func listLinks() ([]netlink.Link, error) {
	for i := 0; ; i++ {
		links, err := netlink.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == 10 {
			return links, err
		}
	}
}
