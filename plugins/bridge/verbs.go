package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/crashpoint"
	"github.com/plumbnet/plumb/internal/fw"
	"github.com/plumbnet/plumb/internal/link"
	"github.com/plumbnet/plumb/internal/netns"
	"github.com/plumbnet/plumb/internal/reaper"
)

// masqBackends are tried on teardown: a backend switch between ADD and DEL
// must still clean up.
var masqBackends = []string{"nftables", "iptables"}

func hostNS() (*link.NS, error) {
	hns, err := netns.Current()
	if err != nil {
		return nil, err
	}
	defer hns.Close()
	return link.Open(hns, "host")
}

// Del makes the attachment inert and removes it: the host veth is marked
// and set down (the bridge port stops forwarding) while the masquerade and
// spoof rules go, then the address is released. What is left is the
// kernel's slow part, deleting the veth pair and releasing the netfilter
// sockets (each waits for RCU grace periods, 30 ms together here): a
// detached reaper does it after DEL has answered (see internal/reaper).
// DEL keeps going past failures and treats anything already gone as done.
func (p *Plugin) Del(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	ctx := context.Background()
	var errs []error
	host, err := hostNS()
	if err != nil {
		return err
	}
	defer host.Close()
	vethName := hostVethName(args.ContainerID, args.IfName)
	// Removing an empty bridge needs the veth gone first; without a reaper
	// (DEL called in process, by a test) it is deleted here too.
	syncDelete := c.RemoveBridgeWhenEmpty || !reaper.Holding()
	vethDone := make(chan error, 1)
	go func() {
		if syncDelete {
			vethDone <- host.Delete(vethName)
			return
		}
		vethDone <- retire(host, vethName)
	}()
	if c.MacSpoofChk {
		if err := p.Spoof().DelSpoof(ctx, vethName); err != nil {
			errs = append(errs, fmt.Errorf("remove spoof check of %s: %w", vethName, err))
		}
		crashpoint.Here("bridge.del.spoof")
	}
	if c.IPMasq {
		var addrs []net.IP
		if prev, err := cniplugin.PrevResult(&c.PluginConf); err == nil && prev != nil {
			for _, ipc := range prev.IPs {
				addrs = append(addrs, ipc.Address.IP)
			}
		}
		for _, b := range p.teardownBackends(c) {
			m, err := p.Masq(b)
			if err != nil {
				if b == backendOf(c) {
					errs = append(errs, fmt.Errorf("masquerade backend %s: %w", b, err))
				}
				continue
			}
			if err := m.DelMasq(ctx, owner(c, args), addrs); err != nil {
				errs = append(errs, fmt.Errorf("remove masquerade (%s) of %s: %w", b, args.ContainerID, err))
			}
			crashpoint.Here("bridge.del.masq." + b)
		}
	}
	if err := <-vethDone; err != nil {
		errs = append(errs, err)
	}
	crashpoint.Here("bridge.del.veth")
	if c.RemoveBridgeWhenEmpty {
		if err := removeEmptyBridge(host, c.Bridge); err != nil {
			errs = append(errs, err)
		}
	}
	// The address is released only once the veth is down and the rules
	// are gone, so it is never handed out while they still act on it.
	if err := p.IPAM.Del(ctx, c.IPAM.Type, args.StdinData); err != nil {
		errs = append(errs, fmt.Errorf("IPAM %s DEL: %w", c.IPAM.Type, err))
	}
	return errors.Join(errs...)
}

// goneAlias marks a host veth whose DEL has run: down, out of use, to be
// deleted by a reaper, and by anyone who finds it (ADD, GC, a retried DEL)
// should the reaper not get to it.
func goneAlias(vethName string) string { return goneAliasPrefix + vethName }

const goneAliasPrefix = "plumb-gone/"

// retire marks the host veth gone, sets it down and leaves its deletion
// to the DEL's reaper (see reaper.Finish). A veth already marked (a retried
// DEL, whose first reaper may have died) is deleted at once.
func retire(host *link.NS, vethName string) error {
	l, err := host.Get(vethName)
	if err != nil || l == nil {
		return err
	}
	gone := goneAlias(vethName)
	if l.Attrs().Alias == gone {
		return host.Delete(vethName)
	}
	if err := host.H.LinkSetAlias(l, gone); err != nil {
		return fmt.Errorf("mark %s for deletion: %w", vethName, err)
	}
	if err := host.H.LinkSetDown(l); err != nil && !link.IsNotFound(err) {
		return fmt.Errorf("set %s down: %w", vethName, err)
	}
	if !reaper.DeleteLinkLater(l.Attrs().Index, gone) {
		return host.Delete(vethName)
	}
	return nil
}

// removeEmptyBridge deletes the bridge if plumb created it and no port is
// left, under the lock ADD holds while it attaches.
func removeEmptyBridge(host *link.NS, name string) error {
	unlock, err := lockBridge(name)
	if err != nil {
		return err
	}
	defer unlock()
	br, err := host.Get(name)
	if err != nil || br == nil || br.Attrs().Alias != bridgeAlias {
		return err
	}
	links, err := host.H.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list ports of bridge %s: %w", name, err)
	}
	for _, l := range links {
		if l.Attrs().MasterIndex == br.Attrs().Index {
			return nil
		}
	}
	return host.Delete(name)
}

func backendOf(c *Config) string {
	if c.IPMasqBackend == "" {
		return "nftables"
	}
	return c.IPMasqBackend
}

// teardownBackends is every masquerade backend, the configured one last.
func (p *Plugin) teardownBackends(c *Config) []string {
	var out []string
	for _, b := range masqBackends {
		if b != backendOf(c) {
			out = append(out, b)
		}
	}
	return append(out, backendOf(c))
}

// Check compares the container interface, its addresses and routes, bridge
// membership and masquerade with prevResult and the config.
func (p *Plugin) Check(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	ctx := context.Background()
	prev, err := cniplugin.PrevResult(&c.PluginConf)
	if err != nil {
		return err
	}
	if prev == nil {
		return cniplugin.InvalidConfig("CHECK needs a prevResult")
	}
	if err := p.IPAM.Check(ctx, c.IPAM.Type, args.StdinData); err != nil {
		return fmt.Errorf("IPAM %s CHECK: %w", c.IPAM.Type, err)
	}
	host, err := hostNS()
	if err != nil {
		return err
	}
	defer host.Close()
	br, err := host.Get(c.Bridge)
	if err != nil {
		return err
	}
	if br == nil {
		return fmt.Errorf("bridge %s is missing", c.Bridge)
	}
	vethName := hostVethName(args.ContainerID, args.IfName)
	veth, err := host.Get(vethName)
	if err != nil {
		return err
	}
	if veth == nil {
		return fmt.Errorf("host veth %s of %s/%s is missing", vethName, args.ContainerID, args.IfName)
	}
	if veth.Attrs().MasterIndex != br.Attrs().Index {
		return fmt.Errorf("host veth %s is not attached to bridge %s", vethName, c.Bridge)
	}
	if err := checkContainer(args, prev); err != nil {
		return err
	}
	if c.MacSpoofChk {
		mac, _ := net.ParseMAC(prevMAC(prev, args.IfName))
		if err := p.Spoof().CheckSpoof(ctx, spoofRule(vethName, mac, prev)); err != nil {
			return fmt.Errorf("spoof check of %s: %w", vethName, err)
		}
	}
	if c.IPMasq {
		m, err := p.Masq(c.IPMasqBackend)
		if err != nil {
			return fmt.Errorf("masquerade backend %q: %w", c.IPMasqBackend, err)
		}
		rule := fw.MasqRule{Owner: owner(c, args)}
		for _, ipc := range prev.IPs {
			rule.Addrs = append(rule.Addrs, ipc.Address)
		}
		if err := m.CheckMasq(ctx, rule); err != nil {
			return fmt.Errorf("masquerade of %s: %w", args.ContainerID, err)
		}
	}
	return nil
}

// prevMAC is the MAC prevResult reports for the container interface.
func prevMAC(prev *current.Result, ifname string) string {
	for _, i := range prev.Interfaces {
		if i.Name == ifname && i.Sandbox != "" {
			return i.Mac
		}
	}
	return ""
}

func checkContainer(args *skel.CmdArgs, prev *current.Result) error {
	cns, err := netns.Open(args.Netns)
	if err != nil {
		return cniplugin.WithCode(cniplugin.CodeInvalidNetNS, err)
	}
	defer cns.Close()
	cont, err := link.Open(cns, args.Netns)
	if err != nil {
		return err
	}
	defer cont.Close()
	l, err := cont.Get(args.IfName)
	if err != nil {
		return err
	}
	if l == nil {
		return fmt.Errorf("interface %s is missing in %s", args.IfName, args.Netns)
	}
	addrs, err := cont.H.AddrList(l, netlink.FAMILY_ALL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list addresses of %s in %s: %w", args.IfName, args.Netns, err)
	}
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && (*ipc.Interface < 0 || *ipc.Interface >= len(prev.Interfaces) || prev.Interfaces[*ipc.Interface].Name != args.IfName) {
			continue
		}
		found := false
		for _, a := range addrs {
			if a.IPNet.String() == ipc.Address.String() {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("address %s is missing on %s in %s", ipc.Address.String(), args.IfName, args.Netns)
		}
	}
	routes, err := cont.H.RouteList(l, netlink.FAMILY_ALL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return fmt.Errorf("list routes of %s in %s: %w", args.IfName, args.Netns, err)
	}
	for _, r := range prev.Routes {
		found := false
		for _, have := range routes {
			dst := "<nil>"
			if have.Dst != nil {
				dst = have.Dst.String()
			}
			if dst == r.Dst.String() || (have.Dst == nil && ones(r.Dst) == 0) {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("route to %s is missing on %s in %s", r.Dst.String(), args.IfName, args.Netns)
		}
	}
	return nil
}

func ones(n net.IPNet) int {
	o, _ := n.Mask.Size()
	return o
}

// GC delegates to IPAM, then removes host veths and masquerade owned by
// attachments of this network that the runtime no longer lists.
func (p *Plugin) GC(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	keep, err := cniplugin.ValidAttachments(args.StdinData)
	if err != nil {
		return err
	}
	ctx := context.Background()
	var errs []error
	host, err := hostNS()
	if err != nil {
		return err
	}
	defer host.Close()
	links, err := host.H.LinkList()
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		errs = append(errs, fmt.Errorf("list links: %w", err))
	}
	prefix := aliasPrefix + c.Name + "/"
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Alias, goneAliasPrefix) { // its reaper did not finish
			if err := host.Delete(l.Attrs().Name); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		rest, ok := strings.CutPrefix(l.Attrs().Alias, prefix)
		if !ok {
			continue
		}
		id, ifname, _ := strings.Cut(rest, "/")
		if keep[cniplugin.Attachment{ContainerID: id, IfName: ifname}] {
			continue
		}
		if err := host.Delete(l.Attrs().Name); err != nil {
			errs = append(errs, err)
		}
	}
	owners := make([]fw.Owner, 0, len(keep))
	for a := range keep {
		owners = append(owners, fw.Owner{Network: c.Name, ContainerID: a.ContainerID, IfName: a.IfName})
	}
	if c.MacSpoofChk {
		alive := func(port string) bool { l, err := host.Get(port); return err != nil || l != nil }
		if err := p.Spoof().GCSpoof(ctx, alive); err != nil {
			errs = append(errs, fmt.Errorf("GC spoof checks: %w", err))
		}
	}
	for _, b := range p.teardownBackends(c) {
		m, err := p.Masq(b)
		if err != nil {
			continue // a backend this host cannot use holds nothing of ours
		}
		if err := m.GCMasq(ctx, c.Name, owners); err != nil {
			errs = append(errs, fmt.Errorf("GC masquerade (%s): %w", b, err))
		}
	}
	if err := p.IPAM.GC(ctx, c.IPAM.Type, args.StdinData); err != nil {
		errs = append(errs, fmt.Errorf("IPAM %s GC: %w", c.IPAM.Type, err))
	}
	return errors.Join(errs...)
}

// Status is the IPAM plugin's status: the bridge itself needs nothing that
// can run out.
func (p *Plugin) Status(args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	if err := p.IPAM.Status(context.Background(), c.IPAM.Type, args.StdinData); err != nil {
		return fmt.Errorf("IPAM %s STATUS: %w", c.IPAM.Type, err)
	}
	return nil
}
