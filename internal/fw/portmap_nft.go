package fw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"syscall"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The nftables layout (table inet plumb_portmap):
//
//	chain guard { type filter hook prerouting priority raw;
//		meta nfproto ipv4 iifname != "lo" ip daddr 127.0.0.0/8 drop }
//	chain prerouting { type nat hook prerouting priority dstnat;
//		fib daddr type local jump ports }
//	chain output { type nat hook output priority dstnat;
//		fib daddr type local jump ports }
//	chain ports {
//		meta nfproto ipv4 ip daddr . meta l4proto . th dport vmap @host4
//		meta nfproto ipv4 meta l4proto . th dport vmap @any4
//		(ipv6 alike, @host6 and @any6) }
//	chain postrouting { type nat hook postrouting priority srcnat - 10;
//		meta mark & 0x2000 == 0x2000 masquerade      (one per mark bit in use) }
//	map host4 { type ipv4_addr . inet_proto . inet_service : verdict }
//		192.0.2.1 . tcp . 8080 : goto p-<net>-<owner>
//	map any4 { type inet_proto . inet_service : verdict }
//		tcp . 8080 : goto p-<net>-<owner>
//	chain p-<NetHash(network)>-<owner.Hash()> {
//		meta nfproto ipv4 ip saddr 10.88.0.0/24 meta mark set meta mark | 0x2000
//		meta nfproto ipv4 ip saddr 127.0.0.0/8 meta mark set meta mark | 0x2000
//		meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @p-<net>-<owner>-h4
//		meta nfproto ipv4 dnat ip to meta l4proto . th dport map @p-<net>-<owner>-a4
//		(ipv6 alike) }
//	map p-<net>-<owner>-a4 { type inet_proto . inet_service : ipv4_addr . inet_service;
//		comment "plumb <owner hash> <network> <id> <if>"
//		tcp . 8080 : 10.88.0.2 . 80 }
//
// A new connection costs at most three hash lookups whatever the number of
// containers and ports (later packets follow conntrack); a change touches
// one owner's chain, its maps, and its keys' elements in the shared maps, in
// one transaction. The shared maps say who holds a key: the kernel refuses
// to add a key that jumps elsewhere (EEXIST) and to delete a chain an
// element still jumps to (EBUSY).
//
// ADD first tries the transaction that is right when nobody else holds the
// owner's keys: it adds "key : goto mine", a no-op for keys the owner
// already holds. Only when the kernel answers EEXIST (another owner holds
// one) are the keys looked up, 64 to a netlink round trip, and taken over.
// DEL looks its keys up and deletes only those still its own (with many
// keys it first tries "add mine, then delete", which removes exactly the
// owner's). An owner that takes a key over notes, in its own map element's
// comment, whom it took it from ("prev p-.. p-..", newest first, at most
// pmPrevMax), so the key goes back to the most recent earlier claimant
// that still publishes it when the newer one goes.
//
// What the kernel does per change grows with the table: a transaction that
// adds a jump (a verdict element) or a rule with a NAT or lookup expression
// makes it revalidate every chain reachable from the base chains, one walk
// per map element (about 2 ms per 1,000 two-port containers), and it finds
// sets by name in a list. ADD pays the first; DEL adds no jump.

const (
	pmTable       = "plumb_portmap"
	pmGuardChain  = "guard"
	pmPreChain    = "prerouting"
	pmOutChain    = "output"
	pmPortsChain  = "ports"
	pmPostChain   = "postrouting"
	pmPrevPrefix  = "prev "
	pmPrevMax     = 4              // earlier claimants remembered per key
	pmPostPrio    = 100 - 10       // srcnat - 10: ahead of other masquerades
	pmSockBuffer  = 8 << 20        // room for one transaction of thousands of elements
	pmOwnerPrefix = "p-"           // of owner chains and maps
	pmLoopback    = "lo\x00"       // iifname as nft compares it
	rtnLocal      = unix.RTN_LOCAL // fib result type of a local address
	regVerdict    = unix.NFT_REG_VERDICT
)

// The registers of lookups, as nft itself lays concatenations out: the key
// from register 1 (32-bit registers 8, 9, ...), a map's data into register 1.
const (
	reg1   = unix.NFT_REG_1
	reg2   = unix.NFT_REG_2
	reg32a = unix.NFT_REG32_01
	reg32b = unix.NFT_REG32_02
	reg32e = unix.NFT_REG32_04
	reg32f = unix.NFT_REG32_05
)

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

func (k pmKind) String() string { return [...]string{"host4", "any4", "host6", "any6"}[k] }

// suffix names the owner's map of the kind.
func (k pmKind) suffix() string { return [...]string{"h4", "a4", "h6", "a6"}[k] }

func (k pmKind) fam() family {
	if k == kindHost6 || k == kindAny6 {
		return famV6
	}
	return famV4
}

func (k pmKind) any() bool { return k == kindAny4 || k == kindAny6 }

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
		alen = net.IPv4len
		if kind.fam() == famV6 {
			alen = net.IPv6len
		}
	}
	if len(b) != alen+8 {
		return portKey{}, false
	}
	return portKey{fam: kind.fam(), host: string(b[:alen]), proto: b[alen], port: uint16(b[alen+4])<<8 | uint16(b[alen+5])}, true
}

// nftTarget encodes a mapping's target: address . port.
func (m portMap) nftTarget() []byte {
	return append(append([]byte(nil), m.ctrIP...), byte(m.ctrPort>>8), byte(m.ctrPort), 0, 0)
}

func pmDecodeTarget(fam family, b []byte) (net.IP, uint16, bool) {
	alen := net.IPv4len
	if fam == famV6 {
		alen = net.IPv6len
	}
	if len(b) != alen+4 {
		return nil, 0, false
	}
	return net.IP(append([]byte(nil), b[:alen]...)), uint16(b[alen])<<8 | uint16(b[alen+1]), true
}

// pmNetPrefix starts the names of all owner chains (and maps) of network.
func pmNetPrefix(network string) string { return pmOwnerPrefix + NetHash(network) + "-" }

// pmOwnerChain is the name of o's chain.
func pmOwnerChain(o Owner) string { return pmNetPrefix(o.Network) + o.Hash() }

func pmOwnerMapName(chain string, k pmKind) string { return chain + "-" + k.suffix() }

func pmTableRef() *nftables.Table {
	return &nftables.Table{Name: pmTable, Family: nftables.TableFamilyINet}
}

var (
	pmProtoPort = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	pmKeyTypes  = [...]nftables.SetDatatype{
		kindHost4: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService),
		kindAny4:  pmProtoPort,
		kindHost6: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService),
		kindAny6:  pmProtoPort,
	}
	pmTargetTypes = [...]nftables.SetDatatype{
		famV4: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService),
		famV6: nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService),
	}
)

// pmSharedMap describes the shared verdict map of kind.
func pmSharedMap(k pmKind) *nftables.Set {
	return &nftables.Set{Table: pmTableRef(), Name: k.String(), IsMap: true, Concatenation: true,
		KeyType: pmKeyTypes[k], DataType: nftables.TypeVerdict}
}

// pmOwnerMap describes an owner's map of kind: key to container address and port.
func pmOwnerMap(chain string, k pmKind, comment string) *nftables.Set {
	return &nftables.Set{Table: pmTableRef(), Name: pmOwnerMapName(chain, k), IsMap: true, Concatenation: true,
		KeyType: pmKeyTypes[k], DataType: pmTargetTypes[k.fam()], Comment: comment}
}

// NFTPorts is the nftables PortMapper. It talks netlink directly and never
// runs nft. Every change is one transaction (two when another owner holds
// one of the keys), made under the flock all plumb processes share.
type NFTPorts struct {
	// LockPath is the lock file; DefaultLockPath when empty.
	LockPath string
}

var _ PortMapper = (*NFTPorts)(nil)

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

// pmElem is one element of an owner map: its key, target and the earlier
// claimants of the key, newest first.
type pmElem struct {
	key    portKey
	target []byte
	ctrIP  net.IP
	port   uint16
	prev   []string
}

// pmOwnerState is what an owner has in the kernel.
type pmOwnerState struct {
	chainExists bool
	maps        [4]bool            // which of the owner's maps exist
	elems       map[portKey]pmElem // every element of the owner's maps
}

func (st pmOwnerState) keys() []portKey {
	keys := make([]portKey, 0, len(st.elems))
	for k := range st.elems {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return portMapLess(portMap{key: keys[i]}, portMap{key: keys[j]})
	})
	return keys
}

func (st pmOwnerState) mappings() []PortMapping {
	var out []PortMapping
	for _, k := range st.keys() {
		e := st.elems[k]
		out = append(out, portMap{key: k, ctrIP: e.ctrIP, ctrPort: e.port}.mapping())
	}
	return out
}

// ownerState reads chain's existence and its maps (one dump per map).
func (s *nftSession) ownerState(chain string) (pmOwnerState, error) {
	st := pmOwnerState{elems: map[portKey]pmElem{}}
	var err error
	if st.chainExists, err = s.rd.chainExists(pmTable, chain); err != nil || !st.chainExists {
		return st, err
	}
	for _, k := range pmKinds {
		name := pmOwnerMapName(chain, k)
		elems, exists, err := s.rd.elementsOf(pmTable, name)
		if err != nil {
			return st, fmt.Errorf("list map %s: %w", name, err)
		}
		st.maps[k] = exists
		for _, e := range elems {
			key, ok := pmDecodeKey(k, e.key)
			ip, port, ok2 := pmDecodeTarget(k.fam(), e.data)
			if !ok || !ok2 {
				continue // not ours to understand; the map is rewritten or deleted anyway
			}
			st.elems[key] = pmElem{key: key, target: e.data, ctrIP: ip, port: port, prev: parsePrev(e.comment)}
		}
	}
	return st, nil
}

// parsePrev reads "prev p-a p-b".
func parsePrev(comment string) []string {
	rest, ok := strings.CutPrefix(comment, pmPrevPrefix)
	if !ok {
		return nil
	}
	return strings.Fields(rest)
}

// prevComment writes the earlier claimants of a key, newest first, without
// self and duplicates, at most pmPrevMax of them.
func prevComment(self string, prev []string) string {
	var out []string
	seen := map[string]bool{self: true}
	for _, c := range prev {
		if !seen[c] && len(out) < pmPrevMax {
			seen[c] = true
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		return ""
	}
	return pmPrevPrefix + strings.Join(out, " ")
}

// claim reads whether chain (another owner) still publishes k, and whom it
// took k from; ok is false when the chain or its map or element is gone.
func (s *nftSession) claim(chain string, k portKey) (prev []string, ok bool, err error) {
	alive, err := s.rd.chainExists(pmTable, chain)
	if err != nil || !alive {
		return nil, false, err
	}
	e, ok, err := s.rd.element(pmTable, pmOwnerMapName(chain, kindOf(k)), k.nftKey())
	if err != nil || !ok {
		return nil, false, err
	}
	return parsePrev(e.comment), true, nil
}

// successor is who gets k when chain lets it go: the first of prev (newest
// first) that is not going too and still publishes k; "" if none.
func (s *nftSession) successor(chain string, k portKey, prev []string, going map[string]bool) (string, error) {
	for _, c := range prev {
		if c == chain || going[c] {
			continue
		}
		_, ok, err := s.claim(c, k)
		if err != nil {
			return "", err
		}
		if ok {
			return c, nil
		}
	}
	return "", nil
}

// pmAdd is what an ADD queues, given who holds each key (nil: assume only
// this owner does).
type pmAdd struct {
	p       portPlan
	chain   string
	comment string
	old     pmOwnerState
	holders map[portKey]string
	prevs   map[portKey][]string // earlier claimants of keys taken over
}

// AddPorts installs the owner's chain and maps and points its keys at the
// chain. Round trips: five base-chain dumps, four map lookups, a chain
// lookup (and when the owner exists, a dump per map), one transaction; when
// another owner holds a key, its keys are looked up (64 to a round trip)
// and a second transaction takes them over.
func (m *NFTPorts) AddPorts(ctx context.Context, rule PortRule) error {
	p, err := parsePortRule(rule)
	if err != nil {
		return err
	}
	if err := nftOnly(p); err != nil {
		return err
	}
	label, chain := rule.Owner.label(), pmOwnerChain(rule.Owner)
	fail := func(err error) error { return fmt.Errorf("publish ports of %s: %w", label, err) }
	release, err := lockFile(ctx, m.LockPath)
	if err != nil {
		return fail(err)
	}
	defer release()
	s, err := openPM()
	if err != nil {
		return fail(err)
	}
	defer s.close()

	old, err := s.ownerState(chain)
	if err != nil {
		return fail(err)
	}
	mark := uint32(0)
	if p.snat && len(p.maps) > 0 {
		mark = p.mark
	}
	diff, err := s.pmBaseDiff(mark)
	if err != nil {
		return fail(err)
	}
	a := pmAdd{p: p, chain: chain, comment: ownerComment(rule.Owner, nftCommentMax), old: old}
	needLookups := false
	for _, e := range old.elems {
		if len(e.prev) > 0 && !a.wanted(e.key) {
			needLookups = true // a released key may go back to an earlier claimant
		}
	}
	if !needLookups {
		err = a.queue(s, diff, mark)
		if err == nil {
			err = s.conn.Flush()
		}
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EEXIST) {
			return fail(fmt.Errorf("chain %s: %w", chain, noNFTables(err)))
		}
	}
	// Another owner holds some key: look each one up and take it over.
	if err := a.resolve(s); err != nil {
		return fail(err)
	}
	if err := a.queue(s, diff, mark); err != nil {
		return fail(err)
	}
	if err := s.conn.Flush(); err != nil {
		return fail(fmt.Errorf("chain %s: %w", chain, noNFTables(err)))
	}
	return nil
}

func (a *pmAdd) wanted(k portKey) bool { return a.p.has(k) }

// resolve looks up the holder of every key the owner wants or had, and for
// keys held by others whom those took them from.
func (a *pmAdd) resolve(s *nftSession) error {
	seen := map[portKey]bool{}
	var keys []portKey
	for _, m := range a.p.maps {
		seen[m.key] = true
		keys = append(keys, m.key)
	}
	for _, k := range a.old.keys() {
		if !seen[k] {
			keys = append(keys, k)
		}
	}
	holders, err := s.lookupAll(keys)
	if err != nil {
		return err
	}
	a.holders, a.prevs = holders, map[portKey][]string{}
	for _, k := range keys {
		if h := holders[k]; h != "" && h != a.chain && a.wanted(k) {
			prev, _, err := s.claim(h, k)
			if err != nil {
				return err
			}
			a.prevs[k] = append([]string{h}, prev...)
		}
	}
	return nil
}

// queue queues the whole ADD.
func (a *pmAdd) queue(s *nftSession, diff string, mark uint32) error {
	if diff != "" {
		if err := s.queueBase(mark); err != nil {
			return err
		}
	}
	t := s.table
	used := a.p.kinds()
	// Owner maps before the chain's rules that refer to them.
	byKind := [4][]nftables.SetElement{}
	for _, m := range a.p.maps {
		k := kindOf(m.key)
		prev := a.prevs[m.key]
		if prev == nil {
			prev = a.old.elems[m.key].prev // kept from an earlier ADD
		}
		byKind[k] = append(byKind[k], nftables.SetElement{Key: m.key.nftKey(), Val: m.nftTarget(), Comment: prevComment(a.chain, prev)})
	}
	for _, k := range pmKinds {
		if !used[k] {
			continue
		}
		set := pmOwnerMap(a.chain, k, a.comment)
		if err := s.conn.AddSet(set, nil); err != nil {
			return fmt.Errorf("add map %s: %w", set.Name, err)
		}
		if a.old.maps[k] {
			s.conn.FlushSet(set)
		}
		if err := inChunks(set, byKind[k], s.conn.SetAddElements); err != nil {
			return fmt.Errorf("add elements to %s: %w", set.Name, err)
		}
	}
	ch := s.conn.AddChain(&nftables.Chain{Name: a.chain, Table: t})
	s.conn.FlushChain(ch)
	for _, r := range pmOwnerRules(a.p, a.chain) {
		s.conn.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r})
	}
	for _, k := range pmKinds {
		if a.old.maps[k] && !used[k] {
			s.conn.DelSet(pmOwnerMap(a.chain, k, ""))
		}
	}

	// The shared maps: keys the owner wants, then keys it had and no
	// longer wants. Without lookups, "add mine, then delete" removes a key
	// exactly when it is still the owner's (the add clashes otherwise);
	// with lookups, a key still the owner's goes back to its earlier
	// claimant if one remains.
	var ops pmOps
	for _, m := range a.p.maps {
		h, known := a.holders[m.key]
		switch {
		case !known, h == "":
			ops.pre(m.key, a.chain)
		case h != a.chain:
			ops.move(m.key, a.chain)
		}
	}
	for _, key := range a.old.keys() {
		if a.wanted(key) {
			continue
		}
		if err := ops.release(s, a.chain, key, a.old.elems[key].prev, a.holders, nil); err != nil {
			return err
		}
	}
	return ops.queue(s)
}
