package fw

import (
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// mayHoldChain returns the families that may hold the owner chain in their
// nat table. The chain appears only through its owner's ADD, so a DEL that
// finds it in no family (the usual case on a host using the other backend)
// is done, without the lock or any iptables process.
func mayHoldChain(fams []*iptFamily, chain string) []*iptFamily {
	var out []*iptFamily
	for _, f := range fams {
		if f.mayHold("nat", chain) {
			out = append(out, f)
		}
	}
	return out
}

// mayHold reports whether iptables of this family can hold chain in table,
// without running iptables: false only when nf_tables shows that
// iptables-nft has no such chain and no legacy (x_tables) table of that name
// is loaded. DEL of an attachment whose rules live in the other backend (or
// nowhere) then costs one netlink request instead of an iptables process
// per family.
func (f *iptFamily) mayHold(table, chain string) bool {
	names, proto := "/proc/net/ip_tables_names", byte(unix.NFPROTO_IPV4)
	if f.fam == famV6 {
		names, proto = "/proc/net/ip6_tables_names", byte(unix.NFPROTO_IPV6)
	}
	if b, err := os.ReadFile(names); err == nil {
		for _, t := range strings.Fields(string(b)) {
			if t == table {
				return true // legacy iptables is in use: only iptables can tell
			}
		}
	}
	rd, err := dialNFTReader()
	if err != nil {
		return true
	}
	defer rd.Close()
	ok, err := rd.chainExistsIn(proto, table, chain)
	return err != nil || ok
}
