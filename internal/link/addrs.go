package link

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// AddrsOf returns the addresses of family on l. netlink's AddrList dumps
// every address in the namespace and filters here, which on a host with a
// thousand veths (each with its IPv6 link-local address) costs every ADD a
// thousand-entry dump; with strict checking the kernel dumps l's alone.
func (n *NS) AddrsOf(l netlink.Link, family int) ([]net.IPNet, error) {
	fail := func(err error) ([]net.IPNet, error) {
		return nil, fmt.Errorf("list addresses of %s in %s: %w", l.Attrs().Name, n.Name, err)
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	msg := nl.NewIfAddrmsg(family)
	msg.Index = uint32(l.Attrs().Index)
	req.AddData(msg)
	msgs, err := n.request(req, unix.RTM_NEWADDR)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fail(err)
	}
	var out []net.IPNet
	for _, m := range msgs {
		ifa := nl.DeserializeIfAddrmsg(m)
		if int(ifa.Index) != l.Attrs().Index || int(ifa.Family) != family {
			continue // a kernel without strict dumps sends everything
		}
		attrs, err := nl.ParseRouteAttr(m[ifa.Len():])
		if err != nil {
			return fail(err)
		}
		var ip net.IP
		for _, a := range attrs {
			switch a.Attr.Type {
			case unix.IFA_LOCAL: // the interface's own address on point-to-point links
				ip = net.IP(a.Value)
			case unix.IFA_ADDRESS:
				if ip == nil {
					ip = net.IP(a.Value)
				}
			}
		}
		if ip == nil {
			continue
		}
		bits := 8 * len(ip)
		out = append(out, net.IPNet{IP: append(net.IP(nil), ip...), Mask: net.CIDRMask(int(ifa.Prefixlen), bits)})
	}
	return out, nil
}
