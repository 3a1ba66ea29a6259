package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/testns"
)

func TestMain(m *testing.M) { testns.MainInHostNS(m) }

// vethIn makes a veth pair eth0/peer0 inside n (as root, in a throwaway
// namespace).
func vethIn(t *testing.T, path string, do func(func() error) error) {
	t.Helper()
	if err := do(func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", TxQLen: -1}, PeerName: "peer0"})
	}); err != nil {
		t.Fatalf("veth in %s: %v", path, err)
	}
}

func TestTuningRealTarget(t *testing.T) {
	n := testns.NewNS(t)
	vethIn(t, n.Path(), n.Do)
	tg, err := openTarget(n.Path(), "eth0")
	if err != nil {
		t.Fatal(err)
	}
	defer tg.Close()
	on, q := true, 77
	want := Settings{MAC: "02:00:00:00:10:01", MTU: 1400, Promisc: &on, Allmulti: &on, TxQLen: &q,
		Sysctl: map[string]string{"net/ipv4/conf/eth0/arp_filter": "1", "net/ipv4/ip_local_port_range": "20000 30000"}}
	if err := tg.Write(want); err != nil {
		t.Fatal(err)
	}
	got, err := tg.Read(want)
	if err != nil {
		t.Fatal(err)
	}
	if got.MAC != want.MAC || got.MTU != 1400 || !*got.Promisc || !*got.Allmulti || *got.TxQLen != 77 ||
		got.Sysctl["net/ipv4/conf/eth0/arp_filter"] != "1" || got.Sysctl["net/ipv4/ip_local_port_range"] != "20000\t30000" {
		t.Fatalf("read back %+v %v", got, got.Sysctl)
	}
	// Write-only sysctls are left out of a read; missing ones are errors.
	got, err = tg.Read(Settings{Sysctl: map[string]string{"net/ipv4/route/flush": ""}})
	if err != nil || len(got.Sysctl) != 0 {
		t.Fatalf("write-only sysctl: %v %v", got.Sysctl, err)
	}
	if _, err := tg.Read(Settings{Sysctl: map[string]string{"net/ipv4/conf/nosuch0/arp_filter": ""}}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing sysctl: %v", err)
	}
	if err := tg.Write(Settings{Sysctl: map[string]string{"net/ipv4/conf/nosuch0/arp_filter": "1"}}); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("write missing sysctl: %v", err)
	}
	// Sysctls are the container's: the test's host namespace is untouched.
	if v := readHostSysctl(t, "net/ipv4/ip_local_port_range"); v == "20000\t30000" {
		t.Fatal("sysctl written outside the container namespace")
	}
	gone, err := openTarget(n.Path(), "nosuch0")
	if err != nil {
		t.Fatal(err)
	}
	defer gone.Close()
	if _, err := gone.Read(Settings{MTU: 1}); !errors.Is(err, errNoLink) {
		t.Fatalf("missing interface: %v", err)
	}
	if err := gone.Write(Settings{MTU: 1500}); !errors.Is(err, errNoLink) {
		t.Fatalf("missing interface: %v", err)
	}
}

// TestRefusesInitialNamespace: even given PID 1's namespace path, tuning
// opens nothing there to change (it only compares the namespace's inode).
func TestTuningRefusesInitialNamespace(t *testing.T) {
	testns.RequireRoot(t)
	if _, err := os.Stat("/proc/1/ns/net"); err != nil {
		t.Skipf("PID 1's namespace is not visible here: %v", err)
	}
	if _, err := openTarget("/proc/1/ns/net", "eth0"); !errors.Is(err, errInitNS) {
		t.Fatalf("got %v", err)
	}
}

func TestTuningRealAddCheckDel(t *testing.T) {
	n := testns.NewNS(t)
	vethIn(t, n.Path(), n.Do)
	p := &Plugin{Open: openTarget, Now: time.Now}
	stdin := fmt.Sprintf(`"dataDir":%q,"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":%q}]},
		"mtu":1280,"sysctl":{"net.ipv4.conf.IFNAME.arp_ignore":"2"}`, t.TempDir(), n.Path())
	args := &skel.CmdArgs{ContainerID: "real", Netns: n.Path(), IfName: "eth0", StdinData: conf(stdin)}
	if _, err := p.Add(args); err != nil {
		t.Fatal(err)
	}
	if err := p.Check(args); err != nil {
		t.Fatal(err)
	}
	if err := p.Del(args); err != nil {
		t.Fatal(err)
	}
	if err := p.Check(args); err == nil {
		t.Fatal("CHECK passed after DEL restored the values")
	}
	tg, _ := openTarget(n.Path(), "eth0")
	defer tg.Close()
	got, err := tg.Read(Settings{MTU: 1, Sysctl: map[string]string{"net/ipv4/conf/eth0/arp_ignore": ""}})
	if err != nil || got.MTU != 1500 || got.Sysctl["net/ipv4/conf/eth0/arp_ignore"] != "0" {
		t.Fatalf("after DEL: %+v %v", got, err)
	}
}

func readHostSysctl(t *testing.T, key string) string {
	t.Helper()
	b, err := os.ReadFile(sysctlRoot + key)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}
