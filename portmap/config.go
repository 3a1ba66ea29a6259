package main

import (
	"fmt"
	"net"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/fw"
)

// The backends, by the names the config uses.
const (
	backendNFT = "nftables"
	backendIPT = "iptables"
)

// netConf is the portmap config as users write it: the reference's fields.
type netConf struct {
	types.PluginConf
	Backend              *string   `json:"backend,omitempty"`
	SNAT                 *bool     `json:"snat,omitempty"`
	MasqAll              bool      `json:"masqAll,omitempty"`
	MarkMasqBit          *int      `json:"markMasqBit,omitempty"`
	ExternalSetMarkChain *string   `json:"externalSetMarkChain,omitempty"`
	ConditionsV4         *[]string `json:"conditionsV4,omitempty"`
	ConditionsV6         *[]string `json:"conditionsV6,omitempty"`
	RuntimeConfig        struct {
		PortMappings []portMapEntry `json:"portMappings,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// portMapEntry is one entry of runtimeConfig.portMappings (capability
// "portMappings"), as runtimes send it.
type portMapEntry struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// Config is a validated, defaulted portmap configuration. The port
// mappings are validated separately (Mappings), so that DEL, which needs
// none of them, cleans up even after an ADD refused them.
type Config struct {
	conf    netConf
	Backend string // "nftables" or "iptables"
	// BackendDefaulted: no backend was configured.
	BackendDefaulted bool
	SNAT             bool
	MasqAll          bool
	MarkBit          int
	SetMarkChain     string
	ConditionsV4     []string
	ConditionsV6     []string
}

// Mapping is one validated port mapping request, before it is matched to
// the container's addresses.
type Mapping struct {
	Protocol string
	// HostIP nil: every host address of every family the container has;
	// 0.0.0.0 or :: : every host address of that family.
	HostIP        net.IP
	HostPort      uint16
	ContainerPort uint16
}

// parseConfig validates the config and CNI_ARGS before any side effect.
func parseConfig(stdin []byte, cniArgs string) (*Config, error) {
	c := &Config{}
	if err := cniplugin.Decode(stdin, &c.conf); err != nil {
		return nil, err
	}
	if err := cniplugin.ParseArgs(cniArgs, &cniplugin.Args{}); err != nil {
		return nil, err
	}
	n := c.conf
	c.SNAT = n.SNAT == nil || *n.SNAT
	c.MasqAll = n.MasqAll
	c.MarkBit = fw.DefaultMarkMasqBit
	if n.MarkMasqBit != nil && n.ExternalSetMarkChain != nil {
		return nil, cniplugin.InvalidConfig("markMasqBit and externalSetMarkChain cannot both be set")
	}
	if n.MarkMasqBit != nil {
		c.MarkBit = *n.MarkMasqBit
		if c.MarkBit < 0 || c.MarkBit > 31 {
			return nil, cniplugin.InvalidConfig("markMasqBit %d is not within 0..31", c.MarkBit)
		}
	}
	if n.ExternalSetMarkChain != nil {
		c.SetMarkChain = *n.ExternalSetMarkChain
		if !validChain(c.SetMarkChain) {
			return nil, cniplugin.InvalidConfig("externalSetMarkChain %q is not an iptables chain name", c.SetMarkChain)
		}
	}
	c.ConditionsV4, c.ConditionsV6 = conditions(n.ConditionsV4), conditions(n.ConditionsV6)
	// iptables-only options: with them the default backend is iptables,
	// as the reference decides.
	var iptOnly []string
	if c.SetMarkChain != "" {
		iptOnly = append(iptOnly, "externalSetMarkChain")
	}
	for _, cond := range []struct {
		name string
		args []string
	}{{"conditionsV4", c.ConditionsV4}, {"conditionsV6", c.ConditionsV6}} {
		if len(cond.args) == 0 {
			continue
		}
		if first := cond.args[0]; first == "" || (first[0] != '-' && first[0] != '!') {
			// The reference passes these to nft as rule text; plumb talks
			// netlink and has no nft parser.
			return nil, cniplugin.InvalidConfig("%s %q: nftables expressions are not supported; give iptables match arguments (\"-s\", \"10.0.0.0/8\") and the iptables backend", cond.name, cond.args)
		}
		for _, a := range cond.args {
			if strings.ContainsAny(a, "\"\\\n\r\x00") {
				return nil, cniplugin.InvalidConfig("%s argument %q has a quote, backslash or line break", cond.name, a)
			}
		}
		iptOnly = append(iptOnly, cond.name)
	}
	switch {
	case n.Backend == nil || *n.Backend == "":
		c.Backend, c.BackendDefaulted = backendNFT, true
		if len(iptOnly) > 0 {
			c.Backend = backendIPT
		}
	case *n.Backend == backendNFT || *n.Backend == backendIPT:
		c.Backend = *n.Backend
	default:
		return nil, cniplugin.InvalidConfig("backend %q: want \"iptables\" or \"nftables\"", *n.Backend)
	}
	if c.Backend == backendNFT && len(iptOnly) > 0 {
		return nil, cniplugin.InvalidConfig("%s is not supported with the nftables backend (set \"backend\": \"iptables\")", strings.Join(iptOnly, " and "))
	}
	return c, nil
}

// conditions reads conditionsV4/V6; a list of empty strings (which the
// reference treats as none) is none.
func conditions(c *[]string) []string {
	if c == nil {
		return nil
	}
	for _, a := range *c {
		if a != "" {
			return *c
		}
	}
	return nil
}

// validChain accepts what iptables takes as a user chain name.
func validChain(s string) bool {
	return s != "" && len(s) <= 28 && !strings.HasPrefix(s, "-") &&
		strings.IndexFunc(s, func(r rune) bool { return r <= ' ' || r > '~' || strings.ContainsRune(`"'\!`, r) }) < 0
}

// Mappings validates runtimeConfig.portMappings. Protocol names are
// case-insensitive; an empty protocol is tcp.
func (c *Config) Mappings() ([]Mapping, error) {
	var out []Mapping
	for i, e := range c.conf.RuntimeConfig.PortMappings {
		where := fmt.Sprintf("runtimeConfig.portMappings[%d]", i)
		proto := strings.ToLower(e.Protocol)
		if proto == "" {
			proto = "tcp"
		}
		switch proto {
		case "tcp", "udp", "sctp":
		default:
			return nil, cniplugin.InvalidConfig("%s: protocol %q: want tcp, udp or sctp", where, e.Protocol)
		}
		if e.HostPort < 1 || e.HostPort > 65535 {
			return nil, cniplugin.InvalidConfig("%s: hostPort %d is not within 1..65535", where, e.HostPort)
		}
		if e.ContainerPort < 1 || e.ContainerPort > 65535 {
			return nil, cniplugin.InvalidConfig("%s: containerPort %d is not within 1..65535", where, e.ContainerPort)
		}
		m := Mapping{Protocol: proto, HostPort: uint16(e.HostPort), ContainerPort: uint16(e.ContainerPort)}
		if e.HostIP != "" {
			if m.HostIP = net.ParseIP(e.HostIP); m.HostIP == nil {
				return nil, cniplugin.InvalidConfig("%s: hostIP %q is not an IP address", where, e.HostIP)
			}
			if m.HostIP.IsMulticast() || (m.HostIP.To4() != nil && m.HostIP.Equal(net.IPv4bcast)) {
				return nil, cniplugin.InvalidConfig("%s: hostIP %s is not a unicast address", where, e.HostIP)
			}
		}
		out = append(out, m)
	}
	return out, nil
}
