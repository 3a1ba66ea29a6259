// Package integration builds plumb's plugin binaries and drives them through
// libcni, the library containerd and CRI-O use, inside a throwaway host
// network namespace (see internal/testns). Container namespaces are named
// netns made per test and removed on cleanup.
package integration

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/plumbnet/plumb/internal/testns"
)

// binDir holds the freshly built plugins while the tests run.
var binDir string

// pluginPkgs maps each plugin binary to its main package.
var pluginPkgs = map[string]string{
	"loopback":   "./plugins/loopback",
	"host-local": "./ipam/host-local",
	"bridge":     "./plugins/bridge",
	"portmap":    "./portmap",
	"firewall":   "./plugins/firewall",
	"tuning":     "./plugins/tuning",
	"bandwidth":  "./plugins/bandwidth",
	"plumb":      "./cmd/plumb", // not a plugin: the command line, built alongside
}

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	if testns.InHostNS() {
		dir, err := os.MkdirTemp("", "plumb-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "integration:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		if err := buildPlugins(dir); err != nil {
			fmt.Fprintln(os.Stderr, "integration:", err)
			return 1
		}
		binDir = dir
	}
	return testns.RunInHostNS(m)
}

// buildPlugins compiles every plugin into dir with one go build call.
func buildPlugins(dir string) error {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	args := []string{"build", "-o", dir + "/"}
	for _, pkg := range pluginPkgs {
		args = append(args, pkg)
	}
	// The reference host-local too, for the shared-store tests; make deps
	// has fetched its modules (this namespace has no uplink).
	for _, a := range [][]string{args, {"build", "-o", filepath.Join(dir, refHostLocal), refHostLocalPkg}} {
		cmd := exec.Command("go", a...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOPROXY=off")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(a, " "), err, out)
		}
	}
	return nil
}

// refHostLocal is the reference host-local's binary name in binDir.
const (
	refHostLocal    = "ref-host-local"
	refHostLocalPkg = "github.com/containernetworking/plugins/plugins/ipam/host-local"
)

// Env is one test's CNI client: libcni over the built plugins with its own
// cache directory.
type Env struct {
	T     *testing.T
	CNI   *libcni.CNIConfig
	Cache string
}

// NewEnv skips unless root in a throwaway host namespace.
func NewEnv(t *testing.T) *Env {
	t.Helper()
	testns.RequireRoot(t)
	if binDir == "" {
		t.Fatal("plugins were not built")
	}
	cache := t.TempDir()
	return &Env{T: t, CNI: libcni.NewCNIConfigWithCacheDir([]string{binDir}, cache, nil), Cache: cache}
}

// ConfList parses a conflist, failing the test on error.
func (e *Env) ConfList(js string) *libcni.NetworkConfigList {
	e.T.Helper()
	l, err := libcni.ConfListFromBytes([]byte(js))
	if err != nil {
		e.T.Fatalf("parse conflist: %v\n%s", err, js)
	}
	return l
}

// Ctx is a context for one CNI call.
func (e *Env) Ctx() context.Context { return context.Background() }

// BinDir is where the built plugins are (for exec-ing them directly).
func (e *Env) BinDir() string { return binDir }

// PluginGC runs GC through a libcni client with an empty cache, so the GC
// reaches the plugins without libcni first DELing the attachments it cached
// itself: what is collected is the plugins' own doing.
func (e *Env) PluginGC(list *libcni.NetworkConfigList, keep ...types.GCAttachment) error {
	c := libcni.NewCNIConfigWithCacheDir([]string{binDir}, e.T.TempDir(), nil)
	return c.GCNetworkList(e.Ctx(), list, &libcni.GCArgs{ValidAttachments: keep})
}
