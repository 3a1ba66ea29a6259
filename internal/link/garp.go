package link

import (
	"encoding/binary"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// SendGratuitousARP broadcasts an ARP announcement of ip from the interface
// with index ifindex and hardware address mac, in the namespace the calling
// thread is in (run it under netns.NS.Do): peers and the bridge learn the
// address's new owner at once instead of after their caches expire.
func SendGratuitousARP(ifindex int, mac net.HardwareAddr, ip net.IP) error {
	ip4 := ip.To4()
	if ip4 == nil || len(mac) != 6 {
		return fmt.Errorf("gratuitous ARP needs an IPv4 address and an Ethernet MAC")
	}
	proto := htons(unix.ETH_P_ARP)
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, int(proto))
	if err != nil {
		return fmt.Errorf("open packet socket: %w", err)
	}
	defer unix.Close(fd)
	// ARP request, sender and target both ip: the form arping -U sends.
	pkt := make([]byte, 28)
	binary.BigEndian.PutUint16(pkt[0:], 1)      // hardware type Ethernet
	binary.BigEndian.PutUint16(pkt[2:], 0x0800) // protocol IPv4
	pkt[4], pkt[5] = 6, 4
	binary.BigEndian.PutUint16(pkt[6:], 1) // request
	copy(pkt[8:], mac)
	copy(pkt[14:], ip4)
	copy(pkt[24:], ip4)
	to := &unix.SockaddrLinklayer{Protocol: proto, Ifindex: ifindex, Halen: 6, Addr: [8]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}}
	if err := unix.Sendto(fd, pkt, 0, to); err != nil {
		return fmt.Errorf("send gratuitous ARP for %s: %w", ip4, err)
	}
	return nil
}

func htons(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}
