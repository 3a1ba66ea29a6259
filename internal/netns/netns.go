// Package netns is the only place in plumb that switches network namespaces.
// Everything else gets an *NS and either runs a function inside it (Do) or,
// preferably, talks to it through a netlink handle bound to it, which needs no
// thread switch at all.
package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrGone reports a namespace path that no longer exists; DEL treats it as
// already cleaned up.
var ErrGone = errors.New("network namespace is gone")

// ErrNotNetNS reports a path that exists but is not a network namespace.
var ErrNotNetNS = errors.New("not a network namespace")

// NS is an open network namespace.
type NS struct {
	ns ns.NetNS
}

// Open opens the namespace at path (a /proc/PID/ns/net or bind-mounted file).
func Open(path string) (*NS, error) {
	n, err := ns.GetNS(path)
	if err != nil {
		var gone ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		switch {
		case errors.As(err, &gone):
			return nil, fmt.Errorf("open netns %s: %w", path, ErrGone)
		case errors.As(err, &notNS):
			return nil, fmt.Errorf("open netns %s: %w", path, ErrNotNetNS)
		}
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	return &NS{ns: n}, nil
}

// Current opens the calling thread's namespace (the plugin's "host" side).
func Current() (*NS, error) {
	n, err := ns.GetCurrentNS()
	if err != nil {
		return nil, fmt.Errorf("open current netns: %w", err)
	}
	return &NS{ns: n}, nil
}

// Path is the namespace's file path.
func (n *NS) Path() string { return n.ns.Path() }

// Fd is the open namespace file descriptor, valid until Close.
func (n *NS) Fd() int { return int(n.ns.Fd()) }

// Close releases the namespace file.
func (n *NS) Close() error { return n.ns.Close() }

// Do runs fn on a thread switched into the namespace and switches back.
func (n *NS) Do(fn func() error) error {
	return n.ns.Do(func(ns.NetNS) error { return fn() })
}

// Netlink returns a netlink handle whose sockets live in the namespace: the
// thread enters the namespace only to open them, so later calls need no setns.
func (n *NS) Netlink() (*netlink.Handle, error) {
	// Routing sockets only: the default adds XFRM and netfilter sockets,
	// each made by switching the thread into the namespace and back,
	// which plumb never uses through this handle.
	h, err := netlink.NewHandleAt(vnetns.NsHandle(n.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", n.Path(), err)
	}
	return h, nil
}

// RunDir is where named namespaces live, as `ip netns` keeps them.
const RunDir = "/run/netns"

// CreateNamed makes a new network namespace bound at RunDir/name (as `ip
// netns add` does) and opens it. The calling thread is not affected: the
// namespace is entered by a throwaway locked thread that dies with it.
func CreateNamed(name string) (*NS, error) {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return nil, fmt.Errorf("create netns %q: not a valid name", name)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		h, err := vnetns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	return Open(filepath.Join(RunDir, name))
}

// RemoveNamed unmounts and deletes RunDir/name; absent is success.
func RemoveNamed(name string) error {
	if err := vnetns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("remove netns %s: %w", name, err)
	}
	os.Remove(filepath.Join(RunDir, name))
	return nil
}
