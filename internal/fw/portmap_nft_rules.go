package fw

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The rules of plumb_portmap's base chains and of an owner's chain, as
// netlink expressions, and the queueing of the base.

// pmBaseRules are the wanted rules of the base chains other than postrouting.
func pmBaseRules() map[string][][]expr.Any {
	local := []expr.Any{
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(rtnLocal)},
		&expr.Verdict{Kind: expr.VerdictJump, Chain: pmPortsChain},
	}
	guard := append(nfprotoMatch(famV4),
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte(pmLoopback)})
	guard = append(append(guard, addrMatch(famV4, true, loopback4)...), &expr.Verdict{Kind: expr.VerdictDrop})
	var ports [][]expr.Any
	for _, k := range pmKinds {
		r := append(nfprotoMatch(k.fam()), pmKeyLoads(k)...)
		ports = append(ports, append(r, &expr.Lookup{SourceRegister: reg1, DestRegister: regVerdict, IsDestRegSet: true, SetName: k.String()}))
	}
	return map[string][][]expr.Any{
		pmGuardChain: {guard},
		pmPreChain:   {local},
		pmOutChain:   {local},
		pmPortsChain: ports,
	}
}

// pmKeyLoads loads the key of kind into registers from 1 on, as nft lays a
// concatenation out: [address .] protocol . port.
func pmKeyLoads(k pmKind) []expr.Any {
	protoReg, portReg := uint32(reg1), uint32(reg32a)
	var e []expr.Any
	switch k {
	case kindHost4:
		e = append(e, addrLoad(famV4, true))
		protoReg, portReg = reg32a, reg32b
	case kindHost6:
		e = append(e, addrLoad(famV6, true))
		protoReg, portReg = reg32e, reg32f
	}
	return append(e,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: protoReg},
		&expr.Payload{DestRegister: portReg, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
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

// pmOwnerRules are the rules of an owner's chain: the masquerade marks,
// then one DNAT per map the owner has.
func pmOwnerRules(p portPlan, chain string) [][]expr.Any {
	var rules [][]expr.Any
	split := p.byFamily()
	for _, f := range families {
		if len(split[f]) == 0 || !p.snat {
			continue
		}
		if p.masqAll {
			rules = append(rules, append(nfprotoMatch(f), markSet(p.mark)...))
			continue
		}
		rules = append(rules, append(append(nfprotoMatch(f), addrMatch(f, false, p.subnets[f])...), markSet(p.mark)...))
		if f == famV4 {
			rules = append(rules, append(append(nfprotoMatch(f), addrMatch(f, false, loopback4)...), markSet(p.mark)...))
		}
	}
	used := p.kinds()
	for _, k := range pmKinds {
		if !used[k] {
			continue
		}
		protoReg, nfproto := uint32(reg32a), uint32(unix.NFPROTO_IPV4)
		if k.fam() == famV6 {
			protoReg, nfproto = reg2, unix.NFPROTO_IPV6
		}
		r := append(nfprotoMatch(k.fam()), pmKeyLoads(k)...)
		r = append(r,
			&expr.Lookup{SourceRegister: reg1, DestRegister: reg1, IsDestRegSet: true, SetName: pmOwnerMapName(chain, k)},
			&expr.NAT{Type: expr.NATTypeDestNAT, Family: nfproto, RegAddrMin: reg1, RegProtoMin: protoReg, Specified: true})
		rules = append(rules, r)
	}
	return rules
}

// kinds says which maps the plan's keys fall in.
func (p portPlan) kinds() [4]bool {
	var used [4]bool
	for _, m := range p.maps {
		used[kindOf(m.key)] = true
	}
	return used
}

// pmBaseDiff says how the base differs from the design ("" if not); with
// mark non-zero, postrouting must masquerade it.
func (s *nftSession) pmBaseDiff(mark uint32) (string, error) {
	want := pmBaseRules()
	for _, c := range []string{pmGuardChain, pmPreChain, pmOutChain, pmPortsChain} {
		got, exists, err := s.rules(c)
		if err != nil {
			return "", err
		}
		if !exists {
			return fmt.Sprintf("chain inet %s %s is missing", pmTable, c), nil
		}
		if d := diffRules(textsOf(want[c]), got); d != "" {
			return fmt.Sprintf("chain inet %s %s: %s", pmTable, c, d), nil
		}
	}
	for _, k := range pmKinds {
		exists, err := s.rd.setExists(pmTable, k.String())
		if err != nil {
			return "", err
		}
		if !exists {
			return fmt.Sprintf("map inet %s %s is missing", pmTable, k), nil
		}
	}
	got, exists, err := s.rules(pmPostChain)
	if err != nil {
		return "", err
	}
	if !exists {
		return fmt.Sprintf("chain inet %s %s is missing", pmTable, pmPostChain), nil
	}
	if mark != 0 {
		w := nftRuleText(masqMarkRule(mark))
		for _, g := range got {
			if g == w {
				return "", nil
			}
		}
		return fmt.Sprintf("chain inet %s %s: rule %q is missing", pmTable, pmPostChain, w), nil
	}
	return "", nil
}

// queueBase queues the table, the base chains, the shared maps and their
// rules; every message is idempotent and the chains other than postrouting
// (which holds one rule per mark bit any owner uses) are flushed first, so
// a damaged base is repaired rather than doubled. The masquerade of mark is
// added when missing (mark 0: none).
func (s *nftSession) queueBase(mark uint32) error {
	t := s.table
	s.conn.AddTable(t)
	prio := func(p int32) *nftables.ChainPriority { return nftables.ChainPriorityRef(nftables.ChainPriority(p)) }
	chains := map[string]*nftables.Chain{
		pmGuardChain: {Name: pmGuardChain, Table: t, Type: nftables.ChainTypeFilter, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw},
		pmPreChain:   {Name: pmPreChain, Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest},
		pmOutChain:   {Name: pmOutChain, Table: t, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest},
		pmPortsChain: {Name: pmPortsChain, Table: t},
	}
	// The shared maps first: the ports chain's rules refer to them.
	for _, k := range pmKinds {
		if err := s.conn.AddSet(pmSharedMap(k), nil); err != nil {
			return fmt.Errorf("add map %s: %w", k, err)
		}
	}
	for _, name := range []string{pmPortsChain, pmGuardChain, pmPreChain, pmOutChain} {
		c := s.conn.AddChain(chains[name])
		s.conn.FlushChain(c)
		for _, r := range pmBaseRules()[name] {
			s.conn.AddRule(&nftables.Rule{Table: t, Chain: c, Exprs: r})
		}
	}
	post := s.conn.AddChain(&nftables.Chain{Name: pmPostChain, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: prio(pmPostPrio)})
	if mark != 0 {
		got, _, err := s.rules(pmPostChain)
		if err != nil {
			return err
		}
		if !contains(got, nftRuleText(masqMarkRule(mark))) {
			s.conn.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: masqMarkRule(mark)})
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
