package fw

import (
	"context"
	"errors"
	"sort"
	"testing"
)

func fakePMHarness() pmHarness {
	var cur *FakePorts
	return pmHarness{
		name:  "fake",
		fresh: func(t *testing.T) PortMapper { cur = NewFakePorts(); return cur },
		view: func(t *testing.T) pmView {
			cur.mu.Lock()
			defer cur.mu.Unlock()
			v := pmView{owners: map[string][]string{}, holders: map[string]string{}}
			for h, o := range cur.owners {
				var maps []string
				for _, m := range mappingsOf(o.plan.maps) {
					maps = append(maps, m.String())
				}
				sort.Strings(maps)
				v.owners[h] = maps
			}
			for k, hs := range cur.claims {
				v.holders[k.String()] = hs[len(hs)-1]
			}
			return v
		},
		chainOf: Owner.Hash,
		base:    func(t *testing.T) {},
		dropKey: func(t *testing.T, key string, o Owner) {
			cur.mu.Lock()
			defer cur.mu.Unlock()
			for k := range cur.claims {
				if k.String() == key {
					cur.drop(k, o.Hash())
				}
			}
		},
		flushOwner: func(t *testing.T, o Owner) {
			cur.mu.Lock()
			defer cur.mu.Unlock()
			fo := cur.owners[o.Hash()]
			for _, m := range fo.plan.maps {
				cur.drop(m.key, o.Hash())
			}
			fo.plan.maps = nil
			cur.owners[o.Hash()] = fo
		},
	}
}

func TestFakePorts(t *testing.T) { runPortSuite(t, fakePMHarness()) }

func TestFakePortsDump(t *testing.T) {
	ctx := context.Background()
	f := NewFakePorts()
	for _, r := range []PortRule{
		pmRule(t, ownerA, dualA, "tcp 8080:80", "udp6 53:53"),
		pmRule(t, ownerB, v4B, "tcp 8080:80"),
	} {
		if err := f.AddPorts(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	want := `owner net1/ctr-a/eth0: snat mark 0x2000 | tcp 0.0.0.0:8080 -> 10.88.0.2:80, udp [::]:53 -> [fd00:88::2]:53
owner net1/ctr-b/eth0: snat mark 0x2000 | tcp 0.0.0.0:8080 -> 10.88.0.3:80
port tcp 0.0.0.0:8080 -> net1/ctr-b/eth0 net1/ctr-a/eth0
port udp [::]:53 -> net1/ctr-a/eth0
`
	if got := f.Dump(); got != want {
		t.Fatalf("Dump:\n%s\nwant:\n%s", got, want)
	}
	if _, err := f.DelPorts(ctx, ownerB); err != nil {
		t.Fatal(err)
	}
	want = `owner net1/ctr-a/eth0: snat mark 0x2000 | tcp 0.0.0.0:8080 -> 10.88.0.2:80, udp [::]:53 -> [fd00:88::2]:53
port tcp 0.0.0.0:8080 -> net1/ctr-a/eth0
port udp [::]:53 -> net1/ctr-a/eth0
`
	if got := f.Dump(); got != want {
		t.Fatalf("Dump after DEL B:\n%s\nwant:\n%s", got, want)
	}
}

func TestFakePortsErr(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("boom")
	f := &FakePorts{Err: boom}
	if err := f.AddPorts(ctx, pmRule(t, ownerA, v4A, "tcp 8080:80")); !errors.Is(err, boom) {
		t.Fatalf("AddPorts = %v, want boom", err)
	}
	if got := f.Dump(); got != "" {
		t.Fatalf("failed ADD left state:\n%s", got)
	}
}
