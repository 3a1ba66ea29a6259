package integration

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/testns"
)

func loopbackList(t testing.TB, v string) string {
	return confList(t, v, map[string]any{"type": "loopback"})
}

// TestLoopbackLifecycle drives ADD, CHECK, DEL (twice), GC and STATUS
// through libcni and looks at lo in the container namespace after each.
func TestLoopbackLifecycle(t *testing.T) {
	for _, v := range allSpecVersions {
		t.Run(v, func(t *testing.T) {
			e := NewEnv(t)
			n := testns.NewNS(t)
			list := e.ConfList(loopbackList(t, v))
			rt := &libcni.RuntimeConf{ContainerID: "ctr-lo", NetNS: n.Path(), IfName: "lo"}

			if up, _ := loState(t, n); up {
				t.Fatal("lo is up in a fresh namespace; the test could not tell ADD worked")
			}
			r, err := e.CNI.AddNetworkList(e.Ctx(), list, rt)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if r.Version() != v {
				t.Errorf("result version %s, want %s", r.Version(), v)
			}
			res, err := current.NewResultFromResult(r)
			if err != nil {
				t.Fatalf("convert result: %v", err)
			}
			if len(res.Interfaces) != 1 || res.Interfaces[0].Name != "lo" {
				t.Errorf("result interfaces %v, want only lo", res.Interfaces)
			}
			if len(res.Interfaces) == 1 && res.Interfaces[0].Sandbox != n.Path() {
				t.Errorf("lo sandbox %q, want %q", res.Interfaces[0].Sandbox, n.Path())
			}

			up, addrs := loState(t, n)
			if !up {
				t.Fatal("lo is down after ADD")
			}
			want := []string{"127.0.0.1/8"}
			if slices.Contains(addrs, "::1/128") {
				want = append(want, "::1/128")
			} else if ipv6Enabled() {
				t.Errorf("lo addresses %v after ADD lack ::1/128 although IPv6 is on", addrs)
			}
			if got := resultIPs(t, r); !slices.Equal(got, want) {
				t.Errorf("result IPs %v, want %v", got, want)
			}
			for _, ip := range res.IPs {
				if ip.Interface == nil || *ip.Interface != 0 {
					t.Errorf("result IP %s does not point at interface 0 (lo)", ip.Address.String())
				}
			}

			if atLeast(t, v, checkSince) {
				if err := e.CNI.CheckNetworkList(e.Ctx(), list, rt); err != nil {
					t.Errorf("CHECK after ADD: %v", err)
				}
				// CHECK must notice lo taken down behind the plugin's back.
				setLo(t, n, false)
				cniError(t, e.CNI.CheckNetworkList(e.Ctx(), list, rt))
				setLo(t, n, true)
			}

			if err := e.CNI.DelNetworkList(e.Ctx(), list, rt); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if up, _ := loState(t, n); up {
				t.Error("lo is still up after DEL")
			}
			if err := e.CNI.DelNetworkList(e.Ctx(), list, rt); err != nil {
				t.Errorf("second DEL: %v", err)
			}

			if atLeast(t, v, statusSince) {
				if err := e.CNI.GetStatusNetworkList(e.Ctx(), list); err != nil {
					t.Errorf("STATUS: %v", err)
				}
			}
			if atLeast(t, v, gcSince) {
				gc := &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "ctr-other", IfName: "lo"}}}
				if err := e.CNI.GCNetworkList(e.Ctx(), list, gc); err != nil {
					t.Errorf("GC: %v", err)
				}
				if err := e.CNI.GCNetworkList(e.Ctx(), list, &libcni.GCArgs{}); err != nil {
					t.Errorf("GC without attachments: %v", err)
				}
			}
		})
	}
}

// TestLoopbackDelAfterNetnsGone: a runtime may call DEL after the container
// and its namespace are gone; that must succeed.
func TestLoopbackDelAfterNetnsGone(t *testing.T) {
	for _, v := range allSpecVersions {
		t.Run(v, func(t *testing.T) {
			e := NewEnv(t)
			n := testns.NewRemovable(t)
			list := e.ConfList(loopbackList(t, v))
			rt := &libcni.RuntimeConf{ContainerID: "ctr-gone", NetNS: n.Path(), IfName: "lo"}
			if _, err := e.CNI.AddNetworkList(e.Ctx(), list, rt); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			n.Remove()
			if _, err := os.Stat(rt.NetNS); !os.IsNotExist(err) {
				t.Fatalf("netns %s still exists (stat: %v)", rt.NetNS, err)
			}
			if err := e.CNI.DelNetworkList(e.Ctx(), list, rt); err != nil {
				t.Errorf("DEL with a deleted netns: %v", err)
			}
			// And with no netns at all, as runtimes send when they lost it.
			rt.NetNS = ""
			if err := e.CNI.DelNetworkList(e.Ctx(), list, rt); err != nil {
				t.Errorf("DEL without a netns: %v", err)
			}
		})
	}
}

// TestLoopbackAddBadNetns: ADD into a namespace that does not exist, or a
// file that is not a namespace, fails with "invalid netns" (8).
func TestLoopbackAddBadNetns(t *testing.T) {
	notNS := filepath.Join(t.TempDir(), "not-a-netns")
	if err := os.WriteFile(notNS, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	paths := map[string]string{
		"missing":  "/var/run/netns/plumb-test-does-not-exist",
		"not-a-ns": notNS,
	}
	for _, v := range allSpecVersions {
		for name, path := range paths {
			t.Run(v+"/"+name, func(t *testing.T) {
				e := NewEnv(t)
				list := e.ConfList(loopbackList(t, v))
				rt := &libcni.RuntimeConf{ContainerID: "ctr-bad", NetNS: path, IfName: "lo"}
				_, err := e.CNI.AddNetworkList(e.Ctx(), list, rt)
				wantCode(t, err, cniplugin.CodeInvalidNetNS)
			})
		}
	}
}

// ipv6Enabled reports whether the kernel has IPv6, so lo gets ::1 when up.
func ipv6Enabled() bool {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/default/disable_ipv6")
	return err == nil && len(b) > 0 && b[0] == '0'
}
