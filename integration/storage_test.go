package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/plumbnet/plumb/internal/testns"
)

// hostLocalIn runs a shell script in a private mount namespace (so its
// mounts vanish with it); the script calls `hl ID` to run a host-local ADD
// for container ID with the test's config, printing one JSON line per call.
func hostLocalIn(t *testing.T, dataDir, script string) []string {
	t.Helper()
	netns := testns.NewNS(t).Path()
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"st","ipam":{"type":"host-local","dataDir":%q,"ranges":[[{"subnet":"10.76.0.0/24"}]]}}`, dataDir)
	hl := fmt.Sprintf(`hl() { echo '%s' | CNI_COMMAND=ADD CNI_CONTAINERID=$1 CNI_NETNS=%s CNI_IFNAME=eth0 CNI_PATH=%s %s | tr -d '\n'; echo; }`,
		conf, netns, binDir, filepath.Join(binDir, "host-local"))
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-ec", hl+"\n"+script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("script: %v\n%s", err, out)
	}
	return strings.Split(strings.TrimSpace(string(out)), "\n")
}

func cniErrorCode(t *testing.T, line string) uint {
	t.Helper()
	var e types.Error
	if err := json.Unmarshal([]byte(line), &e); err != nil || e.Msg == "" {
		t.Fatalf("not a CNI error: %q", line)
	}
	return e.Code
}

// TestReadOnlyDataDir: a read-only store gives a clear I/O error and the
// reservations already there stay.
func TestReadOnlyDataDir(t *testing.T) {
	NewEnv(t)
	dataDir := t.TempDir()
	lines := hostLocalIn(t, dataDir, fmt.Sprintf(`hl ctr-a
mount --bind %[1]s %[1]s
mount -o remount,bind,ro %[1]s
hl ctr-b`, dataDir))
	if len(lines) != 2 || !strings.Contains(lines[0], "10.76.0.2/24") {
		t.Fatalf("output: %q", lines)
	}
	if code := cniErrorCode(t, lines[1]); code != 5 || !strings.Contains(lines[1], "read-only") {
		t.Fatalf("ADD on a read-only store: %s (want code 5 naming the cause)", lines[1])
	}
	b, err := os.ReadFile(filepath.Join(dataDir, "st", "10.76.0.2"))
	if err != nil || string(b) != "ctr-a\r\neth0" {
		t.Fatalf("existing reservation: %q %v", b, err)
	}
}

// TestFullDataDir: a full store gives a clear I/O error, leaves no partial
// file and keeps the reservations already there.
func TestFullDataDir(t *testing.T) {
	NewEnv(t)
	dataDir := t.TempDir()
	lines := hostLocalIn(t, dataDir, fmt.Sprintf(`mount -t tmpfs -o size=64k plumbfull %[1]s
hl ctr-a
dd if=/dev/zero of=%[1]s/fill bs=4k 2>/dev/null || true
hl ctr-b
ls -A %[1]s/st | tr '\n' ' '; echo
tr '\r\n' '<>' < %[1]s/st/10.76.0.2; echo`, dataDir))
	if len(lines) != 4 || !strings.Contains(lines[0], "10.76.0.2/24") {
		t.Fatalf("output: %q", lines)
	}
	if code := cniErrorCode(t, lines[1]); code != 5 || !strings.Contains(lines[1], "no space") {
		t.Fatalf("ADD on a full store: %s (want code 5 naming the cause)", lines[1])
	}
	if strings.Contains(lines[2], ".plumb-tmp-") || strings.Contains(lines[2], "10.76.0.3") {
		t.Fatalf("a failed ADD left files: %s", lines[2])
	}
	if lines[3] != "ctr-a<>eth0" {
		t.Fatalf("existing reservation changed: %q", lines[3])
	}
}
