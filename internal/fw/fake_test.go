package fw

import (
	"context"
	"errors"
	"net"
	"sort"
	"testing"
)

func fakeHarness() masqHarness {
	var cur *Fake
	return masqHarness{
		name:  "fake",
		fresh: func(t *testing.T) Masquerader { cur = NewFake(); return cur },
		view: func(t *testing.T) masqView {
			cur.mu.Lock()
			defer cur.mu.Unlock()
			v := masqView{chains: map[string][]string{}}
			for h, o := range cur.owners {
				v.chains[h] = []string{fakeAddrsText(o.addrs)}
			}
			for ip, h := range cur.addrs {
				v.jumps = append(v.jumps, ip+" -> "+h)
			}
			sort.Strings(v.jumps)
			return v
		},
		chainOf: Owner.Hash,
		wantRules: func(r MasqRule) []string {
			addrs, err := parseMasqRule(r)
			if err != nil {
				panic(err)
			}
			return []string{fakeAddrsText(addrs)}
		},
		base: func(t *testing.T) {},
		dropJump: func(t *testing.T, ip, chain string) {
			cur.mu.Lock()
			defer cur.mu.Unlock()
			delete(cur.addrs, net.ParseIP(ip).String())
		},
		dropRule: func(t *testing.T, chain string) {
			cur.mu.Lock()
			defer cur.mu.Unlock()
			o := cur.owners[chain]
			o.addrs = o.addrs[1:]
			cur.owners[chain] = o
		},
	}
}

func TestFakeMasq(t *testing.T) { runMasqSuite(t, fakeHarness()) }

func TestFakeDump(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	for _, r := range []MasqRule{
		masqRule(t, ownerA, "10.88.0.2/24", "fd00:88::2/64"),
		masqRule(t, ownerB, "10.88.0.2/24"),
		masqRule(t, ownerC, "10.99.0.7/16"),
	} {
		if err := f.AddMasq(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	want := `owner net1/ctr-a/eth0: 10.88.0.2/24 fd00:88::2/64
owner net1/ctr-b/eth0: 10.88.0.2/24
owner net2/ctr-c/eth0: 10.99.0.7/16
addr 10.88.0.2 -> net1/ctr-b/eth0
addr 10.99.0.7 -> net2/ctr-c/eth0
addr fd00:88::2 -> net1/ctr-a/eth0
`
	if got := f.Dump(); got != want {
		t.Fatalf("Dump:\n%s\nwant:\n%s", got, want)
	}
	if err := f.DelMasq(ctx, ownerA, nil); err != nil {
		t.Fatal(err)
	}
	want = `owner net1/ctr-b/eth0: 10.88.0.2/24
owner net2/ctr-c/eth0: 10.99.0.7/16
addr 10.88.0.2 -> net1/ctr-b/eth0
addr 10.99.0.7 -> net2/ctr-c/eth0
`
	if got := f.Dump(); got != want {
		t.Fatalf("Dump after DEL A:\n%s\nwant:\n%s", got, want)
	}
}

func TestFakeErr(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("boom")
	f := &Fake{Err: boom}
	if err := f.AddMasq(ctx, masqRule(t, ownerA, "10.88.0.2/24")); !errors.Is(err, boom) {
		t.Fatalf("AddMasq = %v, want boom", err)
	}
	if got := f.Dump(); got != "" {
		t.Fatalf("failed ADD left state:\n%s", got)
	}
	f.Err = nil
	if err := f.AddMasq(ctx, masqRule(t, ownerA, "10.88.0.2/24")); err != nil {
		t.Fatal(err)
	}
}
