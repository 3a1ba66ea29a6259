// Command demohttp is the demo's tiny web server and client, so the demo
// needs nothing that a fresh machine may lack (curl, busybox, python).
//
//	demohttp serve ADDR     answer every request with who asked
//	demohttp get URL        print the answer; exit 1 if there is none
package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: demohttp serve ADDR | get URL")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		host, _ := os.Hostname()
		err := http.ListenAndServe(os.Args[2], http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ip, _, _ := net.SplitHostPort(r.RemoteAddr)
			fmt.Fprintf(w, "hello from %s (%s), you came from %s\n", host, r.Host, ip)
		}))
		fmt.Fprintln(os.Stderr, "demohttp:", err)
		os.Exit(1)
	case "get":
		c := &http.Client{Timeout: 3 * time.Second}
		resp, err := c.Get(os.Args[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "demohttp:", err)
			os.Exit(1)
		}
		defer resp.Body.Close()
		io.Copy(os.Stdout, resp.Body)
	default:
		fmt.Fprintln(os.Stderr, "usage: demohttp serve ADDR | get URL")
		os.Exit(2)
	}
}
