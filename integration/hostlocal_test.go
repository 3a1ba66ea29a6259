package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/testns"
)

// hlEnv is one host-local test: a libcni client, a private dataDir and a
// container namespace to name in CNI_NETNS (host-local does not enter it).
type hlEnv struct {
	*Env
	DataDir string
	Netns   string
}

func newHLEnv(t *testing.T) *hlEnv {
	t.Helper()
	e := NewEnv(t)
	return &hlEnv{Env: e, DataDir: t.TempDir(), Netns: testns.NewNS(t).Path()}
}

func (h *hlEnv) rt(containerID string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: containerID, NetNS: h.Netns, IfName: "eth0"}
}

// add runs ADD through libcni and returns the result's addresses.
func (h *hlEnv) add(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) []string {
	h.T.Helper()
	r, err := h.CNI.AddNetworkList(h.Ctx(), list, rt)
	if err != nil {
		h.T.Fatalf("ADD %s/%s: %v", rt.ContainerID, rt.IfName, err)
	}
	if r.Version() != list.CNIVersion {
		h.T.Errorf("ADD result version %s, want %s", r.Version(), list.CNIVersion)
	}
	return resultIPs(h.T, r)
}

func (h *hlEnv) del(list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) {
	h.T.Helper()
	if err := h.CNI.DelNetworkList(h.Ctx(), list, rt); err != nil {
		h.T.Fatalf("DEL %s/%s: %v", rt.ContainerID, rt.IfName, err)
	}
}

func wantIPs(t testing.TB, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Fatalf("addresses %v, want %v", got, want)
	}
}

// TestHostLocalLifecycle: ADD reserves the first free address in a file
// naming the attachment, CHECK passes, DEL removes it, and repeated or
// unknown DELs succeed.
func TestHostLocalLifecycle(t *testing.T) {
	for _, v := range allSpecVersions {
		t.Run(v, func(t *testing.T) {
			h := newHLEnv(t)
			list := h.ConfList(hostLocal{DataDir: h.DataDir}.list(t, v))
			rt := h.rt("ctr1")

			// .0 is the network, .1 the default gateway, .255 broadcast.
			wantIPs(t, h.add(list, rt), "10.10.0.2/24")
			wantReservations(t, h.DataDir, map[string]string{"10.10.0.2": ownerLine("ctr1", "eth0")})

			if atLeast(t, v, checkSince) {
				if err := h.CNI.CheckNetworkList(h.Ctx(), list, rt); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			h.del(list, rt)
			wantReservations(t, h.DataDir, map[string]string{})
			h.del(list, rt)
			h.del(list, h.rt("ctr-never-added"))
			wantReservations(t, h.DataDir, map[string]string{})
		})
	}
}

// TestHostLocalRoundRobin: addresses are handed out in order, and a
// released one is not reused before the range wraps.
func TestHostLocalRoundRobin(t *testing.T) {
	for _, v := range allSpecVersions {
		t.Run(v, func(t *testing.T) {
			h := newHLEnv(t)
			list := h.ConfList(hostLocal{DataDir: h.DataDir}.list(t, v))
			for i, want := range []string{"10.10.0.2/24", "10.10.0.3/24", "10.10.0.4/24"} {
				wantIPs(t, h.add(list, h.rt(fmt.Sprintf("ctr%d", i))), want)
			}
			h.del(list, h.rt("ctr1"))
			wantIPs(t, h.add(list, h.rt("ctr3")), "10.10.0.5/24")
			wantReservations(t, h.DataDir, map[string]string{
				"10.10.0.2": ownerLine("ctr0", "eth0"),
				"10.10.0.4": ownerLine("ctr2", "eth0"),
				"10.10.0.5": ownerLine("ctr3", "eth0"),
			})
		})
	}
}

// TestHostLocalSkipsReservedAddresses: a range spanning a whole /29 never
// hands out the network address, the gateway or the broadcast address.
func TestHostLocalSkipsReservedAddresses(t *testing.T) {
	for _, v := range allSpecVersions {
		t.Run(v, func(t *testing.T) {
			h := newHLEnv(t)
			c := hostLocal{DataDir: h.DataDir, Ranges: [][]map[string]any{{{
				"subnet": "10.10.0.0/29", "rangeStart": "10.10.0.0", "rangeEnd": "10.10.0.7", "gateway": "10.10.0.1",
			}}}}
			list := h.ConfList(c.list(t, v))
			for i := 2; i <= 6; i++ {
				wantIPs(t, h.add(list, h.rt(fmt.Sprintf("ctr%d", i))), fmt.Sprintf("10.10.0.%d/29", i))
			}
			_, err := h.CNI.AddNetworkList(h.Ctx(), list, h.rt("ctr7"))
			wantCode(t, err, cniplugin.CodeExhausted)
		})
	}
}

// TestHostLocalDualStack: one address from each range set.
func TestHostLocalDualStack(t *testing.T) {
	for _, v := range allSpecVersions {
		t.Run(v, func(t *testing.T) {
			h := newHLEnv(t)
			conf := hostLocal{DataDir: h.DataDir, Ranges: [][]map[string]any{
				{{"subnet": "10.10.0.0/24"}},
				{{"subnet": "fd00:10::/64"}},
			}}
			list := h.ConfList(conf.list(t, v))
			rt := h.rt("ctr1")
			wantIPs(t, h.add(list, rt), "10.10.0.2/24", "fd00:10::2/64")
			wantReservations(t, h.DataDir, map[string]string{
				"10.10.0.2":  ownerLine("ctr1", "eth0"),
				"fd00:10::2": ownerLine("ctr1", "eth0"),
			})
			if atLeast(t, v, checkSince) {
				if err := h.CNI.CheckNetworkList(h.Ctx(), list, rt); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			h.del(list, rt)
			wantReservations(t, h.DataDir, map[string]string{})
		})
	}
}

// TestHostLocalRequestedIP: each of the three ways to ask for an address
// yields exactly it; a taken or foreign one fails with 101.
func TestHostLocalRequestedIP(t *testing.T) {
	// ask sets up a request for ip on a config and a runtime config.
	type ask func(c *hostLocal, rt *libcni.RuntimeConf, ip string)
	ways := map[string]ask{
		"CNI_ARGS": func(_ *hostLocal, rt *libcni.RuntimeConf, ip string) {
			rt.Args = [][2]string{{"IP", ip}}
		},
		"args.cni.ips": func(c *hostLocal, _ *libcni.RuntimeConf, ip string) {
			c.Plugin = map[string]any{"args": map[string]any{"cni": map[string]any{"ips": []string{ip}}}}
		},
		"runtimeConfig.ips": func(c *hostLocal, rt *libcni.RuntimeConf, ip string) {
			c.Plugin = map[string]any{"capabilities": map[string]bool{"ips": true}}
			rt.CapabilityArgs = map[string]any{"ips": []string{ip}}
		},
	}
	for _, v := range allSpecVersions {
		for name, how := range ways {
			t.Run(v+"/"+name, func(t *testing.T) {
				h := newHLEnv(t)
				request := func(containerID, ip string) (*libcni.NetworkConfigList, *libcni.RuntimeConf) {
					c := hostLocal{DataDir: h.DataDir}
					rt := h.rt(containerID)
					how(&c, rt, ip)
					return h.ConfList(c.list(t, v)), rt
				}

				list, rt := request("ctr-a", "10.10.0.42")
				wantIPs(t, h.add(list, rt), "10.10.0.42/24")
				want := map[string]string{"10.10.0.42": ownerLine("ctr-a", "eth0")}
				wantReservations(t, h.DataDir, want)

				// The same address for another container is taken.
				list, rt = request("ctr-b", "10.10.0.42")
				_, err := h.CNI.AddNetworkList(h.Ctx(), list, rt)
				wantCode(t, err, cniplugin.CodeAddressUnavailable)
				wantReservations(t, h.DataDir, want)

				// Outside every range.
				list, rt = request("ctr-c", "10.20.0.5")
				_, err = h.CNI.AddNetworkList(h.Ctx(), list, rt)
				wantCode(t, err, cniplugin.CodeAddressUnavailable)
				wantReservations(t, h.DataDir, want)

				// Not handed out round-robin to the next container either.
				plain := h.ConfList(hostLocal{DataDir: h.DataDir}.list(t, v))
				wantIPs(t, h.add(plain, h.rt("ctr-d")), "10.10.0.43/24")
			})
		}
	}
}

// TestHostLocalIPRangesCapability: runtimeConfig.ipRanges replaces the
// configured ranges.
func TestHostLocalIPRangesCapability(t *testing.T) {
	for _, v := range allSpecVersions {
		t.Run(v, func(t *testing.T) {
			h := newHLEnv(t)
			c := hostLocal{DataDir: h.DataDir, Plugin: map[string]any{"capabilities": map[string]bool{"ipRanges": true}}}
			list := h.ConfList(c.list(t, v))
			rt := h.rt("ctr1")
			rt.CapabilityArgs = map[string]any{"ipRanges": [][]map[string]string{{{"subnet": "10.99.0.0/24"}}}}
			wantIPs(t, h.add(list, rt), "10.99.0.2/24")
			wantReservations(t, h.DataDir, map[string]string{"10.99.0.2": ownerLine("ctr1", "eth0")})
			h.del(list, rt)
			wantReservations(t, h.DataDir, map[string]string{})
		})
	}
}

// TestHostLocalExhaustion: a four-address range takes four ADDs, then
// fails with 100 naming the range; STATUS says 50 until one is released.
func TestHostLocalExhaustion(t *testing.T) {
	for _, v := range allSpecVersions {
		t.Run(v, func(t *testing.T) {
			h := newHLEnv(t)
			c := hostLocal{DataDir: h.DataDir, Ranges: [][]map[string]any{{{
				"subnet": "10.10.0.0/24", "rangeStart": "10.10.0.2", "rangeEnd": "10.10.0.5",
			}}}}
			list := h.ConfList(c.list(t, v))
			for i := range 4 {
				wantIPs(t, h.add(list, h.rt(fmt.Sprintf("ctr%d", i))), fmt.Sprintf("10.10.0.%d/24", i+2))
			}
			_, err := h.CNI.AddNetworkList(h.Ctx(), list, h.rt("ctr4"))
			te := wantCode(t, err, cniplugin.CodeExhausted)
			if !strings.Contains(te.Msg+te.Details, "10.10.0.2-10.10.0.5") {
				t.Errorf("exhaustion message %q (details %q) does not name the range 10.10.0.2-10.10.0.5", te.Msg, te.Details)
			}
			if got := len(reservationFiles(t, h.DataDir)); got != 4 {
				t.Errorf("%d reservation files after the failed ADD, want 4", got)
			}

			if atLeast(t, v, statusSince) {
				wantCode(t, h.CNI.GetStatusNetworkList(h.Ctx(), list), cniplugin.CodeNotAvailable)
			}
			h.del(list, h.rt("ctr1"))
			if atLeast(t, v, statusSince) {
				if err := h.CNI.GetStatusNetworkList(h.Ctx(), list); err != nil {
					t.Errorf("STATUS after a DEL: %v", err)
				}
			}
			wantIPs(t, h.add(list, h.rt("ctr4")), "10.10.0.3/24")
		})
	}
}

// TestHostLocalGC: GC keeps only the attachments the runtime lists.
func TestHostLocalGC(t *testing.T) {
	h := newHLEnv(t)
	list := h.ConfList(hostLocal{DataDir: h.DataDir}.list(t, gcSince))
	for _, id := range []string{"ctr0", "ctr1", "ctr2"} {
		h.add(list, h.rt(id))
	}
	// A second interface of a kept container is not kept.
	wantIPs(t, h.add(list, &libcni.RuntimeConf{ContainerID: "ctr1", NetNS: h.Netns, IfName: "eth1"}), "10.10.0.5/24")

	if err := h.PluginGC(list, types.GCAttachment{ContainerID: "ctr1", IfName: "eth0"}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	wantReservations(t, h.DataDir, map[string]string{"10.10.0.3": ownerLine("ctr1", "eth0")})

	if err := h.PluginGC(list); err != nil {
		t.Fatalf("GC with no valid attachments: %v", err)
	}
	wantReservations(t, h.DataDir, map[string]string{})

	// STATUS stays fine on an empty store.
	if err := h.CNI.GetStatusNetworkList(h.Ctx(), list); err != nil {
		t.Errorf("STATUS: %v", err)
	}
}

// TestHostLocalCheckAfterFileRemoved: CHECK looks at the store, not only at
// the cached result.
func TestHostLocalCheckAfterFileRemoved(t *testing.T) {
	for _, v := range allSpecVersions {
		if !atLeast(t, v, checkSince) {
			continue
		}
		t.Run(v, func(t *testing.T) {
			h := newHLEnv(t)
			list := h.ConfList(hostLocal{DataDir: h.DataDir}.list(t, v))
			rt := h.rt("ctr1")
			wantIPs(t, h.add(list, rt), "10.10.0.2/24")
			if err := h.CNI.CheckNetworkList(h.Ctx(), list, rt); err != nil {
				t.Fatalf("CHECK before removal: %v", err)
			}
			if err := os.Remove(filepath.Join(storeDir(h.DataDir), "10.10.0.2")); err != nil {
				t.Fatal(err)
			}
			cniError(t, h.CNI.CheckNetworkList(h.Ctx(), list, rt))
		})
	}
}

// TestHostLocalCheckMismatch: CHECK fails when the store holds an address
// for the attachment that prevResult does not list.
func TestHostLocalCheckMismatch(t *testing.T) {
	h := newHLEnv(t)
	dataDir := h.DataDir
	add := runPlugin(t, "host-local", call{Command: "ADD", ContainerID: "ctr1", Netns: h.Netns, IfName: "eth0",
		Stdin: hostLocal{DataDir: dataDir}.conf(t, "1.0.0")})
	if add.Exit != 0 {
		t.Fatalf("ADD: %s", add)
	}
	check := func(prevIP string) outcome {
		c := hostLocal{DataDir: dataDir}.plugin()
		c["prevResult"] = map[string]any{"cniVersion": "1.0.0", "ips": []any{map[string]any{"address": prevIP}}}
		return runPlugin(t, "host-local", call{Command: "CHECK", ContainerID: "ctr1", Netns: h.Netns, IfName: "eth0",
			Stdin: pluginConf(t, "1.0.0", c)})
	}
	if o := check("10.10.0.2/24"); o.Exit != 0 {
		t.Errorf("CHECK with the reserved address: %s", o)
	}
	if o := check("10.10.0.9/24"); o.Exit == 0 || o.Err == nil {
		t.Errorf("CHECK with an address not reserved succeeded: %s", o)
	}
}

// TestHostLocalBadInput: every invalid input is a CNI error with the right
// code, and nothing is reserved.
func TestHostLocalBadInput(t *testing.T) {
	type tc struct {
		name  string
		stdin func(dataDir string) []byte // nil: a valid config
		id    string                      // CNI_CONTAINERID, default ctr1
		args  string
		code  uint
		// addOnly: the input is only wrong for ADD (a requested address).
		addOnly bool
	}
	ranges := func(r any) func(string) []byte {
		return func(d string) []byte { return hostLocal{DataDir: d, Ranges: r}.conf(t, "1.0.0") }
	}
	withName := func(name string) func(string) []byte {
		return func(d string) []byte {
			var m map[string]any
			_ = json.Unmarshal(hostLocal{DataDir: d}.conf(t, "1.0.0"), &m)
			m["name"] = name
			return mustJSON(t, m)
		}
	}
	cases := []tc{
		{name: "invalid JSON", stdin: func(d string) []byte {
			return []byte(`{"cniVersion":"1.0.0","name":"net1","type":"host-local","ipam":{"type":"host-local","dataDir":"` + d + `",`)
		}, code: cniplugin.CodeDecode},
		{name: "ranges of wrong type", stdin: ranges("x"), code: cniplugin.CodeInvalidConfig},
		{name: "subnet of wrong type", stdin: ranges([][]map[string]any{{{"subnet": 10}}}), code: cniplugin.CodeInvalidConfig},
		{name: "overlapping range sets", stdin: ranges([][]map[string]any{
			{{"subnet": "10.10.0.0/24"}}, {{"subnet": "10.10.0.0/25"}},
		}), code: cniplugin.CodeInvalidConfig},
		{name: "gateway outside subnet", stdin: ranges([][]map[string]any{
			{{"subnet": "10.10.0.0/24", "gateway": "10.20.0.1"}},
		}), code: cniplugin.CodeInvalidConfig},
		{name: "rangeStart after rangeEnd", stdin: ranges([][]map[string]any{
			{{"subnet": "10.10.0.0/24", "rangeStart": "10.10.0.9", "rangeEnd": "10.10.0.5"}},
		}), code: cniplugin.CodeInvalidConfig},
		{name: "no ranges", stdin: ranges([][]map[string]any{}), code: cniplugin.CodeInvalidConfig},
		{name: "dataDir with ..", stdin: func(d string) []byte {
			return hostLocal{DataDir: d + "/sub/../escaped"}.conf(t, "1.0.0")
		}, code: cniplugin.CodeInvalidConfig},
		{name: "relative dataDir", stdin: func(string) []byte {
			return hostLocal{DataDir: "relative/dir"}.conf(t, "1.0.0")
		}, code: cniplugin.CodeInvalidConfig},
		{name: "network name with slash", stdin: withName("a/b"), code: cniplugin.CodeInvalidConfig},
		{name: "network name ..", stdin: withName(".."), code: cniplugin.CodeInvalidConfig},
		{name: "network name starting with dot", stdin: withName(".hidden"), code: cniplugin.CodeInvalidConfig},
		{name: "container ID with slash", id: "a/b", code: cniplugin.CodeInvalidEnv},
		{name: "container ID ..", id: "..", code: cniplugin.CodeInvalidEnv},
		{name: "requested IP outside ranges", args: "IP=10.20.0.5", code: cniplugin.CodeAddressUnavailable, addOnly: true},
		{name: "requested IP not an address", args: "IP=nonsense", code: cniplugin.CodeInvalidConfig},
		{name: "requested IP is the gateway", args: "IP=10.10.0.1", code: cniplugin.CodeAddressUnavailable, addOnly: true},
		{name: "unknown CNI_ARGS key", args: "FOO=bar", code: cniplugin.CodeInvalidEnv},
		{name: "lockTimeout not a duration", stdin: func(d string) []byte {
			return hostLocal{DataDir: d, IPAM: map[string]any{"lockTimeout": "soon"}}.conf(t, "1.0.0")
		}, code: cniplugin.CodeInvalidConfig},
	}
	testns.RequireRoot(t)
	netnsPath := testns.NewNS(t).Path()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dataDir := t.TempDir()
			stdin := hostLocal{DataDir: dataDir}.conf(t, "1.0.0")
			if c.stdin != nil {
				stdin = c.stdin(dataDir)
			}
			id := c.id
			if id == "" {
				id = "ctr1"
			}
			for _, verb := range []string{"ADD", "CHECK", "DEL"} {
				if verb != "ADD" && c.addOnly {
					continue
				}
				o := runPlugin(t, "host-local", call{Command: verb, ContainerID: id, Netns: netnsPath, IfName: "eth0", Args: c.args, Stdin: stdin})
				if o.Exit == 0 {
					t.Fatalf("%s succeeded: %s", verb, o)
				}
				if o.Err.Code != c.code {
					t.Errorf("%s: CNI error code %d (%q, %q), want %d", verb, o.Err.Code, o.Err.Msg, o.Err.Details, c.code)
				}
				if o.Err.Msg == "" {
					t.Errorf("%s: CNI error %d has no message", verb, o.Err.Code)
				}
				wantNothingWritten(t, dataDir)
			}
		})
	}
}

// TestHostLocalLockTimeout: while someone else holds the store's lock, ADD
// gives up after lockTimeout with "try again later" (11), then works once
// the lock is free.
func TestHostLocalLockTimeout(t *testing.T) {
	h := newHLEnv(t)
	if err := os.MkdirAll(storeDir(h.DataDir), 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(storeDir(h.DataDir), "lock"), os.O_RDONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	list := h.ConfList(hostLocal{DataDir: h.DataDir, IPAM: map[string]any{"lockTimeout": "300ms"}}.list(t, "1.0.0"))

	start := time.Now()
	_, err = h.CNI.AddNetworkList(h.Ctx(), list, h.rt("ctr1"))
	took := time.Since(start)
	wantCode(t, err, cniplugin.CodeTryAgainLater)
	if took < 300*time.Millisecond || took > 3*time.Second {
		t.Errorf("ADD gave up after %v, want about 300ms", took)
	}
	wantReservations(t, h.DataDir, map[string]string{})

	if err := unix.Flock(int(f.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	wantIPs(t, h.add(list, h.rt("ctr1")), "10.10.0.2/24")
}

// TestHostLocalResultVersions: the result printed on stdout is in the
// config's version, in that version's shape.
func TestHostLocalResultVersions(t *testing.T) {
	testns.RequireRoot(t)
	netnsPath := testns.NewNS(t).Path()
	for _, v := range allSpecVersions {
		t.Run(v, func(t *testing.T) {
			dataDir := t.TempDir()
			c := hostLocal{DataDir: dataDir, Ranges: [][]map[string]any{
				{{"subnet": "10.10.0.0/24"}}, {{"subnet": "fd00:10::/64"}},
			}}
			o := runPlugin(t, "host-local", call{Command: "ADD", ContainerID: "ctr1", Netns: netnsPath, IfName: "eth0", Stdin: c.conf(t, v)})
			if o.Exit != 0 {
				t.Fatalf("ADD: %s", o)
			}
			var res struct {
				CNIVersion string           `json:"cniVersion"`
				IPs        []map[string]any `json:"ips"`
			}
			if err := json.Unmarshal(o.Stdout, &res); err != nil {
				t.Fatalf("decode result %s: %v", o.Stdout, err)
			}
			if res.CNIVersion != v {
				t.Errorf("result cniVersion %q, want %q", res.CNIVersion, v)
			}
			want := []struct{ addr, gw, family string }{
				{"10.10.0.2/24", "10.10.0.1", "4"},
				{"fd00:10::2/64", "fd00:10::1", "6"},
			}
			if len(res.IPs) != len(want) {
				t.Fatalf("result ips %v, want %d", res.IPs, len(want))
			}
			for i, w := range want {
				ip := res.IPs[i]
				if ip["address"] != w.addr || ip["gateway"] != w.gw {
					t.Errorf("ips[%d] = %v, want address %s gateway %s", i, ip, w.addr, w.gw)
				}
				fam, has := ip["version"]
				if atLeast(t, v, "1.0.0") {
					if has {
						t.Errorf("ips[%d] has \"version\" %v, which spec %s removed", i, fam, v)
					}
				} else if fam != w.family {
					t.Errorf("ips[%d] \"version\" = %v, want %q", i, fam, w.family)
				}
				if _, has := ip["interface"]; has {
					t.Errorf("ips[%d] names an interface, but IPAM knows none: %v", i, ip)
				}
			}
		})
	}
}
