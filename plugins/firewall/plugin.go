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
	"github.com/plumbnet/plumb/internal/fw"
)

// Plugin implements the firewall CNI plugin.
type Plugin struct {
	// Filter gives the backend by name ("iptables" or "nftables").
	Filter func(backend string) (fw.Filter, error)
	// DefaultBackend names the backend of a config that names none.
	DefaultBackend func() string
	// Links gives access to the host namespace's links.
	Links func() (Links, error)
}

func (p *Plugin) config(args *skel.CmdArgs) (*Config, error) {
	return parseConfig(args.StdinData, args.Args, p.DefaultBackend)
}

func owner(c *Config, args *skel.CmdArgs) fw.Owner {
	return fw.Owner{Network: c.Name, ContainerID: args.ContainerID, IfName: args.IfName}
}

// backend gives the configured backend; an unusable one is code 50.
func (p *Plugin) backend(c *Config) (fw.Filter, error) {
	if err := c.unsupported(); err != nil {
		return nil, err
	}
	f, err := p.Filter(c.BackendName)
	if err != nil {
		return nil, cniplugin.WithCode(cniplugin.CodeNotAvailable, fmt.Errorf("firewall backend %s: %w", c.BackendName, err))
	}
	return f, nil
}

// teardown lists the backends DEL and GC clean: the configured one, then
// nftables, whose cleanup also finds rules an iptables-nft host holds, so a
// backend switch between ADD and DEL still cleans up.
func (p *Plugin) teardown(c *Config) []string {
	if c.BackendName == backendIPTables {
		return []string{backendIPTables, backendNFTables}
	}
	return []string{backendNFTables}
}

// attachment is what ADD and CHECK read from prevResult: the rule, and the
// bridge ports to isolate.
type attachment struct {
	rule  fw.FilterRule
	ports []string
}

// attachmentOf builds the rule from prevResult. The container's bridge is
// the first host-side interface that is a bridge (the bridge plugin lists
// bridge, host veth, container interface); its ports are the host-side
// interfaces attached to it.
func (p *Plugin) attachmentOf(c *Config, args *skel.CmdArgs, prev *current.Result) (attachment, error) {
	a := attachment{rule: fw.FilterRule{Owner: owner(c, args), Policy: c.Policy, AdminChain: c.AdminChain}}
	for _, ipc := range prev.IPs {
		a.rule.Addrs = append(a.rule.Addrs, ipc.Address.IP)
	}
	links, err := p.Links()
	if err != nil {
		return a, err
	}
	defer links.Close()
	infos := map[string]*LinkInfo{}
	for _, itf := range prev.Interfaces {
		if itf == nil || itf.Sandbox != "" || itf.Name == "" {
			continue
		}
		info, err := links.Link(itf.Name)
		if err != nil {
			return a, err
		}
		infos[itf.Name] = info
		if a.rule.Bridge == "" && info != nil && info.Kind == "bridge" {
			a.rule.Bridge = itf.Name
		}
	}
	for name, info := range infos {
		if a.rule.Bridge != "" && info != nil && info.Master == a.rule.Bridge {
			a.ports = append(a.ports, name)
		}
	}
	if c.Policy != fw.PolicyOpen && a.rule.Bridge == "" {
		return a, cniplugin.InvalidConfig("ingressPolicy %q needs the container's bridge: chain \"firewall\" after the \"bridge\" plugin (prevResult names no bridge in this namespace)", c.Policy)
	}
	if c.Policy == fw.PolicyIsolated && len(a.ports) == 0 {
		return a, cniplugin.InvalidConfig("ingressPolicy %q: prevResult names no port of bridge %s", c.Policy, a.rule.Bridge)
	}
	return a, nil
}

func prevResult(c *Config, verb string) (*current.Result, error) {
	prev, err := cniplugin.PrevResult(&c.PluginConf)
	if err != nil {
		return nil, err
	}
	if prev == nil {
		return nil, cniplugin.InvalidConfig("%s needs a prevResult: chain \"firewall\" after an interface plugin such as \"bridge\"", verb)
	}
	return prev, nil
}

// Add accepts the container's forwarded traffic, applies the ingress
// policy and, for "isolated", sets the isolated flag of the container's
// bridge ports; it returns prevResult unchanged. All or nothing.
func (p *Plugin) Add(args *skel.CmdArgs) (types.Result, error) {
	c, err := p.config(args)
	if err != nil {
		return nil, err
	}
	prev, err := prevResult(c, "ADD")
	if err != nil {
		return nil, err
	}
	f, err := p.backend(c)
	if err != nil {
		return nil, err
	}
	a, err := p.attachmentOf(c, args, prev)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	if len(a.rule.Addrs) > 0 {
		if err := f.AddFilter(ctx, a.rule); err != nil {
			return nil, fmt.Errorf("firewall (%s) for %s: %w", c.BackendName, args.ContainerID, filterCode(err))
		}
	}
	if c.Policy == fw.PolicyIsolated {
		if err := p.isolate(a.ports); err != nil {
			if len(a.rule.Addrs) > 0 {
				if uerr := f.DelFilter(ctx, a.rule.Owner, a.rule.Addrs); uerr != nil {
					err = errors.Join(err, fmt.Errorf("undo firewall rules: %w", uerr))
				}
			}
			return nil, err
		}
	}
	return prev, nil
}

// isolate sets the isolated flag of ports: the kernel then forwards no
// frame between two isolated ports of a bridge, which no hook sees without
// br_netfilter.
func (p *Plugin) isolate(ports []string) error {
	links, err := p.Links()
	if err != nil {
		return err
	}
	defer links.Close()
	for _, port := range ports {
		if err := links.SetIsolated(port); err != nil {
			return err
		}
	}
	return nil
}

// filterCode maps a backend's rejection of the request to code 7.
func filterCode(err error) error {
	if errors.Is(err, fw.ErrInvalidFilter) {
		return cniplugin.WithCode(cniplugin.CodeInvalidConfig, err)
	}
	return err
}

// Del removes the attachment's rules, found by owner: prevResult's
// addresses are only a hint. Anything already gone is success; the flag of
// an isolated port goes with the port, which the interface plugin deletes.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	c, err := p.config(args)
	if err != nil {
		return err
	}
	var hint []net.IP
	if prev, err := cniplugin.PrevResult(&c.PluginConf); err == nil && prev != nil {
		for _, ipc := range prev.IPs {
			hint = append(hint, ipc.Address.IP)
		}
	}
	ctx := context.Background()
	var errs []error
	for _, b := range p.teardown(c) {
		f, err := p.Filter(b)
		if err != nil {
			if b == c.BackendName {
				errs = append(errs, fmt.Errorf("firewall backend %s: %w", b, err))
			}
			continue // a backend this host cannot use holds nothing of ours
		}
		if err := f.DelFilter(ctx, owner(c, args), hint); err != nil {
			errs = append(errs, fmt.Errorf("remove firewall rules (%s) of %s: %w", b, args.ContainerID, err))
		}
	}
	return errors.Join(errs...)
}

// Check compares the attachment's rules and, for "isolated", its ports'
// isolated flags with prevResult and the config.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := p.config(args)
	if err != nil {
		return err
	}
	prev, err := prevResult(c, "CHECK")
	if err != nil {
		return err
	}
	f, err := p.backend(c)
	if err != nil {
		return err
	}
	a, err := p.attachmentOf(c, args, prev)
	if err != nil {
		return err
	}
	if len(a.rule.Addrs) > 0 {
		if err := f.CheckFilter(context.Background(), a.rule); err != nil {
			return fmt.Errorf("firewall (%s) of %s: %w", c.BackendName, args.ContainerID, filterCode(err))
		}
	}
	if c.Policy == fw.PolicyIsolated {
		links, err := p.Links()
		if err != nil {
			return err
		}
		defer links.Close()
		for _, port := range a.ports {
			info, err := links.Link(port)
			if err != nil {
				return err
			}
			if info == nil || !info.Isolated {
				return fmt.Errorf("bridge port %s of %s is not isolated", port, args.ContainerID)
			}
		}
	}
	return nil
}

// GC removes the rules of this network's attachments that are not in
// cni.dev/valid-attachments.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	c, err := p.config(args)
	if err != nil {
		return err
	}
	keep, err := cniplugin.ValidAttachments(args.StdinData)
	if err != nil {
		return err
	}
	owners := make([]fw.Owner, 0, len(keep))
	for a := range keep {
		owners = append(owners, fw.Owner{Network: c.Name, ContainerID: a.ContainerID, IfName: a.IfName})
	}
	ctx := context.Background()
	var errs []error
	for _, b := range p.teardown(c) {
		f, err := p.Filter(b)
		if err != nil {
			continue
		}
		if err := f.GCFilter(ctx, c.Name, owners); err != nil {
			errs = append(errs, fmt.Errorf("GC firewall rules (%s): %w", b, err))
		}
	}
	return errors.Join(errs...)
}

// Status reports whether the configured backend can be used (code 50 when
// not).
func (p *Plugin) Status(args *skel.CmdArgs) error {
	c, err := p.config(args)
	if err != nil {
		return err
	}
	f, err := p.backend(c)
	if err != nil {
		return err
	}
	if err := f.Usable(context.Background()); err != nil {
		return cniplugin.WithCode(cniplugin.CodeNotAvailable, fmt.Errorf("firewall backend %s: %w", c.BackendName, err))
	}
	return nil
}
