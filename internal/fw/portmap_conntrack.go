package fw

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// FlushUDPConntrack deletes the conntrack entries of UDP flows whose
// original destination port is one of ports, in both families, through
// netlink (no exec of conntrack). A long-lived UDP flow keeps its entry, and
// with it the NAT decision (or its absence) made for its first packet, as
// long as packets keep coming: after a port is published, or its container
// replaced, the flow would otherwise never reach the new container. One
// conntrack dump per family, whatever the number of ports.
func FlushUDPConntrack(ports []uint16) error {
	if len(ports) == 0 {
		return nil
	}
	f := udpPortFilter{}
	for _, p := range ports {
		f[p] = true
	}
	var errs []error
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam, f); err != nil {
			errs = append(errs, fmt.Errorf("delete UDP conntrack entries (family %d) to ports %v: %w", fam, ports, err))
		}
	}
	return errors.Join(errs...)
}

// udpPortFilter matches UDP flows by original destination port.
type udpPortFilter map[uint16]bool

func (f udpPortFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	return flow.Forward.Protocol == unix.IPPROTO_UDP && f[flow.Forward.DstPort]
}
