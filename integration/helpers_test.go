package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/netns"
)

// allSpecVersions are the CNI spec versions every table test covers.
var allSpecVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// Verbs and the first spec version that has them.
const (
	checkSince  = "0.4.0"
	gcSince     = "1.1.0"
	statusSince = "1.1.0"
)

// testNet is the network name every config uses; host-local keeps its
// reservations in <dataDir>/<testNet>.
const testNet = "net1"

// atLeast reports whether spec version v is min or later.
func atLeast(t testing.TB, v, min string) bool {
	t.Helper()
	ok, err := version.GreaterThanOrEqualTo(v, min)
	if err != nil {
		t.Fatalf("compare versions %s and %s: %v", v, min, err)
	}
	return ok
}

// mustJSON marshals v, failing the test on error.
func mustJSON(t testing.TB, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("marshal %#v: %v", v, err)
	}
	return b
}

// confList is a one-plugin conflist named testNet.
func confList(t testing.TB, v string, plugin map[string]any) string {
	t.Helper()
	return string(mustJSON(t, map[string]any{"cniVersion": v, "name": testNet, "plugins": []any{plugin}}))
}

// pluginConf is one plugin's config as a runtime sends it on stdin: the
// plugin object plus the list's name and cniVersion.
func pluginConf(t testing.TB, v string, plugin map[string]any) []byte {
	t.Helper()
	conf := map[string]any{"cniVersion": v, "name": testNet}
	for k, val := range plugin {
		conf[k] = val
	}
	return mustJSON(t, conf)
}

// hostLocal describes a host-local config; zero fields take the defaults.
type hostLocal struct {
	DataDir string
	// Ranges defaults to one range set with 10.10.0.0/24.
	Ranges any
	// IPAM adds (or overrides) keys of the "ipam" object.
	IPAM map[string]any
	// Plugin adds keys to the plugin object ("capabilities", "args").
	Plugin map[string]any
}

// plugin is the plugin object: host-local reads the "ipam" object of
// whatever config it is given, so it can run as a plugin of its own.
func (h hostLocal) plugin() map[string]any {
	ranges := h.Ranges
	if ranges == nil {
		ranges = [][]map[string]any{{{"subnet": "10.10.0.0/24"}}}
	}
	ipam := map[string]any{"type": "host-local", "dataDir": h.DataDir, "ranges": ranges}
	for k, v := range h.IPAM {
		ipam[k] = v
	}
	p := map[string]any{"type": "host-local", "ipam": ipam}
	for k, v := range h.Plugin {
		p[k] = v
	}
	return p
}

func (h hostLocal) list(t testing.TB, v string) string { return confList(t, v, h.plugin()) }
func (h hostLocal) conf(t testing.TB, v string) []byte { return pluginConf(t, v, h.plugin()) }

// call is one direct execution of a plugin binary, as a runtime does it.
type call struct {
	Command     string
	ContainerID string
	Netns       string
	IfName      string
	Args        string // CNI_ARGS
	Stdin       []byte
}

// outcome is what a plugin process did.
type outcome struct {
	Stdout, Stderr []byte
	Exit           int
	// Err is the CNI error printed on stdout when Exit != 0.
	Err *types.Error
}

func (o outcome) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", o.Exit, o.Stdout, o.Stderr)
}

// prepare builds the command for c without starting it, so callers can
// start many at once.
func (c call) prepare(plugin string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(binDir, plugin))
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"CNI_COMMAND=" + c.Command,
		"CNI_CONTAINERID=" + c.ContainerID,
		"CNI_NETNS=" + c.Netns,
		"CNI_IFNAME=" + c.IfName,
		"CNI_ARGS=" + c.Args,
		"CNI_PATH=" + binDir,
	}
	cmd.Stdin = bytes.NewReader(c.Stdin)
	return cmd
}

// finish runs a prepared command and decodes its outcome. It does not touch
// a testing.T, so goroutines can use it.
func finish(cmd *exec.Cmd) (outcome, error) {
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	o := outcome{Stdout: stdout.Bytes(), Stderr: stderr.Bytes()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		o.Exit = ee.ExitCode()
	case err != nil:
		return o, fmt.Errorf("run %s: %w", cmd.Path, err)
	}
	if o.Exit != 0 {
		var te types.Error
		if err := json.Unmarshal(o.Stdout, &te); err != nil || te.Code == 0 {
			return o, fmt.Errorf("%s failed without a CNI error on stdout: %s", cmd.Path, o)
		}
		o.Err = &te
	}
	return o, nil
}

// runPlugin executes plugin directly with c.
func runPlugin(t testing.TB, plugin string, c call) outcome {
	t.Helper()
	o, err := finish(c.prepare(plugin))
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// cniError extracts the CNI error libcni (or a plugin) returned.
func cniError(t testing.TB, err error) *types.Error {
	t.Helper()
	if err == nil {
		t.Fatal("succeeded, want a CNI error")
	}
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("error %v (%T) is not a CNI error", err, err)
	}
	return te
}

// wantCode fails unless err is a CNI error with code.
func wantCode(t testing.TB, err error, code uint) *types.Error {
	t.Helper()
	te := cniError(t, err)
	if te.Code != code {
		t.Fatalf("CNI error code %d (%q, details %q), want %d", te.Code, te.Msg, te.Details, code)
	}
	return te
}

// resultIPs lists a result's addresses ("10.10.0.2/24") in its order.
func resultIPs(t testing.TB, r types.Result) []string {
	t.Helper()
	res, err := current.NewResultFromResult(r)
	if err != nil {
		t.Fatalf("convert result %v: %v", r, err)
	}
	var out []string
	for _, ip := range res.IPs {
		out = append(out, ip.Address.String())
	}
	return out
}

// loState reports whether lo is up in n and its addresses.
func loState(t testing.TB, n *netns.NS) (up bool, addrs []string) {
	t.Helper()
	h, err := n.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatalf("find lo in %s: %v", n.Path(), err)
	}
	list, err := h.AddrList(lo, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatalf("list addresses of lo in %s: %v", n.Path(), err)
	}
	for _, a := range list {
		addrs = append(addrs, a.IPNet.String())
	}
	slices.Sort(addrs)
	return lo.Attrs().Flags&net.FlagUp != 0, addrs
}

// setLo sets lo in n up or down behind the plugin's back.
func setLo(t testing.TB, n *netns.NS, up bool) {
	t.Helper()
	h, err := n.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatalf("find lo in %s: %v", n.Path(), err)
	}
	if up {
		err = h.LinkSetUp(lo)
	} else {
		err = h.LinkSetDown(lo)
	}
	if err != nil {
		t.Fatalf("set lo up=%v in %s: %v", up, n.Path(), err)
	}
}

func storeDir(dataDir string) string { return filepath.Join(dataDir, testNet) }

// reservationFiles reads every reservation file of testNet: address -> content.
func reservationFiles(t testing.TB, dataDir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	entries, err := os.ReadDir(storeDir(dataDir))
	if errors.Is(err, fs.ErrNotExist) {
		return out
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if net.ParseIP(e.Name()) == nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(storeDir(dataDir), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

// ownerLine is the reference host-local's file content for an attachment.
func ownerLine(containerID, ifName string) string { return containerID + "\r\n" + ifName }

// wantReservations fails unless testNet's reservation files are exactly want.
func wantReservations(t testing.TB, dataDir string, want map[string]string) {
	t.Helper()
	got := reservationFiles(t, dataDir)
	if !maps.Equal(got, want) {
		t.Fatalf("reservation files:\n got %q\nwant %q", got, want)
	}
}

// wantNothingWritten fails if anything but testNet's directory and its lock
// file exists under dataDir.
func wantNothingWritten(t testing.TB, dataDir string) {
	t.Helper()
	allowed := map[string]bool{testNet: true, filepath.Join(testNet, "lock"): true}
	var extra []string
	err := filepath.WalkDir(dataDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dataDir, p)
		if rel != "." && !allowed[rel] {
			extra = append(extra, rel)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	if len(extra) > 0 {
		t.Fatalf("failed call left files under dataDir: %s", strings.Join(extra, ", "))
	}
}
