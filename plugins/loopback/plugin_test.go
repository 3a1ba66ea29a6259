package main

import (
	"fmt"
	"net"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/netns"
)

// fakeLo keeps lo's state per namespace path.
type fakeLo struct {
	up    bool
	addrs []net.IPNet
}

type fakeHost map[string]*fakeLo

func (h fakeHost) open(path string) (Loopback, error) {
	lo, ok := h[path]
	if !ok {
		return nil, fmt.Errorf("open %s: %w", path, netns.ErrGone)
	}
	return lo, nil
}

func (l *fakeLo) SetUp(up bool) error { l.up = up; return nil }
func (l *fakeLo) State() (bool, []net.IPNet, error) {
	if !l.up {
		return false, nil, nil
	}
	return true, l.addrs, nil
}
func (l *fakeLo) Close() error { return nil }

func mustCIDR(s string) net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return *n
}

func cmdArgs(netns, conf string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "c1", Netns: netns, IfName: "lo", StdinData: []byte(conf)}
}

const conf100 = `{"cniVersion":"1.0.0","name":"lo","type":"loopback"}`

func TestAddBringsUpAndReportsAddresses(t *testing.T) {
	h := fakeHost{"/ns/a": {addrs: []net.IPNet{mustCIDR("127.0.0.1/8"), mustCIDR("::1/128")}}}
	p := &Plugin{Open: h.open}
	res, err := p.Add(cmdArgs("/ns/a", conf100))
	if err != nil {
		t.Fatal(err)
	}
	if !h["/ns/a"].up {
		t.Fatal("lo not up after ADD")
	}
	r := res.(*current.Result)
	if len(r.Interfaces) != 1 || r.Interfaces[0].Name != "lo" || r.Interfaces[0].Sandbox != "/ns/a" {
		t.Fatalf("interfaces = %+v", r.Interfaces)
	}
	if len(r.IPs) != 2 || r.IPs[0].Address.String() != "127.0.0.1/8" || r.IPs[1].Address.String() != "::1/128" {
		t.Fatalf("ips = %v", r.IPs)
	}
}

func TestAddPassesPrevResultThrough(t *testing.T) {
	h := fakeHost{"/ns/a": {addrs: []net.IPNet{mustCIDR("127.0.0.1/8")}}}
	p := &Plugin{Open: h.open}
	conf := `{"cniVersion":"1.0.0","name":"n","type":"loopback","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.0.0.5/24"}]}}`
	res, err := p.Add(cmdArgs("/ns/a", conf))
	if err != nil {
		t.Fatal(err)
	}
	r := res.(*current.Result)
	if len(r.IPs) != 1 || r.IPs[0].Address.String() != "10.0.0.5/24" {
		t.Fatalf("prevResult not passed through: %v", r.IPs)
	}
}

func TestAddRejectsNonLoopbackAddress(t *testing.T) {
	h := fakeHost{"/ns/a": {addrs: []net.IPNet{mustCIDR("10.1.1.1/8")}}}
	if _, err := (&Plugin{Open: h.open}).Add(cmdArgs("/ns/a", conf100)); err == nil {
		t.Fatal("ADD accepted a non-loopback address on lo")
	}
}

func TestErrors(t *testing.T) {
	h := fakeHost{"/ns/a": {}}
	p := &Plugin{Open: h.open}
	cases := []struct {
		name string
		run  func() error
		code uint
	}{
		{"add in missing netns", func() error { _, err := p.Add(cmdArgs("/ns/gone", conf100)); return err }, cniplugin.CodeInvalidNetNS},
		{"check in missing netns", func() error { return p.Check(cmdArgs("/ns/gone", conf100)) }, cniplugin.CodeInvalidNetNS},
		{"bad json", func() error { _, err := p.Add(cmdArgs("/ns/a", `{"name":`)); return err }, cniplugin.CodeDecode},
		{"unknown CNI_ARGS", func() error {
			a := cmdArgs("/ns/a", conf100)
			a.Args = "FOO=bar"
			_, err := p.Add(a)
			return err
		}, cniplugin.CodeInvalidEnv},
		{"check when down", func() error { return p.Check(cmdArgs("/ns/a", conf100)) }, cniplugin.CodeInternal},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.run()
			if err == nil {
				t.Fatal("no error")
			}
			if got := cniplugin.Code(err); got != c.code {
				t.Fatalf("code = %d, want %d (%v)", got, c.code, err)
			}
		})
	}
}

func TestIgnoreUnknownArgs(t *testing.T) {
	h := fakeHost{"/ns/a": {}}
	a := cmdArgs("/ns/a", conf100)
	a.Args = "IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=x"
	if _, err := (&Plugin{Open: h.open}).Add(a); err != nil {
		t.Fatal(err)
	}
}

func TestDelIsIdempotent(t *testing.T) {
	h := fakeHost{"/ns/a": {up: true}}
	p := &Plugin{Open: h.open}
	for _, ns := range []string{"/ns/a", "/ns/a", "/ns/gone", ""} {
		if err := p.Del(cmdArgs(ns, conf100)); err != nil {
			t.Fatalf("DEL %q: %v", ns, err)
		}
	}
	if h["/ns/a"].up {
		t.Fatal("lo still up after DEL")
	}
}
