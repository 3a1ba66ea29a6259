package fw

import (
	"fmt"
	"net"
	"strings"

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
	)
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Meta:
			if e.SourceRegister {
				words = append(words, fmt.Sprintf("meta set %d", e.Key))
				break
			}
			if e.Key == expr.MetaKeyNFPROTO {
				regs[e.Register] = "meta nfproto"
			} else {
				regs[e.Register] = fmt.Sprintf("meta key%d", e.Key)
			}
			delete(masks, e.Register)
		case *expr.Payload:
			regs[e.DestRegister] = payloadText(proto, e)
			delete(masks, e.DestRegister)
		case *expr.Bitwise:
			regs[e.DestRegister] = regs[e.SourceRegister]
			masks[e.DestRegister] = e.Mask
		case *expr.Cmp:
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
			default:
				val = fmt.Sprintf("0x%x", e.Data)
			}
			words = append(words, what, cmpOpText(e.Op)+val)
		case *expr.Lookup:
			op := "@"
			if e.Invert {
				op = "!= @"
			}
			if e.IsDestRegSet && e.DestRegister == 0 {
				op = "vmap @"
			}
			words = append(words, regs[e.SourceRegister], op+e.SetName)
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
	return fmt.Sprintf("payload(base %d, offset %d, len %d)", p.Base, p.Offset, p.Len)
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
