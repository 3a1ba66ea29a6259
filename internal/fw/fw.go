// Package fw owns every packet-filter rule plumb programs: the NAT and
// filter state behind one set of small interfaces, with an nftables
// implementation (netlink, one transaction per call), an iptables
// implementation (one iptables-restore batch per call) and a fake.
//
// Everything a backend creates carries its Owner so that two attachments
// never remove each other's rules, DEL works without prevResult, and GC can
// find what belongs to attachments the runtime no longer knows.
package fw

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net"
)

// Owner identifies one attachment.
type Owner struct {
	Network     string
	ContainerID string
	IfName      string
}

// NetHash is a short stable hash of the network name (8 hex digits).
func NetHash(network string) string {
	sum := sha256.Sum256([]byte(network))
	return hex.EncodeToString(sum[:4])
}

// Hash is a stable hash of the whole owner (16 hex digits), used in chain
// names and comments; its inputs are separated so no two owners collide by
// concatenation.
func (o Owner) Hash() string {
	sum := sha256.Sum256([]byte(o.Network + "\x00" + o.ContainerID + "\x00" + o.IfName))
	return hex.EncodeToString(sum[:8])
}

// MasqRule asks that traffic from each address to anything outside the
// address's own subnet, and outside multicast, leave with the host's address.
type MasqRule struct {
	Owner Owner
	// Addrs are the container's addresses with their subnet's prefix length.
	Addrs []net.IPNet
}

// Masquerader programs outbound NAT for containers.
type Masquerader interface {
	// AddMasq installs rule; idempotent. An address already masqueraded for
	// another owner now belongs to this one (the address was reassigned).
	AddMasq(ctx context.Context, rule MasqRule) error
	// DelMasq removes the owner's masquerade; addrs are a hint from
	// prevResult and may be nil, in which case the owner's state is found by
	// its hash. Removing what is absent is success.
	DelMasq(ctx context.Context, owner Owner, addrs []net.IP) error
	// CheckMasq reports the first difference between rule and the kernel.
	CheckMasq(ctx context.Context, rule MasqRule) error
	// GCMasq removes the masquerade of every owner of network not in keep.
	GCMasq(ctx context.Context, network string, keep []Owner) error
}
