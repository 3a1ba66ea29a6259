package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/testns"
)

// TestHostileIdentifiers: container IDs, interface names and network names
// that could reach a path, an iptables argument or an nft expression are
// rejected by every plugin with a coded CNI error, and nothing is created.
func TestHostileIdentifiers(t *testing.T) {
	NewEnv(t)
	netns := testns.NewNS(t).Path()
	dataDir := t.TempDir()
	conf := func(name string) string {
		return fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"type":"bridge","bridge":"plhostile","ipMasq":true,
		  "ipam":{"type":"host-local","dataDir":%q,"subnet":"10.77.0.0/24"}}`, name, dataDir)
	}
	long := strings.Repeat("a", 200)
	cases := []struct {
		what, id, ifname, name string
	}{
		{"id with ../", "../../etc", "eth0", "net"},
		{"id with space", "a b", "eth0", "net"},
		{"id with ;", "a;iptables -F", "eth0", "net"},
		{"id with newline", "a\nb", "eth0", "net"},
		{"id with quote", `a"b`, "eth0", "net"},
		{"overlong id", long, "eth0", "net"},
		{"ifname with /", "ctr", "a/b", "net"},
		{"ifname too long", "ctr", "abcdefghijklmnopq", "net"},
		{"ifname with space", "ctr", "et h0", "net"},
		{"name with ../", "ctr", "eth0", "../x"},
		{"name with ;", "ctr", "eth0", "a;b"},
		{"name with newline", "ctr", "eth0", "a\nb"},
		{"overlong name", "ctr", "eth0", long},
	}
	for _, plugin := range []string{"bridge", "host-local", "loopback"} {
		for _, c := range cases {
			t.Run(plugin+"/"+c.what, func(t *testing.T) {
				out := runPlugin(t, plugin, call{Command: "ADD", ContainerID: c.id, Netns: netns, IfName: c.ifname, Stdin: []byte(conf(c.name))})
				if out.Exit == 0 || out.Err == nil || out.Err.Code == 0 || out.Err.Msg == "" {
					t.Fatalf("accepted or unclear: %s", out)
				}
			})
		}
	}
	if _, err := netlink.LinkByName("plhostile"); err == nil {
		t.Fatal("a rejected ADD created the bridge")
	}
	entries, _ := os.ReadDir(dataDir)
	for _, e := range entries {
		files, _ := os.ReadDir(filepath.Join(dataDir, e.Name()))
		if len(files) > 0 {
			t.Fatalf("a rejected ADD wrote %s/%v", e.Name(), files)
		}
	}
}
