package reaper

import (
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/testns"
)

func TestMain(m *testing.M) { testns.MainInHostNS(m) }

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
