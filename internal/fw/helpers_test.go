package fw

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plumbnet/plumb/internal/testns"
)

// requireThrowawayNS skips without root and fails unless the test process
// really is in another network namespace than the process that started it
// (the test binary re-executed by testns.MainInHostNS) and than PID 1 where
// that can be read, so that nothing below can touch the machine's firewall.
func requireThrowawayNS(t testing.TB) {
	t.Helper()
	testns.RequireRoot(t)
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatalf("refusing to touch the firewall: %v", err)
	}
	parent, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", os.Getppid()))
	if err != nil || parent == self {
		t.Fatalf("refusing to touch the firewall: test netns %s, parent's %q (%v)", self, parent, err)
	}
	if init, err := os.Readlink("/proc/1/ns/net"); err == nil && init == self {
		t.Fatalf("refusing to touch the firewall: test runs in PID 1's netns %s", self)
	}
}

// command runs name in the test's namespace and returns its output.
func command(name string, args ...string) (string, error) {
	var out, errb bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), &iptError{cmd: name + " " + strings.Join(args, " "), code: cmd.ProcessState.ExitCode(), stderr: errb.String(), err: err}
	}
	return out.String(), nil
}

func mustCommand(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := command(name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// resetFirewall empties the throwaway namespace's rule set.
func resetFirewall(t testing.TB) {
	t.Helper()
	requireThrowawayNS(t)
	mustCommand(t, "nft", "flush", "ruleset")
}

// testLock is a lock file private to the test.
func testLock(t testing.TB) string {
	return filepath.Join(t.TempDir(), "fw.lock")
}
