package fw

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The nftables layout (table inet plumb_portmap). Chains and rules are
// made once per table (and once per masquerade class, below); a container
// only adds and deletes elements of maps whose data is not a verdict:
//
//	chain guard { type filter hook prerouting priority raw;
//		meta nfproto ipv4 iifname != "lo" ip daddr 127.0.0.0/8 drop }
//	chain prerouting { type nat hook prerouting priority dstnat;
//		fib daddr type local jump ports }
//	chain output { type nat hook output priority dstnat;
//		fib daddr type local jump ports }
//	chain ports {
//		meta nfproto ipv4 jump host4
//		meta nfproto ipv4 jump any4
//		(ipv6 alike, host6 and any6) }
//	chain host4 {
//		ip saddr & 255.255.255.0 . ip daddr . meta l4proto . th dport @host4-mark13-24
//			meta mark set meta mark | 0x2000        (one rule per class in use)
//		dnat ip to ip daddr . meta l4proto . th dport map @host4 }
//	chain any4 { (alike, without ip daddr) dnat ip to meta l4proto . th dport map @any4 }
//	chain postrouting { type nat hook postrouting priority srcnat - 10;
//		meta mark & 0x2000 == 0x2000 masquerade      (one per mark bit in use) }
//	map host4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
//		192.0.2.1 . tcp . 8081 comment "<holder>" : 10.88.0.2 . 81 }
//	map any4 { type inet_proto . inet_service : ipv4_addr . inet_service
//		tcp . 8080 comment "<holder>" : 10.88.0.2 . 80 }
//	set host4-mark13-24 { type ipv4_addr . ipv4_addr . inet_proto . inet_service
//		10.88.0.0 . 192.0.2.1 . tcp . 8081 }
//	map claims-any4 { type ifname . inet_proto . inet_service : ipv4_addr . inet_service
//		"<owner>" . tcp . 8080 comment "mark 13 10.88.0.0/24 127.0.0.0/8 prev <o2> <o3>" : 10.88.0.2 . 80 }
//	map owners { type ifname : mark
//		"<owner>" comment "plumb <hash> <network> <id> <if>" : 0x00000003 }
//	(ipv6 alike: host6, any6, claims-host6, claims-any6, host6-mark13-64, ...)
//
// <owner> is the first 15 hex digits of Owner.Hash() (an ifname holds 15
// characters). The shared maps host4, any4, host6 and any6 say where a key
// (host address, protocol, port) goes and who holds it (the element's
// comment): a new connection costs one lookup per map, whatever the number
// of containers. The claims maps are each owner's record of what it
// publishes, whether or not it holds the key, with whom it took a key from
// ("prev", newest first, at most pmPrevMax) and how its traffic is marked
// for masquerade; owners counts each owner's claims and names it.
//
// Masquerade marks go by class: a set per (kind of key, mark bit, source
// prefix length) holds the masked source prefix and the key of each mark
// the holder of the key asks for: its subnet (hairpin, other containers)
// and 127.0.0.0/8 (the host through localhost), or 0.0.0.0/0 (masqAll).
// The mark rules of a kind come before its DNAT, which ends the chain's
// evaluation when it matches; a host key is looked up before the any key
// of its port, so the holder of the host key alone marks its traffic.
//
// Why this shape: a transaction that adds a jump or goto (a verdict
// element) or a rule with a NAT or lookup expression makes the kernel
// revalidate every chain reachable from the base chains, walking every
// element of every verdict map. Here a change adds a rule only the first
// time a class (mark bit, prefix length) appears; otherwise it adds and
// deletes data elements, whose cost does not depend on how many there are.
//
// Every call reads with exact-key lookups, 64 to a netlink round trip: the
// owner's element and claims, and the holder of each key. Only when the
// owner's claims are not all among the keys asked for (a re-ADD with other
// mappings, a DEL with no mappings known) are the claims maps listed.

const (
	pmTable      = "plumb_portmap"
	pmGuardChain = "guard"
	pmPreChain   = "prerouting"
	pmOutChain   = "output"
	pmPortsChain = "ports"
	pmPostChain  = "postrouting"
	pmOwnersMap  = "owners"
	pmClaimsPre  = "claims-" // of the claims maps: claims-host4, ...
	pmPrevWord   = "prev"
	pmMarkWord   = "mark"
	pmPrevMax    = 4              // earlier claimants remembered per key
	pmPostPrio   = 100 - 10       // srcnat - 10: ahead of other masquerades
	pmSockBuffer = 8 << 20        // room for one transaction of thousands of elements
	pmIDLen      = 15             // hex digits of Owner.Hash() in an ifname
	pmLoopback   = "lo\x00"       // iifname as nft compares it
	rtnLocal     = unix.RTN_LOCAL // fib result type of a local address
)

// The registers of lookups, as nft itself lays concatenations out: the key
// from register 1 (32-bit registers 8, 9, ...), a map's data into register
// 1. A 32-bit register that starts a 128-bit one goes by the latter's
// number, as the kernel reports it.
const (
	reg1   = unix.NFT_REG_1
	reg2   = unix.NFT_REG_2
	reg32a = unix.NFT_REG32_01
)

// reg32 is the i-th 32-bit register, named as the kernel names it back.
func reg32(i int) uint32 {
	if i%4 == 0 {
		return uint32(unix.NFT_REG_1 + i/4)
	}
	return uint32(unix.NFT_REG32_00 + i)
}

// pmKind is one of the four shared maps: a key on a host address or on
// every address, of either family.
type pmKind int

const (
	kindHost4 pmKind = iota
	kindAny4
	kindHost6
	kindAny6
)

var pmKinds = [...]pmKind{kindHost4, kindAny4, kindHost6, kindAny6}

// String names the kind's shared map and chain.
func (k pmKind) String() string { return [...]string{"host4", "any4", "host6", "any6"}[k] }

func (k pmKind) fam() family {
	if k == kindHost6 || k == kindAny6 {
		return famV6
	}
	return famV4
}

func (k pmKind) any() bool { return k == kindAny4 || k == kindAny6 }

func (k pmKind) claimsMap() string { return pmClaimsPre + k.String() }

func kindOf(k portKey) pmKind {
	switch {
	case k.fam == famV4 && !k.any():
		return kindHost4
	case k.fam == famV4:
		return kindAny4
	case !k.any():
		return kindHost6
	}
	return kindAny6
}

// nftKey encodes k as the shared map of its kind stores it: [address .]
// protocol . port, each field padded to a 32-bit register.
func (k portKey) nftKey() []byte {
	b := []byte(k.host)
	return append(b, k.proto, 0, 0, 0, byte(k.port>>8), byte(k.port), 0, 0)
}

// pmDecodeKey reads a key of kind back.
func pmDecodeKey(kind pmKind, b []byte) (portKey, bool) {
	alen := 0
	if !kind.any() {
		alen = kind.fam().addrLen()
	}
	if len(b) != alen+8 {
		return portKey{}, false
	}
	return portKey{fam: kind.fam(), host: string(b[:alen]), proto: b[alen], port: uint16(b[alen+4])<<8 | uint16(b[alen+5])}, true
}

func (f family) addrLen() int {
	if f == famV6 {
		return net.IPv6len
	}
	return net.IPv4len
}

// nftTarget encodes a mapping's target: address . port.
func nftTarget(ip net.IP, port uint16) []byte {
	return append(append([]byte(nil), ip...), byte(port>>8), byte(port), 0, 0)
}

func pmDecodeTarget(fam family, b []byte) (net.IP, uint16, bool) {
	alen := fam.addrLen()
	if len(b) != alen+4 {
		return nil, 0, false
	}
	return net.IP(append([]byte(nil), b[:alen]...)), uint16(b[alen])<<8 | uint16(b[alen+1]), true
}

// pmOwnerID names o in the owners and claims maps.
func pmOwnerID(o Owner) string { return o.Hash()[:pmIDLen] }

// idKey encodes an owner ID as an ifname: NUL-padded to 16 bytes.
func idKey(id string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, id)
	return b
}

func decodeID(b []byte) string { return strings.TrimRight(string(b), "\x00") }

// claimKey is the key of owner id's claim of k.
func claimKey(id string, k portKey) []byte { return append(idKey(id), k.nftKey()...) }

func pmTableRef() *nftables.Table {
	return &nftables.Table{Name: pmTable, Family: nftables.TableFamilyINet}
}

var (
	pmKeyFields = [...][]nftables.SetDatatype{
		kindHost4: {nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService},
		kindAny4:  {nftables.TypeInetProto, nftables.TypeInetService},
		kindHost6: {nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService},
		kindAny6:  {nftables.TypeInetProto, nftables.TypeInetService},
	}
	pmAddrTypes   = [...]nftables.SetDatatype{famV4: nftables.TypeIPAddr, famV6: nftables.TypeIP6Addr}
	pmTargetTypes = [...]nftables.SetDatatype{
		famV4: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService),
		famV6: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService),
	}
)

// pmSharedMap describes the shared map of kind: key to target.
func pmSharedMap(k pmKind) *nftables.Set {
	return &nftables.Set{Table: pmTableRef(), Name: k.String(), IsMap: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(pmKeyFields[k]...), DataType: pmTargetTypes[k.fam()]}
}

// pmClaimsMap describes the claims map of kind: owner . key to target.
func pmClaimsMap(k pmKind) *nftables.Set {
	return &nftables.Set{Table: pmTableRef(), Name: k.claimsMap(), IsMap: true, Concatenation: true,
		KeyType:  nftables.MustConcatSetType(append([]nftables.SetDatatype{nftables.TypeIFName}, pmKeyFields[k]...)...),
		DataType: pmTargetTypes[k.fam()]}
}

// pmOwnersMap describes the owners map: owner to its number of claims.
func pmOwnersMapSet() *nftables.Set {
	// An ifname is host byte order to nft; it reads the data of a map whose
	// byte order the set does not record as big endian.
	return &nftables.Set{Table: pmTableRef(), Name: pmOwnersMap, IsMap: true, KeyType: nftables.TypeIFName,
		KeyByteOrder: binaryutil.NativeEndian, DataType: nftables.TypeMark}
}

// pmClass is a masquerade class: traffic to keys of kind from a source
// prefix of length plen is marked with bit.
type pmClass struct {
	kind pmKind
	bit  int
	plen int
}

// setName is "host4-mark13-24".
func (c pmClass) setName() string {
	return fmt.Sprintf("%s-%s%d-%d", c.kind, pmMarkWord, c.bit, c.plen)
}

// parseClass reads a class set's name back.
func parseClass(name string) (pmClass, bool) {
	kind, rest, ok := strings.Cut(name, "-"+pmMarkWord)
	if !ok {
		return pmClass{}, false
	}
	b, p, ok := strings.Cut(rest, "-")
	if !ok {
		return pmClass{}, false
	}
	for _, k := range pmKinds {
		if k.String() != kind {
			continue
		}
		bit, err1 := strconv.Atoi(b)
		plen, err2 := strconv.Atoi(p)
		if err1 != nil || err2 != nil || bit < 0 || bit > 31 || plen < 0 || plen > 8*k.fam().addrLen() {
			return pmClass{}, false
		}
		c := pmClass{kind: k, bit: bit, plen: plen}
		return c, c.setName() == name
	}
	return pmClass{}, false
}

func (c pmClass) mark() uint32 { return 1 << uint(c.bit) }

func (c pmClass) set() *nftables.Set {
	fields := append([]nftables.SetDatatype{pmAddrTypes[c.kind.fam()]}, pmKeyFields[c.kind]...)
	return &nftables.Set{Table: pmTableRef(), Name: c.setName(), Concatenation: true, KeyType: nftables.MustConcatSetType(fields...)}
}

// NFTPorts is the nftables PortMapper. It talks netlink directly and never
// runs nft. Every change is one transaction, made under the flock all
// plumb processes share.
type NFTPorts struct {
	// LockPath is the lock file; DefaultLockPath when empty.
	LockPath string
}

var (
	_ PortMapper        = (*NFTPorts)(nil)
	_ KnownPortsDeleter = (*NFTPorts)(nil)
)

// NewNFTPorts checks that the kernel speaks nf_tables and returns the
// backend; the error wraps ErrNoNFTables when it does not.
func NewNFTPorts() (*NFTPorts, error) {
	m := &NFTPorts{}
	if err := m.Usable(context.Background()); err != nil {
		return nil, err
	}
	return m, nil
}

// Usable asks nf_tables one question (does plumb's table exist).
func (m *NFTPorts) Usable(ctx context.Context) error {
	r, err := dialNFTReader()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrPortsUnusable, err)
	}
	defer r.Close()
	if _, err := r.tableExists(pmTable); err != nil {
		if errors.Is(err, unix.EINVAL) && !errors.Is(err, ErrNoNFTables) {
			err = fmt.Errorf("%w: %w", ErrNoNFTables, err)
		}
		return fmt.Errorf("%w: probe nf_tables: %w", ErrPortsUnusable, err)
	}
	return nil
}

// nftOnly rejects the options only the iptables backend has.
func nftOnly(p portPlan) error {
	if p.extMark != "" {
		return invalidPorts("externalSetMarkChain is not supported with the nftables backend")
	}
	for f, c := range p.conds {
		if len(c) > 0 {
			name := "conditionsV4"
			if family(f) == famV6 {
				name = "conditionsV6"
			}
			return invalidPorts("%s is not supported with the nftables backend", name)
		}
	}
	return nil
}

// openPM opens a session on plumb_portmap whose transaction socket can take
// a batch of thousands of elements.
func openPM() (*nftSession, error) {
	return openNFTSession(pmTableRef(), nftables.WithSockOptions(func(c *netlink.Conn) error {
		if rc, err := c.SyscallConn(); err == nil {
			var serr error
			if err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_SNDBUFFORCE, pmSockBuffer)
			}); err == nil && serr == nil {
				return nil
			}
		}
		return c.SetWriteBuffer(pmSockBuffer) // capped by net.core.wmem_max
	}))
}

// pmClaim is one owner's claim of a key: where it sends the key's traffic,
// how it marks it for masquerade, and whom it took the key from.
type pmClaim struct {
	key   portKey
	ctrIP net.IP
	port  uint16
	bit   int          // mark bit; -1: no masquerade
	srcs  []*net.IPNet // source prefixes that are marked
	prev  []string     // earlier claimants, newest first
}

func (c pmClaim) target() []byte { return nftTarget(c.ctrIP, c.port) }

func (c pmClaim) mapping() PortMapping {
	return portMap{key: c.key, ctrIP: c.ctrIP, ctrPort: c.port}.mapping()
}

// markText is "mark 13 10.88.0.0/24 127.0.0.0/8", "" without masquerade.
func (c pmClaim) markText() string {
	if c.bit < 0 {
		return ""
	}
	w := []string{pmMarkWord, strconv.Itoa(c.bit)}
	for _, s := range c.srcs {
		w = append(w, s.String())
	}
	return strings.Join(w, " ")
}

// comment is the claim element's comment: its marks, then its earlier
// claimants.
func (c pmClaim) comment() string {
	w := c.markText()
	if len(c.prev) > 0 {
		w = strings.TrimSpace(w + " " + pmPrevWord + " " + strings.Join(c.prev, " "))
	}
	return w
}

// parseClaimComment reads a claim's comment into c.
func (c *pmClaim) parseComment(comment string) {
	c.bit, c.srcs, c.prev = -1, nil, nil
	f := strings.Fields(comment)
	for i := 0; i < len(f); i++ {
		switch {
		case f[i] == pmMarkWord && i+1 < len(f):
			if b, err := strconv.Atoi(f[i+1]); err == nil && b >= 0 && b <= 31 {
				c.bit = b
			}
			i++
			for i+1 < len(f) && f[i+1] != pmPrevWord {
				if _, n, err := net.ParseCIDR(f[i+1]); err == nil {
					if ip4 := n.IP.To4(); ip4 != nil && c.key.fam == famV4 {
						n.IP = ip4
					}
					c.srcs = append(c.srcs, n)
				}
				i++
			}
		case f[i] == pmPrevWord:
			c.prev = append(c.prev, f[i+1:]...)
			return
		}
	}
}

// marks are the class elements of the claim's masquerade: set name to key.
func (c pmClaim) marks() map[string][]byte {
	if c.bit < 0 {
		return nil
	}
	out := map[string][]byte{}
	for _, s := range c.srcs {
		ones, _ := s.Mask.Size()
		cl := pmClass{kind: kindOf(c.key), bit: c.bit, plen: ones}
		out[cl.setName()] = append(append([]byte(nil), s.IP.Mask(s.Mask)...), c.key.nftKey()...)
	}
	return out
}

// classes are the masquerade classes the claim uses.
func (c pmClaim) classes() []pmClass {
	var out []pmClass
	for _, s := range c.srcs {
		ones, _ := s.Mask.Size()
		out = append(out, pmClass{kind: kindOf(c.key), bit: c.bit, plen: ones})
	}
	return out
}

// pmWanted is what a plan claims, in the plan's order.
func pmWanted(p portPlan) []pmClaim {
	out := make([]pmClaim, 0, len(p.maps))
	for _, m := range p.maps {
		c := pmClaim{key: m.key, ctrIP: m.ctrIP, port: m.ctrPort, bit: -1}
		if p.snat {
			c.bit = bits.TrailingZeros32(p.mark)
			f := m.key.fam
			switch {
			case p.masqAll:
				c.srcs = []*net.IPNet{{IP: make(net.IP, f.addrLen()), Mask: net.CIDRMask(0, 8*f.addrLen())}}
			default:
				c.srcs = []*net.IPNet{p.subnets[f]}
				if f == famV4 {
					c.srcs = append(c.srcs, loopback4)
				}
			}
		}
		out = append(out, c)
	}
	return out
}

// sameClaim reports whether two claims of a key send and mark alike.
func sameClaim(a, b pmClaim) bool {
	return a.ctrIP.Equal(b.ctrIP) && a.port == b.port && a.markText() == b.markText()
}

// prevList writes the earlier claimants of a key, newest first, without
// self and duplicates, at most pmPrevMax of them.
func prevList(self string, prev []string) []string {
	var out []string
	seen := map[string]bool{self: true}
	for _, c := range prev {
		if !seen[c] && len(out) < pmPrevMax {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out
}

func sortClaims(cs []pmClaim) {
	sort.Slice(cs, func(i, j int) bool {
		return portMapLess(portMap{key: cs[i].key}, portMap{key: cs[j].key})
	})
}

func claimMappings(cs []pmClaim) []PortMapping {
	sortClaims(cs)
	var out []PortMapping
	for _, c := range cs {
		out = append(out, c.mapping())
	}
	return out
}

// countData encodes an owner's number of claims as the owners map stores it.
func countData(n int) []byte { return binaryutil.BigEndian.PutUint32(uint32(n)) }
