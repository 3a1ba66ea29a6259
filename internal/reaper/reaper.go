// Package reaper finishes, after a plugin has answered, the part of a
// teardown that is only waiting for the kernel. Deleting a veth waits in
// the kernel for RCU grace periods (about 30 ms here), and so does the
// release of a netfilter netlink socket after a transaction that deleted
// rules or elements. A DEL makes the attachment inert itself (rules and
// elements deleted, the host end down and marked, the address released)
// and starts a reaper, a detached copy of the plugin's own binary, that
// deletes the marked link and holds the netfilter sockets until after the
// plugin has exited. If the reaper never runs to the end, what it leaves is
// a marked, down link: a later ADD of the attachment, GC, or the removal of
// the container's namespace deletes it.
package reaper

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// EnvSwitch set to "off" in the runtime's environment (which plugins
	// inherit) turns reapers off: DEL then deletes the veth and releases
	// the netfilter sockets itself, about 30 ms slower. A reaper outlives
	// its plugin, so its exit status goes to the nearest child subreaper
	// or to the PID namespace's init; that is for hosts where neither
	// reaps orphans (a runtime running as PID 1 of a container without an
	// init), which would otherwise keep one zombie per DEL.
	EnvSwitch = "PLUMB_REAPER"

	envReap  = "PLUMB_REAP"       // set in a reaper's environment
	envIndex = "PLUMB_REAP_INDEX" // ifindex of the link to delete
	envAlias = "PLUMB_REAP_ALIAS" // the alias it must still have
)

// Job is what a reaper finishes.
type Job struct {
	// LinkIndex, when not 0, is a link in the plugin's namespace to delete,
	// but only while its alias is still LinkAlias: an index the kernel has
	// given to a new link meanwhile is left alone.
	LinkIndex int
	LinkAlias string
	// Files are held open until the reaper exits, which is after the
	// plugin has.
	Files []*os.File
}

// enabled is set by plugin binaries (Enable): a reaper is a new run of the
// process's own binary, which only a plugin's main knows to turn into a
// reaper. Anywhere else (a test calling a plugin's DEL in process) Start
// refuses, and the caller does the work itself.
var enabled atomic.Bool

// Enable lets this process start reapers, unless EnvSwitch turns them
// off; plugin mains call it after Main.
func Enable() { enabled.Store(os.Getenv(EnvSwitch) != "off") }

// Enabled reports whether Start can be used.
func Enabled() bool { return enabled.Load() }

// Start runs j in a detached process and returns without waiting. The
// caller may close its copies of j.Files afterwards.
func Start(j Job) error {
	if !Enabled() {
		return errors.New("start reaper: not a plugin binary")
	}
	// /proc/self/exe runs this very binary even if its file has been
	// replaced or removed since (an upgrade during a DEL).
	const self = "/proc/self/exe"
	null, err := os.Open(os.DevNull)
	if err != nil {
		return fmt.Errorf("start reaper: %w", err)
	}
	defer null.Close()
	// The reaper must hold the sockets until this process is gone: it
	// waits for end of file on a pipe whose write end only this process
	// holds, and the kernel closes it when the process exits.
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start reaper: %w", err)
	}
	defer r.Close()
	files := []uintptr{null.Fd(), null.Fd(), null.Fd(), r.Fd()}
	for _, f := range j.Files {
		files = append(files, f.Fd())
	}
	env := append(os.Environ(), envReap+"=1",
		envIndex+"="+strconv.Itoa(j.LinkIndex), envAlias+"="+j.LinkAlias)
	// syscall.ForkExec rather than os/exec: nothing here waits for the
	// process, and os/exec's first start also probes pidfd support with an
	// extra fork. Its own session: a signal to the runtime's process group
	// after the plugin answered does not reach it.
	_, err = syscall.ForkExec(self, []string{self}, &syscall.ProcAttr{
		Env: env, Files: files, Sys: &syscall.SysProcAttr{Setsid: true},
	})
	if err != nil {
		w.Close()
		return fmt.Errorf("start reaper: %w", err)
	}
	parentAlive = append(parentAlive, w)
	return nil
}

// parentAlive keeps the write ends of the reapers' pipes open (and out of
// reach of the garbage collector's finalizers) until the process exits.
var parentAlive []*os.File

// Main runs the job when this process is a reaper, and then exits; in any
// other process it returns at once. Plugins call it first thing.
func Main() {
	if os.Getenv(envReap) != "1" {
		return
	}
	if i, err := strconv.Atoi(os.Getenv(envIndex)); err == nil && i > 0 {
		deleteLink(i, os.Getenv(envAlias))
	}
	// Wait for the plugin to exit (end of file on fd 3), then release the
	// held sockets by exiting.
	parent := os.NewFile(3, "parent")
	io.Copy(io.Discard, parent)
	os.Exit(0)
}

func deleteLink(index int, alias string) {
	l, err := netlink.LinkByIndex(index)
	if err != nil || l.Attrs().Alias != alias {
		return
	}
	netlink.LinkDel(l)
}

// NetfilterSockets returns duplicates of this process's open netfilter
// netlink sockets, for Job.Files.
func NetfilterSockets() []*os.File {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	var out []*os.File
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err != nil || dom != unix.AF_NETLINK {
			continue
		}
		if p, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || p != unix.NETLINK_NETFILTER {
			continue
		}
		d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			continue
		}
		out = append(out, os.NewFile(uintptr(d), filepath.Join("netfilter", e.Name())))
	}
	return out
}

// A DEL's reaper work is gathered while the DEL runs: Begin turns holding
// on, DeleteLinkLater records the link, and Finish, once the DEL is done,
// starts one reaper with the link and every netfilter socket, or does the
// work itself when it cannot.
var (
	holding   atomic.Bool
	linkMu    sync.Mutex
	linkIndex int
	linkAlias string
)

// Begin starts a DEL: from now on netfilter sockets stay open (Holding)
// until Finish hands them to a reaper. It does nothing outside plugins.
func Begin() {
	if Enabled() {
		holding.Store(true)
	}
}

// Holding reports whether netfilter sockets must be left open for a
// reaper: releasing one after a transaction that deleted anything waits in
// the kernel for the deferred destruction of what was deleted (nf_tables
// flushes its destroy work, an RCU grace period: 10-30 ms).
func Holding() bool { return holding.Load() }

// DeleteLinkLater records a link for Finish's reaper to delete while it
// still has alias. It reports false outside a DEL of a plugin binary, when
// the caller must delete the link itself.
func DeleteLinkLater(index int, alias string) bool {
	if !Holding() {
		return false
	}
	linkMu.Lock()
	defer linkMu.Unlock()
	linkIndex, linkAlias = index, alias
	return true
}

// Finish ends a DEL: it starts the reaper, or, when that fails, deletes
// the recorded link here (the sockets are then released, slowly, as the
// process exits).
func Finish() {
	if !Holding() {
		return
	}
	linkMu.Lock()
	j := Job{LinkIndex: linkIndex, LinkAlias: linkAlias, Files: NetfilterSockets()}
	linkMu.Unlock()
	if j.LinkIndex == 0 && len(j.Files) == 0 {
		return
	}
	if err := Start(j); err != nil && j.LinkIndex != 0 {
		deleteLink(j.LinkIndex, j.LinkAlias)
	}
	for _, f := range j.Files {
		f.Close()
	}
}
