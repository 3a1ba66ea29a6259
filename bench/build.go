package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// plumbPlugins are the main packages built for the chain (and for sizes).
var plumbPlugins = []string{"./plugins/bridge", "./ipam/host-local", "./plugins/loopback"}

// ldflags strip symbols and DWARF; both sides are built the same way so
// binary sizes compare like with like.
const ldflags = "-s -w"

// buildPlumb builds plumb's plugins into dir; portmap joins them when
// mode is "on", or "auto" and plumb has a portmap main package that builds.
func buildPlumb(root, dir, mode string) (portmap bool, note string, err error) {
	args := append([]string{"build", "-trimpath", "-ldflags", ldflags, "-o", dir + "/"}, plumbPlugins...)
	if err := goCmd(root, nil, args...); err != nil {
		return false, "", fmt.Errorf("build plumb: %w", err)
	}
	if mode == "off" {
		return false, "portmap left out of both chains (-portmap off)", nil
	}
	pkg, why := portmapPkg(root)
	if pkg == "" {
		if mode == "on" {
			return false, "", fmt.Errorf("-portmap on: %s", why)
		}
		return false, "portmap left out of both chains: " + why, nil
	}
	if err := goCmd(root, nil, "build", "-trimpath", "-ldflags", ldflags, "-o", filepath.Join(dir, "portmap"), pkg); err != nil {
		if mode == "on" {
			return false, "", fmt.Errorf("build plumb portmap: %w", err)
		}
		return false, "portmap left out of both chains: plumb's portmap does not build: " + oneLine(err.Error()), nil
	}
	return true, "", nil
}

// portmapPkg finds plumb's portmap main package under ./portmap.
func portmapPkg(root string) (pkg, why string) {
	if _, err := os.Stat(filepath.Join(root, "portmap")); err != nil {
		return "", "plumb has no ./portmap yet"
	}
	cmd := exec.Command("go", "list", "-e", "-f", "{{.Name}} {{.ImportPath}}", "./portmap/...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		return "", "go list ./portmap/...: " + err.Error()
	}
	var mains []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if name, path, ok := strings.Cut(line, " "); ok && name == "main" {
			mains = append(mains, path)
		}
	}
	for _, m := range mains {
		if strings.HasSuffix(m, "/portmap") {
			return m, ""
		}
	}
	if len(mains) > 0 {
		return mains[0], ""
	}
	return "", "./portmap has no main package yet"
}

// installRef installs the reference plugins at version into dir with
// `go install` from their module (static, stripped, like plumb's).
func installRef(tmp, dir, version string) error {
	const mod = "github.com/containernetworking/plugins"
	var pkgs []string
	for _, p := range []string{"plugins/main/bridge", "plugins/ipam/host-local", "plugins/meta/portmap", "plugins/main/loopback"} {
		pkgs = append(pkgs, mod+"/"+p+"@"+version)
	}
	flags := ldflags + " -X " + mod + "/pkg/utils/buildversion.BuildVersion=" + version
	args := append([]string{"install", "-trimpath", "-ldflags", flags}, pkgs...)
	if err := goCmd(tmp, []string{"GOBIN=" + dir}, args...); err != nil {
		return fmt.Errorf("install reference plugins %s: %w", version, err)
	}
	return nil
}

func goCmd(dir string, env []string, args ...string) error {
	cmd := exec.Command("go", args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "CGO_ENABLED=0"), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", args[0], err, out)
	}
	return nil
}

// sizes maps each binary in dir to its size.
func sizes(dir string) map[string]int64 {
	out := map[string]int64{}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if fi, err := e.Info(); err == nil && fi.Mode().IsRegular() {
			out[e.Name()] = fi.Size()
		}
	}
	return out
}

// machine describes this machine.
func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Sysname[:]) + " " + unix.ByteSliceToString(u.Release[:])
	}
	m.CPUModel = procField("/proc/cpuinfo", "model name")
	var kib int
	fmt.Sscanf(procField("/proc/meminfo", "MemTotal"), "%d", &kib)
	m.MemMiB = kib / 1024
	m.Iptables = firstLine("iptables", "--version")
	m.Nft = firstLine("nft", "--version")
	return m
}

func procField(path, key string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func firstLine(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return ""
	}
	line, _, _ := bytes.Cut(out, []byte("\n"))
	return strings.TrimSpace(string(line))
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}

// commit is HEAD's short hash, with "+dirty" when tracked files changed or
// untracked ones exist.
func commit(root string) string {
	run := func(args ...string) string {
		cmd := exec.Command("git", args...)
		cmd.Dir = root
		out, err := cmd.Output()
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(out))
	}
	c := run("rev-parse", "--short", "HEAD")
	if c == "" {
		return "unknown"
	}
	if run("status", "--porcelain") != "" {
		c += "+dirty"
	}
	return c
}
