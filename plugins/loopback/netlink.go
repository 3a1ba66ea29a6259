package main

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/netns"
)

// nlLoopback is lo reached through a netlink handle bound to its namespace.
type nlLoopback struct {
	h    *netlink.Handle
	link netlink.Link
}

func openLoopback(path string) (Loopback, error) {
	n, err := netns.Open(path)
	if err != nil {
		return nil, err
	}
	defer n.Close()
	h, err := n.Netlink()
	if err != nil {
		return nil, err
	}
	link, err := h.LinkByName("lo")
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("find lo in %s: %w", path, err)
	}
	return &nlLoopback{h: h, link: link}, nil
}

func (l *nlLoopback) SetUp(up bool) error {
	if up {
		return l.h.LinkSetUp(l.link)
	}
	return l.h.LinkSetDown(l.link)
}

func (l *nlLoopback) State() (bool, []net.IPNet, error) {
	link, err := l.h.LinkByIndex(l.link.Attrs().Index)
	if err != nil {
		return false, nil, err
	}
	list, err := l.h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return false, nil, err
	}
	addrs := make([]net.IPNet, 0, len(list))
	for _, a := range list {
		addrs = append(addrs, *a.IPNet)
	}
	return link.Attrs().Flags&net.FlagUp != 0, addrs, nil
}

func (l *nlLoopback) Close() error {
	l.h.Close()
	return nil
}
