package main

import (
	"testing"

	"github.com/plumbnet/plumb/internal/cniplugin"
)

// FuzzParseConfig: the bandwidth config parser never panics, rejects with
// a code, and every accepted limit is within the kernel's range.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"bandwidth","ingressRate":8000000,"ingressBurst":80000,"egressRate":1000000,"egressBurst":4294967295}`), "")
	f.Add([]byte(`{"name":"n","runtimeConfig":{"bandwidth":{"ingressRate":1,"egressBurst":-1}},"shapedSubnets":["10.0.0.0/8"]}`), "X=1")
	f.Fuzz(func(t *testing.T, stdin []byte, args string) {
		c, err := parseConfig(stdin, args)
		if err != nil {
			if cniplugin.ToCNI(err).Code == 0 {
				t.Fatalf("rejection without a code: %v", err)
			}
			return
		}
		for _, s := range []Shape{c.Ingress, c.Egress} {
			if (s.Rate == 0) != (s.Burst == 0) || s.Rate > maxRate || s.Burst > maxBurst {
				t.Fatalf("accepted an invalid limit: %+v", s)
			}
		}
	})
}
