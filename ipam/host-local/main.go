// Command host-local is plumb's host-local IPAM plugin: it reserves addresses
// from configured ranges in files on this host, in the same on-disk format as
// the reference host-local.
package main

import "github.com/plumbnet/plumb/internal/cniplugin"

func main() { cniplugin.Main("host-local", &Plugin{OpenStore: openDisk}) }
