package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/crashpoint"
	"github.com/plumbnet/plumb/internal/flock"
	"github.com/plumbnet/plumb/internal/fw"
	"github.com/plumbnet/plumb/internal/link"
	"github.com/plumbnet/plumb/internal/netns"
)

// Plugin implements the bridge CNI plugin.
type Plugin struct {
	IPAM IPAM
	// Masq gives the masquerade backend by name ("" is the default, nftables).
	Masq func(backend string) (fw.Masquerader, error)
	// Spoof gives the anti-spoofing backend used with macspoofchk.
	Spoof func() fw.SpoofGuard
}

// aliasPrefix tags every host veth plumb creates with its owner, so GC can
// find veths of attachments the runtime forgot.
const aliasPrefix = "plumb/"

// bridgeAlias marks a bridge plumb created (and so may remove).
const bridgeAlias = "plumb-created"

// lockBridge serialises creating or removing a bridge with attaching to it.
func lockBridge(name string) (func(), error) {
	release, err := flock.Acquire(context.Background(), "/run/plumb/bridge-"+name+".lock")
	if err != nil {
		return nil, fmt.Errorf("lock bridge %s: %w", name, err)
	}
	return release, nil
}

// hostVethName is stable per attachment so DEL finds the veth without the
// container namespace and a retried ADD replaces its own leftover.
func hostVethName(containerID, ifname string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + ifname))
	return "veth" + hex.EncodeToString(sum[:])[:11]
}

func vethAlias(network, containerID, ifname string) string {
	return aliasPrefix + network + "/" + containerID + "/" + ifname
}

// undo collects the reverse of each ADD step, run newest first on failure.
type undo []func()

func (u *undo) push(f func()) { *u = append(*u, f) }
func (u undo) run() {
	for i := len(u) - 1; i >= 0; i-- {
		u[i]()
	}
}

// Add connects the container to the bridge, all or nothing. A re-ADD of an
// attachment that is already in place (after someone flushed the firewall,
// say) repairs it instead: see ownVeth.
func (p *Plugin) Add(args *skel.CmdArgs) (types.Result, error) {
	c, err := parseConfig(args.StdinData, args.Args)
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	cns, err := netns.Open(args.Netns)
	if err != nil {
		return nil, cniplugin.WithCode(cniplugin.CodeInvalidNetNS, err)
	}
	defer cns.Close()
	cont, err := link.Open(cns, args.Netns)
	if err != nil {
		return nil, err
	}
	defer cont.Close()
	hns, err := netns.Current()
	if err != nil {
		return nil, err
	}
	defer hns.Close()
	host, err := link.Open(hns, "host")
	if err != nil {
		return nil, err
	}
	defer host.Close()
	existing, err := ownVeth(host, cont, cns, c, args)
	if err != nil {
		return nil, err
	}
	repair := existing != nil

	// The address and its masquerade do not depend on the veth, so they are
	// made while the kernel creates it: IPAM takes about a millisecond and
	// an iptables masquerade two more.
	addr := p.startAddressing(ctx, c, args)
	var u undo
	ok := false
	var announcing sync.WaitGroup
	defer func() {
		announcing.Wait()
		addr.wait()
		// A repair only re-applies what the attachment already had; undoing
		// it would take down a container that was working.
		if !ok && !repair {
			u.run()
			addr.undo.run() // the address last: never handed out while in use
		}
	}()

	// Creating the bridge and attaching the veth happen under the bridge's
	// lock, so a DEL removing an empty bridge never races an ADD into it.
	unlockBridge, err := lockBridge(c.Bridge)
	if err != nil {
		return nil, err
	}
	defer func() { unlockBridge() }()
	br, veth, err := attachVeth(host, cns, c, args, existing)
	if veth != nil && !repair {
		u.push(func() { host.Delete(veth.Attrs().Name) })
	}
	if err != nil {
		return nil, err
	}
	unlockBridge()
	unlockBridge = func() {}
	if err := p.setupPort(host, veth, c); err != nil {
		return nil, err
	}
	crashpoint.Here("bridge.add.port")

	ipamRes, err := addr.address()
	if err != nil {
		return nil, err
	}
	res := buildResult(c, args, br, veth, ipamRes)
	contLink, err := cont.Get(args.IfName)
	if err != nil || contLink == nil {
		return nil, fmt.Errorf("find %s in %s after creating it: %w", args.IfName, args.Netns, err)
	}
	res.Interfaces[2].Mac = contLink.Attrs().HardwareAddr.String()
	if err := configureContainer(cns, cont, contLink, c, res); err != nil {
		return nil, err
	}
	// The announcement is flooded to every port of the bridge, which the
	// kernel does in the sender's system call (milliseconds with a thousand
	// ports): it goes out while the rest is set up.
	if !c.DisableContainerInterface {
		announcing.Go(func() { announce(host, veth, cont, contLink, res) })
	}
	crashpoint.Here("bridge.add.container")
	if c.IsGateway {
		if err := setupGateway(host, br, c, res); err != nil {
			return nil, err
		}
		crashpoint.Here("bridge.add.gateway")
	}
	// A new bridge takes its first port's MAC: report the one it has now.
	if l, err := host.Get(c.Bridge); err == nil && l != nil {
		res.Interfaces[0].Mac = l.Attrs().HardwareAddr.String()
	}
	if c.MacSpoofChk {
		g := p.Spoof()
		vethName := veth.Attrs().Name
		if err := g.AddSpoof(ctx, spoofRule(vethName, contLink.Attrs().HardwareAddr, res)); err != nil {
			return nil, fmt.Errorf("spoof check on %s: %w", vethName, err)
		}
		u.push(func() { g.DelSpoof(ctx, vethName) })
		crashpoint.Here("bridge.add.spoof")
	}
	if err := addr.wait(); err != nil {
		return nil, err
	}
	ok = true
	return res, nil
}

// attachVeth makes sure the bridge exists and that the attachment's veth
// is on it: existing (a repair) is put back, otherwise a new pair is made,
// the container end named args.IfName in cns. The caller holds the
// bridge's lock. A veth it made is returned even with an error, for undo.
func attachVeth(host *link.NS, cns *netns.NS, c *Config, args *skel.CmdArgs, existing netlink.Link) (*netlink.Bridge, netlink.Link, error) {
	br, created, err := host.EnsureBridge(link.BridgeSpec{
		Name: c.Bridge, MTU: c.MTU, Promisc: c.PromiscMode,
		VlanFiltering: c.Vlan != 0 || len(c.Vlans) > 0,
	})
	if err != nil {
		return nil, nil, err
	}
	if created {
		// Marks the bridge as plumb's, for removeBridgeWhenEmpty.
		if err := host.H.LinkSetAlias(br, bridgeAlias); err != nil {
			return nil, nil, fmt.Errorf("tag bridge %s: %w", c.Bridge, err)
		}
	}
	crashpoint.Here("bridge.add.bridge")
	if existing != nil {
		return br, existing, reattach(host, existing, br)
	}
	vethName := hostVethName(args.ContainerID, args.IfName)
	if err := host.Delete(vethName); err != nil { // a crashed earlier ADD of this attachment
		return nil, nil, err
	}
	veth, err := host.AddVeth(link.VethSpec{
		HostName: vethName, Alias: vethAlias(c.Name, args.ContainerID, args.IfName),
		MasterIndex: br.Index, MTU: c.MTU,
		PeerName: args.IfName, PeerNS: cns, PeerMAC: c.MAC,
	})
	if err == nil {
		crashpoint.Here("bridge.add.veth")
	}
	return br, veth, err
}

// addressing is IPAM ADD followed by the masquerade, run in a goroutine
// beside the link work. ipamDone closes when the address (or its error) is
// known, done when both are; undo holds their reversal.
type addressing struct {
	ipamDone, done chan struct{}
	res            *current.Result
	ipamErr, err   error
	undo           undo
}

func (p *Plugin) startAddressing(ctx context.Context, c *Config, args *skel.CmdArgs) *addressing {
	a := &addressing{ipamDone: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(a.done)
		var m fw.Masquerader
		var merr error
		if c.IPMasq {
			if m, merr = p.Masq(c.IPMasqBackend); merr == nil {
				// An iptables masquerade starts its iptables-restore now,
				// to take the batch once IPAM has answered.
				if w, ok := m.(fw.Warmer); ok {
					w.Warm(ctx)
					defer w.Cool()
				}
			}
		}
		a.res, a.ipamErr = p.ipamAdd(ctx, c, args, &a.undo)
		close(a.ipamDone)
		switch {
		case a.ipamErr != nil:
			a.err = a.ipamErr
		case merr != nil:
			a.err = fmt.Errorf("masquerade backend %q: %w", c.IPMasqBackend, merr)
		case m != nil:
			a.err = addMasq(ctx, m, c, args, a.res, &a.undo)
		}
	}()
	return a
}

// address waits for the IPAM result.
func (a *addressing) address() (*current.Result, error) {
	<-a.ipamDone
	return a.res, a.ipamErr
}

// wait waits for the masquerade too.
func (a *addressing) wait() error {
	<-a.done
	return a.err
}

// ipamAdd asks the IPAM plugin for the attachment's addresses. On repair
// it hands the owner back its own.
func (p *Plugin) ipamAdd(ctx context.Context, c *Config, args *skel.CmdArgs, u *undo) (*current.Result, error) {
	r, err := p.IPAM.Add(ctx, c.IPAM.Type, args.StdinData)
	if err != nil {
		return nil, fmt.Errorf("IPAM %s ADD: %w", c.IPAM.Type, err)
	}
	u.push(func() { p.IPAM.Del(ctx, c.IPAM.Type, args.StdinData) })
	crashpoint.Here("bridge.add.ipam")
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("convert IPAM %s result: %w", c.IPAM.Type, err)
	}
	if len(res.IPs) == 0 {
		return nil, fmt.Errorf("IPAM %s returned no address", c.IPAM.Type)
	}
	return res, nil
}

// addMasq masquerades traffic from the attachment's addresses.
func addMasq(ctx context.Context, m fw.Masquerader, c *Config, args *skel.CmdArgs, ipamRes *current.Result, u *undo) error {
	rule := fw.MasqRule{Owner: owner(c, args)}
	var hint []net.IP
	for _, ipc := range ipamRes.IPs {
		rule.Addrs = append(rule.Addrs, net.IPNet{IP: ipc.Address.IP, Mask: ipc.Address.Mask})
		hint = append(hint, ipc.Address.IP)
	}
	if err := m.AddMasq(ctx, rule); err != nil {
		return fmt.Errorf("masquerade %s: %w", args.ContainerID, err)
	}
	u.push(func() { m.DelMasq(ctx, rule.Owner, hint) })
	crashpoint.Here("bridge.add.masq")
	return nil
}

// ownVeth decides whether an ADD finds its attachment already in place. It
// returns nil when the container has no args.IfName; the host veth of this
// attachment when args.IfName is that veth's peer (the re-ADD repairs); and
// an error when args.IfName is anything else, which ADD must not touch.
func ownVeth(host, cont *link.NS, cns *netns.NS, c *Config, args *skel.CmdArgs) (netlink.Link, error) {
	l, err := cont.Get(args.IfName)
	if err != nil || l == nil {
		return nil, err
	}
	taken := func(why string) error {
		return cniplugin.Errorf(cniplugin.CodeInvalidEnv, "interface %s already exists in %s (%s)", args.IfName, args.Netns, why)
	}
	vethName := hostVethName(args.ContainerID, args.IfName)
	veth, err := host.Get(vethName)
	if err != nil {
		return nil, err
	}
	if veth != nil && veth.Attrs().Alias == goneAlias(vethName) {
		return nil, nil // an earlier DEL's, waiting for its reaper: ADD deletes it
	}
	if veth == nil && l.Type() == "veth" {
		// The reaper of an earlier DEL may be deleting the pair right now:
		// the host end is gone, and the container end follows within the
		// kernel's grace periods. Its peer's index then names no link here.
		if _, err := host.H.LinkByIndex(l.Attrs().ParentIndex); link.IsNotFound(err) && cont.WaitGone(args.IfName, 2*time.Second) {
			return nil, nil
		}
	}
	if veth == nil || veth.Type() != "veth" || l.Type() != "veth" || veth.Attrs().Alias != vethAlias(c.Name, args.ContainerID, args.IfName) {
		return nil, taken("not the peer of this attachment's host veth " + vethName)
	}
	// Each end of a veth names the other's ifindex (IFLA_LINK), and the host
	// end names the namespace its peer is in: together, exactly this pair.
	if l.Attrs().ParentIndex != veth.Attrs().Index || veth.Attrs().ParentIndex != l.Attrs().Index {
		return nil, taken("not the peer of this attachment's host veth " + vethName)
	}
	if id, err := host.H.GetNetNsIdByFd(cns.Fd()); err == nil && id >= 0 && veth.Attrs().NetNsID >= 0 && veth.Attrs().NetNsID != id {
		return nil, taken("the peer of " + vethName + " is in another namespace")
	}
	if m := veth.Attrs().MasterIndex; m != 0 {
		br, err := host.H.LinkByIndex(m)
		if err != nil {
			return nil, fmt.Errorf("find the master of host veth %s: %w", vethName, err)
		}
		if br.Attrs().Name != c.Bridge {
			return nil, taken(fmt.Sprintf("its host veth %s is on %s, not bridge %s", vethName, br.Attrs().Name, c.Bridge))
		}
	}
	if c.MAC != nil && !bytes.Equal(l.Attrs().HardwareAddr, c.MAC) {
		return nil, taken(fmt.Sprintf("it has MAC %s, the config asks for %s", l.Attrs().HardwareAddr, c.MAC))
	}
	return veth, nil
}

// reattach puts a repaired attachment's host veth back on the bridge (one
// deleted and created again has lost its ports) and up.
func reattach(host *link.NS, veth netlink.Link, br *netlink.Bridge) error {
	name := veth.Attrs().Name
	if veth.Attrs().MasterIndex != br.Index {
		if err := host.H.LinkSetMasterByIndex(veth, br.Index); err != nil {
			return fmt.Errorf("attach %s to bridge %s: %w", name, br.Name, err)
		}
	}
	if veth.Attrs().Flags&net.FlagUp == 0 {
		if err := host.H.LinkSetUp(veth); err != nil {
			return fmt.Errorf("set %s up: %w", name, err)
		}
	}
	return nil
}

// spoofRule admits only the container's own MAC and addresses on its port.
func spoofRule(port string, mac net.HardwareAddr, res *current.Result) fw.SpoofRule {
	r := fw.SpoofRule{Port: port, MAC: mac}
	for _, ipc := range res.IPs {
		r.Addrs = append(r.Addrs, ipc.Address.IP)
	}
	return r
}

func owner(c *Config, args *skel.CmdArgs) fw.Owner {
	return fw.Owner{Network: c.Name, ContainerID: args.ContainerID, IfName: args.IfName}
}

// setupPort applies the bridge-port options to the host veth.
func (p *Plugin) setupPort(host *link.NS, veth netlink.Link, c *Config) error {
	name := veth.Attrs().Name
	if c.HairpinMode {
		if err := host.H.LinkSetHairpin(veth, true); err != nil {
			return fmt.Errorf("set hairpin on %s: %w", name, err)
		}
	}
	if c.PortIsolation {
		if err := host.H.LinkSetIsolated(veth, true); err != nil {
			return fmt.Errorf("isolate port %s: %w", name, err)
		}
	}
	if (c.Vlan != 0 || len(c.Vlans) > 0) && !c.PreserveDefaultVlan {
		// A new port holds only the bridge's default VLAN 1.
		if err := host.H.BridgeVlanDel(veth, 1, false, false, false, true); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("remove default vlan from %s: %w", name, err)
		}
	}
	if c.Vlan != 0 {
		if err := host.H.BridgeVlanAdd(veth, uint16(c.Vlan), true, true, false, true); err != nil {
			return fmt.Errorf("tag %s with vlan %d: %w", name, c.Vlan, err)
		}
	}
	for _, v := range c.Vlans {
		if err := host.H.BridgeVlanAdd(veth, uint16(v), false, false, false, true); err != nil {
			return fmt.Errorf("trunk vlan %d on %s: %w", v, name, err)
		}
	}
	if c.Vlan == 0 && len(c.Vlans) > 0 {
		if err := host.H.BridgeVlanAdd(veth, 1, true, true, false, true); err != nil {
			return fmt.Errorf("native vlan 1 on %s: %w", name, err)
		}
	}
	return nil
}

// buildResult lists bridge, host veth and container interface (in that
// order, which runtimes rely on) and indexes the IPs to the container's.
func buildResult(c *Config, args *skel.CmdArgs, br *netlink.Bridge, veth netlink.Link, ipam *current.Result) *current.Result {
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: br.Name, Mac: br.HardwareAddr.String()},
			{Name: veth.Attrs().Name, Mac: veth.Attrs().HardwareAddr.String()},
			{Name: args.IfName, Sandbox: args.Netns},
		},
		Routes: ipam.Routes,
		DNS:    ipam.DNS,
	}
	if !c.DNS.IsEmpty() {
		res.DNS = c.DNS
	}
	for _, ipc := range ipam.IPs {
		ipc := *ipc
		ipc.Interface = current.Int(2)
		if ipc.Gateway == nil && c.IsGateway {
			ipc.Gateway = firstHost(ipc.Address)
		}
		res.IPs = append(res.IPs, &ipc)
	}
	if c.IsDefaultGateway {
		for _, ipc := range res.IPs {
			dst := net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
			if ipc.Address.IP.To4() == nil {
				dst = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			}
			if !hasRoute(res.Routes, dst) {
				res.Routes = append(res.Routes, &types.Route{Dst: dst, GW: ipc.Gateway})
			}
		}
	}
	return res
}

func hasRoute(routes []*types.Route, dst net.IPNet) bool {
	for _, r := range routes {
		if r.Dst.String() == dst.String() {
			return true
		}
	}
	return false
}

// firstHost is the subnet's first address, the conventional gateway.
func firstHost(a net.IPNet) net.IP {
	ip := a.IP.Mask(a.Mask)
	out := make(net.IP, len(ip))
	copy(out, ip)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			break
		}
	}
	return out
}

// configureContainer addresses, raises and routes the container interface
// through a handle bound to its namespace; sysctls need one namespace entry.
func configureContainer(cns *netns.NS, cont *link.NS, l netlink.Link, c *Config, res *current.Result) error {
	name := l.Attrs().Name
	hasV6 := false
	for _, ipc := range res.IPs {
		if ipc.Address.IP.To4() == nil {
			hasV6 = true
		}
	}
	// arp_notify: the kernel announces the address again whenever the MAC
	// changes later. Best effort, through netlink: see link.SetIPv4Conf.
	_ = cont.SetIPv4Conf(l, link.IPv4ConfARPNotify, 1)
	if hasV6 {
		// IPv6 settings cannot be set through netlink.
		if err := cns.Do(func() error {
			dad := "0"
			if c.EnableDad {
				dad = "1"
			}
			writeSysctl("net/ipv6/conf/"+name+"/accept_dad", dad)
			return nil
		}); err != nil {
			return fmt.Errorf("set sysctls of %s in %s: %w", name, cns.Path(), err)
		}
	}
	// Up first: the bridge enables the host end's port only once the kernel
	// has seen the carrier, which then happens while addresses are set.
	if !c.DisableContainerInterface {
		if err := cont.H.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up in %s: %w", name, cns.Path(), err)
		}
	}
	for _, ipc := range res.IPs {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: ipc.Address.IP, Mask: ipc.Address.Mask}}
		if ipc.Address.IP.To4() == nil && !c.EnableDad {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := cont.H.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) { // present on repair
			return fmt.Errorf("add %s to %s in %s: %w", ipc.Address.String(), name, cns.Path(), err)
		}
	}
	if c.DisableContainerInterface {
		return nil
	}
	for _, r := range res.Routes {
		gw := r.GW
		if gw == nil {
			gw = gatewayFor(res, r.Dst.IP)
		}
		route := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: &net.IPNet{IP: r.Dst.IP, Mask: r.Dst.Mask}, Gw: gw, MTU: r.MTU, AdvMSS: r.AdvMSS, Priority: r.Priority}
		if r.Table != nil {
			route.Table = *r.Table
		}
		if r.Scope != nil {
			route.Scope = netlink.Scope(*r.Scope)
		}
		if err := cont.H.RouteAdd(route); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add route %s via %v on %s in %s: %w", r.Dst.String(), gw, name, cns.Path(), err)
		}
	}
	return nil
}

// announce sends an ARP request from the container's IPv4 address (towards
// its gateway or, without one, the subnet's first address), so peers
// replace a stale entry for a reused address at once. The bridge forwards
// from the port only once the kernel has processed the veth's carrier
// (asynchronously, in linkwatch), so it first waits, briefly, for the host
// end to be operationally up: under load the request was otherwise dropped
// at a port still disabled. Best effort.
func announce(host *link.NS, veth netlink.Link, cont *link.NS, l netlink.Link, res *current.Result) {
	host.WaitOperUp(veth.Attrs().Name, 500*time.Millisecond)
	for _, ipc := range res.IPs {
		if ipc.Address.IP.To4() == nil {
			continue
		}
		target := ipc.Gateway
		if target == nil {
			target = firstHost(ipc.Address)
		}
		if !target.Equal(ipc.Address.IP) {
			_ = cont.Announce(l, target)
		}
		break
	}
}

// gatewayFor picks the gateway of the same family as dst.
func gatewayFor(res *current.Result, dst net.IP) net.IP {
	v4 := dst.To4() != nil
	for _, ipc := range res.IPs {
		if (ipc.Address.IP.To4() != nil) == v4 && ipc.Gateway != nil {
			return ipc.Gateway
		}
	}
	return nil
}

// setupGateway puts each family's gateway on the bridge and turns on
// forwarding in the host namespace.
func setupGateway(host *link.NS, br *netlink.Bridge, c *Config, res *current.Result) error {
	for _, ipc := range res.IPs {
		if ipc.Gateway == nil {
			continue
		}
		gw := net.IPNet{IP: ipc.Gateway, Mask: ipc.Address.Mask}
		if err := host.EnsureAddr(br, gw, c.ForceAddress); err != nil {
			return fmt.Errorf("gateway on bridge %s: %w", c.Bridge, err)
		}
		// Forwarding is on after the first ADD; netlink tells so without a
		// /proc/sys lookup (see link.SetIPv4Conf).
		fam, key := netlink.FAMILY_V4, "net/ipv4/ip_forward"
		if ipc.Gateway.To4() == nil {
			fam, key = netlink.FAMILY_V6, "net/ipv6/conf/all/forwarding"
		}
		if on, err := host.Forwarding(fam); err == nil && on {
			continue
		}
		if fam == netlink.FAMILY_V6 {
			keepRouterAdvertisements()
		}
		if err := ensureSysctl(key, "1"); err != nil {
			return fmt.Errorf("enable forwarding: %w", err)
		}
	}
	return nil
}

// keepRouterAdvertisements: turning IPv6 forwarding on makes interfaces
// with accept_ra=1 ignore router advertisements, so a host that learns its
// default route from them would lose it when it expires. Before forwarding
// is first turned on, such interfaces get accept_ra=2 (accept even when
// forwarding).
func keepRouterAdvertisements() {
	if v, err := os.ReadFile("/proc/sys/net/ipv6/conf/all/forwarding"); err != nil || strings.TrimSpace(string(v)) == "1" {
		return
	}
	dirs, _ := os.ReadDir("/proc/sys/net/ipv6/conf")
	for _, d := range dirs {
		switch d.Name() {
		case "all", "default", "lo":
			continue
		}
		key := "net/ipv6/conf/" + d.Name() + "/accept_ra"
		if v, err := os.ReadFile("/proc/sys/" + key); err == nil && strings.TrimSpace(string(v)) == "1" {
			writeSysctl(key, "2")
		}
	}
}

// writeSysctl is best effort: a missing key (IPv6 disabled) is not fatal.
func writeSysctl(key, value string) {
	_ = os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
}

// ensureSysctl writes only when the value differs.
func ensureSysctl(key, value string) error {
	path := "/proc/sys/" + key
	cur, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
