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

// One suite runs against every PortMapper: the fake (no root needed) and
// both kernel backends (root, in the throwaway namespace of TestMain). Each
// backend supplies a harness that reduces its state to a pmView.

// pmView is a backend's state reduced to what the suite asserts on.
type pmView struct {
	// owners maps each owner chain present to its mappings, sorted
	// ("tcp 0.0.0.0:8080 -> 10.88.0.2:80").
	owners map[string][]string
	// holders maps each published key ("tcp 0.0.0.0:8080") to the chain
	// that receives its traffic.
	holders map[string]string
}

type pmHarness struct {
	name    string
	fresh   func(t *testing.T) PortMapper
	view    func(t *testing.T) pmView
	chainOf func(Owner) string
	// base asserts the shared objects exist exactly once.
	base func(t *testing.T)
	// dropKey deletes by hand what sends key to o's chain; flushOwner
	// empties o's chain(s).
	dropKey    func(t *testing.T, key string, o Owner)
	flushOwner func(t *testing.T, o Owner)
}

// pmRule builds a rule for o: the container has addrs ("10.88.0.2/24"),
// maps are "proto [hostIP]:hostPort:containerPort" (the container address
// of the family is filled in).
func pmRule(t testing.TB, o Owner, addrs []string, maps ...string) PortRule {
	t.Helper()
	r := PortRule{Owner: o, SNAT: true, MarkBit: DefaultMarkMasqBit}
	var ctr [2]net.IP
	for _, a := range addrs {
		n := cidr(t, a)
		r.Addrs = append(r.Addrs, n)
		f := famV4
		if n.IP.To4() == nil {
			f = famV6
		}
		ctr[f] = n.IP
	}
	for _, m := range maps {
		r.Mappings = append(r.Mappings, pmMapping(t, ctr, m))
	}
	return r
}

// pmMapping parses "tcp 8080:80", "udp 192.0.2.1:53:5353", "tcp [2001:db8::1]:80:80",
// "tcp6 8080:80" (every IPv6 address).
func pmMapping(t testing.TB, ctr [2]net.IP, s string) PortMapping {
	t.Helper()
	proto, rest, _ := strings.Cut(s, " ")
	f := famV4
	if p, ok := strings.CutSuffix(proto, "6"); ok {
		proto, f = p, famV6
	}
	var m PortMapping
	m.Protocol = proto
	i := strings.LastIndex(rest, ":")
	var cport, hport int
	fmt.Sscan(rest[i+1:], &cport)
	rest = rest[:i]
	if j := strings.LastIndex(rest, ":"); j >= 0 && !strings.HasSuffix(rest, "]") {
		fmt.Sscan(rest[j+1:], &hport)
		m.HostIP = net.ParseIP(strings.Trim(rest[:j], "[]"))
		if m.HostIP == nil {
			t.Fatalf("bad host address in %q", s)
		}
		if m.HostIP.To4() == nil {
			f = famV6
		}
	} else {
		fmt.Sscan(rest, &hport)
	}
	m.HostPort, m.ContainerPort = uint16(hport), uint16(cport)
	m.ContainerIP = ctr[f]
	return m
}

// pmTexts renders rule's mappings as a view lists them.
func pmTexts(t testing.TB, r PortRule) []string {
	p, err := parsePortRule(r)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range mappingsOf(p.maps) {
		out = append(out, m.String())
	}
	sort.Strings(out)
	return out
}

func pmKeys(t testing.TB, r PortRule) []string {
	p, err := parsePortRule(r)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range p.maps {
		out = append(out, m.key.String())
	}
	return out
}

var (
	v4A   = []string{"10.88.0.2/24"}
	v4B   = []string{"10.88.0.3/24"}
	dualA = []string{"10.88.0.2/24", "fd00:88::2/64"}
)

func runPortSuite(t *testing.T, h pmHarness) {
	ctx := context.Background()
	mustAdd := func(t *testing.T, m PortMapper, r PortRule) {
		t.Helper()
		if err := m.AddPorts(ctx, r); err != nil {
			t.Fatalf("AddPorts(%s): %v", r.Owner.label(), err)
		}
	}
	mustDel := func(t *testing.T, m PortMapper, o Owner) []PortMapping {
		t.Helper()
		got, err := m.DelPorts(ctx, o)
		if err != nil {
			t.Fatalf("DelPorts(%s): %v", o.label(), err)
		}
		return got
	}
	mustCheck := func(t *testing.T, m PortMapper, r PortRule) {
		t.Helper()
		if err := m.CheckPorts(ctx, r); err != nil {
			t.Fatalf("CheckPorts(%s): %v", r.Owner.label(), err)
		}
	}
	checkFails := func(t *testing.T, m PortMapper, r PortRule, mention string) {
		t.Helper()
		err := m.CheckPorts(ctx, r)
		if !errors.Is(err, ErrPortsMismatch) {
			t.Fatalf("CheckPorts(%s) = %v, want ErrPortsMismatch", r.Owner.label(), err)
		}
		if !strings.Contains(err.Error(), mention) {
			t.Fatalf("CheckPorts(%s) = %v, want it to mention %q", r.Owner.label(), err, mention)
		}
	}
	// owns asserts o's chain holds exactly r's mappings and receives each
	// of its keys.
	owns := func(t *testing.T, v pmView, r PortRule) {
		t.Helper()
		c := h.chainOf(r.Owner)
		if got, want := v.owners[c], pmTexts(t, r); !reflect.DeepEqual(got, want) {
			t.Fatalf("mappings of %s (%s):\n got %q\nwant %q", r.Owner.label(), c, got, want)
		}
		for _, k := range pmKeys(t, r) {
			if got := v.holders[k]; got != c {
				t.Fatalf("%s goes to %q, want %q (holders %v)", k, got, c, v.holders)
			}
		}
	}
	holds := func(t *testing.T, v pmView, key string, o Owner) {
		t.Helper()
		if got, want := v.holders[key], h.chainOf(o); got != want {
			t.Fatalf("%s goes to %q, want %s's %q (holders %v)", key, got, o.label(), want, v.holders)
		}
	}
	gone := func(t *testing.T, v pmView, o Owner) {
		t.Helper()
		c := h.chainOf(o)
		if _, ok := v.owners[c]; ok {
			t.Fatalf("chain %s of %s still exists", c, o.label())
		}
		for k, hc := range v.holders {
			if hc == c {
				t.Fatalf("%s still goes to chain %s of %s", k, c, o.label())
			}
		}
	}
	empty := func(t *testing.T, v pmView) {
		t.Helper()
		if len(v.owners) != 0 || len(v.holders) != 0 {
			t.Fatalf("state not empty: owners %v holders %v", v.owners, v.holders)
		}
	}

	t.Run("layout", func(t *testing.T) {
		m := h.fresh(t)
		r := pmRule(t, ownerA, dualA, "tcp 8080:80", "udp 5353:53", "sctp 9000:9", "tcp 192.0.2.1:8081:81",
			"tcp6 8080:80", "tcp [2001:db8::1]:8082:82")
		mustAdd(t, m, r)
		h.base(t)
		v := h.view(t)
		owns(t, v, r)
		if len(v.owners) != 1 || len(v.holders) != 6 {
			t.Fatalf("want one owner and six keys, got %v %v", v.owners, v.holders)
		}
		mustCheck(t, m, r)
	})

	t.Run("add is idempotent", func(t *testing.T) {
		m := h.fresh(t)
		r := pmRule(t, ownerA, dualA, "tcp 8080:80", "udp6 5353:53")
		mustAdd(t, m, r)
		once := h.view(t)
		mustAdd(t, m, r)
		if twice := h.view(t); !reflect.DeepEqual(once, twice) {
			t.Fatalf("second ADD changed state:\nonce  %+v\ntwice %+v", once, twice)
		}
		h.base(t)
		mustCheck(t, m, r)
	})

	t.Run("re-add with other mappings leaves only the new ones", func(t *testing.T) {
		m := h.fresh(t)
		mustAdd(t, m, pmRule(t, ownerA, dualA, "tcp 8080:80", "tcp6 8080:80", "udp 53:53"))
		r := pmRule(t, ownerA, v4A, "tcp 8080:8080", "tcp 9090:90")
		mustAdd(t, m, r)
		mustCheck(t, m, r)
		v := h.view(t)
		owns(t, v, r)
		if len(v.holders) != 2 {
			t.Fatalf("old keys still published: %v", v.holders)
		}
	})

	t.Run("ADD A, ADD B same container IP, DEL A keeps B", func(t *testing.T) {
		m := h.fresh(t)
		ra := pmRule(t, ownerA, v4A, "tcp 8080:80")
		rb := pmRule(t, ownerB, v4A, "tcp 9090:80", "udp 5353:53")
		mustAdd(t, m, ra)
		mustAdd(t, m, rb)
		mustCheck(t, m, ra)
		mustCheck(t, m, rb)
		got := mustDel(t, m, ownerA)
		if len(got) != 1 || got[0].String() != "tcp 0.0.0.0:8080 -> 10.88.0.2:80" {
			t.Fatalf("DelPorts(A) returned %v", got)
		}
		v := h.view(t)
		gone(t, v, ownerA)
		owns(t, v, rb)
		mustCheck(t, m, rb)
		mustDel(t, m, ownerB)
		empty(t, h.view(t))
	})

	t.Run("newest claim of a key wins, the earlier one gets it back", func(t *testing.T) {
		m := h.fresh(t)
		ra := pmRule(t, ownerA, v4A, "tcp 8080:80", "tcp 8081:81")
		rb := pmRule(t, ownerB, v4B, "tcp 8080:80")
		rc := pmRule(t, ownerC, []string{"10.99.0.2/24"}, "tcp 8080:80")
		mustAdd(t, m, ra)
		mustAdd(t, m, rb)
		v := h.view(t)
		holds(t, v, "tcp 0.0.0.0:8080", ownerB)
		holds(t, v, "tcp 0.0.0.0:8081", ownerA)
		mustCheck(t, m, rb)
		checkFails(t, m, ra, "ctr-b")

		mustAdd(t, m, rc)
		holds(t, h.view(t), "tcp 0.0.0.0:8080", ownerC)
		mustDel(t, m, ownerB) // not the holder: nothing moves
		holds(t, h.view(t), "tcp 0.0.0.0:8080", ownerC)
		mustDel(t, m, ownerC) // the holder: back to A, B is gone
		v = h.view(t)
		owns(t, v, ra)
		mustCheck(t, m, ra)

		// A re-ADD is a new claim; its DEL gives the key back.
		mustAdd(t, m, rb)
		mustAdd(t, m, ra)
		holds(t, h.view(t), "tcp 0.0.0.0:8080", ownerA)
		mustCheck(t, m, ra)
		mustDel(t, m, ownerA)
		owns(t, h.view(t), rb)
		mustDel(t, m, ownerB)
		empty(t, h.view(t))
	})

	t.Run("an earlier claimant that dropped the key does not get it back", func(t *testing.T) {
		m := h.fresh(t)
		mustAdd(t, m, pmRule(t, ownerA, v4A, "tcp 8080:80"))
		mustAdd(t, m, pmRule(t, ownerB, v4B, "tcp 8080:80"))
		ra := pmRule(t, ownerA, v4A, "tcp 9090:90")
		mustAdd(t, m, ra)
		mustDel(t, m, ownerB)
		v := h.view(t)
		owns(t, v, ra)
		if _, ok := v.holders["tcp 0.0.0.0:8080"]; ok {
			t.Fatalf("8080 still published: %v", v.holders)
		}
	})

	t.Run("a re-ADD dropping a key it took gives it back", func(t *testing.T) {
		m := h.fresh(t)
		ra := pmRule(t, ownerA, v4A, "tcp 8080:80")
		mustAdd(t, m, ra)
		mustAdd(t, m, pmRule(t, ownerB, v4B, "tcp 8080:80", "tcp 9090:90"))
		rb := pmRule(t, ownerB, v4B, "tcp 9090:90")
		mustAdd(t, m, rb)
		v := h.view(t)
		owns(t, v, ra)
		owns(t, v, rb)
	})

	t.Run("a key on one address and the same port on every address are two keys", func(t *testing.T) {
		m := h.fresh(t)
		ra := pmRule(t, ownerA, v4A, "tcp 8080:80")
		rb := pmRule(t, ownerB, v4B, "tcp 192.0.2.1:8080:80")
		mustAdd(t, m, ra)
		mustAdd(t, m, rb)
		v := h.view(t)
		owns(t, v, ra)
		owns(t, v, rb)
		mustCheck(t, m, ra)
		mustCheck(t, m, rb)
	})

	t.Run("DEL twice and DEL of an unknown owner", func(t *testing.T) {
		m := h.fresh(t)
		if got := mustDel(t, m, ownerA); len(got) != 0 {
			t.Fatalf("DEL of nothing returned %v", got)
		}
		empty(t, h.view(t))
		mustAdd(t, m, pmRule(t, ownerA, dualA, "tcp 8080:80", "udp6 53:53"))
		if got := mustDel(t, m, ownerA); len(got) != 2 {
			t.Fatalf("DEL returned %v, want both mappings", got)
		}
		mustDel(t, m, ownerA)
		empty(t, h.view(t))
	})

	t.Run("check", func(t *testing.T) {
		m := h.fresh(t)
		r := pmRule(t, ownerA, dualA, "tcp 8080:80", "udp6 5353:53")
		checkFails(t, m, r, "missing")
		mustAdd(t, m, r)
		mustCheck(t, m, r)

		h.dropKey(t, "udp [::]:5353", ownerA)
		checkFails(t, m, r, "5353")
		mustAdd(t, m, r) // ADD repairs
		mustCheck(t, m, r)

		h.flushOwner(t, ownerA)
		checkFails(t, m, r, "")
		mustAdd(t, m, r)
		mustCheck(t, m, r)

		// Same owner, another container port: the state differs.
		checkFails(t, m, pmRule(t, ownerA, dualA, "tcp 8080:81", "udp6 5353:53"), "")
		// Same owner, options differ.
		noSNAT := r
		noSNAT.SNAT = false
		checkFails(t, m, noSNAT, "")
		mustDel(t, m, ownerA)
		checkFails(t, m, r, "missing")
		// Nothing asked, nothing there: fine.
		mustCheck(t, m, pmRule(t, ownerA, dualA))
	})

	t.Run("gc", func(t *testing.T) {
		m := h.fresh(t)
		ra := pmRule(t, ownerA, v4A, "tcp 8080:80")
		rb := pmRule(t, ownerB, v4B, "tcp 8080:80", "udp 53:53")
		rc := pmRule(t, ownerC, []string{"10.99.0.2/24"}, "tcp 7070:70")
		for _, r := range []PortRule{ra, rb, rc} {
			mustAdd(t, m, r)
		}
		if err := m.GCPorts(ctx, "net1", []Owner{ownerA}); err != nil {
			t.Fatalf("GCPorts: %v", err)
		}
		v := h.view(t)
		owns(t, v, ra) // B held 8080: back to A
		gone(t, v, ownerB)
		owns(t, v, rc)
		mustCheck(t, m, ra)
		mustCheck(t, m, rc)
		if err := m.GCPorts(ctx, "net1", []Owner{{ContainerID: ownerA.ContainerID, IfName: ownerA.IfName}}); err != nil {
			t.Fatalf("GCPorts: %v", err)
		}
		owns(t, h.view(t), ra)
		if err := m.GCPorts(ctx, "net1", nil); err != nil {
			t.Fatalf("GCPorts: %v", err)
		}
		v = h.view(t)
		gone(t, v, ownerA)
		owns(t, v, rc)
		if err := m.GCPorts(ctx, "net2", nil); err != nil {
			t.Fatalf("GCPorts: %v", err)
		}
		empty(t, h.view(t))
		if err := m.GCPorts(ctx, "net2", nil); err != nil {
			t.Fatalf("GCPorts of nothing: %v", err)
		}
	})

	t.Run("gc of two claimants of one key", func(t *testing.T) {
		m := h.fresh(t)
		ra := pmRule(t, ownerA, v4A, "tcp 8080:80")
		mustAdd(t, m, ra)
		mustAdd(t, m, pmRule(t, ownerB, v4B, "tcp 8080:80"))
		mustAdd(t, m, pmRule(t, Owner{Network: "net1", ContainerID: "ctr-d", IfName: "eth0"}, []string{"10.88.0.4/24"}, "tcp 8080:80"))
		if err := m.GCPorts(ctx, "net1", []Owner{ownerA}); err != nil {
			t.Fatalf("GCPorts: %v", err)
		}
		v := h.view(t)
		owns(t, v, ra)
		if len(v.owners) != 1 {
			t.Fatalf("owners left: %v", v.owners)
		}
	})

	t.Run("IPv6 only", func(t *testing.T) {
		m := h.fresh(t)
		r := pmRule(t, ownerA, []string{"fd00:88::2/64"}, "tcp6 8080:80", "udp [2001:db8::1]:53:53")
		mustAdd(t, m, r)
		owns(t, h.view(t), r)
		mustCheck(t, m, r)
		mustDel(t, m, ownerA)
		empty(t, h.view(t))
	})

	t.Run("options", func(t *testing.T) {
		m := h.fresh(t)
		for _, opt := range []func(*PortRule){
			func(r *PortRule) { r.SNAT = false },
			func(r *PortRule) { r.MasqAll = true },
			func(r *PortRule) { r.MarkBit = 0 },
			func(r *PortRule) { r.MarkBit = 31 },
		} {
			r := pmRule(t, ownerA, dualA, "tcp 8080:80", "tcp6 8080:80")
			opt(&r)
			mustAdd(t, m, r)
			mustCheck(t, m, r)
			owns(t, h.view(t), r)
		}
		mustDel(t, m, ownerA)
		empty(t, h.view(t))
	})

	t.Run("a thousand ports", func(t *testing.T) {
		m := h.fresh(t)
		var maps []string
		for i := range 1000 {
			maps = append(maps, fmt.Sprintf("tcp %d:%d", 20000+i, 30000+i))
		}
		maps = append(maps, "udp 5353:53", "udp 6000:60")
		r := pmRule(t, ownerA, v4A, maps...)
		mustAdd(t, m, r)
		mustCheck(t, m, r)
		owns(t, h.view(t), r)
		if got := mustDel(t, m, ownerA); len(got) != 1002 {
			t.Fatalf("DEL returned %d mappings", len(got))
		}
		empty(t, h.view(t))
	})

	t.Run("concurrent ADDs create the base once", func(t *testing.T) {
		m := h.fresh(t)
		const n = 8
		var wg sync.WaitGroup
		errs := make([]error, n)
		rules := make([]PortRule, n)
		for i := range n {
			rules[i] = pmRule(t, Owner{Network: "net1", ContainerID: fmt.Sprintf("ctr-%d", i), IfName: "eth0"},
				[]string{fmt.Sprintf("10.88.0.%d/24", i+2), fmt.Sprintf("fd00:88::%d/64", i+2)},
				fmt.Sprintf("tcp %d:80", 8000+i), fmt.Sprintf("udp6 %d:53", 5000+i))
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = m.AddPorts(ctx, rules[i])
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
		good := func(edit func(*PortRule)) PortRule {
			r := pmRule(t, ownerA, v4A, "tcp 8080:80")
			edit(&r)
			return r
		}
		for name, r := range map[string]PortRule{
			"quote in ID":              pmRule(t, Owner{Network: "net1", ContainerID: `a"b`, IfName: "eth0"}, v4A, "tcp 8080:80"),
			"no container ID":          pmRule(t, Owner{Network: "net1", IfName: "eth0"}, v4A, "tcp 8080:80"),
			"port 0":                   pmRule(t, ownerA, v4A, "tcp 0:80"),
			"container port 0":         pmRule(t, ownerA, v4A, "tcp 80:0"),
			"unknown protocol":         pmRule(t, ownerA, v4A, "icmp 8080:80"),
			"no v6 address":            pmRule(t, ownerA, v4A, "tcp6 8080:80"),
			"mapped twice":             pmRule(t, ownerA, v4A, "tcp 8080:80", "tcp 8080:81"),
			"mark bit 32":              good(func(r *PortRule) { r.MarkBit = 32 }),
			"mark bit -1":              good(func(r *PortRule) { r.MarkBit = -1 }),
			"bad setmark chain":        good(func(r *PortRule) { r.ExternalSetMarkChain = "a b" }),
			"condition with a quote":   good(func(r *PortRule) { r.ConditionsV4 = []string{`-m comment --comment "x"`} }),
			"other container address":  good(func(r *PortRule) { r.Mappings[0].ContainerIP = net.ParseIP("10.88.0.9") }),
			"host family differs":      good(func(r *PortRule) { r.Mappings[0].HostIP = net.ParseIP("2001:db8::1") }),
			"multicast host address":   good(func(r *PortRule) { r.Mappings[0].HostIP = net.ParseIP("224.0.0.1") }),
			"two IPv4 container addrs": good(func(r *PortRule) { r.Addrs = append(r.Addrs, cidr(t, "10.88.0.9/24")) }),
			"valid, then an invalid one": good(func(r *PortRule) {
				r.Mappings = append(r.Mappings, PortMapping{Protocol: "tcp", ContainerIP: r.Mappings[0].ContainerIP, ContainerPort: 1})
			}),
		} {
			if err := m.AddPorts(ctx, r); !errors.Is(err, ErrInvalidPorts) {
				t.Errorf("%s: AddPorts = %v, want ErrInvalidPorts", name, err)
			}
		}
		empty(t, h.view(t))
	})
}
