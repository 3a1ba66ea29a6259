package allocator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/plumbnet/plumb/ipam/store"
)

// forEachStore runs fn against a Memory store and a Disk store, each locked
// as the plugin would hold it.
func forEachStore(t *testing.T, fn func(t *testing.T, st store.Store)) {
	t.Helper()
	open := map[string]func(t *testing.T) store.Store{
		"memory": func(*testing.T) store.Store { return store.NewMemory() },
		"disk": func(t *testing.T) store.Store {
			d, err := store.NewDisk(t.TempDir(), "testnet")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			return d
		},
	}
	for _, name := range []string{"memory", "disk"} {
		t.Run(name, func(t *testing.T) {
			st := open[name](t)
			if err := st.Lock(context.Background()); err != nil {
				t.Fatal(err)
			}
			fn(t, st)
		})
	}
}

// set builds a canonical range set; each spec is "cidr[,start,end,gateway]".
func set(t *testing.T, specs ...string) RangeSet {
	t.Helper()
	var s RangeSet
	for _, spec := range specs {
		f := append(strings.Split(spec, ","), "", "", "")
		s = append(s, Range{Subnet: subnet(f[0]), RangeStart: ip(f[1]), RangeEnd: ip(f[2]), Gateway: ip(f[3])})
	}
	if err := s.Canonicalize(); err != nil {
		t.Fatal(err)
	}
	return s
}

var someone = store.Owner{ContainerID: "someone", IfName: "eth0"}

func owner(i int) store.Owner {
	return store.Owner{ContainerID: fmt.Sprintf("ctr%d", i), IfName: "eth0"}
}

// seed reserves addresses for someone else and sets the last reserved IP
// of range ID 0 (by reserving and releasing it, as a past ADD/DEL would).
func seed(t *testing.T, st store.Store, last string, taken ...string) {
	t.Helper()
	if last != "" {
		if _, err := st.Reserve(store.Owner{ContainerID: "past", IfName: "eth0"}, ip(last), "0"); err != nil {
			t.Fatal(err)
		}
		if err := st.Release(ip(last)); err != nil {
			t.Fatal(err)
		}
	}
	for _, s := range taken {
		if ok, err := st.Reserve(someone, ip(s), "9"); err != nil || !ok {
			t.Fatalf("seed %s: %v %v", s, ok, err)
		}
	}
}

func mustGet(t *testing.T, a *Allocator, o store.Owner, requested net.IP) string {
	t.Helper()
	c, err := a.Get(o, requested)
	if err != nil {
		t.Fatalf("Get(%v, %v): %v", o, requested, err)
	}
	return c.Address.String() + " gw " + c.Gateway.String()
}

func TestGetRoundRobin(t *testing.T) {
	cases := []struct {
		name   string
		ranges []string
		last   string
		taken  []string
		want   string
	}{
		{"fresh v4", []string{"10.0.0.0/29"}, "", nil, "10.0.0.2"},
		{"fresh v6", []string{"2001:db8:1::/64"}, "", nil, "2001:db8:1::2"},
		{"fresh /30", []string{"10.0.0.0/30"}, "", nil, "10.0.0.2"},
		{"first taken", []string{"10.0.0.0/29"}, "", []string{"10.0.0.2"}, "10.0.0.3"},
		{"after last", []string{"10.0.0.0/29"}, "10.0.0.5", nil, "10.0.0.6"},
		{"after last, skipping taken", []string{"10.0.0.0/29"}, "10.0.0.3", []string{"10.0.0.4", "10.0.0.5"}, "10.0.0.6"},
		{"wrap to start", []string{"10.0.0.0/29"}, "10.0.0.5", []string{"10.0.0.6"}, "10.0.0.2"},
		{"last at range end wraps", []string{"10.0.0.0/29"}, "10.0.0.6", nil, "10.0.0.2"},
		{"last outside the set", []string{"10.0.0.0/29"}, "10.0.0.128", []string{"10.0.0.2"}, "10.0.0.3"},
		{"only last is free", []string{"10.0.0.0/29"}, "10.0.0.3", []string{"10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"}, "10.0.0.3"},
		{"skip gateway mid-range", []string{"10.0.0.0/29,,,10.0.0.4"}, "10.0.0.3", nil, "10.0.0.5"},
		{"two ranges fresh", []string{"10.0.0.0/30", "10.0.1.0/30"}, "", nil, "10.0.0.2"},
		{"advance to next range", []string{"10.0.0.0/30", "10.0.1.0/30"}, "10.0.0.2", nil, "10.0.1.2"},
		{"roll back to first range", []string{"10.0.0.0/30", "10.0.1.0/30", "10.0.2.0/30"}, "10.0.2.2", nil, "10.0.0.2"},
		{"next range full, roll on", []string{"10.0.0.0/30", "10.0.1.0/30", "10.0.2.0/30"}, "10.0.0.2", []string{"10.0.1.2"}, "10.0.2.2"},
		{"v6 after last", []string{"2001:db8::/120"}, "2001:db8::ff", nil, "2001:db8::2"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			forEachStore(t, func(t *testing.T, st store.Store) {
				seed(t, st, c.last, c.taken...)
				got, err := New(set(t, c.ranges...), st, 0).Get(owner(1), nil)
				if err != nil {
					t.Fatal(err)
				}
				if got.Address.IP.String() != c.want {
					t.Errorf("Get = %s, want %s", got.Address.IP, c.want)
				}
				last, err := st.LastReservedIP("0")
				if err != nil || !last.Equal(got.Address.IP) {
					t.Errorf("LastReservedIP = %v, %v; want %s", last, err, got.Address.IP)
				}
			})
		})
	}
}

func TestGetExhaustsSlash24(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		a := New(set(t, "10.0.0.0/24"), st, 0)
		for i := 2; i <= 254; i++ {
			want := fmt.Sprintf("10.0.0.%d/24 gw 10.0.0.1", i)
			if got := mustGet(t, a, owner(i), nil); got != want {
				t.Fatalf("allocation %d = %s, want %s", i-1, got, want)
			}
		}
		if free, err := a.HasFree(); err != nil || free {
			t.Errorf("HasFree on a full /24 = %v, %v", free, err)
		}
		_, err := a.Get(owner(999), nil)
		if !errors.Is(err, ErrExhausted) {
			t.Fatalf("Get on a full /24 = %v, want ErrExhausted", err)
		}
		if want := "no IP addresses available in range set 10.0.0.1-10.0.0.254"; err.Error() != want {
			t.Errorf("error = %q, want %q", err, want)
		}

		// A release frees exactly that address.
		if _, err := st.ReleaseByOwner(owner(100)); err != nil {
			t.Fatal(err)
		}
		if free, err := a.HasFree(); err != nil || !free {
			t.Errorf("HasFree after a release = %v, %v", free, err)
		}
		if got := mustGet(t, a, owner(999), nil); got != "10.0.0.100/24 gw 10.0.0.1" {
			t.Errorf("Get after release = %s, want 10.0.0.100", got)
		}
	})
}

func TestGetDoesNotReuseReleasedAtOnce(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		a := New(set(t, "192.168.1.0/29"), st, 0)
		if got := mustGet(t, a, owner(1), nil); got != "192.168.1.2/29 gw 192.168.1.1" {
			t.Fatalf("first Get = %s", got)
		}
		if _, err := st.ReleaseByOwner(owner(1)); err != nil {
			t.Fatal(err)
		}
		if got := mustGet(t, a, owner(1), nil); got != "192.168.1.3/29 gw 192.168.1.1" {
			t.Errorf("Get after release = %s, want 192.168.1.3", got)
		}
	})
}

// TestGetSkipsUnusable: a range spanning the whole subnet, and a gateway
// of one range inside another, never yield network, broadcast or gateway.
func TestGetSkipsUnusable(t *testing.T) {
	cases := []struct {
		name   string
		ranges []string
		want   []string
	}{
		{"whole /29 with gateway .3", []string{"10.0.0.0/29,10.0.0.0,10.0.0.7,10.0.0.3"},
			[]string{"10.0.0.1", "10.0.0.2", "10.0.0.4", "10.0.0.5", "10.0.0.6"}},
		{"gateway of the other range", []string{
			"10.0.0.0/24,10.0.0.1,10.0.0.4,10.0.0.6",
			"10.0.0.0/24,10.0.0.5,10.0.0.7,10.0.0.1",
		}, []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.7"}},
		{"v6 network address", []string{"2001:db8::/126,2001:db8::,2001:db8::3,2001:db8::2"},
			[]string{"2001:db8::1", "2001:db8::3"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			forEachStore(t, func(t *testing.T, st store.Store) {
				a := New(set(t, c.ranges...), st, 0)
				var got []string
				for i := 0; ; i++ {
					r, err := a.Get(owner(i), nil)
					if errors.Is(err, ErrExhausted) {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					got = append(got, r.Address.IP.String())
				}
				if fmt.Sprint(got) != fmt.Sprint(c.want) {
					t.Errorf("allocated %v, want %v", got, c.want)
				}
			})
		})
	}
}

func TestGetRequested(t *testing.T) {
	cases := []struct {
		name    string
		ranges  []string
		req     net.IP
		want    string
		wantErr error
		msg     string
	}{
		{"free in range", []string{"192.168.1.0/29"}, ip("192.168.1.5"), "192.168.1.5/29 gw 192.168.1.1", nil, ""},
		{"4-byte form", []string{"192.168.1.0/29"}, net.IP{192, 168, 1, 6}, "192.168.1.6/29 gw 192.168.1.1", nil, ""},
		{"second range", []string{"10.0.0.0/30", "10.0.1.0/29,,,10.0.1.6"}, ip("10.0.1.2"), "10.0.1.2/29 gw 10.0.1.6", nil, ""},
		{"v6", []string{"2001:db8::/64"}, ip("2001:db8::abcd"), "2001:db8::abcd/64 gw 2001:db8::1", nil, ""},
		{"taken", []string{"192.168.1.0/29"}, ip("192.168.1.3"), "", ErrRequestedTaken,
			"requested IP address 192.168.1.3 is not available in range set 192.168.1.1-192.168.1.6"},
		{"outside subnet", []string{"192.168.1.0/29"}, ip("192.168.2.3"), "", ErrRequestedOutside,
			"requested IP address 192.168.2.3 is not in range set 192.168.1.1-192.168.1.6"},
		{"before RangeStart", []string{"192.168.1.0/29,192.168.1.3"}, ip("192.168.1.2"), "", ErrRequestedOutside, ""},
		{"after RangeEnd", []string{"192.168.1.0/29,,192.168.1.4"}, ip("192.168.1.5"), "", ErrRequestedOutside, ""},
		{"gateway", []string{"192.168.1.0/29"}, ip("192.168.1.1"), "", ErrRequestedOutside,
			"requested IP address 192.168.1.1 is a gateway"},
		{"gateway of another range", []string{"10.0.0.0/24,,10.0.0.99,10.0.0.150", "10.0.0.0/24,10.0.0.100"}, ip("10.0.0.150"), "", ErrRequestedOutside, ""},
		{"broadcast in range", []string{"192.168.1.0/29,,192.168.1.7"}, ip("192.168.1.7"), "", ErrRequestedOutside, ""},
		{"wrong family", []string{"192.168.1.0/29"}, ip("2001:db8::3"), "", ErrRequestedOutside, ""},
		{"malformed", []string{"192.168.1.0/29"}, net.IP{1, 2, 3}, "", ErrRequestedOutside, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			forEachStore(t, func(t *testing.T, st store.Store) {
				seed(t, st, "", "192.168.1.3")
				a := New(set(t, c.ranges...), st, 0)
				r, err := a.Get(owner(1), c.req)
				if c.wantErr != nil {
					if !errors.Is(err, c.wantErr) {
						t.Fatalf("Get = %v, %v; want %v", r, err, c.wantErr)
					}
					if !strings.Contains(err.Error(), c.msg) {
						t.Errorf("error %q does not contain %q", err, c.msg)
					}
					if got, _ := st.GetByOwner(owner(1)); len(got) != 0 {
						t.Errorf("failed Get left reservations %v", got)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				if got := r.Address.String() + " gw " + r.Gateway.String(); got != c.want {
					t.Errorf("Get = %s, want %s", got, c.want)
				}
				if got, _ := st.GetByOwner(owner(1)); len(got) != 1 || !got[0].Equal(c.req) {
					t.Errorf("store holds %v for the owner, want [%s]", got, c.req)
				}
			})
		})
	}
}

// TestGetDuplicate: a second Get for the same attachment returns its
// address (re-ADD repairs), asking for another address is refused.
func TestGetDuplicate(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		v4 := New(set(t, "10.0.0.0/24"), st, 0)
		v6 := New(set(t, "2001:db8::/64"), st, 1)
		o := store.Owner{ContainerID: "ctr", IfName: "eth0"}
		first := mustGet(t, v4, o, nil)
		for _, req := range []net.IP{nil, ip("10.0.0.2")} {
			if again := mustGet(t, v4, o, req); again != first {
				t.Errorf("second Get(requested %v) = %s, want the held %s", req, again, first)
			}
		}
		if got, _ := st.GetByOwner(o); len(got) != 1 {
			t.Errorf("the owner holds %v after repeated Gets, want one address", got)
		}
		_, err := v4.Get(o, ip("10.0.0.50"))
		if !errors.Is(err, ErrAlreadyAllocated) {
			t.Errorf("Get(requested another address) = %v, want ErrAlreadyAllocated", err)
		} else if want := "10.0.0.2 has been allocated to ctr/eth0"; !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not contain %q", err, want)
		}
		// Another range set, and another interface of the container, are fine.
		mustGet(t, v6, o, nil)
		if got := mustGet(t, v4, store.Owner{ContainerID: "ctr", IfName: "net1"}, nil); got != "10.0.0.3/24 gw 10.0.0.1" {
			t.Errorf("Get for ctr/net1 = %s", got)
		}
		// A legacy record (container ID only) holds for every interface,
		// as in the reference.
		if ok, err := st.Reserve(store.Owner{ContainerID: "old"}, ip("10.0.0.77"), "0"); err != nil || !ok {
			t.Fatal(ok, err)
		}
		if _, err := v4.Get(store.Owner{ContainerID: "old", IfName: "eth0"}, nil); !errors.Is(err, ErrAlreadyAllocated) {
			t.Errorf("Get for an owner with a legacy record = %v, want ErrAlreadyAllocated", err)
		}
	})
}

func TestGetRangedSubsets(t *testing.T) {
	cases := []struct {
		name   string
		ranges []string
		want   []string
	}{
		{"v4 subset", []string{"10.0.0.0/24,10.0.0.10,10.0.0.12"},
			[]string{"10.0.0.10/24 gw 10.0.0.1", "10.0.0.11/24 gw 10.0.0.1", "10.0.0.12/24 gw 10.0.0.1"}},
		{"v6 subset", []string{"2001:db8::/64,2001:db8::10,2001:db8::12"},
			[]string{"2001:db8::10/64 gw 2001:db8::1", "2001:db8::11/64 gw 2001:db8::1", "2001:db8::12/64 gw 2001:db8::1"}},
		{"two subnets keep their mask and gateway", []string{"10.0.0.0/30", "192.168.0.0/29,,,192.168.0.6"},
			[]string{"10.0.0.2/30 gw 10.0.0.1", "192.168.0.1/29 gw 192.168.0.6", "192.168.0.2/29 gw 192.168.0.6",
				"192.168.0.3/29 gw 192.168.0.6", "192.168.0.4/29 gw 192.168.0.6", "192.168.0.5/29 gw 192.168.0.6"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			forEachStore(t, func(t *testing.T, st store.Store) {
				a := New(set(t, c.ranges...), st, 0)
				for i, want := range c.want {
					if got := mustGet(t, a, owner(i), nil); got != want {
						t.Errorf("allocation %d = %s, want %s", i, got, want)
					}
				}
				if free, err := a.HasFree(); err != nil || free {
					t.Errorf("HasFree when full = %v, %v", free, err)
				}
				if _, err := a.Get(owner(99), nil); !errors.Is(err, ErrExhausted) {
					t.Errorf("Get when full = %v, want ErrExhausted", err)
				}
			})
		})
	}
}

func TestRangeIDsAreIndependent(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		a0 := New(set(t, "10.0.0.0/24"), st, 0)
		a1 := New(set(t, "10.1.0.0/24"), st, 1)
		mustGet(t, a0, owner(1), nil)
		mustGet(t, a0, owner(2), nil)
		mustGet(t, a1, owner(1), nil)
		for id, want := range map[string]string{"0": "10.0.0.3", "1": "10.1.0.2"} {
			if got, err := st.LastReservedIP(id); err != nil || got.String() != want {
				t.Errorf("LastReservedIP(%s) = %v, %v; want %s", id, got, err, want)
			}
		}
	})
}

func TestHasFree(t *testing.T) {
	forEachStore(t, func(t *testing.T, st store.Store) {
		// Reservations outside the set do not count against it.
		seed(t, st, "", "10.9.0.2", "10.0.0.2")
		a := New(set(t, "10.0.0.0/30"), st, 0)
		if free, err := a.HasFree(); err != nil || free {
			t.Errorf("HasFree on a full /30 = %v, %v", free, err)
		}
		// A /64 answers at once rather than walking 2^64 addresses.
		big := New(set(t, "2001:db8::/64"), st, 1)
		if free, err := big.HasFree(); err != nil || !free {
			t.Errorf("HasFree on an empty /64 = %v, %v", free, err)
		}
	})
}

func TestGetResultDoesNotAlias(t *testing.T) {
	s := set(t, "10.0.0.0/24")
	a := New(s, store.NewMemory(), 0)
	r, err := a.Get(owner(1), nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Gateway[3] = 99
	r.Address.Mask[3] = 99
	if s[0].Gateway.String() != "10.0.0.1" || (*net.IPNet)(&s[0].Subnet).String() != "10.0.0.0/24" {
		t.Errorf("mutating the result changed the range to %v", s[0])
	}
}

func TestGetWithNonCanonicalSet(t *testing.T) {
	a := New(RangeSet{{Subnet: subnet("10.0.0.0/24")}}, store.NewMemory(), 0)
	if _, err := a.Get(owner(1), nil); err == nil {
		t.Error("Get with an uncanonicalized set succeeded")
	}
	if _, err := New(nil, store.NewMemory(), 0).HasFree(); err == nil {
		t.Error("HasFree with an empty set succeeded")
	}
}
