package main

import (
	"fmt"
	"net"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/fw"
)

// Building the wanted state from the config and prevResult: data only, no
// I/O.

// containerAddrs picks, per family, the first address prevResult gives the
// container interface ifName: an address whose interface index names an
// interface with that name and a sandbox, or one without an index.
func containerAddrs(prev *current.Result, ifName string) (v4, v6 *net.IPNet) {
	if prev == nil {
		return nil, nil
	}
	for _, ipc := range prev.IPs {
		if i := ipc.Interface; i != nil && *i >= 0 && *i < len(prev.Interfaces) {
			if itf := prev.Interfaces[*i]; itf.Name != ifName || itf.Sandbox == "" {
				continue // the bridge's or the host veth's address
			}
		}
		a := ipc.Address
		switch {
		case a.IP.To4() != nil && v4 == nil:
			v4 = &net.IPNet{IP: a.IP.To4(), Mask: a.Mask}
		case a.IP.To4() == nil && v6 == nil:
			v6 = &net.IPNet{IP: a.IP, Mask: a.Mask}
		}
	}
	return v4, v6
}

// Rule is what one attachment publishes: every mapping for every family
// the container has an address of (a mapping whose hostIP names a family
// the container lacks publishes nothing, as with the reference plugin).
// Identical mappings collapse; one host port mapped twice to different
// container ports is an error. Asking for mappings of a container without
// addresses is an error.
func Rule(c *Config, owner fw.Owner, maps []Mapping, prev *current.Result, ifName string) (fw.PortRule, error) {
	r := fw.PortRule{Owner: owner, SNAT: c.SNAT, MasqAll: c.MasqAll, MarkBit: c.MarkBit,
		ExternalSetMarkChain: c.SetMarkChain, ConditionsV4: c.ConditionsV4, ConditionsV6: c.ConditionsV6}
	if len(maps) == 0 {
		return r, nil
	}
	v4, v6 := containerAddrs(prev, ifName)
	if v4 == nil && v6 == nil {
		return r, cniplugin.InvalidConfig("portMappings asked for, but prevResult has no address of container interface %s", ifName)
	}
	type key struct {
		v6       bool
		host     string
		proto    string
		hostPort uint16
	}
	seen := map[key]uint16{}
	for _, ctr := range []*net.IPNet{v4, v6} {
		if ctr == nil {
			continue
		}
		r.Addrs = append(r.Addrs, *ctr)
		isV6 := ctr.IP.To4() == nil
		for _, m := range maps {
			host := m.HostIP
			if host != nil && (host.To4() == nil) != isV6 {
				continue // another family's address
			}
			if host != nil && host.IsUnspecified() {
				host = nil
			}
			k := key{isV6, string(host.To16()), m.Protocol, m.HostPort}
			if port, ok := seen[k]; ok {
				if port != m.ContainerPort {
					return r, cniplugin.InvalidConfig("%s is mapped to container port %d and to %d", describe(m, isV6), port, m.ContainerPort)
				}
				continue
			}
			seen[k] = m.ContainerPort
			if host != nil && host.To4() != nil {
				host = host.To4()
			}
			r.Mappings = append(r.Mappings, fw.PortMapping{Protocol: m.Protocol, HostIP: host, HostPort: m.HostPort,
				ContainerIP: ctr.IP, ContainerPort: m.ContainerPort})
		}
	}
	return r, nil
}

// describe names a host port in messages: "tcp port 8080 (IPv4)",
// "tcp 127.0.0.1:8080".
func describe(m Mapping, v6 bool) string {
	if m.HostIP == nil || m.HostIP.IsUnspecified() {
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		return fmt.Sprintf("%s port %d (%s)", m.Protocol, m.HostPort, fam)
	}
	return fmt.Sprintf("%s %s", m.Protocol, net.JoinHostPort(m.HostIP.String(), fmt.Sprint(m.HostPort)))
}

// localnetIP is the container address whose route needs route_localnet:
// the IPv4 one, when the rule masquerades and publishes an IPv4 port on
// 127.0.0.1 (on every address, or on a loopback one). A host process
// reaching 127.0.0.1:hostPort sends from 127.0.0.1 across the bridge, which
// the kernel allows only where route_localnet is on. nil when none is
// needed.
func localnetIP(r fw.PortRule) net.IP {
	if !r.SNAT {
		return nil
	}
	for _, m := range r.Mappings {
		if m.ContainerIP.To4() != nil && (m.HostIP == nil || m.HostIP.IsLoopback()) {
			return m.ContainerIP
		}
	}
	return nil
}
