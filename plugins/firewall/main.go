// Command firewall accepts the forwarded traffic of containers set up by an
// earlier plugin of the chain (so they work on hosts whose FORWARD policy
// drops), keeps an admin chain for the administrator's own rules and applies
// an ingress policy between bridge networks: the reference firewall plugin's
// behaviour, with nftables and iptables backends.
package main

import "github.com/plumbnet/plumb/internal/cniplugin"

func main() { cniplugin.Main("firewall", New()) }
