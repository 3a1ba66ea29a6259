package reaper

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/testns"
)

func TestMain(m *testing.M) {
	Main() // the reapers the plugin stand-in below starts
	if os.Getenv(envStandIn) == "1" {
		os.Exit(standIn())
	}
	testns.MainInHostNS(m)
}

const envStandIn = "PLUMB_REAPER_TEST_STANDIN"

// standIn plays a plugin's DEL: it opens a netfilter socket, hands it to a
// reaper, prints the socket's inode and lives 300 ms more.
func standIn() int {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		fmt.Println("socket:", err)
		return 1
	}
	var st unix.Stat_t
	unix.Fstat(fd, &st)
	Enable()
	Begin()
	Finish()
	fmt.Println(st.Ino)
	os.Stdout.Sync()
	time.Sleep(300 * time.Millisecond)
	return 0
}

// holders lists the processes other than skip with a descriptor on the
// socket with inode ino.
func holders(ino uint64, skip int) []int {
	want := fmt.Sprintf("socket:[%d]", ino)
	var out []int
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == skip {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		for _, fd := range fds {
			if l, _ := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name())); l == want {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

// TestReaperHoldsSocketsUntilPluginExits: the reaper holds the plugin's
// netfilter socket while the plugin runs (so the plugin's exit does not
// release it) and lets go of it once the plugin has exited.
func TestReaperHoldsSocketsUntilPluginExits(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), envStandIn+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var ino uint64
	if _, err := fmt.Fscan(out, &ino); err != nil {
		t.Fatalf("read the stand-in's socket: %v", err)
	}
	time.Sleep(100 * time.Millisecond) // well past the reaper's start; the plugin lives 300 ms
	if h := holders(ino, cmd.Process.Pid); len(h) != 1 {
		t.Errorf("while the plugin runs, %d other processes hold its socket (%v), want 1: the reaper", len(h), h)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		h := holders(ino, -1)
		if len(h) == 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("5 s after the plugin exited, %v still hold its socket", h)
		}
	}
}

// A reaper deletes its link only while the link still carries the alias
// the DEL gave it: an index reused by a new link is left alone.
func TestDeleteLinkOnlyWithItsAlias(t *testing.T) {
	testns.RequireRoot(t)
	for _, tc := range []struct {
		alias, want string
		deleted     bool
	}{
		{"plumb-gone/x", "plumb-gone/x", true},
		{"someone-else", "plumb-gone/x", false},
		{"", "plumb-gone/x", false},
	} {
		d := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "rp0"}, PeerName: "rp1"}
		if err := netlink.LinkAdd(d); err != nil {
			t.Fatal(err)
		}
		l, err := netlink.LinkByName("rp0")
		if err != nil {
			t.Fatal(err)
		}
		if tc.alias != "" {
			if err := netlink.LinkSetAlias(l, tc.alias); err != nil {
				t.Fatal(err)
			}
		}
		deleteLink(l.Attrs().Index, tc.want)
		_, err = netlink.LinkByName("rp0")
		if gone := err != nil; gone != tc.deleted {
			t.Errorf("alias %q, reaper told %q: deleted %v, want %v", tc.alias, tc.want, gone, tc.deleted)
		}
		netlink.LinkDel(l)
	}
}

// NetfilterSockets finds netfilter netlink sockets and nothing else.
func TestNetfilterSocketsFindsOnlyNetfilter(t *testing.T) {
	nf, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		t.Skipf("no netfilter netlink: %v", err)
	}
	defer unix.Close(nf)
	rt, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rt)
	var st unix.Stat_t
	if err := unix.Fstat(nf, &st); err != nil {
		t.Fatal(err)
	}
	files := NetfilterSockets()
	found := false
	for _, f := range files {
		var fs unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &fs); err != nil {
			t.Fatal(err)
		}
		if fs.Ino == st.Ino {
			found = true
		}
		if p, _ := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_PROTOCOL); p != unix.NETLINK_NETFILTER {
			t.Errorf("%s: protocol %d, want netfilter", f.Name(), p)
		}
		f.Close()
	}
	if !found {
		t.Fatalf("the open netfilter socket is not among %d found", len(files))
	}
}

// Outside a plugin binary (a test calling a plugin's DEL in process) a
// reaper would be a new run of the test binary itself: Start refuses.
func TestStartRefusedOutsidePlugins(t *testing.T) {
	if Enabled() {
		t.Skip("enabled by an earlier test of this process")
	}
	if err := Start(Job{}); err == nil {
		t.Fatal("Start succeeded in a process that is not a plugin binary")
	}
}

// TestSwitchOffDisablesReapers: with PLUMB_REAPER=off a plugin's DEL
// starts no reaper (Begin holds nothing, DeleteLinkLater refuses, so the
// caller deletes the link itself), and any other value leaves them on.
func TestSwitchOffDisablesReapers(t *testing.T) {
	defer enabled.Store(enabled.Load())
	defer holding.Store(holding.Load())
	for _, c := range []struct {
		val  string
		want bool
	}{{"off", false}, {"", true}, {"on", true}} {
		holding.Store(false)
		t.Setenv(EnvSwitch, c.val)
		Enable()
		Begin()
		if Enabled() != c.want || Holding() != c.want || DeleteLinkLater(7, "x") != c.want {
			t.Errorf("%s=%q: enabled %v, holding %v, want %v", EnvSwitch, c.val, Enabled(), Holding(), c.want)
		}
	}
	holding.Store(false)
	linkIndex, linkAlias = 0, ""
}
