package fw

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The rules of plumb_portmap's chains, as netlink expressions, and the
// reading and queueing of this static part (the base).

// pmStaticRules are the wanted rules of the chains other than postrouting
// and the kind chains' mark rules.
func pmStaticRules() map[string][][]expr.Any {
	local := []expr.Any{
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(rtnLocal)},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: pmPortsChain},
	}
	guard := append(nfprotoMatch(famV4),
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte(pmLoopback)})
	guard = append(append(guard, addrMatch(famV4, true, loopback4)...), &expr.Verdict{Kind: expr.VerdictDrop})
	rules := map[string][][]expr.Any{
		pmGuardChain: {guard},
		pmPreChain:   {local},
		pmOutChain:   {local},
	}
	for _, k := range pmKinds {
		rules[pmPortsChain] = append(rules[pmPortsChain], append(nfprotoMatch(k.fam()), &expr.Verdict{Kind: expr.VerdictJump, Chain: k.String()}))
		rules[k.String()] = [][]expr.Any{pmDNATRule(k)}
	}
	return rules
}

// pmKeyLoads loads the key of kind into the 32-bit registers from first
// on, as nft lays a concatenation out: [address .] protocol . port.
func pmKeyLoads(k pmKind, first int) []expr.Any {
	var e []expr.Any
	i := first
	if !k.any() {
		p := addrLoad(k.fam(), true)
		p.DestRegister = reg32(i)
		e = append(e, p)
		i += k.fam().addrLen() / 4
	}
	return append(e,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32(i)},
		&expr.Payload{DestRegister: reg32(i + 1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
}

// pmDNATRule is the DNAT of a kind chain: the key's target from its
// shared map.
func pmDNATRule(k pmKind) []expr.Any {
	protoReg, nfproto := uint32(reg32a), uint32(unix.NFPROTO_IPV4)
	if k.fam() == famV6 {
		protoReg, nfproto = reg2, unix.NFPROTO_IPV6
	}
	r := append(nfprotoMatch(k.fam()), pmKeyLoads(k, 0)...)
	return append(r,
		&expr.Lookup{SourceRegister: reg1, DestRegister: reg1, IsDestRegSet: true, SetName: k.String()},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto, RegAddrMin: reg1, RegProtoMin: protoReg, Specified: true})
}

// pmClassRule marks the traffic of a class: "ip saddr & 255.255.255.0 .
// ip daddr . meta l4proto . th dport @host4-mark13-24 meta mark set meta
// mark | 0x2000".
func pmClassRule(c pmClass) []expr.Any {
	f := c.kind.fam()
	r := append(nfprotoMatch(f), addrLoad(f, false))
	alen := f.addrLen()
	r = append(r, &expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: uint32(alen),
		Mask: net4or6Mask(c.plen, alen), Xor: make([]byte, alen)})
	r = append(r, pmKeyLoads(c.kind, alen/4)...)
	r = append(r, &expr.Lookup{SourceRegister: reg1, SetName: c.setName()})
	return append(r, markSet(c.mark())...)
}

func net4or6Mask(ones, alen int) []byte {
	m := make([]byte, alen)
	for i := 0; i < ones; i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// markSet is "meta mark set meta mark | mark".
func markSet(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^mark), Xor: binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	}
}

// masqMarkRule is "meta mark & mark == mark masquerade".
func masqMarkRule(mark uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(mark), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Masq{},
	}
}

// pmBase is what the kernel has of the static part.
type pmBase struct {
	tableExists bool
	diff        string           // the first difference of the static rules and maps ("" if none)
	sets        map[string]bool  // every set and map of the table
	classes     map[pmClass]bool // classes whose mark rule is in place
	post        []string         // postrouting's rules
}

// pmStaticMaps are the maps every table has.
func pmStaticMaps() []*nftables.Set {
	var out []*nftables.Set
	for _, k := range pmKinds {
		out = append(out, pmSharedMap(k), pmClaimsMap(k))
	}
	return append(out, pmOwnersMapSet())
}

// readBase reads the static part: a listing of the sets and a rule dump
// per chain.
func (s *nftSession) readBase() (pmBase, error) {
	b := pmBase{classes: map[pmClass]bool{}}
	var err error
	if b.sets, err = s.rd.setNames(pmTable); err != nil {
		return b, err
	}
	// plumb's table is never without its maps; no sets, no table.
	if b.tableExists = len(b.sets) > 0; !b.tableExists {
		b.diff = fmt.Sprintf("table inet %s is missing", pmTable)
		return b, nil
	}
	for _, set := range pmStaticMaps() {
		if !b.sets[set.Name] && b.diff == "" {
			b.diff = fmt.Sprintf("map inet %s %s is missing", pmTable, set.Name)
		}
	}
	want := pmStaticRules()
	for _, c := range []string{pmGuardChain, pmPreChain, pmOutChain, pmPortsChain} {
		got, exists, err := s.rules(c)
		if err != nil {
			return b, err
		}
		if b.diff != "" {
			continue
		}
		if !exists {
			b.diff = fmt.Sprintf("chain inet %s %s is missing", pmTable, c)
		} else if d := diffRules(textsOf(want[c]), got); d != "" {
			b.diff = fmt.Sprintf("chain inet %s %s: %s", pmTable, c, d)
		}
	}
	for _, k := range pmKinds {
		rules, err := s.conn.GetRules(s.table, s.chain(k.String()))
		if err != nil || len(rules) == 0 {
			if b.diff == "" {
				b.diff = fmt.Sprintf("chain inet %s %s is missing or empty", pmTable, k)
			}
			continue
		}
		dnat := nftRuleText(pmDNATRule(k))
		if got := nftRuleText(rules[len(rules)-1].Exprs); got != dnat && b.diff == "" {
			b.diff = fmt.Sprintf("chain inet %s %s: rule %q is missing at its end", pmTable, k, dnat)
		}
		for _, r := range rules[:len(rules)-1] {
			c, ok := ruleClass(r.Exprs)
			if !ok || c.kind != k || nftRuleText(r.Exprs) != nftRuleText(pmClassRule(c)) {
				if b.diff == "" {
					b.diff = fmt.Sprintf("chain inet %s %s: unexpected rule %q", pmTable, k, nftRuleText(r.Exprs))
				}
				continue
			}
			b.classes[c] = true
		}
	}
	got, exists, err := s.rules(pmPostChain)
	if err != nil {
		return b, err
	}
	if !exists && b.diff == "" {
		b.diff = fmt.Sprintf("chain inet %s %s is missing", pmTable, pmPostChain)
	}
	b.post = got
	return b, nil
}

// ruleClass is the class whose set a rule looks up.
func ruleClass(exprs []expr.Any) (pmClass, bool) {
	for _, e := range exprs {
		if l, ok := e.(*expr.Lookup); ok {
			return parseClass(l.SetName)
		}
	}
	return pmClass{}, false
}

// diffFor says how the base differs from what classes need ("" if not).
func (b pmBase) diffFor(classes []pmClass) string {
	if b.diff != "" {
		return b.diff
	}
	for _, c := range classes {
		if !b.sets[c.setName()] {
			return fmt.Sprintf("set inet %s %s is missing", pmTable, c.setName())
		}
		if !b.classes[c] {
			return fmt.Sprintf("chain inet %s %s: rule %q is missing", pmTable, c.kind, nftRuleText(pmClassRule(c)))
		}
		if w := nftRuleText(masqMarkRule(c.mark())); !contains(b.post, w) {
			return fmt.Sprintf("chain inet %s %s: rule %q is missing", pmTable, pmPostChain, w)
		}
	}
	return ""
}

// queueBase queues what the base lacks for classes. A damaged static part
// is rebuilt whole: every message is idempotent, and the chains other than
// postrouting are flushed first, so it is repaired rather than doubled; the
// mark rules of every class whose set exists come back with it. Otherwise
// only a missing class's set and rules are added (which the first ADD of
// a mark bit and prefix length pays for).
func (s *nftSession) queueBase(b pmBase, classes []pmClass) error {
	if b.diffFor(classes) == "" {
		return nil
	}
	t := s.table
	need := map[pmClass]bool{}
	for _, c := range classes {
		need[c] = true
	}
	kindChain := func(k pmKind) *nftables.Chain { return &nftables.Chain{Name: k.String(), Table: t} }
	if b.diff != "" {
		s.conn.AddTable(t)
		for _, set := range pmStaticMaps() {
			if err := s.conn.AddSet(set, nil); err != nil {
				return fmt.Errorf("add map %s: %w", set.Name, err)
			}
		}
		for name := range b.sets {
			if c, ok := parseClass(name); ok {
				need[c] = true
			}
		}
		b.classes = map[pmClass]bool{}
	}
	for c := range need {
		if !b.sets[c.setName()] {
			if err := s.conn.AddSet(c.set(), nil); err != nil {
				return fmt.Errorf("add set %s: %w", c.setName(), err)
			}
		}
	}
	if b.diff != "" {
		chains := map[string]*nftables.Chain{
			pmGuardChain: {Name: pmGuardChain, Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw},
			pmPreChain:   {Name: pmPreChain, Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest},
			pmOutChain:   {Name: pmOutChain, Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest},
			pmPortsChain: {Name: pmPortsChain, Table: t},
		}
		for _, k := range pmKinds {
			chains[k.String()] = kindChain(k)
		}
		rules := pmStaticRules()
		// Chains before the rules that jump to them.
		order := []string{"host4", "any4", "host6", "any6", pmPortsChain, pmGuardChain, pmPreChain, pmOutChain}
		for _, name := range order {
			c := s.conn.AddChain(chains[name])
			s.conn.FlushChain(c)
			for _, r := range rules[name] {
				s.conn.AddRule(&nftables.Rule{Table: t, Chain: c, Exprs: r})
			}
		}
	}
	prio := nftables.ChainPriorityRef(nftables.ChainPriority(pmPostPrio))
	post := s.conn.AddChain(&nftables.Chain{Name: pmPostChain, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: prio})
	marks := map[uint32]bool{}
	for _, c := range sortedClasses(need) {
		if !b.classes[c] {
			// At the head: before the kind's DNAT, which ends the chain.
			s.conn.InsertRule(&nftables.Rule{Table: t, Chain: kindChain(c.kind), Exprs: pmClassRule(c)})
		}
		if w := masqMarkRule(c.mark()); !marks[c.mark()] && !contains(b.post, nftRuleText(w)) {
			marks[c.mark()] = true
			s.conn.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: w})
		}
	}
	return nil
}

func sortedClasses(m map[pmClass]bool) []pmClass {
	out := make([]pmClass, 0, len(m))
	for c := range m {
		out = append(out, c)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].setName() < out[j-1].setName(); j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
