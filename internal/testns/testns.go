// Package testns gives tests throwaway network namespaces, so that no test
// ever creates a link, address, route, sysctl or firewall rule in the
// machine's own namespace.
//
// A test package that needs root calls MainInHostNS from TestMain: the test
// binary re-executes itself in a fresh, unnamed network namespace (the "host"
// of the test) that the kernel deletes when the process exits, whatever way it
// exits. Container namespaces come from NewNS and are removed on cleanup.
package testns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/netns"
)

// envInHostNS marks the re-executed test binary.
const envInHostNS = "PLUMB_TEST_IN_HOSTNS"

// InHostNS reports whether this process runs in a throwaway host namespace.
func InHostNS() bool { return os.Getenv(envInHostNS) == "1" }

// MainInHostNS runs the tests of a package in a throwaway network namespace
// when running as root; otherwise it runs them as they are (root tests skip).
func MainInHostNS(m *testing.M) { os.Exit(RunInHostNS(m)) }

// RunInHostNS is MainInHostNS returning the exit code, for a TestMain that
// sets up and tears down around the tests (only InHostNS() is the side that
// runs them).
func RunInHostNS(m *testing.M) int {
	if os.Geteuid() != 0 || InHostNS() {
		if InHostNS() {
			if err := loopbackUp(); err != nil {
				fmt.Fprintln(os.Stderr, "testns:", err)
				return 1
			}
		}
		return m.Run()
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testns: find test binary:", err)
		return 1
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envInHostNS+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "testns: run tests in a new network namespace:", err)
		return 1
	}
	return 0
}

func loopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	return netlink.LinkSetUp(lo)
}

// RequireRoot skips t unless it runs as root inside a throwaway host
// namespace made by MainInHostNS.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: run `make test` as root")
	}
	if !InHostNS() {
		t.Skip("needs a throwaway host namespace: call testns.MainInHostNS from TestMain")
	}
}

// NewNS creates a named network namespace (a "container") and deletes it
// when the test ends.
func NewNS(t testing.TB) *netns.NS {
	t.Helper()
	RequireRoot(t)
	made, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	path := made.Path()
	t.Cleanup(func() {
		made.Close()
		if err := testutils.UnmountNS(made); err != nil {
			t.Errorf("remove netns %s: %v", path, err)
		}
	})
	n, err := netns.Open(path)
	if err != nil {
		t.Fatalf("open netns: %v", err)
	}
	t.Cleanup(func() { n.Close() })
	return n
}

// Removable is a container namespace the test deletes itself, to exercise
// DEL after the container is gone; cleanup deletes it if the test did not.
type Removable struct {
	*netns.NS
	t    testing.TB
	path string
	gone bool
}

// NewRemovable creates a named network namespace the test can Remove.
func NewRemovable(t testing.TB) *Removable {
	t.Helper()
	RequireRoot(t)
	made, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	made.Close() // the bind mount keeps it; NS below is the handle we use
	n, err := netns.Open(made.Path())
	if err != nil {
		t.Fatalf("open netns: %v", err)
	}
	r := &Removable{NS: n, t: t, path: made.Path()}
	t.Cleanup(func() {
		if !r.gone {
			r.Remove()
		}
	})
	return r
}

// Remove closes the handle, unmounts the namespace and deletes its file.
func (r *Removable) Remove() {
	r.t.Helper()
	r.gone = true
	r.NS.Close()
	if err := unix.Unmount(r.path, unix.MNT_DETACH); err != nil {
		r.t.Errorf("unmount netns %s: %v", r.path, err)
	}
	if err := os.Remove(r.path); err != nil {
		r.t.Errorf("remove netns %s: %v", r.path, err)
	}
}

// Summary adds a line to the summary `make test` prints at the end (the
// file named by PLUMB_TEST_SUMMARY); without it, it does nothing.
func Summary(format string, args ...any) {
	p := os.Getenv("PLUMB_TEST_SUMMARY")
	if p == "" {
		return
	}
	f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintf(f, format+"\n", args...)
}

// Links lists the links of the test's host namespace, again when a
// concurrent change (a DEL's reaper deleting a veth) interrupted the dump.
func Links(t testing.TB) []netlink.Link {
	t.Helper()
	for i := 0; ; i++ {
		links, err := netlink.LinkList()
		if err == nil {
			return links
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == 20 {
			t.Fatalf("list links: %v", err)
		}
	}
}
