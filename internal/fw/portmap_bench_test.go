package fw

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// pmBackend makes a backend over an empty firewall.
func pmBackend(b *testing.B, name string) PortMapper {
	resetFirewall(b)
	if name == "iptables" {
		m, err := NewIPTPorts()
		if err != nil {
			b.Fatal(err)
		}
		m.LockPath = testLock(b)
		return m
	}
	m, err := NewNFTPorts()
	if err != nil {
		b.Fatal(err)
	}
	m.LockPath = testLock(b)
	return m
}

// reportAddDel times b.N ADD+DEL pairs of r and reports each half; DEL is
// told the mappings, as the plugin tells it those of its config. With
// a gap, each call starts after a pause (not timed) in which the kernel
// finishes what the previous call left it (see nftSession.close), as when
// calls come from separate plugin processes at a runtime's pace; without,
// calls run back to back and each pays for the previous one's cleanup.
func reportAddDel(b *testing.B, m PortMapper, r PortRule, gap time.Duration) {
	ctx := context.Background()
	b.ResetTimer()
	var add, del time.Duration
	for range b.N {
		pause(b, gap)
		start := time.Now()
		if err := m.AddPorts(ctx, r); err != nil {
			b.Fatal(err)
		}
		add += time.Since(start)
		pause(b, gap)
		start = time.Now()
		if _, err := DelPortsKnown(ctx, m, r.Owner, r.Mappings); err != nil {
			b.Fatal(err)
		}
		del += time.Since(start)
	}
	b.ReportMetric(float64(add.Microseconds())/float64(b.N), "add-µs/op")
	b.ReportMetric(float64(del.Microseconds())/float64(b.N), "del-µs/op")
}

func pause(b *testing.B, d time.Duration) {
	if d > 0 {
		b.StopTimer()
		time.Sleep(d)
		b.StartTimer()
	}
}

// gaps are the two paces benchmarked: back to back, and 20 ms apart.
var gaps = []time.Duration{0, 20 * time.Millisecond}

// BenchmarkPortsAddDel times one ADD and one DEL of a container publishing
// a TCP and a UDP port on IPv4 and IPv6, next to n other containers that
// publish two ports each: the cost should not grow with n. A call that
// deleted anything pays, at the latest in the next call, one RCU grace
// period in the kernel (see nftSession.close).
func BenchmarkPortsAddDel(b *testing.B) {
	requireThrowawayNS(b)
	ctx := context.Background()
	for _, backend := range []string{"nftables", "iptables"} {
		for _, n := range []int{1, 1000} {
			m := pmBackend(b, backend)
			for i := range n {
				o := Owner{Network: "net1", ContainerID: fmt.Sprintf("fill-%d", i), IfName: "eth0"}
				addr := fmt.Sprintf("10.%d.%d.%d/8", 100+i/65536, i/256%256, i%256)
				if err := m.AddPorts(ctx, pmRule(b, o, []string{addr}, fmt.Sprintf("tcp %d:80", 10000+i), fmt.Sprintf("udp %d:53", 10000+i))); err != nil {
					b.Fatal(err)
				}
			}
			for _, gap := range gaps {
				b.Run(fmt.Sprintf("%s/others=%d/gap=%v", backend, n, gap), func(b *testing.B) {
					reportAddDel(b, m, pmRule(b, ownerA, dualA, "tcp 8080:80", "udp 5353:53", "tcp6 8080:80", "udp6 5353:53"), gap)
				})
			}
		}
	}
}

// BenchmarkPortsRange times the ADD and DEL of one container publishing
// 1,000 ports (a range a runtime expanded into mappings).
func BenchmarkPortsRange(b *testing.B) {
	requireThrowawayNS(b)
	var maps []string
	for i := range 1000 {
		maps = append(maps, fmt.Sprintf("tcp %d:%d", 20000+i, 30000+i))
	}
	for _, backend := range []string{"nftables", "iptables"} {
		m := pmBackend(b, backend)
		for _, gap := range gaps {
			b.Run(fmt.Sprintf("%s/mappings=1000/gap=%v", backend, gap), func(b *testing.B) {
				reportAddDel(b, m, pmRule(b, ownerA, v4A, maps...), gap)
			})
		}
	}
}
