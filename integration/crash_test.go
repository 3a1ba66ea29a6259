package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/plumbnet/plumb/internal/testns"
)

// ctxBG is the context of CNI calls that have no deadline of their own.
var ctxBG = context.Background()

var (
	crashOnce sync.Once
	crashDir  string
	crashErr  error
)

// crashBuild builds the plugins with -tags plumbcrash (PLUMB_CRASH_AT kills
// the plugin at a named step, PLUMB_CRASH_TRACE lists the steps it passes).
func crashBuild(t *testing.T) string {
	t.Helper()
	crashOnce.Do(func() {
		crashDir, crashErr = os.MkdirTemp("", "plumb-crashbin-")
		if crashErr != nil {
			return
		}
		_, file, _, _ := runtime.Caller(0)
		args := []string{"build", "-tags", "plumbcrash", "-o", crashDir + "/"}
		for name, pkg := range pluginPkgs {
			if name != "plumb" {
				args = append(args, pkg)
			}
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = filepath.Dir(filepath.Dir(file))
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOPROXY=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			crashErr = fmt.Errorf("go build -tags plumbcrash: %v\n%s", err, out)
		}
	})
	if crashErr != nil {
		t.Fatal(crashErr)
	}
	return crashDir
}

// crashChain is the network the crash tests stop at every step.
func crashChain(t *testing.T, dataDir, backend string) *libcni.NetworkConfigList {
	bn := bridgeNet{Name: "crash-" + backend, Bridge: "plcrash" + backend[:3], Subnet4: "10.80.0.0/24", Subnet6: "fd00:80::/64", DataDir: dataDir,
		Extra: map[string]any{"ipMasq": true, "ipMasqBackend": backend, "macspoofchk": true}}
	// The chain: bridge (with host-local), then portmap publishing two
	// ports, one on 127.0.0.1 so route_localnet is part of it.
	var raw map[string]any
	json.Unmarshal([]byte(bn.conflist("1.1.0")), &raw)
	raw["plugins"] = append(raw["plugins"].([]any), map[string]any{"type": "portmap", "backend": backend,
		"capabilities": map[string]bool{"portMappings": true}})
	b, _ := json.Marshal(raw)
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// publish asks portmap for a TCP port on every host address and a UDP port
// on 127.0.0.1, so the crash points cover conntrack and route_localnet.
func publish(port int) map[string]any {
	return map[string]any{"portMappings": []map[string]any{
		{"hostPort": port, "containerPort": 80, "protocol": "tcp"},
		{"hostPort": port + 1, "containerPort": 53, "protocol": "udp", "hostIP": "127.0.0.1"},
	}}
}

// tracePoints runs one ADD and DEL with tracing and returns the steps seen.
func tracePoints(t *testing.T, c *libcni.CNIConfig, l *libcni.NetworkConfigList) (add, del []string) {
	t.Helper()
	trace := filepath.Join(t.TempDir(), "trace")
	t.Setenv("PLUMB_CRASH_TRACE", trace)
	n := testns.NewNS(t)
	rt := &libcni.RuntimeConf{ContainerID: "ctr-trace", NetNS: n.Path(), IfName: "eth0", CapabilityArgs: publish(19000)}
	if _, err := c.AddNetworkList(ctxBG, l, rt); err != nil {
		t.Fatalf("traced ADD: %v", err)
	}
	b, _ := os.ReadFile(trace)
	add = uniq(strings.Fields(string(b)))
	os.Remove(trace)
	if err := c.DelNetworkList(ctxBG, l, rt); err != nil {
		t.Fatalf("traced DEL: %v", err)
	}
	b, _ = os.ReadFile(trace)
	del = uniq(strings.Fields(string(b)))
	os.Unsetenv("PLUMB_CRASH_TRACE")
	return add, del
}

func uniq(s []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range s {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

var counters = regexp.MustCompile(`counter packets \d+ bytes \d+|\[\d+:\d+\]`)

// rulesetLines is the host's NAT and filter state as sorted lines, without
// counters, for comparing before and after.
func rulesetLines(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(counters.ReplaceAllString(ruleset(t), ""), "\n") {
		if l = strings.Join(strings.Fields(l), " "); l != "" && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return out
}

// leftovers lists whatever an attachment of network left behind: veths,
// reservations, temp files, and rules that were not there before (base).
func leftovers(t *testing.T, dataDir, network, containerID string, base []string) []string {
	t.Helper()
	var out []string
	for _, l := range testns.Links(t) {
		if strings.HasPrefix(l.Attrs().Alias, "plumb/"+network+"/"+containerID+"/") {
			out = append(out, "veth "+l.Attrs().Name)
		}
	}
	// A veth DEL retired is deleted by its reaper moments later; one that
	// stays is a leak too.
	veth := hostVeth(t, containerID)
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		l := hostLink(t, veth)
		if l == nil || l.Attrs().Alias != "plumb-gone/"+veth {
			break
		}
		if time.Now().After(end) {
			out = append(out, "retired veth "+veth+", not deleted")
			break
		}
	}
	dir := filepath.Join(dataDir, network)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".plumb-tmp-") {
			out = append(out, "temp file "+e.Name())
			continue
		}
		if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil && strings.HasPrefix(string(b), containerID+"\r\n") {
			out = append(out, "reservation "+e.Name())
		}
	}
	had := map[string]int{}
	for _, l := range base {
		had[l]++
	}
	for _, l := range rulesetLines(t) {
		if had[l] > 0 {
			had[l]--
			continue
		}
		out = append(out, "rule: "+l)
	}
	sort.Strings(out)
	return out
}

// TestCrashAtEveryStep kills the chain's plugins at every step of ADD and
// of DEL, then cleans up with DEL (or with GC and an empty valid list), and
// checks nothing is left and the next ADD gets a unique address.
func TestCrashAtEveryStep(t *testing.T) {
	NewEnv(t)
	bin := crashBuild(t)
	points, tried := 0, 0
	for _, backend := range []string{"nftables", "iptables"} {
		t.Run(backend, func(t *testing.T) {
			dataDir := t.TempDir()
			c := libcni.NewCNIConfigWithCacheDir([]string{bin}, t.TempDir(), nil)
			l := crashChain(t, dataDir, backend)
			// A neighbour that lives through everything: its address must never be handed out again.
			neighbour := testns.NewNS(t)
			nrt := &libcni.RuntimeConf{ContainerID: "ctr-neighbour", NetNS: neighbour.Path(), IfName: "eth0"}
			if _, err := c.AddNetworkList(ctxBG, l, nrt); err != nil {
				t.Fatal(err)
			}
			defer c.DelNetworkList(ctxBG, l, nrt)
			addPts, delPts := tracePoints(t, c, l)
			if len(addPts) < 8 || len(delPts) < 3 {
				t.Fatalf("too few crash points traced: ADD %v DEL %v", addPts, delPts)
			}
			points += len(addPts) + len(delPts)
			type crashCase struct {
				verb, point, cleanup string
			}
			var cases []crashCase
			for _, p := range addPts {
				cases = append(cases, crashCase{"ADD", p, "DEL"}, crashCase{"ADD", p, "GC"})
			}
			for _, p := range delPts {
				cases = append(cases, crashCase{"DEL", p, "DEL"})
			}
			for i, cc := range cases {
				id := fmt.Sprintf("ctr-crash-%d", i)
				n := testns.NewRemovable(t)
				rt := &libcni.RuntimeConf{ContainerID: id, NetNS: n.Path(), IfName: "eth0", CapabilityArgs: publish(20000 + 2*i)}
				baseline := rulesetLines(t)
				if cc.verb == "DEL" {
					if _, err := c.AddNetworkList(ctxBG, l, rt); err != nil {
						t.Fatalf("ADD before crashing DEL: %v", err)
					}
				}
				t.Setenv("PLUMB_CRASH_AT", cc.point)
				var err error
				if cc.verb == "ADD" {
					_, err = c.AddNetworkList(ctxBG, l, rt)
				} else {
					err = c.DelNetworkList(ctxBG, l, rt)
				}
				os.Unsetenv("PLUMB_CRASH_AT")
				if err == nil {
					t.Fatalf("%s with a crash at %s succeeded", cc.verb, cc.point)
				}
				tried++
				// The runtime cleans up as runtimes do.
				switch cc.cleanup {
				case "DEL":
					err = c.DelNetworkList(ctxBG, l, rt)
				case "GC":
					fresh := libcni.NewCNIConfigWithCacheDir([]string{bin}, t.TempDir(), nil)
					err = fresh.GCNetworkList(ctxBG, l, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{{ContainerID: "ctr-neighbour", IfName: "eth0"}}})
				}
				if err != nil {
					t.Fatalf("crash at %s during %s, then %s: %v", cc.point, cc.verb, cc.cleanup, err)
				}
				if left := leftovers(t, dataDir, l.Name, id, baseline); len(left) != 0 {
					t.Fatalf("crash at %s during %s, then %s, left: %v", cc.point, cc.verb, cc.cleanup, left)
				}
				n.Remove()
			}
			// The next ADD works and gets an address nobody else holds.
			n := testns.NewNS(t)
			rt := &libcni.RuntimeConf{ContainerID: "ctr-after", NetNS: n.Path(), IfName: "eth0"}
			r, err := c.AddNetworkList(ctxBG, l, rt)
			if err != nil {
				t.Fatalf("ADD after the crashes: %v", err)
			}
			defer c.DelNetworkList(ctxBG, l, rt)
			files := reservationOwners(t, dataDir, l.Name)
			for _, ip := range resultIPs(t, r) {
				addr := strings.Split(ip, "/")[0]
				if files[addr] != "ctr-after" {
					t.Fatalf("address %s of the new container is held by %q", addr, files[addr])
				}
			}
		})
	}
	t.Logf("crash points: %d; crashes tried: %d; leaks: 0", points, tried)
	if !t.Failed() {
		testns.Summary("crash: %d crash points, %d crashes (kill, then DEL or GC): 0 leaks, 0 duplicate addresses", points, tried)
	}
}

// reservationOwners maps each reserved address to its container ID.
func reservationOwners(t *testing.T, dataDir, network string) map[string]string {
	t.Helper()
	out := map[string]string{}
	dir := filepath.Join(dataDir, network)
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err == nil {
			id, _, _ := strings.Cut(string(b), "\r\n")
			out[e.Name()] = id
		}
	}
	return out
}
