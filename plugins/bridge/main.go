// Command bridge connects a container to a Linux bridge on the host through a
// veth pair, addresses it through the configured IPAM plugin, routes it and
// optionally masquerades its outbound traffic.
package main

import "github.com/plumbnet/plumb/internal/cniplugin"

func main() { cniplugin.Main("bridge", New()) }
