package main

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/crashpoint"
	"github.com/plumbnet/plumb/internal/fw"
)

// Localnet turns on route_localnet (IPv4) for the interface the host routes
// a container address through: the container's bridge, only it.
type Localnet interface {
	// Enable turns it on and names the interface.
	Enable(ctr net.IP) (string, error)
	// Enabled reports whether it is on, and names the interface.
	Enabled(ctr net.IP) (string, bool, error)
}

// Plugin implements the portmap CNI plugin.
type Plugin struct {
	// Backend gives the port mapper by name ("nftables" or "iptables").
	Backend func(name string) (fw.PortMapper, error)
	// FlushUDP removes the conntrack entries of UDP flows to host ports.
	FlushUDP func(ports []uint16) error
	Localnet Localnet
	// Warn reports what does not fail a call (stderr: the runtime's log).
	Warn func(format string, args ...any)
}

// backends lists the backends teardown tries: the configured one first,
// then the other, so a backend switch between ADD and DEL still cleans up.
func backends(c *Config) []string {
	if c.Backend == backendIPT {
		return []string{backendIPT, backendNFT}
	}
	return []string{backendNFT, backendIPT}
}

// mapper opens the configured backend; with no backend configured and no
// nf_tables in the kernel, iptables.
func (p *Plugin) mapper(c *Config) (fw.PortMapper, error) {
	m, err := p.Backend(c.Backend)
	if err != nil && c.BackendDefaulted && c.Backend == backendNFT && errors.Is(err, fw.ErrNoNFTables) {
		if ipt, ierr := p.Backend(backendIPT); ierr == nil {
			return ipt, nil
		}
	}
	if err != nil {
		return nil, cniplugin.WithCode(cniplugin.CodeNotAvailable, fmt.Errorf("port mapping backend %s: %w", c.Backend, err))
	}
	return m, nil
}

func owner(c *Config, args *skel.CmdArgs) fw.Owner {
	return fw.Owner{Network: c.conf.Name, ContainerID: args.ContainerID, IfName: args.IfName}
}

// codeOf gives a backend's refusal of the request the invalid-config code.
func codeOf(err error) error {
	if errors.Is(err, fw.ErrInvalidPorts) {
		return cniplugin.WithCode(cniplugin.CodeInvalidConfig, err)
	}
	return err
}

// parse reads config and prevResult; the mappings are left to the caller.
func parse(args *skel.CmdArgs) (*Config, *current.Result, error) {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return nil, nil, err
	}
	prev, err := cniplugin.PrevResult(&c.conf.PluginConf)
	if err != nil {
		return nil, nil, err
	}
	return c, prev, nil
}

// Add publishes the mappings, turns on route_localnet on the container's
// bridge when 127.0.0.1 is published, flushes stale UDP conntrack entries
// of the host ports and passes prevResult through.
func (p *Plugin) Add(args *skel.CmdArgs) (types.Result, error) {
	c, prev, err := parse(args)
	if err != nil {
		return nil, err
	}
	maps, err := c.Mappings()
	if err != nil {
		return nil, err
	}
	if prev == nil {
		return nil, cniplugin.InvalidConfig("portmap must be chained after an interface plugin: the config has no prevResult")
	}
	if len(maps) == 0 {
		return prev, nil
	}
	rule, err := Rule(c, owner(c, args), maps, prev, args.IfName)
	if err != nil {
		return nil, err
	}
	m, err := p.mapper(c)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	// Whether route_localnet is on already (nearly always, after the first
	// container) is asked while the rules go in.
	type localnetState struct {
		on  bool
		err error
	}
	ip := localnetIP(rule)
	localnet := make(chan localnetState, 1)
	if ip != nil {
		go func() {
			_, on, err := p.Localnet.Enabled(ip)
			localnet <- localnetState{on, err}
		}()
	}
	if err := m.AddPorts(ctx, rule); err != nil {
		return nil, codeOf(err)
	}
	crashpoint.Here("portmap.add.rules")
	// After the rules: they include the guard against 127/8 from outside,
	// which must be in place before route_localnet lets such packets in.
	if ip != nil {
		if st := <-localnet; st.err != nil || !st.on {
			if _, err := p.Localnet.Enable(ip); err != nil {
				err = fmt.Errorf("enable route_localnet for %s: %w", ip, err)
				if _, uerr := fw.DelPortsKnown(ctx, m, rule.Owner, rule.Mappings); uerr != nil {
					err = errors.Join(err, fmt.Errorf("undo published ports: %w", uerr))
				}
				return nil, err
			}
		}
		crashpoint.Here("portmap.add.localnet")
	}
	p.flushUDP(rule.Mappings)
	return prev, nil
}

// flushUDP drops the conntrack entries of the UDP host ports, so that a
// long-lived flow meets the new rules. Failing to is logged, not fatal: the
// rules are right, the flow only waits for its entry to time out.
func (p *Plugin) flushUDP(maps []fw.PortMapping) {
	if ports := fw.UDPPorts(maps); len(ports) > 0 {
		if err := p.FlushUDP(ports); err != nil {
			p.Warn("portmap: %v", err)
		}
	}
}

// Del removes everything the attachment published, found by its owner
// alone: an empty or missing prevResult or portMappings change nothing
// but the speed (the mappings they name are what a backend looks up
// first). It tries both backends and returns every error.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	known := knownMappings(c, args)
	ctx := context.Background()
	var errs []error
	var removed []fw.PortMapping
	for _, b := range backends(c) {
		m, err := p.Backend(b)
		if err != nil {
			if b == c.Backend && !c.BackendDefaulted {
				errs = append(errs, fmt.Errorf("port mapping backend %s: %w", b, err))
			}
			continue // a backend this host cannot use holds nothing of ours
		}
		got, err := fw.DelPortsKnown(ctx, m, owner(c, args), known)
		if err != nil {
			errs = append(errs, fmt.Errorf("remove published ports (%s) of %s: %w", b, args.ContainerID, err))
		}
		crashpoint.Here("portmap.del." + b)
		removed = append(removed, got...)
	}
	p.flushUDP(removed)
	return errors.Join(errs...)
}

// knownMappings are what an ADD with this config and prevResult would have
// published; none when they cannot be told.
func knownMappings(c *Config, args *skel.CmdArgs) []fw.PortMapping {
	prev, err := cniplugin.PrevResult(&c.conf.PluginConf)
	if err != nil || prev == nil {
		return nil
	}
	maps, err := c.Mappings()
	if err != nil || len(maps) == 0 {
		return nil
	}
	rule, err := Rule(c, owner(c, args), maps, prev, args.IfName)
	if err != nil {
		return nil
	}
	return rule.Mappings
}

// Check compares the kernel with the mappings and prevResult.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, prev, err := parse(args)
	if err != nil {
		return err
	}
	maps, err := c.Mappings()
	if err != nil {
		return err
	}
	if prev == nil {
		return cniplugin.InvalidConfig("CHECK needs a prevResult")
	}
	rule, err := Rule(c, owner(c, args), maps, prev, args.IfName)
	if err != nil {
		return err
	}
	m, err := p.mapper(c)
	if err != nil {
		return err
	}
	if err := m.CheckPorts(context.Background(), rule); err != nil {
		return codeOf(err)
	}
	if ip := localnetIP(rule); ip != nil {
		dev, on, err := p.Localnet.Enabled(ip)
		if err != nil {
			return fmt.Errorf("read route_localnet for %s: %w", ip, err)
		}
		if !on {
			return fmt.Errorf("route_localnet is off on %s, the interface to %s: 127.0.0.1 is not published", dev, ip)
		}
	}
	return nil
}

// GC removes what attachments of this network that the runtime no longer
// lists published, in both backends.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	keep, err := cniplugin.ValidAttachments(args.StdinData)
	if err != nil {
		return err
	}
	owners := make([]fw.Owner, 0, len(keep))
	for a := range keep {
		owners = append(owners, fw.Owner{Network: c.conf.Name, ContainerID: a.ContainerID, IfName: a.IfName})
	}
	var errs []error
	for _, b := range backends(c) {
		m, err := p.Backend(b)
		if err != nil {
			continue
		}
		if err := m.GCPorts(context.Background(), c.conf.Name, owners); err != nil {
			errs = append(errs, fmt.Errorf("gc published ports (%s): %w", b, err))
		}
	}
	return errors.Join(errs...)
}

// Status reports whether the configured backend can be used here (code 50
// when not).
func (p *Plugin) Status(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	m, err := p.mapper(c)
	if err != nil {
		return err
	}
	if err := m.Usable(context.Background()); err != nil {
		return cniplugin.WithCode(cniplugin.CodeNotAvailable, fmt.Errorf("port mapping backend %s: %w", c.Backend, err))
	}
	return nil
}
