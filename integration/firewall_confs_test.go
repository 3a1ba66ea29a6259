package integration

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/testns"
)

// builtOnly drops the plugins of list whose binary was not built, naming
// them in the log, so a runtime's conflist runs with what exists.
func builtOnly(t *testing.T, list *libcni.NetworkConfigList) *libcni.NetworkConfigList {
	t.Helper()
	var raw map[string]any
	if err := json.Unmarshal(list.Bytes, &raw); err != nil {
		t.Fatal(err)
	}
	var kept []any
	for _, p := range raw["plugins"].([]any) {
		typ := p.(map[string]any)["type"].(string)
		if _, err := os.Stat(filepath.Join(binDir, typ)); err != nil {
			t.Logf("plugin %q is not built yet: left out of the chain", typ)
			continue
		}
		kept = append(kept, p)
	}
	raw["plugins"] = kept
	out, err := libcni.ConfListFromBytes(mustJSON(t, raw))
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestFirewallRuntimeConfs runs the conflists podman 4 and nerdctl write
// (conf/podman-*.conflist, conf/nerdctl-*.conflist) on a host whose FORWARD
// policy is DROP: two containers reach each other, the gateway and the
// outside, a third's published port answers the external peer (and stops
// after its DEL), CHECK passes, and DEL leaves none of their filter rules.
func TestFirewallRuntimeConfs(t *testing.T) {
	var files []string
	for _, pattern := range []string{"podman-*.conflist", "nerdctl-*.conflist"} {
		m, err := filepath.Glob(filepath.Join(confDir(t), pattern))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		t.Skip("no podman or nerdctl conflist in conf/")
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			e := fwEnv(t)
			list, err := libcni.ConfListFromFile(f)
			if err != nil {
				t.Fatalf("parse %s: %v", f, err)
			}
			list = builtOnly(t, withDataDir(t, list, t.TempDir()))
			ext := external(t)
			srv := listenTCP(t, ext, "192.0.2.2:0")
			forwardDrop(t)
			a := e.add(list, "ctr-a", testns.NewNS(t))
			b := e.add(list, "ctr-b", testns.NewNS(t))
			mustReach(t, b.NS, serve(t, a))
			mustReach(t, a.NS, srv)
			gw := listenTCP(t, nil, net.JoinHostPort(a.Res.IPs[0].Gateway.String(), "0"))
			mustReach(t, a.NS, gw)
			// A published port, reached from the external peer through the host.
			pn := testns.NewNS(t)
			prt := &libcni.RuntimeConf{ContainerID: "ctr-pub", NetNS: pn.Path(), IfName: "eth0",
				CapabilityArgs: map[string]any{"portMappings": []map[string]any{{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}}}}
			r, err := e.CNI.AddNetworkList(e.Ctx(), list, prt)
			if err != nil {
				t.Fatalf("ADD with a published port: %v", err)
			}
			pres, _ := current.NewResultFromResult(r)
			listenTCP(t, pn, net.JoinHostPort(pres.IPs[0].Address.IP.String(), "80"))
			if src := mustReach(t, ext, "192.0.2.1:18080"); src != "192.0.2.2" {
				t.Fatalf("published port: the container saw %s, want the external peer 192.0.2.2", src)
			}
			if err := e.CNI.DelNetworkList(e.Ctx(), list, prt); err != nil {
				t.Fatal(err)
			}
			if _, err := dialTCP(ext, "192.0.2.1:18080"); err == nil {
				t.Fatal("the port is still published after DEL")
			}
			for _, at := range []*attachment{a, b} {
				if err := e.CNI.CheckNetworkList(e.Ctx(), list, at.RT); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}
			for _, at := range []*attachment{a, b} {
				if err := e.CNI.DelNetworkList(e.Ctx(), list, at.RT); err != nil {
					t.Fatalf("DEL: %v", err)
				}
				if left := rulesOf(t, at.ip(true).String()); len(left) > 0 {
					t.Fatalf("rules of %s left after DEL: %q", at.ip(true), left)
				}
			}
		})
	}
}
