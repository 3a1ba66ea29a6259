// Command portmap publishes container ports on the host: chained after an
// interface plugin, it destination-NATs traffic to the host's addresses and
// the ports in runtimeConfig.portMappings to the container's address from
// prevResult, with nftables (netlink) or iptables.
package main

import "github.com/plumbnet/plumb/internal/cniplugin"

func main() { cniplugin.Main("portmap", New()) }
