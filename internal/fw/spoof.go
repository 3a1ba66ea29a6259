package fw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// SpoofRule says which source addresses may enter the bridge through one
// port (a container's host veth): frames only from MAC, and IPv4, ARP and
// IPv6 packets only from Addrs (IPv6 link-local and the unspecified address,
// which neighbour discovery needs, are always allowed).
type SpoofRule struct {
	Port  string
	MAC   net.HardwareAddr
	Addrs []net.IP
}

var (
	// ErrInvalidSpoof: a SpoofRule rejected before anything changed.
	ErrInvalidSpoof = errors.New("invalid spoof check")
	// ErrSpoofMismatch: CheckSpoof found the kernel state different.
	ErrSpoofMismatch = errors.New("spoof check state differs")
)

// SpoofGuard drops what a container sends with a source it was not given.
type SpoofGuard interface {
	AddSpoof(ctx context.Context, r SpoofRule) error
	// DelSpoof removes the port's rules; absent is success.
	DelSpoof(ctx context.Context, port string) error
	CheckSpoof(ctx context.Context, r SpoofRule) error
	// GCSpoof removes the rules of every port for which alive is false.
	GCSpoof(ctx context.Context, alive func(port string) bool) error
}

// The nftables layout (table bridge plumb_spoof), one hash lookup per frame:
//
//	chain prerouting { type filter hook prerouting priority -300;
//		iifname vmap @ports }
//	map ports { type ifname : verdict }     vethXXXX : jump s-vethXXXX
//	chain s-vethXXXX {
//		ether saddr != 02:..:01 drop
//		ether type arp arp saddr ether != 02:..:01 drop
//		ether type arp arp saddr ip != { 10.88.0.2 } drop
//		ether type ip ip saddr != { 10.88.0.2 } drop
//		ether type ip6 ip6 saddr fe80::/10 return
//		ether type ip6 ip6 saddr :: return
//		ether type ip6 ip6 saddr != { fd00::2 } drop }
//
// The port name is derived from the attachment, so the element's data never
// changes for a key: ADD is idempotent without reading anything first.
const (
	spoofTable    = "plumb_spoof"
	spoofBase     = "prerouting"
	spoofMap      = "ports"
	spoofPriority = -300 // before anything else bridges do with the frame
	ifNameLen     = 16   // IFNAMSIZ: nftables ifname keys are NUL-padded to it
)

var (
	etherTypeIPv4 = []byte{0x08, 0x00}
	etherTypeARP  = []byte{0x08, 0x06}
	etherTypeIPv6 = []byte{0x86, 0xdd}
)

// NFTSpoof is the nftables SpoofGuard (netlink, one transaction per change).
type NFTSpoof struct {
	LockPath string
}

var _ SpoofGuard = (*NFTSpoof)(nil)

func spoofChain(port string) string { return "s-" + port }

func spoofTableRef() *nftables.Table {
	return &nftables.Table{Name: spoofTable, Family: nftables.TableFamilyBridge}
}

func spoofMapRef() *nftables.Set {
	// Interface names are host-order strings; saying so lets nft print them.
	return &nftables.Set{Table: spoofTableRef(), Name: spoofMap, IsMap: true, KeyType: nftables.TypeIFName,
		KeyByteOrder: binaryutil.NativeEndian, DataType: nftables.TypeVerdict}
}

func ifNameKey(name string) []byte {
	k := make([]byte, ifNameLen)
	copy(k, name)
	return k
}

func validPort(p string) error {
	if p == "" || len(p) >= ifNameLen || strings.ContainsAny(p, "/ \t\n\x00") {
		return fmt.Errorf("%w: port %q is not an interface name", ErrInvalidSpoof, p)
	}
	return nil
}

// spoofRules builds the port chain's rules. addSet queues each anonymous
// address set before a rule refers to it (queuing gives the set its name and
// transaction ID, which the lookup must carry).
func spoofRules(t *nftables.Table, r SpoofRule, addSet func(*nftables.Set, []net.IP) error) (rules [][]expr.Any, err error) {
	if len(r.MAC) != 6 {
		return nil, fmt.Errorf("%w: MAC %q is not an Ethernet address", ErrInvalidSpoof, r.MAC)
	}
	var v4, v6 []net.IP
	for _, ip := range r.Addrs {
		if ip4 := ip.To4(); ip4 != nil {
			v4 = append(v4, ip4)
		} else if ip.To16() != nil {
			v6 = append(v6, ip.To16())
		} else {
			return nil, fmt.Errorf("%w: %q is not an IP address", ErrInvalidSpoof, ip)
		}
	}
	etherType := func(tp []byte) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 12, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: tp},
		}
	}
	drop := &expr.Verdict{Kind: expr.VerdictDrop}
	ret := &expr.Verdict{Kind: expr.VerdictReturn}
	notMAC := func(base expr.PayloadBase, off uint32) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: base, Offset: off, Len: 6},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: r.MAC},
		}
	}
	notIn := func(set *nftables.Set, off, n uint32) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
			&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: true},
		}
	}
	rules = append(rules, append(notMAC(expr.PayloadBaseLLHeader, 6), drop))
	// ARP sender hardware address sits at offset 8 of the ARP header.
	rules = append(rules, append(append(etherType(etherTypeARP), notMAC(expr.PayloadBaseNetworkHeader, 8)...), drop))
	if len(v4) > 0 {
		// An anonymous set binds to one rule, so ARP and IPv4 get their own.
		arpSet := &nftables.Set{Table: t, Anonymous: true, Constant: true, KeyType: nftables.TypeIPAddr}
		ipSet := &nftables.Set{Table: t, Anonymous: true, Constant: true, KeyType: nftables.TypeIPAddr}
		if err := errors.Join(addSet(arpSet, v4), addSet(ipSet, v4)); err != nil {
			return nil, err
		}
		// ARP sender protocol address: offset 14.
		rules = append(rules, append(append(etherType(etherTypeARP), notIn(arpSet, 14, 4)...), drop))
		rules = append(rules, append(append(etherType(etherTypeIPv4), notIn(ipSet, ipv4SaddrOffset, 4)...), drop))
	}
	if len(v6) > 0 {
		set := &nftables.Set{Table: t, Anonymous: true, Constant: true, KeyType: nftables.TypeIP6Addr}
		if err := addSet(set, v6); err != nil {
			return nil, err
		}
		linkLocal := append(etherType(etherTypeIPv6),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipv6SaddrOffset, Len: 16},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 16, Mask: net.CIDRMask(10, 128), Xor: make([]byte, 16)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: net.ParseIP("fe80::").To16()},
			ret)
		unspecified := append(etherType(etherTypeIPv6),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: ipv6SaddrOffset, Len: 16},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: make([]byte, 16)},
			ret)
		rules = append(rules, linkLocal, unspecified,
			append(append(etherType(etherTypeIPv6), notIn(set, ipv6SaddrOffset, 16)...), drop))
	}
	return rules, nil
}

func openSpoofConn() (*nftables.Conn, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, noNFTables(fmt.Errorf("open nf_tables connection: %w", err))
	}
	return c, nil
}

// AddSpoof installs (or replaces) the port's chain and points the port at
// it, in one transaction that also ensures the table, base chain and map.
func (g *NFTSpoof) AddSpoof(ctx context.Context, r SpoofRule) error {
	if err := validPort(r.Port); err != nil {
		return err
	}
	t := spoofTableRef()
	if _, err := spoofRules(t, r, func(*nftables.Set, []net.IP) error { return nil }); err != nil {
		return err // invalid input: change nothing
	}
	release, err := lockFile(ctx, g.LockPath)
	if err != nil {
		return fmt.Errorf("add spoof check for %s: %w", r.Port, err)
	}
	defer release()
	c, err := openSpoofConn()
	if err != nil {
		return err
	}
	c.AddTable(t)
	prio := nftables.ChainPriority(spoofPriority)
	base := c.AddChain(&nftables.Chain{Name: spoofBase, Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: &prio})
	m := spoofMapRef()
	if err := c.AddSet(m, nil); err != nil {
		return fmt.Errorf("add map %s: %w", spoofMap, err)
	}
	c.FlushChain(base) // one rule, rewritten so a damaged base is repaired, never doubled
	c.AddRule(&nftables.Rule{Table: t, Chain: base, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: m.Name, SetID: m.ID, DestRegister: 0, IsDestRegSet: true},
	}})
	ch := c.AddChain(&nftables.Chain{Name: spoofChain(r.Port), Table: t})
	c.FlushChain(ch)
	rules, err := spoofRules(t, r, func(set *nftables.Set, addrs []net.IP) error {
		elems := make([]nftables.SetElement, len(addrs))
		for i, a := range addrs {
			elems[i] = nftables.SetElement{Key: a}
		}
		if err := c.AddSet(set, elems); err != nil {
			return fmt.Errorf("add address set for %s: %w", r.Port, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, e := range rules {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e})
	}
	if err := c.SetAddElements(m, []nftables.SetElement{{Key: ifNameKey(r.Port), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: ch.Name}}}); err != nil {
		return fmt.Errorf("add port %s to map: %w", r.Port, err)
	}
	if err := c.Flush(); err != nil {
		return noNFTables(fmt.Errorf("add spoof check for %s: %w", r.Port, err))
	}
	return nil
}

// DelSpoof removes the port's element and chain. The common case is one
// transaction; when the element or chain is already gone the transaction
// fails as a whole and the narrower ones follow.
func (g *NFTSpoof) DelSpoof(ctx context.Context, port string) error {
	if err := validPort(port); err != nil {
		return err
	}
	release, err := lockFile(ctx, g.LockPath)
	if err != nil {
		return fmt.Errorf("remove spoof check for %s: %w", port, err)
	}
	defer release()
	del := func(elem, chain bool) error {
		c, err := openSpoofConn()
		if err != nil {
			return err
		}
		if elem {
			if err := c.SetDeleteElements(spoofMapRef(), []nftables.SetElement{{Key: ifNameKey(port)}}); err != nil {
				return err
			}
		}
		if chain {
			ch := &nftables.Chain{Name: spoofChain(port), Table: spoofTableRef()}
			c.FlushChain(ch)
			c.DelChain(ch)
		}
		return c.Flush()
	}
	if del(true, true) == nil || del(false, true) == nil || del(true, false) == nil {
		return nil
	}
	// Nothing could be deleted: fine if nothing is there.
	present, err := g.portState(port)
	if err != nil {
		return fmt.Errorf("remove spoof check for %s: %w", port, err)
	}
	if present != "" {
		return fmt.Errorf("remove spoof check for %s: %s remains", port, present)
	}
	return nil
}

// portState names what of the port's state exists ("" for nothing).
func (g *NFTSpoof) portState(port string) (string, error) {
	c, err := openSpoofConn()
	if err != nil {
		return "", err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyBridge)
	if err != nil {
		return "", fmt.Errorf("list bridge chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name == spoofTable && ch.Name == spoofChain(port) {
			return "chain " + ch.Name, nil
		}
	}
	elem, err := spoofElem(port)
	if err != nil {
		return "", err
	}
	if elem != nil {
		return "map element " + port, nil
	}
	return "", nil
}

// CheckSpoof compares the port's chain and map element with r.
func (g *NFTSpoof) CheckSpoof(ctx context.Context, r SpoofRule) error {
	if err := validPort(r.Port); err != nil {
		return err
	}
	c, err := openSpoofConn()
	if err != nil {
		return err
	}
	t := spoofTableRef()
	want, err := spoofRules(t, r, func(*nftables.Set, []net.IP) error { return nil })
	if err != nil {
		return err
	}
	got, err := c.GetRules(t, &nftables.Chain{Name: spoofChain(r.Port), Table: t})
	if err != nil || len(got) != len(want) {
		return fmt.Errorf("%w: spoof chain %s has %d rules, want %d", ErrSpoofMismatch, spoofChain(r.Port), len(got), len(want))
	}
	for i := range want {
		// Set references differ per transaction; compare everything else.
		if w, g := nftRuleText(want[i]), nftRuleText(got[i].Exprs); stripSetRefs(w) != stripSetRefs(g) {
			return fmt.Errorf("%w: spoof chain %s rule %d is %q, want %q", ErrSpoofMismatch, spoofChain(r.Port), i+1, g, w)
		}
	}
	elem, err := spoofElem(r.Port)
	if err != nil {
		return err
	}
	if elem != nil && elem.chain == spoofChain(r.Port) {
		return nil
	}
	return fmt.Errorf("%w: port %s is not in the spoof map", ErrSpoofMismatch, r.Port)
}

func stripSetRefs(s string) string {
	var b strings.Builder
	for _, f := range strings.Fields(s) {
		if strings.HasPrefix(f, "@") {
			f = "@set"
		}
		b.WriteString(f + " ")
	}
	return b.String()
}

// GCSpoof removes the state of ports that no longer exist.
func (g *NFTSpoof) GCSpoof(ctx context.Context, alive func(port string) bool) error {
	c, err := openSpoofConn()
	if err != nil {
		return err
	}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyBridge)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("list bridge chains: %w", err)
	}
	var errs []error
	for _, ch := range chains {
		port, ok := strings.CutPrefix(ch.Name, "s-")
		if ch.Table.Name != spoofTable || !ok || alive(port) {
			continue
		}
		if err := g.DelSpoof(ctx, port); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// spoofElem is the port's element of the ports map (nil when absent).
// google/nftables v0.3.0 does not decode verdicts of dumped elements, so the
// package's own reader does it.
func spoofElem(port string) (*vmapElem, error) {
	rd, err := dialNFTReader()
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	elems, err := rd.elementsIn(unix.NFPROTO_BRIDGE, spoofTable, spoofMap)
	if err != nil {
		return nil, fmt.Errorf("list %s map: %w", spoofMap, err)
	}
	for _, e := range elems {
		if strings.TrimRight(string(e.key), "\x00") == port {
			return &e, nil
		}
	}
	return nil, nil
}
