package main

import (
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/netns"
)

// Loopback is the "lo" link of one namespace.
type Loopback interface {
	SetUp(up bool) error
	// State reports whether lo is up and its addresses.
	State() (up bool, addrs []net.IPNet, err error)
	Close() error
}

// Plugin implements the loopback CNI plugin.
type Plugin struct {
	// Open gives the loopback link of the namespace at a CNI_NETNS path; it
	// returns an error wrapping netns.ErrGone when the namespace is gone.
	Open func(netnsPath string) (Loopback, error)
}

type config struct {
	types.PluginConf
}

func parse(args *skel.CmdArgs) (*config, *current.Result, error) {
	var conf config
	if err := cniplugin.Decode(args.StdinData, &conf); err != nil {
		return nil, nil, err
	}
	if err := cniplugin.ParseArgs(args.Args, &cniplugin.Args{}); err != nil {
		return nil, nil, err
	}
	prev, err := cniplugin.PrevResult(&conf.PluginConf)
	if err != nil {
		return nil, nil, err
	}
	return &conf, prev, nil
}

// Add brings lo up and reports it; a prevResult passes through unchanged.
func (p *Plugin) Add(args *skel.CmdArgs) (types.Result, error) {
	conf, prev, err := parse(args)
	if err != nil {
		return nil, err
	}
	lo, err := p.open(args.Netns)
	if err != nil {
		return nil, err
	}
	defer lo.Close()
	if err := lo.SetUp(true); err != nil {
		return nil, fmt.Errorf("set lo up in %s: %w", args.Netns, err)
	}
	_, addrs, err := lo.State()
	if err != nil {
		return nil, fmt.Errorf("read lo in %s: %w", args.Netns, err)
	}
	if prev != nil {
		return prev, nil
	}
	res := &current.Result{
		CNIVersion: conf.CNIVersion,
		Interfaces: []*current.Interface{{Name: "lo", Mac: "00:00:00:00:00:00", Sandbox: args.Netns}},
	}
	seen := map[bool]bool{} // one address per family, as the reference reports
	for _, a := range addrs {
		if !a.IP.IsLoopback() {
			return nil, fmt.Errorf("lo in %s carries non-loopback address %s", args.Netns, a.String())
		}
		v4 := a.IP.To4() != nil
		if seen[v4] {
			continue
		}
		seen[v4] = true
		res.IPs = append(res.IPs, &current.IPConfig{Interface: current.Int(0), Address: a})
	}
	return res, nil
}

// Del brings lo down; a namespace that is gone (or none given) is success.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	if _, _, err := parse(args); err != nil {
		return err
	}
	if args.Netns == "" {
		return nil
	}
	lo, err := p.Open(args.Netns)
	if errors.Is(err, netns.ErrGone) {
		return nil
	}
	if err != nil {
		return err
	}
	defer lo.Close()
	if err := lo.SetUp(false); err != nil {
		return fmt.Errorf("set lo down in %s: %w", args.Netns, err)
	}
	return nil
}

// Check verifies that lo is up.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	if _, _, err := parse(args); err != nil {
		return err
	}
	lo, err := p.open(args.Netns)
	if err != nil {
		return err
	}
	defer lo.Close()
	up, _, err := lo.State()
	if err != nil {
		return fmt.Errorf("read lo in %s: %w", args.Netns, err)
	}
	if !up {
		return fmt.Errorf("lo in %s is down", args.Netns)
	}
	return nil
}

// GC has nothing to collect: loopback keeps no state outside the namespace.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	_, err := cniplugin.ValidAttachments(args.StdinData)
	return err
}

// Status: loopback needs nothing from the host, so it is always ready.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	_, _, err := parse(args)
	return err
}

// open maps a missing or bogus namespace to the invalid-netns error code.
func (p *Plugin) open(path string) (Loopback, error) {
	lo, err := p.Open(path)
	if errors.Is(err, netns.ErrGone) || errors.Is(err, netns.ErrNotNetNS) {
		return nil, cniplugin.WithCode(cniplugin.CodeInvalidNetNS, err)
	}
	return lo, err
}
