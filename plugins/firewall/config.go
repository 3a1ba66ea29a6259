package main

import (
	"github.com/containernetworking/cni/pkg/types"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/internal/fw"
)

// The backends plumb's firewall can use.
const (
	backendIPTables  = "iptables"
	backendNFTables  = "nftables"
	backendFirewalld = "firewalld" // the reference's; plumb does not speak D-Bus to firewalld
)

// netConf is the firewall config as users write it (the reference's fields).
type netConf struct {
	types.PluginConf
	Backend                string `json:"backend"`
	IptablesAdminChainName string `json:"iptablesAdminChainName,omitempty"`
	// FirewalldZone belongs to the firewalld backend; accepted and unused.
	FirewalldZone string `json:"firewalldZone,omitempty"`
	IngressPolicy string `json:"ingressPolicy,omitempty"`
}

// Config is a validated, defaulted firewall configuration.
type Config struct {
	netConf
	// BackendName is "iptables", "nftables" or "firewalld" (refused by the
	// verbs that would need it).
	BackendName string
	Policy      fw.IngressPolicy
	AdminChain  string
}

// parseConfig validates everything before any side effect; defaultBackend
// names the backend used when the config names none.
func parseConfig(stdin []byte, cniArgs string, defaultBackend func() string) (*Config, error) {
	c := &Config{}
	if err := cniplugin.Decode(stdin, &c.netConf); err != nil {
		return nil, err
	}
	var args cniplugin.Args
	if err := cniplugin.ParseArgs(cniArgs, &args); err != nil {
		return nil, err
	}
	switch c.Backend {
	case "":
		c.BackendName = defaultBackend()
	case backendIPTables, backendNFTables, backendFirewalld:
		c.BackendName = c.Backend
	default:
		return nil, cniplugin.InvalidConfig("backend %q: want \"iptables\" or \"nftables\"", c.Backend)
	}
	switch p := fw.IngressPolicy(c.IngressPolicy); p {
	case "":
		c.Policy = fw.PolicyOpen
	case fw.PolicyOpen, fw.PolicySameBridge, fw.PolicyIsolated:
		c.Policy = p
	default:
		return nil, cniplugin.InvalidConfig("ingressPolicy %q: want \"open\", \"same-bridge\" or \"isolated\"", c.IngressPolicy)
	}
	c.AdminChain = c.IptablesAdminChainName
	if c.AdminChain == "" {
		c.AdminChain = fw.DefaultAdminChain
	}
	if err := fw.ValidAdminChain(c.AdminChain); err != nil {
		return nil, cniplugin.InvalidConfig("iptablesAdminChainName: %w", err)
	}
	return c, nil
}

// unsupported is the answer to the firewalld backend.
func (c *Config) unsupported() error {
	if c.BackendName != backendFirewalld {
		return nil
	}
	return cniplugin.Errorf(cniplugin.CodeUnsupportedField,
		"backend %q is not supported by plumb's firewall plugin: use \"nftables\" or \"iptables\" (or omit backend)", c.Backend)
}
