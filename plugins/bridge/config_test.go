package main

import (
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/cniplugin"
)

func conf(extra string) []byte {
	s := `{"cniVersion":"1.0.0","name":"net1","type":"bridge","ipam":{"type":"host-local"}`
	if extra != "" {
		s += "," + extra
	}
	return []byte(s + "}")
}

func TestParseDefaults(t *testing.T) {
	c, err := parseConfig(conf(""), "")
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != "cni0" || c.IsGateway || c.IPMasq || c.MTU != 0 || c.MAC != nil || c.Vlans != nil {
		t.Fatalf("defaults wrong: %+v", c)
	}
	c, err = parseConfig(conf(`"isDefaultGateway":true`), "")
	if err != nil || !c.IsGateway {
		t.Fatalf("isDefaultGateway must imply isGateway: %+v %v", c, err)
	}
}

func TestParseMACPrecedence(t *testing.T) {
	// runtimeConfig beats args.cni beats CNI_ARGS, as in the reference.
	c, err := parseConfig(conf(`"args":{"cni":{"mac":"02:00:00:00:00:02"}},"runtimeConfig":{"mac":"02:00:00:00:00:03"}`), "MAC=02:00:00:00:00:01")
	if err != nil {
		t.Fatal(err)
	}
	if c.MAC.String() != "02:00:00:00:00:03" {
		t.Fatalf("mac = %s", c.MAC)
	}
	c, err = parseConfig(conf(""), "IgnoreUnknown=1;MAC=02:00:00:00:00:01;K8S_POD_NAME=p")
	if err != nil || c.MAC.String() != "02:00:00:00:00:01" {
		t.Fatalf("mac from CNI_ARGS: %v %v", c, err)
	}
}

func TestParseTrunk(t *testing.T) {
	c, err := parseConfig(conf(`"vlanTrunk":[{"id":5},{"minID":10,"maxID":12},{"id":11}]`), "")
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Vlans; len(got) != 4 || got[0] != 5 || got[1] != 10 || got[3] != 12 {
		t.Fatalf("vlans = %v", got)
	}
}

func TestParseRejects(t *testing.T) {
	cases := map[string]struct {
		stdin []byte
		args  string
		code  uint
		msg   string
	}{
		"bad json":           {[]byte(`{"name":`), "", cniplugin.CodeDecode, "decode"},
		"wrong type":         {conf(`"mtu":"big"`), "", cniplugin.CodeInvalidConfig, "mtu"},
		"long bridge":        {conf(`"bridge":"averyveryverylongname"`), "", cniplugin.CodeInvalidConfig, "longer than 15"},
		"slash bridge":       {conf(`"bridge":"a/b"`), "", cniplugin.CodeInvalidConfig, "bridge name"},
		"mtu low":            {conf(`"mtu":10`), "", cniplugin.CodeInvalidConfig, "mtu 10"},
		"mtu high":           {conf(`"mtu":70000`), "", cniplugin.CodeInvalidConfig, "mtu 70000"},
		"vlan":               {conf(`"vlan":4095`), "", cniplugin.CodeInvalidConfig, "vlan 4095"},
		"vlan negative":      {conf(`"vlan":-1`), "", cniplugin.CodeInvalidConfig, "vlan -1"},
		"trunk half range":   {conf(`"vlanTrunk":[{"minID":3}]`), "", cniplugin.CodeInvalidConfig, "minID and maxID"},
		"trunk reversed":     {conf(`"vlanTrunk":[{"minID":9,"maxID":3}]`), "", cniplugin.CodeInvalidConfig, "range 9-3"},
		"hairpin+promisc":    {conf(`"hairpinMode":true,"promiscMode":true`), "", cniplugin.CodeInvalidConfig, "hairpinMode and promiscMode"},
		"backend":            {conf(`"ipMasqBackend":"pf"`), "", cniplugin.CodeInvalidConfig, "ipMasqBackend"},
		"no ipam":            {[]byte(`{"cniVersion":"1.0.0","name":"n","type":"bridge"}`), "", cniplugin.CodeInvalidConfig, "no ipam"},
		"ipam path":          {[]byte(`{"cniVersion":"1.0.0","name":"n","type":"bridge","ipam":{"type":"../x"}}`), "", cniplugin.CodeInvalidConfig, "not a plugin name"},
		"bad mac":            {conf(`"runtimeConfig":{"mac":"zz"}`), "", cniplugin.CodeInvalidConfig, "not an Ethernet"},
		"unknown CNI_ARGS":   {conf(""), "FOO=1", cniplugin.CodeInvalidEnv, "CNI_ARGS"},
		"malformed CNI_ARGS": {conf(""), "FOO", cniplugin.CodeInvalidEnv, "CNI_ARGS"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := parseConfig(tc.stdin, tc.args)
			if err == nil {
				t.Fatal("accepted")
			}
			if cniplugin.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got code %d %q, want code %d containing %q", cniplugin.Code(err), err, tc.code, tc.msg)
			}
		})
	}
}

func TestHostVethNameStable(t *testing.T) {
	a := hostVethName("ctr1", "eth0")
	if a != hostVethName("ctr1", "eth0") || len(a) != 15 || !strings.HasPrefix(a, "veth") {
		t.Fatalf("name %q not stable or wrong length", a)
	}
	if a == hostVethName("ctr1", "eth1") || a == hostVethName("ctr2", "eth0") {
		t.Fatal("names collide across attachments")
	}
}

func TestBuildResult(t *testing.T) {
	c, err := parseConfig(conf(`"isDefaultGateway":true`), "")
	if err != nil {
		t.Fatal(err)
	}
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "cni0", HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 1}}}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vethx", HardwareAddr: net.HardwareAddr{2, 0, 0, 0, 0, 2}}}
	_, v4, _ := net.ParseCIDR("10.1.2.7/24")
	v4.IP = net.ParseIP("10.1.2.7").To4()
	_, v6, _ := net.ParseCIDR("fd00::7/64")
	v6.IP = net.ParseIP("fd00::7")
	ipam := &current.Result{IPs: []*current.IPConfig{{Address: *v4}, {Address: *v6, Gateway: net.ParseIP("fd00::1")}}}
	res := buildResult(c, &skel.CmdArgs{IfName: "eth0", Netns: "/run/netns/x"}, br, veth, ipam)
	if len(res.Interfaces) != 3 || res.Interfaces[0].Name != "cni0" || res.Interfaces[1].Name != "vethx" || res.Interfaces[2].Sandbox != "/run/netns/x" {
		t.Fatalf("interfaces = %+v", res.Interfaces)
	}
	if *res.IPs[0].Interface != 2 || res.IPs[0].Gateway.String() != "10.1.2.1" || res.IPs[1].Gateway.String() != "fd00::1" {
		t.Fatalf("ips = %+v %+v", res.IPs[0], res.IPs[1])
	}
	if len(res.Routes) != 2 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[1].Dst.String() != "::/0" {
		t.Fatalf("routes = %v", res.Routes)
	}
	if ipam.IPs[0].Interface != nil {
		t.Fatal("buildResult changed the IPAM result")
	}
}
