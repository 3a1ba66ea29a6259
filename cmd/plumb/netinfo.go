package main

import (
	"encoding/json"
	"fmt"
	"net"

	"github.com/containernetworking/cni/libcni"
)

// netInfo is what plumb reads from a network's conflist: its bridges,
// masquerade backends, host-local stores and subnets.
type netInfo struct {
	Name     string
	Bridges  []string
	Masq     []string // ipMasqBackend of bridges with ipMasq
	DataDirs []string // host-local dataDirs
	Subnets  []*net.IPNet
	Gateway  bool
	Firewall bool // the chain has the firewall plugin, which accepts its traffic
}

func readNetInfo(l *libcni.NetworkConfigList) (*netInfo, error) {
	ni := &netInfo{Name: l.Name}
	for _, p := range l.Plugins {
		var c struct {
			Type          string `json:"type"`
			Bridge        string `json:"bridge"`
			IsGateway     bool   `json:"isGateway"`
			IsDefaultGW   bool   `json:"isDefaultGateway"`
			IPMasq        bool   `json:"ipMasq"`
			IPMasqBackend string `json:"ipMasqBackend"`
			IPAM          struct {
				Type    string `json:"type"`
				DataDir string `json:"dataDir"`
				Subnet  string `json:"subnet"`
				Ranges  [][]struct {
					Subnet string `json:"subnet"`
				} `json:"ranges"`
			} `json:"ipam"`
		}
		if err := json.Unmarshal(p.Bytes, &c); err != nil {
			return nil, fmt.Errorf("read plugin %s of network %s: %w", p.Network.Type, l.Name, err)
		}
		if c.Type == "firewall" {
			ni.Firewall = true
		}
		if c.Type == "bridge" {
			if c.Bridge == "" {
				c.Bridge = "cni0"
			}
			ni.Bridges = append(ni.Bridges, c.Bridge)
			ni.Gateway = ni.Gateway || c.IsGateway || c.IsDefaultGW
			if c.IPMasq {
				b := c.IPMasqBackend
				if b == "" {
					b = "nftables"
				}
				ni.Masq = append(ni.Masq, b)
			}
		}
		if c.IPAM.Type == "host-local" {
			d := c.IPAM.DataDir
			if d == "" {
				d = "/var/lib/cni/networks"
			}
			ni.DataDirs = append(ni.DataDirs, d)
			subnets := []string{c.IPAM.Subnet}
			for _, set := range c.IPAM.Ranges {
				for _, r := range set {
					subnets = append(subnets, r.Subnet)
				}
			}
			for _, s := range subnets {
				if _, n, err := net.ParseCIDR(s); err == nil {
					ni.Subnets = append(ni.Subnets, n)
				}
			}
		}
	}
	return ni, nil
}
