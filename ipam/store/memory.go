package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
)

// Memory is an in-memory Store for tests. It keeps real state and follows
// the same rules as Disk (owner matching, legacy records, validation), so a
// test passing against Memory says something about Disk too.
type Memory struct {
	// sem is a one-slot semaphore rather than a sync.Mutex so Lock can
	// give up when its context ends.
	sem  chan struct{}
	res  map[string]Reservation // keyed by canonical ip.String()
	last map[string]net.IP      // keyed by range ID
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty, unlocked store.
func NewMemory() *Memory {
	return &Memory{
		sem:  make(chan struct{}, 1),
		res:  map[string]Reservation{},
		last: map[string]net.IP{},
	}
}

// Lock takes the lock, trying once before looking at ctx (see Store).
func (m *Memory) Lock(ctx context.Context) error {
	select {
	case m.sem <- struct{}{}:
		return nil
	default:
	}
	select {
	case m.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("lock memory store: %w: %w", ErrLockTimeout, context.Cause(ctx))
	}
}

// Unlock releases the lock; unlocking a free lock is a caller bug and says so.
func (m *Memory) Unlock() error {
	select {
	case <-m.sem:
		return nil
	default:
		return errors.New("unlock memory store: not locked")
	}
}

// Close is a no-op; the state stays readable for assertions.
func (m *Memory) Close() error { return nil }

// Reserve implements Store.
func (m *Memory) Reserve(owner Owner, ip net.IP, rangeID string) (bool, error) {
	owner, err := normalizeOwner(owner)
	if err != nil {
		return false, fmt.Errorf("reserve %v: %w", ip, err)
	}
	if ip, err = canonicalIP(ip); err != nil {
		return false, fmt.Errorf("reserve: %w", err)
	}
	if err := validateRangeID(rangeID); err != nil {
		return false, fmt.Errorf("reserve %s: %w", ip, err)
	}
	key := ip.String()
	if _, taken := m.res[key]; taken {
		return false, nil
	}
	m.res[key] = Reservation{IP: slices.Clone(ip), Owner: owner}
	m.last[rangeID] = slices.Clone(ip)
	return true, nil
}

// LastReservedIP implements Store.
func (m *Memory) LastReservedIP(rangeID string) (net.IP, error) {
	if err := validateRangeID(rangeID); err != nil {
		return nil, fmt.Errorf("last reserved IP: %w", err)
	}
	return slices.Clone(m.last[rangeID]), nil
}

// GetByOwner implements Store.
func (m *Memory) GetByOwner(owner Owner) ([]net.IP, error) {
	owner, err := normalizeOwner(owner)
	if err != nil {
		return nil, fmt.Errorf("get addresses: %w", err)
	}
	var ips []net.IP
	for _, r := range m.res {
		if exactMatch(r.Owner, owner) || legacyMatch(r.Owner, owner) {
			ips = append(ips, slices.Clone(r.IP))
		}
	}
	sortIPs(ips)
	return ips, nil
}

// OwnerOf implements Store.
func (m *Memory) OwnerOf(ip net.IP) (Owner, bool, error) {
	ip, err := canonicalIP(ip)
	if err != nil {
		return Owner{}, false, fmt.Errorf("owner of address: %w", err)
	}
	r, ok := m.res[ip.String()]
	return r.Owner, ok, nil
}

// ReleaseByOwner implements Store: exact records first, legacy ones only
// when there are none (the reference's rule).
func (m *Memory) ReleaseByOwner(owner Owner) ([]net.IP, error) {
	owner, err := normalizeOwner(owner)
	if err != nil {
		return nil, fmt.Errorf("release addresses: %w", err)
	}
	var released []net.IP
	for _, match := range []func(rec, q Owner) bool{exactMatch, legacyMatch} {
		for k, r := range m.res {
			if match(r.Owner, owner) {
				released = append(released, r.IP)
				delete(m.res, k)
			}
		}
		if len(released) > 0 {
			break
		}
	}
	sortIPs(released)
	return released, nil
}

// Release implements Store.
func (m *Memory) Release(ip net.IP) error {
	ip, err := canonicalIP(ip)
	if err != nil {
		return fmt.Errorf("release: %w", err)
	}
	delete(m.res, ip.String())
	return nil
}

// List implements Store.
func (m *Memory) List() ([]Reservation, error) {
	out := make([]Reservation, 0, len(m.res))
	for _, r := range m.res {
		out = append(out, Reservation{IP: slices.Clone(r.IP), Owner: r.Owner})
	}
	sortReservations(out)
	return out, nil
}

// String dumps the state for golden tests, one line per reservation
// ("<ip> <container>/<ifname>") then one per range set ("last <id> <ip>").
// Like the other methods it expects the caller to hold the lock.
func (m *Memory) String() string {
	var b strings.Builder
	rs, _ := m.List()
	for _, r := range rs {
		fmt.Fprintf(&b, "%s %s\n", r.IP, r.Owner)
	}
	ids := make([]string, 0, len(m.last))
	for id := range m.last {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		fmt.Fprintf(&b, "last %s %s\n", id, m.last[id])
	}
	return b.String()
}
