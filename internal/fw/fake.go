package fw

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
)

// Fake is an in-memory Masquerader for plugin unit tests, with the
// semantics of the kernel backends: one chain per owner holding its
// addresses, and per address one entry naming the owner that added it last.
// Calls are all-or-nothing. The zero value is ready to use.
type Fake struct {
	// Err, when set, fails every call before it changes anything.
	Err error

	mu     sync.Mutex
	owners map[string]fakeOwner // by owner hash: the owner's "chain"
	addrs  map[string]string    // address -> owner hash: the "map element"
}

type fakeOwner struct {
	owner Owner
	addrs []masqAddr
}

var _ Masquerader = (*Fake)(nil)

// NewFake returns an empty Fake.
func NewFake() *Fake { return &Fake{} }

func (f *Fake) init() {
	if f.owners == nil {
		f.owners = map[string]fakeOwner{}
		f.addrs = map[string]string{}
	}
}

// AddMasq records the owner's addresses and points each at the owner.
func (f *Fake) AddMasq(ctx context.Context, rule MasqRule) error {
	addrs, err := parseMasqRule(rule)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	f.init()
	h := rule.Owner.Hash()
	// Addresses an earlier ADD gave this owner and this one does not are
	// dropped, as the kernel backends drop them.
	for ip, o := range f.addrs {
		if o == h {
			delete(f.addrs, ip)
		}
	}
	f.owners[h] = fakeOwner{owner: rule.Owner, addrs: addrs}
	for _, a := range addrs {
		f.addrs[a.ip.String()] = h
	}
	return nil
}

// DelMasq forgets the owner and the addresses still pointing at it; an
// address since given to another owner stays with it. The hint changes
// nothing in the result (the kernel backends use it only to go faster).
func (f *Fake) DelMasq(ctx context.Context, owner Owner, ips []net.IP) error {
	if _, err := parseIPs(ips); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	f.init()
	f.remove(owner.Hash())
	return nil
}

func (f *Fake) remove(h string) {
	delete(f.owners, h)
	for ip, o := range f.addrs {
		if o == h {
			delete(f.addrs, ip)
		}
	}
}

// CheckMasq reports the first difference between rule and the fake's state.
func (f *Fake) CheckMasq(ctx context.Context, rule MasqRule) error {
	addrs, err := parseMasqRule(rule)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	f.init()
	label, h := rule.Owner.label(), rule.Owner.Hash()
	mismatch := func(format string, args ...any) error {
		return fmt.Errorf("check masquerade for %s: %w: %s", label, ErrMasqMismatch, fmt.Sprintf(format, args...))
	}
	got, ok := f.owners[h]
	if !ok {
		return mismatch("the owner's chain is missing")
	}
	have := map[string]bool{}
	for _, a := range got.addrs {
		have[fakeAddrText(a)] = true
	}
	for _, a := range addrs {
		if !have[fakeAddrText(a)] {
			return mismatch("address %s (subnet %s) is missing from the chain", fakeAddrText(a), a.subnet)
		}
		delete(have, fakeAddrText(a))
	}
	if extra := sortedKeys(have); len(extra) > 0 {
		return mismatch("unexpected address %s in the chain", extra[0])
	}
	for _, a := range addrs {
		o, ok := f.addrs[a.ip.String()]
		switch {
		case !ok:
			return mismatch("no entry for %s", a.ip)
		case o != h:
			return mismatch("%s points to %s", a.ip, f.owners[o].owner.label())
		}
	}
	return nil
}

// GCMasq forgets every owner of network not in keep (matched by container
// ID and interface).
func (f *Fake) GCMasq(ctx context.Context, network string, keep []Owner) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	f.init()
	gcFake(f.owners, func(o fakeOwner) Owner { return o.owner }, network, keep, f.remove)
	return nil
}

// gcFake calls drop for every owner of network the fakes hold whose hash
// is not kept (matched by container ID and interface).
func gcFake[V any](owners map[string]V, ownerOf func(V) Owner, network string, keep []Owner, drop func(h string)) {
	kept := keepHashes(inNetwork(network, keep))
	for h, v := range owners {
		if ownerOf(v).Network == network && !kept[h] {
			drop(h)
		}
	}
}

// Dump is the state as sorted text, one line per owner then one per
// address:
//
//	owner net1/c1/eth0: 10.88.0.2/24
//	addr 10.88.0.2 -> net1/c1/eth0
func (f *Fake) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var owners, addrs []string
	for _, o := range f.owners {
		owners = append(owners, fmt.Sprintf("owner %s: %s\n", o.owner.label(), fakeAddrsText(o.addrs)))
	}
	for ip, h := range f.addrs {
		addrs = append(addrs, fmt.Sprintf("addr %s -> %s\n", ip, f.owners[h].owner.label()))
	}
	sort.Strings(owners)
	sort.Strings(addrs)
	return strings.Join(owners, "") + strings.Join(addrs, "")
}

// fakeAddrsText is "10.88.0.2/24 fd00::2/64", in the order given.
func fakeAddrsText(addrs []masqAddr) string {
	parts := make([]string, len(addrs))
	for i, a := range addrs {
		parts[i] = fakeAddrText(a)
	}
	return strings.Join(parts, " ")
}

// fakeAddrText is "10.88.0.2/24".
func fakeAddrText(a masqAddr) string {
	ones, _ := a.subnet.Mask.Size()
	return fmt.Sprintf("%s/%d", a.ip, ones)
}
