package link

import (
	"encoding/binary"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Reading or writing /proc/sys costs a path lookup that grows with the
// number of network namespaces: their sysctl directories share dentry hash
// chains ("conf", "ipv4", every container's "eth0"), which the kernel scans
// entry by entry. On a host with a thousand containers each access took
// about a millisecond. These go through netlink instead, at a constant
// cost.

// Keys of net.ipv4.conf.<if>.* (IPV4_DEVCONF_*, include/uapi/linux/ip.h).
const (
	IPv4ConfARPNotify     = 22
	IPv4ConfRouteLocalnet = 26
)

// Netconf attributes (include/uapi/linux/netconf.h).
const (
	netconfaIfindex    = 1
	netconfaForwarding = 2
	netconfaIfindexAll = -1
)

// request runs one netlink request in n's namespace and returns the
// replies, on a socket made once per NS with strict checking, under which
// the kernel filters dumps by the request's fields (see AddrsOf).
func (n *NS) request(req *nl.NetlinkRequest, resType uint16) ([][]byte, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.sock == nil {
		s, err := nl.GetNetlinkSocketAt(vnetns.NsHandle(n.fd), vnetns.None(), unix.NETLINK_ROUTE)
		if err != nil {
			return nil, err
		}
		if err := unix.SetsockoptInt(s.GetFd(), unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1); err != nil {
			s.Close()
			return nil, err
		}
		n.sock = s
	}
	req.Sockets = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: n.sock}}
	return req.Execute(unix.NETLINK_ROUTE, resType)
}

// SetIPv4Conf sets net.ipv4.conf.<l>.<key> to v.
func (n *NS) SetIPv4Conf(l netlink.Link, key int, v uint32) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(l.Attrs().Index)
	req.AddData(msg)
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	spec.AddRtAttr(unix.AF_INET, nil).AddRtAttr(unix.IFLA_INET_CONF, nil).AddRtAttr(key, nl.Uint32Attr(v))
	req.AddData(spec)
	if _, err := n.request(req, 0); err != nil {
		return fmt.Errorf("set IPv4 setting %d of %s in %s: %w", key, l.Attrs().Name, n.Name, err)
	}
	return nil
}

// IPv4Conf reads net.ipv4.conf.<l>.<key> from the link's own description.
func (n *NS) IPv4Conf(l netlink.Link, key int) (uint32, error) {
	fail := func(err error) (uint32, error) {
		return 0, fmt.Errorf("read IPv4 setting %d of %s in %s: %w", key, l.Attrs().Name, n.Name, err)
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, 0) // no ACK: it would linger on the shared socket
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(l.Attrs().Index)
	req.AddData(msg)
	msgs, err := n.request(req, unix.RTM_NEWLINK)
	if err != nil {
		return fail(err)
	}
	for _, m := range msgs {
		attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfInfomsg:])
		if err != nil {
			return fail(err)
		}
		for _, a := range attrs {
			if a.Attr.Type&^unix.NLA_F_NESTED != unix.IFLA_AF_SPEC {
				continue
			}
			conf, ok := nested(a.Value, unix.AF_INET, unix.IFLA_INET_CONF)
			if ok && len(conf) >= 4*key {
				// An array of u32 in host order, key 1 first.
				return binary.NativeEndian.Uint32(conf[4*(key-1):]), nil
			}
		}
	}
	return fail(fmt.Errorf("no IPv4 settings in the link's description"))
}

// nested follows a path of attribute types through nested attributes.
func nested(b []byte, path ...uint16) ([]byte, bool) {
	for _, t := range path {
		attrs, err := nl.ParseRouteAttr(b)
		if err != nil {
			return nil, false
		}
		found := false
		for _, a := range attrs {
			if a.Attr.Type&^unix.NLA_F_NESTED == t {
				b, found = a.Value, true
				break
			}
		}
		if !found {
			return nil, false
		}
	}
	return b, true
}

// Forwarding reports whether forwarding is on for every interface of the
// family (net.ipv4.ip_forward, net.ipv6.conf.all.forwarding).
func (n *NS) Forwarding(family int) (bool, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETNETCONF, 0)
	req.AddData(&netconfMsg{family: uint8(family)})
	all := int32(netconfaIfindexAll)
	req.AddData(nl.NewRtAttr(netconfaIfindex, nl.Uint32Attr(uint32(all))))
	msgs, err := n.request(req, unix.RTM_NEWNETCONF)
	if err != nil {
		return false, fmt.Errorf("read forwarding (family %d) in %s: %w", family, n.Name, err)
	}
	for _, m := range msgs {
		attrs, err := nl.ParseRouteAttr(m[4:]) // netconfmsg, padded to 4
		if err != nil {
			return false, fmt.Errorf("read forwarding (family %d) in %s: %w", family, n.Name, err)
		}
		for _, a := range attrs {
			if a.Attr.Type == netconfaForwarding && len(a.Value) >= 4 {
				return binary.NativeEndian.Uint32(a.Value) != 0, nil
			}
		}
	}
	return false, fmt.Errorf("read forwarding (family %d) in %s: not in the answer", family, n.Name)
}

// netconfMsg is struct netconfmsg, padded as netlink aligns it.
type netconfMsg struct{ family uint8 }

func (m *netconfMsg) Len() int { return 4 }
func (m *netconfMsg) Serialize() []byte {
	return []byte{m.family, 0, 0, 0}
}
