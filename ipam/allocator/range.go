package allocator

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
)

// Range is one contiguous block of addresses inside a subnet. The JSON tags
// are the reference config's, so a config type can embed it.
type Range struct {
	Subnet     types.IPNet `json:"subnet"`
	RangeStart net.IP      `json:"rangeStart,omitempty"` // first address, inclusive
	RangeEnd   net.IP      `json:"rangeEnd,omitempty"`   // last address, inclusive
	Gateway    net.IP      `json:"gateway,omitempty"`
}

// Canonicalize fills defaults and validates, as the reference does: start
// defaults to network+1, end to the last usable address (IPv4: broadcast-1,
// IPv6: the last address), gateway to network+1. Unlike the reference it
// also rejects a gateway outside the subnet and a start after the end,
// which the reference accepts and then misbehaves on.
//
// Messages of checks the reference also makes keep its wording, so users
// see the same text after switching.
func (r *Range) Canonicalize() error {
	if err := canonicalizeIP(&r.Subnet.IP); err != nil {
		return err
	}
	subnet := (*net.IPNet)(&r.Subnet)
	ones, bits := r.Subnet.Mask.Size()
	if bits == 0 {
		return fmt.Errorf("network %s has an invalid mask", subnet)
	}
	// Network, broadcast and gateway leave nothing to hand out below /30
	// (or /126).
	if ones > bits-2 {
		return fmt.Errorf("Network %s too small to allocate from", subnet)
	}
	if len(r.Subnet.IP) != len(r.Subnet.Mask) {
		return errors.New("IPNet IP and Mask version mismatch")
	}
	network := r.Subnet.IP.Mask(r.Subnet.Mask)
	if !r.Subnet.IP.Equal(network) {
		return fmt.Errorf("Network has host bits set. For a subnet mask of length %d the network address is %s", ones, network)
	}

	if r.Gateway == nil {
		r.Gateway = nextIP(network)
	} else {
		if err := canonicalizeIP(&r.Gateway); err != nil {
			return err
		}
		if !r.inSubnet(r.Gateway) {
			return fmt.Errorf("gateway %s not in network %s", r.Gateway, subnet)
		}
	}

	if r.RangeStart == nil {
		r.RangeStart = nextIP(network)
	} else {
		if err := canonicalizeIP(&r.RangeStart); err != nil {
			return err
		}
		if !r.inSubnet(r.RangeStart) {
			return fmt.Errorf("RangeStart %s not in network %s", r.RangeStart, subnet)
		}
	}

	if r.RangeEnd == nil {
		r.RangeEnd = lastUsable(r.Subnet)
	} else {
		if err := canonicalizeIP(&r.RangeEnd); err != nil {
			return err
		}
		if !r.inSubnet(r.RangeEnd) {
			return fmt.Errorf("RangeEnd %s not in network %s", r.RangeEnd, subnet)
		}
	}

	if bytes.Compare(r.RangeStart, r.RangeEnd) > 0 {
		return fmt.Errorf("RangeStart %s is after RangeEnd %s in network %s", r.RangeStart, r.RangeEnd, subnet)
	}
	return nil
}

// inSubnet reports whether ip is in r's subnet and family.
func (r *Range) inSubnet(ip net.IP) bool {
	return (ip.To4() == nil) == (r.Subnet.IP.To4() == nil) && (*net.IPNet)(&r.Subnet).Contains(ip)
}

// Contains reports whether ip is in the subnet and between RangeStart and
// RangeEnd. Unset bounds are ignored so it works before Canonicalize.
func (r *Range) Contains(ip net.IP) bool {
	if canonicalizeIP(&ip) != nil {
		return false
	}
	if !r.inSubnet(ip) {
		return false
	}
	// Compare 16-byte forms: the bounds may not be canonical yet.
	if r.RangeStart != nil && bytes.Compare(ip.To16(), r.RangeStart.To16()) < 0 {
		return false
	}
	if r.RangeEnd != nil && bytes.Compare(ip.To16(), r.RangeEnd.To16()) > 0 {
		return false
	}
	return true
}

// Overlaps reports whether r and o share an address. Both must be
// canonical; ranges of different families never overlap.
func (r *Range) Overlaps(o *Range) bool {
	if len(r.RangeStart) != len(o.RangeStart) {
		return false
	}
	return r.Contains(o.RangeStart) || r.Contains(o.RangeEnd) ||
		o.Contains(r.RangeStart) || o.Contains(r.RangeEnd)
}

// String formats the range as "start-end", as the reference does.
func (r *Range) String() string {
	return fmt.Sprintf("%s-%s", r.RangeStart, r.RangeEnd)
}

// RangeSet is the ranges one address per attachment is drawn from; all of
// one family.
type RangeSet []Range

// Canonicalize canonicalizes every range and rejects an empty set, mixed
// families and overlapping ranges.
func (s *RangeSet) Canonicalize() error {
	if len(*s) == 0 {
		return errors.New("empty range set")
	}
	for i := range *s {
		if err := (*s)[i].Canonicalize(); err != nil {
			return err
		}
		if len((*s)[i].RangeStart) != len((*s)[0].RangeStart) {
			return errors.New("mixed address families")
		}
	}
	for i := range *s {
		for j := i + 1; j < len(*s); j++ {
			if (*s)[i].Overlaps(&(*s)[j]) {
				return fmt.Errorf("subnets %s and %s overlap", (*s)[i].String(), (*s)[j].String())
			}
		}
	}
	return nil
}

// Contains returns the range holding ip (pointing into s), if any.
func (s RangeSet) Contains(ip net.IP) (*Range, bool) {
	for i := range s {
		if s[i].Contains(ip) {
			return &s[i], true
		}
	}
	return nil, false
}

// Overlaps reports whether any range of s overlaps any range of o.
func (s RangeSet) Overlaps(o RangeSet) bool {
	for i := range s {
		for j := range o {
			if s[i].Overlaps(&o[j]) {
				return true
			}
		}
	}
	return false
}

// String formats the set as "start-end,start-end", as the reference does.
func (s RangeSet) String() string {
	parts := make([]string, len(s))
	for i := range s {
		parts[i] = s[i].String()
	}
	return strings.Join(parts, ",")
}

// canonicalizeIP rewrites ip to its 4-byte form for IPv4 and 16-byte form
// for IPv6, so lengths tell families apart and byte comparison orders.
func canonicalizeIP(ip *net.IP) error {
	if v4 := ip.To4(); v4 != nil {
		*ip = v4
		return nil
	}
	if len(*ip) == net.IPv6len {
		return nil
	}
	return fmt.Errorf("IP %s not v4 nor v6", *ip)
}

// toAddr converts a canonical net.IP; IPv4 becomes a plain (unmapped) Addr.
func toAddr(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

func nextIP(ip net.IP) net.IP {
	a, _ := toAddr(ip)
	return a.Next().AsSlice()
}

// lastUsable is the subnet's last address, less the broadcast for IPv4.
func lastUsable(subnet types.IPNet) net.IP {
	last := lastAddr(subnet)
	if len(last) == net.IPv4len {
		a, _ := toAddr(last)
		return a.Prev().AsSlice()
	}
	return last
}

// lastAddr is the subnet's all-ones host address (the IPv4 broadcast).
func lastAddr(subnet types.IPNet) net.IP {
	out := make(net.IP, len(subnet.IP))
	for i := range out {
		out[i] = subnet.IP[i] | ^subnet.Mask[i]
	}
	return out
}
