package fw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/reaper"
)

// The nftables layout (table inet plumb_masq):
//
//	chain postrouting { type nat hook postrouting priority srcnat;
//		ip saddr vmap @masq4
//		ip6 saddr vmap @masq6 }
//	map masq4 { type ipv4_addr : verdict }   10.88.0.2 : jump m-<net>-<owner>
//	map masq6 { type ipv6_addr : verdict }
//	chain m-<NetHash(network)>-<owner.Hash()> {
//		ip saddr 10.88.0.2 ip daddr 10.88.0.0/24 return   (one per address)
//		ip daddr 224.0.0.0/4 return                       (one per family)
//		masquerade }
//
// A packet costs one hash lookup however many containers there are, and a
// change touches one owner's chain and its addresses' elements: no call on
// the hot path lists other containers' state. The map holds one element per
// address, so the address belongs to whoever added it last; an owner's chain
// is deleted only when no element jumps to it any more, which the kernel
// enforces (EBUSY) and which is what keeps "ADD A, ADD B same IP, DEL A"
// from touching B.

const (
	nftTable     = "plumb_masq"
	nftBaseChain = "postrouting"
	// nftCommentMax is the longest element comment nft prints.
	nftCommentMax = 128

	ipv4SaddrOffset = 12 // in the IPv4 header
	ipv4DaddrOffset = 16
	ipv6SaddrOffset = 8 // in the IPv6 header
	ipv6DaddrOffset = 24
)

// nftMaps are the verdict maps from source address to owner chain.
var nftMaps = [...]string{famV4: "masq4", famV6: "masq6"}

// nftNetPrefix starts the names of all owner chains of network.
func nftNetPrefix(network string) string { return "m-" + NetHash(network) + "-" }

// nftOwnerChain is the name of o's chain.
func nftOwnerChain(o Owner) string { return nftNetPrefix(o.Network) + o.Hash() }

// NFTMasq is the nftables Masquerader. It talks netlink directly and never
// runs nft. Every change is one transaction, made under an flock shared by
// all plumb processes.
type NFTMasq struct {
	// LockPath is the lock file; DefaultLockPath when empty.
	LockPath string
}

var _ Masquerader = (*NFTMasq)(nil)

// NewNFTMasq checks that the kernel speaks nf_tables (one netlink request)
// and returns the backend; the error wraps ErrNoNFTables when it does not.
func NewNFTMasq() (*NFTMasq, error) {
	r, err := dialNFTReader()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	if _, err := r.tableExists(nftTable); err != nil {
		// Without the nf_tables subsystem nfnetlink answers EINVAL.
		if errors.Is(err, unix.EINVAL) && !errors.Is(err, ErrNoNFTables) {
			err = fmt.Errorf("%w: %w", ErrNoNFTables, err)
		}
		return nil, fmt.Errorf("probe nf_tables: %w", err)
	}
	return &NFTMasq{}, nil
}

// nftSession is one call's pair of sockets: the library's connection for
// the transaction and rule reads, the reader for exact lookups.
type nftSession struct {
	conn  *nftables.Conn
	rd    *nftReader
	table *nftables.Table
	maps  [2]*nftables.Set // the table's verdict maps to owner chains, per family
}

func openNFT() (*nftSession, error) {
	s, err := openNFTSession(nftTableRef())
	if err != nil {
		return nil, err
	}
	for _, f := range families {
		s.maps[f] = nftMapSet(f)
	}
	return s, nil
}

// openNFTSession opens one call's sockets for requests about table.
func openNFTSession(table *nftables.Table, opts ...nftables.ConnOption) (*nftSession, error) {
	rd, err := dialNFTReader()
	if err != nil {
		return nil, err
	}
	conn, err := nftables.New(append([]nftables.ConnOption{nftables.AsLasting()}, opts...)...)
	if err != nil {
		rd.Close()
		return nil, noNFTables(fmt.Errorf("open nf_tables connection: %w", err))
	}
	return &nftSession{conn: conn, rd: rd, table: table}, nil
}

// nftTableRef names plumb's table in requests.
func nftTableRef() *nftables.Table {
	return &nftables.Table{Name: nftTable, Family: nftables.TableFamilyINet}
}

// nftMapSet describes the family's verdict map.
func nftMapSet(f family) *nftables.Set { return addrVerdictMap(nftTableRef(), nftMaps[f], f) }

// addrVerdictMap describes a map from the family's addresses to verdicts.
func addrVerdictMap(t *nftables.Table, name string, f family) *nftables.Set {
	key := nftables.TypeIPAddr
	if f == famV6 {
		key = nftables.TypeIP6Addr
	}
	return &nftables.Set{Table: t, Name: name, IsMap: true, KeyType: key, DataType: nftables.TypeVerdict}
}

// close releases the sockets in the background: after a transaction that
// deleted anything, the kernel makes the release of a netfilter netlink
// socket wait for the deferred destruction of the deleted objects (an RCU
// grace period, 10-30 ms), which the caller need not wait for.
func (s *nftSession) close() {
	if reaper.Holding() {
		return
	}
	go func() {
		s.conn.CloseLasting()
		s.rd.Close()
	}()
}

func (s *nftSession) chain(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: s.table}
}

// rules returns the rendered rules of chain; exists is false when the chain
// (or the table) is absent.
func (s *nftSession) rules(chain string) (texts []string, exists bool, err error) {
	rules, err := s.conn.GetRules(s.table, s.chain(chain))
	if err != nil || len(rules) == 0 {
		// A rule dump of a missing chain is empty, and the library formats
		// errnos away: ask whether the chain exists.
		exists, e := s.rd.chainExists(s.table.Name, chain)
		if e != nil || !exists || err == nil {
			return nil, exists, e
		}
		return nil, true, fmt.Errorf("list rules of chain %s: %w", chain, err)
	}
	for _, r := range rules {
		texts = append(texts, nftRuleText(r.Exprs))
	}
	return texts, true, nil
}

// baseDiff says how the base chain differs from the design ("" if not).
func (s *nftSession) baseDiff() (string, error) {
	got, exists, err := s.rules(nftBaseChain)
	if err != nil {
		return "", err
	}
	if !exists {
		return fmt.Sprintf("chain inet %s %s is missing", nftTable, nftBaseChain), nil
	}
	if d := diffRules(textsOf(s.baseRules()), got); d != "" {
		return fmt.Sprintf("chain inet %s %s: %s", nftTable, nftBaseChain, d), nil
	}
	return "", nil
}

// baseRules are the rules of the base chain: one map lookup per family.
func (s *nftSession) baseRules() [][]expr.Any {
	var rules [][]expr.Any
	for _, f := range families {
		set := s.maps[f]
		e := append(nfprotoMatch(f), addrLoad(f, false))
		e = append(e, &expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: set.Name, SetID: set.ID})
		rules = append(rules, e)
	}
	return rules
}

// addBase queues the table, base chain, maps and base rules; every message
// is idempotent, and the base chain is flushed first so a damaged one is
// repaired rather than doubled.
func (s *nftSession) addBase() error {
	s.conn.AddTable(s.table)
	base := s.conn.AddChain(&nftables.Chain{
		Name: nftBaseChain, Table: s.table, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	for _, f := range families {
		if err := s.conn.AddSet(s.maps[f], nil); err != nil {
			return fmt.Errorf("add map %s: %w", s.maps[f].Name, err)
		}
	}
	s.conn.FlushChain(base)
	for _, r := range s.baseRules() {
		s.conn.AddRule(&nftables.Rule{Table: s.table, Chain: base, Exprs: r})
	}
	return nil
}

// nfprotoMatch is "meta nfproto ipv4|ipv6", the guard an inet table needs
// before it reads a network header field.
func nfprotoMatch(f family) []expr.Any {
	proto := byte(unix.NFPROTO_IPV4)
	if f == famV6 {
		proto = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// addrLoad loads the source or destination address into register 1.
func addrLoad(f family, dst bool) *expr.Payload {
	off, n := uint32(ipv4SaddrOffset), uint32(net.IPv4len)
	switch {
	case f == famV4 && dst:
		off = ipv4DaddrOffset
	case f == famV6 && !dst:
		off, n = ipv6SaddrOffset, net.IPv6len
	case f == famV6 && dst:
		off, n = ipv6DaddrOffset, net.IPv6len
	}
	return &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
}

// addrMatch matches the source or destination address against prefix n.
func addrMatch(f family, dst bool, n *net.IPNet) []expr.Any {
	e := []expr.Any{addrLoad(f, dst)}
	if ones, bits := n.Mask.Size(); ones != bits {
		e = append(e, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(len(n.IP)), Mask: n.Mask, Xor: make([]byte, len(n.IP))})
	}
	return append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: n.IP})
}

// ownerRules are the rules of an owner's chain, in order.
func ownerRules(addrs []masqAddr) [][]expr.Any {
	var rules [][]expr.Any
	for _, a := range addrs {
		host := &net.IPNet{IP: a.ip, Mask: net.CIDRMask(8*len(a.ip), 8*len(a.ip))}
		r := append(nfprotoMatch(a.fam), addrMatch(a.fam, false, host)...)
		r = append(r, addrMatch(a.fam, true, a.subnet)...)
		rules = append(rules, append(r, &expr.Verdict{Kind: expr.VerdictReturn}))
	}
	for f, fa := range byFamily(addrs) {
		if len(fa) == 0 {
			continue
		}
		r := append(nfprotoMatch(family(f)), addrMatch(family(f), true, family(f).multicast())...)
		rules = append(rules, append(r, &expr.Verdict{Kind: expr.VerdictReturn}))
	}
	return append(rules, []expr.Any{&expr.Masq{}})
}

func textsOf(rules [][]expr.Any) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = nftRuleText(r)
	}
	return out
}

// diffRules describes the first difference between want and got ("" when
// equal).
func diffRules(want, got []string) string {
	in := func(list []string, s string) bool {
		for _, x := range list {
			if x == s {
				return true
			}
		}
		return false
	}
	for _, w := range want {
		if !in(got, w) {
			return fmt.Sprintf("rule %q is missing", w)
		}
	}
	for _, g := range got {
		if !in(want, g) {
			return fmt.Sprintf("unexpected rule %q", g)
		}
	}
	if len(want) != len(got) {
		return fmt.Sprintf("%d rules, want %d", len(got), len(want))
	}
	for i := range want {
		if want[i] != got[i] {
			return fmt.Sprintf("rule %d is %q, want %q", i+1, got[i], want[i])
		}
	}
	return ""
}

// AddMasq installs the owner's chain and points each address at it, in one
// transaction. Round trips: a rule dump of the base chain (two rules) and of
// the owner's chain (empty unless re-ADD), one element lookup per address,
// one transaction.
func (m *NFTMasq) AddMasq(ctx context.Context, rule MasqRule) error {
	addrs, err := parseMasqRule(rule)
	if err != nil {
		return err
	}
	label, chain := rule.Owner.label(), nftOwnerChain(rule.Owner)
	release, err := lockFile(ctx, m.LockPath)
	if err != nil {
		return fmt.Errorf("add masquerade for %s: %w", label, err)
	}
	defer release()
	s, err := openNFT()
	if err != nil {
		return fmt.Errorf("add masquerade for %s: %w", label, err)
	}
	defer s.close()

	// Under the lock nobody else changes the table between this check and
	// the transaction, so the base rules are created exactly once.
	diff, err := s.baseDiff()
	if err != nil {
		return fmt.Errorf("add masquerade for %s: %w", label, err)
	}
	// An address already in a map (this owner's from an earlier ADD, or
	// another owner's whose address was reassigned) is deleted and re-added
	// in the same transaction: adding a key that maps elsewhere would clash.
	// Addresses an earlier ADD gave this owner (read from its chain) that it
	// no longer has lose their element if it still points here.
	old, err := s.rd.sources(nftTable, chain)
	if err != nil {
		return fmt.Errorf("add masquerade for %s: read chain %s: %w", label, chain, err)
	}
	var present [2][]nftables.SetElement
	lookup := func(a masqAddr, onlyMine bool) error {
		e, ok, err := s.rd.element(nftTable, nftMaps[a.fam], a.ip)
		if err != nil {
			return fmt.Errorf("add masquerade for %s: look up %s in map %s: %w", label, a.ip, nftMaps[a.fam], err)
		}
		if ok && (!onlyMine || e.chain == chain) {
			present[a.fam] = append(present[a.fam], nftables.SetElement{Key: a.ip})
		}
		return nil
	}
	wanted := map[string]bool{}
	for _, a := range addrs {
		wanted[string(a.ip)] = true
		if err := lookup(a, false); err != nil {
			return err
		}
	}
	for _, ip := range old {
		if wanted[string(ip)] {
			continue
		}
		wanted[string(ip)] = true // once, should two rules name it
		a, fam, err := normalizeIP(ip)
		if err != nil {
			continue
		}
		if err := lookup(masqAddr{ip: a, fam: fam}, true); err != nil {
			return err
		}
	}

	if diff != "" {
		if err := s.addBase(); err != nil {
			return fmt.Errorf("add masquerade for %s: %w", label, err)
		}
	}
	ch := s.conn.AddChain(s.chain(chain))
	s.conn.FlushChain(ch)
	for _, r := range ownerRules(addrs) {
		s.conn.AddRule(&nftables.Rule{Table: s.table, Chain: ch, Exprs: r})
	}
	comment := ownerComment(rule.Owner, nftCommentMax)
	for f, fa := range byFamily(addrs) {
		if len(present[f]) > 0 {
			if err := s.conn.SetDeleteElements(s.maps[f], present[f]); err != nil {
				return fmt.Errorf("add masquerade for %s: %w", label, err)
			}
		}
		if len(fa) == 0 {
			continue
		}
		elems := make([]nftables.SetElement, len(fa))
		for i, a := range fa {
			elems[i] = nftables.SetElement{Key: a.ip, Comment: comment, VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
		}
		if err := s.conn.SetAddElements(s.maps[f], elems); err != nil {
			return fmt.Errorf("add masquerade for %s: %w", label, err)
		}
	}
	if err := s.conn.Flush(); err != nil {
		return fmt.Errorf("add masquerade for %s (chain %s): %w", label, chain, noNFTables(err))
	}
	return nil
}

// DelMasq removes the owner's chain and the elements that still jump to
// it. With addresses: one element lookup per address and one transaction
// that deletes the elements found pointing at this owner (an address since
// given to another owner keeps its element) and the chain. If the kernel
// refuses the chain with EBUSY, elements outside the hint still jump to it
// and the maps are searched, as without addresses.
func (m *NFTMasq) DelMasq(ctx context.Context, owner Owner, ips []net.IP) error {
	addrs, err := parseIPs(ips)
	if err != nil {
		return err
	}
	label, chain := owner.label(), nftOwnerChain(owner)
	release, err := lockFile(ctx, m.LockPath)
	if err != nil {
		return fmt.Errorf("delete masquerade for %s: %w", label, err)
	}
	defer release()
	s, err := openNFT()
	if err != nil {
		return fmt.Errorf("delete masquerade for %s: %w", label, err)
	}
	defer s.close()

	if len(addrs) == 0 {
		return s.delOwnerNoHint(label, chain)
	}
	var mine [2][]nftables.SetElement
	for _, a := range addrs {
		e, ok, err := s.rd.element(nftTable, nftMaps[a.fam], a.ip)
		if err != nil {
			return fmt.Errorf("delete masquerade for %s: look up %s in map %s: %w", label, a.ip, nftMaps[a.fam], err)
		}
		if ok && e.chain == chain {
			mine[a.fam] = append(mine[a.fam], nftables.SetElement{Key: a.ip})
		}
	}
	if len(mine[famV4])+len(mine[famV6]) == 0 {
		// Nothing jumps here: when the chain is absent too (the usual case
		// on a host using the other backend) there is nothing to do, and a
		// transaction that the kernel refuses costs an RCU grace period
		// in its abort.
		if exists, err := s.rd.chainExists(nftTable, chain); err == nil && !exists {
			return nil
		}
	}
	if err := s.queueDelete(mine, []string{chain}); err != nil {
		return fmt.Errorf("delete masquerade for %s: %w", label, err)
	}
	err = s.conn.Flush()
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EBUSY):
		return s.delOwnerNoHint(label, chain)
	case errors.Is(err, unix.ENOENT) && len(mine[famV4])+len(mine[famV6]) == 0:
		// No element jumped here, so the chain (or the table) is absent:
		// the kernel never lets an element jump to a missing chain.
		return nil
	}
	return fmt.Errorf("delete masquerade for %s (chain %s): %w", label, chain, noNFTables(err))
}

// delOwnerNoHint removes chain after searching both maps for elements that
// jump to it.
func (s *nftSession) delOwnerNoHint(label, chain string) error {
	exists, err := s.rd.chainExists(nftTable, chain)
	if err != nil {
		return fmt.Errorf("delete masquerade for %s: %w", label, err)
	}
	if !exists {
		return nil
	}
	if err := s.delChains(map[string]bool{chain: true}); err != nil {
		return fmt.Errorf("delete masquerade for %s: %w", label, err)
	}
	return nil
}

// delChains removes existing chains and every element of the session's
// maps jumping to them, in one transaction; it dumps both maps.
func (s *nftSession) delChains(chains map[string]bool) error {
	var mine [2][]nftables.SetElement
	for _, f := range families {
		elems, err := s.rd.elements(s.table.Name, s.maps[f].Name)
		if err != nil {
			return fmt.Errorf("list map %s: %w", s.maps[f].Name, err)
		}
		for _, e := range elems {
			if chains[e.chain] {
				mine[f] = append(mine[f], nftables.SetElement{Key: e.key})
			}
		}
	}
	if err := s.queueDelete(mine, sortedKeys(chains)); err != nil {
		return err
	}
	if err := s.conn.Flush(); err != nil {
		return fmt.Errorf("delete chains %s: %w", strings.Join(sortedKeys(chains), ", "), noNFTables(err))
	}
	return nil
}

// queueDelete queues the deletion of elements, then of chains (flushed
// first: kernels before recursive chain deletion refuse non-empty chains).
func (s *nftSession) queueDelete(elems [2][]nftables.SetElement, chains []string) error {
	for _, f := range families {
		if len(elems[f]) > 0 {
			if err := s.conn.SetDeleteElements(s.maps[f], elems[f]); err != nil {
				return err
			}
		}
	}
	for _, c := range chains {
		s.conn.FlushChain(s.chain(c))
		s.conn.DelChain(s.chain(c))
	}
	return nil
}

// GCMasq removes every owner chain of network whose owner is not in keep,
// with its elements: one chain dump, two map dumps, one transaction. Keep
// is matched by container ID and interface within network.
func (m *NFTMasq) GCMasq(ctx context.Context, network string, keep []Owner) error {
	release, err := lockFile(ctx, m.LockPath)
	if err != nil {
		return fmt.Errorf("gc masquerade of network %s: %w", network, err)
	}
	defer release()
	s, err := openNFT()
	if err != nil {
		return fmt.Errorf("gc masquerade of network %s: %w", network, err)
	}
	defer s.close()

	chains, err := s.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("gc masquerade of network %s: list chains: %w", network, noNFTables(err))
	}
	prefix, kept := nftNetPrefix(network), keepHashes(inNetwork(network, keep))
	doomed := map[string]bool{}
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != nftTable || !strings.HasPrefix(c.Name, prefix) {
			continue
		}
		if !kept[strings.TrimPrefix(c.Name, prefix)] {
			doomed[c.Name] = true
		}
	}
	if len(doomed) == 0 {
		return nil
	}
	if err := s.delChains(doomed); err != nil {
		return fmt.Errorf("gc masquerade of network %s: %w", network, err)
	}
	return nil
}

// inNetwork gives keep's owners the network being collected, so a caller
// that leaves Network empty in its list keeps what it means to keep.
func inNetwork(network string, keep []Owner) []Owner {
	out := make([]Owner, len(keep))
	for i, o := range keep {
		out[i] = Owner{Network: network, ContainerID: o.ContainerID, IfName: o.IfName}
	}
	return out
}

// CheckMasq compares the base chain, the owner's chain and each address's
// element with the design.
func (m *NFTMasq) CheckMasq(ctx context.Context, rule MasqRule) error {
	addrs, err := parseMasqRule(rule)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	label, chain := rule.Owner.label(), nftOwnerChain(rule.Owner)
	s, err := openNFT()
	if err != nil {
		return fmt.Errorf("check masquerade for %s: %w", label, err)
	}
	defer s.close()
	mismatch := func(format string, args ...any) error {
		return fmt.Errorf("check masquerade for %s: %w: %s", label, ErrMasqMismatch, fmt.Sprintf(format, args...))
	}

	diff, err := s.baseDiff()
	if err != nil {
		return fmt.Errorf("check masquerade for %s: %w", label, err)
	}
	if diff != "" {
		return mismatch("%s", diff)
	}
	got, exists, err := s.rules(chain)
	if err != nil {
		return fmt.Errorf("check masquerade for %s: %w", label, err)
	}
	if !exists {
		return mismatch("chain inet %s %s is missing", nftTable, chain)
	}
	if d := diffRules(textsOf(ownerRules(addrs)), got); d != "" {
		return mismatch("chain %s: %s", chain, d)
	}
	for _, a := range addrs {
		e, ok, err := s.rd.element(nftTable, nftMaps[a.fam], a.ip)
		if err != nil {
			return fmt.Errorf("check masquerade for %s: look up %s: %w", label, a.ip, err)
		}
		if !ok {
			return mismatch("map %s has no element for %s", nftMaps[a.fam], a.ip)
		}
		if e.chain != chain {
			return mismatch("element %s of map %s jumps to %q, not %q", a.ip, nftMaps[a.fam], e.chain, chain)
		}
	}
	return nil
}
