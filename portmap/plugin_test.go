package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/fw"
)

// host is the plugin's world, faked: both backends, route_localnet per
// interface, and the UDP ports whose conntrack entries were flushed.
type host struct {
	nft, ipt    *fw.FakePorts
	nftErr      error // what creating the nftables backend fails with
	localnet    map[string]bool
	localnetErr error
	flushed     [][]uint16
	warnings    []string
}

func newHost() *host {
	return &host{nft: fw.NewFakePorts(), ipt: fw.NewFakePorts(), localnet: map[string]bool{}}
}

func (h *host) plugin() *Plugin {
	return &Plugin{
		Backend: func(name string) (fw.PortMapper, error) {
			if name == backendIPT {
				return h.ipt, nil
			}
			if h.nftErr != nil {
				return nil, h.nftErr
			}
			return h.nft, nil
		},
		FlushUDP: func(ports []uint16) error { h.flushed = append(h.flushed, ports); return nil },
		Localnet: fakeLocalnet{h},
		Warn:     func(f string, a ...any) { h.warnings = append(h.warnings, fmt.Sprintf(f, a...)) },
	}
}

// fakeLocalnet routes every container address through "cni0".
type fakeLocalnet struct{ h *host }

func (l fakeLocalnet) Enable(ip net.IP) (string, error) {
	if l.h.localnetErr != nil {
		return "", l.h.localnetErr
	}
	l.h.localnet["cni0"] = true
	return "cni0", nil
}

func (l fakeLocalnet) Enabled(ip net.IP) (string, bool, error) {
	return "cni0", l.h.localnet["cni0"], nil
}

// stdin is a portmap config with prevResult (nil: none) and mappings.
func stdin(t testing.TB, prev *current.Result, extra map[string]any, entries ...map[string]any) []byte {
	t.Helper()
	c := map[string]any{"capabilities": map[string]bool{"portMappings": true}}
	for k, v := range extra {
		c[k] = v
	}
	if len(entries) > 0 {
		c["runtimeConfig"] = mappings(entries...)
	}
	if prev != nil {
		c["prevResult"] = prev
	}
	return confJSON(t, c)
}

func cmdArgs(in []byte) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "c1", Netns: "/var/run/netns/c1", IfName: "eth0", StdinData: in}
}

var (
	tcp8080 = map[string]any{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}
	udp53   = map[string]any{"hostPort": 5353, "containerPort": 53, "protocol": "udp"}
)

func TestAddPublishesAndPassesPrevResultThrough(t *testing.T) {
	h := newHost()
	prev := bridgeResult("10.88.0.2/24", "fd00::2/64")
	res, err := h.plugin().Add(cmdArgs(stdin(t, prev, nil, tcp8080, udp53)))
	if err != nil {
		t.Fatal(err)
	}
	// The edge prints it in the config's version; here it is the current one.
	got, _ := json.Marshal(res)
	want, _ := json.Marshal(prev)
	want = []byte(strings.Replace(string(want), `"cniVersion":"1.0.0"`, `"cniVersion":"`+current.ImplementedSpecVersion+`"`, 1))
	if string(got) != string(want) {
		t.Fatalf("result:\n got %s\nwant %s", got, want)
	}
	wantDump := `owner net1/c1/eth0: snat mark 0x2000 | tcp 0.0.0.0:8080 -> 10.88.0.2:80, udp 0.0.0.0:5353 -> 10.88.0.2:53, tcp [::]:8080 -> [fd00::2]:80, udp [::]:5353 -> [fd00::2]:53
port tcp 0.0.0.0:8080 -> net1/c1/eth0
port tcp [::]:8080 -> net1/c1/eth0
port udp 0.0.0.0:5353 -> net1/c1/eth0
port udp [::]:5353 -> net1/c1/eth0
`
	if got := h.nft.Dump(); got != wantDump {
		t.Fatalf("nftables state:\n%s\nwant:\n%s", got, wantDump)
	}
	if h.ipt.Dump() != "" {
		t.Fatalf("iptables touched:\n%s", h.ipt.Dump())
	}
	if !h.localnet["cni0"] {
		t.Fatal("route_localnet not enabled on the bridge")
	}
	if !reflect.DeepEqual(h.flushed, [][]uint16{{5353}}) {
		t.Fatalf("conntrack flushed %v, want [[5353]]", h.flushed)
	}
	if err := h.plugin().Check(cmdArgs(stdin(t, prev, nil, tcp8080, udp53))); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
}

func TestAddOptionsReachTheBackend(t *testing.T) {
	h := newHost()
	in := stdin(t, bridgeResult("10.88.0.2/24"), map[string]any{"snat": false, "masqAll": true, "markMasqBit": 5}, tcp8080)
	if _, err := h.plugin().Add(cmdArgs(in)); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h.nft.Dump(), "owner net1/c1/eth0: masqall mark 0x20 |") {
		t.Fatalf("state:\n%s", h.nft.Dump())
	}
	if h.localnet["cni0"] {
		t.Fatal("route_localnet enabled without snat")
	}
	h = newHost()
	in = stdin(t, bridgeResult("10.88.0.2/24"), map[string]any{"externalSetMarkChain": "KUBE-MARK-MASQ", "conditionsV4": []string{"-s", "10.0.0.0/8"}}, tcp8080)
	if _, err := h.plugin().Add(cmdArgs(in)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(h.ipt.Dump(), `snat mark 0x2000 setmark KUBE-MARK-MASQ IPv4-conditions "-s 10.0.0.0/8" |`) || h.nft.Dump() != "" {
		t.Fatalf("iptables state:\n%s\nnftables:\n%s", h.ipt.Dump(), h.nft.Dump())
	}
}

func TestAddWithoutMappingsChangesNothing(t *testing.T) {
	h := newHost()
	prev := bridgeResult("10.88.0.2/24")
	res, err := h.plugin().Add(cmdArgs(stdin(t, prev, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if r, ok := res.(*current.Result); !ok || len(r.IPs) != len(prev.IPs) {
		t.Fatalf("result %+v", res)
	}
	if h.nft.Dump() != "" || len(h.flushed) != 0 || h.localnet["cni0"] {
		t.Fatalf("state changed:\n%s", h.nft.Dump())
	}
}

// TestAddBadInputChangesNothing: every refusal is code 7 and leaves no
// state behind.
func TestAddBadInputChangesNothing(t *testing.T) {
	for name, in := range map[string][]byte{
		"no prevResult":         stdin(t, nil, nil, tcp8080),
		"no container address":  stdin(t, bridgeResult(), nil, tcp8080),
		"host port 0":           stdin(t, bridgeResult("10.88.0.2/24"), nil, map[string]any{"hostPort": 0, "containerPort": 80}),
		"host port 70000":       stdin(t, bridgeResult("10.88.0.2/24"), nil, map[string]any{"hostPort": 70000, "containerPort": 80}),
		"unknown protocol":      stdin(t, bridgeResult("10.88.0.2/24"), nil, map[string]any{"hostPort": 80, "containerPort": 80, "protocol": "gre"}),
		"host IP not an IP":     stdin(t, bridgeResult("10.88.0.2/24"), nil, map[string]any{"hostPort": 80, "containerPort": 80, "hostIP": "10.0.0"}),
		"mark bit 40":           stdin(t, bridgeResult("10.88.0.2/24"), map[string]any{"markMasqBit": 40}, tcp8080),
		"port mapped twice":     stdin(t, bridgeResult("10.88.0.2/24"), nil, tcp8080, map[string]any{"hostPort": 8080, "containerPort": 81}),
		"nftables + conditions": stdin(t, bridgeResult("10.88.0.2/24"), map[string]any{"backend": "nftables", "conditionsV4": []string{"-s", "1.2.3.4"}}, tcp8080),
	} {
		h := newHost()
		_, err := h.plugin().Add(cmdArgs(in))
		if cniplugin.Code(err) != cniplugin.CodeInvalidConfig {
			t.Errorf("%s: got %v (code %d), want code 7", name, err, cniplugin.Code(err))
		}
		if h.nft.Dump()+h.ipt.Dump() != "" || len(h.flushed) != 0 || h.localnet["cni0"] {
			t.Errorf("%s: state changed", name)
		}
	}
	// A container ID the backends refuse (it cannot go into a comment).
	h := newHost()
	args := cmdArgs(stdin(t, bridgeResult("10.88.0.2/24"), nil, tcp8080))
	args.ContainerID = `c"1`
	if _, err := h.plugin().Add(args); cniplugin.Code(err) != cniplugin.CodeInvalidConfig {
		t.Errorf("quote in container ID: %v", err)
	}
}

func TestAddUndoesRulesWhenLocalnetFails(t *testing.T) {
	h := newHost()
	h.localnetErr = errors.New("read-only /proc")
	_, err := h.plugin().Add(cmdArgs(stdin(t, bridgeResult("10.88.0.2/24"), nil, tcp8080)))
	if err == nil || !strings.Contains(err.Error(), "route_localnet") {
		t.Fatalf("ADD = %v", err)
	}
	if h.nft.Dump() != "" {
		t.Fatalf("failed ADD left:\n%s", h.nft.Dump())
	}
}

func TestAddBackendFailure(t *testing.T) {
	h := newHost()
	h.nft.Err = errors.New("netlink: operation not permitted")
	if _, err := h.plugin().Add(cmdArgs(stdin(t, bridgeResult("10.88.0.2/24"), nil, udp53))); err == nil {
		t.Fatal("ADD succeeded")
	}
	if len(h.flushed) != 0 || h.localnet["cni0"] {
		t.Fatal("side effects after a failed ADD")
	}
	// No nf_tables, no backend asked for: iptables.
	h = newHost()
	h.nftErr = fmt.Errorf("probe: %w", fw.ErrNoNFTables)
	if _, err := h.plugin().Add(cmdArgs(stdin(t, bridgeResult("10.88.0.2/24"), nil, udp53))); err != nil {
		t.Fatal(err)
	}
	if h.ipt.Dump() == "" {
		t.Fatal("no fallback to iptables")
	}
	// nftables asked for and missing: code 50.
	_, err := h.plugin().Add(cmdArgs(stdin(t, bridgeResult("10.88.0.2/24"), map[string]any{"backend": "nftables"}, udp53)))
	if cniplugin.Code(err) != cniplugin.CodeNotAvailable {
		t.Fatalf("ADD with nftables missing: %v", err)
	}
}

// TestDelNeedsNoPrevResult: DEL finds the rules by owner; without
// prevResult or mappings, twice, and after a backend switch.
func TestDelNeedsNoPrevResult(t *testing.T) {
	h := newHost()
	if _, err := h.plugin().Add(cmdArgs(stdin(t, bridgeResult("10.88.0.2/24"), nil, tcp8080, udp53))); err != nil {
		t.Fatal(err)
	}
	h.flushed = nil
	for i := 0; i < 2; i++ {
		if err := h.plugin().Del(cmdArgs(stdin(t, nil, nil))); err != nil {
			t.Fatalf("DEL %d: %v", i+1, err)
		}
	}
	if h.nft.Dump() != "" {
		t.Fatalf("left after DEL:\n%s", h.nft.Dump())
	}
	if !reflect.DeepEqual(h.flushed, [][]uint16{{5353}}) {
		t.Fatalf("conntrack flushed %v, want [[5353]] once", h.flushed)
	}
	// ADD with nftables, DEL with a config saying iptables.
	if _, err := h.plugin().Add(cmdArgs(stdin(t, bridgeResult("10.88.0.2/24"), nil, tcp8080))); err != nil {
		t.Fatal(err)
	}
	if err := h.plugin().Del(cmdArgs(stdin(t, nil, map[string]any{"backend": "iptables"}))); err != nil {
		t.Fatal(err)
	}
	if h.nft.Dump() != "" {
		t.Fatalf("left after DEL through the other backend:\n%s", h.nft.Dump())
	}
	// Mappings DEL does not need may even be invalid.
	if err := h.plugin().Del(cmdArgs(stdin(t, nil, nil, map[string]any{"hostPort": 0}))); err != nil {
		t.Fatalf("DEL with invalid mappings: %v", err)
	}
}

func TestDelKeepsOtherOwners(t *testing.T) {
	h := newHost()
	prev := bridgeResult("10.88.0.2/24")
	a, b := cmdArgs(stdin(t, prev, nil, tcp8080)), cmdArgs(stdin(t, prev, nil, udp53))
	b.ContainerID = "c2"
	for _, args := range []*skel.CmdArgs{a, b} {
		if _, err := h.plugin().Add(args); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.plugin().Del(cmdArgs(stdin(t, nil, nil))); err != nil {
		t.Fatal(err)
	}
	if err := h.plugin().Check(b); err != nil {
		t.Fatalf("CHECK of B after DEL of A: %v", err)
	}
}

func TestCheck(t *testing.T) {
	h := newHost()
	prev := bridgeResult("10.88.0.2/24")
	in := stdin(t, prev, nil, tcp8080)
	if err := h.plugin().Check(cmdArgs(in)); err == nil {
		t.Fatal("CHECK passed before ADD")
	}
	if _, err := h.plugin().Add(cmdArgs(in)); err != nil {
		t.Fatal(err)
	}
	if err := h.plugin().Check(cmdArgs(in)); err != nil {
		t.Fatal(err)
	}
	// Other mappings than were published.
	if err := h.plugin().Check(cmdArgs(stdin(t, prev, nil, udp53))); err == nil {
		t.Fatal("CHECK passed with other mappings")
	}
	h.localnet["cni0"] = false
	if err := h.plugin().Check(cmdArgs(in)); err == nil || !strings.Contains(err.Error(), "route_localnet is off on cni0") {
		t.Fatalf("CHECK with route_localnet off: %v", err)
	}
	h.localnet["cni0"] = true
	if _, err := h.nft.DelPorts(context.Background(), testOwner); err != nil {
		t.Fatal(err)
	}
	if err := h.plugin().Check(cmdArgs(in)); !errors.Is(err, fw.ErrPortsMismatch) {
		t.Fatalf("CHECK after the rules went: %v", err)
	}
	if err := h.plugin().Check(cmdArgs(stdin(t, nil, nil, tcp8080))); cniplugin.Code(err) != cniplugin.CodeInvalidConfig {
		t.Fatalf("CHECK without prevResult: %v", err)
	}
}

func TestGC(t *testing.T) {
	h := newHost()
	prev := bridgeResult("10.88.0.2/24")
	for _, id := range []string{"keep", "leak"} {
		args := cmdArgs(stdin(t, prev, nil, tcp8080))
		args.ContainerID = id
		if _, err := h.plugin().Add(args); err != nil {
			t.Fatal(err)
		}
	}
	gc := confJSON(t, map[string]any{"cniVersion": "1.1.0", "cni.dev/valid-attachments": []map[string]string{{"containerID": "keep", "ifname": "eth0"}}})
	if err := h.plugin().GC(&skel.CmdArgs{StdinData: gc}); err != nil {
		t.Fatal(err)
	}
	if got := h.nft.Dump(); !strings.Contains(got, "net1/keep/eth0") || strings.Contains(got, "leak") {
		t.Fatalf("after GC:\n%s", got)
	}
}

func TestStatus(t *testing.T) {
	h := newHost()
	in := confJSON(t, map[string]any{"cniVersion": "1.1.0"})
	if err := h.plugin().Status(&skel.CmdArgs{StdinData: in}); err != nil {
		t.Fatal(err)
	}
	h.nft.Unusable = errors.New("no nat support")
	if err := h.plugin().Status(&skel.CmdArgs{StdinData: in}); cniplugin.Code(err) != cniplugin.CodeNotAvailable {
		t.Fatalf("STATUS with an unusable backend: %v", err)
	}
	h.nftErr = errors.New("no netlink")
	if err := h.plugin().Status(&skel.CmdArgs{StdinData: in}); cniplugin.Code(err) != cniplugin.CodeNotAvailable {
		t.Fatalf("STATUS without the backend: %v", err)
	}
}
