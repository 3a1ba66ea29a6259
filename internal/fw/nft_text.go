package fw

import (
	"fmt"
	"net"
	"strings"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// nftRuleText renders the expressions plumb builds as nft-like text
// ("meta nfproto ipv4 ip saddr 10.88.0.2 ip daddr 10.88.0.0/24 return").
// The same function renders wanted rules and rules read back from the
// kernel, so CheckMasq compares text and reports differences readably; it
// looks only at fields that survive the round trip through the kernel.
func nftRuleText(exprs []expr.Any) string {
	var (
		words []string
		regs  = map[uint32]string{} // register -> what it holds
		masks = map[uint32][]byte{} // register -> mask applied to it
		proto string                // "ip" or "ip6" once nfproto is matched
		// loads since the last expression that used registers: the
		// fields of a concatenated lookup key ("meta l4proto . th dport").
		loads []string
	)
	load := func(reg uint32, what string) {
		regs[reg] = what
		delete(masks, reg)
		loads = append(loads, what)
	}
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Meta:
			if e.SourceRegister {
				words = append(words, metaText(e.Key)+" set "+regs[e.Register])
				loads = nil
				break
			}
			load(e.Register, metaText(e.Key))
		case *expr.Payload:
			load(e.DestRegister, payloadText(proto, e))
		case *expr.Fib:
			load(e.Register, fibText(e))
		case *expr.Bitwise:
			src := regs[e.SourceRegister]
			if strings.HasSuffix(src, "addr") {
				regs[e.DestRegister] = src
				masks[e.DestRegister] = e.Mask
			} else {
				// A mark or other integer: show the operation itself.
				regs[e.DestRegister] = fmt.Sprintf("%s & 0x%x ^ 0x%x", src, e.Mask, e.Xor)
				delete(masks, e.DestRegister)
			}
		case *expr.Cmp:
			loads = nil
			what, val := regs[e.Register], ""
			switch {
			case what == "meta nfproto" && len(e.Data) == 1 && e.Data[0] == unix.NFPROTO_IPV4:
				val, proto = "ipv4", "ip"
			case what == "meta nfproto" && len(e.Data) == 1 && e.Data[0] == unix.NFPROTO_IPV6:
				val, proto = "ipv6", "ip6"
			case strings.HasSuffix(what, "addr") && (len(e.Data) == 4 || len(e.Data) == 16):
				val = net.IP(e.Data).String()
				if m, ok := masks[e.Register]; ok && len(m) == len(e.Data) {
					ones, _ := net.IPMask(m).Size()
					val = fmt.Sprintf("%s/%d", val, ones)
				}
			case strings.HasSuffix(what, "ifname"):
				val = fmt.Sprintf("%q", strings.TrimRight(string(e.Data), "\x00"))
			case strings.HasPrefix(what, "fib ") && len(e.Data) == 4 && binaryutil.NativeEndian.Uint32(e.Data) == unix.RTN_LOCAL:
				val = "local"
			default:
				val = fmt.Sprintf("0x%x", e.Data)
			}
			words = append(words, what, cmpOpText(e.Op)+val)
		case *expr.Lookup:
			op := "@"
			if e.Invert {
				op = "!= @"
			}
			switch {
			case e.IsDestRegSet && e.DestRegister == 0:
				op = "vmap @"
			case e.IsDestRegSet:
				op = "map @"
			}
			key := regs[e.SourceRegister]
			if len(loads) > 1 {
				key = strings.Join(loads, " . ")
			}
			loads = nil
			words = append(words, key, op+e.SetName)
			if e.IsDestRegSet && e.DestRegister != 0 {
				words = append(words, fmt.Sprintf("=> reg %d", e.DestRegister))
			}
		case *expr.NAT:
			words = append(words, natText(e))
		case *expr.Verdict:
			words = append(words, verdictText(e.Kind, e.Chain))
		case *expr.Masq:
			w := "masquerade"
			if e.Random || e.FullyRandom || e.Persistent || e.ToPorts {
				w += fmt.Sprintf(" %+v", *e)
			}
			words = append(words, w)
		default:
			words = append(words, fmt.Sprintf("%T", e))
		}
	}
	return strings.Join(words, " ")
}

func payloadText(proto string, p *expr.Payload) string {
	if p.Base == expr.PayloadBaseNetworkHeader {
		switch {
		case proto == "ip" && p.Offset == ipv4SaddrOffset && p.Len == net.IPv4len:
			return "ip saddr"
		case proto == "ip" && p.Offset == ipv4DaddrOffset && p.Len == net.IPv4len:
			return "ip daddr"
		case proto == "ip6" && p.Offset == ipv6SaddrOffset && p.Len == net.IPv6len:
			return "ip6 saddr"
		case proto == "ip6" && p.Offset == ipv6DaddrOffset && p.Len == net.IPv6len:
			return "ip6 daddr"
		}
	}
	if p.Base == expr.PayloadBaseTransportHeader && p.Len == 2 {
		switch p.Offset {
		case 0:
			return "th sport"
		case 2:
			return "th dport"
		}
	}
	return fmt.Sprintf("payload(base %d, offset %d, len %d)", p.Base, p.Offset, p.Len)
}

// metaText names the meta keys plumb uses ("meta key<N>" for others).
func metaText(k expr.MetaKey) string {
	switch k {
	case expr.MetaKeyNFPROTO:
		return "meta nfproto"
	case expr.MetaKeyL4PROTO:
		return "meta l4proto"
	case expr.MetaKeyMARK:
		return "meta mark"
	case expr.MetaKeyIIFNAME:
		return "meta iifname"
	case expr.MetaKeyOIFNAME:
		return "meta oifname"
	}
	return fmt.Sprintf("meta key%d", k)
}

// fibText is "fib daddr type" and the like.
func fibText(f *expr.Fib) string {
	w := "fib"
	for _, flag := range []struct {
		on   bool
		name string
	}{{f.FlagSADDR, "saddr"}, {f.FlagDADDR, "daddr"}, {f.FlagMARK, "mark"}, {f.FlagIIF, "iif"}, {f.FlagOIF, "oif"}} {
		if flag.on {
			w += " " + flag.name
		}
	}
	switch {
	case f.ResultADDRTYPE:
		w += " type"
	case f.ResultOIF:
		w += " oif"
	case f.ResultOIFNAME:
		w += " oifname"
	}
	return w
}

// natText shows a NAT statement with the registers it reads (the registers a
// map lookup before it filled): "dnat ip addr reg 1 proto reg 9".
func natText(n *expr.NAT) string {
	w := "snat"
	if n.Type == expr.NATTypeDestNAT {
		w = "dnat"
	}
	switch n.Family {
	case unix.NFPROTO_IPV4:
		w += " ip"
	case unix.NFPROTO_IPV6:
		w += " ip6"
	}
	if n.RegAddrMin != 0 {
		w += fmt.Sprintf(" addr reg %d", n.RegAddrMin)
		if n.RegAddrMax != 0 && n.RegAddrMax != n.RegAddrMin {
			w += fmt.Sprintf("-%d", n.RegAddrMax)
		}
	}
	if n.RegProtoMin != 0 {
		w += fmt.Sprintf(" proto reg %d", n.RegProtoMin)
		if n.RegProtoMax != 0 && n.RegProtoMax != n.RegProtoMin {
			w += fmt.Sprintf("-%d", n.RegProtoMax)
		}
	}
	if n.Random || n.FullyRandom || n.Persistent {
		w += fmt.Sprintf(" random=%t fully-random=%t persistent=%t", n.Random, n.FullyRandom, n.Persistent)
	}
	return w
}

func cmpOpText(op expr.CmpOp) string {
	switch op {
	case expr.CmpOpEq:
		return ""
	case expr.CmpOpNeq:
		return "!= "
	}
	return fmt.Sprintf("op%d ", op)
}

func verdictText(k expr.VerdictKind, chain string) string {
	switch k {
	case expr.VerdictReturn:
		return "return"
	case expr.VerdictAccept:
		return "accept"
	case expr.VerdictDrop:
		return "drop"
	case expr.VerdictContinue:
		return "continue"
	case expr.VerdictJump:
		return "jump " + chain
	case expr.VerdictGoto:
		return "goto " + chain
	}
	return fmt.Sprintf("verdict %d %s", k, chain)
}
