package hostlocal

import (
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/ipam/store"
)

// memPlugin is host-local over one shared in-memory store.
func memPlugin() (*Plugin, *store.Memory) {
	m := store.NewMemory()
	return &Plugin{OpenStore: func(string, string) (store.Store, error) { return m, nil }}, m
}

func cfg(ipam string, extra string) []byte {
	s := `{"cniVersion":"1.1.0","name":"net1","type":"x","ipam":{"type":"host-local",` + ipam + `}`
	if extra != "" {
		s += "," + extra
	}
	return []byte(s + "}")
}

func call(id, ifname string, stdin []byte) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: id, IfName: ifname, StdinData: stdin}
}

const v4 = `"ranges":[[{"subnet":"10.1.0.0/24"}]]`

func add(t *testing.T, p *Plugin, id string, stdin []byte) *current.Result {
	t.Helper()
	r, err := p.Add(call(id, "eth0", stdin))
	if err != nil {
		t.Fatalf("ADD %s: %v", id, err)
	}
	return r.(*current.Result)
}

func TestAddDualStackAndRoutes(t *testing.T) {
	p, _ := memPlugin()
	res := add(t, p, "c1", cfg(`"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/120"}]],"routes":[{"dst":"0.0.0.0/0"}]`, ""))
	if len(res.IPs) != 2 || res.IPs[0].Address.String() != "10.1.0.2/24" || res.IPs[1].Address.String() != "fd00::2/120" {
		t.Fatalf("ips = %v %v", res.IPs[0], res.IPs[1])
	}
	if res.IPs[0].Gateway.String() != "10.1.0.1" || len(res.Routes) != 1 {
		t.Fatalf("gateway %v routes %v", res.IPs[0].Gateway, res.Routes)
	}
}

func TestLegacyRangeComesFirst(t *testing.T) {
	p, _ := memPlugin()
	res := add(t, p, "c1", cfg(`"subnet":"10.9.0.0/24","ranges":[[{"subnet":"fd00::/120"}]]`, ""))
	if res.IPs[0].Address.String() != "10.9.0.2/24" || res.IPs[1].Address.String() != "fd00::2/120" {
		t.Fatalf("ips = %v", res.IPs)
	}
}

func TestRequestedSources(t *testing.T) {
	cases := map[string]struct {
		stdin []byte
		args  string
		want  string
	}{
		"CNI_ARGS":      {cfg(v4, ""), "IP=10.1.0.42", "10.1.0.42/24"},
		"args.cni.ips":  {cfg(v4, `"args":{"cni":{"ips":["10.1.0.43"]}}`), "", "10.1.0.43/24"},
		"runtimeConfig": {cfg(v4, `"runtimeConfig":{"ips":["10.1.0.44/24"]}`), "", "10.1.0.44/24"},
		"ipRanges":      {cfg(v4, `"runtimeConfig":{"ipRanges":[[{"subnet":"10.77.0.0/24"}]]}`), "", "10.77.0.2/24"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			p, _ := memPlugin()
			a := call("c1", "eth0", tc.stdin)
			a.Args = tc.args
			r, err := p.Add(a)
			if err != nil {
				t.Fatal(err)
			}
			if got := r.(*current.Result).IPs[0].Address.String(); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestErrorsAndCodes(t *testing.T) {
	p, _ := memPlugin()
	add(t, p, "c1", cfg(v4, `"runtimeConfig":{"ips":["10.1.0.9"]}`))
	cases := map[string]struct {
		stdin []byte
		args  string
		code  uint
		msg   string
	}{
		"taken":           {cfg(v4, `"runtimeConfig":{"ips":["10.1.0.9"]}`), "", cniplugin.CodeAddressUnavailable, "10.1.0.9"},
		"outside":         {cfg(v4, ""), "IP=10.2.0.9", cniplugin.CodeAddressUnavailable, "none of the configured ranges"},
		"gateway":         {cfg(v4, ""), "IP=10.1.0.1", cniplugin.CodeAddressUnavailable, "gateway"},
		"two in one set":  {cfg(v4, `"args":{"cni":{"ips":["10.1.0.20","10.1.0.21"]}}`), "", cniplugin.CodeAddressUnavailable, "one address per range set"},
		"no ipam":         {[]byte(`{"cniVersion":"1.0.0","name":"n"}`), "", cniplugin.CodeInvalidConfig, "ipam"},
		"no ranges":       {cfg(`"ranges":[[]]`, ""), "", cniplugin.CodeInvalidConfig, "no IP ranges"},
		"wrong type":      {cfg(`"ranges":"x"`, ""), "", cniplugin.CodeInvalidConfig, "ranges"},
		"overlap":         {cfg(`"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.1.0.0/25"}]]`, ""), "", cniplugin.CodeInvalidConfig, "overlaps"},
		"gw outside":      {cfg(`"ranges":[[{"subnet":"10.1.0.0/24","gateway":"10.2.0.1"}]]`, ""), "", cniplugin.CodeInvalidConfig, "gateway"},
		"start after end": {cfg(`"ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.9","rangeEnd":"10.1.0.5"}]]`, ""), "", cniplugin.CodeInvalidConfig, "after"},
		"dataDir escape":  {cfg(v4+`,"dataDir":"/var/lib/cni/../../etc"`, ""), "", cniplugin.CodeInvalidConfig, "dataDir"},
		"relative":        {cfg(v4+`,"dataDir":"var/lib"`, ""), "", cniplugin.CodeInvalidConfig, "dataDir"},
		"bad ip":          {cfg(v4, ""), "IP=10.1.0", cniplugin.CodeInvalidConfig, "not an IP"},
		"lockTimeout":     {cfg(v4+`,"lockTimeout":"soon"`, ""), "", cniplugin.CodeInvalidConfig, "lockTimeout"},
		"unknown args":    {cfg(v4, ""), "FOO=1", cniplugin.CodeInvalidEnv, "CNI_ARGS"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			a := call("c2", "eth0", tc.stdin)
			a.Args = tc.args
			_, err := p.Add(a)
			if err == nil {
				t.Fatal("accepted")
			}
			if cniplugin.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("code %d %q; want %d containing %q", cniplugin.Code(err), err, tc.code, tc.msg)
			}
		})
	}
}

func TestFailedSecondSetReleasesFirst(t *testing.T) {
	p, m := memPlugin()
	// The IPv6 set has a single address; the second container's ADD gets an
	// IPv4 address, fails on IPv6, and must give the IPv4 address back.
	conf := cfg(`"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/120","rangeStart":"fd00::5","rangeEnd":"fd00::5"}]]`, "")
	add(t, p, "c1", conf)
	_, err := p.Add(call("c2", "eth0", conf))
	if cniplugin.Code(err) != cniplugin.CodeExhausted {
		t.Fatalf("want exhaustion (100), got %v", err)
	}
	all, _ := m.List()
	if len(all) != 2 {
		t.Fatalf("reservations after failed ADD: %v", all)
	}
}

func TestDelCheckGCStatus(t *testing.T) {
	p, m := memPlugin()
	small := cfg(`"ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.2","rangeEnd":"10.1.0.3"}]]`, "")
	r1 := add(t, p, "c1", small)
	add(t, p, "c2", small)
	if err := p.Status(call("", "", small)); cniplugin.Code(err) != cniplugin.CodeNotAvailable {
		t.Fatalf("STATUS on a full range: %v", err)
	}
	// CHECK with the matching prevResult passes, with another address fails.
	good := cfg(`"ranges":[[{"subnet":"10.1.0.0/24"}]]`, `"prevResult":{"cniVersion":"1.1.0","ips":[{"address":"`+r1.IPs[0].Address.String()+`"}]}`)
	if err := p.Check(call("c1", "eth0", good)); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	bad := cfg(`"ranges":[[{"subnet":"10.1.0.0/24"}]]`, `"prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.1.0.77/24"}]}`)
	if err := p.Check(call("c1", "eth0", bad)); err == nil {
		t.Fatal("CHECK passed with a prevResult that does not match")
	}
	if err := p.Check(call("c9", "eth0", small)); err == nil {
		t.Fatal("CHECK passed for an unknown container")
	}
	// GC keeps c1 only (through the older key too).
	gc := cfg(`"ranges":[[{"subnet":"10.1.0.0/24"}]]`, `"cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}]`)
	if err := p.GC(call("", "", gc)); err != nil {
		t.Fatal(err)
	}
	if all, _ := m.List(); len(all) != 1 || all[0].Owner.ContainerID != "c1" {
		t.Fatalf("after GC: %v", all)
	}
	if err := p.Status(call("", "", small)); err != nil {
		t.Fatalf("STATUS with a free address: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := p.Del(call("c1", "eth0", small)); err != nil {
			t.Fatalf("DEL %d: %v", i, err)
		}
	}
	if all, _ := m.List(); len(all) != 0 {
		t.Fatalf("after DEL: %v", all)
	}
}

func TestResolvConf(t *testing.T) {
	path := t.TempDir() + "/resolv.conf"
	if err := os.WriteFile(path, []byte("# c\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain example.org\nsearch a.example b.example\noptions ndots:2 edns0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, _ := memPlugin()
	res := add(t, p, "c1", cfg(v4+`,"resolvConf":"`+path+`"`, ""))
	d := res.DNS
	if strings.Join(d.Nameservers, ",") != "10.0.0.53,fd00::53" || d.Domain != "example.org" ||
		strings.Join(d.Search, ",") != "a.example,b.example" || strings.Join(d.Options, ",") != "ndots:2,edns0" {
		t.Fatalf("dns = %+v", d)
	}
}
