package fw

import (
	"context"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"sync"
)

// FakePorts is an in-memory PortMapper for plugin unit tests, with the
// semantics of the kernel backends: per owner its mappings, per key the
// owners that publish it, newest last, the newest holding it. Calls are
// all-or-nothing. The zero value is ready to use.
type FakePorts struct {
	// Err, when set, fails every call before it changes anything.
	Err error
	// Unusable, when set, is what Usable returns.
	Unusable error

	mu     sync.Mutex
	owners map[string]fakePortOwner // by owner hash
	claims map[portKey][]string     // key -> owner hashes, newest last
}

type fakePortOwner struct {
	owner Owner
	plan  portPlan
}

var _ PortMapper = (*FakePorts)(nil)

// NewFakePorts returns an empty FakePorts.
func NewFakePorts() *FakePorts { return &FakePorts{} }

func (f *FakePorts) init() {
	if f.owners == nil {
		f.owners = map[string]fakePortOwner{}
		f.claims = map[portKey][]string{}
	}
}

// drop removes h's claim on k.
func (f *FakePorts) drop(k portKey, h string) {
	var rest []string
	for _, c := range f.claims[k] {
		if c != h {
			rest = append(rest, c)
		}
	}
	if len(rest) == 0 {
		delete(f.claims, k)
		return
	}
	f.claims[k] = rest
}

// AddPorts records the owner's mappings and makes it the newest claimant
// of each of its keys.
func (f *FakePorts) AddPorts(ctx context.Context, rule PortRule) error {
	p, err := parsePortRule(rule)
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
	if old, ok := f.owners[h]; ok {
		for _, m := range old.plan.maps {
			if !p.has(m.key) {
				f.drop(m.key, h)
			}
		}
	}
	f.owners[h] = fakePortOwner{owner: rule.Owner, plan: p}
	for _, m := range p.maps {
		f.drop(m.key, h)
		f.claims[m.key] = append(f.claims[m.key], h)
	}
	return nil
}

// DelPorts forgets the owner; its keys go to their previous claimants.
func (f *FakePorts) DelPorts(ctx context.Context, owner Owner) ([]PortMapping, error) {
	if err := reclassify(validateOwner(owner)); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return nil, f.Err
	}
	f.init()
	return f.remove(owner.Hash()), nil
}

func (f *FakePorts) remove(h string) []PortMapping {
	o, ok := f.owners[h]
	if !ok {
		return nil
	}
	delete(f.owners, h)
	for _, m := range o.plan.maps {
		f.drop(m.key, h)
	}
	return mappingsOf(o.plan.maps)
}

// CheckPorts reports the first difference between rule and the fake's state.
func (f *FakePorts) CheckPorts(ctx context.Context, rule PortRule) error {
	p, err := parsePortRule(rule)
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
	mismatch := func(format string, args ...any) error {
		return fmt.Errorf("check published ports of %s: %w: %s", rule.Owner.label(), ErrPortsMismatch, fmt.Sprintf(format, args...))
	}
	o, ok := f.owners[h]
	switch {
	case !ok && len(p.maps) == 0:
		return nil
	case !ok:
		return mismatch("the owner's mappings are missing")
	case !reflect.DeepEqual(o.plan, p):
		return mismatch("the owner's mappings are %s, want %s", fakePlanText(o.plan), fakePlanText(p))
	}
	for _, m := range p.maps {
		c := f.claims[m.key]
		if len(c) == 0 || c[len(c)-1] != h {
			holder := "nobody"
			if len(c) > 0 {
				holder = f.owners[c[len(c)-1]].owner.label()
			}
			return mismatch("%s is published by %s", m.key, holder)
		}
	}
	return nil
}

// GCPorts forgets every owner of network not in keep.
func (f *FakePorts) GCPorts(ctx context.Context, network string, keep []Owner) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return f.Err
	}
	f.init()
	gcFake(f.owners, func(o fakePortOwner) Owner { return o.owner }, network, keep, func(h string) { f.remove(h) })
	return nil
}

// Usable returns f.Unusable.
func (f *FakePorts) Usable(ctx context.Context) error { return f.Unusable }

// Dump is the state as sorted text, one line per owner, then one per key
// with its claimants, newest first:
//
//	owner net1/c1/eth0: snat mark 0x2000 | tcp 0.0.0.0:8080 -> 10.88.0.2:80
//	port tcp 0.0.0.0:8080 -> net1/c2/eth0 net1/c1/eth0
func (f *FakePorts) Dump() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var owners, ports []string
	for _, o := range f.owners {
		owners = append(owners, fmt.Sprintf("owner %s: %s\n", o.owner.label(), fakePlanText(o.plan)))
	}
	for k, hs := range f.claims {
		var names []string
		for i := len(hs) - 1; i >= 0; i-- {
			names = append(names, f.owners[hs[i]].owner.label())
		}
		ports = append(ports, fmt.Sprintf("port %s -> %s\n", k, strings.Join(names, " ")))
	}
	sort.Strings(owners)
	sort.Strings(ports)
	return strings.Join(owners, "") + strings.Join(ports, "")
}

// fakePlanText is "snat mark 0x2000 | tcp 0.0.0.0:8080 -> 10.88.0.2:80, ...".
func fakePlanText(p portPlan) string {
	var opts []string
	if p.snat {
		opts = append(opts, "snat")
	}
	if p.masqAll {
		opts = append(opts, "masqall")
	}
	opts = append(opts, fmt.Sprintf("mark %#x", p.mark))
	if p.extMark != "" {
		opts = append(opts, "setmark "+p.extMark)
	}
	for f, c := range p.conds {
		if len(c) > 0 {
			opts = append(opts, fmt.Sprintf("%s-conditions %q", family(f), strings.Join(c, " ")))
		}
	}
	var maps []string
	for _, m := range mappingsOf(p.maps) {
		maps = append(maps, m.String())
	}
	return strings.Join(opts, " ") + " | " + strings.Join(maps, ", ")
}
