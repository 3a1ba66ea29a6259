package fw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Port publishing: traffic a host receives on a (local address, protocol,
// port) is destination-NATed to a container address and port. What both
// kernel backends share is here: the request, its validation before anything
// is changed, and the rules about who owns a published port.
//
// A published port ("key": family, host address or any, protocol, port)
// answers for one owner at a time: the newest live claim. An ADD that
// publishes a key another owner holds takes it over; when the holder goes
// (DEL or GC), the key returns to the most recent earlier claimant that
// still exists and still publishes it, or is dropped. A mapping on a
// specific host address wins over one on every address of its family.

// PortMapping publishes one host port on one container address.
type PortMapping struct {
	Protocol string // "tcp", "udp" or "sctp"
	// HostIP restricts the mapping to one local address; nil (or the
	// unspecified address) means every local address of ContainerIP's family.
	HostIP        net.IP
	HostPort      uint16
	ContainerIP   net.IP
	ContainerPort uint16
}

// String is "tcp 0.0.0.0:8080 -> 10.88.0.2:80".
func (m PortMapping) String() string {
	host := m.HostIP
	if host == nil || host.IsUnspecified() {
		host = net.IPv4zero
		if m.ContainerIP.To4() == nil {
			host = net.IPv6unspecified
		}
	}
	return fmt.Sprintf("%s %s -> %s", m.Protocol,
		net.JoinHostPort(host.String(), strconv.Itoa(int(m.HostPort))),
		net.JoinHostPort(m.ContainerIP.String(), strconv.Itoa(int(m.ContainerPort))))
}

// PortRule is everything one attachment publishes.
type PortRule struct {
	Owner Owner
	// Addrs are the container's addresses with their subnet's prefix
	// length, at most one per family; every mapping's ContainerIP is one.
	Addrs    []net.IPNet
	Mappings []PortMapping
	// SNAT marks published traffic for masquerade when it comes from the
	// container's own subnet (hairpin, other containers on the bridge) or,
	// for IPv4, from a loopback address (a host process using 127.0.0.1);
	// MasqAll marks all of it.
	SNAT    bool
	MasqAll bool
	// MarkBit is the packet-mark bit (0..31) that asks for masquerade.
	MarkBit int
	// ExternalSetMarkChain, iptables only: jump to this chain to mark
	// instead of marking in plumb's own rules (and masquerade nothing).
	ExternalSetMarkChain string
	// ConditionsV4 and ConditionsV6, iptables only: extra iptables match
	// arguments every published port of the family must also meet.
	ConditionsV4, ConditionsV6 []string
}

// PortMapper publishes container ports on the host.
type PortMapper interface {
	// AddPorts installs the owner's mappings (replacing what an earlier ADD
	// of the owner installed); idempotent. A key another owner holds is
	// taken over.
	AddPorts(ctx context.Context, rule PortRule) error
	// DelPorts removes everything of the owner, found by the owner alone,
	// and returns the mappings it had. Removing what is absent is success.
	DelPorts(ctx context.Context, owner Owner) ([]PortMapping, error)
	// CheckPorts reports the first difference between rule and the kernel,
	// wrapping ErrPortsMismatch, including a key held by another owner.
	CheckPorts(ctx context.Context, rule PortRule) error
	// GCPorts removes the mappings of every owner of network not in keep
	// (matched by container ID and interface).
	GCPorts(ctx context.Context, network string, keep []Owner) error
	// Usable reports whether the backend can work on this host.
	Usable(ctx context.Context) error
}

var (
	// ErrInvalidPorts reports a request rejected before any change was made.
	ErrInvalidPorts = errors.New("invalid port mapping request")
	// ErrPortsMismatch reports, from CheckPorts, kernel state that differs
	// from the rule.
	ErrPortsMismatch = errors.New("port mapping state differs")
	// ErrPortsUnusable reports, from Usable, a backend this host cannot run.
	ErrPortsUnusable = errors.New("port mapping backend unusable")
)

// DefaultMarkMasqBit is the reference portmap's mark bit for "masquerade
// this": kube-proxy uses bits 14 and 15, Calico 20-31.
const DefaultMarkMasqBit = 13

// The transport protocols a port can be published for.
var portProtos = map[string]uint8{"tcp": unix.IPPROTO_TCP, "udp": unix.IPPROTO_UDP, "sctp": unix.IPPROTO_SCTP}

func protoName(p uint8) string {
	for name, n := range portProtos {
		if n == p {
			return name
		}
	}
	return "proto" + strconv.Itoa(int(p))
}

// loopback4 is 127.0.0.0/8: host processes that use it as source need
// masquerade, and packets from the network to it are never published.
var loopback4 = &net.IPNet{IP: net.IPv4(127, 0, 0, 0).To4(), Mask: net.CIDRMask(8, 32)}

// portKey is what the host receives: family, local address ("" for any),
// protocol and port. One owner holds a key at a time.
type portKey struct {
	fam   family
	host  string // the 4- or 16-byte address as a string; "" for any
	proto uint8
	port  uint16
}

func (k portKey) any() bool { return k.host == "" }

func (k portKey) hostIP() net.IP {
	if k.any() {
		return nil
	}
	return net.IP(k.host)
}

// String is "tcp 192.0.2.1:8080", or "tcp 0.0.0.0:8080" and "tcp [::]:8080"
// for every address.
func (k portKey) String() string {
	host := k.hostIP()
	if host == nil {
		host = net.IPv4zero
		if k.fam == famV6 {
			host = net.IPv6unspecified
		}
	}
	return protoName(k.proto) + " " + net.JoinHostPort(host.String(), strconv.Itoa(int(k.port)))
}

// portMap is one validated mapping: ctrIP has its family's length.
type portMap struct {
	key     portKey
	ctrIP   net.IP
	ctrPort uint16
}

// portPlan is a validated PortRule.
type portPlan struct {
	owner   Owner
	maps    []portMap // sorted: family, specific before any, protocol, port, address
	keys    map[portKey]bool
	subnets [2]*net.IPNet // of the families that have mappings
	snat    bool
	masqAll bool
	mark    uint32 // 1 << MarkBit
	extMark string
	conds   [2][]string
}

// has reports whether the plan publishes k.
func (p portPlan) has(k portKey) bool { return p.keys[k] }

// byFamily splits the plan's mappings by family, keeping their order.
func (p portPlan) byFamily() [2][]portMap {
	var out [2][]portMap
	for _, m := range p.maps {
		out[m.key.fam] = append(out[m.key.fam], m)
	}
	return out
}

// invalidPorts formats an ErrInvalidPorts.
func invalidPorts(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalidPorts, fmt.Sprintf(format, args...))
}

// reclassify turns an error of the shared validators (ErrInvalidMasq) into
// the port mapper's.
func reclassify(err error) error {
	if err == nil || !errors.Is(err, ErrInvalidMasq) {
		return err
	}
	return invalidPorts("%s", strings.TrimPrefix(err.Error(), ErrInvalidMasq.Error()+": "))
}

// portMapLess orders mappings as the backends lay them out.
func portMapLess(a, b portMap) bool {
	ka, kb := a.key, b.key
	switch {
	case ka.fam != kb.fam:
		return ka.fam < kb.fam
	case ka.any() != kb.any():
		return !ka.any()
	case ka.proto != kb.proto:
		return ka.proto < kb.proto
	case ka.port != kb.port:
		return ka.port < kb.port
	}
	return ka.host < kb.host
}

// parsePortRule validates everything a backend needs before it changes
// anything. Identical mappings collapse; the same key mapped to two
// targets is an error.
func parsePortRule(r PortRule) (portPlan, error) {
	p := portPlan{owner: r.Owner, snat: r.SNAT, masqAll: r.MasqAll, extMark: r.ExternalSetMarkChain,
		conds: [2][]string{r.ConditionsV4, r.ConditionsV6}}
	if err := reclassify(validateOwner(r.Owner)); err != nil {
		return portPlan{}, err
	}
	if r.MarkBit < 0 || r.MarkBit > 31 {
		return portPlan{}, invalidPorts("markMasqBit %d is not within 0..31", r.MarkBit)
	}
	p.mark = 1 << uint(r.MarkBit)
	if p.extMark != "" && !validChainName(p.extMark) {
		return portPlan{}, invalidPorts("externalSetMarkChain %q is not an iptables chain name", p.extMark)
	}
	for f, conds := range p.conds {
		for _, c := range conds {
			if c == "" || strings.ContainsAny(c, "\"\\\n\r\x00") {
				return portPlan{}, invalidPorts("%s condition %q: empty, or has a quote, backslash or line break", family(f), c)
			}
		}
	}
	var addrs [2]*masqAddr
	for _, n := range r.Addrs {
		a, err := parseAddr(n)
		if err != nil {
			return portPlan{}, reclassify(err)
		}
		if addrs[a.fam] != nil && !addrs[a.fam].ip.Equal(a.ip) {
			return portPlan{}, invalidPorts("two %s container addresses, %s and %s", a.fam, addrs[a.fam].ip, a.ip)
		}
		addrs[a.fam] = &a
	}
	seen := map[portKey]portMap{}
	p.keys = map[portKey]bool{}
	for _, m := range r.Mappings {
		pm, err := parseMapping(m)
		if err != nil {
			return portPlan{}, err
		}
		f := pm.key.fam
		switch {
		case addrs[f] == nil:
			return portPlan{}, invalidPorts("mapping %s: the container has no %s address", m, f)
		case !addrs[f].ip.Equal(pm.ctrIP):
			return portPlan{}, invalidPorts("mapping %s: %s is not the container's address %s", m, pm.ctrIP, addrs[f].ip)
		}
		p.subnets[f] = addrs[f].subnet
		if prev, ok := seen[pm.key]; ok {
			if prev.ctrPort != pm.ctrPort {
				return portPlan{}, invalidPorts("%s is mapped twice, to port %d and to port %d", pm.key, prev.ctrPort, pm.ctrPort)
			}
			continue
		}
		seen[pm.key] = pm
		p.keys[pm.key] = true
		p.maps = append(p.maps, pm)
	}
	sort.Slice(p.maps, func(i, j int) bool { return portMapLess(p.maps[i], p.maps[j]) })
	return p, nil
}

// parseMapping validates one mapping.
func parseMapping(m PortMapping) (portMap, error) {
	proto, ok := portProtos[m.Protocol]
	if !ok {
		return portMap{}, invalidPorts("protocol %q: want tcp, udp or sctp", m.Protocol)
	}
	if m.HostPort == 0 || m.ContainerPort == 0 {
		return portMap{}, invalidPorts("mapping %s: ports must be within 1..65535", m)
	}
	ctr, fam, err := normalizeIP(m.ContainerIP)
	if err != nil {
		return portMap{}, reclassify(err)
	}
	key := portKey{fam: fam, proto: proto, port: m.HostPort}
	if m.HostIP != nil && !m.HostIP.IsUnspecified() {
		host, hfam, err := normalizeIP(m.HostIP)
		if err != nil {
			return portMap{}, reclassify(err)
		}
		if hfam != fam {
			return portMap{}, invalidPorts("mapping %s: host and container addresses are of different families", m)
		}
		if host.IsMulticast() {
			return portMap{}, invalidPorts("mapping %s: host address is multicast", m)
		}
		key.host = string(host)
	} else if m.HostIP != nil {
		// 0.0.0.0 or ::, which names its family.
		if _, hfam, _ := normalizeIP(m.HostIP); hfam != fam {
			return portMap{}, invalidPorts("mapping %s: host and container addresses are of different families", m)
		}
	}
	return portMap{key: key, ctrIP: ctr, ctrPort: m.ContainerPort}, nil
}

// mapping is the API form of a validated mapping.
func (m portMap) mapping() PortMapping {
	return PortMapping{Protocol: protoName(m.key.proto), HostIP: m.key.hostIP(), HostPort: m.key.port,
		ContainerIP: m.ctrIP, ContainerPort: m.ctrPort}
}

// validChainName accepts what iptables takes as a user chain name and
// iptables-restore reads as one token.
func validChainName(s string) bool {
	return s != "" && len(s) <= 28 && !strings.HasPrefix(s, "-") &&
		!strings.ContainsAny(s, " \t!") && strings.IndexFunc(s, unsafeCommentRune) < 0
}

// mappingsOf lists what the API shows of maps.
func mappingsOf(maps []portMap) []PortMapping {
	out := make([]PortMapping, len(maps))
	for i, m := range maps {
		out[i] = m.mapping()
	}
	return out
}

// UDPPorts is the sorted set of UDP host ports among maps: the ports whose
// stale conntrack entries a caller flushes after a change.
func UDPPorts(maps []PortMapping) []uint16 {
	set := map[uint16]bool{}
	for _, m := range maps {
		if m.Protocol == "udp" {
			set[m.HostPort] = true
		}
	}
	out := make([]uint16, 0, len(set))
	for p := range set {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
