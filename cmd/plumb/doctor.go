package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/plumbnet/plumb/internal/fw"
	"github.com/plumbnet/plumb/internal/netns"
)

// finding is one problem doctor found, with the fix it suggests; fix, when
// set, is what --fix runs.
type finding struct {
	check, problem, advice string
	fix                    func() error
}

// doctor runs every check against one network (or the host alone).
type doctor struct {
	e        *env
	ni       *netInfo // nil: host checks only
	list     *libcni.NetworkConfigList
	netArg   string // the NETWORK argument, name or file
	findings []finding
}

func (d *doctor) report(check, problem, advice string, fix func() error) {
	d.findings = append(d.findings, finding{check, problem, advice, fix})
}

func readSysctl(key string) string {
	b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(key, ".", "/"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func writeSysctl(key, v string) func() error {
	return func() error {
		return os.WriteFile("/proc/sys/"+strings.ReplaceAll(key, ".", "/"), []byte(v), 0o644)
	}
}

func (d *doctor) forwarding() {
	if readSysctl("net.ipv4.ip_forward") == "0" {
		d.report("forwarding", "IPv4 forwarding is off: containers cannot reach past the host",
			"sysctl -w net.ipv4.ip_forward=1 (a bridge network with isGateway turns it on at ADD)", writeSysctl("net.ipv4.ip_forward", "1"))
	}
	if d.ni == nil {
		return
	}
	for _, s := range d.ni.Subnets {
		if s.IP.To4() == nil && readSysctl("net.ipv6.conf.all.forwarding") == "0" {
			d.report("forwarding", "IPv6 forwarding is off while network "+d.ni.Name+" has IPv6 ranges",
				"sysctl -w net.ipv6.conf.all.forwarding=1 (keep accept_ra=2 on an uplink that learns its default route from router advertisements)",
				writeSysctl("net.ipv6.conf.all.forwarding", "1"))
			return
		}
	}
}

// forwardPolicy looks for a FORWARD policy of DROP (iptables or an nftables
// forward base chain) that nothing accepts the network's bridges through.
func (d *doctor) forwardPolicy() {
	if d.ni == nil || len(d.ni.Bridges) == 0 || d.ni.Firewall {
		return // the firewall plugin accepts the network's traffic itself
	}
	out, err := exec.Command("iptables", "-w", "-S", "FORWARD").Output()
	if err == nil && strings.Contains(string(out), "-P FORWARD DROP") {
		for _, br := range d.ni.Bridges {
			if !strings.Contains(string(out), "-i "+br) && !strings.Contains(string(out), "-o "+br) {
				b := br
				msg := "the iptables FORWARD policy is DROP (as Docker leaves it) and no rule accepts traffic of bridge " + br
				if readSysctl("net.bridge.bridge-nf-call-iptables") == "1" {
					msg += "; br_netfilter is loaded, so even containers on the same bridge cannot talk"
				}
				d.report("forward-policy", msg,
					"add the firewall plugin to network "+d.ni.Name+", or: iptables -I FORWARD -i "+br+" -j ACCEPT; iptables -I FORWARD -o "+br+" -j ACCEPT",
					func() error {
						for _, dir := range []string{"-i", "-o"} {
							if out, err := exec.Command("iptables", "-w", "-I", "FORWARD", dir, b, "-m", "comment", "--comment", "plumb doctor", "-j", "ACCEPT").CombinedOutput(); err != nil {
								return fmt.Errorf("%v: %s", err, out)
							}
						}
						return nil
					})
			}
		}
	}
	if c, err := nftables.New(); err == nil {
		if chains, err := c.ListChains(); err == nil {
			for _, ch := range chains {
				if ch.Hooknum != nil && *ch.Hooknum == *nftables.ChainHookForward && ch.Policy != nil && *ch.Policy == nftables.ChainPolicyDrop &&
					ch.Table.Family != nftables.TableFamilyIPv4 && ch.Table.Family != nftables.TableFamilyIPv6 { // iptables-nft's tables are covered above
					d.report("forward-policy", fmt.Sprintf("nftables chain %s %s drops forwarded traffic by default", ch.Table.Name, ch.Name),
						"accept the network's bridges in that chain (an accept elsewhere does not override its drop)", nil)
				}
			}
		}
	}
}

// bridges checks rp_filter on the network's bridges.
func (d *doctor) bridges() {
	if d.ni == nil {
		return
	}
	for _, br := range d.ni.Bridges {
		if _, err := netlink.LinkByName(br); err != nil {
			continue // created at the first ADD
		}
		all, dev := readSysctl("net.ipv4.conf.all.rp_filter"), readSysctl("net.ipv4.conf."+br+".rp_filter")
		if all == "1" || (dev == "1" && all != "2") {
			d.report("rp_filter", "strict reverse-path filtering on "+br+" drops replies that come back another way (hairpin, published ports)",
				"sysctl -w net.ipv4.conf."+br+".rp_filter=2 net.ipv4.conf.all.rp_filter=2",
				func() error {
					return errors.Join(writeSysctl("net.ipv4.conf."+br+".rp_filter", "2")(), writeSysctl("net.ipv4.conf.all.rp_filter", "2")())
				})
		}
	}
}

// overlaps finds host routes that overlap the network's subnets but do not
// go through its bridges.
func (d *doctor) overlaps() {
	if d.ni == nil {
		return
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return
	}
	ours := map[int]bool{}
	for _, br := range d.ni.Bridges {
		if l, err := netlink.LinkByName(br); err == nil {
			ours[l.Attrs().Index] = true
		}
	}
	for _, s := range d.ni.Subnets {
		for _, r := range routes {
			if r.Dst == nil || ours[r.LinkIndex] {
				continue
			}
			if ones, _ := r.Dst.Mask.Size(); ones == 0 {
				continue
			}
			if r.Dst.Contains(s.IP) || s.Contains(r.Dst.IP) {
				dev := fmt.Sprint(r.LinkIndex)
				if l, err := netlink.LinkByIndex(r.LinkIndex); err == nil {
					dev = l.Attrs().Name
				}
				d.report("overlap", fmt.Sprintf("subnet %s of network %s overlaps the host route %s dev %s", s, d.ni.Name, r.Dst, dev),
					"give the network a subnet no host route covers", nil)
			}
		}
	}
}

// backends checks that the configured masquerade backends work here.
func (d *doctor) backends() {
	if d.ni == nil {
		return
	}
	for _, b := range d.ni.Masq {
		var err error
		if b == "iptables" {
			_, err = fw.NewIPTMasq()
		} else {
			_, err = fw.NewNFTMasq()
		}
		if err != nil {
			d.report("backend", fmt.Sprintf("network %s masquerades with %s, which this host cannot use: %v", d.ni.Name, b, err),
				"install "+b+" (apt-get install "+b+") or switch ipMasqBackend", nil)
		}
	}
}

// dataDirs checks the host-local stores are writable.
func (d *doctor) dataDirs() {
	if d.ni == nil {
		return
	}
	for _, dir := range d.ni.DataDirs {
		probe := filepath.Join(dir, ".plumb-doctor-probe")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			d.report("data-dir", "host-local data directory "+dir+" cannot be created: "+err.Error(), "make it writable by root", nil)
			continue
		}
		if err := os.WriteFile(probe, nil, 0o600); err != nil {
			d.report("data-dir", "host-local data directory "+dir+" is not writable: "+err.Error(), "make it writable by root (and check the disk is not full or read-only)", nil)
			continue
		}
		os.Remove(probe)
	}
}

// leaks reports state owned by attachments the runtime no longer knows.
func (d *doctor) leaks(ctx context.Context) {
	if d.ni == nil {
		return
	}
	inv, err := d.e.takeInventory(ctx, d.ni)
	if err != nil {
		return
	}
	gc := func() error {
		if code := cmdGC(&env{stdout: d.e.stderr, stderr: d.e.stderr}, []string{"--cni-path", d.e.cniPath, "--netconf-dir", d.e.netDir, "--cache-dir", d.e.cacheDir, d.netArg}); code != 0 {
			return fmt.Errorf("plumb gc %s failed", d.netArg)
		}
		return nil
	}
	for _, o := range inv.leaked() {
		d.report("leak", fmt.Sprintf("attachment %s/%s of network %s is not in the runtime's cache but still holds %d veths, %d addresses, %d rules",
			o.ContainerID, o.IfName, d.ni.Name, len(o.Veths), len(o.Addresses), len(o.Rules)), "plumb gc "+d.ni.Name, gc)
	}
	for _, r := range inv.Unowned {
		d.report("leak", "rule with no known owner: "+r, "plumb gc "+d.ni.Name, gc)
	}
}

// attachments CHECKs each attachment of the network in libcni's cache: a
// firewall flush (firewall-cmd --reload, iptables -F, nft flush ruleset)
// leaves containers running without their rules. The fix re-ADDs the
// attachment with the runtime's own arguments, which the cache keeps and
// the plugins take as a repair, then CHECKs again.
func (d *doctor) attachments(ctx context.Context) {
	if d.list == nil {
		return
	}
	atts, err := d.e.cachedAttachments()
	if err != nil {
		d.report("attachments", err.Error(), "make the libcni cache directory readable (--cache-dir)", nil)
		return
	}
	c := d.e.cni()
	for _, a := range atts {
		if a.Network != d.list.Name {
			continue
		}
		label := a.ContainerID + "/" + a.IfName
		n, err := netns.Open(a.NetNS)
		if err != nil {
			d.report("stale", fmt.Sprintf("attachment %s of network %s: its namespace is gone: %v", label, d.list.Name, err),
				fmt.Sprintf("the runtime should DEL it (plumb del --id %s --ifname %s %s %s)", a.ContainerID, a.IfName, d.netArg, a.NetNS), nil)
			continue
		}
		n.Close()
		// The config the attachment was made with, as CHECK and DEL use it.
		list := d.list
		if l, err := libcni.ConfListFromBytes(a.Config); err == nil && l.Name == d.list.Name {
			list = l
		}
		rt := &libcni.RuntimeConf{ContainerID: a.ContainerID, NetNS: a.NetNS, IfName: a.IfName,
			Args: a.CniArgs, CapabilityArgs: a.CapabilityArgs}
		err = c.CheckNetworkList(ctx, list, rt)
		if err == nil || errors.Is(err, libcni.ErrorCheckNotSupp) {
			continue
		}
		d.report("rules", fmt.Sprintf("rules of container %s (%s) in network %s missing: %s", a.ContainerID, a.IfName, d.list.Name, oneLine(err.Error())),
			"re-ADD "+label+" with its cached arguments (plumb doctor --fix "+d.netArg+")",
			func() error {
				if _, err := c.AddNetworkList(ctx, list, rt); err != nil {
					return fmt.Errorf("re-ADD %s: %w", label, err)
				}
				if err := c.CheckNetworkList(ctx, list, rt); err != nil {
					return fmt.Errorf("CHECK %s after re-ADD: %w", label, err)
				}
				return nil
			})
	}
}

func cmdDoctor(e *env, args []string) int {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	fix := fs.Bool("fix", false, "apply the fixes doctor knows how to make")
	rest, code, ok := e.parse(fs, args, -1, "doctor [flags] [NETWORK]")
	if !ok {
		return code
	}
	if len(rest) > 1 {
		fs.Usage()
		return 2
	}
	ctx := context.Background()
	d := &doctor{e: e}
	if len(rest) == 1 {
		list, err := e.network(rest[0])
		if err != nil {
			return e.fail(err)
		}
		if d.ni, err = readNetInfo(list); err != nil {
			return e.fail(err)
		}
		d.list, d.netArg = list, rest[0]
	}
	d.forwarding()
	d.forwardPolicy()
	d.bridges()
	d.overlaps()
	d.backends()
	d.dataDirs()
	d.leaks(ctx)
	d.attachments(ctx)
	if len(d.findings) == 0 {
		fmt.Fprintln(e.stdout, "doctor: no problems found")
		return 0
	}
	fixed := 0
	done := map[string]bool{}
	for _, f := range d.findings {
		fmt.Fprintf(e.stdout, "[%s] %s\n    fix: %s\n", f.check, f.problem, f.advice)
		if *fix && f.fix != nil && !done[f.advice] {
			done[f.advice] = true
			if err := f.fix(); err != nil {
				fmt.Fprintf(e.stdout, "    could not fix: %s\n", oneLine(err.Error()))
				continue
			}
			fmt.Fprintln(e.stdout, "    fixed")
			fixed++
		} else if *fix && done[f.advice] {
			fixed++
		}
	}
	if *fix && fixed == len(d.findings) {
		return 0
	}
	return 1
}
