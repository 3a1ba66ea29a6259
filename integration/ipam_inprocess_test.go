package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/plumbnet/plumb/internal/testns"
)

// TestBridgeRunsOwnHostLocalInProcess: bridge runs host-local in its own
// process only when the host-local on CNI_PATH is plumb's, of this build;
// any other host-local (here a wrapper script, as a site might install) is
// exec'd as the runtime would.
func TestBridgeRunsOwnHostLocalInProcess(t *testing.T) {
	e := NewEnv(t)
	pathWith := func(hostLocal func(dir string)) *libcni.CNIConfig {
		dir := t.TempDir()
		if err := os.Symlink(filepath.Join(binDir, "bridge"), filepath.Join(dir, "bridge")); err != nil {
			t.Fatal(err)
		}
		hostLocal(dir)
		return libcni.NewCNIConfigWithCacheDir([]string{dir}, t.TempDir(), nil)
	}

	// plumb's host-local without the execute bit: ADD and DEL work only
	// if bridge never execs it.
	cni := pathWith(func(dir string) {
		b, err := os.ReadFile(filepath.Join(binDir, "host-local"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "host-local"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	})
	chainAddDel(t, e, cni, "inproc", 1)

	// A wrapper is exec'd, for every verb.
	calls := filepath.Join(t.TempDir(), "calls")
	cni = pathWith(func(dir string) {
		script := fmt.Sprintf("#!/bin/sh\necho \"$CNI_COMMAND\" >> %s\nexec %s \"$@\"\n", calls, filepath.Join(binDir, "host-local"))
		if err := os.WriteFile(filepath.Join(dir, "host-local"), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	})
	chainAddDel(t, e, cni, "wrapped", 2)
	if b, _ := os.ReadFile(calls); strings.Join(strings.Fields(string(b)), " ") != "ADD DEL" {
		t.Errorf("the wrapper host-local saw %q, want ADD then DEL", b)
	}
}

// chainAddDel runs ADD then DEL of a bridge network through cni, checking
// that the address is reserved between the two and released after.
func chainAddDel(t *testing.T, e *Env, cni *libcni.CNIConfig, name string, n int) {
	t.Helper()
	data := t.TempDir()
	bn := bridgeNet{Name: name, Bridge: "pl" + name, Subnet4: fmt.Sprintf("10.61.%d.0/24", n), DataDir: data}
	l := e.ConfList(bn.conflist("1.0.0"))
	rt := &libcni.RuntimeConf{ContainerID: "ctr-" + name, NetNS: testns.NewNS(t).Path(), IfName: "eth0"}
	if _, err := cni.AddNetworkList(e.Ctx(), l, rt); err != nil {
		t.Fatalf("%s: ADD: %v", name, err)
	}
	reservation := filepath.Join(data, name, fmt.Sprintf("10.61.%d.2", n))
	if _, err := os.Stat(reservation); err != nil {
		t.Errorf("%s: no reservation after ADD: %v", name, err)
	}
	if err := cni.DelNetworkList(e.Ctx(), l, rt); err != nil {
		t.Fatalf("%s: DEL: %v", name, err)
	}
	if _, err := os.Stat(reservation); err == nil {
		t.Errorf("%s: %s still reserved after DEL", name, filepath.Base(reservation))
	}
}
