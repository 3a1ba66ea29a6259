package fw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
)

// The iptables layout, in the filter table of iptables and ip6tables:
//
//	-A FORWARD -m comment --comment "plumb firewall: admin rules" -j CNI-ADMIN   (first)
//	-A FORWARD -m comment --comment "plumb firewall" -j PLUMB-FORWARD
//	-A PLUMB-FORWARD -d 10.88.0.2/32 -m comment --comment "plumb <owner hash> <network> <id> <if>" -j PLF-<net>-<owner>
//	...                                                        (every owner's rules for traffic to it, then)
//	-A PLUMB-FORWARD -s 10.88.0.2/32 -m comment --comment "plumb ..." -j PLF-<net>-<owner>
//	-A PLUMB-BRIDGES -i cni0 -j DROP                            (one per container bridge)
//	-A PLF-... -d 10.88.0.2/32 ! -i cni0 -j PLUMB-BRIDGES         (same-bridge, isolated)
//	-A PLF-... -d 10.88.0.2/32 -i cni0 -o cni0 -j DROP            (isolated)
//	-A PLF-... -d 10.88.0.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
//	-A PLF-... -d 10.88.0.2/32 -m conntrack --ctstate DNAT -j ACCEPT
//	-A PLF-... -s 10.88.0.2/32 -j ACCEPT
//
// The container's own traffic, replies to it and connections published to
// it (DNAT: port mappings) are accepted; new connections from elsewhere are
// left to the rest of FORWARD, as the reference plugin does. The admin chain
// is created when missing and never flushed. Each owner's PLUMB-FORWARD rules
// jump to its own chain, so DEL A never deletes B's even for one address.
// Rules for traffic to containers come before those for traffic from them,
// so a destination's ingress policy drops before a source's accept ends
// FORWARD; ADD inserts them at the top, so the owner that added an address
// last decides.
// Every call reads the table once (iptables -S) and changes it with one
// iptables-restore --noflush batch per family, under the plumb flock.
//
// In compat mode (the nftables backend on a host whose iptables-nft filter
// table has a FORWARD chain) only the accepts and the PLUMB-FORWARD jump are
// written: the policy and the admin chain live in nftables, where a drop is
// final whatever iptables accepts, while only an accept in iptables itself
// gets past an iptables drop.

const (
	fltIPTChain       = "PLUMB-FORWARD"
	fltIPTBridges     = "PLUMB-BRIDGES"
	fltIPTChainPrefix = "PLF-"
	fltIPTAdminNote   = "plumb firewall: admin rules"
	fltIPTJumpNote    = "plumb firewall"
)

// fltIPTNetPrefix starts the names of all owner chains of network.
func fltIPTNetPrefix(network string) string { return fltIPTChainPrefix + NetHash(network) + "-" }

// fltIPTOwnerChain is the name of o's chain (23 characters).
func fltIPTOwnerChain(o Owner) string {
	return fltIPTNetPrefix(o.Network) + o.Hash()[:iptOwnerHashLen]
}

// IPTFilter is the iptables Filter.
type IPTFilter struct {
	// LockPath is the lock file; DefaultLockPath when empty.
	LockPath string
	fams     [2]*iptFamily // nil when the family's tools are missing
	compat   bool          // accepts only: the nftables backend's helper
}

var _ Filter = (*IPTFilter)(nil)

// NewIPTFilter finds iptables and iptables-restore (required) and their IPv6
// twins (optional: without them IPv6 requests fail and DEL/GC skip IPv6).
func NewIPTFilter() (*IPTFilter, error) {
	m, err := NewIPTMasq()
	if err != nil {
		return nil, err
	}
	return &IPTFilter{fams: m.fams}, nil
}

// newIPTCompat is the accept-only IPTFilter the nftables backend uses; it
// prefers the nf_tables variant of the tools, since it writes only where
// nf_tables showed an iptables-nft FORWARD chain.
func newIPTCompat(lockPath string) *IPTFilter {
	x := &IPTFilter{LockPath: lockPath, compat: true}
	for _, f := range families {
		prefix := "iptables"
		if f == famV6 {
			prefix = "ip6tables"
		}
		for _, variant := range []string{"-nft", ""} {
			cmd, err1 := exec.LookPath(prefix + variant)
			restore, err2 := exec.LookPath(prefix + variant + "-restore")
			if err1 == nil && err2 == nil {
				x.fams[f] = &iptFamily{fam: f, cmd: cmd, restore: restore}
				break
			}
		}
	}
	return x
}

// iptTable is one family's filter table as iptables -S prints it.
type iptTable struct {
	chains map[string]bool      // every chain, built-in ones included
	rules  map[string][]iptRule // chain -> rules in order
}

// parseIPTTable reads iptables -S output.
func parseIPTTable(out string) iptTable {
	t := iptTable{chains: map[string]bool{}, rules: map[string][]iptRule{}}
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "-P "), strings.HasPrefix(line, "-N "):
			if f := strings.Fields(line); len(f) >= 2 {
				t.chains[f[1]] = true
			}
		case strings.HasPrefix(line, "-A "):
			chain, _, _ := strings.Cut(line[3:], " ")
			t.rules[chain] = append(t.rules[chain], parseRules(chain, line)...)
		}
	}
	return t
}

// index is the 1-based position of the rule spec in chain, 0 when absent.
func (t iptTable) index(chain, spec string) int {
	for i, r := range t.rules[chain] {
		if r.spec == spec {
			return i + 1
		}
	}
	return 0
}

// dst is the -d value of a rule.
func (r iptRule) dst() string {
	toks := tokens(r.spec)
	for i := 0; i+1 < len(toks); i++ {
		if toks[i] == "-d" || toks[i] == "--destination" {
			return toks[i+1]
		}
	}
	return ""
}

func fltIPTAdminJump(admin string) string {
	return fmt.Sprintf("-m comment --comment %q -j %s", fltIPTAdminNote, admin)
}

func fltIPTPlumbJump() string {
	return fmt.Sprintf("-m comment --comment %q -j %s", fltIPTJumpNote, fltIPTChain)
}

func fltIPTBridgeRule(bridge string) string { return "-i " + bridge + " -j DROP" }

// fltIPTOwnerSpecs are the rules of an owner's chain for one family's
// addresses, exactly as iptables -S prints them.
func fltIPTOwnerSpecs(r filterReq, addrs []masqAddr, compat bool) []string {
	var specs []string
	for _, a := range addrs {
		d := "-d " + a.hostCIDR()
		if !compat && r.isolates() {
			specs = append(specs, d+" ! -i "+r.bridge+" -j "+fltIPTBridges)
		}
		if !compat && r.policy == PolicyIsolated {
			specs = append(specs, d+" -i "+r.bridge+" -o "+r.bridge+" -j DROP")
		}
		specs = append(specs,
			d+" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
			d+" -m conntrack --ctstate DNAT -j ACCEPT",
			"-s "+a.hostCIDR()+" -j ACCEPT")
	}
	return specs
}

// fltIPTJumpSpecs are the PLUMB-FORWARD rules sending a's traffic, both
// ways, to chain.
func fltIPTJumpSpecs(a masqAddr, comment, chain string) []string {
	// comment is printable ASCII without quotes or backslashes
	// (validateOwner), so plain double quotes make it one token.
	return []string{
		fmt.Sprintf(`-d %s -m comment --comment "%s" -j %s`, a.hostCIDR(), comment, chain),
		fmt.Sprintf(`-s %s -m comment --comment "%s" -j %s`, a.hostCIDR(), comment, chain),
	}
}

// fltIPTAddLines is one family's ADD batch, given the table as it is.
func fltIPTAddLines(t iptTable, r filterReq, addrs []masqAddr, compat bool) []string {
	chain := fltIPTOwnerChain(r.owner)
	var l []string
	if !t.chains[fltIPTChain] {
		l = append(l, "-N "+fltIPTChain)
	}
	if !compat && !t.chains[r.admin] {
		l = append(l, "-N "+r.admin)
	}
	if !compat && r.bridge != "" {
		if !t.chains[fltIPTBridges] {
			l = append(l, "-N "+fltIPTBridges)
		}
		if t.index(fltIPTBridges, fltIPTBridgeRule(r.bridge)) == 0 {
			l = append(l, "-A "+fltIPTBridges+" "+fltIPTBridgeRule(r.bridge))
		}
	}
	// ":CHAIN - [0:0]" creates the owner chain or, in --noflush mode,
	// flushes it, so a repeated ADD rewrites it.
	l = append(l, ":"+chain+" - [0:0]")
	for _, s := range fltIPTOwnerSpecs(r, addrs, compat) {
		l = append(l, "-A "+chain+" "+s)
	}
	for _, old := range targeting(t.rules[fltIPTChain], map[string]bool{chain: true}) {
		l = append(l, "-D "+fltIPTChain+" "+old.spec)
	}
	// Rules for traffic to an address go on top (last to first, so they
	// end up in order), those for traffic from it at the bottom: every
	// destination's policy is applied before any source's accept ends
	// FORWARD.
	comment := ownerComment(r.owner, iptCommentMax)
	for i := len(addrs) - 1; i >= 0; i-- {
		l = append(l, "-I "+fltIPTChain+" 1 "+fltIPTJumpSpecs(addrs[i], comment, chain)[0])
	}
	for _, a := range addrs {
		l = append(l, "-A "+fltIPTChain+" "+fltIPTJumpSpecs(a, comment, chain)[1])
	}

	adminJump, plumbJump := fltIPTAdminJump(r.admin), fltIPTPlumbJump()
	admin, plumb := t.index("FORWARD", adminJump), t.index("FORWARD", plumbJump)
	switch {
	case compat:
		if plumb == 0 {
			l = append(l, "-I FORWARD 1 "+plumbJump)
		}
	case admin == 0 && plumb == 0:
		l = append(l, "-I FORWARD 1 "+plumbJump, "-I FORWARD 1 "+adminJump)
	case admin == 0:
		l = append(l, "-I FORWARD 1 "+adminJump)
	case plumb == 0:
		l = append(l, fmt.Sprintf("-I FORWARD %d %s", admin+1, plumbJump))
	case admin > plumb:
		// Someone moved them: the admin chain goes first again.
		l = append(l, "-D FORWARD "+adminJump, "-I FORWARD 1 "+adminJump)
	}
	return l
}

// fltIPTDelLines removes chains and the PLUMB-FORWARD rules jumping to them.
func fltIPTDelLines(t iptTable, chains []string) []string {
	doomed := map[string]bool{}
	var l []string
	for _, c := range chains {
		doomed[c] = true
		l = append(l, ":"+c+" - [0:0]")
	}
	for _, r := range targeting(t.rules[fltIPTChain], doomed) {
		l = append(l, "-D "+fltIPTChain+" "+r.spec)
	}
	for _, c := range chains {
		l = append(l, "-X "+c)
	}
	return l
}

// fltIPTCheck describes how one family's table differs from the request
// ("" when it does not).
func fltIPTCheck(t iptTable, r filterReq, addrs []masqAddr, compat bool) string {
	chain := fltIPTOwnerChain(r.owner)
	plumb := t.index("FORWARD", fltIPTPlumbJump())
	if plumb == 0 {
		return fmt.Sprintf("FORWARD does not jump to %s", fltIPTChain)
	}
	if !compat {
		if !t.chains[r.admin] {
			return "admin chain " + r.admin + " is missing"
		}
		admin := t.index("FORWARD", fltIPTAdminJump(r.admin))
		switch {
		case admin == 0:
			return "FORWARD does not jump to admin chain " + r.admin
		case admin > plumb:
			return fmt.Sprintf("FORWARD jumps to %s before admin chain %s", fltIPTChain, r.admin)
		}
		if r.bridge != "" && t.index(fltIPTBridges, fltIPTBridgeRule(r.bridge)) == 0 {
			return fmt.Sprintf("bridge %s is not in %s", r.bridge, fltIPTBridges)
		}
	}
	if !t.chains[chain] {
		return "chain " + chain + " is missing"
	}
	var specs []string
	for _, rule := range t.rules[chain] {
		specs = append(specs, rule.spec)
	}
	if d := diffRules(fltIPTOwnerSpecs(r, addrs, compat), specs); d != "" {
		return "chain " + chain + ": " + d
	}
	for _, a := range addrs {
		// Traffic to the address: the first rule decides.
		first := ""
		for _, rule := range t.rules[fltIPTChain] {
			if rule.dst() == a.hostCIDR() {
				first = rule.target
				break
			}
		}
		switch first {
		case chain:
		case "":
			return fmt.Sprintf("%s has no rule for traffic to %s", fltIPTChain, a.ip)
		default:
			return fmt.Sprintf("%s sends traffic to %s to %s first, not %s", fltIPTChain, a.ip, first, chain)
		}
		// Traffic from it: every owner's rule accepts; this one's must be
		// there.
		from := false
		for _, rule := range t.rules[fltIPTChain] {
			from = from || rule.src == a.hostCIDR() && rule.target == chain
		}
		if !from {
			return fmt.Sprintf("%s has no rule for traffic from %s to %s", fltIPTChain, a.ip, chain)
		}
	}
	return ""
}

// dumpFilter reads the family's filter table with one iptables -S.
func (f *iptFamily) dumpFilter(ctx context.Context) (iptTable, error) {
	out, err := f.run(ctx, "", f.cmd, "-w", "-t", "filter", "-S")
	if err != nil {
		return iptTable{}, err
	}
	return parseIPTTable(out), nil
}

// applyFilter runs lines as one iptables-restore --noflush batch on the
// filter table.
func (f *iptFamily) applyFilter(ctx context.Context, lines []string) error {
	if len(lines) == 0 {
		return nil
	}
	batch := "*filter\n" + strings.Join(lines, "\n") + "\nCOMMIT\n"
	err := f.restoreBatch(ctx, batch)
	return err
}

// need returns the families addrs use, failing if one has no tools.
func (x *IPTFilter) need(addrs []masqAddr) ([]*iptFamily, error) {
	return (&IPTMasq{fams: x.fams}).need(addrs)
}

func (x *IPTFilter) available() []*iptFamily {
	return (&IPTMasq{fams: x.fams}).available()
}

// AddFilter writes the owner's chain, its PLUMB-FORWARD rules and what is
// shared when missing. Per family: iptables -S and one iptables-restore. If
// a later family fails, the earlier ones are removed again.
func (x *IPTFilter) AddFilter(ctx context.Context, rule FilterRule) error {
	r, err := parseFilterRule(rule)
	if err != nil {
		return err
	}
	release, err := lockFile(ctx, x.LockPath)
	if err != nil {
		return fmt.Errorf("add firewall rules for %s: %w", r.owner.label(), err)
	}
	defer release()
	return x.addLocked(ctx, r)
}

func (x *IPTFilter) addLocked(ctx context.Context, r filterReq) error {
	fams, err := x.need(r.addrs)
	if err != nil {
		return err
	}
	split := byFamily(r.addrs)
	for i, f := range fams {
		err := func() error {
			t, err := f.dumpFilter(ctx)
			if err != nil {
				return err
			}
			return f.applyFilter(ctx, fltIPTAddLines(t, r, split[f.fam], x.compat))
		}()
		if err != nil {
			err = fmt.Errorf("add %s firewall rules for %s: %w", f.fam, r.owner.label(), err)
			for _, done := range fams[:i] {
				if uerr := done.delFilter(ctx, fltIPTOwnerChain(r.owner)); uerr != nil {
					err = errors.Join(err, fmt.Errorf("undo %s firewall rules for %s: %w", done.fam, r.owner.label(), uerr))
				}
			}
			return err
		}
	}
	return nil
}

// delFilter removes chain and the rules jumping to it. iptables refuses to
// jump to a missing chain, so when the chain is absent no rule refers to it.
func (f *iptFamily) delFilter(ctx context.Context, chain string) error {
	if !f.mayHold("filter", chain) {
		return nil
	}
	t, err := f.dumpFilter(ctx)
	if err != nil {
		if iptUnavailable(err) {
			return nil
		}
		return err
	}
	if !t.chains[chain] {
		return nil
	}
	return f.applyFilter(ctx, fltIPTDelLines(t, []string{chain}))
}

// DelFilter removes the owner's chain and the PLUMB-FORWARD rules jumping
// to it, in every family; the chain name finds them, so the address hint is
// only validated. Per family: iptables -S, and one iptables-restore when
// there is something to remove.
func (x *IPTFilter) DelFilter(ctx context.Context, owner Owner, ips []net.IP) error {
	if _, err := parseIPs(ips); err != nil {
		return err
	}
	release, err := lockFile(ctx, x.LockPath)
	if err != nil {
		return fmt.Errorf("delete firewall rules for %s: %w", owner.label(), err)
	}
	defer release()
	return x.delLocked(ctx, owner, x.available())
}

func (x *IPTFilter) delLocked(ctx context.Context, owner Owner, fams []*iptFamily) error {
	var errs []error
	for _, f := range fams {
		if err := f.delFilter(ctx, fltIPTOwnerChain(owner)); err != nil {
			errs = append(errs, fmt.Errorf("delete %s firewall rules for %s: %w", f.fam, owner.label(), err))
		}
	}
	return errors.Join(errs...)
}

// GCFilter removes every owner chain of network whose owner is not in keep,
// and the rules jumping to them. Per family: iptables -S and at most one
// iptables-restore.
func (x *IPTFilter) GCFilter(ctx context.Context, network string, keep []Owner) error {
	release, err := lockFile(ctx, x.LockPath)
	if err != nil {
		return fmt.Errorf("gc firewall rules of network %s: %w", network, err)
	}
	defer release()
	return x.gcLocked(ctx, network, keep, x.available())
}

func (x *IPTFilter) gcLocked(ctx context.Context, network string, keep []Owner, fams []*iptFamily) error {
	kept := map[string]bool{}
	for _, o := range inNetwork(network, keep) {
		kept[fltIPTOwnerChain(o)] = true
	}
	var errs []error
	for _, f := range fams {
		t, err := f.dumpFilter(ctx)
		if err != nil {
			if !iptUnavailable(err) {
				errs = append(errs, fmt.Errorf("gc %s firewall rules of network %s: %w", f.fam, network, err))
			}
			continue
		}
		doomed := map[string]bool{}
		for c := range t.chains {
			if strings.HasPrefix(c, fltIPTNetPrefix(network)) && !kept[c] {
				doomed[c] = true
			}
		}
		if len(doomed) == 0 {
			continue
		}
		if err := f.applyFilter(ctx, fltIPTDelLines(t, sortedKeys(doomed))); err != nil {
			errs = append(errs, fmt.Errorf("gc %s firewall rules of network %s: %w", f.fam, network, err))
		}
	}
	return errors.Join(errs...)
}

// CheckFilter compares, per family, the FORWARD jumps, the admin chain, the
// bridge's entry, the owner's chain and, for each address and direction,
// the first PLUMB-FORWARD rule matching it (the one that decides).
func (x *IPTFilter) CheckFilter(ctx context.Context, rule FilterRule) error {
	r, err := parseFilterRule(rule)
	if err != nil {
		return err
	}
	return x.check(ctx, r, nil)
}

// check compares the families addrs use; only restricts them when not nil.
func (x *IPTFilter) check(ctx context.Context, r filterReq, only map[family]bool) error {
	fams, err := x.need(r.addrs)
	if err != nil {
		return err
	}
	split := byFamily(r.addrs)
	for _, f := range fams {
		if only != nil && !only[f.fam] {
			continue
		}
		t, err := f.dumpFilter(ctx)
		if err != nil {
			return fmt.Errorf("check %s firewall rules for %s: %w", f.fam, r.owner.label(), err)
		}
		if d := fltIPTCheck(t, r, split[f.fam], x.compat); d != "" {
			return fmt.Errorf("check %s firewall rules for %s: %w: iptables filter table: %s", f.fam, r.owner.label(), ErrFilterMismatch, d)
		}
	}
	return nil
}

// Usable runs iptables -S on the IPv4 filter table.
func (x *IPTFilter) Usable(ctx context.Context) error {
	if x.fams[famV4] == nil {
		return fmt.Errorf("iptables backend: iptables or iptables-restore not found in PATH")
	}
	if _, err := x.fams[famV4].dumpFilter(ctx); err != nil {
		return fmt.Errorf("iptables backend: %w", err)
	}
	return nil
}
