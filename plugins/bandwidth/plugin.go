package main

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/link"
	"github.com/plumbnet/plumb/internal/netns"
)

// Plugin implements the bandwidth CNI plugin.
type Plugin struct {
	// Ticks is the kernel's packet-scheduler ticks per microsecond.
	Ticks func() float64
}

// New returns the bandwidth plugin wired to the real system.
func New() *Plugin { return &Plugin{Ticks: netlink.TickInUsec} }

// container opens the container namespace for netlink.
func container(path string) (*link.NS, error) {
	cns, err := netns.Open(path)
	if err != nil {
		return nil, err
	}
	defer cns.Close()
	return link.Open(cns, path)
}

func checkIDs(args *skel.CmdArgs) error {
	if e := utils.ValidateContainerID(args.ContainerID); e != nil {
		return cniplugin.Errorf(cniplugin.CodeInvalidEnv, "container ID %q: %s", args.ContainerID, e.Msg)
	}
	if e := utils.ValidateInterfaceName(args.IfName); e != nil {
		return cniplugin.Errorf(cniplugin.CodeInvalidEnv, "interface name %q: %s", args.IfName, e.Msg)
	}
	return nil
}

func requirePrev(c *Config) (*current.Result, error) {
	prev, err := cniplugin.PrevResult(&c.PluginConf)
	if err == nil && prev == nil {
		err = cniplugin.InvalidConfig("bandwidth must follow the plugin that creates the container's veth in a chain: the config has no prevResult")
	}
	return prev, err
}

// Add shapes traffic to the container with a tbf on the host veth and
// traffic from it with a tbf on an ifb that the host veth's ingress
// redirects to. All or nothing.
func (p *Plugin) Add(args *skel.CmdArgs) (types.Result, error) {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return nil, err
	}
	if !c.Shapes() {
		prev, err := cniplugin.PrevResult(&c.PluginConf)
		if err != nil || prev != nil {
			return prev, err
		}
		return &current.Result{CNIVersion: current.ImplementedSpecVersion}, nil
	}
	prev, err := requirePrev(c)
	if err != nil {
		return nil, err
	}
	if err := checkIDs(args); err != nil {
		return nil, err
	}
	cont, err := container(args.Netns)
	if err != nil {
		return nil, cniplugin.WithCode(cniplugin.CodeInvalidNetNS, err)
	}
	defer cont.Close()
	h, err := openHost()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	veth, err := h.hostVeth(cont, args.IfName, prev)
	if err != nil {
		return nil, err
	}
	name := ifbName(args.ContainerID, args.IfName)
	// Leftovers of a crashed ADD of this attachment.
	if err := h.teardown(veth, name); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			h.teardown(veth, name)
		}
	}()

	mtu, ticks := veth.Attrs().MTU, p.Ticks()
	if c.Ingress.On() {
		if err := h.setRootTbf(veth, tbfFor(c.Ingress, mtu, ticks)); err != nil {
			return nil, fmt.Errorf("ingress limit (%s): %w", describe(c.Ingress), err)
		}
	}
	if c.Egress.On() {
		ifb, err := h.createIfb(name, ifbAlias(c.Name, args.ContainerID, args.IfName), mtu)
		if err != nil {
			return nil, err
		}
		if err := h.setRootTbf(ifb, tbfFor(c.Egress, mtu, ticks)); err != nil {
			return nil, fmt.Errorf("egress limit (%s): %w", describe(c.Egress), err)
		}
		if err := h.redirect(veth, ifb); err != nil {
			return nil, err
		}
		if !listed(prev, name) {
			prev.Interfaces = append(prev.Interfaces, &current.Interface{Name: name, Mac: ifb.Attrs().HardwareAddr.String()})
		}
	}
	ok = true
	return prev, nil
}

// parseBase reads only what DEL and GC need, so they clean up even when a
// limit in the config (or in runtimeConfig at DEL time) is invalid.
func parseBase(stdin []byte, args string) (*netConf, error) {
	var nc netConf
	if err := cniplugin.Decode(stdin, &nc); err != nil {
		return nil, err
	}
	if err := cniplugin.ParseArgs(args, &cniplugin.Args{}); err != nil {
		return nil, err
	}
	return &nc, nil
}

// Del removes the attachment's shaping whatever the config says now (a
// runtime need not pass the same runtimeConfig to DEL). It needs neither
// prevResult nor the container namespace: the ifb's name is derived from
// the attachment, and its host veth is found through the container end,
// prevResult, or the redirect to the ifb, whichever is there.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	nc, err := parseBase(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	if err := checkIDs(args); err != nil {
		return err
	}
	h, err := openHost()
	if err != nil {
		return err
	}
	defer h.Close()
	var veth netlink.Link
	if args.Netns != "" {
		if cont, err := container(args.Netns); err == nil {
			veth, _ = h.hostVeth(cont, args.IfName, nil)
			cont.Close()
		}
	}
	if veth == nil {
		if prev, _ := cniplugin.PrevResult(&nc.PluginConf); prev != nil {
			veth = h.listedVeth(prev)
		}
	}
	return errors.Join(
		h.teardown(veth, ifbName(args.ContainerID, args.IfName)),
		h.teardown(veth, refIfbName(nc.Name, args.ContainerID)),
	)
}

// listedVeth is the first veth among prevResult's host interfaces.
func (h host) listedVeth(prev *current.Result) netlink.Link {
	for _, i := range prev.Interfaces {
		if i.Sandbox != "" {
			continue
		}
		if l, err := h.Get(i.Name); err == nil && l != nil {
			if _, ok := l.(*netlink.Veth); ok {
				return l
			}
		}
	}
	return nil
}

// Check compares the qdiscs, the redirect and the ifb with the config.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	prev, err := requirePrev(c)
	if err != nil {
		return err
	}
	if !c.Shapes() {
		return nil
	}
	cont, err := container(args.Netns)
	if err != nil {
		return cniplugin.WithCode(cniplugin.CodeInvalidNetNS, err)
	}
	defer cont.Close()
	h, err := openHost()
	if err != nil {
		return err
	}
	defer h.Close()
	veth, err := h.hostVeth(cont, args.IfName, prev)
	if err != nil {
		return err
	}
	mtu, ticks := veth.Attrs().MTU, p.Ticks()
	if c.Ingress.On() {
		if err := h.checkTbf(veth, tbfFor(c.Ingress, mtu, ticks), "ingress limit"); err != nil {
			return err
		}
	}
	if !c.Egress.On() {
		return nil
	}
	name := ifbName(args.ContainerID, args.IfName)
	ifb, err := h.ifb(name)
	if err != nil {
		return err
	}
	if ifb == nil {
		return fmt.Errorf("egress limit: ifb %s of %s/%s is missing", name, args.ContainerID, args.IfName)
	}
	if err := h.checkTbf(ifb, tbfFor(c.Egress, mtu, ticks), "egress limit"); err != nil {
		return err
	}
	to, _, err := h.redirects(veth, ifb.Attrs().Index)
	if err != nil {
		return err
	}
	for _, f := range to {
		if f.(*netlink.U32).RedirIndex == ifb.Attrs().Index {
			return nil
		}
	}
	return fmt.Errorf("egress limit: %s does not redirect to ifb %s", veth.Attrs().Name, name)
}

// GC removes the ifbs (with the redirects to them) of this network's
// attachments that the runtime no longer lists.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	nc, err := parseBase(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	keep, err := cniplugin.ValidAttachments(args.StdinData)
	if err != nil {
		return err
	}
	h, err := openHost()
	if err != nil {
		return err
	}
	defer h.Close()
	links, err := h.H.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		owner, ok := aliasOwner(l.Attrs().Alias, nc.Name)
		if !ok || l.Type() != "ifb" || keep[owner] {
			continue
		}
		if err := h.teardown(nil, l.Attrs().Name); err != nil {
			errs = append(errs, fmt.Errorf("GC %s/%s: %w", owner.ContainerID, owner.IfName, err))
		}
	}
	return errors.Join(errs...)
}

// Status: the limits parse; shaping needs nothing that can run out.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	_, err := parseConfig(args.StdinData, args.Args)
	return err
}
