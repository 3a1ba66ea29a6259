// Command plumb runs, shows and fixes CNI container networks: cnitool's verbs
// (add, del, check, status, gc) plus run, ls, inspect and doctor.
package main

import "os"

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }
