package fw

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
)

// What every Masquerader shares: validation of a request before anything is
// changed, the names owners' objects get, and the errors callers can test for.

var (
	// ErrInvalidMasq reports a request rejected before any change was made.
	ErrInvalidMasq = errors.New("invalid masquerade request")
	// ErrMasqMismatch reports, from CheckMasq, kernel state that differs
	// from the rule: something missing, extra, or owned by someone else.
	ErrMasqMismatch = errors.New("masquerade state differs")
	// ErrNoNFTables reports a kernel without nf_tables.
	ErrNoNFTables = errors.New("kernel lacks nf_tables")
)

// family is an address family of a masqueraded address.
type family int

const (
	famV4 family = iota
	famV6
)

var families = [...]family{famV4, famV6}

func (f family) String() string {
	if f == famV6 {
		return "IPv6"
	}
	return "IPv4"
}

// multicast is the family's multicast range, never masqueraded.
func (f family) multicast() *net.IPNet {
	if f == famV6 {
		return &net.IPNet{IP: net.ParseIP("ff00::"), Mask: net.CIDRMask(8, 128)}
	}
	return &net.IPNet{IP: net.IPv4(224, 0, 0, 0).To4(), Mask: net.CIDRMask(4, 32)}
}

// masqAddr is one validated container address: ip and subnet.IP are 4 bytes
// long for IPv4 and 16 for IPv6, subnet is masked.
type masqAddr struct {
	ip     net.IP
	subnet *net.IPNet
	fam    family
}

// hostCIDR is the address as a one-address prefix (10.88.0.2/32).
func (a masqAddr) hostCIDR() string {
	return fmt.Sprintf("%s/%d", a.ip, len(a.ip)*8)
}

// normalizeIP returns ip in its 4- or 16-byte form and its family.
func normalizeIP(ip net.IP) (net.IP, family, error) {
	if v4 := ip.To4(); v4 != nil {
		return v4, famV4, nil
	}
	if len(ip) == net.IPv6len {
		return ip, famV6, nil
	}
	return nil, 0, fmt.Errorf("%w: address %q is neither IPv4 nor IPv6", ErrInvalidMasq, ip.String())
}

// parseAddr validates one container address with its prefix length.
func parseAddr(n net.IPNet) (masqAddr, error) {
	ip, fam, err := normalizeIP(n.IP)
	if err != nil {
		return masqAddr{}, err
	}
	ones, bits := n.Mask.Size()
	if bits == 0 {
		return masqAddr{}, fmt.Errorf("%w: address %s has a non-contiguous or missing mask", ErrInvalidMasq, ip)
	}
	// An IPv4 address may come with a 16-byte mask (net.IPv4Mask in
	// 16-byte form); its prefix length then counts from bit 96.
	if fam == famV4 && bits == 8*net.IPv6len {
		ones -= 96
		if ones < 0 {
			return masqAddr{}, fmt.Errorf("%w: address %s has an invalid prefix length", ErrInvalidMasq, ip)
		}
		bits = 32
	}
	if bits != 8*len(ip) {
		return masqAddr{}, fmt.Errorf("%w: address %s has a /%d mask of the other family", ErrInvalidMasq, ip, ones)
	}
	mask := net.CIDRMask(ones, bits)
	return masqAddr{ip: ip, subnet: &net.IPNet{IP: ip.Mask(mask), Mask: mask}, fam: fam}, nil
}

// parseMasqRule validates everything AddMasq needs before it changes
// anything: the owner, and each address once.
func parseMasqRule(rule MasqRule) ([]masqAddr, error) {
	if err := validateOwner(rule.Owner); err != nil {
		return nil, err
	}
	if len(rule.Addrs) == 0 {
		return nil, fmt.Errorf("%w: no addresses for %s", ErrInvalidMasq, rule.Owner.label())
	}
	seen := map[string]*net.IPNet{}
	var addrs []masqAddr
	for _, n := range rule.Addrs {
		a, err := parseAddr(n)
		if err != nil {
			return nil, err
		}
		if prev, ok := seen[string(a.ip)]; ok {
			if prev.String() != a.subnet.String() {
				return nil, fmt.Errorf("%w: address %s given with two subnets %s and %s", ErrInvalidMasq, a.ip, prev, a.subnet)
			}
			continue
		}
		seen[string(a.ip)] = a.subnet
		addrs = append(addrs, a)
	}
	return addrs, nil
}

// parseIPs validates DelMasq's address hint.
func parseIPs(ips []net.IP) ([]masqAddr, error) {
	var addrs []masqAddr
	seen := map[string]bool{}
	for _, ip := range ips {
		v, fam, err := normalizeIP(ip)
		if err != nil {
			return nil, err
		}
		if !seen[string(v)] {
			seen[string(v)] = true
			addrs = append(addrs, masqAddr{ip: v, fam: fam})
		}
	}
	return addrs, nil
}

// byFamily splits addrs by family, keeping their order.
func byFamily(addrs []masqAddr) [2][]masqAddr {
	var out [2][]masqAddr
	for _, a := range addrs {
		out[a.fam] = append(out[a.fam], a)
	}
	return out
}

// label is the owner as network/containerID/ifname, for messages.
func (o Owner) label() string {
	return o.Network + "/" + o.ContainerID + "/" + o.IfName
}

// validateOwner rejects owners whose text could not go into a rule comment
// unquoted-safely. Names are validated upstream too; this does not rely on it.
func validateOwner(o Owner) error {
	if o.Network == "" || o.ContainerID == "" {
		return fmt.Errorf("%w: owner needs a network name and a container ID (got %q)", ErrInvalidMasq, o.label())
	}
	for _, f := range []struct{ what, v string }{
		{"network name", o.Network}, {"container ID", o.ContainerID}, {"interface name", o.IfName},
	} {
		if i := strings.IndexFunc(f.v, unsafeCommentRune); i >= 0 {
			return fmt.Errorf("%w: %s %q has character %q, which cannot go into a rule comment", ErrInvalidMasq, f.what, f.v, f.v[i])
		}
	}
	return nil
}

// unsafeCommentRune is true for what a comment must not carry: anything but
// printable ASCII, quotes of either kind and backslashes (iptables-restore
// and nft would read them as syntax).
func unsafeCommentRune(r rune) bool {
	return r < 0x20 || r > 0x7e || r == '"' || r == '\'' || r == '\\'
}

// ownerComment labels an owner's rules: "plumb <hash> <network> <id> <if>",
// cut to max bytes (the hash comes first so a cut never loses identity).
func ownerComment(o Owner, max int) string {
	c := fmt.Sprintf("plumb %s %s %s %s", o.Hash(), o.Network, o.ContainerID, o.IfName)
	if len(c) > max {
		c = c[:max]
	}
	return strings.TrimRight(c, " ")
}

// keepHashes is the set of owner hashes GC must keep.
func keepHashes(keep []Owner) map[string]bool {
	m := make(map[string]bool, len(keep))
	for _, o := range keep {
		m[o.Hash()] = true
	}
	return m
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
