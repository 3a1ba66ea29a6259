package integration

import (
	"encoding/binary"
	"hash/crc32"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/testns"
)

// SCTP port publishing, proved with raw packets: this kernel has SCTP
// conntrack and NAT but no SCTP stack, so nothing can listen or connect.
// A hand-built INIT goes from the external namespace to the host's
// published port through a raw socket; a raw socket in the container shows
// whether it arrived, and where to.

// sctpProto is IPPROTO_SCTP, the IP protocol number of every raw socket here.
const sctpProto = unix.IPPROTO_SCTP

// sctpInit is a 32-byte SCTP packet holding a lone INIT chunk, the first
// packet of an association (and what conntrack wants to see first).
func sctpInit(srcPort, dstPort uint16) []byte {
	b := make([]byte, 32)
	binary.BigEndian.PutUint16(b[0:], srcPort)
	binary.BigEndian.PutUint16(b[2:], dstPort)
	// b[4:8] verification tag: 0, as RFC 9260 requires for an INIT.
	b[12] = 1                                      // chunk type INIT; flags 0
	binary.BigEndian.PutUint16(b[14:], 20)         // chunk length
	binary.BigEndian.PutUint32(b[16:], 0x1badcafe) // initiate tag: nonzero
	binary.BigEndian.PutUint32(b[20:], 65536)      // a_rwnd
	binary.BigEndian.PutUint16(b[24:], 1)          // outbound streams
	binary.BigEndian.PutUint16(b[26:], 1)          // inbound streams
	binary.BigEndian.PutUint32(b[28:], 1)          // initial TSN
	binary.LittleEndian.PutUint32(b[8:], sctpChecksum(b))
	return b
}

// sctpChecksum is CRC32c over the packet with its checksum field zeroed.
// Conntrack drops a packet whose checksum is wrong as invalid, so a wrong
// one would look exactly like "not published". It goes on the wire
// little-endian, as Linux stores it.
func sctpChecksum(pkt []byte) uint32 {
	c := append([]byte(nil), pkt...)
	clear(c[8:12])
	return crc32.Checksum(c, crc32.MakeTable(crc32.Castagnoli))
}

// sctpSeen is what the container's raw socket received.
type sctpSeen struct {
	src, dst         net.IP
	srcPort, dstPort uint16
	checksumOK       bool // NAT rewrote the port and so had to redo the checksum
}

// rawSCTP opens a raw SCTP socket of the family of v4 inside n; the socket
// stays in n after Do returns. An IPv6 receiver asks for the destination
// address (IPV6_PKTINFO), which its payload lacks.
func rawSCTP(t *testing.T, n *netns.NS, v4 bool) int {
	t.Helper()
	fam := unix.AF_INET6
	if v4 {
		fam = unix.AF_INET
	}
	var fd int
	if err := inNS(n, func() (err error) {
		if fd, err = unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, sctpProto); err != nil {
			return err
		}
		if !v4 {
			return unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
		}
		return nil
	}); err != nil {
		t.Fatalf("raw SCTP socket (v4 %v): %v", v4, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// sendSCTPInit sends an INIT from srcPort to host:port out of fd.
func sendSCTPInit(t *testing.T, fd int, host string, srcPort, port uint16) {
	t.Helper()
	ip := net.ParseIP(host)
	var to unix.Sockaddr = &unix.SockaddrInet6{Addr: [16]byte(ip.To16())}
	if ip4 := ip.To4(); ip4 != nil {
		to = &unix.SockaddrInet4{Addr: [4]byte(ip4)}
	}
	if err := unix.Sendto(fd, sctpInit(srcPort, port), 0, to); err != nil {
		t.Fatalf("send SCTP INIT to %s: %v", hp(host, int(port)), err)
	}
}

// recvSCTP waits up to d for a packet from srcPort on the receiving raw
// socket fd (others, such as a retry of an earlier probe, are skipped).
func recvSCTP(t *testing.T, fd int, v4 bool, srcPort uint16, d time.Duration) (sctpSeen, bool) {
	t.Helper()
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	buf, oob := make([]byte, 1500), make([]byte, 128)
	for end := time.Now().Add(d); time.Now().Before(end); {
		n, oobn, _, from, err := unix.Recvmsg(fd, buf, oob, 0)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil {
			t.Fatalf("receive SCTP: %v", err)
		}
		var s sctpSeen
		pkt := buf[:n]
		if v4 { // an IPv4 raw socket gets the IP header too
			s.src, s.dst = net.IP(pkt[12:16]), net.IP(pkt[16:20])
			pkt = pkt[int(pkt[0]&0xf)*4:]
		} else {
			if sa, ok := from.(*unix.SockaddrInet6); ok {
				s.src = net.IP(sa.Addr[:])
			}
			cms, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, cm := range cms {
				if cm.Header.Level == unix.IPPROTO_IPV6 && cm.Header.Type == unix.IPV6_PKTINFO {
					s.dst = net.IP(cm.Data[:16])
				}
			}
		}
		if len(pkt) < 12 {
			continue
		}
		s.srcPort, s.dstPort = binary.BigEndian.Uint16(pkt), binary.BigEndian.Uint16(pkt[2:])
		s.checksumOK = binary.LittleEndian.Uint32(pkt[8:]) == sctpChecksum(pkt)
		if s.srcPort == srcPort {
			return s, true
		}
	}
	return sctpSeen{}, false
}

// TestPortmapSCTP: a published SCTP port is DNATed to the container's
// address and port in both families and for both backends; an unpublished
// port is not, and neither is the published one once portmap's DEL ran.
func TestPortmapSCTP(t *testing.T) {
	const hostPort, ctrPort, otherPort = 9132, 132, 9133
	for i, backend := range pmBackends {
		t.Run(backend, func(t *testing.T) {
			e := NewEnv(t)
			ext := pmExternal(t)
			p := newPMNet(t, "pmsctp-"+backend, 46+i, backend)
			l := e.ConfList(p.conflist(t, "1.1.0"))
			ns := testns.NewNS(t)
			a := e.addPM(l, "ctr-pmsctp-"+backend, ns, "sctp 9132:132")
			// Each probe is a new association from a new source port: a
			// conntrack entry keeps the NAT decision of its first packet, so
			// reusing a port would test the entry, not the rules.
			srcPort := uint16(40000 + 1000*i)
			probe := func(v4 bool, host string, port uint16, wait time.Duration) (sctpSeen, bool) {
				t.Helper()
				srcPort++
				rx, tx := rawSCTP(t, ns, v4), rawSCTP(t, ext, v4)
				sendSCTPInit(t, tx, host, srcPort, port)
				return recvSCTP(t, rx, v4, srcPort, wait)
			}
			// What arrives does so in milliseconds; what must not gets the
			// short wait mustNotConnect gives TCP.
			const arrives, never = 2 * time.Second, 700 * time.Millisecond
			for _, f := range []struct {
				v4       bool
				host     string
				src, ctr net.IP
			}{{true, hostExt4, net.ParseIP(extAddr4), a.ip(true)}, {false, hostExt6, net.ParseIP(extAddr6), a.ip(false)}} {
				s, ok := probe(f.v4, f.host, hostPort, arrives)
				switch {
				case !ok:
					t.Fatalf("SCTP INIT to %s never reached the container", hp(f.host, hostPort))
				case !s.dst.Equal(f.ctr) || s.dstPort != ctrPort:
					t.Errorf("SCTP INIT to %s arrived for %s, want %s", hp(f.host, hostPort), hp(s.dst.String(), int(s.dstPort)), hp(f.ctr.String(), ctrPort))
				case !s.src.Equal(f.src) || s.srcPort != srcPort:
					t.Errorf("SCTP INIT from %s arrived from %s", hp(f.src.String(), int(srcPort)), hp(s.src.String(), int(s.srcPort)))
				case !s.checksumOK:
					t.Errorf("SCTP INIT to %s arrived with a bad checksum: NAT did not redo it", hp(f.host, hostPort))
				}
				if _, ok := probe(f.v4, f.host, otherPort, never); ok {
					t.Errorf("SCTP INIT to the unpublished %s reached the container", hp(f.host, otherPort))
				}
			}
			// portmap's DEL alone: the container keeps its interface, so
			// only the rules stand between the packet and the container.
			pmOK(t, portmapCall(t, "DEL", p, a, nil))
			for _, host := range []string{hostExt4, hostExt6} {
				if _, ok := probe(host == hostExt4, host, hostPort, never); ok {
					t.Errorf("SCTP INIT to %s reached the container after DEL", hp(host, hostPort))
				}
			}
			if err := e.CNI.DelNetworkList(e.Ctx(), l, a.RT); err != nil {
				t.Fatalf("DEL: %v", err)
			}
		})
	}
}
