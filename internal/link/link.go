// Package link holds the netlink operations plumb's interface plugins share:
// bridges, veth pairs, addresses and routes, each through a netlink handle
// bound to one namespace (so no thread ever switches namespace to use them).
package link

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/netns"
)

// NS is netlink access to one network namespace.
type NS struct {
	H    *netlink.Handle
	Name string            // for messages: "host" or the namespace path
	fd   int               // the namespace, for sockets the handle cannot make
	mu   sync.Mutex        // request may be called from several goroutines
	sock *nl.NetlinkSocket // made on first use by request
}

// Open gives netlink access to n.
func Open(n *netns.NS, name string) (*NS, error) {
	h, err := n.Netlink()
	if err != nil {
		return nil, err
	}
	fd, err := unix.FcntlInt(uintptr(n.Fd()), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("keep namespace %s open: %w", name, err)
	}
	return &NS{H: h, Name: name, fd: fd}, nil
}

// Close releases the handle's sockets and the namespace.
func (n *NS) Close() {
	n.H.Close()
	if n.sock != nil {
		n.sock.Close()
	}
	unix.Close(n.fd)
}

// IsNotFound reports a link that does not exist.
func IsNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// Get finds a link by name; (nil, nil) when absent.
func (n *NS) Get(name string) (netlink.Link, error) {
	l, err := n.H.LinkByName(name)
	if IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find link %s in %s: %w", name, n.Name, err)
	}
	return l, nil
}

// BridgeSpec describes the bridge a network wants.
type BridgeSpec struct {
	Name          string
	MTU           int
	VlanFiltering bool
	Promisc       bool
}

// EnsureBridge returns the bridge, creating it (up, MTU) when missing.
// Concurrent callers racing to create it both succeed.
func (n *NS) EnsureBridge(s BridgeSpec) (*netlink.Bridge, bool, error) {
	l, err := n.Get(s.Name)
	if err != nil {
		return nil, false, err
	}
	created := false
	if l == nil {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = s.Name
		attrs.MTU = s.MTU
		attrs.TxQLen = -1 // keep the kernel's default
		br := &netlink.Bridge{LinkAttrs: attrs}
		if s.VlanFiltering {
			br.VlanFiltering = &s.VlanFiltering
		}
		err := n.H.LinkAdd(br)
		if s.VlanFiltering && errors.Is(err, unix.EOPNOTSUPP) {
			return nil, false, fmt.Errorf("create bridge %s with vlan filtering: this kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING): %w", s.Name, err)
		}
		if err != nil && !errors.Is(err, syscall.EEXIST) {
			return nil, false, fmt.Errorf("create bridge %s in %s: %w", s.Name, n.Name, err)
		}
		created = err == nil
		if l, err = n.H.LinkByName(s.Name); err != nil {
			return nil, false, fmt.Errorf("find bridge %s in %s: %w", s.Name, n.Name, err)
		}
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, false, fmt.Errorf("%s in %s is a %s, not a bridge", s.Name, n.Name, l.Type())
	}
	if s.VlanFiltering && (br.VlanFiltering == nil || !*br.VlanFiltering) {
		if err := n.H.BridgeSetVlanFiltering(br, true); err != nil {
			return nil, created, fmt.Errorf("enable vlan filtering on bridge %s: %w", s.Name, err)
		}
	}
	if s.Promisc && br.Promisc == 0 {
		if err := n.H.SetPromiscOn(br); err != nil {
			return nil, created, fmt.Errorf("set bridge %s promiscuous: %w", s.Name, err)
		}
	}
	if br.Flags&net.FlagUp == 0 {
		if err := n.H.LinkSetUp(br); err != nil {
			return nil, created, fmt.Errorf("set bridge %s up: %w", s.Name, err)
		}
	}
	return br, created, nil
}

// VethSpec describes a veth pair whose peer is created directly inside the
// container namespace under its final name: no move, no rename.
type VethSpec struct {
	HostName    string
	Alias       string // owner tag on the host end, found again by GC
	MasterIndex int    // bridge to attach the host end to
	MTU         int
	PeerName    string
	PeerNS      *netns.NS
	PeerMAC     net.HardwareAddr // nil: kernel-chosen
}

// AddVeth creates the pair and returns the host end, up.
func (n *NS) AddVeth(s VethSpec) (netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = s.HostName
	attrs.MTU = s.MTU
	attrs.MasterIndex = s.MasterIndex
	attrs.Flags = net.FlagUp
	veth := &netlink.Veth{
		LinkAttrs:        attrs,
		PeerName:         s.PeerName,
		PeerNamespace:    netlink.NsFd(s.PeerNS.Fd()),
		PeerHardwareAddr: s.PeerMAC,
		PeerMTU:          uint32(max(s.MTU, 0)),
	}
	if err := n.H.LinkAdd(veth); err != nil {
		// The kernel may have made the pair before refusing the rest of
		// the request (a bridge with no port left answers EXFULL): delete
		// it, or the container keeps an interface that blocks every later
		// ADD. EEXIST means the name was someone else's all along.
		if !errors.Is(err, unix.EEXIST) {
			_ = n.Delete(s.HostName)
		}
		return nil, fmt.Errorf("create veth %s (peer %s in %s): %w", s.HostName, s.PeerName, s.PeerNS.Path(), err)
	}
	host, err := n.H.LinkByName(s.HostName)
	if err != nil {
		return nil, fmt.Errorf("find new veth %s: %w", s.HostName, err)
	}
	if err := n.tagPort(host, s.Alias); err != nil {
		return host, fmt.Errorf("tag veth %s: %w", s.HostName, err)
	}
	return host, nil
}

// tagPort sets a new bridge port's alias and turns off IPv6 address
// generation on it, in one request, before the peer comes up. A bridge
// port never uses an address of its own (the bridge has the host's), yet
// by default each gets a link-local address, with DAD, router
// solicitations and MLD reports sent into its container and three IPv6
// routes in the host's table, which the kernel walks whole at every link
// state change in the namespace (an alias set took 0.28 ms with 6000 such
// routes, 0.05 ms with a handful). Where the link has no IPv6 (disabled
// in the kernel, or an MTU below 1280) only the alias is set.
func (n *NS) tagPort(l netlink.Link, alias string) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(l.Attrs().Index)
	req.AddData(msg)
	if alias != "" {
		req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(alias)))
	}
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	spec.AddRtAttr(unix.AF_INET6, nil).AddRtAttr(unix.IFLA_INET6_ADDR_GEN_MODE, []byte{addrGenModeNone})
	req.AddData(spec)
	_, err := n.request(req, 0)
	if errors.Is(err, unix.EAFNOSUPPORT) {
		if alias == "" {
			return nil
		}
		return n.H.LinkSetAlias(l, alias)
	}
	return err
}

// addrGenModeNone is IN6_ADDR_GEN_MODE_NONE (include/uapi/linux/if_link.h).
const addrGenModeNone = 1

// Delete removes a link by name; absent is success.
func (n *NS) Delete(name string) error {
	l, err := n.Get(name)
	if err != nil || l == nil {
		return err
	}
	if err := n.H.LinkDel(l); err != nil && !IsNotFound(err) {
		return fmt.Errorf("delete link %s in %s: %w", name, n.Name, err)
	}
	return nil
}

// EnsureAddr puts addr on l unless present. Another address of the same
// family in the same subnet is an error unless force, when it is replaced.
func (n *NS) EnsureAddr(l netlink.Link, addr net.IPNet, force bool) error {
	family := netlink.FAMILY_V4
	if addr.IP.To4() == nil {
		family = netlink.FAMILY_V6
	}
	have, err := n.AddrsOf(l, family)
	if err != nil {
		return err
	}
	for _, a := range have {
		if a.IP.Equal(addr.IP) && a.Mask.String() == addr.Mask.String() {
			return nil
		}
		if family == netlink.FAMILY_V6 && a.IP.IsLinkLocalUnicast() {
			continue
		}
		if a.Contains(addr.IP) || addr.Contains(a.IP) {
			if !force {
				return fmt.Errorf("%s already has %s in the subnet of %s (set forceAddress to replace it)", l.Attrs().Name, a.String(), addr.String())
			}
			if err := n.H.AddrDel(l, &netlink.Addr{IPNet: &a}); err != nil {
				return fmt.Errorf("remove %s from %s: %w", a.String(), l.Attrs().Name, err)
			}
		}
	}
	a := &netlink.Addr{IPNet: &addr}
	if family == netlink.FAMILY_V6 {
		a.Flags = unix.IFA_F_NODAD // ours by configuration: usable at once, not tentative
	}
	if err := n.H.AddrAdd(l, a); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("add %s to %s: %w", addr.String(), l.Attrs().Name, err)
	}
	return nil
}

// WaitGone polls, up to timeout, until no link is called name, and reports
// whether none is.
func (n *NS) WaitGone(name string, timeout time.Duration) bool {
	end := time.Now().Add(timeout)
	for {
		if l, err := n.Get(name); err == nil && l == nil {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// WaitOperUp polls, up to timeout, until the link called name is
// operationally up, and reports whether it is. The kernel updates the
// operational state, and tells the bridge about the carrier, in one step
// of its asynchronous link watcher, so "up" also means the bridge port
// forwards.
func (n *NS) WaitOperUp(name string, timeout time.Duration) bool {
	// Backing off from 1 ms to 8 ms: on a loaded host the kernel's worker
	// can be tens of milliseconds late, and each poll costs CPU the worker
	// needs.
	end := time.Now().Add(timeout)
	for pause := time.Millisecond; ; pause = min(2*pause, 8*time.Millisecond) {
		l, err := n.H.LinkByName(name)
		if err != nil {
			return false
		}
		if l.Attrs().OperState == netlink.OperUp {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(pause)
	}
}
