package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/testns"
)

// Rules repair themselves: after someone flushes the firewall, CHECK says
// so, and a re-ADD of the whole chain (by the runtime, or by plumb doctor
// --fix from libcni's cache) brings back every container's rules.

// repairChain is the full chain on one backend: bridge (gateway,
// masquerade, MAC spoof check) with host-local, portmap, firewall.
func repairChain(t *testing.T, n int, backend string) (pmNet, string) {
	t.Helper()
	p := newPMNet(t, "repair-"+backend, n, backend)
	p.Extra["ipMasq"] = true
	p.Extra["ipMasqBackend"] = backend
	p.Extra["macspoofchk"] = true
	var list map[string]any
	if err := json.Unmarshal([]byte(p.conflist(t, "1.1.0")), &list); err != nil {
		t.Fatal(err)
	}
	list["plugins"] = append(list["plugins"].([]any), firewallPlugin(backend))
	return p, string(mustJSON(t, list))
}

// flushFirewall does to the test's host namespace what firewall-cmd
// --reload or an admin does. With whole, everything goes: nft flush
// ruleset, or iptables -F and -X; otherwise only rules: nft flush table on
// each of plumb's tables (chains, sets and map elements stay), or iptables -F.
func flushFirewall(t *testing.T, backend string, whole bool) {
	t.Helper()
	switch {
	case backend == "nftables" && whole:
		mustRun(t, "nft", "flush", "ruleset")
	case backend == "nftables":
		for _, line := range strings.Split(mustRun(t, "nft", "list", "tables"), "\n") {
			if f := strings.Fields(line); len(f) == 3 && strings.HasPrefix(f[2], "plumb") {
				mustRun(t, "nft", "flush", "table", f[1], f[2])
			}
		}
	default:
		for _, ipt := range []string{"iptables", "ip6tables"} {
			mustRun(t, ipt, "-w", "-t", "nat", "-F")
			mustRun(t, ipt, "-w", "-F")
			if whole {
				mustRun(t, ipt, "-w", "-t", "nat", "-X")
				mustRun(t, ipt, "-w", "-X")
			}
		}
	}
}

// repairedTraffic: the published port answers from outside in both
// families, and the container's own connections out are masqueraded.
func repairedTraffic(t *testing.T, ext *netns.NS, a *attachment, hostPort int, srv4, srv6 string) {
	t.Helper()
	for _, c := range []struct{ host, src string }{{hostExt4, extAddr4}, {hostExt6, extAddr6}} {
		if src := mustReach(t, ext, hp(c.host, hostPort)); src != c.src {
			t.Errorf("published port %s: server saw %s, want %s", hp(c.host, hostPort), src, c.src)
		}
	}
	for _, c := range []struct{ srv, src string }{{srv4, hostExt4}, {srv6, hostExt6}} {
		if src := mustReach(t, a.NS, c.srv); src != c.src {
			t.Errorf("container to %s: server saw %s, want the host's %s (masquerade)", c.srv, src, c.src)
		}
	}
}

// brokenTraffic: neither works after the flush.
func brokenTraffic(t *testing.T, ext *netns.NS, a *attachment, hostPort int, srv4 string) {
	t.Helper()
	mustNotConnect(t, ext, hp(hostExt4, hostPort))
	mustNotConnect(t, a.NS, srv4)
}

// externalServers listen in ext on both families.
func externalServers(t *testing.T, ext *netns.NS) (srv4, srv6 string) {
	t.Helper()
	return listenTCP(t, ext, hp(extAddr4, 0)), listenTCP(t, ext, hp(extAddr6, 0))
}

// sameAttachment fails unless a re-ADD result names the same host veth and
// container interface, MACs included, and the same addresses. The bridge's
// MAC is left out: the bridge takes the lowest of its ports' MACs, so it
// moves as other containers come and go.
func sameAttachment(t *testing.T, first, again *current.Result) {
	t.Helper()
	if len(first.Interfaces) != 3 || len(again.Interfaces) != 3 {
		t.Fatalf("results list %d and %d interfaces, want bridge, veth, container", len(first.Interfaces), len(again.Interfaces))
	}
	for _, v := range []struct {
		what     string
		was, now any
	}{{"interfaces", first.Interfaces[1:], again.Interfaces[1:]}, {"addresses", first.IPs, again.IPs}} {
		was, now := string(mustJSON(t, v.was)), string(mustJSON(t, v.now))
		if was != now {
			t.Fatalf("re-ADD changed the %s:\n got %s\nwant %s", v.what, now, was)
		}
	}
	if first.Interfaces[0].Name != again.Interfaces[0].Name {
		t.Fatalf("re-ADD moved to bridge %s from %s", again.Interfaces[0].Name, first.Interfaces[0].Name)
	}
}

// TestRepairAfterFlush, per backend: the full chain works, a flush breaks
// its traffic and CHECK, and a re-ADD through libcni (same addresses and
// MACs) or plumb doctor --fix for two containers at once restores both.
func TestRepairAfterFlush(t *testing.T) {
	for i, backend := range pmBackends {
		t.Run(backend+"/re-ADD", func(t *testing.T) {
			e := fwEnv(t)
			ext := pmExternal(t)
			srv4, srv6 := externalServers(t, ext)
			_, js := repairChain(t, 40+2*i, backend)
			l := e.ConfList(js)
			ns := testns.NewNS(t)
			servers(t, ns)
			a := e.addPM(l, "ctr-repair-"+backend, ns, "tcp 8080:80")
			if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
				t.Fatalf("CHECK after ADD: %v", err)
			}
			repairedTraffic(t, ext, a, 8080, srv4, srv6)

			flushFirewall(t, backend, true)
			if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err == nil {
				t.Fatal("CHECK passed after the firewall was flushed")
			}
			brokenTraffic(t, ext, a, 8080, srv4)

			r, err := e.CNI.AddNetworkList(e.Ctx(), l, a.RT)
			if err != nil {
				t.Fatalf("re-ADD after the flush: %v", err)
			}
			again, err := current.NewResultFromResult(r)
			if err != nil {
				t.Fatal(err)
			}
			sameAttachment(t, a.Res, again)
			if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
				t.Fatalf("CHECK after re-ADD: %v", err)
			}
			repairedTraffic(t, ext, a, 8080, srv4, srv6)
		})

		t.Run(backend+"/doctor", func(t *testing.T) {
			e := fwEnv(t)
			ext := pmExternal(t)
			srv4, srv6 := externalServers(t, ext)
			p, js := repairChain(t, 41+2*i, backend)
			l := e.ConfList(js)
			// plumb reads the network from a config directory and the
			// attachments from the cache this test's libcni client writes.
			c := &cliEnv{t: t, netDir: t.TempDir(), dataDir: p.DataDir, cacheDir: e.Cache}
			if err := os.WriteFile(filepath.Join(c.netDir, "10-"+p.Name+".conflist"), []byte(js), 0o600); err != nil {
				t.Fatal(err)
			}
			var atts []*attachment
			for j := 0; j < 2; j++ {
				ns := testns.NewNS(t)
				servers(t, ns)
				atts = append(atts, e.addPM(l, fmt.Sprintf("ctr-doctor-%s-%d", backend, j), ns, fmt.Sprintf("tcp %d:80", 8080+j)))
			}
			for j, a := range atts {
				repairedTraffic(t, ext, a, 8080+j, srv4, srv6)
			}

			flushFirewall(t, backend, false)
			for j, a := range atts {
				if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err == nil {
					t.Fatalf("CHECK of %s passed after the firewall was flushed", a.RT.ContainerID)
				}
				brokenTraffic(t, ext, a, 8080+j, srv4)
			}
			out, errOut, code := c.plumb("doctor", p.Name)
			if code != 1 {
				t.Fatalf("doctor after the flush: exit %d, want 1\n%s%s", code, out, errOut)
			}
			for _, a := range atts {
				if !strings.Contains(out, "rules of container "+a.RT.ContainerID+" (eth0) in network "+p.Name+" missing") {
					t.Fatalf("doctor does not report %s:\n%s", a.RT.ContainerID, out)
				}
			}
			out, errOut, code = c.plumb("doctor", "--fix", p.Name)
			if code != 0 || strings.Contains(out, "could not fix") {
				t.Fatalf("doctor --fix: exit %d\n%s%s", code, out, errOut)
			}
			for j, a := range atts {
				if err := e.CNI.CheckNetworkList(e.Ctx(), l, a.RT); err != nil {
					t.Fatalf("CHECK of %s after doctor --fix: %v", a.RT.ContainerID, err)
				}
				cached, err := e.CNI.GetNetworkListCachedResult(l, a.RT)
				if err != nil {
					t.Fatal(err)
				}
				again, err := current.NewResultFromResult(cached)
				if err != nil {
					t.Fatal(err)
				}
				sameAttachment(t, a.Res, again)
				repairedTraffic(t, ext, a, 8080+j, srv4, srv6)
			}
			if out, _, code := c.plumb("doctor", p.Name); strings.Contains(out, "[rules]") || code != 0 {
				t.Fatalf("doctor after --fix: exit %d\n%s", code, out)
			}
		})
	}
}

// TestRepairDoctorStaleNetns: an attachment whose namespace is gone is
// reported as stale, not re-ADDed.
func TestRepairDoctorStaleNetns(t *testing.T) {
	e := NewEnv(t)
	bn := bridgeNet{Name: "repstale", Bridge: "plrepstale", Subnet4: "10.244.0.0/24", DataDir: t.TempDir()}
	js := bn.conflist("1.1.0")
	l := e.ConfList(js)
	ns := testns.NewRemovable(t)
	rt := &libcni.RuntimeConf{ContainerID: "ctr-stale", NetNS: ns.Path(), IfName: "eth0"}
	if _, err := e.CNI.AddNetworkList(e.Ctx(), l, rt); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.CNI.DelNetworkList(e.Ctx(), l, rt) })
	ns.Remove()
	c := &cliEnv{t: t, netDir: t.TempDir(), dataDir: bn.DataDir, cacheDir: e.Cache}
	if err := os.WriteFile(filepath.Join(c.netDir, "repstale.conflist"), []byte(js), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, code := c.plumb("doctor", "--fix", "repstale")
	if code != 1 || !strings.Contains(out, "[stale] attachment ctr-stale/eth0 of network repstale") || strings.Contains(out, "[rules]") {
		t.Fatalf("doctor --fix with the namespace gone: exit %d\n%s", code, out)
	}
}
