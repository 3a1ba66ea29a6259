package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// opener returns a store and a way to open another handle on the same
// state (for Disk a second NewDisk on the same directory, as a second
// plugin process would; for Memory the same value).
type opener func(t *testing.T) (Store, func() Store)

func TestMemory(t *testing.T) {
	runSuite(t, func(t *testing.T) (Store, func() Store) {
		m := NewMemory()
		return m, func() Store { return m }
	})
}

func TestDisk(t *testing.T) {
	runSuite(t, func(t *testing.T) (Store, func() Store) {
		dataDir := t.TempDir()
		open := func() Store {
			d, err := NewDisk(dataDir, "net1")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			return d
		}
		return open(), open
	})
}

// runSuite is the behaviour both implementations must share.
func runSuite(t *testing.T, open opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s Store, reopen func() Store)
	}{
		{"ReserveIsExclusive", testReserveIsExclusive},
		{"LastReservedIPPerRangeID", testLastReservedIP},
		{"GetByOwnerMatchesIfName", testGetByOwner},
		{"ReleaseByOwner", testReleaseByOwner},
		{"Release", testRelease},
		{"ListSorted", testList},
		{"IPv4FormsAreOneAddress", testIPv4Forms},
		{"InvalidInput", testInvalidInput},
		{"LockTimeout", testLockTimeout},
		{"LockFreeWithDoneContext", testLockDoneContext},
		{"LockExcludesConcurrentWriters", testLockConcurrent},
		{"StateSharedBetweenHandles", testStateShared},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, reopen := open(t)
			lock(t, s)
			tc.fn(t, s, reopen)
		})
	}
}

func lock(t *testing.T, s Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Lock(ctx); err != nil {
		t.Fatalf("Lock: %v", err)
	}
}

func ip(s string) net.IP {
	p := net.ParseIP(s)
	if p == nil {
		panic("bad test IP " + s)
	}
	if v4 := p.To4(); v4 != nil {
		return v4
	}
	return p
}

func reserve(t *testing.T, s Store, o Owner, addr, rangeID string) bool {
	t.Helper()
	ok, err := s.Reserve(o, ip(addr), rangeID)
	if err != nil {
		t.Fatalf("Reserve(%v, %s, %s): %v", o, addr, rangeID, err)
	}
	return ok
}

func mustReserve(t *testing.T, s Store, o Owner, addr, rangeID string) {
	t.Helper()
	if !reserve(t, s, o, addr, rangeID) {
		t.Fatalf("Reserve(%v, %s) = false, want true", o, addr)
	}
}

// strs renders IPs for comparison.
func strs(ips []net.IP) []string {
	out := []string{}
	for _, p := range ips {
		out = append(out, p.String())
	}
	return out
}

func dump(rs []Reservation) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, fmt.Sprintf("%s %q %q", r.IP, r.Owner.ContainerID, r.Owner.IfName))
	}
	return out
}

func wantIPs(t *testing.T, what string, got []net.IP, err error, want ...string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if want == nil {
		want = []string{}
	}
	if !slices.Equal(strs(got), want) {
		t.Errorf("%s = %v, want %v", what, strs(got), want)
	}
}

func wantList(t *testing.T, s Store, want ...string) {
	t.Helper()
	rs, err := s.List()
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if want == nil {
		want = []string{}
	}
	if got := dump(rs); !slices.Equal(got, want) {
		t.Errorf("List =\n%q\nwant\n%q", got, want)
	}
}

var (
	a0 = Owner{"ctrA", "eth0"}
	a1 = Owner{"ctrA", "net1"}
	b0 = Owner{"ctrB", "eth0"}
)

func testReserveIsExclusive(t *testing.T, s Store, _ func() Store) {
	mustReserve(t, s, a0, "10.0.0.2", "0")
	if reserve(t, s, b0, "10.0.0.2", "0") {
		t.Error("second Reserve of 10.0.0.2 by another owner succeeded")
	}
	if reserve(t, s, a0, "10.0.0.2", "0") {
		t.Error("second Reserve of 10.0.0.2 by the same owner succeeded")
	}
	wantList(t, s, `10.0.0.2 "ctrA" "eth0"`)
}

func testLastReservedIP(t *testing.T, s Store, _ func() Store) {
	got, err := s.LastReservedIP("0")
	if err != nil || got != nil {
		t.Fatalf("LastReservedIP on empty store = %v, %v; want nil, nil", got, err)
	}
	mustReserve(t, s, a0, "10.0.0.5", "0")
	mustReserve(t, s, a1, "2001:db8::7", "1")
	// A failed Reserve must not move the marker.
	if reserve(t, s, b0, "10.0.0.5", "1") {
		t.Fatal("Reserve of a taken address succeeded")
	}
	for id, want := range map[string]string{"0": "10.0.0.5", "1": "2001:db8::7"} {
		got, err := s.LastReservedIP(id)
		if err != nil || got.String() != want {
			t.Errorf("LastReservedIP(%s) = %v, %v; want %s", id, got, err, want)
		}
	}
	if got, _ := s.LastReservedIP("0"); len(got) != net.IPv4len {
		t.Errorf("LastReservedIP(0) has %d bytes, want 4", len(got))
	}
	// Releasing does not forget the marker: round-robin continues past it.
	if err := s.Release(ip("10.0.0.5")); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.LastReservedIP("0"); got.String() != "10.0.0.5" {
		t.Errorf("LastReservedIP(0) after release = %v, want 10.0.0.5", got)
	}
}

func testGetByOwner(t *testing.T, s Store, _ func() Store) {
	mustReserve(t, s, a0, "10.0.0.2", "0")
	mustReserve(t, s, a0, "2001:db8::2", "1")
	mustReserve(t, s, a1, "10.0.0.3", "0")
	mustReserve(t, s, b0, "10.0.0.4", "0")
	got, err := s.GetByOwner(a0)
	wantIPs(t, "GetByOwner(a0)", got, err, "10.0.0.2", "2001:db8::2")
	got, err = s.GetByOwner(a1)
	wantIPs(t, "GetByOwner(a1)", got, err, "10.0.0.3")
	got, err = s.GetByOwner(Owner{"ctrC", "eth0"})
	wantIPs(t, "GetByOwner(unknown)", got, err)
	// The reference trims the container ID when writing and comparing.
	got, err = s.GetByOwner(Owner{" ctrB\n", "eth0"})
	wantIPs(t, "GetByOwner(padded ctrB)", got, err, "10.0.0.4")
}

func testReleaseByOwner(t *testing.T, s Store, _ func() Store) {
	mustReserve(t, s, a0, "10.0.0.2", "0")
	mustReserve(t, s, a0, "10.0.0.3", "1")
	mustReserve(t, s, a1, "10.0.0.4", "0")
	got, err := s.ReleaseByOwner(a0)
	wantIPs(t, "ReleaseByOwner(a0)", got, err, "10.0.0.2", "10.0.0.3")
	got, err = s.ReleaseByOwner(a0)
	wantIPs(t, "second ReleaseByOwner(a0)", got, err)
	wantList(t, s, `10.0.0.4 "ctrA" "net1"`)
	// Released addresses are free again.
	mustReserve(t, s, b0, "10.0.0.2", "0")
}

func testRelease(t *testing.T, s Store, _ func() Store) {
	mustReserve(t, s, a0, "10.0.0.2", "0")
	mustReserve(t, s, a0, "10.0.0.3", "0")
	if err := s.Release(ip("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(ip("10.0.0.2")); err != nil {
		t.Errorf("Release of an absent address: %v", err)
	}
	if err := s.Release(ip("192.0.2.99")); err != nil {
		t.Errorf("Release of a never-reserved address: %v", err)
	}
	wantList(t, s, `10.0.0.3 "ctrA" "eth0"`)
	mustReserve(t, s, b0, "10.0.0.2", "0")
}

func testList(t *testing.T, s Store, _ func() Store) {
	wantList(t, s)
	mustReserve(t, s, b0, "2001:db8::1", "1")
	mustReserve(t, s, a0, "10.0.0.10", "0")
	mustReserve(t, s, a1, "10.0.0.9", "0")
	wantList(t, s,
		`10.0.0.9 "ctrA" "net1"`,
		`10.0.0.10 "ctrA" "eth0"`,
		`2001:db8::1 "ctrB" "eth0"`,
	)
	rs, _ := s.List()
	if len(rs[0].IP) != net.IPv4len {
		t.Errorf("List returned a %d-byte IPv4 address, want 4", len(rs[0].IP))
	}
}

func testIPv4Forms(t *testing.T, s Store, _ func() Store) {
	ok, err := s.Reserve(a0, net.ParseIP("10.0.0.2"), "0") // 16-byte form
	if err != nil || !ok {
		t.Fatalf("Reserve 16-byte form = %v, %v", ok, err)
	}
	if ok, _ := s.Reserve(b0, net.IPv4(10, 0, 0, 2).To4(), "0"); ok {
		t.Error("4-byte form of a reserved address was reservable")
	}
	if err := s.Release(net.IPv4(10, 0, 0, 2).To4()); err != nil {
		t.Fatal(err)
	}
	wantList(t, s)
}

func testInvalidInput(t *testing.T, s Store, _ func() Store) {
	cases := []struct {
		name    string
		owner   Owner
		ip      net.IP
		rangeID string
	}{
		{"nil IP", a0, nil, "0"},
		{"short IP", a0, net.IP{10, 0, 0}, "0"},
		{"empty container ID", Owner{"  ", "eth0"}, ip("10.0.0.2"), "0"},
		{"line break in ID", Owner{"a\r\nb", "eth0"}, ip("10.0.0.2"), "0"},
		{"line break in ifname", Owner{"a", "eth0\n"}, ip("10.0.0.2"), "0"},
		{"empty range ID", a0, ip("10.0.0.2"), ""},
		{"range ID with slash", a0, ip("10.0.0.2"), "../../x"},
	}
	for _, c := range cases {
		if ok, err := s.Reserve(c.owner, c.ip, c.rangeID); err == nil || ok {
			t.Errorf("Reserve with %s = %v, %v; want an error", c.name, ok, err)
		}
	}
	if _, err := s.GetByOwner(Owner{}); err == nil {
		t.Error("GetByOwner with an empty owner succeeded")
	}
	if _, err := s.ReleaseByOwner(Owner{"", "eth0"}); err == nil {
		t.Error("ReleaseByOwner with an empty container ID succeeded")
	}
	if _, err := s.LastReservedIP("a/b"); err == nil {
		t.Error("LastReservedIP with a slash succeeded")
	}
	if err := s.Release(nil); err == nil {
		t.Error("Release(nil) succeeded")
	}
	wantList(t, s)
}

func testLockTimeout(t *testing.T, s Store, reopen func() Store) {
	other := reopen()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := other.Lock(ctx)
	if !errors.Is(err, ErrLockTimeout) {
		t.Fatalf("Lock while held = %v, want ErrLockTimeout", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock error %v does not carry the context's cause", err)
	}
	if d := time.Since(start); d < 25*time.Millisecond {
		t.Errorf("Lock gave up after %v, before its context ended", d)
	}
	if err := s.Unlock(); err != nil {
		t.Fatal(err)
	}
	lock(t, other)
	if err := other.Unlock(); err != nil {
		t.Fatal(err)
	}
}

func testLockDoneContext(t *testing.T, s Store, reopen func() Store) {
	if err := s.Unlock(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	other := reopen()
	if err := other.Lock(ctx); err != nil {
		t.Fatalf("Lock of a free lock with a done context: %v", err)
	}
	// Now held: the same done context must fail at once.
	third := reopen()
	if err := third.Lock(ctx); !errors.Is(err, ErrLockTimeout) || !errors.Is(err, context.Canceled) {
		t.Errorf("Lock of a held lock with a done context = %v, want ErrLockTimeout and Canceled", err)
	}
	other.Unlock()
}

// testLockConcurrent runs read-modify-write cycles from many handles; if
// Lock did not exclude, two would pick the same "next" address and one
// Reserve would fail.
func testLockConcurrent(t *testing.T, s Store, reopen func() Store) {
	if err := s.Unlock(); err != nil {
		t.Fatal(err)
	}
	const workers, rounds = 8, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds)
	for w := range workers {
		st := reopen()
		wg.Go(func() {
			for r := range rounds {
				if err := cycle(st, Owner{fmt.Sprintf("w%d", w), fmt.Sprintf("eth%d", r)}); err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	lock(t, s)
	rs, err := s.List()
	if err != nil || len(rs) != workers*rounds {
		t.Fatalf("List after concurrent reservations: %d entries, %v; want %d", len(rs), err, workers*rounds)
	}
}

func cycle(st Store, o Owner) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := st.Lock(ctx); err != nil {
		return err
	}
	defer st.Unlock()
	last, err := st.LastReservedIP("0")
	if err != nil {
		return err
	}
	next := net.IPv4(10, 0, 0, 1).To4()
	if last != nil {
		next = net.IPv4(10, 0, 0, last.To4()[3]+1).To4()
	}
	time.Sleep(100 * time.Microsecond) // widen the race window
	ok, err := st.Reserve(o, next, "0")
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("%v: %s was taken under the lock", o, next)
	}
	return nil
}

func testStateShared(t *testing.T, s Store, reopen func() Store) {
	mustReserve(t, s, a0, "10.0.0.2", "0")
	if err := s.Unlock(); err != nil {
		t.Fatal(err)
	}
	other := reopen()
	lock(t, other)
	defer other.Unlock()
	got, err := other.GetByOwner(a0)
	wantIPs(t, "GetByOwner via second handle", got, err, "10.0.0.2")
	if reserve(t, other, b0, "10.0.0.2", "0") {
		t.Error("second handle could reserve an address the first holds")
	}
}
