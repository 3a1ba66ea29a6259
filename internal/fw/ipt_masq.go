package fw

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/coreos/go-iptables/iptables"
)

// The iptables layout, in the nat table of iptables and ip6tables:
//
//	-A POSTROUTING -j PLUMB-MASQ                                  (once)
//	-A PLUMB-MASQ -s 10.88.0.2/32 -m comment --comment "plumb <owner hash> <network> <id> <if>" -j PLM-<net>-<owner>
//	-A PLM-<NetHash(network)>-<owner.Hash()[:10]> -s 10.88.0.2/32 -d 10.88.0.0/24 -j RETURN
//	-A PLM-... -d 224.0.0.0/4 -j RETURN
//	-A PLM-... -j MASQUERADE
//
// Each owner's PLUMB-MASQ rules jump to its own chain, so two owners'
// rules for one address are different rules and DEL A never deletes B's.
// ADD inserts at the top: the owner that added an address last is matched
// first. Every change is one iptables-restore --noflush batch per family,
// under an flock shared by all plumb processes.

const (
	iptMasqChain = "PLUMB-MASQ"
	// iptCommentMax is xt_comment's limit (256 bytes with the NUL).
	iptCommentMax = 255
	// iptOwnerHashLen hex digits of the owner hash fit the 28-character
	// limit on chain names: "PLM-" + 8 + "-" + 10 = 23.
	iptOwnerHashLen = 10
)

// iptNetPrefix starts the names of all owner chains of network.
func iptNetPrefix(network string) string { return "PLM-" + NetHash(network) + "-" }

// iptOwnerChain is the name of o's chain.
func iptOwnerChain(o Owner) string { return iptNetPrefix(o.Network) + o.Hash()[:iptOwnerHashLen] }

// IPTMasq is the iptables Masquerader.
type IPTMasq struct {
	// LockPath is the lock file; DefaultLockPath when empty.
	LockPath string
	fams     [2]*iptFamily // nil when the family's tools are missing
}

var _ Masquerader = (*IPTMasq)(nil)

// iptFamily holds one family's tools.
type iptFamily struct {
	fam          family
	cmd, restore string // iptables, iptables-restore (or the ip6 pair)
	warmMu       sync.Mutex
	warming      chan *restoreProc // see warm
	libOnce      sync.Once
	lib          *iptables.IPTables // for Check and GC, made on first use
	libErr       error
}

// NewIPTMasq finds iptables and iptables-restore (required) and their IPv6
// twins (optional: without them IPv6 requests fail and DEL/GC skip IPv6).
func NewIPTMasq() (*IPTMasq, error) {
	m := &IPTMasq{}
	for _, f := range families {
		prefix := "iptables"
		if f == famV6 {
			prefix = "ip6tables"
		}
		cmd, err1 := exec.LookPath(prefix)
		restore, err2 := exec.LookPath(prefix + "-restore")
		if err := errors.Join(err1, err2); err != nil {
			if f == famV4 {
				return nil, fmt.Errorf("iptables backend: %w", err)
			}
			continue
		}
		m.fams[f] = &iptFamily{fam: f, cmd: cmd, restore: restore}
	}
	return m, nil
}

// iptRule is one rule as iptables -S prints it.
type iptRule struct {
	spec   string // everything after "-A CHAIN "
	src    string // the -s value
	target string // the -j value
}

// parseRules reads iptables -S output for chain.
func parseRules(chain, out string) []iptRule {
	var rules []iptRule
	prefix := "-A " + chain + " "
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		r := iptRule{spec: strings.TrimPrefix(line, prefix)}
		toks := tokens(r.spec)
		for i := 0; i+1 < len(toks); i++ {
			switch toks[i] {
			case "-s", "--source":
				r.src = toks[i+1]
			case "-j", "--jump":
				r.target = toks[i+1]
			}
		}
		rules = append(rules, r)
	}
	return rules
}

// tokens splits a rule the way iptables-restore does: on spaces, with
// double-quoted strings (and backslash escapes in them) as one token.
func tokens(s string) []string {
	var (
		out    []string
		cur    strings.Builder
		quoted bool
		inTok  bool
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case c == '"':
			quoted, inTok = !quoted, true
		case c == ' ' && !quoted:
			if inTok {
				out = append(out, cur.String())
				cur.Reset()
				inTok = false
			}
		default:
			cur.WriteByte(c)
			inTok = true
		}
	}
	if inTok {
		out = append(out, cur.String())
	}
	return out
}

func targeting(rules []iptRule, chains map[string]bool) []iptRule {
	var out []iptRule
	for _, r := range rules {
		if chains[r.target] {
			out = append(out, r)
		}
	}
	return out
}

// iptOwnerSpecs are the rules of an owner's chain for one family's
// addresses, exactly as iptables -S prints them.
func iptOwnerSpecs(addrs []masqAddr) []string {
	if len(addrs) == 0 {
		return nil
	}
	var specs []string
	for _, a := range addrs {
		specs = append(specs, fmt.Sprintf("-s %s -d %s -j RETURN", a.hostCIDR(), a.subnet))
	}
	return append(specs, "-d "+addrs[0].fam.multicast().String()+" -j RETURN", "-j MASQUERADE")
}

// iptJumpSpec is the PLUMB-MASQ rule sending a's traffic to chain.
func iptJumpSpec(a masqAddr, comment, chain string) string {
	// comment is printable ASCII without quotes or backslashes
	// (validateOwner), so plain double quotes make it one token.
	return fmt.Sprintf(`-s %s -m comment --comment "%s" -j %s`, a.hostCIDR(), comment, chain)
}

// iptAddPlan is one family's ADD batch, as data.
type iptAddPlan struct {
	createMasqChain bool // PLUMB-MASQ does not exist yet
	addJump         bool // POSTROUTING does not jump to PLUMB-MASQ yet
	chain           string
	comment         string
	addrs           []masqAddr
	stale           []iptRule // PLUMB-MASQ rules that jump to chain now
}

// lines is the restore batch. ":CHAIN - [0:0]" creates the owner chain or,
// in --noflush mode, flushes it when it exists, so re-ADD rewrites it;
// PLUMB-MASQ, which holds every owner's rules, is made with -N, which fails
// the whole batch rather than flush it should it exist after all.
func (p iptAddPlan) lines() []string {
	l := []string{":" + p.chain + " - [0:0]"}
	if p.createMasqChain {
		l = append(l, "-N "+iptMasqChain)
	}
	if p.addJump {
		l = append(l, "-A POSTROUTING -j "+iptMasqChain)
	}
	for _, s := range iptOwnerSpecs(p.addrs) {
		l = append(l, "-A "+p.chain+" "+s)
	}
	for _, r := range p.stale {
		l = append(l, "-D "+iptMasqChain+" "+r.spec)
	}
	// Inserted last to first so they end up in address order, on top.
	for i := len(p.addrs) - 1; i >= 0; i-- {
		l = append(l, "-I "+iptMasqChain+" 1 "+iptJumpSpec(p.addrs[i], p.comment, p.chain))
	}
	return l
}

// iptDelLines removes the rules jumping to chains, then the chains.
func iptDelLines(chains []string, jumps []iptRule) []string {
	var l []string
	for _, c := range chains {
		l = append(l, ":"+c+" - [0:0]")
	}
	for _, r := range jumps {
		l = append(l, "-D "+iptMasqChain+" "+r.spec)
	}
	for _, c := range chains {
		l = append(l, "-X "+c)
	}
	return l
}

// iptError is a failed iptables command with what it printed.
type iptError struct {
	cmd    string
	code   int // exit status, -1 when it did not run to an exit
	stderr string
	err    error
}

func (e *iptError) Error() string {
	return fmt.Sprintf("%s: %v: %s", e.cmd, e.err, e.stderr)
}

func (e *iptError) Unwrap() error { return e.err }

// exitCode is err's iptables exit status, or -1.
func exitCode(err error) int {
	var ie *iptError
	if errors.As(err, &ie) {
		return ie.code
	}
	return -1
}

// iptUnavailable reports an error saying the family's nat table cannot be
// used at all (no kernel support): nothing of ours can be in it.
func iptUnavailable(err error) bool {
	if err == nil {
		return false
	}
	s := err.Error()
	for _, sub := range []string{"can't initialize", "Table does not exist", "Address family not supported", "Protocol not supported"} {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}

// iptListings counts the iptables processes that only read (the tests
// check that an ADD on a complete base starts none).
var iptListings atomic.Int64

// iptRestores counts the iptables-restore processes (the tests check that
// a DEL on iptables-nft starts none).
var iptRestores atomic.Int64

func (f *iptFamily) run(ctx context.Context, stdin string, name string, args ...string) (string, error) {
	switch name {
	case f.cmd:
		iptListings.Add(1)
	case f.restore:
		iptRestores.Add(1)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		code := -1
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		}
		return "", &iptError{cmd: name + " " + strings.Join(args, " "), code: code, stderr: strings.TrimSpace(stderr.String()), err: err}
	}
	return stdout.String(), nil
}

// listChain returns the rules of a nat chain; exists is false when
// iptables says it has no such chain (exit status 1).
func (f *iptFamily) listChain(ctx context.Context, chain string) (rules []iptRule, exists bool, err error) {
	out, err := f.run(ctx, "", f.cmd, "-w", "-t", "nat", "-S", chain)
	if err != nil {
		if exitCode(err) == 1 && !iptUnavailable(err) {
			return nil, false, nil
		}
		return nil, false, err
	}
	return parseRules(chain, out), true, nil
}

// hasJump reports whether POSTROUTING jumps to PLUMB-MASQ.
func (f *iptFamily) hasJump(ctx context.Context) (bool, error) {
	_, err := f.run(ctx, "", f.cmd, "-w", "-t", "nat", "-C", "POSTROUTING", "-j", iptMasqChain)
	if err != nil {
		if exitCode(err) == 1 {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// apply runs lines as one iptables-restore --noflush batch on the nat table.
func (f *iptFamily) apply(ctx context.Context, lines []string) error {
	batch := "*nat\n" + strings.Join(lines, "\n") + "\nCOMMIT\n"
	return f.restoreBatch(ctx, batch)
}

// library is go-iptables for this family, made (one exec) on first use.
func (f *iptFamily) library() (*iptables.IPTables, error) {
	f.libOnce.Do(func() {
		proto := iptables.ProtocolIPv4
		if f.fam == famV6 {
			proto = iptables.ProtocolIPv6
		}
		f.lib, f.libErr = iptables.New(iptables.IPFamily(proto), iptables.Path(f.cmd))
	})
	return f.lib, f.libErr
}

// need returns the families addrs use, failing if one has no tools.
func (m *IPTMasq) need(addrs []masqAddr) ([]*iptFamily, error) {
	var out []*iptFamily
	for f, fa := range byFamily(addrs) {
		if len(fa) == 0 {
			continue
		}
		if m.fams[f] == nil {
			return nil, fmt.Errorf("%s address %s: ip6tables or ip6tables-restore not found in PATH", family(f), fa[0].ip)
		}
		out = append(out, m.fams[f])
	}
	return out, nil
}

// available returns the families whose tools exist.
func (m *IPTMasq) available() []*iptFamily {
	var out []*iptFamily
	for _, f := range m.fams {
		if f != nil {
			out = append(out, f)
		}
	}
	return out
}

// AddMasq writes the owner's chain and its PLUMB-MASQ rules. Per family:
// iptables -S PLUMB-MASQ, iptables -C POSTROUTING -j PLUMB-MASQ, and one
// iptables-restore batch. If a later family fails, the earlier ones are
// removed again.
func (m *IPTMasq) AddMasq(ctx context.Context, rule MasqRule) error {
	addrs, err := parseMasqRule(rule)
	if err != nil {
		return err
	}
	fams, err := m.need(addrs)
	if err != nil {
		return err
	}
	label, chain := rule.Owner.label(), iptOwnerChain(rule.Owner)
	comment := ownerComment(rule.Owner, iptCommentMax)
	release, err := lockFile(ctx, m.LockPath)
	if err != nil {
		return fmt.Errorf("add masquerade for %s: %w", label, err)
	}
	defer release()

	split := byFamily(addrs)
	for i, f := range fams {
		if err := f.add(ctx, chain, comment, split[f.fam]); err != nil {
			err = fmt.Errorf("add %s masquerade for %s: %w", f.fam, label, err)
			for _, done := range fams[:i] {
				if uerr := done.del(ctx, chain); uerr != nil {
					err = errors.Join(err, fmt.Errorf("undo %s masquerade for %s: %w", done.fam, label, uerr))
				}
			}
			return err
		}
	}
	return nil
}

func (f *iptFamily) add(ctx context.Context, chain, comment string, addrs []masqAddr) error {
	// A new owner on a complete base: nothing to list (see iptNFTView).
	if v, ok := f.nftView("nat"); ok {
		inPlace := v.masqBaseInPlace(chain)
		v.close()
		if inPlace {
			return f.apply(ctx, iptAddPlan{chain: chain, comment: comment, addrs: addrs}.lines())
		}
	}
	rules, exists, err := f.listChain(ctx, iptMasqChain)
	if err != nil {
		return err
	}
	jump := true
	if exists {
		ok, err := f.hasJump(ctx)
		if err != nil {
			return err
		}
		jump = !ok
	}
	plan := iptAddPlan{
		createMasqChain: !exists, addJump: jump, chain: chain, comment: comment, addrs: addrs,
		// This owner's rules go whatever their address, so re-ADD with
		// other addresses leaves only the new ones.
		stale: targeting(rules, map[string]bool{chain: true}),
	}
	return f.apply(ctx, plan.lines())
}

// DelMasq removes the owner's chain and the PLUMB-MASQ rules jumping to
// it, in every family: the chain name finds them, so the address hint is
// only validated. Per family: iptables -S of the owner chain; when it
// exists, iptables -S PLUMB-MASQ and one iptables-restore batch.
func (m *IPTMasq) DelMasq(ctx context.Context, owner Owner, ips []net.IP) error {
	hint, err := parseIPs(ips)
	if err != nil {
		return err
	}
	label, chain := owner.label(), iptOwnerChain(owner)
	comment := ownerComment(owner, iptCommentMax)
	fams := mayHoldChain(m.available(), chain)
	if len(fams) == 0 {
		return nil
	}
	release, err := lockFile(ctx, m.LockPath)
	if err != nil {
		return fmt.Errorf("delete masquerade for %s: %w", label, err)
	}
	defer release()
	var errs []error
	split := byFamily(hint)
	for _, f := range fams {
		if f.delHinted(ctx, chain, comment, split[f.fam]) {
			continue
		}
		if err := f.del(ctx, chain); err != nil {
			errs = append(errs, fmt.Errorf("delete %s masquerade for %s: %w", f.fam, label, err))
		}
	}
	return errors.Join(errs...)
}

// delHinted removes chain and the jumps of the hinted addresses without
// listing anything, and reports whether that was all there was to do: on
// iptables-nft the chain and its jumps are dropped through netlink (or were
// not there), or else one restore deleted the jumps the hint implies and
// the chain with them. iptables-restore applies
// all or nothing, so when the hint is incomplete (the chain is still
// referenced) or wrong, nothing changed and the caller lists.
func (f *iptFamily) delHinted(ctx context.Context, chain, comment string, hint []masqAddr) bool {
	v, ok := f.nftView("nat")
	if !ok {
		return false
	}
	dropped := v.dropChains("nat", []string{iptMasqChain}, chain)
	v.close()
	if dropped {
		return true
	}
	if len(hint) == 0 {
		return false
	}
	var jumps []iptRule
	for _, a := range hint {
		jumps = append(jumps, iptRule{spec: iptJumpSpec(a, comment, chain)})
	}
	return f.apply(ctx, iptDelLines([]string{chain}, jumps)) == nil
}

// del removes chain and the rules jumping to it. iptables refuses to jump
// to a missing chain, so when the chain is absent no rule refers to it and
// there is nothing to do; the same holds for a family whose nat table
// cannot be used at all.
func (f *iptFamily) del(ctx context.Context, chain string) error {
	if !f.mayHold("nat", chain) {
		return nil
	}
	_, exists, err := f.listChain(ctx, chain)
	if err != nil {
		if iptUnavailable(err) {
			return nil
		}
		return err
	}
	if !exists {
		return nil
	}
	rules, _, err := f.listChain(ctx, iptMasqChain)
	if err != nil {
		return err
	}
	return f.apply(ctx, iptDelLines([]string{chain}, targeting(rules, map[string]bool{chain: true})))
}

// GCMasq removes every owner chain of network whose owner is not in keep,
// and the rules jumping to them. Per family: go-iptables lists the nat
// chains, iptables -S PLUMB-MASQ, one iptables-restore batch.
func (m *IPTMasq) GCMasq(ctx context.Context, network string, keep []Owner) error {
	release, err := lockFile(ctx, m.LockPath)
	if err != nil {
		return fmt.Errorf("gc masquerade of network %s: %w", network, err)
	}
	defer release()
	kept := map[string]bool{}
	for _, o := range inNetwork(network, keep) {
		kept[iptOwnerChain(o)] = true
	}
	var errs []error
	for _, f := range m.available() {
		if err := f.gc(ctx, iptNetPrefix(network), kept); err != nil {
			errs = append(errs, fmt.Errorf("gc %s masquerade of network %s: %w", f.fam, network, err))
		}
	}
	return errors.Join(errs...)
}

// staleChains lists, sorted, the nat chains named with prefix that are not
// kept: the owner chains GC removes. None when the table cannot be used.
func (f *iptFamily) staleChains(prefix string, kept map[string]bool) ([]string, error) {
	lib, err := f.library()
	if err != nil {
		return nil, err
	}
	chains, err := lib.ListChains("nat")
	if err != nil {
		if iptUnavailable(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("list nat chains: %w", err)
	}
	var stale []string
	for _, c := range chains {
		if strings.HasPrefix(c, prefix) && !kept[c] {
			stale = append(stale, c)
		}
	}
	sort.Strings(stale)
	return stale, nil
}

func (f *iptFamily) gc(ctx context.Context, prefix string, kept map[string]bool) error {
	stale, err := f.staleChains(prefix, kept)
	if err != nil || len(stale) == 0 {
		return err
	}
	doomed := map[string]bool{}
	for _, c := range stale {
		doomed[c] = true
	}
	rules, _, err := f.listChain(ctx, iptMasqChain)
	if err != nil {
		return err
	}
	return f.apply(ctx, iptDelLines(sortedKeys(doomed), targeting(rules, doomed)))
}

// CheckMasq compares, per family, the POSTROUTING jump, the owner's chain
// and, for each address, the first PLUMB-MASQ rule matching it (the one
// that decides) with the design.
func (m *IPTMasq) CheckMasq(ctx context.Context, rule MasqRule) error {
	addrs, err := parseMasqRule(rule)
	if err != nil {
		return err
	}
	fams, err := m.need(addrs)
	if err != nil {
		return err
	}
	label, chain := rule.Owner.label(), iptOwnerChain(rule.Owner)
	split := byFamily(addrs)
	for _, f := range fams {
		diff, err := f.check(ctx, chain, split[f.fam])
		if err != nil {
			return fmt.Errorf("check %s masquerade for %s: %w", f.fam, label, err)
		}
		if diff != "" {
			return fmt.Errorf("check %s masquerade for %s: %w: %s", f.fam, label, ErrMasqMismatch, diff)
		}
	}
	return nil
}

func (f *iptFamily) check(ctx context.Context, chain string, addrs []masqAddr) (string, error) {
	masq, exists, err := f.listChain(ctx, iptMasqChain)
	if err != nil {
		return "", err
	}
	if !exists {
		return "nat chain " + iptMasqChain + " is missing", nil
	}
	lib, err := f.library()
	if err != nil {
		return "", err
	}
	ok, err := lib.Exists("nat", "POSTROUTING", "-j", iptMasqChain)
	if err != nil {
		return "", err
	}
	if !ok {
		return "nat POSTROUTING: rule \"-j " + iptMasqChain + "\" is missing", nil
	}
	got, exists, err := f.listChain(ctx, chain)
	if err != nil {
		return "", err
	}
	if !exists {
		return "nat chain " + chain + " is missing", nil
	}
	var specs []string
	for _, r := range got {
		specs = append(specs, r.spec)
	}
	if d := diffRules(iptOwnerSpecs(addrs), specs); d != "" {
		return "chain " + chain + ": " + d, nil
	}
	for _, a := range addrs {
		first := ""
		for _, r := range masq {
			if r.src == a.hostCIDR() {
				first = r.target
				break
			}
		}
		switch first {
		case chain:
		case "":
			return fmt.Sprintf("%s has no rule for %s", iptMasqChain, a.ip), nil
		default:
			return fmt.Sprintf("%s sends %s to %s first, not %s", iptMasqChain, a.ip, first, chain), nil
		}
	}
	return "", nil
}
