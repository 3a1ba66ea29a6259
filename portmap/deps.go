package main

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/fw"
	"github.com/plumbnet/plumb/internal/link"
	"github.com/plumbnet/plumb/internal/netns"
)

// New returns the portmap plugin wired to the real system.
func New() *Plugin {
	return &Plugin{
		Backend:  newMapper,
		FlushUDP: fw.FlushUDPConntrack,
		Localnet: hostLocalnet{},
		Warn:     func(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) },
	}
}

func newMapper(backend string) (fw.PortMapper, error) {
	if backend == backendIPT {
		return fw.NewIPTPorts()
	}
	return fw.NewNFTPorts()
}

// hostLocalnet sets route_localnet in the plugin's (host) namespace on the
// interface the kernel routes the container address through, through
// netlink: a /proc/sys access costs about a millisecond on a host with a
// thousand containers (see link.SetIPv4Conf).
type hostLocalnet struct{}

// routeLink opens the host namespace and finds the interface the host
// routes ip through.
func routeLink(ip net.IP) (*link.NS, netlink.Link, error) {
	hns, err := netns.Current()
	if err != nil {
		return nil, nil, err
	}
	defer hns.Close()
	h, err := link.Open(hns, "host")
	if err != nil {
		return nil, nil, err
	}
	routes, err := h.H.RouteGet(ip)
	if err == nil && len(routes) == 0 {
		err = errors.New("no route")
	}
	if err != nil {
		h.Close()
		return nil, nil, fmt.Errorf("route to %s: %w", ip, err)
	}
	l, err := h.H.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		h.Close()
		return nil, nil, fmt.Errorf("interface of the route to %s: %w", ip, err)
	}
	return h, l, nil
}

func (hostLocalnet) Enabled(ip net.IP) (string, bool, error) {
	h, l, err := routeLink(ip)
	if err != nil {
		return "", false, err
	}
	defer h.Close()
	v, err := h.IPv4Conf(l, link.IPv4ConfRouteLocalnet)
	return l.Attrs().Name, v == 1, err
}

func (hostLocalnet) Enable(ip net.IP) (string, error) {
	h, l, err := routeLink(ip)
	if err != nil {
		return "", err
	}
	defer h.Close()
	if v, err := h.IPv4Conf(l, link.IPv4ConfRouteLocalnet); err == nil && v == 1 {
		return l.Attrs().Name, nil
	}
	return l.Attrs().Name, h.SetIPv4Conf(l, link.IPv4ConfRouteLocalnet, 1)
}
