package integration

import (
	"fmt"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/testns"
)

// tuningPlugin is a tuning config that changes every attribute and a few
// sysctls, in each spelling.
func tuningPlugin(dataDir, mac string) map[string]any {
	return map[string]any{
		"type": "tuning", "dataDir": dataDir,
		"mac": mac, "mtu": 1400, "promisc": true, "allmulti": true, "txQLen": 500,
		"sysctl": map[string]string{
			"net.ipv4.conf.eth0.arp_filter":   "1",
			"net/ipv4/conf/eth0/arp_ignore":   "2",
			"net.ipv4.conf.IFNAME.arp_accept": "1",
			"net.ipv4.ip_local_port_range":    "20000 30000",
		},
	}
}

// tuningSysctls are the sysctls tuningPlugin sets, as read back.
var tuningSysctls = []string{
	"net/ipv4/conf/eth0/arp_filter", "net/ipv4/conf/eth0/arp_ignore",
	"net/ipv4/conf/eth0/arp_accept", "net/ipv4/ip_local_port_range",
}

func TestTuningAppliesAndRestores(t *testing.T) {
	for i, v := range allSpecVersions {
		t.Run(v, func(t *testing.T) {
			e := NewEnv(t)
			dataDir := t.TempDir()
			bn := bridgeNet{Name: "tun-" + v, Bridge: fmt.Sprintf("pltun%d", i), Subnet4: fmt.Sprintf("10.160.%d.0/24", i), DataDir: t.TempDir()}
			mac := fmt.Sprintf("02:42:ac:11:00:%02x", 0x10+i)
			tp := tuningPlugin(dataDir, mac)
			l := e.ConfList(tbChain(t, bn, v, tp))
			n := testns.NewNS(t)
			a := e.add(l, "ctr-tune", n)

			want := fmt.Sprintf("mac %s mtu 1400 promisc true allmulti true txqlen 500", mac)
			if got := tbLink(t, n, "eth0"); got != want {
				t.Fatalf("eth0 after ADD: %s, want %s", got, want)
			}
			for key, value := range map[string]string{tuningSysctls[0]: "1", tuningSysctls[1]: "2", tuningSysctls[2]: "1", tuningSysctls[3]: "20000\t30000"} {
				if got := sysctlIn(t, n, key); got != value {
					t.Fatalf("%s = %q after ADD, want %q", key, got, value)
				}
			}
			if c := a.Res.Interfaces[2]; c.Name != "eth0" || c.Mac != mac {
				t.Fatalf("result's container interface %+v, want mac %s", c, mac)
			}
			// What the bridge made, as tuning saved it.
			before := fmt.Sprintf("mac %s mtu 1500 promisc false allmulti false txqlen %v",
				tbSaved(t, dataDir, "ctr-tune", "mac"), tbSaved(t, dataDir, "ctr-tune", "txQLen"))
			saved := tbSaved(t, dataDir, "ctr-tune", "sysctl").(map[string]any)
			defaults := map[string]string{}
			for _, key := range tuningSysctls {
				defaults[key] = strings.Join(strings.Fields(saved[key].(string)), " ")
			}
			if defaults[tuningSysctls[3]] != "32768 60999" || defaults[tuningSysctls[0]] != "0" {
				t.Fatalf("saved originals: %v", defaults)
			}
			if atLeast(t, v, checkSince) {
				if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}

			// DEL of tuning alone (the interface stays): everything is put back.
			del := call{Command: "DEL", ContainerID: "ctr-tune", Netns: n.Path(), IfName: "eth0", Stdin: tbStdin(t, v, bn.Name, tp, a.Res)}
			for k := 0; k < 2; k++ {
				if o := runPlugin(t, "tuning", del); o.Exit != 0 {
					t.Fatalf("tuning DEL %d: %s", k+1, o)
				}
			}
			if got := tbLink(t, n, "eth0"); got != before {
				t.Fatalf("eth0 after DEL: %s, want %s", got, before)
			}
			for key, value := range defaults {
				if got := strings.Join(strings.Fields(sysctlIn(t, n, key)), " "); got != value {
					t.Fatalf("%s = %q after DEL, want %q", key, got, value)
				}
			}
			if got := tbFiles(t, dataDir); len(got) != 0 {
				t.Fatalf("saved state left after DEL: %v", got)
			}
			for k := 0; k < 2; k++ {
				if err := e.CNI.DelNetworkList(e.Ctx(), l, a.RT); err != nil {
					t.Fatalf("DEL list %d: %v", k+1, err)
				}
			}
			netlink.LinkDel(hostLink(t, bn.Bridge))
		})
	}
}

// TestTuningRejectsBadSysctl: a key that escapes /proc/sys/net, a key
// outside net, a global net key, and a key the container does not have are
// config errors, and nothing of the config is applied.
func TestTuningRejectsBadSysctl(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "tun-bad", Bridge: "pltunbad", Subnet4: "10.161.0.0/24", DataDir: t.TempDir()}
	for i, key := range []string{"net/../../kernel/x", "net.ipv4/../../../kernel/core_pattern", "kernel.core_pattern",
		"net.core.rmem_max", "net.core.netdev_max_backlog", "net.ipv4.conf.nosuch0.arp_filter"} {
		t.Run(key, func(t *testing.T) {
			dataDir := t.TempDir()
			tp := map[string]any{"type": "tuning", "dataDir": dataDir, "mtu": 1400,
				"sysctl": map[string]string{"net.ipv4.conf.eth0.arp_filter": "1", key: "1"}}
			l := e.ConfList(tbChain(t, bn, "1.0.0", tp))
			n := testns.NewNS(t)
			rt := &libcni.RuntimeConf{ContainerID: fmt.Sprintf("ctr-bad%d", i), NetNS: n.Path(), IfName: "eth0"}
			_, err := e.CNI.AddNetworkList(e.Ctx(), l, rt)
			te := wantCode(t, err, 7)
			if !strings.Contains(te.Msg, key) && !strings.Contains(te.Msg, strings.ReplaceAll(key, ".", "/")) {
				t.Fatalf("error does not name the key: %q", te.Msg)
			}
			if got := tbLink(t, n, "eth0"); !strings.Contains(got, "mtu 1500") {
				t.Fatalf("rejected config changed eth0: %s", got)
			}
			if got := sysctlIn(t, n, "net/ipv4/conf/eth0/arp_filter"); got != "0" {
				t.Fatalf("rejected config set arp_filter to %s", got)
			}
			if got := tbFiles(t, dataDir); len(got) != 0 {
				t.Fatalf("rejected config saved state: %v", got)
			}
			e.CNI.DelNetworkList(e.Ctx(), l, rt)
		})
	}
}

// TestTuningEmptyConfigAppliesCNIArgsMAC: podman runs tuning with no
// options and the container's MAC in CNI_ARGS.
func TestTuningEmptyConfigAppliesCNIArgsMAC(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "tun-mac", Bridge: "pltunmac", Subnet4: "10.162.0.0/24", DataDir: t.TempDir()}
	l := e.ConfList(bn.conflist("1.0.0"))
	n := testns.NewNS(t)
	a := e.add(l, "ctr-mac", n)
	orig := a.Res.Interfaces[2].Mac
	tp := map[string]any{"type": "tuning", "dataDir": t.TempDir()}
	add := call{Command: "ADD", ContainerID: "ctr-mac", Netns: n.Path(), IfName: "eth0",
		Args: "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;MAC=02:42:0a:a2:00:99", Stdin: tbStdin(t, "1.0.0", bn.Name, tp, a.Res)}
	o := runPlugin(t, "tuning", add)
	if o.Exit != 0 {
		t.Fatalf("tuning ADD: %s", o)
	}
	res, err := current.NewResult(o.Stdout)
	if err != nil {
		t.Fatal(err)
	}
	r := res.(*current.Result)
	if r.Interfaces[2].Mac != "02:42:0a:a2:00:99" || r.Interfaces[0].Mac == "02:42:0a:a2:00:99" || len(r.IPs) != len(a.Res.IPs) {
		t.Fatalf("result: %s", o.Stdout)
	}
	if got := tbLink(t, n, "eth0"); !strings.HasPrefix(got, "mac 02:42:0a:a2:00:99 ") {
		t.Fatalf("eth0: %s", got)
	}
	// The container is still reachable under its new MAC.
	srv := listenTCP(t, n, net.JoinHostPort(a.ip(true).String(), "0"))
	mustReach(t, nil, srv)
	add.Command = "DEL"
	if o := runPlugin(t, "tuning", add); o.Exit != 0 {
		t.Fatalf("tuning DEL: %s", o)
	}
	if got := tbLink(t, n, "eth0"); !strings.HasPrefix(got, "mac "+orig+" ") {
		t.Fatalf("eth0 after DEL: %s, want mac %s", got, orig)
	}
	e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
}

func TestTuningCheckDetectsDrift(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "tun-drift", Bridge: "pltundr", Subnet4: "10.163.0.0/24", DataDir: t.TempDir()}
	l := e.ConfList(tbChain(t, bn, "1.1.0", tuningPlugin(t.TempDir(), "02:42:0a:a3:00:01")))
	n := testns.NewNS(t)
	a := e.add(l, "ctr-drift", n)
	defer e.CNI.DelNetworkList(e.Ctx(), l, a.RT)
	if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	setMTU := func(mtu int) {
		if err := n.Do(func() error {
			lk, err := netlink.LinkByName("eth0")
			if err != nil {
				return err
			}
			return netlink.LinkSetMTU(lk, mtu)
		}); err != nil {
			t.Fatal(err)
		}
	}
	setMTU(1300)
	if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err == nil || !strings.Contains(err.Error(), "mtu") {
		t.Fatalf("CHECK after the MTU changed: %v", err)
	}
	setMTU(1400)
	if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
		t.Fatalf("CHECK after the MTU was put back: %v", err)
	}
	if err := n.Do(func() error { return os.WriteFile("/proc/sys/net/ipv4/conf/eth0/arp_ignore", []byte("0"), 0o644) }); err != nil {
		t.Fatal(err)
	}
	if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err == nil || !strings.Contains(err.Error(), "arp_ignore") {
		t.Fatalf("CHECK after a sysctl changed: %v", err)
	}
}

func TestTuningGC(t *testing.T) {
	e := NewEnv(t)
	dataDir := t.TempDir()
	bn := bridgeNet{Name: "tun-gc", Bridge: "pltungc", Subnet4: "10.164.0.0/24", DataDir: t.TempDir()}
	l := e.ConfList(tbChain(t, bn, "1.1.0", map[string]any{"type": "tuning", "dataDir": dataDir, "mtu": 1450}))
	keep := e.add(l, "ctr-keep", testns.NewNS(t))
	e.add(l, "ctr-leak", testns.NewNS(t))
	if got := tbFiles(t, dataDir); strings.Join(got, " ") != "ctr-keep_eth0.json ctr-leak_eth0.json" {
		t.Fatalf("saved state: %v", got)
	}
	if err := e.PluginGC(l, types.GCAttachment{ContainerID: "ctr-keep", IfName: "eth0"}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := tbFiles(t, dataDir); strings.Join(got, " ") != "ctr-keep_eth0.json" {
		t.Fatalf("saved state after GC: %v", got)
	}
	if err := e.CNI.DelNetworkList(e.Ctx(), l, keep.RT); err != nil {
		t.Fatal(err)
	}
	if got := tbFiles(t, dataDir); len(got) != 0 {
		t.Fatalf("saved state after DEL: %v", got)
	}
}

// TestTuningStatus: STATUS succeeds for a chain with tuning.
func TestTuningStatus(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "tun-st", Bridge: "pltunst", Subnet4: "10.165.0.0/24", DataDir: t.TempDir()}
	l := e.ConfList(tbChain(t, bn, "1.1.0", map[string]any{"type": "tuning", "dataDir": t.TempDir()}))
	if err := e.CNI.GetStatusNetworkList(e.Ctx(), l); err != nil {
		t.Fatal(err)
	}
}
