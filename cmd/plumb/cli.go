package main

import (
	"crypto/sha512"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

const usage = `plumb: run, see and fix container networks (CNI)

Usage:
  plumb add|del|check NETWORK NETNS    attach, detach, verify (as cnitool)
  plumb status NETWORK                 is the network ready for ADDs
  plumb gc NETWORK                     remove what attachments unknown to this host left
  plumb run [--net NAME|FILE]... [-p [hostIP:]hostPort:containerPort[/proto]]... [--ip ADDR] -- CMD ARGS...
  plumb ls                             attachments this host knows
  plumb inspect NETWORK                what plumb created for a network, by owner
  plumb doctor [--fix] [NETWORK]       find what silently breaks container networking

NETWORK is a name in $NETCONFPATH (default /etc/cni/net.d) or a .conflist file;
NETNS is a path or a name under /run/netns. Plugins come from $CNI_PATH
(default /opt/cni/bin). Run "plumb VERB --help" for a verb's flags.
`

// env is what every verb shares: where configs, plugins and libcni's cache are.
type env struct {
	stdout, stderr io.Writer
	netDir         string
	cniPath        string // colon-separated plugin directories
	cacheDir       string
	json           bool
}

func (e *env) flags(fs *flag.FlagSet) {
	e.netDir = os.Getenv("NETCONFPATH")
	if e.netDir == "" {
		e.netDir = "/etc/cni/net.d"
	}
	e.cniPath = os.Getenv("CNI_PATH")
	if e.cniPath == "" {
		e.cniPath = "/opt/cni/bin"
	}
	fs.StringVar(&e.netDir, "netconf-dir", e.netDir, "network config directory ($NETCONFPATH)")
	fs.StringVar(&e.cniPath, "cni-path", e.cniPath, "plugin directories, colon-separated ($CNI_PATH)")
	fs.StringVar(&e.cacheDir, "cache-dir", "", "libcni cache directory (default /var/lib/cni)")
	fs.BoolVar(&e.json, "json", false, "print JSON (results, errors)")
}

func (e *env) cni() *libcni.CNIConfig {
	return libcni.NewCNIConfigWithCacheDir(filepath.SplitList(e.cniPath), e.cacheDir, nil)
}

// network loads a network by name from netDir, or from a file.
func (e *env) network(arg string) (*libcni.NetworkConfigList, error) {
	if strings.ContainsRune(arg, '/') || strings.HasSuffix(arg, ".conflist") || strings.HasSuffix(arg, ".conf") {
		if _, err := os.Stat(arg); err == nil {
			l, err := libcni.NetworkConfFromFile(arg)
			if err != nil {
				return nil, fmt.Errorf("load network from %s: %w", arg, err)
			}
			return l, nil
		}
	}
	l, err := libcni.LoadNetworkConf(e.netDir, arg)
	if err != nil {
		return nil, fmt.Errorf("load network %q from %s: %w", arg, e.netDir, err)
	}
	return l, nil
}

// netnsPath accepts a path or a name under /run/netns.
func netnsPath(arg string) (string, error) {
	if !strings.ContainsRune(arg, '/') {
		arg = filepath.Join("/run/netns", arg)
	}
	return filepath.Abs(arg)
}

// containerID is cnitool's ID for a namespace path, so plumb and cnitool
// can undo each other's attachments.
func containerID(netns string) string {
	s := sha512.Sum512([]byte(netns))
	return fmt.Sprintf("cnitool-%x", s[:10])
}

// fail prints err as one readable line (and the CNI error JSON with --json).
func (e *env) fail(err error) int {
	var te *types.Error
	if e.json && errors.As(err, &te) {
		b, _ := json.MarshalIndent(te, "", "  ")
		fmt.Fprintln(e.stdout, string(b))
	}
	fmt.Fprintln(e.stderr, "plumb:", oneLine(err.Error()))
	return 1
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	e := &env{stdout: stdout, stderr: stderr}
	verbs := map[string]func(*env, []string) int{
		"add": cmdCNI("add"), "del": cmdCNI("del"), "check": cmdCNI("check"),
		"status": cmdStatus, "gc": cmdGC, "run": cmdRun, "ls": cmdLs,
		"inspect": cmdInspect, "doctor": cmdDoctor,
	}
	verb, ok := verbs[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "plumb: unknown verb %q\n\n%s", args[0], usage)
		return 2
	}
	return verb(e, args[1:])
}

// parse parses a verb's flags; ok is false when the verb should exit with code.
func (e *env) parse(fs *flag.FlagSet, args []string, nargs int, synopsis string) (rest []string, code int, ok bool) {
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: plumb %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	e.flags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, 0, false
		}
		return nil, 2, false
	}
	if nargs >= 0 && fs.NArg() != nargs {
		fs.Usage()
		return nil, 2, false
	}
	return fs.Args(), 0, true
}
