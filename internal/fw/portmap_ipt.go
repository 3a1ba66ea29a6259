package fw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
)

// The iptables layout, in the nat table of iptables and ip6tables:
//
//	-A PREROUTING -m addrtype --dst-type LOCAL -j PLUMB-HOSTPORTS          (once)
//	-A OUTPUT -m addrtype --dst-type LOCAL -j PLUMB-HOSTPORTS              (once)
//	-I POSTROUTING -m mark --mark 0x2000/0x2000 -m comment --comment "plumb portmap masquerade" -j MASQUERADE
//	                                                                        (once per mark bit in use)
//	-A PLUMB-HOSTPORTS -j PLUMB-HP-HOST                                     (plumb's alone: rewritten at will)
//	-A PLUMB-HOSTPORTS -j PLUMB-HP-ANY
//	-A PLUMB-HP-HOST -d 192.0.2.1/32 -p tcp -m multiport --dports 8080,9000:9999 [conditions] -m comment --comment "plumb <owner hash> <network> <id> <if>" -j PLP-<net>-<owner>
//	-A PLUMB-HP-ANY -p udp -m multiport --dports 5353 ... -j PLP-<net>-<owner>
//	-A PLP-<NetHash(network)>-<owner.Hash()[:10]> -s 10.88.0.0/24 -j MARK --set-xmark 0x2000/0x2000
//	-A PLP-... -s 127.0.0.0/8 -j MARK --set-xmark 0x2000/0x2000
//	-A PLP-... -d 192.0.2.1/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:80
//
// and, IPv4 only, in the raw table:
//
//	-A PREROUTING -d 127.0.0.0/8 ! -i lo -m comment --comment "plumb portmap: no loopback destination from the network" -j DROP
//
// An owner's jumps match exactly its keys (address, protocol, ports), so
// its chain sees only its own traffic. ADD inserts them on top of their
// dispatch chain, so the newest claimant of a key is matched first, and the
// next one takes over again when it goes: the same rule as the nftables
// backend. Keys on one address (PLUMB-HP-HOST) are matched before keys on
// every address (PLUMB-HP-ANY), as nftables looks up its host maps first.
//
// An owner's jumps are computed from its own chain, so ADD and DEL never
// list the dispatch chains (which grow with the number of containers); DEL
// falls back to listing them when that computation misses, e.g. after the
// conditions changed. Every change is one iptables-restore --noflush batch
// per family, under the flock all plumb processes share.

const (
	iptPMEntry      = "PLUMB-HOSTPORTS"
	iptPMHost       = "PLUMB-HP-HOST"
	iptPMAny        = "PLUMB-HP-ANY"
	iptPMPrefix     = "PLP-"
	iptMultiportMax = 15 // ports per multiport match; a range counts twice
	iptPMLocal      = "-m addrtype --dst-type LOCAL -j " + iptPMEntry
	iptPMGuard      = `-d 127.0.0.0/8 ! -i lo -m comment --comment "plumb portmap: no loopback destination from the network" -j DROP`
)

// iptPMEntryRules are the entry chain's rules: addresses before any.
var iptPMEntryRules = []string{"-j " + iptPMHost, "-j " + iptPMAny}

// iptPMNetPrefix starts the names of all owner chains of network.
func iptPMNetPrefix(network string) string { return iptPMPrefix + NetHash(network) + "-" }

// iptPMOwnerChain is the name of o's chain (23 of the 28 characters allowed).
func iptPMOwnerChain(o Owner) string { return iptPMNetPrefix(o.Network) + o.Hash()[:iptOwnerHashLen] }

// iptPMMasq is the POSTROUTING rule masquerading mark.
func iptPMMasq(mark uint32) string {
	return fmt.Sprintf(`-m mark --mark %#x/%#x -m comment --comment "plumb portmap masquerade" -j MASQUERADE`, mark, mark)
}

// IPTPorts is the iptables PortMapper.
type IPTPorts struct {
	// LockPath is the lock file; DefaultLockPath when empty.
	LockPath string
	fams     [2]*iptFamily // nil when the family's tools are missing
}

var _ PortMapper = (*IPTPorts)(nil)

// NewIPTPorts finds iptables and iptables-restore (required) and their IPv6
// twins (optional: without them IPv6 mappings fail and DEL/GC skip IPv6).
func NewIPTPorts() (*IPTPorts, error) {
	m, err := NewIPTMasq()
	if err != nil {
		return nil, err
	}
	return &IPTPorts{fams: m.fams}, nil
}

// Usable lists one rule of the nat table's POSTROUTING chain.
func (m *IPTPorts) Usable(ctx context.Context) error {
	f := m.fams[famV4]
	if f == nil {
		return fmt.Errorf("%w: iptables not found", ErrPortsUnusable)
	}
	if _, err := f.run(ctx, "", f.cmd, "-w", "-t", "nat", "-S", "POSTROUTING", "1"); err != nil {
		return fmt.Errorf("%w: %w", ErrPortsUnusable, err)
	}
	return nil
}

// pmList lists chain of table; exists is false when iptables has no such
// chain (exit status 1).
func (f *iptFamily) pmList(ctx context.Context, table, chain string) (rules []iptRule, exists bool, err error) {
	out, err := f.run(ctx, "", f.cmd, "-w", "-t", table, "-S", chain)
	if err != nil {
		if exitCode(err) == 1 && !iptUnavailable(err) {
			return nil, false, nil
		}
		return nil, false, err
	}
	return parseRules(chain, out), true, nil
}

// pmApply runs one iptables-restore --noflush batch: the nat lines, then
// the raw lines (if any).
func (f *iptFamily) pmApply(ctx context.Context, nat, raw []string) error {
	var b strings.Builder
	if len(nat) > 0 {
		b.WriteString("*nat\n" + strings.Join(nat, "\n") + "\nCOMMIT\n")
	}
	if len(raw) > 0 {
		b.WriteString("*raw\n" + strings.Join(raw, "\n") + "\nCOMMIT\n")
	}
	if b.Len() == 0 {
		return nil
	}
	return f.restoreBatch(ctx, b.String())
}

func specsOf(rules []iptRule) []string {
	out := make([]string, len(rules))
	for i, r := range rules {
		out[i] = r.spec
	}
	return out
}

// iptPMOwnerSpecs are the rules of an owner's chain for one family, as
// iptables -S prints them.
func iptPMOwnerSpecs(p portPlan, f family, maps []portMap) []string {
	if len(maps) == 0 {
		return nil
	}
	var specs []string
	if p.snat {
		target := fmt.Sprintf("-j MARK --set-xmark %#x/%#x", p.mark, p.mark)
		if p.extMark != "" {
			target = "-j " + p.extMark
		}
		switch {
		case p.masqAll:
			specs = append(specs, target)
		case f == famV4:
			specs = append(specs, "-s "+p.subnets[f].String()+" "+target, "-s "+loopback4.String()+" "+target)
		default:
			specs = append(specs, "-s "+p.subnets[f].String()+" "+target)
		}
	}
	for _, m := range maps {
		proto := protoName(m.key.proto)
		s := fmt.Sprintf("-p %s -m %s --dport %d -j DNAT --to-destination %s", proto, proto, m.key.port,
			net.JoinHostPort(m.ctrIP.String(), strconv.Itoa(int(m.ctrPort))))
		if h := m.key.hostIP(); h != nil {
			s = fmt.Sprintf("-d %s/%d %s", h, 8*len(h), s)
		}
		specs = append(specs, s)
	}
	return specs
}

// iptPMJump is one rule of a dispatch chain.
type iptPMJump struct {
	chain string // PLUMB-HP-HOST or PLUMB-HP-ANY
	spec  string
}

// iptPMJumps are an owner's dispatch rules for one family's mappings: per
// (address, protocol) its ports, as few multiport matches as fit.
func iptPMJumps(maps []portMap, conds []string, comment, chain string) []iptPMJump {
	type group struct {
		host  string
		proto uint8
	}
	var order []group
	ports := map[group][]uint16{}
	for _, m := range maps {
		g := group{m.key.host, m.key.proto}
		if _, ok := ports[g]; !ok {
			order = append(order, g)
		}
		ports[g] = append(ports[g], m.key.port)
	}
	var out []iptPMJump
	for _, g := range order {
		dispatch, prefix := iptPMAny, ""
		if g.host != "" {
			h := net.IP(g.host)
			dispatch, prefix = iptPMHost, fmt.Sprintf("-d %s/%d ", h, 8*len(h))
		}
		for _, list := range multiportLists(ports[g]) {
			s := fmt.Sprintf("%s-p %s -m multiport --dports %s", prefix, protoName(g.proto), list)
			if len(conds) > 0 {
				s += " " + strings.Join(quoteArgs(conds), " ")
			}
			s += fmt.Sprintf(` -m comment --comment "%s" -j %s`, comment, chain)
			out = append(out, iptPMJump{chain: dispatch, spec: s})
		}
	}
	return out
}

// quoteArgs quotes the arguments iptables-restore would otherwise split.
func quoteArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t") {
			a = `"` + a + `"`
		}
		out[i] = a
	}
	return out
}

// multiportLists compresses sorted, distinct ports into ranges and cuts
// them into multiport lists of at most iptMultiportMax slots.
func multiportLists(ports []uint16) []string {
	sorted := append([]uint16(nil), ports...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i] < sorted[j] })
	var lists []string
	var cur []string
	slots := 0
	flush := func() {
		if len(cur) > 0 {
			lists = append(lists, strings.Join(cur, ","))
			cur, slots = nil, 0
		}
	}
	for i := 0; i < len(sorted); {
		j := i
		for j+1 < len(sorted) && sorted[j+1] == sorted[j]+1 {
			j++
		}
		item, n := strconv.Itoa(int(sorted[i])), 1
		if j > i {
			item, n = fmt.Sprintf("%d:%d", sorted[i], sorted[j]), 2
		}
		if slots+n > iptMultiportMax {
			flush()
		}
		cur, slots = append(cur, item), slots+n
		i = j + 1
	}
	flush()
	return lists
}

// iptPMParseOwner reads an owner's mappings back from its chain's DNAT
// rules (what the owner's jumps were computed from).
func iptPMParseOwner(f family, rules []iptRule) []portMap {
	var out []portMap
	for _, r := range rules {
		toks := tokens(r.spec)
		var m portMap
		m.key.fam = f
		ok := false
		for i := 0; i+1 < len(toks); i++ {
			v := toks[i+1]
			switch toks[i] {
			case "-d":
				ip, _, err := net.ParseCIDR(v)
				if err == nil {
					if ip4 := ip.To4(); ip4 != nil && f == famV4 {
						ip = ip4
					}
					m.key.host = string(ip)
				}
			case "-p":
				m.key.proto = portProtos[v]
			case "--dport":
				n, _ := strconv.Atoi(v)
				m.key.port = uint16(n)
			case "--to-destination":
				host, port, err := net.SplitHostPort(v)
				n, _ := strconv.Atoi(port)
				ip := net.ParseIP(host)
				if err == nil && ip != nil {
					if ip4 := ip.To4(); ip4 != nil && f == famV4 {
						ip = ip4
					}
					m.ctrIP, m.ctrPort, ok = ip, uint16(n), true
				}
			}
		}
		if ok && m.key.proto != 0 && m.key.port != 0 {
			out = append(out, m)
		}
	}
	return out
}

// iptPMState is one family's view of the shared objects.
type iptPMState struct {
	pre, out, post []iptRule
	entry          []iptRule
	entryExists    bool
	own            []iptRule
	ownExists      bool
	raw            []iptRule // IPv4 only
}

// pmReadState reads the hook chains, the entry chain and the owner's chain:
// all of them bounded in size by something other than the number of
// containers.
func (f *iptFamily) pmReadState(ctx context.Context, chain string) (iptPMState, error) {
	var st iptPMState
	var err error
	for _, c := range []struct {
		chain string
		dst   *[]iptRule
		ok    *bool
	}{{"PREROUTING", &st.pre, nil}, {"OUTPUT", &st.out, nil}, {"POSTROUTING", &st.post, nil},
		{iptPMEntry, &st.entry, &st.entryExists}, {chain, &st.own, &st.ownExists}} {
		var exists bool
		if *c.dst, exists, err = f.pmList(ctx, "nat", c.chain); err != nil {
			return st, err
		}
		if c.ok != nil {
			*c.ok = exists
		}
	}
	if f.fam == famV4 {
		if st.raw, _, err = f.pmList(ctx, "raw", "PREROUTING"); err != nil {
			return st, err
		}
	}
	return st, nil
}

func hasSpec(rules []iptRule, spec string) bool {
	for _, r := range rules {
		if r.spec == spec {
			return true
		}
	}
	return false
}

// pmBaseLines repairs what is missing of the shared objects.
func (f *iptFamily) pmBaseLines(ctx context.Context, st iptPMState, mark uint32) (nat, raw []string, err error) {
	if !st.entryExists || !equalStrings(specsOf(st.entry), iptPMEntryRules) {
		// The dispatch chains hold every owner's jumps: create them only
		// when missing, never with a header that would flush them.
		for _, c := range []string{iptPMHost, iptPMAny} {
			_, exists, err := f.pmList(ctx, "nat", c)
			if err != nil {
				return nil, nil, err
			}
			if !exists {
				nat = append(nat, "-N "+c)
			}
		}
		nat = append(nat, ":"+iptPMEntry+" - [0:0]")
		for _, r := range iptPMEntryRules {
			nat = append(nat, "-A "+iptPMEntry+" "+r)
		}
	}
	if !hasSpec(st.pre, iptPMLocal) {
		nat = append(nat, "-A PREROUTING "+iptPMLocal)
	}
	if !hasSpec(st.out, iptPMLocal) {
		nat = append(nat, "-A OUTPUT "+iptPMLocal)
	}
	if mark != 0 && !hasSpec(st.post, iptPMMasq(mark)) {
		// First: other masquerade chains may accept before it.
		nat = append(nat, "-I POSTROUTING 1 "+iptPMMasq(mark))
	}
	if f.fam == famV4 && !hasSpec(st.raw, iptPMGuard) {
		raw = append(raw, "-I PREROUTING 1 "+iptPMGuard)
	}
	return nat, raw, nil
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// need returns the families the plan uses, failing if one has no tools.
func (m *IPTPorts) need(p portPlan) ([]*iptFamily, error) {
	var out []*iptFamily
	for f, maps := range p.byFamily() {
		if len(maps) == 0 {
			continue
		}
		if m.fams[f] == nil {
			return nil, fmt.Errorf("%s mapping %s: ip6tables or ip6tables-restore not found in PATH", family(f), maps[0].mapping())
		}
		out = append(out, m.fams[f])
	}
	return out, nil
}

func (m *IPTPorts) available() []*iptFamily {
	var out []*iptFamily
	for _, f := range m.fams {
		if f != nil {
			out = append(out, f)
		}
	}
	return out
}

// AddPorts writes the owner's chain and its dispatch rules. Per family it
// lists the three nat hook chains, the entry chain, the owner's chain and,
// for IPv4, raw PREROUTING, then runs one iptables-restore. A family the
// owner no longer publishes in loses its chain.
func (m *IPTPorts) AddPorts(ctx context.Context, rule PortRule) error {
	p, err := parsePortRule(rule)
	if err != nil {
		return err
	}
	if _, err := m.need(p); err != nil {
		return err
	}
	label, chain := rule.Owner.label(), iptPMOwnerChain(rule.Owner)
	comment := ownerComment(rule.Owner, iptCommentMax)
	split := p.byFamily()
	for _, f := range m.available() {
		if len(split[f.fam]) > 0 {
			f.warm(ctx) // starts while the lock is taken and the state read
			defer f.cool()
		}
	}
	release, err := lockFile(ctx, m.LockPath)
	if err != nil {
		return fmt.Errorf("publish ports of %s: %w", label, err)
	}
	defer release()
	var done []*iptFamily
	for _, f := range m.available() {
		if len(split[f.fam]) == 0 {
			if _, err := f.pmDel(ctx, chain, p.conds[f.fam], comment); err != nil {
				return fmt.Errorf("publish ports of %s: remove %s chain: %w", label, f.fam, err)
			}
			continue
		}
		if err := f.pmAdd(ctx, p, chain, comment, split[f.fam]); err != nil {
			err = fmt.Errorf("publish %s ports of %s: %w", f.fam, label, err)
			for _, d := range done {
				if _, uerr := d.pmDel(ctx, chain, p.conds[d.fam], comment); uerr != nil {
					err = errors.Join(err, fmt.Errorf("undo %s ports of %s: %w", d.fam, label, uerr))
				}
			}
			return err
		}
		done = append(done, f)
	}
	return nil
}

func (f *iptFamily) pmAdd(ctx context.Context, p portPlan, chain, comment string, maps []portMap) error {
	mark := uint32(0)
	if p.snat && p.extMark == "" {
		mark = p.mark
	}
	conds := p.conds[f.fam]
	var nat, raw []string
	lines := func(old []string) []string {
		l := append([]string(nil), nat...)
		l = append(l, old...)
		l = append(l, ":"+chain+" - [0:0]")
		for _, s := range iptPMOwnerSpecs(p, f.fam, maps) {
			l = append(l, "-A "+chain+" "+s)
		}
		jumps := iptPMJumps(maps, conds, comment, chain)
		for i := len(jumps) - 1; i >= 0; i-- { // last to first: they end up in order, on top
			l = append(l, "-I "+jumps[i].chain+" 1 "+jumps[i].spec)
		}
		return l
	}
	// A new owner on a complete base: nothing to list (see iptNFTView).
	if v, ok := f.nftView("nat", "raw"); ok {
		inPlace := v.pmBaseInPlace(f.fam, chain, mark)
		v.close()
		if inPlace {
			return f.pmApply(ctx, lines(nil), nil)
		}
	}
	st, err := f.pmReadState(ctx, chain)
	if err != nil {
		return err
	}
	if nat, raw, err = f.pmBaseLines(ctx, st, mark); err != nil {
		return err
	}
	var old []iptPMJump
	if st.ownExists {
		old = iptPMJumps(iptPMParseOwner(f.fam, st.own), conds, comment, chain)
	}
	var dels []string
	for _, j := range old {
		dels = append(dels, "-D "+j.chain+" "+j.spec)
	}
	err = f.pmApply(ctx, lines(dels), raw)
	if err == nil || len(old) == 0 {
		return err
	}
	// The old jumps were not what the owner's chain implies (conditions
	// changed, or someone edited them): find them the slow way.
	if dels, err = f.pmJumpsTo(ctx, chain); err != nil {
		return err
	}
	return f.pmApply(ctx, lines(dels), raw)
}

// pmJumpsTo lists, as -D lines, every dispatch rule jumping to chains.
func (f *iptFamily) pmJumpsTo(ctx context.Context, chains ...string) ([]string, error) {
	set := map[string]bool{}
	for _, c := range chains {
		set[c] = true
	}
	var dels []string
	for _, d := range []string{iptPMHost, iptPMAny} {
		rules, _, err := f.pmList(ctx, "nat", d)
		if err != nil {
			return nil, err
		}
		for _, r := range targeting(rules, set) {
			dels = append(dels, "-D "+d+" "+r.spec)
		}
	}
	return dels, nil
}

// DelPorts removes the owner's chain and its dispatch rules in every family
// and returns the mappings the chains held. Per family: one listing of the
// owner's chain and, when it exists, one iptables-restore.
func (m *IPTPorts) DelPorts(ctx context.Context, owner Owner) ([]PortMapping, error) {
	return m.del(ctx, owner, nil)
}

var _ KnownPortsDeleter = (*IPTPorts)(nil)

// DelKnownPorts is DelPorts, told that the owner published known. On
// iptables-nft it drops the owner's chain and the dispatch rules jumping
// to it through netlink (see dropChains): no iptables process, no listing.
// It then reports known as what was removed, since it does not decode the
// rules it deletes; removed ports only matter for the UDP conntrack flush.
func (m *IPTPorts) DelKnownPorts(ctx context.Context, owner Owner, known []PortMapping) ([]PortMapping, error) {
	return m.del(ctx, owner, known)
}

func (m *IPTPorts) del(ctx context.Context, owner Owner, known []PortMapping) ([]PortMapping, error) {
	if err := reclassify(validateOwner(owner)); err != nil {
		return nil, err
	}
	label, chain := owner.label(), iptPMOwnerChain(owner)
	fams := mayHoldChain(m.available(), chain)
	if len(fams) == 0 {
		return nil, nil
	}
	release, err := lockFile(ctx, m.LockPath)
	if err != nil {
		return nil, fmt.Errorf("remove published ports of %s: %w", label, err)
	}
	defer release()
	var errs []error
	var removed []PortMapping
	for _, f := range fams {
		if len(known) > 0 {
			if existed, ok := f.pmDrop(chain); ok {
				if existed {
					removed = append(removed, known...)
				}
				continue
			}
		}
		maps, err := f.pmDel(ctx, chain, nil, ownerComment(owner, iptCommentMax))
		if err != nil {
			errs = append(errs, fmt.Errorf("remove %s published ports of %s: %w", f.fam, label, err))
		}
		removed = append(removed, mappingsOf(maps)...)
	}
	return removed, errors.Join(errs...)
}

// pmDrop drops chain and the dispatch rules jumping to it through netlink,
// when iptables is iptables-nft; ok is false when the caller must use
// pmDel.
func (f *iptFamily) pmDrop(chain string) (existed, ok bool) {
	v, ok := f.nftView("nat")
	if !ok {
		return false, false
	}
	defer v.close()
	existed = v.exists("nat", chain)
	return existed, v.dropChains("nat", []string{iptPMHost, iptPMAny}, chain)
}

// pmDel removes chain and the dispatch rules jumping to it. iptables
// refuses to jump to a missing chain, so when the chain is absent nothing
// refers to it.
func (f *iptFamily) pmDel(ctx context.Context, chain string, conds []string, comment string) ([]portMap, error) {
	if !f.mayHold("nat", chain) {
		return nil, nil
	}
	own, exists, err := f.pmList(ctx, "nat", chain)
	if err != nil {
		if iptUnavailable(err) {
			return nil, nil
		}
		return nil, err
	}
	if !exists {
		return nil, nil
	}
	maps := iptPMParseOwner(f.fam, own)
	lines := func(dels []string) []string {
		return append(append(append([]string(nil), dels...), ":"+chain+" - [0:0]"), "-X "+chain)
	}
	var dels []string
	for _, j := range iptPMJumps(maps, conds, comment, chain) {
		dels = append(dels, "-D "+j.chain+" "+j.spec)
	}
	if err := f.pmApply(ctx, lines(dels), nil); err == nil {
		return maps, nil
	}
	if dels, err = f.pmJumpsTo(ctx, chain); err != nil {
		return nil, err
	}
	if err := f.pmApply(ctx, lines(dels), nil); err != nil {
		return nil, err
	}
	return maps, nil
}

// GCPorts removes every owner chain of network whose owner is not in keep,
// and the rules jumping to them. Per family: go-iptables lists the nat
// chains, the dispatch chains are listed, one iptables-restore.
func (m *IPTPorts) GCPorts(ctx context.Context, network string, keep []Owner) error {
	release, err := lockFile(ctx, m.LockPath)
	if err != nil {
		return fmt.Errorf("gc published ports of network %s: %w", network, err)
	}
	defer release()
	kept := map[string]bool{}
	for _, o := range inNetwork(network, keep) {
		kept[iptPMOwnerChain(o)] = true
	}
	var errs []error
	for _, f := range m.available() {
		if err := f.pmGC(ctx, iptPMNetPrefix(network), kept); err != nil {
			errs = append(errs, fmt.Errorf("gc %s published ports of network %s: %w", f.fam, network, err))
		}
	}
	return errors.Join(errs...)
}

func (f *iptFamily) pmGC(ctx context.Context, prefix string, kept map[string]bool) error {
	doomed, err := f.staleChains(prefix, kept)
	if err != nil || len(doomed) == 0 {
		return err
	}
	lines, err := f.pmJumpsTo(ctx, doomed...)
	if err != nil {
		return err
	}
	for _, c := range doomed {
		lines = append(lines, ":"+c+" - [0:0]")
	}
	for _, c := range doomed {
		lines = append(lines, "-X "+c)
	}
	return f.pmApply(ctx, lines, nil)
}

// CheckPorts compares, per family, the hooks, the entry chain, the owner's
// chain and jumps, and for each key the first dispatch rule matching it
// (the one that decides) with the design.
func (m *IPTPorts) CheckPorts(ctx context.Context, rule PortRule) error {
	p, err := parsePortRule(rule)
	if err != nil {
		return err
	}
	if _, err := m.need(p); err != nil {
		return err
	}
	label, chain := rule.Owner.label(), iptPMOwnerChain(rule.Owner)
	comment := ownerComment(rule.Owner, iptCommentMax)
	split := p.byFamily()
	for _, f := range m.available() {
		d, err := f.pmCheck(ctx, p, chain, comment, split[f.fam])
		if err != nil {
			return fmt.Errorf("check %s published ports of %s: %w", f.fam, label, err)
		}
		if d != "" {
			return fmt.Errorf("check %s published ports of %s: %w: %s", f.fam, label, ErrPortsMismatch, d)
		}
	}
	return nil
}

func (f *iptFamily) pmCheck(ctx context.Context, p portPlan, chain, comment string, maps []portMap) (string, error) {
	st, err := f.pmReadState(ctx, chain)
	if err != nil {
		return "", err
	}
	if len(maps) == 0 {
		if st.ownExists {
			return "nat chain " + chain + " exists, but nothing is published", nil
		}
		return "", nil
	}
	mark := uint32(0)
	if p.snat && p.extMark == "" {
		mark = p.mark
	}
	switch {
	case !st.entryExists:
		return "nat chain " + iptPMEntry + " is missing", nil
	case !equalStrings(specsOf(st.entry), iptPMEntryRules):
		return fmt.Sprintf("nat chain %s: %s", iptPMEntry, diffRules(iptPMEntryRules, specsOf(st.entry))), nil
	case !hasSpec(st.pre, iptPMLocal):
		return fmt.Sprintf("nat PREROUTING: rule %q is missing", iptPMLocal), nil
	case !hasSpec(st.out, iptPMLocal):
		return fmt.Sprintf("nat OUTPUT: rule %q is missing", iptPMLocal), nil
	case mark != 0 && !hasSpec(st.post, iptPMMasq(mark)):
		return fmt.Sprintf("nat POSTROUTING: rule %q is missing", iptPMMasq(mark)), nil
	case f.fam == famV4 && !hasSpec(st.raw, iptPMGuard):
		return fmt.Sprintf("raw PREROUTING: rule %q is missing", iptPMGuard), nil
	case !st.ownExists:
		return "nat chain " + chain + " is missing", nil
	}
	if d := diffRules(iptPMOwnerSpecs(p, f.fam, maps), specsOf(st.own)); d != "" {
		return "chain " + chain + ": " + d, nil
	}
	dispatch := map[string][]iptRule{}
	for _, d := range []string{iptPMHost, iptPMAny} {
		if dispatch[d], _, err = f.pmList(ctx, "nat", d); err != nil {
			return "", err
		}
	}
	conds := p.conds[f.fam]
	for _, j := range iptPMJumps(maps, conds, comment, chain) {
		present := hasSpec(dispatch[j.chain], j.spec)
		if !present && len(conds) > 0 {
			// iptables prints conditions in its own words: ask it.
			_, err := f.run(ctx, "", f.cmd, append([]string{"-w", "-t", "nat", "-C", j.chain}, tokens(j.spec)...)...)
			present = err == nil
		}
		if !present {
			return fmt.Sprintf("nat chain %s: rule %q is missing", j.chain, j.spec), nil
		}
	}
	for _, mp := range maps {
		d := iptPMAny
		if !mp.key.any() {
			d = iptPMHost
		}
		if got := iptPMFirstMatch(dispatch[d], mp.key); got != chain {
			if got == "" {
				return fmt.Sprintf("%s is not published (no rule in %s)", mp.key, d), nil
			}
			return fmt.Sprintf("%s is published by %s", mp.key, iptPMOwnerOf(dispatch[d], got)), nil
		}
	}
	return "", nil
}

// iptPMFirstMatch is the target of the first dispatch rule matching k.
func iptPMFirstMatch(rules []iptRule, k portKey) string {
	for _, r := range rules {
		toks := tokens(r.spec)
		var host string
		var proto uint8
		var ports []string
		for i := 0; i+1 < len(toks); i++ {
			switch toks[i] {
			case "-d":
				if ip, _, err := net.ParseCIDR(toks[i+1]); err == nil {
					if ip4 := ip.To4(); ip4 != nil && k.fam == famV4 {
						ip = ip4
					}
					host = string(ip)
				}
			case "-p":
				proto = portProtos[toks[i+1]]
			case "--dports":
				ports = strings.Split(toks[i+1], ",")
			}
		}
		if host != k.host || proto != k.proto {
			continue
		}
		for _, p := range ports {
			lo, hi, isRange := strings.Cut(p, ":")
			a, _ := strconv.Atoi(lo)
			b := a
			if isRange {
				b, _ = strconv.Atoi(hi)
			}
			if int(k.port) >= a && int(k.port) <= b {
				return r.target
			}
		}
	}
	return ""
}

// iptPMOwnerOf names the owner of chain from its dispatch rule's comment.
func iptPMOwnerOf(rules []iptRule, chain string) string {
	for _, r := range rules {
		if r.target != chain {
			continue
		}
		toks := tokens(r.spec)
		for i := 0; i+1 < len(toks); i++ {
			if toks[i] == "--comment" {
				if f := strings.Fields(toks[i+1]); len(f) >= 4 && f[0] == "plumb" {
					return strings.Join(f[2:], "/") + " (chain " + chain + ")"
				}
			}
		}
	}
	return "chain " + chain
}
