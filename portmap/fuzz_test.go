package main

import (
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/fw"
)

// FuzzConfigAndRules: no config, CNI_ARGS, mapping list or prevResult makes
// the parser or the rule builder panic; rejections carry a code, and every
// rule built has ports in range.
func FuzzConfigAndRules(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"portmap","runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"},{"hostPort":53,"containerPort":53,"protocol":"UDP","hostIP":"127.0.0.1"}]},
	  "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.0.0.2/24","interface":0},{"address":"fd00::2/64","interface":0}]}}`), "")
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"portmap","backend":"iptables","markMasqBit":40,"conditionsV4":["-s","1.2.3.4"],"runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":70000,"protocol":"icmp","hostIP":"x"}]}}`), "IgnoreUnknown=1")
	f.Add([]byte(`{"name":"n","snat":false,"masqAll":true,"externalSetMarkChain":"KUBE-MARK-MASQ"}`), "")
	f.Fuzz(func(t *testing.T, stdin []byte, args string) {
		c, err := parseConfig(stdin, args)
		if err != nil {
			if cniplugin.ToCNI(err).Code == 0 {
				t.Fatalf("rejection without a code: %v", err)
			}
			return
		}
		maps, err := c.Mappings()
		if err != nil {
			if cniplugin.ToCNI(err).Code == 0 {
				t.Fatalf("rejection without a code: %v", err)
			}
			return
		}
		prev, _ := cniplugin.PrevResult(&c.conf.PluginConf)
		if prev == nil {
			prev = &current.Result{}
		}
		r, err := Rule(c, fw.Owner{Network: "n", ContainerID: "c", IfName: "eth0"}, maps, prev, "eth0")
		if err != nil {
			return
		}
		for _, m := range r.Mappings {
			if m.HostPort == 0 || m.ContainerPort == 0 {
				t.Fatalf("rule with port 0: %+v", m)
			}
		}
	})
}
