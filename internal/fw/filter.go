package fw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
)

// What every Filter shares: the request, its validation before anything is
// changed, and the names of the objects it creates.
//
// A Filter accepts forwarded traffic of containers in the host's packet
// filter, so that containers work on hosts whose FORWARD policy drops (as
// Docker leaves it), and applies an ingress policy: "open" lets anything the
// rest of the host accepts reach the container; "same-bridge" drops traffic
// to the container that enters from another container bridge; "isolated"
// also drops traffic routed from the container's own bridge back into it
// (isolation between ports of one bridge is the bridge port's isolated flag,
// which the plugin sets: bridged frames never reach these hooks without
// br_netfilter).

// IngressPolicy says which forwarded traffic may reach a container.
type IngressPolicy string

// The ingress policies of the reference firewall plugin.
const (
	PolicyOpen       IngressPolicy = "open"
	PolicySameBridge IngressPolicy = "same-bridge"
	PolicyIsolated   IngressPolicy = "isolated"
)

// DefaultAdminChain is the chain, jumped to before plumb's own rules, where
// the administrator keeps rules of their own; plumb creates it when missing
// and never changes what is in it. The reference plugin uses the same name.
const DefaultAdminChain = "CNI-ADMIN"

// iptChainNameMax is the longest iptables chain name (XT_EXTENSION_MAXNAMELEN - 1).
const iptChainNameMax = 28

var (
	// ErrInvalidFilter reports a request rejected before any change was made.
	ErrInvalidFilter = errors.New("invalid filter request")
	// ErrFilterMismatch reports, from CheckFilter, kernel state that differs
	// from the rule: something missing, extra, or owned by someone else.
	ErrFilterMismatch = errors.New("firewall state differs")
)

// FilterRule is what one attachment asks of the firewall.
type FilterRule struct {
	Owner Owner
	// Addrs are the container's addresses.
	Addrs []net.IP
	// Policy is the ingress policy; "" means open.
	Policy IngressPolicy
	// Bridge is the bridge the container is attached to. It is required by
	// same-bridge and isolated, and whenever set it is recorded as a
	// container bridge, whose traffic same-bridge containers on other
	// bridges do not accept.
	Bridge string
	// AdminChain is the administrator's chain; DefaultAdminChain when "".
	AdminChain string
}

// Filter programs the forwarding rules of containers.
type Filter interface {
	// AddFilter installs rule; idempotent (a repeated ADD rewrites the
	// owner's rules). An address already filtered for another owner now
	// belongs to this one.
	AddFilter(ctx context.Context, rule FilterRule) error
	// DelFilter removes the owner's rules; addrs are a hint from prevResult
	// and may be nil, in which case the owner's rules are found by its
	// hash. Removing what is absent is success.
	DelFilter(ctx context.Context, owner Owner, addrs []net.IP) error
	// CheckFilter reports the first difference between rule and the kernel.
	CheckFilter(ctx context.Context, rule FilterRule) error
	// GCFilter removes the rules of every owner of network not in keep.
	GCFilter(ctx context.Context, network string, keep []Owner) error
	// Usable reports whether the backend can be used on this host.
	Usable(ctx context.Context) error
}

// filterReq is a validated FilterRule.
type filterReq struct {
	owner  Owner
	addrs  []masqAddr // subnet unset: only ip and fam are used
	policy IngressPolicy
	bridge string
	admin  string
}

// isolates reports whether the policy drops traffic from other bridges.
func (r filterReq) isolates() bool { return r.policy != PolicyOpen }

// parseFilterRule validates everything AddFilter and CheckFilter need.
func parseFilterRule(rule FilterRule) (filterReq, error) {
	if err := validateFilterOwner(rule.Owner); err != nil {
		return filterReq{}, err
	}
	r := filterReq{owner: rule.Owner, policy: rule.Policy, bridge: rule.Bridge, admin: rule.AdminChain}
	if r.policy == "" {
		r.policy = PolicyOpen
	}
	if r.admin == "" {
		r.admin = DefaultAdminChain
	}
	switch r.policy {
	case PolicyOpen, PolicySameBridge, PolicyIsolated:
	default:
		return filterReq{}, fmt.Errorf("%w: unknown ingress policy %q (want open, same-bridge or isolated)", ErrInvalidFilter, r.policy)
	}
	if r.isolates() && r.bridge == "" {
		return filterReq{}, fmt.Errorf("%w: ingress policy %s needs the container's bridge", ErrInvalidFilter, r.policy)
	}
	if r.bridge != "" {
		if err := validBridgeName(r.bridge); err != nil {
			return filterReq{}, err
		}
	}
	if err := ValidAdminChain(r.admin); err != nil {
		return filterReq{}, err
	}
	if len(rule.Addrs) == 0 {
		return filterReq{}, fmt.Errorf("%w: no addresses for %s", ErrInvalidFilter, rule.Owner.label())
	}
	addrs, err := parseIPs(rule.Addrs)
	if err != nil {
		return filterReq{}, fmt.Errorf("%w: %s", ErrInvalidFilter, strings.TrimPrefix(err.Error(), ErrInvalidMasq.Error()+": "))
	}
	r.addrs = addrs
	return r, nil
}

// validateFilterOwner is validateOwner reporting ErrInvalidFilter.
func validateFilterOwner(o Owner) error {
	if err := validateOwner(o); err != nil {
		return fmt.Errorf("%w: %s", ErrInvalidFilter, strings.TrimPrefix(err.Error(), ErrInvalidMasq.Error()+": "))
	}
	return nil
}

// validBridgeName applies the kernel's rules for interface names, and keeps
// out what iptables-restore would read as syntax.
func validBridgeName(name string) error {
	if name == "" || len(name) >= ifNameLen || name == "." || name == ".." ||
		strings.ContainsAny(name, "/: ") || strings.IndexFunc(name, unsafeCommentRune) >= 0 {
		return fmt.Errorf("%w: bridge %q is not an interface name", ErrInvalidFilter, name)
	}
	return nil
}

// ValidAdminChain checks an administrator chain name: one that both
// iptables and nftables accept and that is none of plumb's own or a
// built-in chain.
func ValidAdminChain(name string) error {
	bad := func(why string) error {
		return fmt.Errorf("%w: admin chain %q %s", ErrInvalidFilter, name, why)
	}
	switch {
	case name == "" || len(name) > iptChainNameMax:
		return bad(fmt.Sprintf("must be 1 to %d characters long", iptChainNameMax))
	case name[0] == '-' || name[0] == '!':
		return bad("must not start with - or !")
	case strings.HasPrefix(name, "PLUMB-") || strings.HasPrefix(name, fltIPTChainPrefix) ||
		strings.HasPrefix(name, fltNFTChainPrefix) || name == fltNFTBase:
		return bad("is a name plumb uses for its own chains")
	}
	switch name {
	case "INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING":
		return bad("is a built-in chain")
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return bad("may hold only letters, digits, '-', '_' and '.'")
		}
	}
	return nil
}
