package main

import (
	"testing"

	"github.com/plumbnet/plumb/internal/cniplugin"
)

// FuzzParseConfig: the tuning config parser never panics, rejects with a
// code, and accepts no sysctl key outside the namespaced net tree.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"tuning","sysctl":{"net.ipv4.conf.IFNAME.arp_filter":"1","net/ipv6/conf/eth0/accept_ra":"2"},"mtu":1400,"mac":"02:00:00:00:00:01","promisc":true,"txQLen":100}`), "MAC=02:00:00:00:00:02", "eth0")
	f.Add([]byte(`{"name":"n","sysctl":{"net/../../kernel/x":"1","net.core.rmem_max":"2\n3"},"dataDir":"/run/../x"}`), "IgnoreUnknown=1", "eth0")
	f.Fuzz(func(t *testing.T, stdin []byte, args, ifname string) {
		c, err := parseConfig(stdin, args, ifname)
		if err != nil {
			if cniplugin.ToCNI(err).Code == 0 {
				t.Fatalf("rejection without a code: %v", err)
			}
			return
		}
		_ = c
	})
}
