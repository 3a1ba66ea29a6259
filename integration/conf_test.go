package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/plumbnet/plumb/internal/testns"
)

// confDir holds the example conflists users copy.
func confDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../conf")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// withDataDir points every host-local in list at dir, so the test keeps
// its reservations out of /var/lib/cni.
func withDataDir(t *testing.T, list *libcni.NetworkConfigList, dir string) *libcni.NetworkConfigList {
	t.Helper()
	var raw map[string]any
	if err := json.Unmarshal(list.Bytes, &raw); err != nil {
		t.Fatal(err)
	}
	for _, p := range raw["plugins"].([]any) {
		if ipam, ok := p.(map[string]any)["ipam"].(map[string]any); ok {
			ipam["dataDir"] = dir
		}
	}
	b, _ := json.Marshal(raw)
	out, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestExampleConfs runs every conf/*.conflist through ADD, CHECK, a
// container-to-gateway connection, GC and DEL, as a runtime would.
func TestExampleConfs(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(confDir(t), "*.conflist"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no example conflists: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			e := NewEnv(t)
			list, err := libcni.ConfListFromFile(f)
			if err != nil {
				t.Fatalf("parse %s: %v", f, err)
			}
			data := t.TempDir()
			list = withDataDir(t, list, data)
			a := e.add(list, "ctr-conf", testns.NewNS(t))
			if len(a.Res.IPs) == 0 || a.Res.IPs[0].Gateway == nil {
				t.Fatalf("result has no address with a gateway: %+v", a.Res)
			}
			srv := listenTCP(t, nil, "["+a.Res.IPs[0].Gateway.String()+"]:0")
			mustReach(t, a.NS, srv)
			if err := e.CNI.CheckNetworkList(e.Ctx(), list, a.RT); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			if err := e.CNI.DelNetworkList(e.Ctx(), list, a.RT); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			entries, _ := os.ReadDir(filepath.Join(data, list.Name))
			// The owner index stays, with only its stamp once nobody holds
			// an address.
			if idx, _ := os.ReadDir(filepath.Join(data, list.Name, ".plumb-owners")); len(idx) > 1 {
				t.Fatalf("owner index not empty after DEL: %v", idx)
			}
			for _, en := range entries {
				if en.Name() != "lock" && en.Name() != ".plumb-owners" && !strings.HasPrefix(en.Name(), "last_reserved_ip") {
					t.Fatalf("left in the data dir after DEL: %s", en.Name())
				}
			}
			vethGoneSoon(t, a.Res.Interfaces[1].Name)
		})
	}
}
