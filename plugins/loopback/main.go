// Command loopback brings up the loopback interface of a container's network
// namespace.
package main

import "github.com/plumbnet/plumb/internal/cniplugin"

func main() { cniplugin.Main("loopback", &Plugin{Open: openLoopback}) }
