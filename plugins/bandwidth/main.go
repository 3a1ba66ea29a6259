// Command bandwidth limits a container's traffic in both directions with
// token buckets: a tbf on the host end of its veth for traffic to it, and a
// tbf on an ifb device, fed by a redirect from the host end's ingress, for
// traffic from it.
package main

import "github.com/plumbnet/plumb/internal/cniplugin"

func main() { cniplugin.Main("bandwidth", New()) }
