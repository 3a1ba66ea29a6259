package integration

import (
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/plumbnet/plumb/internal/testns"
)

// The reference host-local's on-disk format, written and read here by hand
// so that a node can switch between it and plumb either way:
// <dataDir>/<network>/<ip> holds "<containerID>\r\n<ifname>" (versions
// before 0.7 wrote the container ID alone), last_reserved_ip.<rangeIndex>
// holds the last address handed out, unterminated.

// writeRefFile writes one file of testNet's store as the reference would.
func writeRefFile(t *testing.T, dataDir, name, content string) {
	t.Helper()
	if err := os.MkdirAll(storeDir(dataDir), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(storeDir(dataDir), name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// readRefFile reads one file of testNet's store as raw bytes.
func readRefFile(t *testing.T, dataDir, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(storeDir(dataDir), name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// refOwns is the reference's ownership test for a reservation file: the
// trimmed content is "id\r\nifname".
func refOwns(content, containerID, ifName string) bool {
	return strings.TrimSpace(content) == strings.TrimSpace(containerID+"\r\n"+ifName)
}

// TestHostLocalReadsReferenceFiles: plumb continues a store the reference
// wrote, including its id-only records.
func TestHostLocalReadsReferenceFiles(t *testing.T) {
	testns.RequireRoot(t)
	netnsPath := testns.NewNS(t).Path()
	dataDir := t.TempDir()
	writeRefFile(t, dataDir, "10.10.0.2", "ctr1\r\neth0")
	writeRefFile(t, dataDir, "10.10.0.3", "ctr-old")
	writeRefFile(t, dataDir, "last_reserved_ip.0", "10.10.0.3")
	conf := hostLocal{DataDir: dataDir}
	run := func(verb, id string, stdin []byte) outcome {
		t.Helper()
		return runPlugin(t, "host-local", call{Command: verb, ContainerID: id, Netns: netnsPath, IfName: "eth0", Stdin: stdin})
	}
	withPrev := func(addr string) []byte {
		p := conf.plugin()
		p["prevResult"] = map[string]any{"cniVersion": "1.0.0", "ips": []any{map[string]any{"address": addr}}}
		return pluginConf(t, "1.0.0", p)
	}

	if o := run("CHECK", "ctr1", withPrev("10.10.0.2/24")); o.Exit != 0 {
		t.Errorf("CHECK ctr1 against the reference's record: %s", o)
	}
	if o := run("CHECK", "ctr1", withPrev("10.10.0.3/24")); o.Exit == 0 {
		t.Error("CHECK ctr1 with ctr-old's address succeeded")
	}
	if o := run("CHECK", "ctr-old", withPrev("10.10.0.3/24")); o.Exit != 0 {
		t.Errorf("CHECK ctr-old against an id-only record: %s", o)
	}

	// Round-robin continues after the reference's last_reserved_ip.
	o := run("ADD", "ctr-new", conf.conf(t, "1.0.0"))
	if o.Exit != 0 {
		t.Fatalf("ADD: %s", o)
	}
	if !strings.Contains(string(o.Stdout), `"10.10.0.4/24"`) {
		t.Errorf("ADD after last_reserved_ip 10.10.0.3 returned %s, want 10.10.0.4/24", o.Stdout)
	}
	if got := readRefFile(t, dataDir, "last_reserved_ip.0"); got != "10.10.0.4" {
		t.Errorf("last_reserved_ip.0 = %q, want %q", got, "10.10.0.4")
	}

	// Another interface of ctr1 owns nothing.
	if o := runPlugin(t, "host-local", call{Command: "DEL", ContainerID: "ctr1", Netns: netnsPath, IfName: "eth1", Stdin: conf.conf(t, "1.0.0")}); o.Exit != 0 {
		t.Fatalf("DEL ctr1/eth1: %s", o)
	}
	want := map[string]string{
		"10.10.0.2": "ctr1\r\neth0",
		"10.10.0.3": "ctr-old",
		"10.10.0.4": "ctr-new\r\neth0",
	}
	wantReservations(t, dataDir, want)

	if o := run("DEL", "ctr1", conf.conf(t, "1.0.0")); o.Exit != 0 {
		t.Fatalf("DEL ctr1: %s", o)
	}
	delete(want, "10.10.0.2")
	wantReservations(t, dataDir, want)

	if o := run("DEL", "ctr-old", conf.conf(t, "1.0.0")); o.Exit != 0 {
		t.Fatalf("DEL ctr-old: %s", o)
	}
	delete(want, "10.10.0.3")
	wantReservations(t, dataDir, want)
}

// TestHostLocalWritesReferenceFormat: what plumb writes, the reference can
// read: exact file contents, canonical address names, an unterminated
// last_reserved_ip per range set, and nothing else in the directory but
// the owner index.
func TestHostLocalWritesReferenceFormat(t *testing.T) {
	h := newHLEnv(t)
	conf := hostLocal{DataDir: h.DataDir, Ranges: [][]map[string]any{
		{{"subnet": "10.10.0.0/24"}},
		{{"subnet": "fd00:10::/64"}},
	}}
	list := h.ConfList(conf.list(t, "1.0.0"))
	wantIPs(t, h.add(list, h.rt("ctr1")), "10.10.0.2/24", "fd00:10::2/64")
	wantIPs(t, h.add(list, h.rt("ctr2")), "10.10.0.3/24", "fd00:10::3/64")

	entries, err := os.ReadDir(storeDir(h.DataDir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
		// The owner index is plumb's one addition; its name is no address,
		// so the reference never takes it for a reservation.
		if e.Name() == ".plumb-owners" && e.IsDir() {
			continue
		}
		if !e.Type().IsRegular() {
			t.Errorf("%s is not a regular file", e.Name())
		}
	}
	wantNames := []string{".plumb-owners", "10.10.0.2", "10.10.0.3", "fd00:10::2", "fd00:10::3", "last_reserved_ip.0", "last_reserved_ip.1", "lock"}
	if !slices.Equal(names, wantNames) {
		t.Errorf("store directory holds %q, want %q", names, wantNames)
	}

	owners := map[string][2]string{
		"10.10.0.2": {"ctr1", "eth0"}, "fd00:10::2": {"ctr1", "eth0"},
		"10.10.0.3": {"ctr2", "eth0"}, "fd00:10::3": {"ctr2", "eth0"},
	}
	for name, o := range owners {
		got := readRefFile(t, h.DataDir, name)
		if got != o[0]+"\r\n"+o[1] {
			t.Errorf("%s holds %q, want exactly %q", name, got, o[0]+"\r\n"+o[1])
		}
		if !refOwns(got, o[0], o[1]) {
			t.Errorf("the reference would not see %s as owned by %s/%s", name, o[0], o[1])
		}
		if ip := net.ParseIP(name); ip == nil || ip.String() != name {
			t.Errorf("file name %s is not the canonical form of an address", name)
		}
	}
	// The reference parses last_reserved_ip without trimming.
	for file, want := range map[string]string{"last_reserved_ip.0": "10.10.0.3", "last_reserved_ip.1": "fd00:10::3"} {
		got := readRefFile(t, h.DataDir, file)
		if got != want || net.ParseIP(got) == nil {
			t.Errorf("%s = %q, want exactly %q", file, got, want)
		}
	}
}

// TestReferenceHostLocalSharesStore runs the real reference host-local
// (v1.9.1) and plumb's, turn about, on one store: each finds, keeps and
// releases what the other wrote, plumb's owner index included.
func TestReferenceHostLocalSharesStore(t *testing.T) {
	testns.RequireRoot(t)
	netnsPath := testns.NewNS(t).Path()
	dataDir := t.TempDir()
	conf := hostLocal{DataDir: dataDir}.conf(t, "1.0.0")
	run := func(plugin, verb, id string) string {
		t.Helper()
		o := runPlugin(t, plugin, call{Command: verb, ContainerID: id, Netns: netnsPath, IfName: "eth0", Stdin: conf})
		if o.Exit != 0 {
			t.Fatalf("%s %s %s: %s", plugin, verb, id, o)
		}
		return string(o.Stdout)
	}
	want := map[string]string{}
	step := func(plugin, verb, id, addr string) {
		t.Helper()
		out := run(plugin, verb, id)
		if verb == "ADD" {
			if !strings.Contains(out, `"`+addr+`/24"`) {
				t.Fatalf("%s ADD %s returned %s, want %s", plugin, id, out, addr)
			}
			want[addr] = ownerLine(id, "eth0")
		} else {
			delete(want, addr)
		}
		wantReservations(t, dataDir, want)
	}
	step("host-local", "ADD", "p1", "10.10.0.2")
	step("host-local", "ADD", "p2", "10.10.0.3")
	// The reference walks into .plumb-owners, reads through the links, and
	// takes nothing there for a reservation of its own.
	step(refHostLocal, "ADD", "r1", "10.10.0.4")
	step(refHostLocal, "DEL", "p1", "10.10.0.2")
	step("host-local", "ADD", "p3", "10.10.0.5")
	// plumb finds the reference's reservation although its index never
	// recorded it.
	step("host-local", "DEL", "r1", "10.10.0.4")
	step("host-local", "DEL", "p2", "10.10.0.3")
	// A re-ADD of p3 by plumb returns its address; the reference refuses one.
	step("host-local", "ADD", "p3", "10.10.0.5")
	if o := runPlugin(t, refHostLocal, call{Command: "ADD", ContainerID: "p3", Netns: netnsPath, IfName: "eth0", Stdin: conf}); o.Exit == 0 {
		t.Errorf("reference ADD of p3, which holds 10.10.0.5: %s, want its duplicate-allocation error", o)
	}
	step(refHostLocal, "DEL", "p3", "10.10.0.5")
	got, err := os.ReadDir(filepath.Join(storeDir(dataDir), ".plumb-owners"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range got {
		if e.Name() != "stamp" {
			// An empty owner directory left by the reference's DEL; harmless,
			// and the next plumb call rebuilds the index (the directory changed).
			t.Logf("index entry after the reference's DEL: %s", e.Name())
		}
	}
	step("host-local", "ADD", "p4", "10.10.0.6")
	step("host-local", "DEL", "p4", "10.10.0.6")
}
