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
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The nftables layout (table inet plumb_filter):
//
//	chain forward { type filter hook forward priority filter; policy accept;
//		jump CNI-ADMIN                       (one per admin chain name in use)
//		meta nfproto ipv4 ip daddr vmap @in4
//		meta nfproto ipv6 ip6 daddr vmap @in6 }
//	chain CNI-ADMIN { }                      the administrator's; never flushed
//	set bridges { type ifname }              container bridges
//	map in4 { type ipv4_addr : verdict }     10.88.0.2 : jump f-<net>-<owner>
//	chain f-<NetHash(network)>-<owner.Hash()> {
//		meta nfproto ipv4 ip daddr 10.88.0.2 iifname != "cni0" iifname @bridges drop   (same-bridge, isolated)
//		meta nfproto ipv4 ip daddr 10.88.0.2 iifname "cni0" oifname "cni0" drop        (isolated)
//		meta nfproto ipv4 ip daddr 10.88.0.2 accept }
//
// A packet costs one hash lookup however many containers there are, and a
// change touches one owner's chain and its addresses' elements (the owner's
// chain names its addresses, so DEL needs no prevResult and no dump).
//
// nftables evaluates every base chain on a hook and a drop in any of them
// is final: an accept here cannot overrule the drop policy of iptables'
// FORWARD (iptables-nft keeps it in table ip filter). So when nf_tables
// shows that chain, the owner's accepts are also written into iptables
// through the accept-only iptables backend (compat mode); a host whose
// iptables is the legacy one needs backend iptables.

const (
	fltNFTTable       = "plumb_filter"
	fltNFTBase        = "forward"
	fltNFTBridges     = "bridges"
	fltNFTChainPrefix = "f-"
	// The table and chain iptables-nft keeps iptables' FORWARD in.
	iptNFTTable   = "filter"
	iptNFTForward = "FORWARD"
)

// fltNFTMaps are the verdict maps from destination address to owner chain.
var fltNFTMaps = [...]string{famV4: "in4", famV6: "in6"}

// nfprotoOf is the nf_tables family iptables-nft uses for f.
var nfprotoOf = [...]byte{famV4: unix.NFPROTO_IPV4, famV6: unix.NFPROTO_IPV6}

func fltNFTNetPrefix(network string) string { return fltNFTChainPrefix + NetHash(network) + "-" }

func fltNFTOwnerChain(o Owner) string { return fltNFTNetPrefix(o.Network) + o.Hash() }

// NFTFilter is the nftables Filter: netlink only, one transaction per
// change, under the plumb flock.
type NFTFilter struct {
	// LockPath is the lock file; DefaultLockPath when empty.
	LockPath string
}

var _ Filter = (*NFTFilter)(nil)

// NewNFTFilter checks that the kernel speaks nf_tables (one netlink
// request); the error wraps ErrNoNFTables when it does not.
func NewNFTFilter() (*NFTFilter, error) {
	x := &NFTFilter{}
	if err := x.Usable(context.Background()); err != nil {
		return nil, err
	}
	return x, nil
}

// Usable asks nf_tables for plumb's table.
func (x *NFTFilter) Usable(ctx context.Context) error {
	r, err := dialNFTReader()
	if err != nil {
		return err
	}
	defer r.Close()
	if _, err := r.tableExists(fltNFTTable); err != nil {
		if errors.Is(err, unix.EINVAL) && !errors.Is(err, ErrNoNFTables) {
			err = fmt.Errorf("%w: %w", ErrNoNFTables, err)
		}
		return fmt.Errorf("probe nf_tables: %w", err)
	}
	return nil
}

// fltSession is nftSession over plumb's filter table.
type fltSession struct {
	nftSession
	bridges *nftables.Set
}

func openFilterNFT() (*fltSession, error) {
	t := &nftables.Table{Name: fltNFTTable, Family: nftables.TableFamilyINet}
	ns, err := openNFTSession(t)
	if err != nil {
		return nil, err
	}
	s := &fltSession{nftSession: *ns}
	for _, f := range families {
		s.maps[f] = addrVerdictMap(t, fltNFTMaps[f], f)
	}
	s.bridges = &nftables.Set{Table: t, Name: fltNFTBridges, KeyType: nftables.TypeIFName, KeyByteOrder: binaryutil.NativeEndian}
	return s, nil
}

// ruleList returns chain's rules; exists is false when the chain or the
// table is absent.
func (s *fltSession) ruleList(chain string) (rules []*nftables.Rule, exists bool, err error) {
	exists, err = s.rd.chainExists(fltNFTTable, chain)
	if err != nil || !exists {
		return nil, exists, err
	}
	rules, err = s.conn.GetRules(s.table, s.chain(chain))
	if err != nil {
		return nil, true, fmt.Errorf("list rules of chain %s: %w", chain, noNFTables(err))
	}
	return rules, true, nil
}

// vmapRules are the base chain's lookups, one per family.
func (s *fltSession) vmapRules() [][]expr.Any {
	var rules [][]expr.Any
	for _, f := range families {
		e := append(nfprotoMatch(f), addrLoad(f, true))
		e = append(e, &expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: s.maps[f].Name, SetID: s.maps[f].ID})
		rules = append(rules, e)
	}
	return rules
}

// adminJumps are the chains the base chain's plain jump rules go to.
func adminJumps(rules []*nftables.Rule) []string {
	var out []string
	for _, r := range rules {
		if len(r.Exprs) == 1 {
			if v, ok := r.Exprs[0].(*expr.Verdict); ok && v.Kind == expr.VerdictJump {
				out = append(out, v.Chain)
			}
		}
	}
	return out
}

// baseWant is the base chain's rules: the admin jumps, then the lookups.
func (s *fltSession) baseWant(admins []string) [][]expr.Any {
	var rules [][]expr.Any
	for _, a := range admins {
		rules = append(rules, []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: a}})
	}
	return append(rules, s.vmapRules()...)
}

func rulesText(rules []*nftables.Rule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = nftRuleText(r.Exprs)
	}
	return out
}

// ifnameMatch compares the input or output interface name with name.
func ifnameMatch(out bool, op expr.CmpOp, name string) []expr.Any {
	key := expr.MetaKeyIIFNAME
	if out {
		key = expr.MetaKeyOIFNAME
	}
	return []expr.Any{&expr.Meta{Key: key, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: ifNameKey(name)}}
}

// fltNFTOwnerRules are the rules of an owner's chain, in order.
func fltNFTOwnerRules(r filterReq, bridges *nftables.Set) [][]expr.Any {
	var rules [][]expr.Any
	for _, a := range r.addrs {
		match := func() []expr.Any {
			host := &net.IPNet{IP: a.ip, Mask: net.CIDRMask(8*len(a.ip), 8*len(a.ip))}
			return append(nfprotoMatch(a.fam), addrMatch(a.fam, true, host)...)
		}
		drop, accept := &expr.Verdict{Kind: expr.VerdictDrop}, &expr.Verdict{Kind: expr.VerdictAccept}
		if r.isolates() {
			e := append(match(), ifnameMatch(false, expr.CmpOpNeq, r.bridge)...)
			e = append(e, &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
				&expr.Lookup{SourceRegister: 1, SetName: bridges.Name, SetID: bridges.ID})
			rules = append(rules, append(e, drop))
		}
		if r.policy == PolicyIsolated {
			e := append(match(), ifnameMatch(false, expr.CmpOpEq, r.bridge)...)
			e = append(e, ifnameMatch(true, expr.CmpOpEq, r.bridge)...)
			rules = append(rules, append(e, drop))
		}
		rules = append(rules, append(match(), accept))
	}
	return rules
}

// ownerAddrs are the destination addresses an owner chain's rules match.
func ownerAddrs(rules []*nftables.Rule) []net.IP {
	var out []net.IP
	seen := map[string]bool{}
	for _, r := range rules {
		var daddr bool
		for _, e := range r.Exprs {
			switch e := e.(type) {
			case *expr.Payload:
				daddr = e.Base == expr.PayloadBaseNetworkHeader &&
					(e.Offset == ipv4DaddrOffset && e.Len == net.IPv4len || e.Offset == ipv6DaddrOffset && e.Len == net.IPv6len)
			case *expr.Cmp:
				if daddr && e.Op == expr.CmpOpEq && !seen[string(e.Data)] {
					seen[string(e.Data)] = true
					out = append(out, net.IP(e.Data))
				}
				daddr = false
			default:
				daddr = false
			}
		}
	}
	return out
}

// iptablesNFT reports, per family, whether nf_tables holds iptables-nft's
// FORWARD chain, that is whether iptables filters forwarded traffic (and
// may drop it) beside plumb's table.
func (s *fltSession) iptablesNFT(fams [2]bool) ([2]bool, error) {
	var out [2]bool
	for _, f := range families {
		if !fams[f] {
			continue
		}
		ok, err := s.rd.chainIn(nfprotoOf[f], iptNFTTable, iptNFTForward)
		if err != nil {
			return out, fmt.Errorf("look for iptables' %s FORWARD chain: %w", f, err)
		}
		out[f] = ok
	}
	return out, nil
}

// chainIn reports whether chain exists in table of an nf_tables family.
func (r *nftReader) chainIn(family byte, table, chain string) (bool, error) {
	_, err := r.requestFamily(family, unix.NFT_MSG_GETCHAIN, false, []netlink.Attribute{
		{Type: unix.NFTA_CHAIN_TABLE, Data: cstr(table)},
		{Type: unix.NFTA_CHAIN_NAME, Data: cstr(chain)},
	})
	return found(err)
}

func famsOf(addrs []masqAddr) [2]bool {
	var out [2]bool
	for _, a := range addrs {
		out[a.fam] = true
	}
	return out
}

// compatReq is r restricted to the families in which iptables needs accepts.
func compatReq(r filterReq, fams [2]bool) (filterReq, bool) {
	var addrs []masqAddr
	for _, a := range r.addrs {
		if fams[a.fam] {
			addrs = append(addrs, a)
		}
	}
	r.addrs = addrs
	return r, len(addrs) > 0
}

// AddFilter installs the owner's chain and points each address at it, in
// one transaction that also creates what is shared when missing. Round
// trips: the base chain's rules, the owner chain's (empty unless re-ADD),
// one element lookup per address, one chain lookup per family for
// iptables-nft, one transaction; plus, on a host where iptables-nft filters
// FORWARD, iptables -S and one iptables-restore per such family.
func (x *NFTFilter) AddFilter(ctx context.Context, rule FilterRule) error {
	r, err := parseFilterRule(rule)
	if err != nil {
		return err
	}
	label, chain := r.owner.label(), fltNFTOwnerChain(r.owner)
	fail := func(err error) error { return fmt.Errorf("add firewall rules for %s: %w", label, err) }
	release, err := lockFile(ctx, x.LockPath)
	if err != nil {
		return fail(err)
	}
	defer release()
	s, err := openFilterNFT()
	if err != nil {
		return fail(err)
	}
	defer s.close()

	base, baseExists, err := s.ruleList(fltNFTBase)
	if err != nil {
		return fail(err)
	}
	admins := adminJumps(base)
	hasAdmin := false
	for _, a := range admins {
		hasAdmin = hasAdmin || a == r.admin
	}
	if !hasAdmin {
		admins = append(admins, r.admin)
	}
	want := s.baseWant(admins)
	rewriteBase := !baseExists || diffRules(textsOf(want), rulesText(base)) != ""

	// Elements of this request's addresses are replaced (re-added in the
	// same transaction: adding a key that maps elsewhere would clash), and
	// addresses an earlier ADD gave this owner lose theirs if still ours.
	old, _, err := s.ruleList(chain)
	if err != nil {
		return fail(err)
	}
	var present [2][]nftables.SetElement
	wanted := map[string]bool{}
	lookup := func(ip net.IP, onlyMine bool) error {
		a, fam, err := normalizeIP(ip)
		if err != nil {
			return nil
		}
		e, ok, err := s.rd.element(fltNFTTable, fltNFTMaps[fam], a)
		if err != nil {
			return fmt.Errorf("look up %s in map %s: %w", a, fltNFTMaps[fam], err)
		}
		if ok && (!onlyMine || e.chain == chain) {
			present[fam] = append(present[fam], nftables.SetElement{Key: a})
		}
		return nil
	}
	for _, a := range r.addrs {
		wanted[string(a.ip)] = true
		if err := lookup(a.ip, false); err != nil {
			return fail(err)
		}
	}
	for _, ip := range ownerAddrs(old) {
		if !wanted[string(ip)] {
			wanted[string(ip)] = true
			if err := lookup(ip, true); err != nil {
				return fail(err)
			}
		}
	}
	compat, err := s.iptablesNFT(famsOf(r.addrs))
	if err != nil {
		return fail(err)
	}

	c := s.conn
	c.AddTable(s.table)
	for _, f := range families {
		if err := c.AddSet(s.maps[f], nil); err != nil {
			return fail(fmt.Errorf("add map %s: %w", s.maps[f].Name, err))
		}
	}
	if err := c.AddSet(s.bridges, nil); err != nil {
		return fail(fmt.Errorf("add set %s: %w", fltNFTBridges, err))
	}
	for _, a := range admins {
		c.AddChain(s.chain(a)) // creates a missing one; never touches its rules
	}
	if rewriteBase {
		accept := nftables.ChainPolicyAccept
		bc := c.AddChain(&nftables.Chain{Name: fltNFTBase, Table: s.table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept})
		c.FlushChain(bc)
		for _, e := range s.baseWant(admins) {
			c.AddRule(&nftables.Rule{Table: s.table, Chain: bc, Exprs: e})
		}
	}
	if r.bridge != "" {
		if err := c.SetAddElements(s.bridges, []nftables.SetElement{{Key: ifNameKey(r.bridge)}}); err != nil {
			return fail(fmt.Errorf("add bridge %s to set %s: %w", r.bridge, fltNFTBridges, err))
		}
	}
	ch := c.AddChain(s.chain(chain))
	c.FlushChain(ch)
	for _, e := range fltNFTOwnerRules(r, s.bridges) {
		c.AddRule(&nftables.Rule{Table: s.table, Chain: ch, Exprs: e})
	}
	comment := ownerComment(r.owner, nftCommentMax)
	for f, fa := range byFamily(r.addrs) {
		if len(present[f]) > 0 {
			if err := c.SetDeleteElements(s.maps[f], present[f]); err != nil {
				return fail(err)
			}
		}
		if len(fa) == 0 {
			continue
		}
		elems := make([]nftables.SetElement, len(fa))
		for i, a := range fa {
			elems[i] = nftables.SetElement{Key: a.ip, Comment: comment, VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
		}
		if err := c.SetAddElements(s.maps[f], elems); err != nil {
			return fail(err)
		}
	}
	if err := c.Flush(); err != nil {
		return fail(fmt.Errorf("chain %s: %w", chain, noNFTables(err)))
	}

	if cr, ok := compatReq(r, compat); ok {
		if err := newIPTCompat(x.LockPath).addLocked(ctx, cr); err != nil {
			err = fail(fmt.Errorf("accept in iptables' FORWARD: %w", err))
			if uerr := x.delLocked(ctx, r.owner, nil, false); uerr != nil {
				err = errors.Join(err, fmt.Errorf("undo: %w", uerr))
			}
			return err
		}
	}
	return nil
}

// DelFilter removes the owner's chain and the elements that still jump to
// it: the owner chain's rules name its addresses (joined with the hint), so
// the common case is a rule dump, one element lookup per address and one
// transaction; if the kernel refuses the chain with EBUSY, other elements
// still jump to it and the maps are searched. Accepts written into
// iptables-nft are removed too (one chain lookup per family finds them).
func (x *NFTFilter) DelFilter(ctx context.Context, owner Owner, ips []net.IP) error {
	hint, err := parseIPs(ips)
	if err != nil {
		return err
	}
	release, err := lockFile(ctx, x.LockPath)
	if err != nil {
		return fmt.Errorf("delete firewall rules for %s: %w", owner.label(), err)
	}
	defer release()
	return x.delLocked(ctx, owner, hint, true)
}

func (x *NFTFilter) delLocked(ctx context.Context, owner Owner, hint []masqAddr, withCompat bool) error {
	label, chain := owner.label(), fltNFTOwnerChain(owner)
	fail := func(err error) error { return fmt.Errorf("delete firewall rules for %s: %w", label, err) }
	s, err := openFilterNFT()
	if err != nil {
		return fail(err)
	}
	defer s.close()

	var errs []error
	rules, exists, err := s.ruleList(chain)
	if err != nil {
		return fail(err)
	}
	// The kernel never lets an element jump to a missing chain: without the
	// chain there is nothing of the owner's in the table.
	if exists {
		ips := ownerAddrs(rules)
		for _, a := range hint {
			ips = append(ips, a.ip)
		}
		var mine [2][]nftables.SetElement
		seen := map[string]bool{}
		for _, ip := range ips {
			a, fam, err := normalizeIP(ip)
			if err != nil || seen[string(a)] {
				continue
			}
			seen[string(a)] = true
			e, ok, err := s.rd.element(fltNFTTable, fltNFTMaps[fam], a)
			if err != nil {
				return fail(fmt.Errorf("look up %s in map %s: %w", a, fltNFTMaps[fam], err))
			}
			if ok && e.chain == chain {
				mine[fam] = append(mine[fam], nftables.SetElement{Key: a})
			}
		}
		if err := s.queueDelete(mine, []string{chain}); err != nil {
			return fail(err)
		}
		err := s.conn.Flush()
		switch {
		case errors.Is(err, unix.EBUSY):
			err = s.delChains(map[string]bool{chain: true})
		case errors.Is(err, unix.ENOENT):
			// Gone since we looked (by hand: plumb holds the lock).
			err = nil
		}
		if err != nil {
			errs = append(errs, fail(noNFTables(err)))
		}
	}
	if withCompat {
		if err := x.compatDel(ctx, s, owner); err != nil {
			errs = append(errs, fail(err))
		}
	}
	return errors.Join(errs...)
}

// compatDel removes the owner's iptables rules from the families where
// nf_tables shows its iptables-nft chain.
func (x *NFTFilter) compatDel(ctx context.Context, s *fltSession, owner Owner) error {
	var fams []*iptFamily
	ipt := newIPTCompat(x.LockPath)
	for _, f := range families {
		ok, err := s.rd.chainIn(nfprotoOf[f], iptNFTTable, fltIPTOwnerChain(owner))
		if err != nil {
			return fmt.Errorf("look for iptables chain %s: %w", fltIPTOwnerChain(owner), err)
		}
		if ok && ipt.fams[f] != nil {
			fams = append(fams, ipt.fams[f])
		}
	}
	return ipt.delLocked(ctx, owner, fams)
}

// GCFilter removes every owner chain of network whose owner is not in
// keep, with its elements (a chain list, two map dumps, one transaction),
// and their iptables-nft accepts (a chain list per family; iptables -S and
// one iptables-restore where there is something to remove).
func (x *NFTFilter) GCFilter(ctx context.Context, network string, keep []Owner) error {
	fail := func(err error) error { return fmt.Errorf("gc firewall rules of network %s: %w", network, err) }
	release, err := lockFile(ctx, x.LockPath)
	if err != nil {
		return fail(err)
	}
	defer release()
	s, err := openFilterNFT()
	if err != nil {
		return fail(err)
	}
	defer s.close()

	kept := keepHashes(inNetwork(network, keep))
	var errs []error
	chains, err := s.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fail(fmt.Errorf("list chains: %w", noNFTables(err)))
	}
	doomed := map[string]bool{}
	for _, c := range chains {
		h, ok := strings.CutPrefix(c.Name, fltNFTNetPrefix(network))
		if ok && c.Table != nil && c.Table.Name == fltNFTTable && !kept[h] {
			doomed[c.Name] = true
		}
	}
	if len(doomed) > 0 {
		if err := s.delChains(doomed); err != nil {
			errs = append(errs, fail(err))
		}
	}

	ipt := newIPTCompat(x.LockPath)
	keptIPT := map[string]bool{}
	for _, o := range inNetwork(network, keep) {
		keptIPT[fltIPTOwnerChain(o)] = true
	}
	var fams []*iptFamily
	for _, f := range families {
		tf := nftables.TableFamilyIPv4
		if f == famV6 {
			tf = nftables.TableFamilyIPv6
		}
		chains, err := s.conn.ListChainsOfTableFamily(tf)
		if err != nil {
			continue // no such family in nf_tables: nothing of ours there
		}
		for _, c := range chains {
			if c.Table != nil && c.Table.Name == iptNFTTable && strings.HasPrefix(c.Name, fltIPTNetPrefix(network)) && !keptIPT[c.Name] {
				if ipt.fams[f] != nil {
					fams = append(fams, ipt.fams[f])
				}
				break
			}
		}
	}
	if len(fams) > 0 {
		if err := ipt.gcLocked(ctx, network, keep, fams); err != nil {
			errs = append(errs, fail(err))
		}
	}
	return errors.Join(errs...)
}

// CheckFilter compares the base chain, the admin chain, the bridge's set
// element, the owner's chain and each address's element with the design,
// and, where iptables-nft filters FORWARD, the owner's iptables accepts.
func (x *NFTFilter) CheckFilter(ctx context.Context, rule FilterRule) error {
	r, err := parseFilterRule(rule)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	label, chain := r.owner.label(), fltNFTOwnerChain(r.owner)
	s, err := openFilterNFT()
	if err != nil {
		return fmt.Errorf("check firewall rules for %s: %w", label, err)
	}
	defer s.close()
	mismatch := func(format string, args ...any) error {
		return fmt.Errorf("check firewall rules for %s: %w: %s", label, ErrFilterMismatch, fmt.Sprintf(format, args...))
	}
	fail := func(err error) error { return fmt.Errorf("check firewall rules for %s: %w", label, err) }

	base, exists, err := s.ruleList(fltNFTBase)
	if err != nil {
		return fail(err)
	}
	if !exists {
		return mismatch("chain inet %s %s is missing", fltNFTTable, fltNFTBase)
	}
	admins := adminJumps(base)
	found := false
	for _, a := range admins {
		found = found || a == r.admin
	}
	if !found {
		return mismatch("chain inet %s %s does not jump to admin chain %s", fltNFTTable, fltNFTBase, r.admin)
	}
	if d := diffRules(textsOf(s.baseWant(admins)), rulesText(base)); d != "" {
		return mismatch("chain inet %s %s: %s", fltNFTTable, fltNFTBase, d)
	}
	if ok, err := s.rd.chainExists(fltNFTTable, r.admin); err != nil {
		return fail(err)
	} else if !ok {
		return mismatch("admin chain inet %s %s is missing", fltNFTTable, r.admin)
	}
	if r.bridge != "" {
		elems, err := s.rd.elements(fltNFTTable, fltNFTBridges)
		if err != nil {
			return fail(fmt.Errorf("list set %s: %w", fltNFTBridges, err))
		}
		in := false
		for _, e := range elems {
			in = in || strings.TrimRight(string(e.key), "\x00") == r.bridge
		}
		if !in {
			return mismatch("bridge %s is not in set %s", r.bridge, fltNFTBridges)
		}
	}
	got, exists, err := s.ruleList(chain)
	if err != nil {
		return fail(err)
	}
	if !exists {
		return mismatch("chain inet %s %s is missing", fltNFTTable, chain)
	}
	if d := diffRules(textsOf(fltNFTOwnerRules(r, s.bridges)), rulesText(got)); d != "" {
		return mismatch("chain %s: %s", chain, d)
	}
	for _, a := range r.addrs {
		e, ok, err := s.rd.element(fltNFTTable, fltNFTMaps[a.fam], a.ip)
		if err != nil {
			return fail(fmt.Errorf("look up %s: %w", a.ip, err))
		}
		if !ok {
			return mismatch("map %s has no element for %s", fltNFTMaps[a.fam], a.ip)
		}
		if e.chain != chain {
			return mismatch("element %s of map %s jumps to %q, not %q", a.ip, fltNFTMaps[a.fam], e.chain, chain)
		}
	}
	compat, err := s.iptablesNFT(famsOf(r.addrs))
	if err != nil {
		return fail(err)
	}
	if cr, ok := compatReq(r, compat); ok {
		only := map[family]bool{famV4: compat[famV4], famV6: compat[famV6]}
		if err := newIPTCompat(x.LockPath).check(ctx, cr, only); err != nil {
			return fmt.Errorf("%w (iptables-nft filters FORWARD beside plumb's table, so the container's traffic needs accepts there too)", err)
		}
	}
	return nil
}
