package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/netns"
)

// fakeIf is one interface's attributes.
type fakeIf struct {
	MAC               string
	MTU, TxQLen       int
	Promisc, Allmulti bool
}

// fakeNS is a container namespace: its interface (nil: none) and sysctls.
type fakeNS struct {
	link      *fakeIf
	sysctl    map[string]string
	writeOnly map[string]bool
	failOn    string // a sysctl whose write fails
}

type fakeHost map[string]*fakeNS

var _ Target = (*fakeNS)(nil)

func (h fakeHost) open(path, _ string) (Target, error) {
	n, ok := h[path]
	if !ok {
		return nil, fmt.Errorf("open %s: %w", path, netns.ErrGone)
	}
	return n, nil
}

func (n *fakeNS) Close() error { return nil }

func (n *fakeNS) Read(which Settings) (Settings, error) {
	var got Settings
	if which.HasLink() {
		if n.link == nil {
			return got, errNoLink
		}
		l := *n.link
		if which.MAC != "" {
			got.MAC = l.MAC
		}
		if which.MTU != 0 {
			got.MTU = l.MTU
		}
		if which.Promisc != nil {
			got.Promisc = &l.Promisc
		}
		if which.Allmulti != nil {
			got.Allmulti = &l.Allmulti
		}
		if which.TxQLen != nil {
			got.TxQLen = &l.TxQLen
		}
	}
	if len(which.Sysctl) > 0 {
		got.Sysctl = map[string]string{}
	}
	for k := range which.Sysctl {
		v, ok := n.sysctl[k]
		if !ok {
			return got, fmt.Errorf("sysctl %s: %w", k, fs.ErrNotExist)
		}
		if !n.writeOnly[k] {
			got.Sysctl[k] = v
		}
	}
	return got, nil
}

func (n *fakeNS) Write(s Settings) error {
	if s.HasLink() {
		if n.link == nil {
			return errNoLink
		}
		if s.MAC != "" {
			n.link.MAC = s.MAC
		}
		if s.MTU != 0 {
			n.link.MTU = s.MTU
		}
		if s.Promisc != nil {
			n.link.Promisc = *s.Promisc
		}
		if s.Allmulti != nil {
			n.link.Allmulti = *s.Allmulti
		}
		if s.TxQLen != nil {
			n.link.TxQLen = *s.TxQLen
		}
	}
	for _, k := range sortedKeys(s.Sysctl) {
		if _, ok := n.sysctl[k]; !ok {
			return fmt.Errorf("sysctl %s: %w", k, fs.ErrNotExist)
		}
		if k == n.failOn {
			return fmt.Errorf("write sysctl %s: invalid argument", k)
		}
		n.sysctl[k] = s.Sysctl[k]
	}
	return nil
}

func newNS() *fakeNS {
	return &fakeNS{
		link: &fakeIf{MAC: "0a:00:00:00:00:01", MTU: 1500, TxQLen: 1000},
		sysctl: map[string]string{
			"net/ipv4/conf/eth0/arp_filter":   "0",
			"net/ipv4/ip_local_port_range":    "32768\t60999",
			"net/ipv4/route/flush":            "",
			"net/ipv6/conf/eth0/disable_ipv6": "0",
		},
		writeOnly: map[string]bool{"net/ipv4/route/flush": true},
	}
}

const prevJSON = `"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"0a:00:00:00:00:09"},{"name":"eth0","mac":"0a:00:00:00:00:01","sandbox":"/ns/a"}],"ips":[{"address":"10.0.0.5/24","interface":1}]}`

func tuned(dataDir, extra string) string {
	s := fmt.Sprintf(`"dataDir":%q,%s,"mac":"02:00:00:00:00:07","mtu":1400,"promisc":true,"allmulti":true,"txQLen":42,
		"sysctl":{"net.ipv4.conf.IFNAME.arp_filter":"1","net.ipv4.ip_local_port_range":"20000 30000","net/ipv4/route/flush":"1"}`, dataDir, prevJSON)
	if extra != "" {
		s += "," + extra
	}
	return s
}

func cmd(path, stdin string) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: "ctr1", Netns: path, IfName: "eth0", StdinData: conf(stdin)}
}

func newPlugin(h fakeHost) *Plugin {
	return &Plugin{Open: h.open, Now: time.Now}
}

func TestTuningAddAppliesSavesAndDelRestores(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tuning")
	n := newNS()
	p := newPlugin(fakeHost{"/ns/a": n})
	args := cmd("/ns/a", tuned(dir, ""))
	r, err := p.Add(args)
	if err != nil {
		t.Fatal(err)
	}
	if *n.link != (fakeIf{MAC: "02:00:00:00:00:07", MTU: 1400, TxQLen: 42, Promisc: true, Allmulti: true}) {
		t.Fatalf("link after ADD: %+v", *n.link)
	}
	if n.sysctl["net/ipv4/conf/eth0/arp_filter"] != "1" || n.sysctl["net/ipv4/ip_local_port_range"] != "20000 30000" || n.sysctl["net/ipv4/route/flush"] != "1" {
		t.Fatalf("sysctls after ADD: %v", n.sysctl)
	}
	res := r.(*current.Result)
	if res.Interfaces[1].Mac != "02:00:00:00:00:07" || res.Interfaces[0].Mac != "0a:00:00:00:00:09" {
		t.Fatalf("result MACs: %+v %+v", res.Interfaces[0], res.Interfaces[1])
	}
	if len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.0.0.5/24" {
		t.Fatalf("prevResult not passed through: %+v", res.IPs)
	}

	// State: owner-only, reference name and format, plus owner and sysctls.
	file := filepath.Join(dir, "ctr1_eth0.json")
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("state file: %v %v", fi, err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir mode %v", fi.Mode())
	}
	var saved map[string]any
	b, _ := os.ReadFile(file)
	if err := json.Unmarshal(b, &saved); err != nil {
		t.Fatal(err)
	}
	if saved["mac"] != "0a:00:00:00:00:01" || saved["mtu"] != 1500.0 || saved["promisc"] != false || saved["allmulti"] != false ||
		saved["txQLen"] != 1000.0 || saved["containerID"] != "ctr1" || saved["ifName"] != "eth0" || saved["network"] != "net1" {
		t.Fatalf("saved: %s", b)
	}
	sc := saved["sysctl"].(map[string]any)
	if sc["net/ipv4/ip_local_port_range"] != "32768\t60999" || sc["net/ipv4/conf/eth0/arp_filter"] != "0" {
		t.Fatalf("saved sysctls: %v", sc)
	}
	if _, ok := sc["net/ipv4/route/flush"]; ok {
		t.Fatal("a write-only sysctl cannot be saved")
	}
	if err := p.Check(args); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}

	for i := 0; i < 2; i++ {
		if err := p.Del(args); err != nil {
			t.Fatalf("DEL %d: %v", i+1, err)
		}
	}
	if *n.link != (fakeIf{MAC: "0a:00:00:00:00:01", MTU: 1500, TxQLen: 1000}) {
		t.Fatalf("link after DEL: %+v", *n.link)
	}
	if n.sysctl["net/ipv4/conf/eth0/arp_filter"] != "0" || n.sysctl["net/ipv4/ip_local_port_range"] != "32768\t60999" {
		t.Fatalf("sysctls after DEL: %v", n.sysctl)
	}
	if _, err := os.Stat(file); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("state left after DEL: %v", err)
	}
}

// TestEmptyConfigAppliesCNIArgsMAC: podman passes the MAC in CNI_ARGS to a
// tuning plugin configured with nothing.
func TestTuningEmptyConfigAppliesCNIArgsMAC(t *testing.T) {
	dir := t.TempDir()
	n := newNS()
	p := newPlugin(fakeHost{"/ns/a": n})
	args := cmd("/ns/a", fmt.Sprintf(`"dataDir":%q,%s`, dir, prevJSON))
	args.Args = "IgnoreUnknown=1;K8S_POD_NAME=x;MAC=02:00:00:00:00:42"
	r, err := p.Add(args)
	if err != nil {
		t.Fatal(err)
	}
	if n.link.MAC != "02:00:00:00:00:42" || r.(*current.Result).Interfaces[1].Mac != "02:00:00:00:00:42" {
		t.Fatalf("mac %s, result %+v", n.link.MAC, r.(*current.Result).Interfaces[1])
	}
	if err := p.Del(args); err != nil || n.link.MAC != "0a:00:00:00:00:01" {
		t.Fatalf("DEL: %v, mac %s", err, n.link.MAC)
	}
}

func TestTuningAddFailureLeavesNothing(t *testing.T) {
	cases := map[string]struct {
		mutate func(*fakeNS)
		code   uint
		msg    string
	}{
		"write fails": {func(n *fakeNS) { n.failOn = "net/ipv4/ip_local_port_range" }, cniplugin.CodeInternal, "invalid argument"},
		"sysctl missing in the container": {func(n *fakeNS) { delete(n.sysctl, "net/ipv4/conf/eth0/arp_filter") },
			cniplugin.CodeInvalidConfig, "not namespaced on this kernel"},
		"no interface": {func(n *fakeNS) { n.link = nil }, cniplugin.CodeInvalidEnv, "interface not found"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			n := newNS()
			tc.mutate(n)
			before := fmt.Sprint(n.link, n.sysctl)
			p := newPlugin(fakeHost{"/ns/a": n})
			_, err := p.Add(cmd("/ns/a", tuned(dir, "")))
			if err == nil || cniplugin.Code(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %d %v, want code %d with %q", cniplugin.Code(err), err, tc.code, tc.msg)
			}
			if after := fmt.Sprint(n.link, n.sysctl); after != before {
				t.Fatalf("failed ADD changed the container:\n%s\n%s", before, after)
			}
			if entries, _ := os.ReadDir(dir); len(entries) != 0 {
				t.Fatalf("failed ADD left state: %v", entries)
			}
		})
	}
}

func TestTuningAddErrors(t *testing.T) {
	h := fakeHost{"/ns/a": newNS()}
	p := newPlugin(h)
	dir := t.TempDir()
	cases := map[string]struct {
		args *skel.CmdArgs
		code uint
	}{
		"no prevResult":   {cmd("/ns/a", `"mtu":1400`), cniplugin.CodeInvalidConfig},
		"netns gone":      {cmd("/ns/gone", tuned(dir, "")), cniplugin.CodeInvalidNetNS},
		"bad sysctl":      {cmd("/ns/a", tuned(dir, `"args":{"cni":{"sysctl":{"net/../../kernel/x":"1"}}}`)), cniplugin.CodeInvalidConfig},
		"bad container":   {&skel.CmdArgs{ContainerID: "../x", Netns: "/ns/a", IfName: "eth0", StdinData: conf(tuned(dir, ""))}, cniplugin.CodeInvalidEnv},
		"bad ifname":      {&skel.CmdArgs{ContainerID: "c", Netns: "/ns/a", IfName: "a/b", StdinData: conf(tuned(dir, ""))}, cniplugin.CodeInvalidEnv},
		"bad prevResult":  {cmd("/ns/a", `"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"x"}]}`), cniplugin.CodeDecode},
		"unknown CNI_ARG": {&skel.CmdArgs{ContainerID: "c", Netns: "/ns/a", IfName: "eth0", Args: "X=1", StdinData: conf(tuned(dir, ""))}, cniplugin.CodeInvalidEnv},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := p.Add(tc.args)
			if cniplugin.Code(err) != tc.code {
				t.Fatalf("code %d (%v), want %d", cniplugin.Code(err), err, tc.code)
			}
		})
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("rejected ADDs left state: %v", entries)
	}
}

// TestRepeatedAddKeepsOriginals: a second ADD must not save the values the
// first one set as "originals".
func TestTuningRepeatedAddKeepsOriginals(t *testing.T) {
	dir := t.TempDir()
	n := newNS()
	p := newPlugin(fakeHost{"/ns/a": n})
	args := cmd("/ns/a", tuned(dir, ""))
	for i := 0; i < 2; i++ {
		if _, err := p.Add(args); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Del(args); err != nil {
		t.Fatal(err)
	}
	if n.link.MTU != 1500 || n.link.MAC != "0a:00:00:00:00:01" || n.sysctl["net/ipv4/conf/eth0/arp_filter"] != "0" {
		t.Fatalf("not restored to the first originals: %+v %v", *n.link, n.sysctl)
	}
}

func TestTuningDelWhenThingsAreGone(t *testing.T) {
	dir := t.TempDir()
	n := newNS()
	h := fakeHost{"/ns/a": n}
	p := newPlugin(h)
	args := cmd("/ns/a", tuned(dir, ""))
	file := filepath.Join(dir, "ctr1_eth0.json")

	// Interface gone, namespace still there: sysctls are restored.
	if _, err := p.Add(args); err != nil {
		t.Fatal(err)
	}
	n.link = nil
	if err := p.Del(args); err != nil {
		t.Fatal(err)
	}
	if n.sysctl["net/ipv4/ip_local_port_range"] != "32768\t60999" {
		t.Fatalf("sysctl not restored: %v", n.sysctl)
	}
	if _, err := os.Stat(file); err == nil {
		t.Fatal("state kept")
	}

	// Namespace gone, and no namespace given: the state is forgotten.
	for _, path := range []string{"/ns/gone", ""} {
		n.link = &fakeIf{MTU: 1500}
		if _, err := p.Add(args); err != nil {
			t.Fatal(err)
		}
		del := *args
		del.Netns = path
		if err := p.Del(&del); err != nil {
			t.Fatalf("DEL with netns %q: %v", path, err)
		}
		if _, err := os.Stat(file); err == nil {
			t.Fatalf("state kept with netns %q", path)
		}
	}
}

// TestDelRestoresReferenceState: a file the reference plugin saved (no
// owner, no sysctls) is restored and removed.
func TestTuningDelRestoresReferenceState(t *testing.T) {
	dir := t.TempDir()
	n := newNS()
	n.link.MTU, n.link.Promisc = 9000, true
	writeFile(t, filepath.Join(dir, "ctr1_eth0.json"), `{"mac":"0a:00:00:00:00:05","mtu":1450,"promisc":false}`)
	if err := newPlugin(fakeHost{"/ns/a": n}).Del(cmd("/ns/a", fmt.Sprintf(`"dataDir":%q`, dir))); err != nil {
		t.Fatal(err)
	}
	if *n.link != (fakeIf{MAC: "0a:00:00:00:00:05", MTU: 1450, TxQLen: 1000}) {
		t.Fatalf("link %+v", *n.link)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("state left: %v", entries)
	}
}

// TestDelRefusesTamperedState: a saved sysctl outside the allowed subtrees
// is never written.
func TestTuningDelRefusesTamperedState(t *testing.T) {
	dir := t.TempDir()
	n := newNS()
	n.sysctl["kernel/core_pattern"] = "core"
	writeFile(t, filepath.Join(dir, "ctr1_eth0.json"), `{"sysctl":{"kernel/core_pattern":"|/bin/evil","net/ipv4/conf/eth0/arp_filter":"1"}}`)
	err := newPlugin(fakeHost{"/ns/a": n}).Del(cmd("/ns/a", fmt.Sprintf(`"dataDir":%q`, dir)))
	if err == nil || !strings.Contains(err.Error(), "kernel/core_pattern") {
		t.Fatalf("DEL: %v", err)
	}
	if n.sysctl["kernel/core_pattern"] != "core" || n.sysctl["net/ipv4/conf/eth0/arp_filter"] != "1" {
		t.Fatalf("sysctls %v", n.sysctl)
	}
}

func TestTuningCheckDetectsDrift(t *testing.T) {
	dir := t.TempDir()
	n := newNS()
	p := newPlugin(fakeHost{"/ns/a": n})
	args := cmd("/ns/a", tuned(dir, ""))
	if _, err := p.Add(args); err != nil {
		t.Fatal(err)
	}
	n.sysctl["net/ipv4/ip_local_port_range"] = "20000\t30000" // the kernel's own spelling
	if err := p.Check(args); err != nil {
		t.Fatalf("CHECK after ADD: %v", err)
	}
	drifts := map[string]func(){
		"mtu":      func() { n.link.MTU = 1500 },
		"mac":      func() { n.link.MAC = "02:00:00:00:00:08" },
		"promisc":  func() { n.link.Promisc = false },
		"allmulti": func() { n.link.Allmulti = false },
		"txQLen":   func() { n.link.TxQLen = 1 },
		"sysctl":   func() { n.sysctl["net/ipv4/conf/eth0/arp_filter"] = "0" },
	}
	for name, drift := range drifts {
		saved, savedSys := *n.link, n.sysctl["net/ipv4/conf/eth0/arp_filter"]
		drift()
		if err := p.Check(args); err == nil || !strings.Contains(err.Error(), name) {
			t.Fatalf("CHECK after %s drift: %v", name, err)
		}
		*n.link, n.sysctl["net/ipv4/conf/eth0/arp_filter"] = saved, savedSys
	}
	if err := newPlugin(fakeHost{}).Check(args); cniplugin.Code(err) != cniplugin.CodeInvalidNetNS {
		t.Fatalf("CHECK without the namespace: %v", err)
	}
}

func TestTuningGC(t *testing.T) {
	dir := t.TempDir()
	h := fakeHost{"/ns/a": newNS(), "/ns/b": newNS()}
	p := newPlugin(h)
	for _, id := range []string{"keep", "stale"} {
		a := cmd("/ns/a", tuned(dir, ""))
		a.ContainerID = id
		if id == "stale" {
			a.Netns = "/ns/b"
		}
		if _, err := p.Add(a); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(dir, "other_eth0.json"), `{"mtu":1500,"network":"net2","containerID":"other","ifName":"eth0"}`)
	writeFile(t, filepath.Join(dir, "ref_eth0.json"), `{"mtu":1500}`)
	writeFile(t, filepath.Join(dir, ".x_eth0.json.tmp-old"), `{`)
	writeFile(t, filepath.Join(dir, ".x_eth0.json.tmp-new"), `{`)
	old := time.Now().Add(-time.Hour)
	os.Chtimes(filepath.Join(dir, ".x_eth0.json.tmp-old"), old, old)

	gc := &skel.CmdArgs{StdinData: conf(fmt.Sprintf(`"dataDir":%q,"cni.dev/valid-attachments":[{"containerID":"keep","ifname":"eth0"}]`, dir))}
	if err := p.GC(gc); err != nil {
		t.Fatal(err)
	}
	var left []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		left = append(left, e.Name())
	}
	want := ".x_eth0.json.tmp-new keep_eth0.json other_eth0.json ref_eth0.json"
	if strings.Join(left, " ") != want {
		t.Fatalf("after GC: %v, want %s", left, want)
	}
	if err := p.GC(&skel.CmdArgs{StdinData: conf(`"dataDir":"/nonexistent/plumb"`)}); err != nil {
		t.Fatalf("GC without a state dir: %v", err)
	}
}

func TestTuningStatus(t *testing.T) {
	p := newPlugin(fakeHost{})
	if err := p.Status(&skel.CmdArgs{StdinData: conf("")}); err != nil {
		t.Fatal(err)
	}
	if err := p.Status(&skel.CmdArgs{StdinData: []byte("{")}); cniplugin.Code(err) != cniplugin.CodeDecode {
		t.Fatal(err)
	}
}

func TestTuningStoreAtomicSave(t *testing.T) {
	s := store{dir: t.TempDir()}
	r := &record{Settings: Settings{MTU: 1500}, Network: "n", ContainerID: "c", IfName: "eth0"}
	if err := s.save(r); err != nil {
		t.Fatal(err)
	}
	r.MTU = 9000
	if err := s.save(r); err != nil {
		t.Fatal(err)
	}
	got, err := s.load("c", "eth0")
	if err != nil || got.MTU != 9000 {
		t.Fatalf("%+v %v", got, err)
	}
	entries, _ := os.ReadDir(s.dir)
	if len(entries) != 1 {
		t.Fatalf("temp files left: %v", entries)
	}
	writeFile(t, filepath.Join(s.dir, "c_eth0.json"), "{torn")
	if _, err := s.load("c", "eth0"); cniplugin.Code(err) != cniplugin.CodeIO {
		t.Fatalf("corrupt state: %v", err)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
