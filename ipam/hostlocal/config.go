package hostlocal

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/ipam/allocator"
)

const (
	defaultDataDir     = "/var/lib/cni/networks"
	defaultLockTimeout = 30 * time.Second
)

// RangeConf is one range as users write it (exported: encoding/json can
// only fill an embedded pointer to an exported type).
type RangeConf struct {
	Subnet     types.IPNet `json:"subnet"`
	RangeStart net.IP      `json:"rangeStart,omitempty"`
	RangeEnd   net.IP      `json:"rangeEnd,omitempty"`
	Gateway    net.IP      `json:"gateway,omitempty"`
}

// ipamJSON is the "ipam" object; the embedded range is the legacy single-range form.
type ipamJSON struct {
	*RangeConf
	Type        string         `json:"type"`
	Ranges      [][]RangeConf  `json:"ranges"`
	Routes      []*types.Route `json:"routes"`
	DataDir     string         `json:"dataDir"`
	ResolvConf  string         `json:"resolvConf"`
	LockTimeout string         `json:"lockTimeout"`
}

// netJSON is the whole network config: IPAM plugins get their parent's config.
type netJSON struct {
	types.PluginConf
	IPAM          *ipamJSON `json:"ipam"`
	RuntimeConfig struct {
		IPRanges [][]RangeConf `json:"ipRanges"`
		IPs      []string      `json:"ips"`
	} `json:"runtimeConfig"`
	Args struct {
		CNI struct {
			IPs []string `json:"ips"`
		} `json:"cni"`
	} `json:"args"`
}

// Config is a validated, defaulted host-local configuration.
type Config struct {
	Network     string
	CNIVersion  string
	RangeSets   []allocator.RangeSet
	Routes      []*types.Route
	DataDir     string
	ResolvConf  string
	LockTimeout time.Duration
	// Requested are the addresses asked for through CNI_ARGS IP=,
	// args.cni.ips and runtimeConfig.ips, one per range set at most.
	Requested []net.IP
	Prev      *types.PluginConf
}

// parseConfig reads and validates everything before any side effect.
func parseConfig(stdin []byte, cniArgs string) (*Config, error) {
	var n netJSON
	if err := cniplugin.Decode(stdin, &n); err != nil {
		return nil, err
	}
	if n.IPAM == nil {
		return nil, cniplugin.InvalidConfig("config has no \"ipam\" object")
	}
	c := &Config{
		Network:     n.Name,
		CNIVersion:  n.CNIVersion,
		Routes:      n.IPAM.Routes,
		DataDir:     n.IPAM.DataDir,
		ResolvConf:  n.IPAM.ResolvConf,
		LockTimeout: defaultLockTimeout,
		Prev:        &n.PluginConf,
	}
	if err := validName(c.Network); err != nil {
		return nil, cniplugin.InvalidConfig("network name %q: %w", c.Network, err)
	}
	if c.DataDir == "" {
		c.DataDir = defaultDataDir
	}
	if !filepath.IsAbs(c.DataDir) || hasDotDot(c.DataDir) || strings.ContainsAny(c.DataDir, "\x00\n") {
		return nil, cniplugin.InvalidConfig("dataDir %q must be an absolute path without \"..\"", c.DataDir)
	}
	c.DataDir = filepath.Clean(c.DataDir)
	if n.IPAM.LockTimeout != "" {
		d, err := time.ParseDuration(n.IPAM.LockTimeout)
		if err != nil || d <= 0 {
			return nil, cniplugin.InvalidConfig("lockTimeout %q is not a positive duration", n.IPAM.LockTimeout)
		}
		c.LockTimeout = d
	}

	// Range sets: runtimeConfig.ipRanges (the node's pod CIDR) replaces the
	// configured ranges; otherwise the legacy single range comes first.
	sets := n.IPAM.Ranges
	if n.IPAM.RangeConf != nil && n.IPAM.RangeConf.Subnet.IP != nil {
		sets = append([][]RangeConf{{*n.IPAM.RangeConf}}, sets...)
	}
	if len(n.RuntimeConfig.IPRanges) > 0 {
		sets = n.RuntimeConfig.IPRanges
	}
	for i, s := range sets {
		if len(s) == 0 {
			continue // `"ranges": [[]]` is a placeholder in templates
		}
		set := make(allocator.RangeSet, 0, len(s))
		for _, r := range s {
			set = append(set, allocator.Range{Subnet: r.Subnet, RangeStart: r.RangeStart, RangeEnd: r.RangeEnd, Gateway: r.Gateway})
		}
		if err := set.Canonicalize(); err != nil {
			return nil, cniplugin.InvalidConfig("range set %d: %w", i, err)
		}
		for j, other := range c.RangeSets {
			if set.Overlaps(other) {
				return nil, cniplugin.InvalidConfig("range set %d (%s) overlaps range set %d (%s)", i, set.String(), j, other.String())
			}
		}
		c.RangeSets = append(c.RangeSets, set)
	}
	if len(c.RangeSets) == 0 {
		return nil, cniplugin.InvalidConfig("no IP ranges configured (ipam.ranges, ipam.subnet or runtimeConfig.ipRanges)")
	}

	var args cniplugin.Args
	if err := cniplugin.ParseArgs(cniArgs, &args); err != nil {
		return nil, err
	}
	var asked []string
	if args.IP != "" {
		asked = append(asked, strings.Split(string(args.IP), ",")...)
	}
	asked = append(asked, n.Args.CNI.IPs...)
	asked = append(asked, n.RuntimeConfig.IPs...)
	for _, s := range asked {
		ip, err := parseIP(s)
		if err != nil {
			return nil, cniplugin.InvalidConfig("requested IP: %w", err)
		}
		c.Requested = append(c.Requested, ip)
	}
	return c, nil
}

// validName keeps the network name a single, harmless path element: it
// names the directory under dataDir.
func validName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty")
	case len(s) > 255:
		return fmt.Errorf("longer than 255 bytes")
	case s == "." || s == ".." || strings.ContainsAny(s, "/\x00\n"):
		return fmt.Errorf("must be a single path element")
	}
	return nil
}

func hasDotDot(p string) bool {
	for _, e := range strings.Split(p, "/") {
		if e == ".." {
			return true
		}
	}
	return false
}

// parseIP accepts "10.0.0.5" or "10.0.0.5/24" (the prefix is ignored, as the
// reference does) and returns the 4- or 16-byte form used by the allocator.
func parseIP(s string) (net.IP, error) {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '/'); i >= 0 {
		ip, _, err := net.ParseCIDR(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an IP address", s)
		}
		return canonical(ip), nil
	}
	ip := net.ParseIP(s)
	if ip == nil {
		return nil, fmt.Errorf("%q is not an IP address", s)
	}
	return canonical(ip), nil
}

func canonical(ip net.IP) net.IP {
	if v4 := ip.To4(); v4 != nil {
		return v4
	}
	return ip.To16()
}
