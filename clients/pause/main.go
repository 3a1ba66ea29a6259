// Command pause is the sandbox ("pause") process of the pod sandbox image
// the containerd suite builds locally, since no image can be pulled: it holds
// the pod's namespaces and exits on SIGINT or SIGTERM. Built static
// (CGO_ENABLED=0), it is the image's only file.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	<-sig
}
