// Package allocator owns the choice of address: range and range-set
// validation, and round-robin allocation from a range set over a
// store.Store. It does no locking and no I/O of its own; the caller holds
// the store's lock around every call.
package allocator

import (
	"errors"
	"fmt"
	"iter"
	"net"
	"net/netip"
	"slices"
	"strconv"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/ipam/store"
)

// Errors of Get, wrapped with the address, owner and range set involved.
var (
	ErrExhausted        = errors.New("no IP addresses available")
	ErrRequestedTaken   = errors.New("address already reserved")
	ErrRequestedOutside = errors.New("address not allocatable from this range set")
	ErrAlreadyAllocated = errors.New("duplicate allocation is not allowed")
)

// Allocator hands out addresses of one range set.
type Allocator struct {
	set     RangeSet
	store   store.Store
	rangeID string // names the set's last-reserved-IP record
}

// New returns an allocator for set, which must have been canonicalized.
// rangeID is the set's index in the config; the store keys the last
// reserved address by it, as the reference does.
func New(set RangeSet, st store.Store, rangeID int) *Allocator {
	return &Allocator{set: set, store: st, rangeID: strconv.Itoa(rangeID)}
}

// Get reserves an address of the set for owner and returns it with the
// range's mask and gateway. With requested nil it takes the next free
// address after the set's last reserved one (round-robin, so a
// crash-looping container does not get the same address straight back);
// otherwise exactly requested, or fails.
func (a *Allocator) Get(owner store.Owner, requested net.IP) (*current.IPConfig, error) {
	p, err := a.plan()
	if err != nil {
		return nil, err
	}
	var want netip.Addr
	if requested != nil {
		if want, err = p.checkRequested(requested); err != nil {
			return nil, fmt.Errorf("requested IP address %s %w", requested, err)
		}
	}

	// One attachment holds one address per set. A second ADD of the same
	// attachment gets its address back (a runtime re-ADDs to repair rules
	// someone flushed); the reference refuses instead. A legacy record
	// (container ID only) could be any of the container's interfaces, so
	// it is still refused, as is asking for a different address.
	held, err := a.store.GetByOwner(owner)
	if err != nil {
		return nil, fmt.Errorf("look up addresses of %s: %w", owner, err)
	}
	for _, ip := range held {
		if _, ok := a.set.Contains(ip); !ok {
			continue
		}
		addr, _ := toAddr(ip)
		rec, _, err := a.store.OwnerOf(ip)
		if err != nil {
			return nil, fmt.Errorf("look up the holder of %s: %w", ip, err)
		}
		if rec.IfName == owner.IfName && (!want.IsValid() || want == addr) {
			return p.config(addr), nil
		}
		return nil, fmt.Errorf("%s has been allocated to %s from range set %s, %w", ip, owner, a.set, ErrAlreadyAllocated)
	}

	if want.IsValid() {
		ok, err := a.store.Reserve(owner, want.AsSlice(), a.rangeID)
		if err != nil {
			return nil, fmt.Errorf("reserve %s for %s: %w", want, owner, err)
		}
		if !ok {
			return nil, fmt.Errorf("requested IP address %s is not available in range set %s: %w", want, a.set, ErrRequestedTaken)
		}
		return p.config(want), nil
	}

	// The last reserved address is only a hint: if it cannot be read the
	// scan starts at the beginning, as the reference does.
	var after netip.Addr
	if last, err := a.store.LastReservedIP(a.rangeID); err == nil && last != nil {
		after, _ = toAddr(last)
	}
	for addr := range p.walk(after) {
		ok, err := a.store.Reserve(owner, addr.AsSlice(), a.rangeID)
		if err != nil {
			return nil, fmt.Errorf("reserve %s for %s: %w", addr, owner, err)
		}
		if ok {
			return p.config(addr), nil
		}
	}
	return nil, fmt.Errorf("%w in range set %s", ErrExhausted, a.set)
}

// HasFree reports whether Get without a requested address would succeed
// for an owner holding nothing in the set. It costs one List and stops at
// the first free address, so it is bounded by the number of reservations,
// not the size of the set.
func (a *Allocator) HasFree() (bool, error) {
	p, err := a.plan()
	if err != nil {
		return false, err
	}
	rs, err := a.store.List()
	if err != nil {
		return false, fmt.Errorf("list reservations for range set %s: %w", a.set, err)
	}
	taken := make(map[netip.Addr]struct{}, len(rs))
	for _, r := range rs {
		if addr, ok := toAddr(r.IP); ok {
			taken[addr] = struct{}{}
		}
	}
	for addr := range p.walk(netip.Addr{}) {
		if _, ok := taken[addr]; !ok {
			return true, nil
		}
	}
	return false, nil
}

// span is a Range in netip form, for cheap iteration.
type span struct {
	r          *Range
	start, end netip.Addr
}

// plan is the set prepared for one call.
type plan struct {
	set   RangeSet
	spans []span
	// never holds addresses no range may hand out: every range's gateway
	// (a gateway of one range may lie in another sharing its subnet),
	// network address and IPv4 broadcast. It has at most 3 per range, so a
	// linear scan beats a map.
	never []netip.Addr
}

// String names the set in messages.
func (p plan) String() string { return p.set.String() }

// plan converts the set; it fails only if the set was not canonicalized.
func (a *Allocator) plan() (plan, error) {
	p := plan{set: a.set}
	if len(a.set) == 0 {
		return p, errors.New("empty range set")
	}
	for i := range a.set {
		r := &a.set[i]
		start, ok1 := toAddr(r.RangeStart)
		end, ok2 := toAddr(r.RangeEnd)
		network, ok3 := toAddr(r.Subnet.IP)
		if !ok1 || !ok2 || !ok3 {
			return p, fmt.Errorf("range %s of set %s is not canonical", r, a.set)
		}
		p.spans = append(p.spans, span{r: r, start: start, end: end})
		p.never = append(p.never, network)
		if gw, ok := toAddr(r.Gateway); ok {
			p.never = append(p.never, gw)
		}
		if network.Is4() {
			bcast, _ := toAddr(lastAddr(r.Subnet))
			p.never = append(p.never, bcast)
		}
	}
	return p, nil
}

// checkRequested returns ip as an Addr if some range may hand it out; the
// error completes the sentence "requested IP address <ip> ...".
func (p plan) checkRequested(ip net.IP) (netip.Addr, error) {
	addr, ok := toAddr(ip)
	if !ok {
		return addr, fmt.Errorf("is not an IP address: %w", ErrRequestedOutside)
	}
	if p.find(addr) < 0 {
		return addr, fmt.Errorf("is not in range set %s: %w", p, ErrRequestedOutside)
	}
	if slices.Contains(p.never, addr) {
		return addr, fmt.Errorf("is a gateway, network or broadcast address of range set %s: %w", p, ErrRequestedOutside)
	}
	return addr, nil
}

// find returns the index of the span holding addr, or -1.
func (p plan) find(addr netip.Addr) int {
	for i, s := range p.spans {
		if addr.BitLen() == s.start.BitLen() && addr.Compare(s.start) >= 0 && addr.Compare(s.end) <= 0 {
			return i
		}
	}
	return -1
}

// config builds the result for addr, which must be in the set. Mask and
// gateway are copied so the caller cannot alias the config.
func (p plan) config(addr netip.Addr) *current.IPConfig {
	r := p.spans[p.find(addr)].r
	return &current.IPConfig{
		Address: net.IPNet{IP: addr.AsSlice(), Mask: slices.Clone(r.Subnet.Mask)},
		Gateway: slices.Clone(r.Gateway),
	}
}

// walk yields every address the set may hand out, once each, in
// round-robin order: from just after `after` to the end of its range, then
// the following ranges (wrapping to the first), then the start of after's
// range up to and including after itself. When after is not in the set it
// yields all ranges in order from the first.
func (p plan) walk(after netip.Addr) iter.Seq[netip.Addr] {
	return func(yield func(netip.Addr) bool) {
		n := len(p.spans)
		first := -1
		if after.IsValid() {
			first = p.find(after)
		}
		if first < 0 {
			for i := range p.spans {
				if !p.scan(p.spans[i].start, p.spans[i].end, yield) {
					return
				}
			}
			return
		}
		s := p.spans[first]
		if after != s.end && !p.scan(after.Next(), s.end, yield) {
			return
		}
		for k := 1; k < n; k++ {
			o := p.spans[(first+k)%n]
			if !p.scan(o.start, o.end, yield) {
				return
			}
		}
		p.scan(s.start, after, yield)
	}
}

// scan yields the allowed addresses from lo to hi inclusive; false means
// the consumer stopped.
func (p plan) scan(lo, hi netip.Addr, yield func(netip.Addr) bool) bool {
	for addr := lo; addr.IsValid() && addr.Compare(hi) <= 0; addr = addr.Next() {
		if !slices.Contains(p.never, addr) && !yield(addr) {
			return false
		}
		if addr == hi { // Next of the family's last address is invalid
			break
		}
	}
	return true
}
