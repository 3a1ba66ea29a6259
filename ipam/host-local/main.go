// Command host-local is plumb's host-local IPAM plugin (package
// ipam/hostlocal).
package main

import (
	"github.com/plumbnet/plumb/internal/cniplugin"
	"github.com/plumbnet/plumb/ipam/hostlocal"
)

func main() { cniplugin.Main("host-local", hostlocal.New()) }
