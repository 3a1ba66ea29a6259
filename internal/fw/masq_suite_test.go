package fw

import (
	"context"
	"errors"
	"fmt"
	"net"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
)

// One suite runs against every Masquerader: the fake (no root needed) and
// both kernel backends (root, in the throwaway namespace of TestMain). Each
// backend supplies a harness that reduces its state to a masqView, so the
// suite asserts the same behaviour on all three.

// masqView is a backend's state reduced to what the suite asserts on.
type masqView struct {
	// chains maps each owner chain present to its rules as the backend
	// prints them (both families, IPv4 first, for iptables).
	chains map[string][]string
	// jumps lists "ip -> chain" in match order (the first entry for an
	// address decides).
	jumps []string
}

// effective is the chain ip's traffic is sent to ("" if none).
func (v masqView) effective(ip string) string {
	for _, j := range v.jumps {
		if a, c, _ := strings.Cut(j, " -> "); a == ip {
			return c
		}
	}
	return ""
}

// jumpsTo lists the addresses with an entry sending them to chain.
func (v masqView) jumpsTo(chain string) []string {
	var out []string
	for _, j := range v.jumps {
		if a, c, _ := strings.Cut(j, " -> "); c == chain {
			out = append(out, a)
		}
	}
	sort.Strings(out)
	return out
}

type masqHarness struct {
	name string
	// fresh returns a backend over empty state (and skips if it cannot run).
	fresh func(t *testing.T) Masquerader
	view  func(t *testing.T) masqView
	// chainOf names an owner's chain.
	chainOf func(Owner) string
	// wantRules are the rules of rule's owner chain as view prints them.
	wantRules func(rule MasqRule) []string
	// base asserts the shared entry point exists exactly once.
	base func(t *testing.T)
	// dropJump deletes by hand the entry sending ip to chain; dropRule the
	// first rule of chain.
	dropJump func(t *testing.T, ip, chain string)
	dropRule func(t *testing.T, chain string)
}

func cidr(t testing.TB, s string) net.IPNet {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return *n
}

func masqRule(t testing.TB, o Owner, addrs ...string) MasqRule {
	r := MasqRule{Owner: o}
	for _, a := range addrs {
		r.Addrs = append(r.Addrs, cidr(t, a))
	}
	return r
}

func ips(addrs ...string) []net.IP {
	var out []net.IP
	for _, a := range addrs {
		out = append(out, net.ParseIP(a))
	}
	return out
}

var (
	ownerA = Owner{Network: "net1", ContainerID: "ctr-a", IfName: "eth0"}
	ownerB = Owner{Network: "net1", ContainerID: "ctr-b", IfName: "eth0"}
	ownerC = Owner{Network: "net2", ContainerID: "ctr-c", IfName: "eth0"}
)

func runMasqSuite(t *testing.T, h masqHarness) {
	ctx := context.Background()
	mustAdd := func(t *testing.T, m Masquerader, r MasqRule) {
		t.Helper()
		if err := m.AddMasq(ctx, r); err != nil {
			t.Fatalf("AddMasq(%s): %v", r.Owner.label(), err)
		}
	}
	mustDel := func(t *testing.T, m Masquerader, o Owner, addrs []net.IP) {
		t.Helper()
		if err := m.DelMasq(ctx, o, addrs); err != nil {
			t.Fatalf("DelMasq(%s, %v): %v", o.label(), addrs, err)
		}
	}
	mustCheck := func(t *testing.T, m Masquerader, r MasqRule) {
		t.Helper()
		if err := m.CheckMasq(ctx, r); err != nil {
			t.Fatalf("CheckMasq(%s): %v", r.Owner.label(), err)
		}
	}
	checkFails := func(t *testing.T, m Masquerader, r MasqRule, mention string) {
		t.Helper()
		err := m.CheckMasq(ctx, r)
		if !errors.Is(err, ErrMasqMismatch) {
			t.Fatalf("CheckMasq(%s) = %v, want ErrMasqMismatch", r.Owner.label(), err)
		}
		if !strings.Contains(err.Error(), mention) {
			t.Fatalf("CheckMasq(%s) = %v, want it to mention %q", r.Owner.label(), err, mention)
		}
	}
	// owns asserts the owner's chain holds rule's rules and each address
	// is sent to it first.
	owns := func(t *testing.T, v masqView, r MasqRule) {
		t.Helper()
		c := h.chainOf(r.Owner)
		if got, want := v.chains[c], h.wantRules(r); !reflect.DeepEqual(got, want) {
			t.Fatalf("chain %s of %s:\n got %q\nwant %q", c, r.Owner.label(), got, want)
		}
		for _, a := range r.Addrs {
			if got := v.effective(a.IP.String()); got != c {
				t.Fatalf("%s is sent to %q, want %q (jumps %q)", a.IP, got, c, v.jumps)
			}
		}
	}
	gone := func(t *testing.T, v masqView, o Owner) {
		t.Helper()
		c := h.chainOf(o)
		if _, ok := v.chains[c]; ok {
			t.Fatalf("chain %s of %s still exists", c, o.label())
		}
		if j := v.jumpsTo(c); len(j) != 0 {
			t.Fatalf("%v still sent to chain %s of %s", j, c, o.label())
		}
	}
	empty := func(t *testing.T, v masqView) {
		t.Helper()
		if len(v.chains) != 0 || len(v.jumps) != 0 {
			t.Fatalf("state not empty: chains %v jumps %q", v.chains, v.jumps)
		}
	}

	t.Run("layout", func(t *testing.T) {
		m := h.fresh(t)
		r := masqRule(t, ownerA, "10.88.0.2/24", "fd00:88::2/64")
		mustAdd(t, m, r)
		h.base(t)
		v := h.view(t)
		owns(t, v, r)
		if len(v.chains) != 1 || len(v.jumps) != 2 {
			t.Fatalf("want one chain and two entries, got chains %v jumps %q", v.chains, v.jumps)
		}
		mustCheck(t, m, r)
	})

	t.Run("add is idempotent", func(t *testing.T) {
		m := h.fresh(t)
		r := masqRule(t, ownerA, "10.88.0.2/24", "fd00:88::2/64")
		mustAdd(t, m, r)
		once := h.view(t)
		mustAdd(t, m, r)
		twice := h.view(t)
		if !reflect.DeepEqual(once, twice) {
			t.Fatalf("second ADD changed state:\nonce  %+v\ntwice %+v", once, twice)
		}
		h.base(t)
		mustCheck(t, m, r)
	})

	t.Run("re-add with other addresses leaves only the new ones", func(t *testing.T) {
		m := h.fresh(t)
		mustAdd(t, m, masqRule(t, ownerA, "10.88.0.2/24"))
		r := masqRule(t, ownerA, "10.88.0.3/24")
		mustAdd(t, m, r)
		mustCheck(t, m, r)
		v := h.view(t)
		owns(t, v, r)
		if got := v.effective("10.88.0.2"); got != "" {
			t.Fatalf("old address 10.88.0.2 still sent to %s", got)
		}
	})

	t.Run("ADD A, ADD B same IP, DEL A keeps B", func(t *testing.T) {
		m := h.fresh(t)
		ra := masqRule(t, ownerA, "10.88.0.2/24")
		rb := masqRule(t, ownerB, "10.88.0.2/24")
		mustAdd(t, m, ra)
		mustAdd(t, m, rb)
		owns(t, h.view(t), rb)
		mustCheck(t, m, rb)
		checkFails(t, m, ra, "10.88.0.2")

		mustDel(t, m, ownerA, ips("10.88.0.2"))
		v := h.view(t)
		gone(t, v, ownerA)
		owns(t, v, rb)
		mustCheck(t, m, rb)
		if len(v.chains) != 1 {
			t.Fatalf("want only B's chain, got %v", v.chains)
		}
		mustDel(t, m, ownerB, ips("10.88.0.2"))
		empty(t, h.view(t))
	})

	t.Run("reassigned address of a multi-address owner", func(t *testing.T) {
		m := h.fresh(t)
		ra := masqRule(t, ownerA, "10.88.0.2/24", "10.88.0.3/24")
		rb := masqRule(t, ownerB, "10.88.0.2/24")
		mustAdd(t, m, ra)
		mustAdd(t, m, rb)
		mustDel(t, m, ownerA, ips("10.88.0.2", "10.88.0.3"))
		v := h.view(t)
		gone(t, v, ownerA)
		owns(t, v, rb)
		if got := v.effective("10.88.0.3"); got != "" {
			t.Fatalf("10.88.0.3 still sent to %s", got)
		}
	})

	t.Run("DEL twice and DEL of an unknown owner", func(t *testing.T) {
		m := h.fresh(t)
		mustDel(t, m, ownerA, ips("10.88.0.2"))
		mustDel(t, m, ownerA, nil)
		empty(t, h.view(t))
		mustAdd(t, m, masqRule(t, ownerA, "10.88.0.2/24"))
		mustDel(t, m, ownerA, ips("10.88.0.2"))
		mustDel(t, m, ownerA, ips("10.88.0.2"))
		mustDel(t, m, ownerA, nil)
		empty(t, h.view(t))
	})

	t.Run("DEL without addresses", func(t *testing.T) {
		m := h.fresh(t)
		ra := masqRule(t, ownerA, "10.88.0.2/24", "fd00:88::2/64")
		rb := masqRule(t, ownerB, "10.88.0.5/24")
		mustAdd(t, m, ra)
		mustAdd(t, m, rb)
		mustDel(t, m, ownerA, nil)
		v := h.view(t)
		gone(t, v, ownerA)
		owns(t, v, rb)
	})

	t.Run("DEL with a partial hint removes everything of the owner", func(t *testing.T) {
		m := h.fresh(t)
		mustAdd(t, m, masqRule(t, ownerA, "10.88.0.2/24", "10.88.0.3/24", "fd00:88::2/64"))
		mustDel(t, m, ownerA, ips("10.88.0.2"))
		empty(t, h.view(t))
	})

	t.Run("check", func(t *testing.T) {
		m := h.fresh(t)
		r := masqRule(t, ownerA, "10.88.0.2/24", "fd00:88::2/64")
		checkFails(t, m, r, "missing")
		mustAdd(t, m, r)
		mustCheck(t, m, r)

		h.dropJump(t, "fd00:88::2", h.chainOf(ownerA))
		checkFails(t, m, r, "fd00:88::2")
		mustAdd(t, m, r) // ADD repairs
		mustCheck(t, m, r)

		h.dropRule(t, h.chainOf(ownerA))
		checkFails(t, m, r, "missing")
		mustAdd(t, m, r)
		mustCheck(t, m, r)

		// Same owner, different subnet: the chain's rules differ.
		checkFails(t, m, masqRule(t, ownerA, "10.88.0.2/16", "fd00:88::2/64"), "10.88.0.0/16")
		mustDel(t, m, ownerA, nil)
		checkFails(t, m, r, "missing")
	})

	t.Run("gc", func(t *testing.T) {
		m := h.fresh(t)
		ra := masqRule(t, ownerA, "10.88.0.2/24", "fd00:88::2/64")
		rb := masqRule(t, ownerB, "10.88.0.3/24", "fd00:88::3/64")
		rc := masqRule(t, ownerC, "10.99.0.2/24")
		for _, r := range []MasqRule{ra, rb, rc} {
			mustAdd(t, m, r)
		}
		if err := m.GCMasq(ctx, "net1", []Owner{ownerA}); err != nil {
			t.Fatalf("GCMasq: %v", err)
		}
		v := h.view(t)
		owns(t, v, ra)
		gone(t, v, ownerB)
		owns(t, v, rc)
		mustCheck(t, m, ra)
		mustCheck(t, m, rc)

		// Keep given without the network name still keeps.
		if err := m.GCMasq(ctx, "net1", []Owner{{ContainerID: ownerA.ContainerID, IfName: ownerA.IfName}}); err != nil {
			t.Fatalf("GCMasq: %v", err)
		}
		owns(t, h.view(t), ra)

		if err := m.GCMasq(ctx, "net1", nil); err != nil {
			t.Fatalf("GCMasq: %v", err)
		}
		v = h.view(t)
		gone(t, v, ownerA)
		owns(t, v, rc)
		if err := m.GCMasq(ctx, "net2", nil); err != nil {
			t.Fatalf("GCMasq: %v", err)
		}
		empty(t, h.view(t))
		if err := m.GCMasq(ctx, "net2", nil); err != nil {
			t.Fatalf("GCMasq of nothing: %v", err)
		}
	})

	t.Run("IPv6 only", func(t *testing.T) {
		m := h.fresh(t)
		r := masqRule(t, ownerA, "fd00:88::2/64")
		mustAdd(t, m, r)
		owns(t, h.view(t), r)
		mustCheck(t, m, r)
		mustDel(t, m, ownerA, ips("fd00:88::2"))
		empty(t, h.view(t))
	})

	t.Run("after DEL of all owners no owner chain remains", func(t *testing.T) {
		m := h.fresh(t)
		owners := []Owner{ownerA, ownerB, ownerC}
		for i, o := range owners {
			mustAdd(t, m, masqRule(t, o, fmt.Sprintf("10.88.0.%d/24", i+2), fmt.Sprintf("fd00:88::%d/64", i+2)))
		}
		for i, o := range owners {
			var hint []net.IP
			if i%2 == 0 {
				hint = ips(fmt.Sprintf("10.88.0.%d", i+2), fmt.Sprintf("fd00:88::%d", i+2))
			}
			mustDel(t, m, o, hint)
		}
		empty(t, h.view(t))
	})

	t.Run("concurrent ADDs create the base once", func(t *testing.T) {
		m := h.fresh(t)
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		rules := make([]MasqRule, n)
		for i := range n {
			rules[i] = masqRule(t, Owner{Network: "net1", ContainerID: fmt.Sprintf("ctr-%d", i), IfName: "eth0"},
				fmt.Sprintf("10.88.0.%d/24", i+2), fmt.Sprintf("fd00:88::%d/64", i+2))
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = m.AddMasq(ctx, rules[i])
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
		h.base(t)
		for _, r := range rules {
			mustCheck(t, m, r)
		}
	})

	t.Run("invalid requests change nothing", func(t *testing.T) {
		m := h.fresh(t)
		for name, r := range map[string]MasqRule{
			"no addresses":     {Owner: ownerA},
			"quote in ID":      masqRule(t, Owner{Network: "net1", ContainerID: `a"b`, IfName: "eth0"}, "10.88.0.2/24"),
			"newline in net":   masqRule(t, Owner{Network: "net\n1", ContainerID: "a", IfName: "eth0"}, "10.88.0.2/24"),
			"backslash in if":  masqRule(t, Owner{Network: "net1", ContainerID: "a", IfName: `e\0`}, "10.88.0.2/24"),
			"no container ID":  masqRule(t, Owner{Network: "net1", IfName: "eth0"}, "10.88.0.2/24"),
			"two subnets":      masqRule(t, ownerA, "10.88.0.2/24", "10.88.0.2/16"),
			"non-ASCII in net": masqRule(t, Owner{Network: "nét", ContainerID: "a", IfName: "eth0"}, "10.88.0.2/24"),
		} {
			if err := m.AddMasq(ctx, r); !errors.Is(err, ErrInvalidMasq) {
				t.Errorf("%s: AddMasq = %v, want ErrInvalidMasq", name, err)
			}
		}
		empty(t, h.view(t))
	})
}
