package clients

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/testns"
)

// Addresses of the link between the test's host namespace and the
// "external" namespace: the outside world of every suite.
const (
	hostUplinkIP = "192.0.2.1"
	externalIP   = "192.0.2.2"
)

// requireClients skips unless the suites are switched on and run as root
// in the throwaway host namespace with the plugins built.
func requireClients(t *testing.T) {
	t.Helper()
	if os.Getenv(envEnable) != "1" {
		t.Skip("client suites run with `make test-clients` (" + envEnable + "=1, after scripts/clients-setup.sh)")
	}
	testns.RequireRoot(t)
	if binDir == "" {
		t.Fatal("plugins were not built")
	}
}

// needPlugins skips when one of the plugins a client's config chains was
// not built (not written yet, or not compiling: BUILD-NOTES.txt says which).
func needPlugins(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := os.Stat(filepath.Join(binDir, n)); err != nil {
			notes, _ := os.ReadFile(filepath.Join(binDir, buildNotes))
			t.Skipf("plugin %s was not built, so the chain cannot run yet; build notes:\n%s", n, notes)
		}
	}
}

// havePlugin reports whether the plugin binary was built.
func havePlugin(name string) bool {
	_, err := os.Stat(filepath.Join(binDir, name))
	return err == nil
}

// tool finds an installed client program or skips the test, naming the
// setup script that installs it.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		for _, dir := range []string{"/usr/local/bin", "/usr/sbin", "/sbin", filepath.Join(os.Getenv("HOME"), "go", "bin")} {
			if st, err := os.Stat(filepath.Join(dir, name)); err == nil && st.Mode()&0o111 != 0 {
				return filepath.Join(dir, name)
			}
		}
		t.Skipf("%s is not installed (scripts/clients-setup.sh installs it): %v", name, err)
	}
	return p
}

// runCmd runs a command with env added to the test's environment and a
// timeout; it returns stdout, and an error carrying the command line and
// both outputs.
func runCmd(timeout time.Duration, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w\nstdout: %s\nstderr: %s", name, strings.Join(args, " "), err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.String(), nil
}

// mustRun runs a command, failing the test with its output on error.
func mustRun(t *testing.T, timeout time.Duration, env []string, name string, args ...string) string {
	t.Helper()
	out, err := runCmd(timeout, env, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// external makes an "outside world" namespace linked to the test's host
// namespace by a veth: host 192.0.2.1/24, external 192.0.2.2/24. The
// external side has no route to container subnets, so only masqueraded
// traffic can be answered, and it reaches containers only through ports
// published on 192.0.2.1.
func external(t *testing.T) *netns.NS {
	t.Helper()
	ext := testns.NewNS(t)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "plext0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(ext.Fd())}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("create veth to external: %v", err)
	}
	t.Cleanup(func() { netlink.LinkDel(veth) })
	host, err := netlink.LinkByName("plext0")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr(hostUplinkIP + "/24")
	if err := netlink.AddrAdd(host, addr); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		t.Fatal(err)
	}
	if err := ext.Do(func() error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr(externalIP + "/24")
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	}); err != nil {
		t.Fatalf("configure external: %v", err)
	}
	return ext
}

// inNS runs fn in n, or in the test's host namespace when n is nil.
func inNS(n *netns.NS, fn func() error) error {
	if n == nil {
		return fn()
	}
	return n.Do(fn)
}

// serveWho serves HTTP on addr inside n (nil: the host namespace); every
// request is answered with the client address the server saw. It returns
// the bound address.
func serveWho(t *testing.T, n *netns.NS, addr string) string {
	t.Helper()
	var l net.Listener
	if err := inNS(n, func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintln(w, host)
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// httpGet fetches url from inside n (nil: the host namespace): the socket
// is made in n, then used from here. It returns the body.
func httpGet(n *netns.NS, addr, path string) (string, error) {
	var c net.Conn
	if err := inNS(n, func() (err error) {
		c, err = net.DialTimeout("tcp", addr, 3*time.Second)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintf(c, "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: plumb-clients\r\n\r\n", path, addr); err != nil {
		return "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", fmt.Errorf("read response from %s: %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET http://%s%s: %s: %s", addr, path, resp.Status, body)
	}
	return strings.TrimSpace(string(body)), nil
}

// eventually retries fn for up to d (a server in a freshly started
// container needs a moment to listen) and returns its last result.
func eventually(d time.Duration, fn func() (string, error)) (string, error) {
	deadline := time.Now().Add(d)
	for {
		s, err := fn()
		if err == nil || time.Now().After(deadline) {
			return s, err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// wantIn fails unless ip is inside cidr.
func wantIn(t *testing.T, what, ip, cidr string) {
	t.Helper()
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		t.Fatal(err)
	}
	a := net.ParseIP(ip)
	if a == nil || !n.Contains(a) {
		t.Fatalf("%s has address %q, want one from %s", what, ip, cidr)
	}
}

// hostVeths lists the veth links in the test's host namespace except the
// one to the external namespace.
func hostVeths(t *testing.T) []string {
	t.Helper()
	links := testns.Links(t)
	var out []string
	for _, l := range links {
		if l.Type() == "veth" && l.Attrs().Name != "plext0" {
			out = append(out, l.Attrs().Name)
		}
	}
	slices.Sort(out)
	return out
}

// hostLinkExists reports whether a link of that name is in the host namespace.
func hostLinkExists(name string) bool {
	_, err := netlink.LinkByName(name)
	return err == nil
}

// hostLinkGoneSoon reports whether the link is gone within 5 s: bridge's
// DEL retires the host veth (marked, down) and a reaper deletes it just
// after DEL answers.
func hostLinkGoneSoon(name string) bool {
	for end := time.Now().Add(5 * time.Second); hostLinkExists(name); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(end) {
			return false
		}
	}
	return true
}

// hostVethsSoon is hostVeths once it has n entries, or after 5 s (see
// hostLinkGoneSoon).
func hostVethsSoon(t *testing.T, n int) []string {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if v := hostVeths(t); len(v) == n || time.Now().After(end) {
			return v
		}
	}
}

// reservations lists the address files host-local keeps for network
// under dataDir (not the lock or last_reserved_ip files).
func reservations(t *testing.T, dataDir, network string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dataDir, network))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if net.ParseIP(e.Name()) != nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// ruleset is the host namespace's packet-filter state in every form the
// plugins may have used: nftables, and iptables/ip6tables (all tables).
func ruleset(t *testing.T) string {
	t.Helper()
	var b strings.Builder
	for _, c := range [][]string{{"nft", "list", "ruleset"}, {"iptables-save"}, {"ip6tables-save"}} {
		out, err := exec.Command(c[0], c[1:]...).CombinedOutput()
		if err != nil && !errors.Is(err, exec.ErrNotFound) {
			fmt.Fprintf(&b, "# %s: %v\n", c[0], err)
		}
		b.Write(out)
		b.WriteString("\n")
	}
	return b.String()
}

// namedNetns lists the named network namespaces; /run is the private
// tmpfs of this run, so every entry was made by a test or a client.
func namedNetns(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, filepath.Join("/run/netns", e.Name()))
	}
	return out
}

// leftovers describes what a client left behind for the attachments it
// cleaned up: veths (other than keep), named netns (other than keep),
// reservation files, and rules naming one of ids (container IDs or
// addresses). It is empty when everything is gone.
type leftoverCheck struct {
	DataDir, Network string   // host-local reservations to be gone
	Mentions         []string // container IDs and addresses no rule may name
	KeepNetns        []string // named netns the test itself still holds
}

func (c leftoverCheck) find(t *testing.T, keepVeths ...string) []string {
	t.Helper()
	var out []string
	if v := slices.DeleteFunc(hostVeths(t), func(v string) bool { return slices.Contains(keepVeths, v) }); len(v) > 0 {
		out = append(out, "veths: "+strings.Join(v, ", "))
	}
	if c.DataDir != "" {
		if r := reservations(t, c.DataDir, c.Network); len(r) > 0 {
			out = append(out, fmt.Sprintf("reservations in %s: %s", filepath.Join(c.DataDir, c.Network), strings.Join(r, ", ")))
		}
	}
	rs := ruleset(t)
	for _, m := range c.Mentions {
		if m != "" && strings.Contains(rs, m) {
			out = append(out, "rules naming "+m)
		}
	}
	kept := map[string]bool{}
	for _, k := range c.KeepNetns {
		kept[filepath.Base(k)] = true // /var/run/netns/x and /run/netns/x are one
	}
	for _, n := range namedNetns(t) {
		if !kept[filepath.Base(n)] {
			out = append(out, "named netns "+n)
		}
	}
	return out
}

// wantClean fails when anything is left (with the ruleset, to see which
// rules); it waits a little, since some clients tear down asynchronously.
// keepVeths are veths of attachments still in place.
func (c leftoverCheck) wantClean(t *testing.T, after string, keepVeths ...string) {
	t.Helper()
	var left []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		if left = c.find(t, keepVeths...); len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("left behind after %s:\n  %s\nruleset:\n%s", after, strings.Join(left, "\n  "), ruleset(t))
}

// wantNoMention fails when a rule still names one of mentions (container
// IDs, addresses) a few seconds after the client's teardown.
func wantNoMention(t *testing.T, after string, mentions ...string) {
	t.Helper()
	leftoverCheck{Mentions: mentions, KeepNetns: namedNetns(t)}.wantClean(t, after, hostVeths(t)...)
}

// wantMention fails unless the host's rules name every one of mentions
// while the attachment is in place, so that their absence after teardown
// means something.
func wantMention(t *testing.T, what string, mentions ...string) {
	t.Helper()
	rs := ruleset(t)
	for _, m := range mentions {
		if !strings.Contains(rs, m) {
			t.Fatalf("no rule names %s (%s) while it is attached:\n%s", m, what, rs)
		}
	}
}

// wantPlumbVeth fails unless a host veth carries the owner alias plumb's
// bridge gives it ("plumb/<network>/<container ID>/eth0"): the client ran
// plumb's plugins, not some other bridge plugin it found.
func wantPlumbVeth(t *testing.T, network, containerID string) {
	t.Helper()
	want := "plumb/" + network + "/" + containerID + "/eth0"
	links := testns.Links(t)
	var aliases []string
	for _, l := range links {
		if l.Type() == "veth" {
			if l.Attrs().Alias == want {
				return
			}
			aliases = append(aliases, l.Attrs().Name+"="+l.Attrs().Alias)
		}
	}
	t.Fatalf("no host veth has plumb's alias %q; veths: %v", want, aliases)
}
