// Package clients drives plumb's plugins through the programs that use them
// in the field, none of them written here: cnitool, podman's CNI backend and
// containerd's CRI plugin (through crictl). Each suite checks what a user
// sees: addresses from the configured range, TCP between containers, to an
// "external" peer through NAT and from it through a published port, and
// nothing left behind (veths, reservations, rules, named netns) once the
// client has cleaned up.
//
// The suites are slow and need packages `make test` does not install, so
// they run only under `make test-clients` (PLUMB_TEST_CLIENTS=1, after
// scripts/clients-setup.sh); a client that is not installed is skipped with
// the reason.
//
// Everything runs in throwaway namespaces. The test binary re-executes
// itself twice:
//
//  1. into new mount and PID namespaces, as their init (PID 1): it reaps
//     every orphan there, as an init must (plumb's DEL reapers and whatever
//     the clients' daemons leave), and runs the tests in a child, which makes
//     every mount private and puts fresh tmpfs over /run (named netns,
//     runtime state and sockets, plumb's locks), a private directory over
//     /var/lib/cni (libcni's cache and host-local's default data dir) and a
//     fresh /proc. When the init exits the kernel kills whatever a client
//     left running (containerd, shims, conmon, containers).
//  2. from there through testns into a fresh network namespace, the "host" of
//     the tests. podman, containerd, cnitool and the plugins they run are
//     children of the test process, so they live in that namespace too.
//
// Nothing is created in the machine's own network namespace, and no named
// netns can outlive the run: /run/netns is a tmpfs of the private mount
// namespace.
package clients

import (
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/plumbnet/plumb/internal/testns"
)

const (
	// envEnable turns the suites on (`make test-clients` sets it).
	envEnable = "PLUMB_TEST_CLIENTS"
	// envStage marks the re-executed binary inside the private mount and
	// PID namespaces.
	envStage = "PLUMB_CLIENTS_STAGE"
	// envBin and envPause carry the built plugins and pause binary to the
	// re-executed test binary.
	envBin   = "PLUMB_CLIENTS_BIN"
	envPause = "PLUMB_CLIENTS_PAUSE"
)

// binDir holds the freshly built plugins (one binary per plugin, named as
// the reference ones) while the tests run; pauseBin is the static pause
// program the containerd suite packs into its sandbox image.
var binDir, pauseBin string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if os.Getenv(envEnable) != "1" || os.Geteuid() != 0 {
		return m.Run() // every test skips and says why
	}
	switch {
	case testns.InHostNS():
		binDir, pauseBin = os.Getenv(envBin), os.Getenv(envPause)
		return testns.RunInHostNS(m) // brings lo up, runs the tests
	case os.Getenv(envStage) == "init":
		return initStage()
	case os.Getenv(envStage) == "private":
		if err := privateMounts(); err != nil {
			fmt.Fprintln(os.Stderr, "clients: private mounts:", err)
			return 1
		}
		return testns.RunInHostNS(m)
	}
	dir, err := os.MkdirTemp("", "plumb-clients-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "clients:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := buildAll(dir); err != nil {
		fmt.Fprintln(os.Stderr, "clients:", err)
		return 1
	}
	return reexecPrivate(dir)
}

// reexecPrivate runs the test binary again in new mount and PID namespaces.
func reexecPrivate(dir string) int {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "clients: find test binary:", err)
		return 1
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envStage+"=init",
		envBin+"="+filepath.Join(dir, "cni"), envPause+"="+filepath.Join(dir, "pause", "pause"))
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID,
		Pdeathsig:  syscall.SIGKILL,
	}
	if err := cmd.Run(); err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		fmt.Fprintln(os.Stderr, "clients: run tests in private namespaces:", err)
		return 1
	}
	return 0
}

// initStage is PID 1 of the tests' PID namespace: it runs the tests in a
// child and reaps every process that ends up its child, until the tests
// have exited, whose status it returns. SIGINT and SIGTERM go on to the
// tests.
func initStage() int {
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "clients: find test binary:", err)
		return 1
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, unix.SIGINT, unix.SIGTERM)
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), envStage+"=private")
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "clients: start tests:", err)
		return 1
	}
	go func() {
		for s := range sigs {
			cmd.Process.Signal(s)
		}
	}()
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			fmt.Fprintln(os.Stderr, "clients: wait:", err)
			return 1
		case pid != cmd.Process.Pid:
			continue // an orphan, reaped
		case ws.Exited():
			return ws.ExitStatus()
		default:
			return 1
		}
	}
}

// privateMounts runs in the fresh mount namespace: stop propagation both
// ways, then cover every place the clients keep machine-wide state.
func privateMounts() error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	// A /proc of the new PID namespace, so tools see their own processes.
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return fmt.Errorf("mount /proc: %w", err)
	}
	if err := unix.Mount("tmpfs", "/run", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on /run: %w", err)
	}
	for _, d := range []string{"/run/netns", "/run/lock"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	// /var/lib/cni: libcni's cache (cnitool, podman, containerd) and the
	// default host-local data dir of podman's generated networks.
	if err := os.MkdirAll("/var/lib/cni", 0o755); err != nil {
		return err
	}
	if err := unix.Mount("tmpfs", "/var/lib/cni", "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755"); err != nil {
		return fmt.Errorf("mount tmpfs on /var/lib/cni: %w", err)
	}
	return nil
}

// buildAll compiles every plugin main package that exists into dir/cni and the
// pause program into dir/pause. A plugin that does not build yet is left out
// (its tests skip, naming the error); the bridge, host-local and loopback
// plugins every suite needs must build.
func buildAll(dir string) error {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	var pkgs []string
	for _, pattern := range []string{"plugins/*", "ipam/host-local", "portmap", "plugins/portmap"} {
		matches, _ := filepath.Glob(filepath.Join(root, pattern))
		for _, m := range matches {
			// Only command packages: plugins/ may also hold shared code.
			if p, err := build.ImportDir(m, 0); err == nil && p.IsCommand() {
				rel, _ := filepath.Rel(root, m)
				pkgs = append(pkgs, "./"+rel)
			}
		}
	}
	cniDir := filepath.Join(dir, "cni")
	var failed []string
	for _, pkg := range pkgs {
		if out, err := goBuild(root, cniDir, pkg); err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v\n%s", pkg, err, out))
		}
	}
	if len(failed) > 0 {
		notes := strings.Join(failed, "\n")
		os.WriteFile(filepath.Join(cniDir, buildNotes), []byte(notes), 0o644)
		fmt.Fprintf(os.Stderr, "clients: some plugin packages did not build; their tests skip:\n%s\n", notes)
	}
	for _, need := range []string{"bridge", "host-local", "loopback"} {
		if _, err := os.Stat(filepath.Join(cniDir, need)); err != nil {
			return fmt.Errorf("plugin %s did not build: every suite needs it", need)
		}
	}
	if out, err := goBuild(root, filepath.Join(dir, "pause"), "./clients/pause"); err != nil {
		return fmt.Errorf("build the pause program: %v\n%s", err, out)
	}
	return nil
}

// buildNotes, in the plugin directory, says which packages did not build.
const buildNotes = "BUILD-NOTES.txt"

func goBuild(root, out, pkg string) ([]byte, error) {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return nil, err
	}
	cmd := exec.Command("go", "build", "-o", out+"/", pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOPROXY=off")
	return cmd.CombinedOutput()
}
