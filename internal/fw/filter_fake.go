package fw

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
)

// FakeFilter is an in-memory Filter for plugin unit tests, with the
// semantics of the kernel backends: one entry per owner holding its policy
// and addresses, per address one entry naming the owner that added it last,
// the admin chains and container bridges, which are created once and never
// removed. Calls are all-or-nothing. The zero value is ready to use.
type FakeFilter struct {
	// Err, when set, fails every call before it changes anything.
	Err error

	mu      sync.Mutex
	owners  map[string]filterReq // by owner hash
	addrs   map[string]string    // address -> owner hash
	admins  map[string]bool
	bridges map[string]bool
}

var _ Filter = (*FakeFilter)(nil)

func (f *FakeFilter) init() {
	if f.owners == nil {
		f.owners = map[string]filterReq{}
		f.addrs = map[string]string{}
		f.admins = map[string]bool{}
		f.bridges = map[string]bool{}
	}
}

// AddFilter records the owner's rule and points each address at it.
func (f *FakeFilter) AddFilter(ctx context.Context, rule FilterRule) error {
	r, err := parseFilterRule(rule)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	f.init()
	h := r.owner.Hash()
	f.drop(h)
	f.owners[h] = r
	for _, a := range r.addrs {
		f.addrs[a.ip.String()] = h
	}
	f.admins[r.admin] = true
	if r.bridge != "" {
		f.bridges[r.bridge] = true
	}
	return nil
}

// drop forgets owner h and the addresses still pointing at it.
func (f *FakeFilter) drop(h string) {
	delete(f.owners, h)
	for ip, o := range f.addrs {
		if o == h {
			delete(f.addrs, ip)
		}
	}
}

// DelFilter forgets the owner; an address since given to another owner
// stays with it. The hint changes nothing in the result.
func (f *FakeFilter) DelFilter(ctx context.Context, owner Owner, ips []net.IP) error {
	if _, err := parseIPs(ips); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	f.init()
	f.drop(owner.Hash())
	return nil
}

// CheckFilter reports the first difference between rule and the state.
func (f *FakeFilter) CheckFilter(ctx context.Context, rule FilterRule) error {
	r, err := parseFilterRule(rule)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	f.init()
	h := r.owner.Hash()
	mismatch := func(format string, args ...any) error {
		return fmt.Errorf("check firewall rules for %s: %w: %s", r.owner.label(), ErrFilterMismatch, fmt.Sprintf(format, args...))
	}
	switch got, ok := f.owners[h]; {
	case !f.admins[r.admin]:
		return mismatch("admin chain %s is missing", r.admin)
	case r.bridge != "" && !f.bridges[r.bridge]:
		return mismatch("bridge %s is not a container bridge", r.bridge)
	case !ok:
		return mismatch("the owner's rules are missing")
	case fakeFilterText(got) != fakeFilterText(r):
		return mismatch("rules are %q, want %q", fakeFilterText(got), fakeFilterText(r))
	}
	for _, a := range r.addrs {
		switch o, ok := f.addrs[a.ip.String()]; {
		case !ok:
			return mismatch("no entry for %s", a.ip)
		case o != h:
			return mismatch("%s points to %s", a.ip, f.owners[o].owner.label())
		}
	}
	return nil
}

// GCFilter forgets every owner of network not in keep.
func (f *FakeFilter) GCFilter(ctx context.Context, network string, keep []Owner) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	f.init()
	gcFake(f.owners, func(r filterReq) Owner { return r.owner }, network, keep, f.drop)
	return nil
}

// Usable returns Err.
func (f *FakeFilter) Usable(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.Err
}

// Dump is the state as sorted text:
//
//	admin CNI-ADMIN
//	bridge cni0
//	owner net1/c1/eth0: same-bridge on cni0, admin CNI-ADMIN: 10.88.0.2
//	addr 10.88.0.2 -> net1/c1/eth0
func (f *FakeFilter) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var lines []string
	for a := range f.admins {
		lines = append(lines, "admin "+a)
	}
	for b := range f.bridges {
		lines = append(lines, "bridge "+b)
	}
	sort.Strings(lines)
	var owners, addrs []string
	for _, r := range f.owners {
		owners = append(owners, fmt.Sprintf("owner %s: %s", r.owner.label(), fakeFilterText(r)))
	}
	for ip, h := range f.addrs {
		addrs = append(addrs, fmt.Sprintf("addr %s -> %s", ip, f.owners[h].owner.label()))
	}
	sort.Strings(owners)
	sort.Strings(addrs)
	lines = append(append(lines, owners...), addrs...)
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// fakeFilterText is "same-bridge on cni0, admin CNI-ADMIN: 10.88.0.2 fd00::2".
func fakeFilterText(r filterReq) string {
	s := string(r.policy)
	if r.bridge != "" {
		s += " on " + r.bridge
	}
	ips := make([]string, len(r.addrs))
	for i, a := range r.addrs {
		ips[i] = a.ip.String()
	}
	return s + ", admin " + r.admin + ": " + strings.Join(ips, " ")
}
