package main

import (
	"testing"

	"github.com/plumbnet/plumb/internal/cniplugin"
)

// FuzzParseConfig: no config or CNI_ARGS makes the parser panic, and every
// rejection carries a CNI error code.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam":{"type":"host-local"}}`), "")
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"bridge","bridge":"br0","mtu":1400,"vlan":5,"vlanTrunk":[{"minID":1,"maxID":9},{"id":3}],"ipam":{"type":"host-local"},"runtimeConfig":{"mac":"02:00:00:00:00:01"}}`), "IgnoreUnknown=1;MAC=02:00:00:00:00:02")
	f.Add([]byte(`{"name":`), "K8S_POD_NAME=x")
	f.Fuzz(func(t *testing.T, stdin []byte, args string) {
		c, err := parseConfig(stdin, args)
		if err != nil {
			if cniplugin.ToCNI(err).Code == 0 {
				t.Fatalf("rejection without a code: %v", err)
			}
			return
		}
		if validIfName(c.Bridge) != nil || c.Vlan < 0 || c.Vlan > maxVlanID || (c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535)) {
			t.Fatalf("accepted an invalid config: %+v", c)
		}
		_ = hostVethName(string(stdin), args)
	})
}
