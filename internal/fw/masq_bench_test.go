package fw

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkMasqAddDel times one ADD plus one DEL (with the address hint)
// next to n other containers: with nftables the cost should not grow with n.
// A call that deleted anything pays, at the latest in the next call, one
// RCU grace period in the kernel (see nftSession.close).
func BenchmarkMasqAddDel(b *testing.B) {
	requireThrowawayNS(b)
	ctx := context.Background()
	for _, backend := range []string{"nftables", "iptables"} {
		for _, n := range []int{10, 1000} {
			b.Run(fmt.Sprintf("%s/n=%d", backend, n), func(b *testing.B) {
				resetFirewall(b)
				var m Masquerader
				if backend == "nftables" {
					nm, err := NewNFTMasq()
					if err != nil {
						b.Fatal(err)
					}
					nm.LockPath = testLock(b)
					m = nm
				} else {
					im, err := NewIPTMasq()
					if err != nil {
						b.Fatal(err)
					}
					im.LockPath = testLock(b)
					m = im
				}
				for i := range n {
					o := Owner{Network: "net1", ContainerID: fmt.Sprintf("fill-%d", i), IfName: "eth0"}
					if err := m.AddMasq(ctx, masqRule(b, o, fmt.Sprintf("10.%d.%d.%d/8", 100+i/65536, i/256%256, i%256))); err != nil {
						b.Fatal(err)
					}
				}
				r := masqRule(b, ownerA, "10.88.0.2/24")
				b.ResetTimer()
				var add, del time.Duration
				for range b.N {
					start := time.Now()
					if err := m.AddMasq(ctx, r); err != nil {
						b.Fatal(err)
					}
					mid := time.Now()
					if err := m.DelMasq(ctx, ownerA, ips("10.88.0.2")); err != nil {
						b.Fatal(err)
					}
					add, del = add+mid.Sub(start), del+time.Since(mid)
				}
				b.ReportMetric(float64(add.Microseconds())/float64(b.N), "add-µs/op")
				b.ReportMetric(float64(del.Microseconds())/float64(b.N), "del-µs/op")
			})
		}
	}
}
