// Command tuning changes sysctls and interface attributes (MAC, MTU,
// promiscuous and all-multicast mode, transmit queue length) of a container
// interface created by an earlier plugin of the chain, and puts them back on
// DEL.
package main

import "github.com/plumbnet/plumb/internal/cniplugin"

func main() { cniplugin.Main("tuning", New()) }
