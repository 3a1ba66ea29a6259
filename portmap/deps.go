package main

import (
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/fw"
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
// interface the kernel routes the container address through.
type hostLocalnet struct{}

// routeDev names the interface the host routes ip through.
func routeDev(ip net.IP) (string, error) {
	routes, err := netlink.RouteGet(ip)
	if err != nil {
		return "", fmt.Errorf("route to %s: %w", ip, err)
	}
	for _, r := range routes {
		l, err := netlink.LinkByIndex(r.LinkIndex)
		if err != nil {
			return "", fmt.Errorf("interface of the route to %s: %w", ip, err)
		}
		return l.Attrs().Name, nil
	}
	return "", fmt.Errorf("no route to %s", ip)
}

func localnetKey(dev string) string { return "/proc/sys/net/ipv4/conf/" + dev + "/route_localnet" }

func (hostLocalnet) Enabled(ip net.IP) (string, bool, error) {
	dev, err := routeDev(ip)
	if err != nil {
		return "", false, err
	}
	v, err := os.ReadFile(localnetKey(dev))
	if err != nil {
		return dev, false, fmt.Errorf("read %s: %w", localnetKey(dev), err)
	}
	return dev, strings.TrimSpace(string(v)) == "1", nil
}

func (h hostLocalnet) Enable(ip net.IP) (string, error) {
	dev, on, err := h.Enabled(ip)
	if err != nil || on {
		return dev, err
	}
	if err := os.WriteFile(localnetKey(dev), []byte("1"), 0o644); err != nil {
		return dev, fmt.Errorf("write %s: %w", localnetKey(dev), err)
	}
	return dev, nil
}
