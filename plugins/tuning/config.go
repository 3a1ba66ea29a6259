package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/plumbnet/plumb/internal/cniplugin"
)

const (
	// defaultDataDir is the reference plugin's: saved values live on tmpfs,
	// as the interfaces they belong to do not survive a reboot either.
	defaultDataDir = "/run/cni/tuning"
	minMTU, maxMTU = 68, 65535 // 68: the smallest MTU IPv4 allows
)

// namespaced lists the sysctls that belong to a network namespace on every
// kernel plumb supports: a directory (ending in "/") or a single key. Outside
// them a key can be global to the host (net.core.rmem_max was until Linux
// 6.x), and a container must not tune the host.
var namespaced = []string{
	"net/ipv4/", "net/ipv6/", "net/unix/", "net/netfilter/", "net/mptcp/",
	"net/core/somaxconn", "net/core/xfrm_acq_expires", "net/core/xfrm_aevent_etime",
	"net/core/xfrm_aevent_rseqth", "net/core/xfrm_larval_drop",
}

// Settings are values of one container interface and its namespace; a zero
// field is left alone. The JSON form is the reference plugin's saved-state
// format plus "sysctl", so either plugin can restore what the other saved.
type Settings struct {
	MAC      string `json:"mac,omitempty"`
	Promisc  *bool  `json:"promisc,omitempty"`
	MTU      int    `json:"mtu,omitempty"`
	Allmulti *bool  `json:"allmulti,omitempty"`
	TxQLen   *int   `json:"txQLen,omitempty"`
	// Sysctl maps a path below /proc/sys ("net/ipv4/conf/eth0/arp_filter")
	// to its value.
	Sysctl map[string]string `json:"sysctl,omitempty"`
}

// HasLink reports whether s sets an interface attribute.
func (s Settings) HasLink() bool {
	return s.MAC != "" || s.Promisc != nil || s.MTU != 0 || s.Allmulti != nil || s.TxQLen != nil
}

// IsEmpty reports whether s sets nothing.
func (s Settings) IsEmpty() bool { return !s.HasLink() && len(s.Sysctl) == 0 }

// linkOnly is s without its sysctls.
func (s Settings) linkOnly() Settings {
	s.Sysctl = nil
	return s
}

// cniArgs are the keys of args.cni the reference tuning plugin reads; each
// one overrides the field of the same name.
type cniArgs struct {
	SysCtl   map[string]string `json:"sysctl"`
	Mac      *string           `json:"mac,omitempty"`
	Promisc  *bool             `json:"promisc,omitempty"`
	Mtu      *int              `json:"mtu,omitempty"`
	Allmulti *bool             `json:"allmulti,omitempty"`
	TxQLen   *int              `json:"txQLen,omitempty"`
}

// netConf is the config as users write it (the reference's fields).
type netConf struct {
	types.PluginConf
	DataDir       string            `json:"dataDir,omitempty"`
	SysCtl        map[string]string `json:"sysctl"`
	Mac           string            `json:"mac,omitempty"`
	Promisc       bool              `json:"promisc,omitempty"`
	Mtu           int               `json:"mtu,omitempty"`
	TxQLen        *int              `json:"txQLen,omitempty"`
	Allmulti      *bool             `json:"allmulti,omitempty"`
	RuntimeConfig struct {
		Mac string `json:"mac,omitempty"`
	} `json:"runtimeConfig,omitempty"`
	Args struct {
		CNI *cniArgs `json:"cni"`
	} `json:"args"`
}

// sysctl is one requested sysctl: the key as written and where it points.
type sysctl struct {
	Key   string // as in the config, what an allowlist matches
	Path  string // below /proc/sys
	Value string
}

// Config is a validated tuning configuration.
type Config struct {
	types.PluginConf
	DataDir string
	Want    Settings
	Sysctls []sysctl // sorted by Path
}

// parseBase reads what every verb needs: the data directory and CNI_ARGS.
// DEL and GC stop here, so a config that turned invalid after ADD (an
// allowlist that changed) still cleans up.
func parseBase(stdin []byte, args string) (*netConf, *cniplugin.Args, string, error) {
	var nc netConf
	if err := cniplugin.Decode(stdin, &nc); err != nil {
		return nil, nil, "", err
	}
	var ea cniplugin.Args
	if err := cniplugin.ParseArgs(args, &ea); err != nil {
		return nil, nil, "", err
	}
	dir := nc.DataDir
	if dir == "" {
		dir = defaultDataDir
	}
	if !filepath.IsAbs(dir) || slices.Contains(strings.Split(dir, "/"), "..") {
		return nil, nil, "", cniplugin.InvalidConfig("dataDir %q must be an absolute path without \"..\"", dir)
	}
	return &nc, &ea, dir, nil
}

// parseConfig validates everything ADD and CHECK act on before any side
// effect. ifname replaces IFNAME in sysctl keys ("" leaves it).
func parseConfig(stdin []byte, args, ifname string) (*Config, error) {
	nc, ea, dir, err := parseBase(stdin, args)
	if err != nil {
		return nil, err
	}
	if err := noDuplicateSysctls(stdin); err != nil {
		return nil, err
	}
	c := &Config{PluginConf: nc.PluginConf, DataDir: dir}

	// Precedence as in the reference plugin: config < CNI_ARGS MAC <
	// runtimeConfig.mac < args.cni.
	mac, promisc, mtu, txq, allmulti := nc.Mac, nc.Promisc, nc.Mtu, nc.TxQLen, nc.Allmulti
	if ea.MAC != "" {
		mac = string(ea.MAC)
	}
	if nc.RuntimeConfig.Mac != "" {
		mac = nc.RuntimeConfig.Mac
	}
	sysctls := map[string]string{}
	for k, v := range nc.SysCtl {
		sysctls[k] = v
	}
	if a := nc.Args.CNI; a != nil {
		for k, v := range a.SysCtl {
			sysctls[k] = v
		}
		if a.Mac != nil {
			mac = *a.Mac
		}
		if a.Promisc != nil {
			promisc = *a.Promisc
		}
		if a.Mtu != nil {
			mtu = *a.Mtu
		}
		if a.Allmulti != nil {
			allmulti = a.Allmulti
		}
		if a.TxQLen != nil {
			txq = a.TxQLen
		}
	}

	if mac != "" {
		hw, err := net.ParseMAC(mac)
		if err != nil {
			return nil, cniplugin.InvalidConfig("mac %q is not a hardware address", mac)
		}
		if len(hw) == 6 && hw[0]&1 != 0 {
			return nil, cniplugin.InvalidConfig("mac %q is a multicast address", mac)
		}
		c.Want.MAC = hw.String()
	}
	if promisc {
		c.Want.Promisc = &promisc
	}
	if mtu != 0 && (mtu < minMTU || mtu > maxMTU) {
		return nil, cniplugin.InvalidConfig("mtu %d out of range %d..%d", mtu, minMTU, maxMTU)
	}
	c.Want.MTU = mtu
	if txq != nil && (*txq < 0 || *txq > math.MaxInt32) {
		return nil, cniplugin.InvalidConfig("txQLen %d out of range 0..%d", *txq, math.MaxInt32)
	}
	c.Want.TxQLen = txq
	c.Want.Allmulti = allmulti

	byPath := map[string]string{} // path -> key, to catch two spellings of one sysctl
	for key, value := range sysctls {
		path, err := sysctlPath(key, ifname)
		if err != nil {
			return nil, cniplugin.InvalidConfig("sysctl %q: %w", key, err)
		}
		if err := checkValue(value); err != nil {
			return nil, cniplugin.InvalidConfig("sysctl %q value %q: %w", key, value, err)
		}
		if other, dup := byPath[path]; dup {
			return nil, cniplugin.InvalidConfig("sysctl keys %q and %q name the same sysctl", min(key, other), max(key, other))
		}
		byPath[path] = key
		c.Sysctls = append(c.Sysctls, sysctl{Key: key, Path: path, Value: value})
	}
	slices.SortFunc(c.Sysctls, func(a, b sysctl) int { return strings.Compare(a.Path, b.Path) })
	if len(c.Sysctls) > 0 {
		c.Want.Sysctl = make(map[string]string, len(c.Sysctls))
		for _, s := range c.Sysctls {
			c.Want.Sysctl[s.Path] = s.Value
		}
	}
	return c, nil
}

// sysctlPath turns a key into a path below /proc/sys. Keys come in
// sysctl(8)'s two spellings: dotted ("net.ipv4.conf.eth0.arp_filter") or
// with slashes ("net/ipv4/conf/eth0.100/arp_filter", where a dot inside an
// interface name survives). IFNAME stands for the container interface.
func sysctlPath(key, ifname string) (string, error) {
	p := key
	if !strings.Contains(p, "/") {
		p = strings.ReplaceAll(p, ".", "/")
	}
	if ifname != "" {
		p = strings.Replace(p, "IFNAME", ifname, 1)
	}
	if err := checkPath(p); err != nil {
		return "", err
	}
	return p, nil
}

// checkPath accepts a path below /proc/sys that stays inside a namespaced
// subtree of /proc/sys/net. Saved state is checked again before a restore.
func checkPath(p string) error {
	parts := strings.Split(p, "/")
	for _, part := range parts {
		if part == "" || part == "." || part == ".." || strings.ContainsAny(part, "\x00\n") {
			return fmt.Errorf("not a sysctl name (empty, \".\" or \"..\" component)")
		}
	}
	if parts[0] != "net" || len(parts) < 2 {
		return fmt.Errorf("only network sysctls (net.*) can be tuned")
	}
	for _, ns := range namespaced {
		if p == ns || strings.HasSuffix(ns, "/") && strings.HasPrefix(p, ns) {
			return nil
		}
	}
	return fmt.Errorf("not a per-network-namespace sysctl (allowed: %s): setting it would change the host", strings.Join(namespaced, ", "))
}

func checkValue(v string) error {
	switch {
	case strings.TrimSpace(v) == "":
		return fmt.Errorf("empty")
	case strings.ContainsAny(v, "\n\r\x00"):
		return fmt.Errorf("contains a line break or NUL")
	}
	return nil
}

// noDuplicateSysctls rejects a key given twice in one sysctl object: JSON
// decoding would silently keep the last one.
func noDuplicateSysctls(stdin []byte) error {
	var raw struct {
		SysCtl json.RawMessage `json:"sysctl"`
		Args   struct {
			CNI struct {
				SysCtl json.RawMessage `json:"sysctl"`
			} `json:"cni"`
		} `json:"args"`
	}
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil // Decode already reported what is wrong with it
	}
	for _, obj := range []json.RawMessage{raw.SysCtl, raw.Args.CNI.SysCtl} {
		if key, dup := duplicateKey(obj); dup {
			return cniplugin.InvalidConfig("sysctl key %q given twice", key)
		}
	}
	return nil
}

func duplicateKey(obj json.RawMessage) (string, bool) {
	d := json.NewDecoder(bytes.NewReader(obj))
	if tok, err := d.Token(); err != nil || tok != json.Delim('{') {
		return "", false
	}
	seen := map[string]bool{}
	for d.More() {
		tok, err := d.Token()
		if err != nil {
			return "", false
		}
		key, _ := tok.(string)
		if seen[key] {
			return key, true
		}
		seen[key] = true
		var skip json.RawMessage
		if err := d.Decode(&skip); err != nil {
			return "", false
		}
	}
	return "", false
}
