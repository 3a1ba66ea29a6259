package main

import (
	"fmt"
	"net"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/plumbnet/plumb/internal/cniplugin"
)

const (
	defaultBridge = "cni0"
	maxIfNameLen  = 15 // IFNAMSIZ - 1
	maxVlanID     = 4094
)

// vlanTrunk is one entry of vlanTrunk: a single id or a range.
type vlanTrunk struct {
	MinID *int `json:"minID,omitempty"`
	MaxID *int `json:"maxID,omitempty"`
	ID    *int `json:"id,omitempty"`
}

// netConf is the bridge config as users write it (the reference's fields).
type netConf struct {
	types.PluginConf
	Bridge                    string       `json:"bridge"`
	IsGateway                 bool         `json:"isGateway"`
	IsDefaultGateway          bool         `json:"isDefaultGateway"`
	ForceAddress              bool         `json:"forceAddress"`
	IPMasq                    bool         `json:"ipMasq"`
	IPMasqBackend             string       `json:"ipMasqBackend,omitempty"`
	MTU                       int          `json:"mtu"`
	HairpinMode               bool         `json:"hairpinMode"`
	PromiscMode               bool         `json:"promiscMode"`
	Vlan                      int          `json:"vlan"`
	VlanTrunk                 []*vlanTrunk `json:"vlanTrunk,omitempty"`
	PreserveDefaultVlan       bool         `json:"preserveDefaultVlan"`
	MacSpoofChk               bool         `json:"macspoofchk,omitempty"`
	EnableDad                 bool         `json:"enabledad,omitempty"`
	DisableContainerInterface bool         `json:"disableContainerInterface,omitempty"`
	PortIsolation             bool         `json:"portIsolation,omitempty"`
	// RemoveBridgeWhenEmpty (plumb only): DEL of the last container removes
	// the bridge, if plumb created it.
	RemoveBridgeWhenEmpty bool `json:"removeBridgeWhenEmpty,omitempty"`
	Args                  struct {
		CNI struct {
			MAC string `json:"mac,omitempty"`
		} `json:"cni,omitempty"`
	} `json:"args,omitempty"`
	RuntimeConfig struct {
		MAC string `json:"mac,omitempty"`
	} `json:"runtimeConfig,omitempty"`
}

// Config is a validated, defaulted bridge configuration.
type Config struct {
	netConf
	MAC   net.HardwareAddr // container interface MAC, nil: kernel-chosen
	Vlans []int            // trunk VLANs, sorted, unique
}

// parseConfig validates everything before any side effect.
func parseConfig(stdin []byte, cniArgs string) (*Config, error) {
	c := &Config{netConf: netConf{Bridge: defaultBridge}}
	if err := cniplugin.Decode(stdin, &c.netConf); err != nil {
		return nil, err
	}
	if err := validIfName(c.Bridge); err != nil {
		return nil, cniplugin.InvalidConfig("bridge name %q: %w", c.Bridge, err)
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return nil, cniplugin.InvalidConfig("mtu %d out of range 68..65535", c.MTU)
	}
	if c.Vlan < 0 || c.Vlan > maxVlanID {
		return nil, cniplugin.InvalidConfig("vlan %d out of range 0..%d", c.Vlan, maxVlanID)
	}
	vlans, err := trunkVlans(c.VlanTrunk)
	if err != nil {
		return nil, cniplugin.InvalidConfig("vlanTrunk: %w", err)
	}
	c.Vlans = vlans
	if c.HairpinMode && c.PromiscMode {
		return nil, cniplugin.InvalidConfig("hairpinMode and promiscMode cannot both be set")
	}
	switch c.IPMasqBackend {
	case "", "iptables", "nftables":
	default:
		return nil, cniplugin.InvalidConfig("ipMasqBackend %q: want \"iptables\" or \"nftables\"", c.IPMasqBackend)
	}
	if c.IPAM.Type == "" {
		return nil, cniplugin.InvalidConfig("config has no ipam plugin (\"ipam\": {\"type\": ...})")
	}
	if strings.ContainsAny(c.IPAM.Type, "/\x00") || c.IPAM.Type == "." || c.IPAM.Type == ".." {
		return nil, cniplugin.InvalidConfig("ipam type %q is not a plugin name", c.IPAM.Type)
	}
	if c.IsDefaultGateway {
		c.IsGateway = true // a default route needs a gateway on the bridge
	}

	var args cniplugin.Args
	if err := cniplugin.ParseArgs(cniArgs, &args); err != nil {
		return nil, err
	}
	mac := string(args.MAC)
	if c.Args.CNI.MAC != "" {
		mac = c.Args.CNI.MAC
	}
	if c.RuntimeConfig.MAC != "" {
		mac = c.RuntimeConfig.MAC
	}
	if mac != "" {
		hw, err := net.ParseMAC(mac)
		if err != nil || len(hw) != 6 {
			return nil, cniplugin.InvalidConfig("mac %q is not an Ethernet address", mac)
		}
		c.MAC = hw
	}
	return c, nil
}

// validIfName applies the kernel's rules for interface names.
func validIfName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty")
	case len(s) > maxIfNameLen:
		return fmt.Errorf("longer than %d bytes", maxIfNameLen)
	case s == "." || s == "..":
		return fmt.Errorf("not a valid interface name")
	case strings.ContainsAny(s, "/: \t\n\x00"):
		return fmt.Errorf("contains '/', ':' or white space")
	}
	return nil
}

func trunkVlans(trunks []*vlanTrunk) ([]int, error) {
	set := map[int]bool{}
	for _, t := range trunks {
		if t == nil {
			continue
		}
		if (t.MinID == nil) != (t.MaxID == nil) {
			return nil, fmt.Errorf("minID and maxID go together")
		}
		if t.MinID != nil {
			lo, hi := *t.MinID, *t.MaxID
			if lo < 1 || hi > maxVlanID || lo > hi {
				return nil, fmt.Errorf("range %d-%d not within 1..%d", lo, hi, maxVlanID)
			}
			for v := lo; v <= hi; v++ {
				set[v] = true
			}
		}
		if t.ID != nil {
			if *t.ID < 1 || *t.ID > maxVlanID {
				return nil, fmt.Errorf("id %d not within 1..%d", *t.ID, maxVlanID)
			}
			set[*t.ID] = true
		}
	}
	out := make([]int, 0, len(set))
	for v := range set {
		out = append(out, v)
	}
	sort.Ints(out)
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}
