package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/fw"
)

// fakeLinks is a host with a bridge plbr0 holding port vethA.
type fakeLinks struct{ links map[string]*LinkInfo }

func (f *fakeLinks) Link(name string) (*LinkInfo, error) {
	if l, ok := f.links[name]; ok {
		c := *l
		return &c, nil
	}
	return nil, nil
}

func (f *fakeLinks) SetIsolated(port string) error {
	l, ok := f.links[port]
	if !ok {
		return fmt.Errorf("bridge port %s is missing", port)
	}
	l.Isolated = true
	return nil
}

func (f *fakeLinks) Close() {}

type testPlugin struct {
	*Plugin
	filters map[string]*fw.FakeFilter
	links   *fakeLinks
}

func newTestPlugin() *testPlugin {
	tp := &testPlugin{
		filters: map[string]*fw.FakeFilter{backendIPTables: {}, backendNFTables: {}},
		links: &fakeLinks{links: map[string]*LinkInfo{
			"plbr0": {Kind: "bridge"},
			"vethA": {Kind: "veth", Master: "plbr0"},
		}},
	}
	tp.Plugin = &Plugin{
		Filter:         func(b string) (fw.Filter, error) { return tp.filters[b], nil },
		DefaultBackend: func() string { return backendNFTables },
		Links:          func() (Links, error) { return tp.links, nil },
	}
	return tp
}

// bridgePrev is what the bridge plugin returns: bridge, host veth,
// container interface.
var bridgePrev = map[string]any{
	"cniVersion": "1.0.0",
	"interfaces": []any{
		map[string]any{"name": "plbr0"},
		map[string]any{"name": "vethA"},
		map[string]any{"name": "eth0", "sandbox": "/run/netns/c1"},
	},
	"ips": []any{
		map[string]any{"address": "10.88.0.2/24", "interface": 2},
		map[string]any{"address": "fd00::2/64", "interface": 2},
	},
}

func args(t *testing.T, fields map[string]any, prev map[string]any) *skel.CmdArgs {
	t.Helper()
	conf := map[string]any{"cniVersion": "1.0.0", "name": "net1", "type": "firewall"}
	for k, v := range fields {
		conf[k] = v
	}
	if prev != nil {
		conf["prevResult"] = prev
	}
	b, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	return &skel.CmdArgs{ContainerID: "c1", IfName: "eth0", Netns: "/run/netns/c1", StdinData: b}
}

func wantCode(t *testing.T, err error, code uint) {
	t.Helper()
	if err == nil || cniplugin.Code(err) != code {
		t.Fatalf("error %v (code %d), want code %d", err, cniplugin.Code(err), code)
	}
}

func TestAddDelSameBridge(t *testing.T) {
	tp := newTestPlugin()
	a := args(t, map[string]any{"ingressPolicy": "same-bridge"}, bridgePrev)
	res, err := tp.Add(a)
	if err != nil {
		t.Fatal(err)
	}
	if r := res.(*current.Result); len(r.IPs) != 2 || len(r.Interfaces) != 3 {
		t.Fatalf("ADD must pass prevResult through, got %+v", r)
	}
	want := `admin CNI-ADMIN
bridge plbr0
owner net1/c1/eth0: same-bridge on plbr0, admin CNI-ADMIN: 10.88.0.2 fd00::2
addr 10.88.0.2 -> net1/c1/eth0
addr fd00::2 -> net1/c1/eth0
`
	if got := tp.filters[backendNFTables].Dump(); got != want {
		t.Fatalf("state:\n%s\nwant:\n%s", got, want)
	}
	if tp.links.links["vethA"].Isolated {
		t.Fatal("same-bridge isolated the port")
	}
	if err := tp.Check(a); err != nil {
		t.Fatal(err)
	}
	// DEL without prevResult, twice.
	for i := 0; i < 2; i++ {
		if err := tp.Del(args(t, map[string]any{"ingressPolicy": "same-bridge"}, nil)); err != nil {
			t.Fatal(err)
		}
	}
	if got := tp.filters[backendNFTables].Dump(); strings.Contains(got, "owner") || strings.Contains(got, "addr") {
		t.Fatalf("left after DEL:\n%s", got)
	}
	if err := tp.Check(a); !errors.Is(err, fw.ErrFilterMismatch) {
		t.Fatalf("CHECK after DEL: %v", err)
	}
}

func TestIsolatedSetsPortFlag(t *testing.T) {
	tp := newTestPlugin()
	a := args(t, map[string]any{"ingressPolicy": "isolated", "backend": "iptables"}, bridgePrev)
	if _, err := tp.Add(a); err != nil {
		t.Fatal(err)
	}
	if !tp.links.links["vethA"].Isolated {
		t.Fatal("isolated did not set the port's flag")
	}
	if !strings.Contains(tp.filters[backendIPTables].Dump(), "isolated on plbr0") {
		t.Fatalf("iptables state: %s", tp.filters[backendIPTables].Dump())
	}
	if err := tp.Check(a); err != nil {
		t.Fatal(err)
	}
	tp.links.links["vethA"].Isolated = false
	if err := tp.Check(a); err == nil || !strings.Contains(err.Error(), "not isolated") {
		t.Fatalf("CHECK with the flag cleared: %v", err)
	}
	// DEL of an iptables config also cleans the nftables backend.
	left := fw.FilterRule{Owner: fw.Owner{Network: "net1", ContainerID: "c1", IfName: "eth0"}, Addrs: []net.IP{net.ParseIP("10.88.0.2")}}
	if err := tp.filters[backendNFTables].AddFilter(context.Background(), left); err != nil {
		t.Fatal(err)
	}
	if err := tp.Del(a); err != nil {
		t.Fatal(err)
	}
	for b, f := range tp.filters {
		if got := f.Dump(); strings.Contains(got, "owner") {
			t.Fatalf("%s rules left after DEL: %s", b, got)
		}
	}
}

func TestAddFailureUndoes(t *testing.T) {
	tp := newTestPlugin()
	tp.links.links["vethB"] = &LinkInfo{Kind: "veth", Master: "plbr0"}
	prev := map[string]any{"cniVersion": "1.0.0", "interfaces": []any{
		map[string]any{"name": "plbr0"}, map[string]any{"name": "vethB"}, map[string]any{"name": "eth0", "sandbox": "/x"}},
		"ips": []any{map[string]any{"address": "10.88.0.2/24"}}}
	tp.Links = func() (Links, error) { return &failingIsolate{tp.links}, nil }
	if _, err := tp.Add(args(t, map[string]any{"ingressPolicy": "isolated"}, prev)); err == nil {
		t.Fatal("ADD passed although the port could not be isolated")
	}
	if got := tp.filters[backendNFTables].Dump(); strings.Contains(got, "owner") {
		t.Fatalf("failed ADD left rules:\n%s", got)
	}
}

type failingIsolate struct{ *fakeLinks }

func (failingIsolate) SetIsolated(string) error { return errors.New("no") }

func TestConfigErrors(t *testing.T) {
	tp := newTestPlugin()
	for _, c := range []struct {
		fields map[string]any
		prev   map[string]any
		code   uint
	}{
		{map[string]any{"ingressPolicy": "closed"}, bridgePrev, cniplugin.CodeInvalidConfig},
		{map[string]any{"backend": "ebpf"}, bridgePrev, cniplugin.CodeInvalidConfig},
		{map[string]any{"iptablesAdminChainName": "FORWARD"}, bridgePrev, cniplugin.CodeInvalidConfig},
		{map[string]any{"iptablesAdminChainName": strings.Repeat("A", 29)}, bridgePrev, cniplugin.CodeInvalidConfig},
		{map[string]any{"backend": "firewalld"}, bridgePrev, cniplugin.CodeUnsupportedField},
		{nil, nil, cniplugin.CodeInvalidConfig},
		// No bridge in prevResult (e.g. after macvlan): same-bridge cannot work.
		{map[string]any{"ingressPolicy": "same-bridge"}, map[string]any{"cniVersion": "1.0.0",
			"interfaces": []any{map[string]any{"name": "eth0", "sandbox": "/x"}},
			"ips":        []any{map[string]any{"address": "10.88.0.2/24"}}}, cniplugin.CodeInvalidConfig},
	} {
		_, err := tp.Add(args(t, c.fields, c.prev))
		wantCode(t, err, c.code)
	}
	for _, f := range tp.filters {
		if f.Dump() != "" {
			t.Fatalf("a refused ADD changed state:\n%s", f.Dump())
		}
	}
	// firewalld: DEL succeeds (nothing of ours can exist), STATUS says why not.
	fwd := args(t, map[string]any{"backend": "firewalld"}, nil)
	if err := tp.Del(fwd); err != nil {
		t.Fatal(err)
	}
	err := tp.Status(fwd)
	wantCode(t, err, cniplugin.CodeUnsupportedField)
	if !strings.Contains(err.Error(), "not supported") {
		t.Fatalf("firewalld message: %v", err)
	}
	// Open policy without a bridge is fine: nothing to register.
	if _, err := tp.Add(args(t, nil, map[string]any{"cniVersion": "1.0.0",
		"ips": []any{map[string]any{"address": "10.88.0.5/24"}}})); err != nil {
		t.Fatal(err)
	}
}

func TestGCAndStatus(t *testing.T) {
	tp := newTestPlugin()
	for _, id := range []string{"c1", "c2"} {
		a := args(t, nil, bridgePrev)
		a.ContainerID = id
		if _, err := tp.Add(a); err != nil {
			t.Fatal(err)
		}
	}
	gc := args(t, map[string]any{"cni.dev/valid-attachments": []any{map[string]any{"containerID": "c2", "ifname": "eth0"}}}, nil)
	if err := tp.GC(gc); err != nil {
		t.Fatal(err)
	}
	got := tp.filters[backendNFTables].Dump()
	if strings.Contains(got, "net1/c1/") || !strings.Contains(got, "net1/c2/") {
		t.Fatalf("after GC:\n%s", got)
	}
	if err := tp.Status(args(t, nil, nil)); err != nil {
		t.Fatal(err)
	}
	tp.filters[backendNFTables].Err = errors.New("no nf_tables")
	wantCode(t, tp.Status(args(t, nil, nil)), cniplugin.CodeNotAvailable)
}

func TestDefaultBackend(t *testing.T) {
	c, err := parseConfig([]byte(`{"cniVersion":"0.4.0","name":"n","type":"firewall","backend":""}`), "", func() string { return "iptables" })
	if err != nil || c.BackendName != "iptables" || c.Policy != fw.PolicyOpen || c.AdminChain != "CNI-ADMIN" {
		t.Fatalf("%+v %v", c, err)
	}
}
