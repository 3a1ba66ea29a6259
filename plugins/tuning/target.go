package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/link"
	"github.com/plumbnet/plumb/internal/netns"
)

// Target is what tuning changes: one container interface and the sysctls of
// its namespace.
type Target interface {
	// Read returns the current value of every field set in which. A sysctl
	// that cannot be read (write-only) is left out; one that does not exist
	// is an error wrapping fs.ErrNotExist; a missing interface, errNoLink.
	Read(which Settings) (Settings, error)
	// Write applies every field set in s: interface attributes first (an MTU
	// change resets per-interface IPv6 sysctls such as mtu), then sysctls.
	Write(s Settings) error
	Close() error
}

// errNoLink reports that the container interface does not exist.
var errNoLink = errors.New("interface not found")

// errInitNS refuses to tune the host's own namespace.
var errInitNS = errors.New("is the host's initial network namespace")

const sysctlRoot = "/proc/sys/"

// nsTarget reaches the interface through a netlink handle bound to the
// container namespace and its sysctls from a thread inside it.
type nsTarget struct {
	ns     *netns.NS
	h      *netlink.Handle
	ifname string
}

var _ Target = (*nsTarget)(nil)

// openTarget opens the namespace at path; errors wrap netns.ErrGone or
// netns.ErrNotNetNS when it is not usable.
func openTarget(path, ifname string) (Target, error) {
	n, err := netns.Open(path)
	if err != nil {
		return nil, err
	}
	if isInitNS(n) {
		n.Close()
		return nil, fmt.Errorf("netns %s %w", path, errInitNS)
	}
	h, err := n.Netlink()
	if err != nil {
		n.Close()
		return nil, err
	}
	return &nsTarget{ns: n, h: h, ifname: ifname}, nil
}

// isInitNS reports whether n is PID 1's network namespace, the one whose
// sysctls are the host's.
func isInitNS(n *netns.NS) bool {
	var a, b unix.Stat_t
	if unix.Fstat(n.Fd(), &a) != nil || unix.Stat("/proc/1/ns/net", &b) != nil {
		return false
	}
	return a.Dev == b.Dev && a.Ino == b.Ino
}

func (t *nsTarget) Close() error {
	t.h.Close()
	return t.ns.Close()
}

func (t *nsTarget) iface() (netlink.Link, error) {
	l, err := t.h.LinkByName(t.ifname)
	if link.IsNotFound(err) {
		return nil, fmt.Errorf("%s in %s: %w", t.ifname, t.ns.Path(), errNoLink)
	}
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", t.ifname, t.ns.Path(), err)
	}
	return l, nil
}

func (t *nsTarget) Read(which Settings) (Settings, error) {
	var got Settings
	if which.HasLink() {
		l, err := t.iface()
		if err != nil {
			return got, err
		}
		a := l.Attrs()
		if which.MAC != "" {
			got.MAC = a.HardwareAddr.String()
		}
		if which.MTU != 0 {
			got.MTU = a.MTU
		}
		if which.Promisc != nil {
			on := a.RawFlags&unix.IFF_PROMISC != 0
			got.Promisc = &on
		}
		if which.Allmulti != nil {
			on := a.RawFlags&unix.IFF_ALLMULTI != 0
			got.Allmulti = &on
		}
		if which.TxQLen != nil {
			q := a.TxQLen
			got.TxQLen = &q
		}
	}
	if len(which.Sysctl) == 0 {
		return got, nil
	}
	got.Sysctl = map[string]string{}
	err := t.ns.Do(func() error {
		for _, key := range sortedKeys(which.Sysctl) {
			p := sysctlRoot + key
			if _, err := os.Stat(p); err != nil {
				return fmt.Errorf("sysctl %s: %w", key, err)
			}
			b, err := os.ReadFile(p)
			if errors.Is(err, fs.ErrPermission) {
				continue // write-only (e.g. route/flush): nothing to save or compare
			}
			if err != nil {
				return fmt.Errorf("read sysctl %s: %w", key, err)
			}
			got.Sysctl[key] = strings.TrimRight(string(b), "\n")
		}
		return nil
	})
	return got, err
}

func (t *nsTarget) Write(s Settings) error {
	if s.HasLink() {
		if err := t.writeLink(s); err != nil {
			return err
		}
	}
	if len(s.Sysctl) == 0 {
		return nil
	}
	return t.ns.Do(func() error {
		for _, key := range sortedKeys(s.Sysctl) {
			if err := writeSysctl(key, s.Sysctl[key]); err != nil {
				return err
			}
		}
		return nil
	})
}

func (t *nsTarget) writeLink(s Settings) error {
	l, err := t.iface()
	if err != nil {
		return err
	}
	in := fmt.Sprintf("%s in %s", t.ifname, t.ns.Path())
	if s.MAC != "" {
		hw, err := net.ParseMAC(s.MAC)
		if err != nil {
			return fmt.Errorf("mac %q: %w", s.MAC, err)
		}
		if err := t.h.LinkSetHardwareAddr(l, hw); err != nil {
			return fmt.Errorf("set mac of %s to %s: %w", in, s.MAC, err)
		}
	}
	if s.MTU != 0 {
		if err := t.h.LinkSetMTU(l, s.MTU); err != nil {
			return fmt.Errorf("set mtu of %s to %d: %w", in, s.MTU, err)
		}
	}
	if s.Promisc != nil {
		set := t.h.SetPromiscOff
		if *s.Promisc {
			set = t.h.SetPromiscOn
		}
		if err := set(l); err != nil {
			return fmt.Errorf("set promiscuous mode of %s to %v: %w", in, *s.Promisc, err)
		}
	}
	if s.Allmulti != nil {
		set := t.h.LinkSetAllmulticastOff
		if *s.Allmulti {
			set = t.h.LinkSetAllmulticastOn
		}
		if err := set(l); err != nil {
			return fmt.Errorf("set all-multicast mode of %s to %v: %w", in, *s.Allmulti, err)
		}
	}
	if s.TxQLen != nil {
		if err := t.h.LinkSetTxQLen(l, *s.TxQLen); err != nil {
			return fmt.Errorf("set txqueuelen of %s to %d: %w", in, *s.TxQLen, err)
		}
	}
	return nil
}

// writeSysctl writes an existing sysctl file without creating or truncating
// anything: /proc/sys takes the value in one write.
func writeSysctl(key, value string) error {
	f, err := os.OpenFile(sysctlRoot+key, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("sysctl %s: %w", key, err)
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q to sysctl %s: %w", value, key, err)
	}
	return nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
