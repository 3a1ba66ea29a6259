package main

import (
	"testing"

	"github.com/plumbnet/plumb/internal/cniplugin"
)

// FuzzParseConfig: the firewall config parser never panics and rejects
// with a code.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"0.4.0","name":"n","type":"firewall","backend":"nftables","ingressPolicy":"same-bridge","iptablesAdminChainName":"CNI-ADMIN"}`), "")
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"firewall","backend":"firewalld","ingressPolicy":"isolated","iptablesAdminChainName":"a b;c"}`), "K8S_POD_NAME=x")
	f.Fuzz(func(t *testing.T, stdin []byte, args string) {
		if _, err := parseConfig(stdin, args, func() string { return "nftables" }); err != nil && cniplugin.ToCNI(err).Code == 0 {
			t.Fatalf("rejection without a code: %v", err)
		}
	})
}
