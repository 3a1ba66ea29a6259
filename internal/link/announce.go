package link

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// Announce makes the kernel send an ARP request from l for target, with the
// interface's own address as sender. Every host on the segment that has an
// entry for that address updates it to l's MAC (Linux overrides entries
// older than its locktime from any ARP's sender fields), so a reused
// address reaches its new owner at once. It is one netlink message (NTF_USE:
// "resolve as if traffic wanted it"), where a packet socket would cost an
// RCU grace period (5-15 ms) when closed.
func (n *NS) Announce(l netlink.Link, target net.IP) error {
	err := n.H.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, IP: target, Flags: netlink.NTF_USE})
	if err != nil {
		return fmt.Errorf("announce on %s via %s: %w", l.Attrs().Name, target, err)
	}
	return nil
}
