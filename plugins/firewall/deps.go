package main

import (
	"fmt"
	"os/exec"

	"github.com/plumbnet/plumb/internal/fw"
	"github.com/plumbnet/plumb/internal/link"
	"github.com/plumbnet/plumb/internal/netns"
)

// LinkInfo is what the plugin needs to know of a host link.
type LinkInfo struct {
	Kind     string // "bridge", "veth", ...
	Master   string // the bridge a port is attached to, "" if none
	Isolated bool   // the bridge port's isolated flag
}

// Links reads and changes links of the host namespace.
type Links interface {
	// Link describes a link; nil when there is none by that name.
	Link(name string) (*LinkInfo, error)
	// SetIsolated sets a bridge port's isolated flag.
	SetIsolated(port string) error
	Close()
}

// New returns the firewall plugin wired to the real system.
func New() *Plugin {
	return &Plugin{Filter: newFilter, DefaultBackend: defaultBackend, Links: hostLinks}
}

func newFilter(backend string) (fw.Filter, error) {
	if backend == backendIPTables {
		return fw.NewIPTFilter()
	}
	return fw.NewNFTFilter()
}

// defaultBackend is iptables when the iptables command exists, as the
// reference plugin uses iptables when firewalld does not run: rules an
// administrator keeps in the iptables admin chain go on applying. Without
// it, nftables.
func defaultBackend() string {
	if _, err := exec.LookPath("iptables"); err == nil {
		return backendIPTables
	}
	return backendNFTables
}

type netlinkLinks struct{ ns *link.NS }

func hostLinks() (Links, error) {
	hns, err := netns.Current()
	if err != nil {
		return nil, err
	}
	defer hns.Close()
	ns, err := link.Open(hns, "host")
	if err != nil {
		return nil, err
	}
	return netlinkLinks{ns: ns}, nil
}

func (l netlinkLinks) Close() { l.ns.Close() }

func (l netlinkLinks) Link(name string) (*LinkInfo, error) {
	nl, err := l.ns.Get(name)
	if err != nil || nl == nil {
		return nil, err
	}
	info := &LinkInfo{Kind: nl.Type()}
	if idx := nl.Attrs().MasterIndex; idx != 0 {
		m, err := l.ns.H.LinkByIndex(idx)
		if err != nil {
			return nil, fmt.Errorf("find master of %s: %w", name, err)
		}
		info.Master = m.Attrs().Name
		pi, err := l.ns.H.LinkGetProtinfo(nl)
		if err != nil {
			return nil, fmt.Errorf("read bridge port flags of %s: %w", name, err)
		}
		info.Isolated = pi.Isolated
	}
	return info, nil
}

func (l netlinkLinks) SetIsolated(port string) error {
	nl, err := l.ns.Get(port)
	if err != nil {
		return err
	}
	if nl == nil {
		return fmt.Errorf("bridge port %s is missing", port)
	}
	if err := l.ns.H.LinkSetIsolated(nl, true); err != nil {
		return fmt.Errorf("isolate bridge port %s: %w", port, err)
	}
	return nil
}
