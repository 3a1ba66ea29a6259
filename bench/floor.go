package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/netns"
)

// floor does the kernel work of one chain ADD/DEL from inside this process,
// straight through netlink, with no exec, no files and no locks: a veth
// with its peer created in the container on the bridge, the container's
// address, link and default route, and one nftables transaction with the
// container's masquerade and port-forward rules. It is what a plugin could
// cost if it cost nothing itself.
type floor struct {
	bridge string
	subnet *net.IPNet
	gw     net.IP

	host *netns.NS
	br   int // bridge ifindex
	next atomic.Uint32
}

func newFloor(bridge, subnet string) *floor {
	_, n, err := net.ParseCIDR(subnet)
	if err != nil {
		panic(err)
	}
	gw := append(net.IP(nil), n.IP.To4()...)
	gw[3]++
	return &floor{bridge: bridge, subnet: n, gw: gw}
}

func (f *floor) Name() string { return implFloor }

func (f *floor) Setup(host *netns.NS, _ string) error {
	f.host = host
	f.next.Store(0)
	h, err := host.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: f.bridge, Flags: net.FlagUp}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("floor: add bridge: %w", err)
	}
	l, err := h.LinkByName(f.bridge)
	if err != nil {
		return err
	}
	f.br = l.Attrs().Index
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: f.gw, Mask: f.subnet.Mask}}); err != nil {
		return fmt.Errorf("floor: bridge address: %w", err)
	}
	return host.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0o644)
	})
}

// names derives the host veth and nft table from the container ID, as the
// plugins do, so DEL needs no state.
func floorNames(id string) (veth, table string) { return "pbf" + id[:12], "pbf_" + id[:16] }

func (f *floor) Add(_ context.Context, c container) (net.IP, error) {
	k := f.next.Add(1)
	ip := net.IPv4(f.subnet.IP[0], f.subnet.IP[1], byte(1+k/250), byte(2+k%250)).To4()
	vethName, table := floorNames(c.ID)

	cns, err := netns.Open(c.Path)
	if err != nil {
		return nil, err
	}
	defer cns.Close()
	h, err := f.host.Netlink()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: vethName, MasterIndex: f.br, Flags: net.FlagUp},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(cns.Fd()),
	}
	if err := h.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("floor: add veth: %w", err)
	}
	ch, err := cns.Netlink()
	if err != nil {
		return nil, err
	}
	defer ch.Close()
	eth0, err := ch.LinkByName("eth0")
	if err != nil {
		return nil, err
	}
	if err := ch.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: f.subnet.Mask}}); err != nil {
		return nil, fmt.Errorf("floor: address: %w", err)
	}
	if err := ch.LinkSetUp(eth0); err != nil {
		return nil, err
	}
	if err := ch.RouteAdd(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: f.gw}); err != nil {
		return nil, fmt.Errorf("floor: default route: %w", err)
	}
	if err := f.addRules(table, ip, c.HostPort); err != nil {
		return nil, fmt.Errorf("floor: nft: %w", err)
	}
	return ip, nil
}

// addRules is one transaction: a table of the container's own with
//
//	postrouting: ip saddr IP ip daddr != SUBNET masquerade
//	prerouting:  tcp dport HOSTPORT dnat to IP:80
func (f *floor) addRules(table string, ip net.IP, hostPort int) error {
	conn, err := nftables.New(nftables.WithNetNSFd(f.host.Fd()))
	if err != nil {
		return err
	}
	t := conn.AddTable(&nftables.Table{Name: table, Family: nftables.TableFamilyIPv4})
	post := conn.AddChain(&nftables.Chain{Name: "post", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	pre := conn.AddChain(&nftables.Chain{Name: "pre", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	conn.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ip.To4()},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: f.subnet.Mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: f.subnet.IP.To4()},
		&expr.Masq{},
	}})
	port := binary.BigEndian.AppendUint16(nil, uint16(hostPort))
	conn.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
		&expr.Immediate{Register: 1, Data: ip.To4()},
		&expr.Immediate{Register: 2, Data: binary.BigEndian.AppendUint16(nil, 80)},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	}})
	return conn.Flush()
}

func (f *floor) Del(_ context.Context, c container) error {
	vethName, table := floorNames(c.ID)
	h, err := f.host.Netlink()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(vethName)
	if err != nil {
		return err
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("floor: delete veth: %w", err)
	}
	conn, err := nftables.New(nftables.WithNetNSFd(f.host.Fd()))
	if err != nil {
		return err
	}
	conn.DelTable(&nftables.Table{Name: table, Family: nftables.TableFamilyIPv4})
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("floor: delete table: %w", err)
	}
	return nil
}

func (f *floor) Probe(context.Context, container) error { return nil }

func (f *floor) Finish() (RSSMap, CallMap) {
	f.host = nil
	return nil, nil
}
