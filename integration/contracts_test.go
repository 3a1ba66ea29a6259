package integration

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	types040 "github.com/containernetworking/cni/pkg/types/040"

	"github.com/plumbnet/plumb/internal/testns"
)

// TestEmptyNetnsDelBeforeAdd: nerdctl sends a DEL with an empty CNI_NETNS
// before every ADD; it succeeds and changes nothing.
func TestEmptyNetnsDelBeforeAdd(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "nerd", Bridge: "plnerd", Subnet4: "10.78.0.0/24", DataDir: t.TempDir(),
		Extra: map[string]any{"ipMasq": true, "macspoofchk": true}}
	l := e.ConfList(bn.conflist("1.0.0"))
	before := rulesetLines(t)
	links := testns.Links(t)
	for i := 0; i < 2; i++ {
		if err := e.CNI.DelNetworkList(e.Ctx(), l, &libcni.RuntimeConf{ContainerID: "ctr-nerd", NetNS: "", IfName: "eth0"}); err != nil {
			t.Fatalf("DEL with empty CNI_NETNS: %v", err)
		}
	}
	after := testns.Links(t)
	if len(after) != len(links) || strings.Join(rulesetLines(t), "\n") != strings.Join(before, "\n") {
		t.Fatal("DEL of an unknown container changed links or rules")
	}
	a := e.add(l, "ctr-nerd", testns.NewNS(t))
	e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
}

// TestKubeletArgs: the CNI_ARGS kubelet and CRI send pass every plugin of
// the chain; an unknown key fails only without IgnoreUnknown=1.
func TestKubeletArgs(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "kargs", Bridge: "plkargs", Subnet4: "10.79.0.0/24", DataDir: t.TempDir()}
	raw := `{"cniVersion":"1.0.0","name":"kargs","plugins":[{"type":"bridge","bridge":"plkargs","isGateway":true,
	  "ipam":{"type":"host-local","dataDir":"` + bn.DataDir + `","subnet":"10.79.0.0/24"}},{"type":"loopback"}]}`
	l := e.ConfList(raw)
	args := [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", "web-0"},
		{"K8S_POD_INFRA_CONTAINER_ID", "abc"}, {"K8S_POD_UID", "u-1"}, {"FOO", "bar"}}
	rt := &libcni.RuntimeConf{ContainerID: "ctr-k", NetNS: testns.NewNS(t).Path(), IfName: "eth0", Args: args}
	if _, err := e.CNI.AddNetworkList(e.Ctx(), l, rt); err != nil {
		t.Fatalf("ADD with kubelet's CNI_ARGS: %v", err)
	}
	if err := e.CNI.DelNetworkList(e.Ctx(), l, rt); err != nil {
		t.Fatal(err)
	}
	rt2 := &libcni.RuntimeConf{ContainerID: "ctr-k2", NetNS: testns.NewNS(t).Path(), IfName: "eth0", Args: [][2]string{{"FOO", "bar"}}}
	_, err := e.CNI.AddNetworkList(e.Ctx(), l, rt2)
	wantCode(t, err, 4)
}

// TestResultAsOldRuntimesParseIt: a 0.3.1 or 0.4.0 bridge result parses
// with the 0.4.0 result type podman 4 and containerd 1.6 use: interfaces
// bridge, host veth, container (with sandbox), IPs with version and an
// interface index pointing at the container interface.
func TestResultAsOldRuntimesParseIt(t *testing.T) {
	NewEnv(t)
	for _, v := range []string{"0.3.1", "0.4.0"} {
		t.Run(v, func(t *testing.T) {
			dataDir := t.TempDir()
			n := testns.NewNS(t)
			conf := `{"cniVersion":"` + v + `","name":"old","type":"bridge","bridge":"plold","isGateway":true,
			  "ipam":{"type":"host-local","dataDir":"` + dataDir + `","subnet":"10.84.0.0/24","routes":[{"dst":"0.0.0.0/0"}]}}`
			out := runPlugin(t, "bridge", call{Command: "ADD", ContainerID: "ctr-old-" + v, Netns: n.Path(), IfName: "eth0", Stdin: []byte(conf)})
			defer runPlugin(t, "bridge", call{Command: "DEL", ContainerID: "ctr-old-" + v, Netns: n.Path(), IfName: "eth0", Stdin: []byte(conf)})
			if out.Exit != 0 {
				t.Fatalf("ADD: %s", out)
			}
			var raw map[string]any
			json.Unmarshal(out.Stdout, &raw)
			if raw["cniVersion"] != v {
				t.Fatalf("cniVersion %v, want %s", raw["cniVersion"], v)
			}
			res, err := types040.NewResult(out.Stdout)
			if err != nil {
				t.Fatal(err)
			}
			r := res.(*types040.Result)
			if len(r.Interfaces) != 3 || r.Interfaces[0].Name != "plold" || r.Interfaces[2].Name != "eth0" || r.Interfaces[2].Sandbox != n.Path() || r.Interfaces[1].Sandbox != "" {
				t.Fatalf("interfaces %+v", r.Interfaces)
			}
			if len(r.IPs) != 1 || r.IPs[0].Version != "4" || r.IPs[0].Interface == nil || *r.IPs[0].Interface != 2 || r.IPs[0].Gateway.String() != "10.84.0.1" {
				t.Fatalf("ips %+v", r.IPs[0])
			}
			if len(r.Routes) != 1 || r.Routes[0].Dst.String() != "0.0.0.0/0" {
				t.Fatalf("routes %+v", r.Routes)
			}
		})
	}
}
