package main

import (
	"net"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/fw"
)

func ipnet(s string) net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return *n
}

// bridgeResult is what the bridge plugin returns: bridge, host veth,
// container interface, with the container's addresses (and, for a test, an
// address on the bridge).
func bridgeResult(addrs ...string) *current.Result {
	r := &current.Result{CNIVersion: "1.0.0", Interfaces: []*current.Interface{
		{Name: "cni0"}, {Name: "veth1234"}, {Name: "eth0", Sandbox: "/var/run/netns/c1"},
	}}
	r.IPs = append(r.IPs, &current.IPConfig{Interface: current.Int(0), Address: ipnet("10.88.0.1/24")})
	for _, a := range addrs {
		r.IPs = append(r.IPs, &current.IPConfig{Interface: current.Int(2), Address: ipnet(a)})
	}
	return r
}

var testOwner = fw.Owner{Network: "net1", ContainerID: "c1", IfName: "eth0"}

func m(proto, host string, hostPort, ctrPort uint16) Mapping {
	return Mapping{Protocol: proto, HostIP: net.ParseIP(host), HostPort: hostPort, ContainerPort: ctrPort}
}

func texts(r fw.PortRule) string {
	var out []string
	for _, m := range r.Mappings {
		out = append(out, m.String())
	}
	return strings.Join(out, ", ")
}

func TestContainerAddrs(t *testing.T) {
	for _, tc := range []struct {
		name   string
		prev   *current.Result
		v4, v6 string
	}{
		{"bridge result", bridgeResult("10.88.0.2/24", "fd00::2/64"), "10.88.0.2/24", "fd00::2/64"},
		{"first per family", bridgeResult("10.88.0.2/24", "10.88.0.3/24"), "10.88.0.2/24", "<nil>"},
		{"no index", &current.Result{IPs: []*current.IPConfig{{Address: ipnet("10.1.0.5/16")}}}, "10.1.0.5/16", "<nil>"},
		{"other ifname", func() *current.Result { r := bridgeResult("10.88.0.2/24"); r.Interfaces[2].Name = "net1"; return r }(), "<nil>", "<nil>"},
		{"no sandbox", func() *current.Result { r := bridgeResult("10.88.0.2/24"); r.Interfaces[2].Sandbox = ""; return r }(), "<nil>", "<nil>"},
		{"none", nil, "<nil>", "<nil>"},
	} {
		v4, v6 := containerAddrs(tc.prev, "eth0")
		if v4.String() != tc.v4 || v6.String() != tc.v6 {
			t.Errorf("%s: got %s %s, want %s %s", tc.name, v4, v6, tc.v4, tc.v6)
		}
	}
}

func TestRule(t *testing.T) {
	c := &Config{SNAT: true, MarkBit: 13}
	for _, tc := range []struct {
		name  string
		prev  *current.Result
		maps  []Mapping
		want  string
		addrs int
	}{
		{"v4 only", bridgeResult("10.88.0.2/24"), []Mapping{m("tcp", "", 8080, 80)},
			"tcp 0.0.0.0:8080 -> 10.88.0.2:80", 1},
		{"dual stack: every family", bridgeResult("10.88.0.2/24", "fd00::2/64"), []Mapping{m("tcp", "", 8080, 80), m("udp", "", 53, 5353)},
			"tcp 0.0.0.0:8080 -> 10.88.0.2:80, udp 0.0.0.0:53 -> 10.88.0.2:5353, tcp [::]:8080 -> [fd00::2]:80, udp [::]:53 -> [fd00::2]:5353", 2},
		{"host IP picks its family", bridgeResult("10.88.0.2/24", "fd00::2/64"),
			[]Mapping{m("tcp", "192.0.2.1", 8080, 80), m("tcp", "2001:db8::1", 8081, 81), m("tcp", "0.0.0.0", 8082, 82), m("tcp", "::", 8083, 83)},
			"tcp 192.0.2.1:8080 -> 10.88.0.2:80, tcp 0.0.0.0:8082 -> 10.88.0.2:82, tcp [2001:db8::1]:8081 -> [fd00::2]:81, tcp [::]:8083 -> [fd00::2]:83", 2},
		{"host IP of a family the container lacks publishes nothing", bridgeResult("10.88.0.2/24"),
			[]Mapping{m("tcp", "2001:db8::1", 8080, 80), m("tcp", "::", 8081, 80)}, "", 1},
		{"duplicates collapse", bridgeResult("10.88.0.2/24"),
			[]Mapping{m("tcp", "", 8080, 80), m("tcp", "", 8080, 80), m("tcp", "0.0.0.0", 8080, 80)},
			"tcp 0.0.0.0:8080 -> 10.88.0.2:80", 1},
		{"same port, other protocol or address", bridgeResult("10.88.0.2/24"),
			[]Mapping{m("tcp", "", 8080, 80), m("udp", "", 8080, 81), m("tcp", "127.0.0.1", 8080, 82)},
			"tcp 0.0.0.0:8080 -> 10.88.0.2:80, udp 0.0.0.0:8080 -> 10.88.0.2:81, tcp 127.0.0.1:8080 -> 10.88.0.2:82", 1},
		{"no mappings", nil, nil, "", 0},
	} {
		r, err := Rule(c, testOwner, tc.maps, tc.prev, "eth0")
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if got := texts(r); got != tc.want || len(r.Addrs) != tc.addrs {
			t.Errorf("%s:\n got %s (%d addresses)\nwant %s (%d)", tc.name, got, len(r.Addrs), tc.want, tc.addrs)
		}
		if !r.SNAT || r.MarkBit != 13 || r.Owner != testOwner {
			t.Errorf("%s: options not carried: %+v", tc.name, r)
		}
	}
}

func TestRuleErrors(t *testing.T) {
	c := &Config{SNAT: true}
	for _, tc := range []struct {
		name    string
		prev    *current.Result
		maps    []Mapping
		mention string
	}{
		{"no container address", &current.Result{Interfaces: []*current.Interface{{Name: "eth0", Sandbox: "x"}}},
			[]Mapping{m("tcp", "", 80, 80)}, "no address of container interface eth0"},
		{"only the bridge's address", func() *current.Result { r := bridgeResult(); return r }(),
			[]Mapping{m("tcp", "", 80, 80)}, "no address"},
		{"no prevResult", nil, []Mapping{m("tcp", "", 80, 80)}, "no address"},
		{"one port, two targets", bridgeResult("10.88.0.2/24"),
			[]Mapping{m("tcp", "", 8080, 80), m("tcp", "0.0.0.0", 8080, 81)}, "tcp port 8080 (IPv4) is mapped to container port 80 and to 81"},
	} {
		_, err := Rule(c, testOwner, tc.maps, tc.prev, "eth0")
		if cniplugin.Code(err) != cniplugin.CodeInvalidConfig || !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("%s: got %v, want code 7 mentioning %q", tc.name, err, tc.mention)
		}
	}
}

func TestLocalnetIP(t *testing.T) {
	c := &Config{SNAT: true}
	for _, tc := range []struct {
		name string
		snat bool
		prev *current.Result
		maps []Mapping
		want string
	}{
		{"every address", true, bridgeResult("10.88.0.2/24"), []Mapping{m("tcp", "", 80, 80)}, "10.88.0.2"},
		{"127.0.0.1", true, bridgeResult("10.88.0.2/24"), []Mapping{m("tcp", "127.0.0.1", 80, 80)}, "10.88.0.2"},
		{"another address only", true, bridgeResult("10.88.0.2/24"), []Mapping{m("tcp", "192.0.2.1", 80, 80)}, "<nil>"},
		{"no snat", false, bridgeResult("10.88.0.2/24"), []Mapping{m("tcp", "", 80, 80)}, "<nil>"},
		{"IPv6 only", true, bridgeResult("fd00::2/64"), []Mapping{m("tcp", "", 80, 80)}, "<nil>"},
	} {
		c.SNAT = tc.snat
		r, err := Rule(c, testOwner, tc.maps, tc.prev, "eth0")
		if err != nil {
			t.Fatal(err)
		}
		if got := localnetIP(r).String(); got != tc.want {
			t.Errorf("%s: localnetIP = %s, want %s", tc.name, got, tc.want)
		}
	}
}
