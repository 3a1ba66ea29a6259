package link

import (
	"testing"

	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/testns"
)

func TestMain(m *testing.M) { testns.MainInHostNS(m) }

// TestAddVethFailureLeavesNothing: when the kernel creates the pair but
// refuses the rest of the request (here a master that takes no ports; on a
// real host a bridge at its 1024-port limit answers EXFULL the same way),
// neither end may stay behind: the container would keep an eth0 that
// blocks every later ADD.
func TestAddVethFailureLeavesNothing(t *testing.T) {
	testns.RequireRoot(t)
	hns, err := netns.Current()
	if err != nil {
		t.Fatal(err)
	}
	defer hns.Close()
	host, err := Open(hns, "host")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	cns := testns.NewNS(t)
	cont, err := Open(cns, cns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer cont.Close()
	lo, err := host.Get("lo")
	if err != nil || lo == nil {
		t.Fatal("no lo:", err)
	}
	_, err = host.AddVeth(VethSpec{HostName: "vfail0", MasterIndex: lo.Attrs().Index, PeerName: "eth0", PeerNS: cns})
	if err == nil {
		t.Fatal("AddVeth with lo as master succeeded")
	}
	for _, c := range []struct {
		ns   *NS
		name string
	}{{host, "vfail0"}, {cont, "eth0"}} {
		if l, err := c.ns.Get(c.name); err != nil || l != nil {
			t.Errorf("%s left in %s after the failed AddVeth (%v)", c.name, c.ns.Name, err)
		}
	}
}
