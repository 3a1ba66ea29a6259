package fw

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/reaper"
)

// iptables-nft keeps its rules in nf_tables, where plumb can read them
// through netlink in-process instead of starting `iptables -S` for each
// chain (2-4 ms each; a portmap ADD ran six). The view below only ever
// confirms: when it can show that plumb's shared objects are in place and
// the owner's chain is new, an ADD skips its listings and goes straight to
// its one iptables-restore. When it cannot (legacy iptables, a rule it
// does not recognise, anything missing), the caller takes the listing
// path, which checks precisely and repairs.

// iptNFTView reads one family's iptables-nft tables.
type iptNFTView struct {
	conn   *nftables.Conn // for dropChains' transaction, made on first use
	rd     *nftReader
	family nftables.TableFamily
}

// nftView returns a view when this family's iptables is the nf_tables
// variant and no legacy table of that name is loaded.
func (f *iptFamily) nftView(tables ...string) (*iptNFTView, bool) {
	if !iptablesIsNFT(f.cmd) {
		return nil, false
	}
	names, fam := "/proc/net/ip_tables_names", nftables.TableFamilyIPv4
	if f.fam == famV6 {
		names, fam = "/proc/net/ip6_tables_names", nftables.TableFamilyIPv6
	}
	if b, err := os.ReadFile(names); err == nil {
		for _, t := range strings.Fields(string(b)) {
			for _, want := range tables {
				if t == want {
					return nil, false // legacy x_tables in use: only iptables can tell
				}
			}
		}
	}
	rd, err := dialNFTReader()
	if err != nil {
		return nil, false
	}
	return &iptNFTView{rd: rd, family: fam}, true
}

// iptablesIsNFT reports whether the iptables binary at path is
// xtables-nft-multi (through the alternatives' symlinks).
func iptablesIsNFT(path string) bool {
	real, err := filepath.EvalSymlinks(path)
	return err == nil && strings.Contains(filepath.Base(real), "nft")
}

func (v *iptNFTView) close() {
	if reaper.Holding() {
		return
	}
	if v.conn != nil {
		v.conn.CloseLasting()
	}
	v.rd.Close()
}

// rules returns chain's rules (none for an absent chain); ok is false when
// they could not be read.
func (v *iptNFTView) rules(table, chain string) ([][]leanExpr, bool) {
	rs, err := leanRules(byte(v.family), table, chain)
	return rs, err == nil
}

// exists reports whether chain exists in table; a failed read counts as
// existing, the answer that makes the caller check precisely.
func (v *iptNFTView) exists(table, chain string) bool {
	ok, err := v.rd.chainExistsIn(byte(v.family), table, chain)
	return ok || err != nil
}

// jumpsTo reports whether some rule of chain jumps to target.
func (v *iptNFTView) jumpsTo(table, chain, target string) bool {
	rs, ok := v.rules(table, chain)
	if !ok {
		return false
	}
	for _, r := range rs {
		if jumpTarget(r) == target {
			return true
		}
	}
	return false
}

// jumpTarget is the chain r jumps to, "" if none.
func jumpTarget(r []leanExpr) string {
	for _, e := range r {
		if e.isVerdict && e.verdict == unix.NFT_JUMP {
			return e.chain
		}
	}
	return ""
}

// onlyJumps reports whether chain holds exactly one unconditional jump per
// target, in order.
func (v *iptNFTView) onlyJumps(table, chain string, targets ...string) bool {
	rs, ok := v.rules(table, chain)
	if !ok || len(rs) != len(targets) {
		return false
	}
	for i, r := range rs {
		for _, e := range r {
			if e.name != "counter" && !(e.name == "immediate" && e.isVerdict) {
				return false // a condition: not our rule
			}
		}
		if jumpTarget(r) != targets[i] {
			return false
		}
	}
	return true
}

// masqByMark reports whether chain masquerades packets whose mark has the
// bits of mark set (iptables' -m mark --mark M/M -j MASQUERADE).
func (v *iptNFTView) masqByMark(table, chain string, mark uint32) bool {
	rs, ok := v.rules(table, chain)
	if !ok {
		return false
	}
	m := binaryutil.NativeEndian.PutUint32(mark)
	for _, r := range rs {
		var masked, equal, masq bool
		for _, e := range r {
			switch e.name {
			case "bitwise":
				masked = masked || bytes.Equal(e.data, m)
			case "cmp":
				equal = equal || (e.cmpOp == unix.NFT_CMP_EQ && bytes.Equal(e.data, m))
			case "masq":
				masq = true
			case "target": // iptables-nft keeps -j MASQUERADE as an xtables target
				masq = masq || e.target == "MASQUERADE"
			}
		}
		if masked && equal && masq {
			return true
		}
	}
	return false
}

// loopbackGuard reports whether chain drops IPv4 packets to 127.0.0.0/8
// that did not come in on lo (iptPMGuard).
func (v *iptNFTView) loopbackGuard(table, chain string) bool {
	rs, ok := v.rules(table, chain)
	if !ok {
		return false
	}
	for _, r := range rs {
		var drop, notLo, loopNet bool
		for _, e := range r {
			switch e.name {
			case "immediate":
				drop = drop || (e.isVerdict && e.verdict == nfDrop)
			case "cmp":
				notLo = notLo || (e.cmpOp == unix.NFT_CMP_NEQ && bytes.HasPrefix(e.data, []byte("lo\x00")))
				// iptables-nft compares only the first byte for a /8.
				loopNet = loopNet || (e.cmpOp == unix.NFT_CMP_EQ && (bytes.Equal(e.data, []byte{127}) || bytes.Equal(e.data, []byte{127, 0, 0, 0})))
			}
		}
		if drop && notLo && loopNet {
			return true
		}
	}
	return false
}

// Chains the nat hooks are, as iptables-nft names them.
const (
	iptPrerouting  = "PREROUTING"
	iptOutput      = "OUTPUT"
	iptPostrouting = "POSTROUTING"
)

// pmBaseInPlace reports whether portmap's shared iptables objects for this
// family are all in place, mark's masquerade rule included (0: none
// needed), and chain (the owner's) does not exist yet.
func (v *iptNFTView) pmBaseInPlace(f family, chain string, mark uint32) bool {
	if v.exists("nat", chain) {
		return false // a re-ADD: the listing path finds the old jumps
	}
	if !v.onlyJumps("nat", iptPMEntry, iptPMHost, iptPMAny) || !v.exists("nat", iptPMHost) || !v.exists("nat", iptPMAny) {
		return false
	}
	if !v.jumpsTo("nat", iptPrerouting, iptPMEntry) || !v.jumpsTo("nat", iptOutput, iptPMEntry) {
		return false
	}
	if mark != 0 && !v.masqByMark("nat", iptPostrouting, mark) {
		return false
	}
	return f != famV4 || v.loopbackGuard("raw", iptPrerouting)
}

// masqBaseInPlace reports whether POSTROUTING jumps to PLUMB-MASQ and
// chain (the owner's) does not exist yet.
func (v *iptNFTView) masqBaseInPlace(chain string) bool {
	return !v.exists("nat", chain) && v.exists("nat", iptMasqChain) && v.jumpsTo("nat", iptPostrouting, iptMasqChain)
}

// dropChains deletes chains from table, with every rule of the dispatch
// chains that jumps to one of them, in one nf_tables transaction through
// the view's socket, and reports whether that was done (or nothing was
// there to do). Deleting by handle and name needs no knowledge of how
// iptables-nft encodes a rule, and it spares DEL an iptables-restore
// process, whose exit after a deletion waits for an RCU grace period in
// the kernel (see reaper.Holding): this socket can be handed to a reaper. On
// false nothing changed (the kernel refuses the whole transaction when,
// say, another rule still jumps to a chain), and the caller takes the
// iptables path.
func (v *iptNFTView) dropChains(table string, dispatch []string, chains ...string) bool {
	t := &nftables.Table{Name: table, Family: v.family}
	doomed := map[string]bool{}
	for _, c := range chains {
		if v.exists(table, c) {
			doomed[c] = true
		}
	}
	if len(doomed) == 0 {
		return true
	}
	// The library's connection, for the transaction only: reads go
	// through the reader, decoding no more than they need.
	if v.conn == nil {
		conn, err := nftables.New(nftables.AsLasting())
		if err != nil {
			return false
		}
		v.conn = conn
	}
	for _, d := range dispatch {
		// A dispatch chain holds a rule per container: only handles and
		// jump targets are decoded (see nftReader.jumps).
		js, err := v.rd.jumps(byte(v.family), table, d)
		if err != nil {
			return false
		}
		for _, j := range js {
			if doomed[j.target] {
				r := &nftables.Rule{Table: t, Chain: &nftables.Chain{Name: d, Table: t}, Handle: j.handle}
				if err := v.conn.DelRule(r); err != nil {
					return false
				}
			}
		}
	}
	for c := range doomed {
		ch := &nftables.Chain{Name: c, Table: t}
		v.conn.FlushChain(ch)
		v.conn.DelChain(ch)
	}
	return v.conn.Flush() == nil
}

// nfDrop is the drop verdict's code (NF_DROP in linux/netfilter.h).
const nfDrop = 0
