// Package store owns IPAM reservation state: which address is held by which
// attachment (container ID + interface), and the last address handed out per
// range set so allocation can go round-robin.
//
// Two implementations share one interface: Disk, whose on-disk layout is the
// reference host-local plugin's (so a node can switch between the two either
// way), and Memory, a stateful fake for tests of allocator and plugin logic.
package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
)

// DefaultDataDir is where the reference host-local keeps its state when the
// config names no dataDir; callers default to it so both share one layout.
const DefaultDataDir = "/var/lib/cni/networks"

// ErrLockTimeout is returned (wrapped) by Lock when its context ends before
// the lock is had.
var ErrLockTimeout = errors.New("timed out waiting for the IPAM store lock")

// Owner identifies one attachment.
type Owner struct{ ContainerID, IfName string }

// String formats the owner for error messages.
func (o Owner) String() string {
	if o.IfName == "" {
		return o.ContainerID
	}
	return o.ContainerID + "/" + o.IfName
}

// Reservation is one reserved address and who holds it. Owner.IfName is ""
// for files written by old reference versions (content = container ID only);
// Owner is entirely empty for a file left empty or truncated by a crash.
type Reservation struct {
	IP    net.IP
	Owner Owner
}

// Store records reservations. Callers hold Lock around every other call;
// implementations need not lock internally.
type Store interface {
	// Lock takes the exclusive lock, giving up with an error wrapping
	// ErrLockTimeout when ctx is done. A free lock is taken even if ctx
	// has already ended, since that costs nothing and cannot wait.
	Lock(ctx context.Context) error
	Unlock() error
	Close() error
	// Reserve records ip for owner and returns (false, nil) when ip is
	// already reserved by anyone. rangeID names the range set ("0", "1",
	// ...); on success ip also becomes that range set's last reserved IP.
	Reserve(owner Owner, ip net.IP, rangeID string) (bool, error)
	// LastReservedIP returns (nil, nil) when none is recorded or it does
	// not parse.
	LastReservedIP(rangeID string) (net.IP, error)
	GetByOwner(owner Owner) ([]net.IP, error)
	// OwnerOf returns who holds ip; ok is false when nobody does.
	OwnerOf(ip net.IP) (o Owner, ok bool, err error)
	// ReleaseByOwner returns what it released; releasing nothing is not an
	// error.
	ReleaseByOwner(owner Owner) ([]net.IP, error)
	// Release removes one reservation; an absent one is not an error.
	Release(ip net.IP) error
	// List returns every reservation, sorted by address.
	List() ([]Reservation, error)
}

// canonicalIP returns ip in its 4- or 16-byte form, or an error for anything
// that is not an address; both forms of an IPv4 address name the same file.
func canonicalIP(ip net.IP) (net.IP, error) {
	if v4 := ip.To4(); v4 != nil {
		return v4, nil
	}
	if len(ip) == net.IPv6len {
		return ip, nil
	}
	return nil, fmt.Errorf("invalid IP address %v (%d bytes)", ip, len(ip))
}

// normalizeOwner checks owner and trims the container ID as the reference
// does when it writes and compares. A CR or LF in the ID would corrupt the
// "id\r\nifname" file format, and an empty ID would be indistinguishable
// from a file truncated by a crash, so both are refused.
func normalizeOwner(o Owner) (Owner, error) {
	o.ContainerID = strings.TrimSpace(o.ContainerID)
	if o.ContainerID == "" {
		return o, errors.New("empty container ID")
	}
	if strings.ContainsAny(o.ContainerID, "\r\n\x00") || strings.ContainsAny(o.IfName, "\r\n\x00") {
		return o, fmt.Errorf("owner %q contains a line break or NUL", o.String())
	}
	return o, nil
}

// maxRangeIDLen keeps "last_reserved_ip.<rangeID>" within NAME_MAX (255).
const maxRangeIDLen = 255 - len(lastIPPrefix)

// validateRangeID refuses IDs that would not make a single file name.
func validateRangeID(id string) error {
	if id == "" || len(id) > maxRangeIDLen || strings.ContainsAny(id, "/\x00") {
		return fmt.Errorf("invalid range ID %q", id)
	}
	return nil
}

// exactMatch and legacyMatch follow the reference: a record written with an
// interface name belongs to exactly that owner; a legacy record (container
// ID only) belongs to every interface of its container.
func exactMatch(rec, q Owner) bool  { return rec == q }
func legacyMatch(rec, q Owner) bool { return rec.IfName == "" && rec.ContainerID == q.ContainerID }

// compareIP orders addresses by their 16-byte form so v4 sorts before v6 and
// both implementations list in the same order.
func compareIP(a, b net.IP) int { return bytes.Compare(a.To16(), b.To16()) }

func sortIPs(ips []net.IP) { slices.SortFunc(ips, compareIP) }

func sortReservations(rs []Reservation) {
	slices.SortFunc(rs, func(a, b Reservation) int { return compareIP(a.IP, b.IP) })
}
